"""Attribute embedding: item ids -> sum over fields of pooled attribute embeddings."""
from __future__ import annotations

from typing import Dict, Sequence

from asif_tf import _env  # noqa: F401
import numpy as np
import tensorflow as tf

from asif_tf.layers.initializers import truncated_normal


@tf.keras.utils.register_keras_serializable(package="asif")
class ItemEmbedding(tf.keras.layers.Embedding):
    """The item table: a Keras Embedding whose lookups gather from one dense read of the table.

    Call: item ids int [b, n] -> float [b, n, d]; ``embeddings`` is [num_items + 1, d].

    Why not ``tf.nn.embedding_lookup`` on the variable: a ResourceGather switches a
    resource variable to copy-on-read, after which every dense read of it copies the whole
    table. The table *is* read densely, by the scoring matmul (training's full softmax and
    the served top-k), so a 1M-item catalogue paid a 256 MB copy (24 ms) per served request.
    A Gather on the read value gives the same values and the same IndexedSlices gradient.
    """

    def call(self, inputs):
        if inputs.dtype not in (tf.int32, tf.int64):
            inputs = tf.cast(inputs, tf.int32)
        out = tf.gather(tf.convert_to_tensor(self.embeddings), inputs)
        if self._dtype_policy.compute_dtype != self._dtype_policy.variable_dtype:
            out = tf.cast(out, self._dtype_policy.compute_dtype)
        return out


@tf.keras.utils.register_keras_serializable(package="asif")
class AttributeEmbedding(tf.keras.layers.Layer):
    """Looks up each item's attribute ids inside the model and embeds them.

    The item -> attribute table is data, not config: it is held as a non-trainable
    weight (saved with checkpoints and SavedModels) and filled with
    ``set_item_table``. Attribute id 0 is padding and contributes nothing.

    Call: item_ids int [b, n] -> per-field embeddings float [b, n, m, d]
    (m = number of fields); ``A = sum over fields`` is ``tf.reduce_sum(out, 2)``.
    """

    def __init__(self, num_items: int, field_vocab_sizes: Dict[str, int],
                 field_max_tokens: Dict[str, int], hidden_size: int, pooling: str = "sum",
                 init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        if pooling not in ("sum", "mean"):
            raise ValueError(f"attribute pooling must be 'sum' or 'mean', got {pooling!r}")
        if not field_vocab_sizes:
            raise ValueError("AttributeEmbedding needs at least one attribute field")
        self.num_items = int(num_items)
        self.fields = sorted(field_vocab_sizes)
        self.field_vocab_sizes = {f: int(field_vocab_sizes[f]) for f in self.fields}
        self.field_max_tokens = {f: max(1, int(field_max_tokens[f])) for f in self.fields}
        self.hidden_size = hidden_size
        self.pooling = pooling
        self.init_std = init_std
        self.tables, self.embeddings = {}, {}
        for f in self.fields:
            # Row i holds the attribute ids of item i, right-padded with 0.
            self.tables[f] = self.add_weight(
                name=f"item_to_{f}", shape=(self.num_items + 1, self.field_max_tokens[f]),
                dtype=tf.int32, initializer="zeros", trainable=False)
            self.embeddings[f] = tf.keras.layers.Embedding(
                self.field_vocab_sizes[f] + 1, hidden_size, embeddings_initializer=truncated_normal(init_std), name=f"embed_{f}")

    def set_item_table(self, item_attributes: Dict[str, np.ndarray]) -> None:
        """item_attributes[field]: int [num_items + 1, <= max_tokens] padded with 0."""
        for f in self.fields:
            table = np.zeros((self.num_items + 1, self.field_max_tokens[f]), np.int32)
            src = np.asarray(item_attributes[f])
            table[:src.shape[0], :src.shape[1]] = src
            self.tables[f].assign(table)

    def call(self, item_ids):
        outs = []
        for f in self.fields:
            attr_ids = tf.gather(self.tables[f], item_ids)                      # [b, n, T]
            mask = tf.cast(attr_ids > 0, self.compute_dtype)[..., tf.newaxis]   # [b, n, T, 1]
            emb = self.embeddings[f](attr_ids) * mask                           # [b, n, T, d]
            pooled = tf.reduce_sum(emb, axis=-2)
            if self.pooling == "mean":
                pooled = pooled / tf.maximum(tf.reduce_sum(mask, axis=-2), 1.0)
            outs.append(pooled)
        return tf.stack(outs, axis=2)                                           # [b, n, m, d]

    def get_config(self):
        return {**super().get_config(), "num_items": self.num_items,
                "field_vocab_sizes": self.field_vocab_sizes, "field_max_tokens": self.field_max_tokens,
                "hidden_size": self.hidden_size, "pooling": self.pooling, "init_std": self.init_std}
