"""What every sequence encoder (ASIF and the baselines) shares: the item table, the
input embeddings, and the contract the retrieval model relies on."""
from __future__ import annotations

from typing import Dict, Optional

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.initializers import truncated_normal

from asif_tf.layers.embeddings import AttributeEmbedding, ItemEmbedding


class SequenceEncoder(tf.keras.layers.Layer):
    """Base class. ``call(history, training=None, labels=None)
    -> {"sequence": float [b, n, d], "aux_loss": float []}``.

    ``history`` is int [b, n], right-padded with item 0. ``sequence[:, t]`` may depend
    only on ``history[:, :t+1]`` (causality), so one sequence can carry a loss at every
    position. ``item_embeddings()`` is the [num_items + 1, d] table that scores items
    (shared by input and output; row 0 is padding and never scores). ``labels`` (int
    [b, n], the next item at each position, 0 = no loss) is passed during training for
    auxiliary losses that need the targets (DIF-SR's attribute predictors); ``aux_loss``
    is already weighted.

    ``encode_last(history, training=None, labels=None) -> {"last": float [b, d], "aux_loss"}``
    is the output at each history's last real item, which is all that evaluation, serving
    and prefix training read. Here it is ``sequence`` gathered there; an encoder may
    override it to compute that one position only (ASIF does).
    """

    def __init__(self, num_items: int, hidden_size: int, max_seq_len: int,
                 field_vocab_sizes: Optional[Dict[str, int]] = None,
                 field_max_tokens: Optional[Dict[str, int]] = None, attribute_pooling: str = "sum",
                 init_std: float = 0.02, uses_attributes: bool = True, uses_positions: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.num_items, self.hidden_size, self.max_seq_len = int(num_items), int(hidden_size), int(max_seq_len)
        self.field_vocab_sizes = dict(field_vocab_sizes or {})
        self.field_max_tokens = dict(field_max_tokens or {})
        self.attribute_pooling, self.init_std = attribute_pooling, init_std
        self.item_embedding = ItemEmbedding(self.num_items + 1, hidden_size,
                                            embeddings_initializer=truncated_normal(init_std), name="item_embedding")
        # Absolute positions 0..n-1 of the right-padded window; GRU4Rec has none.
        self.position_embedding = tf.keras.layers.Embedding(
            self.max_seq_len, hidden_size, embeddings_initializer=truncated_normal(init_std),
            name="position_embedding") if uses_positions else None
        self.attribute_embedding = None
        if uses_attributes:
            if not self.field_vocab_sizes:
                raise ValueError(f"model {type(self).__name__} needs item attributes, but the dataset has none")
            self.attribute_embedding = AttributeEmbedding(
                self.num_items, self.field_vocab_sizes, self.field_max_tokens, hidden_size,
                pooling=attribute_pooling, init_std=init_std, name="attribute_embedding")

    def encode_last(self, history, training=None, labels=None) -> Dict[str, tf.Tensor]:
        out = self(history, training=training, labels=labels)
        return {"last": last_position_vectors(out["sequence"], history), "aux_loss": out["aux_loss"]}

    def position_vectors(self, length) -> tf.Tensor:
        """float [1, length, d]: the embeddings of positions 0..length-1."""
        return self.position_embedding(tf.range(length))[tf.newaxis]

    def item_embeddings(self) -> tf.Tensor:
        if not self.item_embedding.built:
            self.item_embedding.build(None)
        return self.item_embedding.embeddings

    def set_item_table(self, item_attributes) -> None:
        if self.attribute_embedding is not None:
            self.attribute_embedding.set_item_table(item_attributes)

    def base_config(self):
        return {**super().get_config(), "num_items": self.num_items, "hidden_size": self.hidden_size,
                "max_seq_len": self.max_seq_len, "field_vocab_sizes": self.field_vocab_sizes,
                "field_max_tokens": self.field_max_tokens, "attribute_pooling": self.attribute_pooling,
                "init_std": self.init_std}


def last_positions(history: tf.Tensor) -> tf.Tensor:
    """int [b]: the index of the last real item of each right-padded history int [b, n] (0 if none)."""
    lengths = tf.reduce_sum(tf.cast(history > 0, tf.int32), axis=1)
    return tf.maximum(lengths - 1, 0)


def last_position_vectors(sequence: tf.Tensor, history: tf.Tensor) -> tf.Tensor:
    """Output at the last real item of each right-padded history: float [b, n, d] -> [b, d]."""
    return tf.gather(sequence, last_positions(history), batch_dims=1)


def valid_mask(history: tf.Tensor, dtype=tf.float32) -> tf.Tensor:
    """float [b, n]: 1 at real items, 0 at padding."""
    return tf.cast(history > 0, dtype)
