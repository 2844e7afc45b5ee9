"""tf.data input: read a preprocessed directory (``schema``), keep the last n items, pad, batch.

Training yields {"history": int [b, n], "labels": int [b, n]} (see
``SequentialRetrievalModel``); evaluation yields {"history": int [b, n], "target": int [b]}.
Histories are right-padded with 0. With ``bucket_by_length`` batches group similar lengths and
``n`` is the longest history in the batch (at most ``max_seq_len``); without it every batch is
padded to ``n = max_seq_len``, as in the research code (RecBole), so a layer that is not causal
(the per-sequence HIE basis of ``hie_causal=False``) sees the same positions as there.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import os
from typing import Dict, List, Optional, Sequence

from asif_tf import _env  # noqa: F401
import numpy as np
import tensorflow as tf

from asif_tf.data import schema

DEFAULT_BUCKETS = (2, 3, 4, 5, 6, 8, 10, 12, 15, 20, 25, 30, 40, 50, 75, 100, 150, 200)


@dataclasses.dataclass
class DatasetInfo:
    """What a model needs to know about a dataset: sizes and the item table."""
    data_dir: str
    num_items: int
    field_vocab_sizes: Dict[str, int]
    field_max_tokens: Dict[str, int]
    item_attributes: Dict[str, np.ndarray]   # field -> int32 [num_items + 1, max_tokens], 0-padded
    item_counts: np.ndarray                   # int64 [num_items + 1], train-split occurrences
    metadata: dict

    def item_probabilities(self) -> np.ndarray:
        """float [num_items + 1]: each item's share of the training occurrences (log-Q correction)."""
        counts = self.item_counts.astype(np.float64)
        counts[0] = 0.0
        return (counts / max(counts.sum(), 1.0)).astype(np.float32)


def read_metadata(data_dir: str) -> dict:
    path = os.path.join(data_dir, schema.METADATA_FILE)
    if not os.path.exists(path):
        raise FileNotFoundError(
            f"{path} not found: --data must be a directory written by `python -m beam_pipelines.preprocess`")
    with open(path, encoding="utf-8") as f:
        meta = json.load(f)
    if meta.get("schema_version") != schema.SCHEMA_VERSION:
        raise ValueError(f"{path}: schema_version {meta.get('schema_version')} but this package reads "
                         f"version {schema.SCHEMA_VERSION}; re-run the preprocessing")
    return meta


def _files(pattern: str) -> List[str]:
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {pattern}")
    return files


def load_dataset_info(data_dir: str, fields: Optional[Sequence[str]] = None) -> DatasetInfo:
    """Reads metadata.json and the item table into memory."""
    meta = read_metadata(data_dir)
    all_fields = sorted(meta.get("attribute_fields", {}))
    if fields:
        unknown = sorted(set(fields) - set(all_fields))
        if unknown:
            raise ValueError(f"attribute fields {unknown} are not in {data_dir} (it has {all_fields})")
        all_fields = sorted(fields)
    num_items = int(meta["num_items"])
    rows: Dict[str, List[List[int]]] = {f: [[] for _ in range(num_items + 1)] for f in all_fields}
    counts = np.zeros(num_items + 1, np.int64)
    spec = schema.item_feature_spec(all_fields)
    ds = tf.data.TFRecordDataset(_files(schema.items_file_pattern(data_dir)), compression_type="GZIP")
    for batch in ds.batch(4096).map(lambda x: tf.io.parse_example(x, spec)):
        ids = batch[schema.ITEM_ID].numpy()
        counts[ids] = batch[schema.ITEM_COUNT].numpy()
        for f in all_fields:
            sp = batch[schema.attr_feature(f)]
            for (row, _), value in zip(sp.indices.numpy(), sp.values.numpy()):
                rows[f][ids[row]].append(int(value))
    attributes, max_tokens = {}, {}
    for f in all_fields:
        width = max(1, max(len(r) for r in rows[f]))
        table = np.zeros((num_items + 1, width), np.int32)
        for i, r in enumerate(rows[f]):
            table[i, :len(r)] = r
        attributes[f], max_tokens[f] = table, width
    return DatasetInfo(data_dir=data_dir, num_items=num_items,
                       field_vocab_sizes={f: int(meta["attribute_fields"][f]) for f in all_fields},
                       field_max_tokens=max_tokens, item_attributes=attributes, item_counts=counts, metadata=meta)


def _parse(split: str, data_dir: str) -> tf.data.Dataset:
    spec = schema.split_feature_spec()
    ds = tf.data.TFRecordDataset(_files(schema.split_file_pattern(data_dir, split)), compression_type="GZIP")

    def parse(serialized):
        ex = tf.io.parse_single_example(serialized, spec)
        return tf.sparse.to_dense(ex[schema.HISTORY]), ex[schema.TARGET]
    return ds.map(parse, num_parallel_calls=tf.data.AUTOTUNE)


def _batch(ds: tf.data.Dataset, batch_size: int, max_seq_len: int, bucket: bool) -> tf.data.Dataset:
    if not bucket:
        # Sequences are [<= max_seq_len], scalars (the eval target) stay scalars.
        shapes = tf.nest.map_structure(lambda spec: [max_seq_len] if spec.shape.rank == 1 else [],
                                       ds.element_spec)
        return ds.padded_batch(batch_size, padded_shapes=shapes)
    boundaries = [b + 1 for b in DEFAULT_BUCKETS if b < max_seq_len]
    return ds.bucket_by_sequence_length(
        lambda x: tf.shape(x["history"])[0], boundaries, [batch_size] * (len(boundaries) + 1))


def prefix_examples(sequence: tf.Tensor, max_seq_len: int):
    """Every prefix of one training sequence, int [L] -> history int [L-1, n], labels int [L-1, n].

    Row t holds items sequence[max(0, t+1-n) : t+1] right-padded (n = min(L-1, max_seq_len));
    its label is sequence[t+1] at the last real position and 0 elsewhere.
    """
    length = tf.shape(sequence)[0]
    n = tf.minimum(length - 1, max_seq_len)
    ends = tf.range(1, length)                                         # prefix t = sequence[:end]
    starts = tf.maximum(ends - max_seq_len, 0)
    cols = tf.range(n)[tf.newaxis]
    idx = starts[:, tf.newaxis] + cols                                 # [L-1, n]
    real = idx < ends[:, tf.newaxis]
    history = tf.where(real, tf.gather(sequence, tf.minimum(idx, length - 1)), tf.zeros_like(idx, sequence.dtype))
    last = ends - starts - 1
    labels = tf.where(cols == last[:, tf.newaxis], tf.gather(sequence, ends)[:, tf.newaxis],
                      tf.zeros_like(history))
    return history, labels


def train_dataset(data_dir: str, batch_size: int, max_seq_len: int, samples: str = "sequence",
                  bucket: bool = True, shuffle: bool = True, seed: int = 0, split: str = "train",
                  shuffle_buffer: int = 100_000) -> tf.data.Dataset:
    """Batches of {"history", "labels"} from the train records (history + target = the sequence)."""
    if samples not in ("sequence", "prefix"):
        raise ValueError(f"training samples must be 'sequence' or 'prefix', got {samples!r}")
    sequences = _parse(split, data_dir).map(lambda h, t: tf.concat([h, [t]], 0)).cache()
    if shuffle:
        sequences = sequences.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
    if samples == "sequence":
        def to_example(seq):
            seq = seq[-(max_seq_len + 1):]
            return {"history": seq[:-1], "labels": seq[1:]}
        examples = sequences.map(to_example, num_parallel_calls=tf.data.AUTOTUNE)
    else:
        examples = sequences.map(lambda s: prefix_examples(s, max_seq_len), num_parallel_calls=tf.data.AUTOTUNE)
        examples = examples.unbatch().map(lambda h, l: {"history": h[:tf.reduce_sum(tf.cast(h > 0, tf.int32))],
                                                        "labels": l[:tf.reduce_sum(tf.cast(h > 0, tf.int32))]})
        if shuffle:
            # Prefixes of one user arrive together; mix them across users.
            examples = examples.shuffle(min(shuffle_buffer, 50_000), seed=seed + 1, reshuffle_each_iteration=True)
    return _batch(examples, batch_size, max_seq_len, bucket).prefetch(tf.data.AUTOTUNE)


def eval_dataset(data_dir: str, split: str, batch_size: int, max_seq_len: int,
                 bucket: bool = True) -> tf.data.Dataset:
    """Batches of {"history", "target"} of the valid or test records, history truncated to the last n."""
    ds = _parse(split, data_dir).filter(lambda h, t: tf.size(h) > 0)
    ds = ds.map(lambda h, t: {"history": h[-max_seq_len:], "target": t}).cache()
    return _batch(ds, batch_size, max_seq_len, bucket).prefetch(tf.data.AUTOTUNE)

