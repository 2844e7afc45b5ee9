"""``python -m asif_tf.export``: export a trained run as a SavedModel for TensorFlow Serving.

The export is what the official ``tensorflow/serving`` server loads: a versioned
directory ``<export_dir>/<model_name>/<version>/`` holding ``saved_model.pb``,
``variables/``, ``assets/item.tsv`` (the item vocabulary) and
``assets.extra/tf_serving_warmup_requests`` (PredictionLog records the server
replays before it reports the version AVAILABLE). Versions are integers; every
export takes the next one and never touches an existing version, so a running
server picks the new model up on its next file-system poll and can roll back.

Signatures (all inputs and outputs are batch-major):

``serving_default``
    ``history``: tf.string [batch, length], raw item ids (the tokens of
    ``vocab/item.tsv``), oldest first, right-padded with "". Unknown ids are dropped
    and the remaining items compacted, so a typo never fails a request; only the
    most recent ``max_seq_len`` known items feed the model. Strings must be UTF-8
    (anything else is INVALID_ARGUMENT).
    ``item_ids``: tf.string [batch, k], the top-k raw item ids, best first.
    ``scores``: tf.float32 [batch, k], the model's dot-product scores; for a history
    with no known item, the k most popular training items with their share of the
    training occurrences as the score. Items of the request's history are excluded
    (unless exported with ``keep_seen``); when fewer than k candidates remain, the
    remaining slots hold item id "" and score -inf.

``user_embedding``
    ``history`` as above -> ``user_embedding``: tf.float32 [batch, d], the user
    vector whose dot product with an item embedding is the item's score.

Top-k is exact: a matmul against the whole item table, then ``tf.math.top_k`` (in two
passes over block maxima for catalogues over 2,048 items, same result, see
``exact_top_k``). Only stock TensorFlow ops, so the stock server binary runs it.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import sys
import tempfile
from typing import TYPE_CHECKING, List, Optional, Sequence

from asif_tf import _env  # noqa: F401
import numpy as np
import tensorflow as tf

from asif_tf.cli import HelpFormatter
from asif_tf.config import ExperimentConfig
from asif_tf.data import schema

if TYPE_CHECKING:   # for annotations only; the input pipeline is imported where it is used
    from asif_tf.data.input import DatasetInfo

SERVING_SIGNATURE = "serving_default"
EMBEDDING_SIGNATURE = "user_embedding"
INPUT_NAME = "history"
OUTPUT_IDS = "item_ids"
OUTPUT_SCORES = "scores"
OUTPUT_EMBEDDING = "user_embedding"
WARMUP_FILE = "tf_serving_warmup_requests"
EXPORT_INFO_FILE = "asif_export.json"
DEFAULT_MODEL_NAME = "asif"
DEFAULT_K = 10
# Catalogues over 2 x this many items take the top-k in two passes (see exact_top_k).
TOP_K_CHUNK = 1024


# --------------------------------------------------------------------------- vocabulary

def read_item_vocab(data_dir: str, num_items: int) -> List[str]:
    """Raw tokens of ``<data_dir>/vocab/item.tsv`` indexed by internal id (index 0 = "" for padding).

    Checks the file covers exactly the ids 1..num_items once each with distinct, non-empty
    tokens, since a vocabulary that disagrees with the item table would serve wrong items.
    """
    path = item_vocab_path(data_dir)
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: the export maps raw item ids through the item vocabulary "
                                "that `python -m beam_pipelines.preprocess` writes next to the TFRecords")
    tokens: List[Optional[str]] = [None] * (num_items + 1)
    seen = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.rstrip("\n")
            if not line:
                continue
            parts = line.split("\t")
            if len(parts) != 2 or not parts[0].isdigit() or not parts[1]:
                raise ValueError(f"{path}:{line_no}: expected '<id>\\t<raw token>', got {line!r}")
            item, token = int(parts[0]), parts[1]
            if not 1 <= item <= num_items:
                raise ValueError(f"{path}:{line_no}: item id {item} outside 1..{num_items} (metadata num_items)")
            if tokens[item] is not None:
                raise ValueError(f"{path}:{line_no}: item id {item} appears twice")
            if token in seen:
                raise ValueError(f"{path}:{line_no}: token {token!r} already names item {seen[token]}")
            tokens[item], seen[token] = token, item
    missing = [i for i in range(1, num_items + 1) if tokens[i] is None]
    if missing:
        raise ValueError(f"{path}: {len(missing)} item ids of 1..{num_items} have no token (first: {missing[:5]})")
    tokens[0] = ""
    return tokens  # type: ignore[return-value]


def item_vocab_path(data_dir: str) -> str:
    return os.path.join(data_dir, schema.VOCAB_DIR, schema.ITEM_VOCAB_FILE)


def exact_top_k(scores: tf.Tensor, k: int, chunk_size: int = 0):
    """``tf.math.top_k(scores, k)`` (same values, same indices, ties to the lower index) for
    float [b, n] with static n, in two passes when ``chunk_size`` splits n into blocks.

    Block maxima bound the answer: the k largest block maxima are k distinct scores, so the
    k-th best score is at least the k-th largest block maximum, and every top-k item sits in
    one of the k blocks with the largest maxima. A reduce_max over all scores plus a top_k
    over k blocks replaces one top_k over all n scores, which on CPU costs about 10 ns per
    element per row (300 ms for 32 users x 1M items).
    """
    n = int(scores.shape[1])
    if not chunk_size or n <= 2 * chunk_size:
        return tf.math.top_k(scores, k=k)
    blocks_count = -(-n // chunk_size)
    batch = tf.shape(scores)[0]
    padded = tf.pad(scores, [[0, 0], [0, blocks_count * chunk_size - n]], constant_values=-np.inf)
    blocks = tf.reshape(padded, [batch, blocks_count, chunk_size])
    kept = min(k, blocks_count)
    _, best = tf.math.top_k(tf.reduce_max(blocks, axis=2), k=kept)                 # [b, kept]
    best = tf.sort(best, axis=1)          # ascending block order keeps ties on the lower index
    candidates = tf.reshape(tf.gather(blocks, best, batch_dims=1), [batch, kept * chunk_size])
    values, where = tf.math.top_k(candidates, k=k)
    indices = tf.gather(best, where // chunk_size, batch_dims=1) * chunk_size + where % chunk_size
    return values, indices


def most_popular(item_counts: np.ndarray, k: int) -> np.ndarray:
    """Internal ids of the k most frequent training items (ties: lower id first), padding excluded."""
    counts = np.asarray(item_counts, np.int64).copy()
    counts[0] = -1
    order = np.lexsort((np.arange(len(counts)), -counts))   # primary: count desc, then id asc
    return order[:k].astype(np.int64)


# --------------------------------------------------------------------------- the serving module

class RecommenderServingModule(tf.Module):
    """What the SavedModel holds: the model's variables, the two vocabulary tables, the
    popularity fallback, and the two serving functions.

    The Keras model itself is deliberately not a tracked child: saving a Keras model inside a
    tf.Module makes tf-keras trace every layer's call for its own metadata, which the serving
    graph does not need. Its variables are tracked instead, which is all the functions capture.
    """

    def __init__(self, model: tf.keras.Model, vocab_file: str, item_counts: np.ndarray, k: int,
                 max_seq_len: int, exclude_seen: bool = True):
        super().__init__(name="asif_serving")
        num_items = int(model.item_embeddings().shape[0]) - 1
        if len(item_counts) != num_items + 1:
            raise ValueError(f"item_counts has {len(item_counts)} entries, the model has {num_items} items + padding")
        if not 1 <= k <= num_items:
            raise ValueError(f"k must be in 1..{num_items} (the number of items), got {k}")
        self._model_call = _Untracked(model)
        self._model_variables = list(model.variables)
        self.k, self.max_seq_len, self.exclude_seen, self.num_items = int(k), int(max_seq_len), bool(exclude_seen), num_items
        self.vocab_asset = tf.saved_model.Asset(vocab_file)
        # Both tables read the vocabulary file copied into the SavedModel's assets/, so the graph
        # carries no per-item constants and the mapping is exactly the preprocessing's.
        self.token_to_id = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(self.vocab_asset, tf.string, 1, tf.int64, 0, delimiter="\t"),
            default_value=0)
        self.id_to_token = tf.lookup.StaticHashTable(
            tf.lookup.TextFileInitializer(self.vocab_asset, tf.int64, 0, tf.string, 1, delimiter="\t"),
            default_value="")
        counts = np.asarray(item_counts, np.float64).copy()
        counts[0] = 0.0
        share = counts / max(counts.sum(), 1.0)
        popular = most_popular(item_counts, self.k)
        self.popular_ids = tf.constant(popular, tf.int64)
        self.popular_scores = tf.constant(share[popular], tf.float32)

        spec = tf.TensorSpec([None, None], tf.string, name=INPUT_NAME)
        self.serve = tf.function(self._serve, input_signature=[spec])
        self.embed = tf.function(self._embed, input_signature=[spec])

    # Internals ---------------------------------------------------------------------------

    def _internal_ids(self, history: tf.Tensor):
        """Raw strings [b, L] -> (ids int64 [b, L] with 0 for padding/unknown,
        compacted model input int64 [b, n >= 1], rows with no known item bool [b])."""
        # Strict transcoding fails the request (InvalidArgument) on bytes that are not UTF-8.
        checked = tf.strings.unicode_transcode(history, "UTF-8", "UTF-8", errors="strict")
        ids = self.token_to_id.lookup(checked)
        known = tf.ragged.boolean_mask(ids, ids > 0)
        recent = known[:, -self.max_seq_len:]
        dense = recent.to_tensor(default_value=0)
        # An all-empty batch would give width 0; the encoder needs at least one position.
        dense = tf.pad(dense, [[0, 0], [0, tf.maximum(1 - tf.shape(dense)[1], 0)]])
        empty = tf.equal(known.row_lengths(), 0)
        return ids, dense, empty

    def _user_vectors(self, model_input: tf.Tensor) -> tf.Tensor:
        return tf.cast(self._model_call.obj(model_input, training=False), tf.float32)

    def _serve(self, history):
        ids, model_input, empty = self._internal_ids(history)
        users = self._user_vectors(model_input)                                        # [b, d]
        items = tf.cast(self._model_call.obj.item_embeddings(), tf.float32)           # [V + 1, d]
        scores = tf.matmul(users, items, transpose_b=True)                             # [b, V + 1]
        batch = tf.shape(ids, out_type=tf.int64)[0]
        rows = tf.range(batch, dtype=tf.int64)
        banned = tf.stack([rows, tf.zeros_like(rows)], axis=1)                          # padding row 0
        if self.exclude_seen:
            width = tf.shape(ids, out_type=tf.int64)[1]
            seen = tf.stack([tf.repeat(rows, width), tf.reshape(ids, [-1])], axis=1)   # unknown -> 0, harmless
            banned = tf.concat([banned, seen], axis=0)
        scores = tf.tensor_scatter_nd_update(
            scores, banned, tf.fill(tf.shape(banned)[:1], tf.constant(-np.inf, tf.float32)))
        top_scores, top_ids = exact_top_k(scores, self.k, TOP_K_CHUNK)
        top_ids = tf.cast(top_ids, tf.int64)
        fallback = empty[:, tf.newaxis]
        top_ids = tf.where(fallback, self.popular_ids[tf.newaxis], top_ids)
        top_scores = tf.where(fallback, self.popular_scores[tf.newaxis], top_scores)
        tokens = self.id_to_token.lookup(top_ids)
        tokens = tf.where(tf.math.is_finite(top_scores), tokens, "")
        return {OUTPUT_IDS: tokens, OUTPUT_SCORES: top_scores}

    def _embed(self, history):
        _, model_input, _ = self._internal_ids(history)
        return {OUTPUT_EMBEDDING: self._user_vectors(model_input)}


class _Untracked:
    """Holds an object without making it a checkpoint/SavedModel dependency of its owner."""

    def __init__(self, obj):
        self.obj = obj


# --------------------------------------------------------------------------- writing

def next_version(model_base: str) -> int:
    """1 + the largest integer version directory under ``model_base`` (1 when there is none)."""
    if not os.path.isdir(model_base):
        return 1
    versions = [int(n) for n in os.listdir(model_base) if n.isdigit()]
    return max(versions, default=0) + 1


def warmup_histories(tokens: Sequence[str], item_counts: np.ndarray, max_seq_len: int) -> List[List[List[str]]]:
    """A few request batches covering the shapes traffic brings: batch 1 and 32, histories of
    1..max_seq_len popular items, and an empty history (the popularity path)."""
    popular = [tokens[i] for i in most_popular(item_counts, min(len(tokens) - 1, max(max_seq_len, 32)))]
    batches = [[[]], [popular[:1]], [popular[:max_seq_len]]]
    batches.append([popular[(i % len(popular)):][: 1 + i % max_seq_len] for i in range(32)])
    return batches


def _tensor_proto(rows: Sequence[Sequence[str]]):
    width = max([len(r) for r in rows] + [1])
    array = np.array([[t.encode("utf-8") for t in r] + [b""] * (width - len(r)) for r in rows], dtype=object)
    return tf.make_tensor_proto(array, dtype=tf.string)


def write_warmup_file(version_dir: str, model_name: str, batches: Sequence[Sequence[Sequence[str]]]) -> str:
    """``assets.extra/tf_serving_warmup_requests``: PredictionLog records of Predict requests."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2
    extra = os.path.join(version_dir, "assets.extra")
    os.makedirs(extra, exist_ok=True)
    path = os.path.join(extra, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for signature in (SERVING_SIGNATURE, EMBEDDING_SIGNATURE):
            for rows in batches:
                request = predict_pb2.PredictRequest(
                    model_spec=model_pb2.ModelSpec(name=model_name, signature_name=signature))
                request.inputs[INPUT_NAME].CopyFrom(_tensor_proto(rows))
                log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
                writer.write(log.SerializeToString())
    return path


def export_model(model: tf.keras.Model, data_dir: str, item_counts: np.ndarray, export_dir: str, *,
                 max_seq_len: int, model_name: str = DEFAULT_MODEL_NAME, k: int = DEFAULT_K,
                 keep_seen: bool = False, extra_info: Optional[dict] = None) -> str:
    """Writes ``<export_dir>/<model_name>/<next version>/`` and returns that path.

    ``model`` maps int histories [b, n] to user vectors and has ``item_embeddings()``;
    ``data_dir`` holds the item vocabulary (``vocab/item.tsv``) of the ids it was trained on.
    """
    if not model_name or os.sep in model_name or model_name in (".", ".."):
        raise ValueError(f"--model_name must be a plain directory name, got {model_name!r}")
    num_items = int(model.item_embeddings().shape[0]) - 1
    tokens = read_item_vocab(data_dir, num_items)
    model(tf.zeros([1, 1], tf.int64), training=False)   # builds any lazily created variables
    module = RecommenderServingModule(model, item_vocab_path(data_dir), item_counts, k, max_seq_len,
                                      exclude_seen=not keep_seen)
    model_base = os.path.join(export_dir, model_name)
    os.makedirs(model_base, exist_ok=True)
    # Written under a hidden name then renamed: the server only ever sees complete versions
    # (it ignores non-numeric directories), and rename never replaces a non-empty directory.
    staging = tempfile.mkdtemp(prefix=".export-", dir=model_base)
    try:
        tf.saved_model.save(module, staging, signatures={
            SERVING_SIGNATURE: module.serve.get_concrete_function(),
            EMBEDDING_SIGNATURE: module.embed.get_concrete_function()})
        write_warmup_file(staging, model_name, warmup_histories(tokens, item_counts, max_seq_len))
        info = {"model_name": model_name, "k": module.k, "max_seq_len": int(max_seq_len),
                "num_items": num_items, "exclude_seen": not keep_seen,
                "signatures": [SERVING_SIGNATURE, EMBEDDING_SIGNATURE], **(extra_info or {})}
        with open(os.path.join(staging, "assets.extra", EXPORT_INFO_FILE), "w", encoding="utf-8") as f:
            json.dump(info, f, indent=2, sort_keys=True)
        for _ in range(100):
            version_dir = os.path.join(model_base, str(next_version(model_base)))
            try:
                os.rename(staging, version_dir)
                return version_dir
            except OSError:
                if not os.path.exists(version_dir):
                    raise
                # Another export took this version number meanwhile; take the next one.
        raise RuntimeError(f"could not claim a new version directory under {model_base}")
    finally:
        if os.path.exists(staging):
            shutil.rmtree(staging, ignore_errors=True)


# --------------------------------------------------------------------------- from a run directory

def load_run_config(run_dir: str) -> ExperimentConfig:
    path = os.path.join(run_dir, "config.json")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path} not found: --run_dir must be a directory written by `python -m asif_tf.train`")
    return ExperimentConfig.from_json_file(path)


def restore_model(run_dir: str, cfg: ExperimentConfig, info, which: str = "best"):
    """The run's model with the best checkpoint's weights (the latest checkpoint if there is no best);
    ``which="last"``: the last epoch's checkpoint instead."""
    from asif_tf.models import registry
    if which not in ("best", "last"):
        raise ValueError(f"which must be best or last, got {which!r}")
    last = tf.train.latest_checkpoint(os.path.join(run_dir, "checkpoints"))
    path = last if which == "last" else (tf.train.latest_checkpoint(os.path.join(run_dir, "best")) or last)
    if not path:
        raise FileNotFoundError(f"no checkpoint in {run_dir}/best or {run_dir}/checkpoints: train the run first")
    model = registry.build_model(cfg, info)
    model(tf.zeros([1, 2], tf.int64), training=False)
    # The optimizer's slots are in the checkpoint too; every model variable must be restored.
    tf.train.Checkpoint(model=model).restore(path).expect_partial().assert_existing_objects_matched()
    return model, path


@dataclasses.dataclass
class RestoredRun:
    """A trained run brought back for evaluation or export (see ``restore_run``)."""
    cfg: ExperimentConfig
    data_dir: str        # the dataset directory the run reads (the built-in one resolved)
    info: DatasetInfo    # of data_dir, with the run's attribute fields
    model: tf.keras.Model
    checkpoint: str      # path of the checkpoint whose weights the model holds


def restore_run(run_dir: str, which: str = "best", cfg: Optional[ExperimentConfig] = None,
                data_dir: Optional[str] = None) -> RestoredRun:
    """The run in ``run_dir`` rebuilt from its config.json and dataset, with the weights of its best
    (``which="best"``) or last (``"last"``) checkpoint, in a fresh Keras session.

    ``cfg``: the run's config if the caller has already read it (to check it before the dataset is
    read and the model built). ``data_dir`` overrides the dataset directory the config names.
    """
    from asif_tf.data import input as data_input
    from asif_tf.data.builtin import ensure_builtin_dataset
    cfg = cfg or load_run_config(run_dir)
    data_dir = data_dir or cfg.data.data_dir or ensure_builtin_dataset(cfg.data.builtin_dir)
    info = data_input.load_dataset_info(data_dir, cfg.data.attribute_field_list())
    # A script may restore several runs one after another: free the earlier models' graph state.
    tf.keras.backend.clear_session()
    model, path = restore_model(run_dir, cfg, info, which)
    return RestoredRun(cfg=cfg, data_dir=data_dir, info=info, model=model, checkpoint=path)


def export_run(run_dir: str, export_dir: str, model=None, info=None, cfg: Optional[ExperimentConfig] = None,
               model_name: str = DEFAULT_MODEL_NAME, k: int = DEFAULT_K, keep_seen: bool = False,
               data_dir: Optional[str] = None) -> str:
    """Exports the run in ``run_dir`` under ``export_dir``; returns the new version's directory.

    ``model``/``info``/``cfg`` may be passed by the trainer (already restored to the best
    epoch); otherwise they are rebuilt from ``run_dir``'s config.json, the dataset and the
    best checkpoint. ``data_dir`` overrides the dataset directory the config names (a run
    moved to another machine).
    """
    from asif_tf.data import input as data_input
    from asif_tf.data.builtin import ensure_builtin_dataset
    cfg = cfg or load_run_config(run_dir)
    data_dir = data_dir or cfg.data.data_dir or ensure_builtin_dataset(cfg.data.builtin_dir)
    checkpoint = "in-memory model"
    if model is None:
        restored = restore_run(run_dir, cfg=cfg, data_dir=data_dir)
        model, info, checkpoint = restored.model, restored.info, restored.checkpoint
    elif info is None:
        info = data_input.load_dataset_info(data_dir, cfg.data.attribute_field_list())
    path = export_model(model, data_dir, info.item_counts, export_dir, max_seq_len=cfg.data.max_seq_len,
                        model_name=model_name, k=k, keep_seen=keep_seen,
                        extra_info={"run_dir": os.path.abspath(run_dir), "model": cfg.model.model,
                                    "checkpoint": checkpoint, "data_dir": os.path.abspath(data_dir)})
    print(f"Exported {cfg.model.model} ({checkpoint}) to {path}", flush=True)
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m asif_tf.export",
        description="Export a trained run as a TensorFlow Serving SavedModel: raw item ids in, top-k raw "
                    "item ids and scores out. Writes <export_dir>/<model_name>/<next version>/.",
        formatter_class=HelpFormatter)
    parser.add_argument("--run_dir", required=True, help="Run directory written by `python -m asif_tf.train`.")
    parser.add_argument("--export_dir", required=True, help="Base directory of the served models.")
    parser.add_argument("--model_name", default=DEFAULT_MODEL_NAME, help="Model name the server serves it under.")
    parser.add_argument("--k", type=int, default=DEFAULT_K, help="Number of items each request returns.")
    parser.add_argument("--keep_seen", action="store_true",
                        help="Do not exclude the items of the request's history from its results.")
    parser.add_argument("--data", default=None,
                        help="Dataset directory, if not the one in the run's config.json (e.g. a moved run).")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.k < 1:
        parser.error(f"--k must be >= 1, got {args.k}")
    try:
        export_run(args.run_dir, args.export_dir, model_name=args.model_name, k=args.k, keep_seen=args.keep_seen,
                   data_dir=args.data)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
