"""SASRecF (RecBole's feature-aware SASRec): early fusion. The item embedding and the
attribute embeddings of every field are concatenated and projected to d before the
SASRec encoder, so attributes enter the item representation itself."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.fusion import Fusion
from asif_tf.models import registry
from asif_tf.models.base import SequenceEncoder
from asif_tf.models.baselines.transformer import SelfAttentionStack, transformer_kwargs


@tf.keras.utils.register_keras_serializable(package="asif")
class SASRecFEncoder(SequenceEncoder):
    """X0 = Dropout(LN(gamma(ItemEmb(seq), A_1..A_m) + PosEmb(0..n-1))); output = L self-attention
    layers over X0. gamma is ``fusion`` (RecBole: concat, i.e. Linear([E; A_1; ...; A_m]) to d).

    Call: history int [b, n] -> {"sequence": float [b, n, d], "aux_loss": 0}.
    """

    def __init__(self, num_items, hidden_size=64, max_seq_len=50, field_vocab_sizes=None, field_max_tokens=None,
                 attribute_pooling="sum", init_std=0.02, num_layers=2, num_heads=2, inner_size=256, dropout=0.5,
                 attention_dropout=0.3, layer_norm_eps=1e-12, fusion="concat", **kwargs):
        super().__init__(num_items, hidden_size, max_seq_len, field_vocab_sizes, field_max_tokens,
                         attribute_pooling, init_std, uses_attributes=True, **kwargs)
        self._cfg = dict(num_layers=num_layers, num_heads=num_heads, inner_size=inner_size, dropout=dropout,
                         attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps)
        self.fusion_mode = fusion
        self.fusion = Fusion(fusion, hidden_size, init_std, name="fusion")
        self.input_norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="input_norm")
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.transformer = SelfAttentionStack(hidden_size, init_std=init_std, name="transformer", **self._cfg)

    def call(self, history, training=None, labels=None):
        positions = self.position_vectors(tf.shape(history)[1])   # [1, n, d]
        fused = self.fusion(self.item_embedding(history), self.attribute_embedding(history))  # [b, n, d]
        x = self.input_dropout(self.input_norm(fused + positions), training=training)
        return {"sequence": self.transformer(x, training=training), "aux_loss": tf.zeros([], tf.float32)}

    def get_config(self):
        return {**self.base_config(), **self._cfg, "fusion": self.fusion_mode}


@registry.register("sasrecf")
def build_sasrecf(cfg, info) -> SASRecFEncoder:
    # Early fusion is defined by concatenation (RecBole's SASRecF); --fusion is the hybrid models' gamma.
    return SASRecFEncoder(**registry.common_kwargs(cfg, info), **transformer_kwargs(cfg.model), fusion="concat",
                          name="encoder")
