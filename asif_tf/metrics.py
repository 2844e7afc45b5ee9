"""Full-ranking evaluation: HR@K, NDCG@K and MRR against every item of the catalogue.

The one metric code of the project: training validation, the test report, the
benchmarks and the tuner objective all use it.

Conventions (ASIF.md's protocol):
- the target is ranked against ALL items; only the padding item 0 is excluded;
  items already in the history are NOT masked;
- ties count against the target (pessimistic rank: an item scoring exactly the
  target's score is ranked ahead of it), so a degenerate model that scores
  everything equally gets HR = 0 rather than 1;
- rank is 0-based: HR@K = 1[rank < K], NDCG@K = 1[rank < K] / log2(rank + 2),
  MRR = 1 / (rank + 1).
The catalogue is scored in chunks so that a million-item table never needs a
[batch, num_items] score matrix in memory at once.
"""
from __future__ import annotations

from typing import Dict, Sequence

from asif_tf import _env  # noqa: F401
import tensorflow as tf

DEFAULT_KS = (10, 20)


def full_ranking_ranks(user_vectors: tf.Tensor, item_embeddings: tf.Tensor, targets: tf.Tensor,
                       chunk_size: int = 65536) -> tf.Tensor:
    """0-based pessimistic rank of each target among items 1..V-1.

    Args:
      user_vectors: float [b, d].
      item_embeddings: float [V, d]; row 0 is the padding item and never ranks.
      targets: int [b], in 1..V-1.
      chunk_size: items scored per step.
    Returns:
      int32 [b].
    """
    user_vectors = tf.convert_to_tensor(user_vectors)
    item_embeddings = tf.cast(tf.convert_to_tensor(item_embeddings), user_vectors.dtype)
    targets = tf.cast(targets, tf.int32)
    num_items = tf.shape(item_embeddings)[0]
    target_scores = tf.reduce_sum(user_vectors * tf.gather(item_embeddings, targets), axis=-1)  # [b]
    num_chunks = (num_items + chunk_size - 1) // chunk_size

    def body(c, ahead):
        start = c * chunk_size
        size = tf.minimum(chunk_size, num_items - start)
        chunk = item_embeddings[start:start + size]                           # [c, d]
        scores = tf.matmul(user_vectors, chunk, transpose_b=True)             # [b, c]
        ids = tf.range(start, start + size)[tf.newaxis, :]                    # [1, c]
        counted = (scores >= target_scores[:, tf.newaxis]) & (ids != 0) & (ids != targets[:, tf.newaxis])
        return c + 1, ahead + tf.reduce_sum(tf.cast(counted, tf.int32), axis=1)

    _, ranks = tf.while_loop(lambda c, _: c < num_chunks, body,
                             (tf.constant(0), tf.zeros_like(targets)))
    return ranks


def metrics_from_ranks(ranks: tf.Tensor, ks: Sequence[int] = DEFAULT_KS) -> Dict[str, tf.Tensor]:
    """Per-example HR@K / NDCG@K / MRR values (float [b] each) of 0-based ranks."""
    ranks = tf.cast(ranks, tf.float32)
    out = {}
    for k in ks:
        hit = tf.cast(ranks < k, tf.float32)
        out[f"hr@{k}"] = hit
        out[f"ndcg@{k}"] = hit / (tf.math.log(ranks + 2.0) / tf.math.log(2.0))
    out["mrr"] = 1.0 / (ranks + 1.0)
    return out


class RankingMetrics(tf.keras.metrics.Metric):
    """Streaming mean of HR@K, NDCG@K and MRR over batches of 0-based ranks.

    ``result()`` is a dict, so Keras logs ``hr@10``, ``ndcg@20``, ... (and
    ``val_ndcg@20`` during ``fit``), names the tuner objective can refer to.
    """

    def __init__(self, ks: Sequence[int] = DEFAULT_KS, name: str = "ranking", **kwargs):
        super().__init__(name=name, **kwargs)
        self.ks = tuple(int(k) for k in ks)
        self._names = [f"{m}@{k}" for k in self.ks for m in ("hr", "ndcg")] + ["mrr"]
        self._sums = {n: self.add_weight(name=n.replace("@", "_at_"), initializer="zeros", dtype=tf.float64)
                      for n in self._names}
        self._count = self.add_weight(name="count", initializer="zeros", dtype=tf.float64)

    def update_state(self, ranks, sample_weight=None):
        values = metrics_from_ranks(ranks, self.ks)
        for n in self._names:
            self._sums[n].assign_add(tf.reduce_sum(tf.cast(values[n], tf.float64)))
        self._count.assign_add(tf.cast(tf.size(ranks), tf.float64))

    def result(self):
        return {n: tf.cast(tf.math.divide_no_nan(self._sums[n], self._count), tf.float32) for n in self._names}

    def reset_state(self):
        for v in list(self._sums.values()) + [self._count]:
            v.assign(tf.zeros_like(v))

    def get_config(self):
        return {**super().get_config(), "ks": list(self.ks)}
