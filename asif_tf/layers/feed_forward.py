"""Point-wise feed-forward block with residual and LayerNorm."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.initializers import truncated_normal


@tf.keras.utils.register_keras_serializable(package="asif")
class PointwiseFeedForward(tf.keras.layers.Layer):
    """LayerNorm(x + Dropout(W2 GELU(W1 x))). Call: float [..., d] -> float [..., d]."""

    def __init__(self, hidden_size: int, inner_size: int, dropout: float = 0.0,
                 layer_norm_eps: float = 1e-12, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.inner_size, self.dropout_rate = hidden_size, inner_size, dropout
        self.layer_norm_eps, self.init_std = layer_norm_eps, init_std
        self.inner = tf.keras.layers.Dense(inner_size, activation="gelu", kernel_initializer=truncated_normal(init_std), name="inner")
        self.outer = tf.keras.layers.Dense(hidden_size, kernel_initializer=truncated_normal(init_std), name="outer")
        self.dropout = tf.keras.layers.Dropout(dropout)
        self.norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="norm")

    def call(self, x, training=None):
        return self.norm(x + self.dropout(self.outer(self.inner(x)), training=training))

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "inner_size": self.inner_size,
                "dropout": self.dropout_rate, "layer_norm_eps": self.layer_norm_eps, "init_std": self.init_std}
