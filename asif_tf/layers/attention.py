"""Building blocks of decoupled multi-head attention: score matrices and attention outputs
are separate layers, so that ASIF (and NOVA / DIF-SR) can add score matrices of several
streams and apply them to the values of another stream."""
from __future__ import annotations

import math

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.initializers import truncated_normal


def causal_mask(length, dtype=tf.float32) -> tf.Tensor:
    """Additive mask float [1, 1, n, n]: 0 where key j <= query i, a large negative elsewhere.

    Sequences are right-padded, so for every real query position the causal mask
    already excludes every padded key; padded query rows are never read.
    """
    allowed = tf.linalg.band_part(tf.ones([length, length], tf.bool), -1, 0)
    big_negative = tf.constant(-1e9 if dtype == tf.float32 else -3e4, dtype)
    return tf.where(allowed, tf.zeros([], dtype), big_negative)[tf.newaxis, tf.newaxis]


def split_heads(x: tf.Tensor, num_heads: int) -> tf.Tensor:
    """float [b, n, d] -> [b, h, n, d/h]."""
    shape = tf.shape(x)
    x = tf.reshape(x, [shape[0], shape[1], num_heads, x.shape[-1] // num_heads])
    return tf.transpose(x, [0, 2, 1, 3])


@tf.keras.utils.register_keras_serializable(package="asif")
class ScoreProjection(tf.keras.layers.Layer):
    """Unscaled attention scores (x Wq)(x Wk)^T per head.

    Call: float [b, n, d] -> float [b, h, n, n].
    """

    def __init__(self, hidden_size: int, num_heads: int, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.num_heads, self.init_std = hidden_size, num_heads, init_std
        self.query = tf.keras.layers.Dense(hidden_size, kernel_initializer=truncated_normal(init_std), name="query")
        self.key = tf.keras.layers.Dense(hidden_size, kernel_initializer=truncated_normal(init_std), name="key")

    def call(self, x):
        q = split_heads(self.query(x), self.num_heads)
        k = split_heads(self.key(x), self.num_heads)
        return tf.matmul(q, k, transpose_b=True)

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "num_heads": self.num_heads,
                "init_std": self.init_std}


@tf.keras.utils.register_keras_serializable(package="asif")
class AttentionOutput(tf.keras.layers.Layer):
    """Attn(S, X) = LayerNorm(X + Dropout(Wo · AttnDropout(softmax(S / sqrt(dh) + M)) · (X Wv))).

    Call: scores float [b or 1, h, q, n] (unscaled, summed over streams), x float [b, n, d],
    mask float broadcastable to the scores -> float [b, q, d]. Values always come from all n
    positions of x; the residual is x itself (q = n) or, for q query rows only (e.g. the
    last position), ``residual`` float [b, q, d], the rows of x the scores' rows belong to.
    """

    def __init__(self, hidden_size: int, num_heads: int, dropout: float = 0.0, attention_dropout: float = 0.0,
                 layer_norm_eps: float = 1e-12, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.num_heads = hidden_size, num_heads
        self.dropout_rate, self.attention_dropout_rate = dropout, attention_dropout
        self.layer_norm_eps, self.init_std = layer_norm_eps, init_std
        self.value = tf.keras.layers.Dense(hidden_size, kernel_initializer=truncated_normal(init_std), name="value")
        self.output_dense = tf.keras.layers.Dense(hidden_size, kernel_initializer=truncated_normal(init_std), name="output")
        self.attention_dropout = tf.keras.layers.Dropout(attention_dropout)
        self.dropout = tf.keras.layers.Dropout(dropout)
        self.norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="norm")

    def call(self, scores, x, mask, training=None, residual=None):
        dh = self.hidden_size // self.num_heads
        probs = tf.nn.softmax(scores / tf.cast(math.sqrt(dh), scores.dtype) + tf.cast(mask, scores.dtype), axis=-1)
        probs = self.attention_dropout(probs, training=training)
        v = split_heads(self.value(x), self.num_heads)                         # [b, h, n, dh]
        context = tf.matmul(probs, v)                                         # [b, h, n, dh]
        context = tf.transpose(context, [0, 2, 1, 3])
        shape = tf.shape(context)
        context = tf.reshape(context, [shape[0], shape[1], self.hidden_size])
        residual = x if residual is None else residual
        return self.norm(residual + self.dropout(self.output_dense(context), training=training))

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "num_heads": self.num_heads,
                "dropout": self.dropout_rate, "attention_dropout": self.attention_dropout_rate,
                "layer_norm_eps": self.layer_norm_eps, "init_std": self.init_std}
