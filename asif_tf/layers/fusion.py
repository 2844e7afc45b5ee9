"""Fusion function gamma of the item embedding and the attribute embeddings (paper Fig. 7)."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.config import FUSIONS
from asif_tf.layers.initializers import truncated_normal


@tf.keras.utils.register_keras_serializable(package="asif")
class Fusion(tf.keras.layers.Layer):
    """gamma(E, A_1..A_m) -> F.

    Call: item float [b, n, d], attributes float [b, n, m, d] -> float [b, n, d].
    - sum:    E + sum_k A_k
    - concat: Linear([E; A_1; ...; A_m]) to d
    - gate:   sum_s alpha_s x_s over the m + 1 sources, alpha = softmax_s(w^T tanh(W x_s))
    - attributes: sum_k A_k, the item ID left out (not in the paper: it measures what the
      item identity carried by the fused stream does)
    """

    def __init__(self, mode: str = "sum", hidden_size: int = 64, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        if mode not in FUSIONS:
            raise ValueError(f"fusion must be one of {', '.join(FUSIONS)}; got {mode!r}")
        self.mode, self.hidden_size, self.init_std = mode, hidden_size, init_std
        if mode == "concat":
            self.project = tf.keras.layers.Dense(hidden_size, kernel_initializer=truncated_normal(init_std), name="concat_proj")
        elif mode == "gate":
            self.gate_hidden = tf.keras.layers.Dense(hidden_size, activation="tanh",
                                                     kernel_initializer=truncated_normal(init_std), name="gate_hidden")
            self.gate_score = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer=truncated_normal(init_std), name="gate_score")

    def call(self, item, attributes):
        if self.mode == "sum":
            return item + tf.reduce_sum(attributes, axis=2)
        if self.mode == "attributes":
            return tf.reduce_sum(attributes, axis=2)
        sources = tf.concat([item[:, :, tf.newaxis, :], attributes], axis=2)    # [b, n, m+1, d]
        if self.mode == "concat":
            shape = tf.shape(sources)
            flat = tf.reshape(sources, [shape[0], shape[1], -1])
            flat.set_shape([None, None, sources.shape[2] * sources.shape[3]])
            return self.project(flat)
        alpha = tf.nn.softmax(self.gate_score(self.gate_hidden(sources)), axis=2)  # [b, n, m+1, 1]
        return tf.reduce_sum(alpha * sources, axis=2)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "hidden_size": self.hidden_size,
                "init_std": self.init_std}
