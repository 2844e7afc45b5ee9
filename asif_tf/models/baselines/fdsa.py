"""FDSA (Zhang et al., IJCAI 2019), as in RecBole: late fusion. An item transformer over
item IDs and a feature transformer over the item attributes run side by side; their
outputs are concatenated and projected to d."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.initializers import truncated_normal
from asif_tf.models import registry
from asif_tf.models.base import SequenceEncoder
from asif_tf.models.baselines.transformer import SelfAttentionStack, transformer_kwargs


@tf.keras.utils.register_keras_serializable(package="asif")
class FieldAttentionPooling(tf.keras.layers.Layer):
    """Attention pooling over attribute fields (FDSA's "vanilla attention"):
    out = sum_k alpha_k A_k, alpha = softmax_k(w^T tanh(W A_k + c)).

    Call: float [b, n, m, d] -> float [b, n, d]. With one field it is that field's embedding.
    """

    def __init__(self, hidden_size: int, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self.hidden_size, self.init_std = hidden_size, init_std
        self.hidden = tf.keras.layers.Dense(hidden_size, activation="tanh",
                                            kernel_initializer=truncated_normal(init_std), name="hidden")
        self.score = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer=truncated_normal(init_std),
                                           name="score")

    def call(self, fields):
        alpha = tf.nn.softmax(self.score(self.hidden(fields)), axis=2)              # [b, n, m, 1]
        return tf.reduce_sum(alpha * fields, axis=2)

    def get_config(self):
        return {**super().get_config(), "hidden_size": self.hidden_size, "init_std": self.init_std}


@tf.keras.utils.register_keras_serializable(package="asif")
class FDSAEncoder(SequenceEncoder):
    """Item stream  I0 = Dropout(LN(ItemEmb(seq) + P)),  I = Transformer_item(I0);
    feature stream F0 = Dropout(LN(pool_k(A_k) + P)),    F = Transformer_feature(F0);
    output = Dropout(LN(Linear([I; F]) to d)). P = PosEmb(0..n-1), shared by both streams.

    Call: history int [b, n] -> {"sequence": float [b, n, d], "aux_loss": 0}.
    """

    def __init__(self, num_items, hidden_size=64, max_seq_len=50, field_vocab_sizes=None, field_max_tokens=None,
                 attribute_pooling="sum", init_std=0.02, num_layers=2, num_heads=2, inner_size=256, dropout=0.5,
                 attention_dropout=0.3, layer_norm_eps=1e-12, **kwargs):
        super().__init__(num_items, hidden_size, max_seq_len, field_vocab_sizes, field_max_tokens,
                         attribute_pooling, init_std, uses_attributes=True, **kwargs)
        self._cfg = dict(num_layers=num_layers, num_heads=num_heads, inner_size=inner_size, dropout=dropout,
                         attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps)
        self.field_pooling = FieldAttentionPooling(hidden_size, init_std, name="field_pooling")
        self.item_norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="item_norm")
        self.feature_norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="feature_norm")
        self.output_norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="output_norm")
        self.dropout = tf.keras.layers.Dropout(dropout)
        self.item_transformer = SelfAttentionStack(hidden_size, init_std=init_std, name="item_transformer",
                                                   **self._cfg)
        self.feature_transformer = SelfAttentionStack(hidden_size, init_std=init_std, name="feature_transformer",
                                                      **self._cfg)
        self.concat_projection = tf.keras.layers.Dense(hidden_size, kernel_initializer=truncated_normal(init_std),
                                                       name="concat_projection")

    def call(self, history, training=None, labels=None):
        positions = self.position_vectors(tf.shape(history)[1])     # [1, n, d]
        item = self.dropout(self.item_norm(self.item_embedding(history) + positions), training=training)
        feature = self.field_pooling(self.attribute_embedding(history))                      # [b, n, d]
        feature = self.dropout(self.feature_norm(feature + positions), training=training)
        item = self.item_transformer(item, training=training)
        feature = self.feature_transformer(feature, training=training)
        out = self.concat_projection(tf.concat([item, feature], axis=-1))                    # [b, n, d]
        out = self.dropout(self.output_norm(out), training=training)
        return {"sequence": out, "aux_loss": tf.zeros([], tf.float32)}

    def get_config(self):
        return {**self.base_config(), **self._cfg}


@registry.register("fdsa")
def build_fdsa(cfg, info) -> FDSAEncoder:
    return FDSAEncoder(**registry.common_kwargs(cfg, info), **transformer_kwargs(cfg.model), name="encoder")
