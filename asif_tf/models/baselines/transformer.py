"""The causal self-attention stack shared by SASRec, SASRecF and FDSA (RecBole's
``TransformerEncoder``, post-LayerNorm): built from the package's attention parts."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.attention import AttentionOutput, ScoreProjection, causal_mask
from asif_tf.layers.feed_forward import PointwiseFeedForward


@tf.keras.utils.register_keras_serializable(package="asif")
class SelfAttentionBlock(tf.keras.layers.Layer):
    """One post-LN Transformer layer with causal multi-head self-attention:

        x' = LayerNorm(x + Dropout(Wo · AttnDropout(softmax((x Wq)(x Wk)^T / sqrt(dh) + M)) · (x Wv)))
        y  = LayerNorm(x' + Dropout(W2 GELU(W1 x')))

    Call: x float [b, n, d] -> float [b, n, d]; position t attends to positions <= t only.
    """

    def __init__(self, hidden_size: int, num_heads: int, inner_size: int, dropout: float = 0.5,
                 attention_dropout: float = 0.3, layer_norm_eps: float = 1e-12, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self._cfg = dict(hidden_size=hidden_size, num_heads=num_heads, inner_size=inner_size, dropout=dropout,
                         attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps, init_std=init_std)
        self.scores = ScoreProjection(hidden_size, num_heads, init_std, name="scores")
        self.attention = AttentionOutput(hidden_size, num_heads, dropout, attention_dropout, layer_norm_eps,
                                         init_std, name="attention")
        self.ffn = PointwiseFeedForward(hidden_size, inner_size, dropout, layer_norm_eps, init_std, name="ffn")

    def call(self, x, training=None):
        mask = causal_mask(tf.shape(x)[1], x.dtype)
        return self.ffn(self.attention(self.scores(x), x, mask, training=training), training=training)

    def get_config(self):
        return {**super().get_config(), **self._cfg}


@tf.keras.utils.register_keras_serializable(package="asif")
class SelfAttentionStack(tf.keras.layers.Layer):
    """``num_layers`` SelfAttentionBlocks, each with its own weights.

    Call: x float [b, n, d] -> float [b, n, d] (the last layer's output).
    """

    def __init__(self, hidden_size: int, num_layers: int, num_heads: int, inner_size: int, dropout: float = 0.5,
                 attention_dropout: float = 0.3, layer_norm_eps: float = 1e-12, init_std: float = 0.02, **kwargs):
        super().__init__(**kwargs)
        self._cfg = dict(hidden_size=hidden_size, num_layers=num_layers, num_heads=num_heads, inner_size=inner_size,
                         dropout=dropout, attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps,
                         init_std=init_std)
        block = {k: v for k, v in self._cfg.items() if k != "num_layers"}
        self.blocks = [SelfAttentionBlock(**block, name=f"block_{i}") for i in range(num_layers)]

    def call(self, x, training=None):
        for block in self.blocks:
            x = block(x, training=training)
        return x

    def get_config(self):
        return {**super().get_config(), **self._cfg}


def transformer_kwargs(cfg) -> dict:
    """SelfAttentionStack arguments from a ModelConfig (``cfg.model``)."""
    return dict(num_layers=cfg.num_layers, num_heads=cfg.num_heads, inner_size=cfg.inner_size, dropout=cfg.dropout,
                attention_dropout=cfg.attention_dropout, layer_norm_eps=cfg.layer_norm_eps)
