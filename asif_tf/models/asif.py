"""The ASIF encoder (ASIF.md): input streams, L ASIF layers, the FA alignment loss."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf


from asif_tf.layers.asif_layer import ASIFLayer
from asif_tf.layers.fusion import Fusion
from asif_tf.models.base import SequenceEncoder, last_positions, valid_mask


def feature_alignment_loss(item_emb, attr_emb, valid, temperature: float, mask_padding: bool = True):
    """FA loss: symmetric InfoNCE aligning position t's ID embedding with its attribute embedding.

    item_emb, attr_emb: float [b, n, d] (before dropout); valid: float [b, n].
    S = norm(X) norm(A)^T / tau, [b, n, n]; the positive of row t (and of column t) is t.
    Returns the mean over (real) positions of the two cross-entropies.
    """
    x = tf.math.l2_normalize(tf.cast(item_emb, tf.float32), axis=-1)
    a = tf.math.l2_normalize(tf.cast(attr_emb, tf.float32), axis=-1)
    sim = tf.matmul(x, a, transpose_b=True) / temperature                         # [b, n, n]
    n = tf.shape(sim)[1]
    labels = tf.broadcast_to(tf.range(n)[tf.newaxis], tf.shape(valid))
    weight = tf.cast(valid, tf.float32) if mask_padding else tf.ones_like(valid, tf.float32)
    key_mask = (1.0 - weight[:, tf.newaxis, :]) * -1e9                            # padded keys never compete
    rows = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, sim + key_mask)
    cols = tf.nn.sparse_softmax_cross_entropy_with_logits(labels, tf.linalg.matrix_transpose(sim) + key_mask)
    per_position = 0.5 * (rows + cols)
    return tf.math.divide_no_nan(tf.reduce_sum(per_position * weight), tf.reduce_sum(weight))


@tf.keras.utils.register_keras_serializable(package="asif")
class ASIFEncoder(SequenceEncoder):
    """E0 = Dropout(LN(ItemEmb(seq))) (+ position without UP); A = attribute embedding;
    F0 = gamma(E0, A); P0 = PosEmb(0..n-1); then L ASIF layers. Output: the item stream
    (``call(..., last_only=True)``: only at the last real item, which the last layer then
    computes for that one position; see ``SequenceEncoder.encode_last``)."""

    def __init__(self, num_items, hidden_size=64, max_seq_len=50, field_vocab_sizes=None, field_max_tokens=None,
                 attribute_pooling="sum", init_std=0.02, num_layers=2, num_heads=2, inner_size=256,
                 dropout=0.5, attention_dropout=0.3, layer_norm_eps=1e-12, fusion="sum", rsa=True, up=True,
                 hie=True, fa=True, num_bases=16, hie_from_layer=0, hie_causal=True, hie_mask_padding=True,
                 refine_fused=True, separate_ffn=True, lambda_fa=0.01, fa_temperature=0.2, fa_mask_padding=True,
                 attribute_dropout=0.0, **kwargs):
        super().__init__(num_items, hidden_size, max_seq_len, field_vocab_sizes, field_max_tokens,
                         attribute_pooling, init_std, uses_attributes=True, **kwargs)
        self._cfg = dict(num_layers=num_layers, num_heads=num_heads, inner_size=inner_size, dropout=dropout,
                         attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps, fusion=fusion,
                         rsa=rsa, up=up, hie=hie, fa=fa, num_bases=num_bases, hie_from_layer=hie_from_layer,
                         hie_causal=hie_causal, hie_mask_padding=hie_mask_padding, refine_fused=refine_fused,
                         separate_ffn=separate_ffn, lambda_fa=lambda_fa, fa_temperature=fa_temperature,
                         fa_mask_padding=fa_mask_padding, attribute_dropout=attribute_dropout)
        self.up, self.fa = up, fa and lambda_fa > 0
        self.lambda_fa, self.fa_temperature, self.fa_mask_padding = lambda_fa, fa_temperature, fa_mask_padding
        self.uses_fused = rsa or hie
        self.input_norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="input_norm")
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        # A reaches the fused stream (and through RSA and HIE the item stream) without passing the
        # input dropout; attribute_dropout > 0 regularises that path (0 = the research code).
        self.attribute_dropout = tf.keras.layers.Dropout(attribute_dropout, name="attribute_dropout")
        self.fusion = Fusion(fusion, hidden_size, init_std, name="fusion") if self.uses_fused else None
        # HIE runs in layers hie_from_layer..L-1 (all of them by default, as in the paper). A layer
        # below the first HIE layer still refines F when a layer above reads it (RSA or HIE).
        hie_in = [hie and i >= hie_from_layer for i in range(num_layers)]
        self.blocks = [
            ASIFLayer(hidden_size, num_heads, inner_size, dropout, attention_dropout, layer_norm_eps, init_std,
                      rsa=rsa, up=up, hie=hie_in[i], refine_fused=refine_fused, separate_ffn=separate_ffn,
                      num_bases=num_bases, max_seq_len=max_seq_len, hie_causal=hie_causal,
                      hie_mask_padding=hie_mask_padding, last=(i == num_layers - 1),
                      fused_read_above=rsa or any(hie_in[i + 1:]), name=f"asif_layer_{i}")
            for i in range(num_layers)]

    def call(self, history, training=None, labels=None, last_only=False):
        n = tf.shape(history)[1]
        valid = valid_mask(history, self.compute_dtype)
        item_emb = self.item_embedding(history)                                   # [b, n, d]
        positions = self.position_vectors(n)              # [1, n, d]
        x = item_emb if self.up else item_emb + positions
        item = self.input_dropout(self.input_norm(x), training=training)
        fused, attrs = None, None
        if self.uses_fused or self.fa:
            attrs = self.attribute_embedding(history)                              # [b, n, m, d]
        if self.uses_fused:
            fused = self.fusion(item, self.attribute_dropout(attrs, training=training))
        position = positions if self.up else None
        for block in self.blocks[:-1]:
            item, fused, position = block(item, fused, position, valid, training=training)
        if last_only:                                                              # [b, 1, d]
            item = self.blocks[-1](item, fused, position, valid, training=training, rows=last_positions(history))
        else:
            item, _, _ = self.blocks[-1](item, fused, position, valid, training=training)
        aux = tf.zeros([], tf.float32)
        if self.fa:
            aux = self.lambda_fa * feature_alignment_loss(item_emb, tf.reduce_sum(attrs, axis=2), valid,
                                                          self.fa_temperature, self.fa_mask_padding)
        if last_only:
            return {"last": item[:, 0], "aux_loss": aux}
        return {"sequence": item, "aux_loss": aux}

    def encode_last(self, history, training=None, labels=None):
        return self(history, training=training, labels=labels, last_only=True)

    def get_config(self):
        return {**self.base_config(), **self._cfg}
