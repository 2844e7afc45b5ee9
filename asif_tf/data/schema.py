"""The on-disk format of a preprocessed dataset: the one source of truth.

The Beam writer (``beam_pipelines``) and the tf.data reader (``asif_tf.data.input``)
both import this module; nothing else names a feature or a file.

A preprocessed directory holds::

    metadata.json                 counts, attribute vocab sizes, options (see METADATA_*)
    train/part-*.tfrecord.gz      one SequenceExample-like tf.train.Example per user and split
    valid/part-*.tfrecord.gz
    test/part-*.tfrecord.gz
    items/part-*.tfrecord.gz      one Example per item: id, train count, attribute ids
    vocab/item.tsv                "<id>\\t<raw token>" for ids 1..num_items (0 = padding)
    vocab/attr_<field>.tsv        the same for each attribute field
    dead_letter/part-*.jsonl      malformed input records with the reason

Split records (leave-one-out on each user's time-ordered items i_1..i_L):
    test : history = i_1..i_{L-1},  target = i_L
    valid: history = i_1..i_{L-2},  target = i_{L-1}
    train: history = i_1..i_{L-3},  target = i_{L-2}
so ``history + [target]`` of the train record is the user's whole training sequence,
from which the trainer derives every prefix (or one sequence with a loss at every
position). A user gets a test record with >= 2 items, a valid record with >= 3 and a
train record with >= 4 (a train record needs a non-empty history).
"""
from __future__ import annotations

from typing import Dict, Iterable, Mapping, Sequence

SCHEMA_VERSION = 1

SPLITS = ("train", "valid", "test")

# Split record features.
USER = "user"          # bytes, scalar: the raw user token
HISTORY = "history"    # int64, variable length: item ids, oldest first
TARGET = "target"      # int64, scalar: the item id to predict

# Item table features.
ITEM_ID = "item_id"    # int64, scalar, 1..num_items
ITEM_COUNT = "count"   # int64, scalar: occurrences in the train split's sequences
ATTR_PREFIX = "attr/"  # int64, variable length, one feature per attribute field

# File layout.
METADATA_FILE = "metadata.json"
ITEMS_DIR = "items"
VOCAB_DIR = "vocab"
DEAD_LETTER_DIR = "dead_letter"
RECORD_SUFFIX = ".tfrecord.gz"
ITEM_VOCAB_FILE = "item.tsv"
PADDING_ID = 0


def attr_feature(field: str) -> str:
    """Feature name of an attribute field in the item table."""
    return ATTR_PREFIX + field


def attr_vocab_file(field: str) -> str:
    return f"attr_{field}.tsv"


def split_file_pattern(data_dir: str, split: str) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return f"{data_dir}/{split}/part-*{RECORD_SUFFIX}"


def items_file_pattern(data_dir: str) -> str:
    return f"{data_dir}/{ITEMS_DIR}/part-*{RECORD_SUFFIX}"


def split_feature_spec():
    """tf.io feature spec of a split record (import of TensorFlow kept local)."""
    import tensorflow as tf
    return {
        USER: tf.io.FixedLenFeature([], tf.string),
        HISTORY: tf.io.VarLenFeature(tf.int64),
        TARGET: tf.io.FixedLenFeature([], tf.int64),
    }


def item_feature_spec(fields: Sequence[str]):
    import tensorflow as tf
    spec = {
        ITEM_ID: tf.io.FixedLenFeature([], tf.int64),
        ITEM_COUNT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    }
    for field in fields:
        spec[attr_feature(field)] = tf.io.VarLenFeature(tf.int64)
    return spec


def _int64_feature(values: Iterable[int]):
    from tensorflow.core.example import feature_pb2
    return feature_pb2.Feature(int64_list=feature_pb2.Int64List(value=list(values)))


def _bytes_feature(value: bytes):
    from tensorflow.core.example import feature_pb2
    return feature_pb2.Feature(bytes_list=feature_pb2.BytesList(value=[value]))


def encode_split_record(user: str, history: Sequence[int], target: int) -> bytes:
    """Serialized tf.train.Example of one (user, history, target) record."""
    from tensorflow.core.example import example_pb2, feature_pb2
    features = feature_pb2.Features(feature={
        USER: _bytes_feature(user.encode("utf-8")),
        HISTORY: _int64_feature(history),
        TARGET: _int64_feature([target]),
    })
    return example_pb2.Example(features=features).SerializeToString()


def encode_item_record(item_id: int, count: int, attrs: Mapping[str, Sequence[int]]) -> bytes:
    """Serialized tf.train.Example of one item-table row."""
    from tensorflow.core.example import example_pb2, feature_pb2
    feature: Dict[str, object] = {
        ITEM_ID: _int64_feature([item_id]),
        ITEM_COUNT: _int64_feature([count]),
    }
    for field, ids in attrs.items():
        feature[attr_feature(field)] = _int64_feature(ids)
    return example_pb2.Example(features=feature_pb2.Features(feature=feature)).SerializeToString()


def decode_split_record(serialized: bytes):
    """(user, history, target) of a serialized split record, without TensorFlow ops."""
    from tensorflow.core.example import example_pb2
    ex = example_pb2.Example.FromString(serialized)
    f = ex.features.feature
    return (f[USER].bytes_list.value[0].decode("utf-8"),
            list(f[HISTORY].int64_list.value),
            f[TARGET].int64_list.value[0])


def decode_item_record(serialized: bytes):
    """(item_id, count, {field: [attr ids]}) of a serialized item-table row."""
    from tensorflow.core.example import example_pb2
    ex = example_pb2.Example.FromString(serialized)
    f = ex.features.feature
    attrs = {k[len(ATTR_PREFIX):]: list(v.int64_list.value)
             for k, v in f.items() if k.startswith(ATTR_PREFIX)}
    return f[ITEM_ID].int64_list.value[0], f[ITEM_COUNT].int64_list.value[0], attrs
