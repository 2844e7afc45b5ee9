"""The shared TFRS retrieval model: any SequenceEncoder + a loss + full-ranking evaluation."""
from __future__ import annotations

from typing import Optional, Sequence

from asif_tf import _env  # noqa: F401
import numpy as np
import tensorflow as tf
import tensorflow_recommenders as tfrs

from asif_tf import metrics as ranking
from asif_tf.models.base import SequenceEncoder, last_position_vectors, last_positions  # noqa: F401

LOSSES = ("softmax", "sampled")


def catalogue_cross_entropy(queries: tf.Tensor, targets: tf.Tensor, items: tf.Tensor) -> tf.Tensor:
    """Softmax cross-entropy over the whole catalogue, one value per query: float [N].

    queries float [N, d], targets int [N] (item ids >= 1), items float [V + 1, d] (row 0 is
    padding, never a candidate)."""
    logits = tf.cast(tf.matmul(queries, items, transpose_b=True), tf.float32)      # [N, V + 1]
    logits += tf.one_hot(0, tf.shape(logits)[1], on_value=-1e9, off_value=0.0)[tf.newaxis]
    return tf.nn.sparse_softmax_cross_entropy_with_logits(targets, logits)


class SequentialRetrievalModel(tfrs.Model):
    """A tfrs.Model: user (history) tower = the encoder; candidate tower = the item table.

    Training batches: {"history": int [b, n], "labels": int [b, n]}; labels[b, t] is the
    item that follows history[b, :t+1], or 0 where no loss is taken (every real position
    for one-sequence training, only the last one for prefix training).
    Evaluation batches: {"history": int [b, n], "target": int [b]}; evaluation ranks the
    target against the whole catalogue (``asif_tf.metrics``) and logs hr@K, ndcg@K, mrr.

    loss="softmax": cross-entropy over the whole catalogue (the paper's).
    loss="sampled": ``tfrs.tasks.Retrieval`` over in-batch negatives, with log-Q correction
    from ``item_probabilities`` (float [num_items + 1], the sampling frequency of each item
    as an in-batch candidate) and accidental-hit removal.

    last_position_loss=True (prefix training: each row's one label sits at its last real
    item) computes the encoder at that position only (``encode_last``), as evaluation and
    serving always do; a batch with a label anywhere else fails loudly instead of losing it.
    """

    def __init__(self, encoder: SequenceEncoder, loss: str = "softmax",
                 item_probabilities: Optional[np.ndarray] = None, eval_chunk_size: int = 65536,
                 ks: Sequence[int] = ranking.DEFAULT_KS, last_position_loss: bool = False, **kwargs):
        super().__init__(**kwargs)
        if loss not in LOSSES:
            raise ValueError(f"loss must be one of {LOSSES}, got {loss!r}")
        self.encoder, self.loss_name, self.eval_chunk_size = encoder, loss, int(eval_chunk_size)
        self.last_position_loss = bool(last_position_loss)
        self.ranking = ranking.RankingMetrics(ks, name="ranking")
        # The epoch's mean training loss: returning the step's own loss from train_step (as
        # tfrs.Model does) makes Keras log the LAST batch's loss as the epoch's, which with
        # length buckets is whichever bucket came last, not a training curve. It is kept out of
        # Keras' attribute tracking (a plain tuple set with object.__setattr__): a metric's
        # running state has no place in a checkpoint, and checkpoints written before this
        # tracker existed must still restore.
        object.__setattr__(self, "_untracked", (tf.keras.metrics.Mean(name="loss"),))
        self.aux_loss_tracker = tf.keras.metrics.Mean(name="aux_loss")
        if loss == "sampled":
            if item_probabilities is None:
                raise ValueError("loss='sampled' needs item_probabilities for the log-Q correction")
            probs = np.asarray(item_probabilities, np.float32)
            self.item_probabilities = tf.constant(np.maximum(probs, 1e-12))
            self.task = tfrs.tasks.Retrieval(
                loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True),
                remove_accidental_hits=True, name="retrieval")

    @property
    def loss_tracker(self) -> tf.keras.metrics.Mean:
        return self._untracked[0]

    def call(self, history, training=None):
        """User vectors float [b, d] of right-padded histories int [b, n]."""
        return self.encoder.encode_last(history, training=training)["last"]

    def item_embeddings(self) -> tf.Tensor:
        return self.encoder.item_embeddings()

    def compute_loss(self, features, training=False):
        main, aux = self.loss_terms(features, training=training)
        self.aux_loss_tracker.update_state(aux)
        return main + aux

    def loss_terms(self, features, training=False):
        """(main, aux), float [] each: the retrieval loss over the labelled positions, and the encoder's
        weighted auxiliary loss (DIF-SR's attribute loss, ASIF's FA loss; 0 for the other encoders).
        Their sum is the training loss."""
        history, labels = features["history"], features["labels"]
        if self.last_position_loss:
            out = self.encoder.encode_last(history, training=training, labels=labels)
            last = tf.gather(labels, last_positions(history), batch_dims=1)       # [b]
            tf.debugging.assert_equal(
                tf.reduce_sum(tf.cast(labels > 0, tf.int32)), tf.reduce_sum(tf.cast(last > 0, tf.int32)),
                message="last_position_loss: a training batch has labels before the last real item "
                        "(one-sequence batches need --training_samples sequence)")
            queries = tf.boolean_mask(out["last"], last > 0)                      # [N, d]
            targets = tf.boolean_mask(last, last > 0)                             # [N]
        else:
            out = self.encoder(history, training=training, labels=labels)
            mask = labels > 0
            queries = tf.boolean_mask(out["sequence"], mask)                      # [N, d]
            targets = tf.boolean_mask(labels, mask)                               # [N]
        items = tf.cast(self.item_embeddings(), queries.dtype)
        if self.loss_name == "softmax":
            main = tf.reduce_mean(catalogue_cross_entropy(queries, targets, items))
        else:
            main = self.task(queries, tf.gather(items, targets),
                             candidate_sampling_probability=tf.gather(self.item_probabilities, targets),
                             candidate_ids=targets, compute_metrics=False, training=training)
        return main, out["aux_loss"]

    def test_step(self, data):
        vectors = self(data["history"], training=False)
        ranks = ranking.full_ranking_ranks(tf.cast(vectors, tf.float32), tf.cast(self.item_embeddings(), tf.float32),
                                           data["target"], self.eval_chunk_size)
        self.ranking.update_state(ranks)
        return dict(self.ranking.result())

    def train_step(self, inputs):
        with tf.GradientTape() as tape:
            loss = self.compute_loss(inputs, training=True)
            regularization = tf.add_n(self.losses) if self.losses else tf.zeros([])
            # Keras sums replica gradients under MirroredStrategy: scale the per-replica mean.
            replicas = tf.distribute.get_strategy().num_replicas_in_sync
            total = loss / tf.cast(replicas, tf.float32) + regularization
        self.optimizer.minimize(total, self.trainable_variables, tape=tape)
        self.loss_tracker.update_state(loss)
        return {"loss": self.loss_tracker.result(), "aux_loss": self.aux_loss_tracker.result()}

    @property
    def metrics(self):
        # Listed here so that Keras resets them at the start of every epoch.
        return [self.ranking, self.loss_tracker, self.aux_loss_tracker]

