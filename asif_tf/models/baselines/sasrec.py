"""SASRec (Kang & McAuley, ICDM 2018), as in RecBole: item IDs only, position added to the
input, a stack of causal self-attention layers."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.models import registry
from asif_tf.models.base import SequenceEncoder
from asif_tf.models.baselines.transformer import SelfAttentionStack, transformer_kwargs


@tf.keras.utils.register_keras_serializable(package="asif")
class SASRecEncoder(SequenceEncoder):
    """E0 = Dropout(LN(ItemEmb(seq) + PosEmb(0..n-1))); output = L self-attention layers over E0.

    Call: history int [b, n] -> {"sequence": float [b, n, d], "aux_loss": 0}. Uses no attributes.
    Subclasses change only what enters the encoder (``input_embedding``).
    """

    uses_attributes = False

    def __init__(self, num_items, hidden_size=64, max_seq_len=50, field_vocab_sizes=None, field_max_tokens=None,
                 attribute_pooling="sum", init_std=0.02, num_layers=2, num_heads=2, inner_size=256, dropout=0.5,
                 attention_dropout=0.3, layer_norm_eps=1e-12, **kwargs):
        super().__init__(num_items, hidden_size, max_seq_len, field_vocab_sizes, field_max_tokens,
                         attribute_pooling, init_std, uses_attributes=self.uses_attributes, **kwargs)
        self._cfg = dict(num_layers=num_layers, num_heads=num_heads, inner_size=inner_size, dropout=dropout,
                         attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps)
        self.input_norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="input_norm")
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.transformer = SelfAttentionStack(hidden_size, init_std=init_std, name="transformer", **self._cfg)

    def input_embedding(self, history):
        """float [b, n, d]: what enters the encoder before position, LayerNorm and dropout."""
        return self.item_embedding(history)

    def call(self, history, training=None, labels=None):
        positions = self.position_vectors(tf.shape(history)[1])   # [1, n, d]
        x = self.input_dropout(self.input_norm(self.input_embedding(history) + positions), training=training)
        return {"sequence": self.transformer(x, training=training), "aux_loss": tf.zeros([], tf.float32)}

    def get_config(self):
        return {**self.base_config(), **self._cfg}


@registry.register("sasrec")
def build_sasrec(cfg, info) -> SASRecEncoder:
    return SASRecEncoder(**registry.common_kwargs(cfg, info), **transformer_kwargs(cfg.model), name="encoder")
