"""One ASIF layer: RSA attention over item / fused / position streams, HIE, feed-forward."""
from __future__ import annotations

from typing import Optional

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.attention import AttentionOutput, ScoreProjection, causal_mask
from asif_tf.layers.feed_forward import PointwiseFeedForward
from asif_tf.layers.hie import HomogeneousInformationExtraction


@tf.keras.utils.register_keras_serializable(package="asif")
class ASIFLayer(tf.keras.layers.Layer):
    """Streams E (item ids), F (fused ID + attributes), P (positions), per ASIF.md:

        S_F = (F Wq_F)(F Wk_F)^T      (rsa)        S_E = (E Wq)(E Wk)^T   (no rsa)
        S_P = (P Wq_P)(P Wk_P)^T      (up)
        E' = Attn(S_F + S_P, E Wv, E)               values from the pure ID stream
        F' = Attn(S_F, F Wv_F, F)     (refine_fused; otherwise F' = F)
        P' = Attn(S_P, P Wv_P, P)     (up)
        E'' = HIE(E', F')             (hie; otherwise E'' = E')
        then a feed-forward block on each stream (separate, or one shared).

    Call: item float [b, n, d]; fused float [b, n, d] or None (needed with rsa or hie);
    position float [1, n, d] or None (needed with up: P is the same for every sequence);
    valid float [b, n] (1 = real item). Returns the three updated streams. A layer built
    with ``last=True`` skips the work whose result nothing reads (the F and P updates); given
    ``rows`` int [b] as well (one position per sequence, e.g. the last real item), it computes
    the item stream only there and returns only it, float [b, 1, d]: F', HIE and the
    feed-forward block for one position instead of n (E' is still needed everywhere when
    HIE builds its basis from it).
    """

    def __init__(self, hidden_size: int, num_heads: int, inner_size: int, dropout: float = 0.5,
                 attention_dropout: float = 0.3, layer_norm_eps: float = 1e-12, init_std: float = 0.02,
                 rsa: bool = True, up: bool = True, hie: bool = True, refine_fused: bool = True,
                 separate_ffn: bool = True, num_bases: int = 16, max_seq_len: int = 50,
                 hie_causal: bool = True, hie_mask_padding: bool = True, last: bool = False,
                 fused_read_above: Optional[bool] = None, **kwargs):
        super().__init__(**kwargs)
        self._cfg = dict(hidden_size=hidden_size, num_heads=num_heads, inner_size=inner_size, dropout=dropout,
                         attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps, init_std=init_std,
                         rsa=rsa, up=up, hie=hie, refine_fused=refine_fused, separate_ffn=separate_ffn,
                         num_bases=num_bases, max_seq_len=max_seq_len, hie_causal=hie_causal,
                         hie_mask_padding=hie_mask_padding, last=last, fused_read_above=fused_read_above)
        self.rsa, self.up, self.hie_on, self.last = rsa, up, hie, last
        # F' is computed when something reads it: this layer's HIE, or a layer above (its RSA scores or
        # its HIE). None: a layer above reads F exactly when it uses RSA, as when every layer has HIE.
        read_above = rsa if fused_read_above is None else fused_read_above
        self.refine_fused = refine_fused and (hie or (read_above and not last))
        heads = dict(hidden_size=hidden_size, num_heads=num_heads, init_std=init_std)
        attn = dict(heads, dropout=dropout, attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps)
        ffn = dict(hidden_size=hidden_size, inner_size=inner_size, dropout=dropout,
                   layer_norm_eps=layer_norm_eps, init_std=init_std)
        self.fused_scores = ScoreProjection(**heads, name="fused_scores") if (rsa or self.refine_fused) else None
        self.item_scores = None if rsa else ScoreProjection(**heads, name="item_scores")
        self.position_scores = ScoreProjection(**heads, name="position_scores") if up else None
        self.item_attention = AttentionOutput(**attn, name="item_attention")
        self.fused_attention = AttentionOutput(**attn, name="fused_attention") if self.refine_fused else None
        self.position_attention = AttentionOutput(**attn, name="position_attention") if up and not last else None
        self.hie = HomogeneousInformationExtraction(num_bases, max_seq_len, causal=hie_causal,
                                                    mask_padding=hie_mask_padding, name="hie") if hie else None
        self.item_ffn = PointwiseFeedForward(**ffn, name="item_ffn" if separate_ffn else "shared_ffn")
        shared = None if separate_ffn else self.item_ffn
        needs_fused_ffn = self.refine_fused and not last
        self.fused_ffn = (shared or PointwiseFeedForward(**ffn, name="fused_ffn")) if needs_fused_ffn else None
        self.position_ffn = (shared or PointwiseFeedForward(**ffn, name="position_ffn")) \
            if (up and not last) else None

    def call(self, item, fused, position, valid, training=None, rows=None):
        if rows is not None:
            if not self.last:
                raise ValueError(f"{self.name}: rows= is only for the last layer (the layers above read every position)")
            return self._last_rows(item, fused, position, valid, rows, training)
        n = tf.shape(item)[1]
        mask = causal_mask(n, item.dtype)
        s_item, s_f, s_p = self._scores(item, fused, position)
        new_item = self.item_attention(s_item, item, mask, training=training)
        new_fused = self.fused_attention(s_f, fused, mask, training=training) if self.refine_fused else fused
        if self.hie is not None:
            new_item = self.hie(new_item, new_fused, valid)
        new_item = self.item_ffn(new_item, training=training)
        if self.last:
            return new_item, new_fused, position
        if self.fused_ffn is not None:
            new_fused = self.fused_ffn(new_fused, training=training)
        new_position = position
        if self.up:
            new_position = self.position_ffn(self.position_attention(s_p, position, mask, training=training),
                                             training=training)
        return new_item, new_fused, new_position

    def _scores(self, item, fused, position):
        """Unscaled scores (item stream, fused stream or None, position stream or None):
        float [b, h, n, n], [b, h, n, n], [1, h, n, n]."""
        s_f = self.fused_scores(fused) if self.fused_scores is not None else None
        s_p = self.position_scores(position) if self.up else None
        s_item = s_f if self.rsa else self.item_scores(item)
        if s_p is not None:
            s_item = s_item + s_p
        return s_item, s_f, s_p

    def _last_rows(self, item, fused, position, valid, rows, training):
        """The last layer's item stream at one position per sequence: float [b, 1, d]."""
        n = tf.shape(item)[1]
        at_rows = rows[:, tf.newaxis]                                              # [b, 1]

        def score_rows(scores):                                  # [b|1, h, n, n] -> [b, h, 1, n]
            scores = tf.broadcast_to(scores, tf.concat([tf.shape(item)[:1], tf.shape(scores)[1:]], 0))
            return tf.gather(scores, at_rows, axis=2, batch_dims=1)

        full_mask = causal_mask(n, item.dtype)
        mask = score_rows(full_mask)                                               # [b, 1, 1, n]
        s_item, s_f, _ = self._scores(item, fused, position)
        if self.hie is None:
            new_item = self.item_attention(score_rows(s_item), item, mask, training=training,
                                           residual=tf.gather(item, at_rows, batch_dims=1))
        else:
            # HIE's basis reads E' at every position up to the row; F' only at the row.
            new_item = self.item_attention(s_item, item, full_mask, training=training)
            if self.refine_fused:
                new_fused = self.fused_attention(score_rows(s_f), fused, mask, training=training,
                                                 residual=tf.gather(fused, at_rows, batch_dims=1))
            else:
                new_fused = tf.gather(fused, at_rows, batch_dims=1)
            new_item = self.hie(new_item, new_fused, valid, rows=rows)
        return self.item_ffn(new_item, training=training)

    def get_config(self):
        return {**super().get_config(), **self._cfg}
