"""GRU4Rec (Hidasi et al., ICLR 2016; Tan et al. 2016), as in RecBole: a GRU over the item
embeddings, trained here with the same full-catalogue softmax as every other model."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.initializers import truncated_normal
from asif_tf.models import registry
from asif_tf.models.base import SequenceEncoder


@tf.keras.utils.register_keras_serializable(package="asif")
class GRU4RecEncoder(SequenceEncoder):
    """H = GRU^L(Dropout(ItemEmb(seq))); output = Linear(H) to d (the item table's size).

    Causal by construction: the state at t has read items 0..t only. Histories are
    right-padded, so the padding is read after every real item and never reaches a
    real position's output.

    Call: history int [b, n] -> {"sequence": float [b, n, d], "aux_loss": 0}.
    """

    def __init__(self, num_items, hidden_size=64, max_seq_len=50, field_vocab_sizes=None, field_max_tokens=None,
                 attribute_pooling="sum", init_std=0.02, num_layers=1, dropout=0.3, **kwargs):
        super().__init__(num_items, hidden_size, max_seq_len, field_vocab_sizes, field_max_tokens,
                         attribute_pooling, init_std, uses_attributes=False, uses_positions=False, **kwargs)
        self._cfg = dict(num_layers=num_layers, dropout=dropout)
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        # Default GRU settings (tanh, sigmoid, reset_after, no recurrent dropout): the cuDNN kernel on GPUs.
        self.grus = [tf.keras.layers.GRU(hidden_size, return_sequences=True, name=f"gru_{i}")
                     for i in range(num_layers)]
        self.output_dense = tf.keras.layers.Dense(hidden_size, kernel_initializer=truncated_normal(init_std),
                                                  name="output")

    def call(self, history, training=None, labels=None):
        x = self.input_dropout(self.item_embedding(history), training=training)      # [b, n, d]
        for gru in self.grus:
            x = gru(x, training=training)
        return {"sequence": self.output_dense(x), "aux_loss": tf.zeros([], tf.float32)}

    def get_config(self):
        return {**self.base_config(), **self._cfg}


@registry.register("gru4rec")
def build_gru4rec(cfg, info) -> GRU4RecEncoder:
    m = cfg.model
    # The hidden dropout is the one rate a GRU can use (on its input embeddings; RecBole: dropout_prob).
    return GRU4RecEncoder(**registry.common_kwargs(cfg, info), num_layers=m.num_layers, dropout=m.dropout,
                          name="encoder")
