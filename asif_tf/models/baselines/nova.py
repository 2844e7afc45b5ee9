"""NOVA (Liu et al., AAAI 2021): non-invasive fusion of side information. Attention
queries and keys come from the item stream fused with the side information (attributes
and position); attention values come from the pure item stream, so side information
steers attention but is never mixed into the item representation."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.attention import AttentionOutput, ScoreProjection, causal_mask
from asif_tf.layers.feed_forward import PointwiseFeedForward
from asif_tf.layers.fusion import Fusion
from asif_tf.models import registry
from asif_tf.models.base import SequenceEncoder


@tf.keras.utils.register_keras_serializable(package="asif")
class NovaLayer(tf.keras.layers.Layer):
    """One NOVA layer over the item stream E with static side information S_1..S_s:

        R  = gamma(E, S_1..S_s)                                  fused, for scores only
        E' = LayerNorm(E + Dropout(Wo · AttnDropout(softmax((R Wq)(R Wk)^T / sqrt(dh) + M)) · (E Wv)))
        E''= FFN(E')

    Call: item float [b, n, d], side float [b, n, s, d] -> float [b, n, d].
    """

    def __init__(self, hidden_size: int, num_heads: int, inner_size: int, dropout: float = 0.5,
                 attention_dropout: float = 0.3, layer_norm_eps: float = 1e-12, init_std: float = 0.02,
                 fusion: str = "sum", **kwargs):
        super().__init__(**kwargs)
        self._cfg = dict(hidden_size=hidden_size, num_heads=num_heads, inner_size=inner_size, dropout=dropout,
                         attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps, init_std=init_std,
                         fusion=fusion)
        self.fusion = Fusion(fusion, hidden_size, init_std, name="fusion")
        self.fused_scores = ScoreProjection(hidden_size, num_heads, init_std, name="fused_scores")
        self.attention = AttentionOutput(hidden_size, num_heads, dropout, attention_dropout, layer_norm_eps,
                                         init_std, name="attention")
        self.ffn = PointwiseFeedForward(hidden_size, inner_size, dropout, layer_norm_eps, init_std, name="ffn")

    def scores(self, item, side):
        """Unscaled attention scores float [b, h, n, n] of the fused stream."""
        return self.fused_scores(self.fusion(item, side))

    def call(self, item, side, training=None):
        mask = causal_mask(tf.shape(item)[1], item.dtype)
        out = self.attention(self.scores(item, side), item, mask, training=training)
        return self.ffn(out, training=training)

    def get_config(self):
        return {**super().get_config(), **self._cfg}


@tf.keras.utils.register_keras_serializable(package="asif")
class NOVAEncoder(SequenceEncoder):
    """E0 = Dropout(LN(ItemEmb(seq))) (no position: position is side information);
    side = [A_1, ..., A_m, PosEmb(0..n-1)], the same in every layer; L NovaLayers update E.

    Call: history int [b, n] -> {"sequence": float [b, n, d], "aux_loss": 0}.
    """

    def __init__(self, num_items, hidden_size=64, max_seq_len=50, field_vocab_sizes=None, field_max_tokens=None,
                 attribute_pooling="sum", init_std=0.02, num_layers=2, num_heads=2, inner_size=256, dropout=0.5,
                 attention_dropout=0.3, layer_norm_eps=1e-12, fusion="sum", **kwargs):
        super().__init__(num_items, hidden_size, max_seq_len, field_vocab_sizes, field_max_tokens,
                         attribute_pooling, init_std, uses_attributes=True, **kwargs)
        self._cfg = dict(num_layers=num_layers, num_heads=num_heads, inner_size=inner_size, dropout=dropout,
                         attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps, fusion=fusion)
        self.input_norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="input_norm")
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.blocks = [NovaLayer(hidden_size, num_heads, inner_size, dropout, attention_dropout, layer_norm_eps,
                                 init_std, fusion, name=f"nova_layer_{i}") for i in range(num_layers)]

    def side_information(self, history):
        """float [b, n, m + 1, d]: the attribute embeddings of each field, then the position embedding."""
        attrs = self.attribute_embedding(history)                                   # [b, n, m, d]
        positions = self.position_embedding(tf.range(tf.shape(history)[1]))         # [n, d]
        positions = tf.broadcast_to(positions[tf.newaxis, :, tf.newaxis, :],
                                    tf.concat([tf.shape(attrs)[:2], [1, self.hidden_size]], 0))
        return tf.concat([attrs, tf.cast(positions, attrs.dtype)], axis=2)

    def call(self, history, training=None, labels=None):
        side = self.side_information(history)
        item = self.input_dropout(self.input_norm(self.item_embedding(history)), training=training)
        for block in self.blocks:
            item = block(item, side, training=training)
        return {"sequence": item, "aux_loss": tf.zeros([], tf.float32)}

    def get_config(self):
        return {**self.base_config(), **self._cfg}


@registry.register("nova")
def build_nova(cfg, info) -> NOVAEncoder:
    m = cfg.model
    return NOVAEncoder(**registry.common_kwargs(cfg, info), num_layers=m.num_layers, num_heads=m.num_heads,
                       inner_size=m.inner_size, dropout=m.dropout, attention_dropout=m.attention_dropout,
                       layer_norm_eps=m.layer_norm_eps, fusion=m.fusion, name="encoder")
