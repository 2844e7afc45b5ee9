"""DIF-SR (Xie et al., SIGIR 2022): decoupled side-information fusion. Item, each attribute
field and position get their own attention score matrix, the matrices are fused, and the
fused scores weight values of the pure item stream. Attribute predictors on the output
are trained to predict the next item's attributes (auxiliary multi-label loss)."""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf

from asif_tf.layers.attention import AttentionOutput, ScoreProjection, causal_mask
from asif_tf.layers.feed_forward import PointwiseFeedForward
from asif_tf.layers.initializers import truncated_normal
from asif_tf.models import registry
from asif_tf.models.base import SequenceEncoder

SCORE_FUSIONS = ("sum", "concat", "gate")


@tf.keras.utils.register_keras_serializable(package="asif")
class DecoupledScoreFusion(tf.keras.layers.Layer):
    """Fuses S score matrices of the same queries and keys into one.

    Call: list of S float tensors broadcastable to [b, h, n, n] (n <= max_seq_len)
    -> float [b, h, n, n].
    - sum:    sum_s S_s
    - concat: Linear over the concatenated score rows [S_1[i, :L]; ...; S_S[i, :L]] to L, then the first n
    - gate:   sum_s alpha_s S_s[i, :], alpha = softmax_s(w^T tanh(W S_s[i, :L] + c))
    For concat and gate each row is zero-padded to L = max_seq_len keys (DIF-SR's layers are sized by the
    maximum length). Entries of future keys (j > i) are zeroed before they enter the fusion. DIF-SR's
    code fuses before it adds the mask, so there the fused scores of past keys also read later items
    (harmless when only the last position carries a loss, a leak when every position does); here the
    fused row i depends on keys <= i only, so the layer stays causal.
    """

    def __init__(self, mode: str = "sum", max_seq_len: int = 50, num_sources: int = 3, init_std: float = 0.02,
                 **kwargs):
        super().__init__(**kwargs)
        if mode not in SCORE_FUSIONS:
            raise ValueError(f"score fusion must be one of {', '.join(SCORE_FUSIONS)}; got {mode!r}")
        self.mode, self.max_seq_len, self.num_sources, self.init_std = mode, int(max_seq_len), int(num_sources), init_std
        if mode == "concat":
            self.project = tf.keras.layers.Dense(self.max_seq_len, kernel_initializer=truncated_normal(init_std),
                                                 name="concat_proj")
        elif mode == "gate":
            self.gate_hidden = tf.keras.layers.Dense(self.max_seq_len, activation="tanh",
                                                     kernel_initializer=truncated_normal(init_std), name="gate_hidden")
            self.gate_score = tf.keras.layers.Dense(1, use_bias=False, kernel_initializer=truncated_normal(init_std),
                                                    name="gate_score")

    def call(self, scores):
        if len(scores) != self.num_sources:
            raise ValueError(f"expected {self.num_sources} score matrices, got {len(scores)}")
        shape = tf.shape(scores[0])
        for s in scores[1:]:
            shape = tf.broadcast_dynamic_shape(shape, tf.shape(s))
        scores = [tf.broadcast_to(s, shape) for s in scores]                             # S x [b, h, n, n]
        if self.mode == "sum":
            return tf.add_n(scores)
        stacked = tf.stack(scores, axis=-2)        # [b, h, n, S, n]
        n = shape[-1]
        past = tf.linalg.band_part(tf.ones([n, n], stacked.dtype), -1, 0)              # [n, n], key j <= query i
        stacked = stacked * past[:, tf.newaxis, :]
        rows = tf.pad(stacked, [[0, 0], [0, 0], [0, 0], [0, 0], [0, self.max_seq_len - n]])  # [b, h, n, S, L]
        rows.set_shape([None, None, None, self.num_sources, self.max_seq_len])
        if self.mode == "concat":
            flat = tf.reshape(rows, tf.concat([shape[:3], [self.num_sources * self.max_seq_len]], 0))
            flat.set_shape([None, None, None, self.num_sources * self.max_seq_len])
            return self.project(flat)[..., :n]
        alpha = tf.nn.softmax(self.gate_score(self.gate_hidden(rows)), axis=-2)         # [b, h, n, S, 1]
        return tf.reduce_sum(alpha * stacked, axis=-2)

    def get_config(self):
        return {**super().get_config(), "mode": self.mode, "max_seq_len": self.max_seq_len,
                "num_sources": self.num_sources, "init_std": self.init_std}


@tf.keras.utils.register_keras_serializable(package="asif")
class DecoupledAttentionLayer(tf.keras.layers.Layer):
    """One DIF-SR layer. With item stream E, static attribute embeddings A_1..A_m and position P:

        S_E = (E Wq)(E Wk)^T,  S_k = (A_k Wq_k)(A_k Wk_k)^T (k = 1..m),  S_P = (P Wq_P)(P Wk_P)^T
        S   = fuse(S_E, S_1, ..., S_m, S_P)                         (DecoupledScoreFusion)
        E'  = FFN(LayerNorm(E + Dropout(Wo · AttnDropout(softmax(S / sqrt(dh) + M)) · (E Wv))))

    Call: item float [b, n, d], attributes float [b, n, m, d], position float [1, n, d] -> float [b, n, d].
    """

    def __init__(self, hidden_size: int, num_heads: int, inner_size: int, num_fields: int, dropout: float = 0.5,
                 attention_dropout: float = 0.3, layer_norm_eps: float = 1e-12, init_std: float = 0.02,
                 fusion: str = "sum", max_seq_len: int = 50, **kwargs):
        super().__init__(**kwargs)
        self._cfg = dict(hidden_size=hidden_size, num_heads=num_heads, inner_size=inner_size, num_fields=num_fields,
                         dropout=dropout, attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps,
                         init_std=init_std, fusion=fusion, max_seq_len=max_seq_len)
        heads = dict(hidden_size=hidden_size, num_heads=num_heads, init_std=init_std)
        self.item_scores = ScoreProjection(**heads, name="item_scores")
        self.attribute_scores = [ScoreProjection(**heads, name=f"attribute_scores_{k}") for k in range(num_fields)]
        self.position_scores = ScoreProjection(**heads, name="position_scores")
        self.score_fusion = DecoupledScoreFusion(fusion, max_seq_len, num_fields + 2, init_std, name="score_fusion")
        self.attention = AttentionOutput(hidden_size, num_heads, dropout, attention_dropout, layer_norm_eps,
                                         init_std, name="attention")
        self.ffn = PointwiseFeedForward(hidden_size, inner_size, dropout, layer_norm_eps, init_std, name="ffn")

    def source_scores(self, item, attributes, position):
        """The S = m + 2 unscaled score matrices [S_E, S_1, ..., S_m, S_P]; S_P is [1, h, n, n]."""
        return ([self.item_scores(item)]
                + [proj(attributes[:, :, k]) for k, proj in enumerate(self.attribute_scores)]
                + [self.position_scores(position)])

    def scores(self, item, attributes, position):
        """Fused unscaled scores float [b, h, n, n]."""
        return self.score_fusion(self.source_scores(item, attributes, position))

    def call(self, item, attributes, position, training=None):
        mask = causal_mask(tf.shape(item)[1], item.dtype)
        out = self.attention(self.scores(item, attributes, position), item, mask, training=training)
        return self.ffn(out, training=training)

    def get_config(self):
        return {**super().get_config(), **self._cfg}


@tf.keras.utils.register_keras_serializable(package="asif")
class DIFSREncoder(SequenceEncoder):
    """E0 = Dropout(LN(ItemEmb(seq))); A_k = attribute embeddings (static); P = PosEmb(0..n-1) (static);
    L DecoupledAttentionLayers update E. Output: E.

    Auxiliary loss (with ``labels``): for every position t with a label y_t > 0 and every field k, a
    linear predictor z = W_k E_t + c_k over the field's attribute ids 1..V_k, and the mean over ids of
    the binary cross-entropy against the multi-hot attributes of y_t; averaged over labelled positions,
    summed over fields, times ``lambda_attr``.

    Call: history int [b, n], labels int [b, n] or None -> {"sequence": float [b, n, d], "aux_loss": []}.
    """

    def __init__(self, num_items, hidden_size=64, max_seq_len=50, field_vocab_sizes=None, field_max_tokens=None,
                 attribute_pooling="sum", init_std=0.02, num_layers=2, num_heads=2, inner_size=256, dropout=0.5,
                 attention_dropout=0.3, layer_norm_eps=1e-12, fusion="sum", lambda_attr=10.0, **kwargs):
        super().__init__(num_items, hidden_size, max_seq_len, field_vocab_sizes, field_max_tokens,
                         attribute_pooling, init_std, uses_attributes=True, **kwargs)
        self._cfg = dict(num_layers=num_layers, num_heads=num_heads, inner_size=inner_size, dropout=dropout,
                         attention_dropout=attention_dropout, layer_norm_eps=layer_norm_eps, fusion=fusion,
                         lambda_attr=lambda_attr)
        self.lambda_attr = float(lambda_attr)
        self.fields = self.attribute_embedding.fields
        self.input_norm = tf.keras.layers.LayerNormalization(epsilon=layer_norm_eps, name="input_norm")
        self.input_dropout = tf.keras.layers.Dropout(dropout)
        self.blocks = [DecoupledAttentionLayer(hidden_size, num_heads, inner_size, len(self.fields), dropout,
                                               attention_dropout, layer_norm_eps, init_std, fusion, max_seq_len,
                                               name=f"difsr_layer_{i}") for i in range(num_layers)]
        self.attribute_predictors = [
            tf.keras.layers.Dense(self.field_vocab_sizes[f], kernel_initializer=truncated_normal(init_std),
                                  name=f"predict_{f}") for f in self.fields]

    def build(self, input_shape):
        # The predictors run only when labels are given (training); build them with the rest, so that the
        # optimizer and checkpoints know their variables from the first (label-free) call.
        for predictor in self.attribute_predictors:
            with tf.name_scope(predictor.name):
                predictor.build(tf.TensorShape([None, self.hidden_size]))
        super().build(input_shape)

    def call(self, history, training=None, labels=None):
        attrs = self.attribute_embedding(history)                                   # [b, n, m, d]
        position = self.position_vectors(tf.shape(history)[1])   # [1, n, d]
        item = self.input_dropout(self.input_norm(self.item_embedding(history)), training=training)
        for block in self.blocks:
            item = block(item, attrs, position, training=training)
        aux = tf.zeros([], tf.float32)
        if labels is not None and self.lambda_attr > 0:
            aux = self.lambda_attr * self.attribute_loss(item, labels)
        return {"sequence": item, "aux_loss": aux}

    def attribute_loss(self, sequence, labels):
        """Unweighted attribute-prediction loss (sum over fields), float [].

        sequence float [b, n, d]; labels int [b, n] (0 = no loss at that position).
        """
        where = labels > 0
        outputs = tf.boolean_mask(sequence, where)                                  # [N, d]
        targets = tf.boolean_mask(labels, where)                                    # [N]
        count = tf.shape(targets)[0]
        total = tf.zeros([], tf.float32)
        for f, predictor in zip(self.fields, self.attribute_predictors):
            vocab = self.field_vocab_sizes[f]
            ids = tf.gather(self.attribute_embedding.tables[f], targets)            # [N, T], 0 = none
            row = tf.broadcast_to(tf.range(count)[:, tf.newaxis], tf.shape(ids))
            real = ids > 0
            index = tf.stack([tf.boolean_mask(row, real), tf.boolean_mask(ids, real) - 1], axis=1)
            multi_hot = tf.minimum(tf.scatter_nd(index, tf.ones([tf.shape(index)[0]], tf.float32),
                                                 tf.stack([count, vocab])), 1.0)    # [N, V]
            logits = tf.cast(predictor(outputs), tf.float32)                        # [N, V]
            bce = tf.nn.sigmoid_cross_entropy_with_logits(multi_hot, logits)
            total += tf.math.divide_no_nan(tf.reduce_sum(bce), tf.cast(count * vocab, tf.float32))
        return total

    def get_config(self):
        return {**self.base_config(), **self._cfg}


@registry.register("difsr")
def build_difsr(cfg, info) -> DIFSREncoder:
    m = cfg.model
    return DIFSREncoder(**registry.common_kwargs(cfg, info), num_layers=m.num_layers, num_heads=m.num_heads,
                        inner_size=m.inner_size, dropout=m.dropout, attention_dropout=m.attention_dropout,
                        layer_norm_eps=m.layer_norm_eps, fusion=m.fusion, lambda_attr=m.lambda_attr, name="encoder")
