"""Baseline encoders: what distinguishes each one, checked against numpy references or
against a second forward pass with controlled inputs; causality and config round trips."""
import math

import numpy as np
import pytest
import tensorflow as tf

from asif_tf.config import ExperimentConfig
from asif_tf.data.input import DatasetInfo
from asif_tf.models import registry
from asif_tf.models.baselines import (DecoupledScoreFusion, DIFSREncoder, FDSAEncoder, GRU4RecEncoder,
                                      NOVAEncoder, SASRecEncoder, SASRecFEncoder)
from asif_tf.models.retrieval import SequentialRetrievalModel

NUM_ITEMS, D, HEADS, N = 20, 16, 2, 6
FIELDS = {"brand": 5, "categories": 7}
MAX_TOKENS = {"brand": 1, "categories": 2}


def item_table(seed=0):
    """field -> int [NUM_ITEMS + 1, T]: random attribute ids (row 0, the padding item, has none)."""
    rng = np.random.default_rng(seed)
    table = {}
    for f, vocab in FIELDS.items():
        t = rng.integers(1, vocab + 1, size=(NUM_ITEMS + 1, MAX_TOKENS[f])).astype(np.int32)
        if MAX_TOKENS[f] > 1:
            t[rng.random(NUM_ITEMS + 1) < 0.4, 1:] = 0      # some items have fewer tokens
        t[0] = 0
        table[f] = t
    return table


def histories():
    """int [3, N], right-padded."""
    return np.array([[3, 7, 1, 9, 12, 4], [5, 2, 8, 0, 0, 0], [11, 0, 0, 0, 0, 0]], np.int64)


ENCODERS = {
    "sasrec": lambda **kw: SASRecEncoder(**kw),
    "sasrecf": lambda **kw: SASRecFEncoder(**kw),
    "fdsa": lambda **kw: FDSAEncoder(**kw),
    "nova-sum": lambda **kw: NOVAEncoder(fusion="sum", **kw),
    "nova-concat": lambda **kw: NOVAEncoder(fusion="concat", **kw),
    "nova-gate": lambda **kw: NOVAEncoder(fusion="gate", **kw),
    "difsr-sum": lambda **kw: DIFSREncoder(fusion="sum", **kw),
    "difsr-concat": lambda **kw: DIFSREncoder(fusion="concat", **kw),
    "difsr-gate": lambda **kw: DIFSREncoder(fusion="gate", **kw),
    "gru4rec": lambda **kw: GRU4RecEncoder(**kw),
}


def make(name, num_layers=2, seed=0, **kw):
    tf.keras.utils.set_random_seed(seed)
    args = dict(num_items=NUM_ITEMS, hidden_size=D, max_seq_len=N, field_vocab_sizes=FIELDS,
                field_max_tokens=MAX_TOKENS, num_layers=num_layers, dropout=0.0,
                init_std=0.3)   # large enough that attention is far from uniform at initialisation
    if not name.startswith("gru4rec"):
        args.update(num_heads=HEADS, inner_size=2 * D, attention_dropout=0.0)
    args.update(kw)
    enc = ENCODERS[name](**args)
    enc.set_item_table(item_table())
    enc(tf.constant(histories()), training=False)
    return enc


def seq(enc, h):
    return enc(tf.constant(h), training=False)["sequence"].numpy()


def set_attributes(enc, table):
    for f, t in table.items():
        enc.attribute_embedding.tables[f].assign(t)


# ---------------------------------------------------------------- numpy references


def np_dense(x, layer):
    return x @ layer.kernel.numpy() + layer.bias.numpy()


def np_layer_norm(x, layer):
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + layer.epsilon) * layer.gamma.numpy() + layer.beta.numpy()


def np_heads(x):
    b, n, d = x.shape
    return x.reshape(b, n, HEADS, d // HEADS).transpose(0, 2, 1, 3)


def np_scores(x, proj):
    """(x Wq)(x Wk)^T per head, [b, h, n, n]."""
    return np_heads(np_dense(x, proj.query)) @ np_heads(np_dense(x, proj.key)).transpose(0, 1, 3, 2)


def np_softmax(x, axis=-1):
    e = np.exp(x - x.max(axis, keepdims=True))
    return e / e.sum(axis, keepdims=True)


def np_attention(scores, x, att):
    n = x.shape[1]
    future = np.triu(np.ones((n, n), bool), 1)
    probs = np_softmax(np.where(future, -1e9, scores / math.sqrt(D // HEADS)))
    context = (probs @ np_heads(np_dense(x, att.value))).transpose(0, 2, 1, 3).reshape(x.shape)
    return np_layer_norm(x + np_dense(context, att.output_dense), att.norm)


def np_ffn(x, ffn):
    h = np_dense(x, ffn.inner)
    h = 0.5 * h * (1.0 + np.vectorize(math.erf)(h / math.sqrt(2.0)))       # exact GELU
    return np_layer_norm(x + np_dense(h, ffn.outer), ffn.norm)


def np_attributes(enc, h):
    """float [b, n, m, d]: per field, the sum of the embeddings of the item's attribute ids."""
    emb = enc.attribute_embedding
    out = []
    for f in emb.fields:
        ids = emb.tables[f].numpy()[h]                                          # [b, n, T]
        table = emb.embeddings[f].embeddings.numpy()
        out.append((table[ids] * (ids > 0)[..., None]).sum(-2))
    return np.stack(out, axis=2)


# ---------------------------------------------------------------- every model


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_causal(name):
    """Changing the item at position t (and everything after it) never changes positions < t."""
    enc = make(name)
    h = histories()
    base = seq(enc, h)
    changed = h.copy()
    changed[0, 3:] = [15, 16, 17]
    changed[1, 2] = 19
    out = seq(enc, changed)
    np.testing.assert_allclose(out[0, :3], base[0, :3], atol=1e-5)
    np.testing.assert_allclose(out[1, :2], base[1, :2], atol=1e-5)
    np.testing.assert_allclose(out[2], base[2], atol=1e-5)
    assert np.abs(out[0, 3:] - base[0, 3:]).max() > 1e-4       # the change is seen where it may be
    assert np.abs(out[1, 2] - base[1, 2]).max() > 1e-4


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_config_round_trip(name):
    """serialize -> deserialize (registered under 'asif') -> same weights -> same outputs."""
    enc = make(name)
    config = tf.keras.layers.serialize(enc)
    assert tf.keras.utils.get_registered_name(type(enc)) == "asif>" + type(enc).__name__
    clone = tf.keras.layers.deserialize(config)
    assert type(clone) is type(enc) and clone.get_config() == enc.get_config()
    clone(tf.constant(histories()), training=False)
    clone.set_weights(enc.get_weights())         # includes the item -> attribute tables
    np.testing.assert_allclose(seq(clone, histories()), seq(enc, histories()), atol=1e-6)


@pytest.mark.parametrize("name,attributes_enter_representation", [
    ("sasrecf", True), ("fdsa", True),                                   # early / late fusion
    ("nova-sum", False), ("nova-gate", False), ("difsr-sum", False), ("difsr-concat", False),
])
def test_attributes_in_values_or_only_in_scores(name, attributes_enter_representation):
    """Position 0 attends to itself only, so its output is the value path alone: it carries the
    attributes for early/late fusion, and not for NOVA and DIF-SR (values from the pure item stream),
    whose later positions still change because attributes steer their attention."""
    enc = make(name)
    h = histories()
    base = seq(enc, h)
    other = {f: np.roll(t, 5, axis=0) for f, t in item_table().items()}
    for t in other.values():
        t[0] = 0
    set_attributes(enc, other)
    out = seq(enc, h)
    first = np.abs(out[:, 0] - base[:, 0]).max()
    if attributes_enter_representation:
        assert first > 1e-3
    else:
        assert first < 1e-5
    assert np.abs(out[0, 1:] - base[0, 1:]).max() > 1e-3


# ---------------------------------------------------------------- SASRec


def test_sasrec_matches_numpy_and_has_no_attribute_weights():
    enc = make("sasrec", num_layers=1)
    assert enc.attribute_embedding is None
    assert not [w.name for w in enc.weights if "attribute" in w.name]
    h = histories()
    x = enc.item_embedding.embeddings.numpy()[h] + enc.position_embedding.embeddings.numpy()[None, :N]
    x = np_layer_norm(x, enc.input_norm)
    block = enc.transformer.blocks[0]
    want = np_ffn(np_attention(np_scores(x, block.scores), x, block.attention), block.ffn)
    np.testing.assert_allclose(seq(enc, h), want, atol=2e-4)


# ---------------------------------------------------------------- SASRecF / FDSA


def test_sasrecf_concatenates_and_projects_before_the_encoder():
    enc = make("sasrecf", num_layers=1)
    h = histories()
    attrs = np_attributes(enc, h)
    concat = np.concatenate([enc.item_embedding.embeddings.numpy()[h]] + [attrs[:, :, k] for k in range(2)], -1)
    x = np_dense(concat, enc.fusion.project) + enc.position_embedding.embeddings.numpy()[None, :N]
    x = np_layer_norm(x, enc.input_norm)
    block = enc.transformer.blocks[0]
    want = np_ffn(np_attention(np_scores(x, block.scores), x, block.attention), block.ffn)
    np.testing.assert_allclose(seq(enc, h), want, atol=2e-4)


def test_fdsa_item_stream_is_sasrec_and_feature_stream_is_separate():
    """The item transformer's input has no attributes; changing attributes changes only the feature
    stream, so the item half of the concat projection is unchanged."""
    enc = make("fdsa", num_layers=1)
    h = histories()
    item_in = np_layer_norm(enc.item_embedding.embeddings.numpy()[h]
                            + enc.position_embedding.embeddings.numpy()[None, :N], enc.item_norm)
    block = enc.item_transformer.blocks[0]
    item_out = np_ffn(np_attention(np_scores(item_in, block.scores), item_in, block.attention), block.ffn)
    attrs = np_attributes(enc, h)
    pool = enc.field_pooling
    alpha = np_softmax(np.tanh(np_dense(attrs, pool.hidden)) @ pool.score.kernel.numpy(), axis=2)
    feat_in = np_layer_norm((alpha * attrs).sum(2) + enc.position_embedding.embeddings.numpy()[None, :N],
                            enc.feature_norm)
    fblock = enc.feature_transformer.blocks[0]
    feat_out = np_ffn(np_attention(np_scores(feat_in, fblock.scores), feat_in, fblock.attention), fblock.ffn)
    want = np_layer_norm(np_dense(np.concatenate([item_out, feat_out], -1), enc.concat_projection),
                         enc.output_norm)
    np.testing.assert_allclose(seq(enc, h), want, atol=2e-4)


def test_mean_pooling_divides_each_fields_sum_by_its_token_count():
    """attribute_pooling="mean" (RecBole's FDSA): per field, the mean of the embeddings of the item's
    non-padding attribute ids; an item with no ids gets zeros, not a division by zero."""
    enc = make("fdsa", num_layers=1, attribute_pooling="mean")
    h = histories()
    emb = enc.attribute_embedding
    want = []
    for f in emb.fields:
        ids = emb.tables[f].numpy()[h]                                          # [b, n, T]
        vectors = emb.embeddings[f].embeddings.numpy()[ids] * (ids > 0)[..., None]
        want.append(vectors.sum(-2) / np.maximum((ids > 0).sum(-1), 1)[..., None])
    got = emb(tf.constant(h)).numpy()
    np.testing.assert_allclose(got, np.stack(want, axis=2), atol=1e-6)
    two_tokens = (emb.tables["categories"].numpy()[h] > 0).sum(-1) == 2
    assert two_tokens.any()                    # the test covers an item whose mean differs from its sum
    np.testing.assert_allclose(got[..., emb.fields.index("categories"), :][two_tokens],
                               np_attributes(enc, h)[..., emb.fields.index("categories"), :][two_tokens] / 2,
                               atol=1e-6)
    assert enc.get_config()["attribute_pooling"] == "mean"


# ---------------------------------------------------------------- NOVA


def test_nova_scores_from_fused_values_from_pure_items():
    """One NOVA layer (sum fusion) against numpy: scores from E + sum_k A_k + P, values from E."""
    enc = make("nova-sum", num_layers=1)
    h = histories()
    item = np_layer_norm(enc.item_embedding.embeddings.numpy()[h], enc.input_norm)
    fused = item + np_attributes(enc, h).sum(2) + enc.position_embedding.embeddings.numpy()[None, :N]
    layer = enc.blocks[0]
    want = np_ffn(np_attention(np_scores(fused, layer.fused_scores), item, layer.attention), layer.ffn)
    np.testing.assert_allclose(seq(enc, h), want, atol=2e-4)
    # The same layer with values from the fused stream (invasive fusion) is a different model.
    invasive = np_ffn(np_attention(np_scores(fused, layer.fused_scores), fused, layer.attention), layer.ffn)
    assert np.abs(invasive - want).max() > 1e-2


# ---------------------------------------------------------------- DIF-SR


def test_difsr_separate_score_matrix_per_attribute_field():
    enc = make("difsr-sum", num_layers=1)
    layer = enc.blocks[0]
    projections = [layer.item_scores, *layer.attribute_scores, layer.position_scores]
    assert len(layer.attribute_scores) == len(FIELDS)
    kernels = [p.query.kernel.numpy() for p in projections]
    assert all(np.abs(a - b).max() > 0 for i, a in enumerate(kernels) for b in kernels[i + 1:])
    h = histories()
    item = np_layer_norm(enc.item_embedding.embeddings.numpy()[h], enc.input_norm).astype(np.float32)
    attrs = np_attributes(enc, h).astype(np.float32)
    pos = enc.position_embedding.embeddings.numpy()[None, :N]
    want = (np_scores(item, layer.item_scores) + np_scores(pos, layer.position_scores)
            + sum(np_scores(attrs[:, :, k], layer.attribute_scores[k]) for k in range(len(FIELDS))))
    got = layer.scores(tf.constant(item), tf.constant(attrs), tf.constant(pos)).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)
    # Decoupled != coupled: one projection of the summed embedding mixes cross terms.
    coupled = np_scores(item + attrs.sum(2) + pos, layer.item_scores)
    assert np.abs(coupled - want).max() > 1e-3
    # And the full layer output: values from the pure item stream.
    out = np_ffn(np_attention(want, item, layer.attention), layer.ffn)
    np.testing.assert_allclose(seq(enc, h), out, atol=2e-4)


@pytest.mark.parametrize("mode", ["concat", "gate"])
def test_score_fusion_matches_numpy(mode):
    """concat: Linear over the causally zeroed, length-padded score rows; gate: attention pooling."""
    L, n, S = 7, 5, 3
    rng = np.random.default_rng(1)
    scores = [rng.normal(size=(2, HEADS, n, n)).astype(np.float32) for _ in range(S - 1)]
    scores.append(rng.normal(size=(1, HEADS, n, n)).astype(np.float32))           # position: batch 1
    layer = DecoupledScoreFusion(mode, max_seq_len=L, num_sources=S)
    got = layer([tf.constant(s) for s in scores]).numpy()
    full = np.stack([np.broadcast_to(s, (2, HEADS, n, n)) for s in scores], axis=-2)   # [b, h, n, S, n]
    full = full * np.tril(np.ones((n, n)))[:, None, :]
    rows = np.concatenate([full, np.zeros(full.shape[:-1] + (L - n,))], -1)          # [b, h, n, S, L]
    if mode == "concat":
        want = np_dense(rows.reshape(2, HEADS, n, S * L), layer.project)[..., :n]
    else:
        alpha = np_softmax(np.tanh(np_dense(rows, layer.gate_hidden)) @ layer.gate_score.kernel.numpy(), axis=-2)
        want = (alpha * full).sum(-2)
    future = np.triu(np.ones((n, n), bool), 1)
    np.testing.assert_allclose(np.where(future, 0, got), np.where(future, 0, want), atol=1e-5)


def test_difsr_attribute_loss_is_weighted_bce_on_next_item_attributes():
    lam = 3.0
    enc = make("difsr-sum", lambda_attr=lam)
    h = histories()
    labels = np.array([[7, 1, 9, 12, 4, 6], [2, 8, 13, 0, 0, 0], [0, 0, 0, 0, 0, 0]], np.int64)
    out = enc(tf.constant(h), training=False, labels=tf.constant(labels))
    seq_out = out["sequence"].numpy()
    where = labels > 0
    total = 0.0
    for f, predictor in zip(enc.fields, enc.attribute_predictors):
        logits = np_dense(seq_out[where], predictor)                              # [N, V]
        target = np.zeros_like(logits)
        for row, item in enumerate(labels[where]):
            for a in item_table()[f][item]:
                if a:
                    target[row, a - 1] = 1.0
        bce = np.maximum(logits, 0) - logits * target + np.log1p(np.exp(-np.abs(logits)))
        total += bce.mean()
    np.testing.assert_allclose(float(out["aux_loss"]), lam * total, rtol=1e-5)
    assert float(enc(tf.constant(h), training=False)["aux_loss"]) == 0.0    # no labels, no loss


def test_difsr_aux_loss_reaches_the_training_loss():
    """Through the registry and the shared retrieval model: loss = full-softmax CE + aux."""
    cfg = ExperimentConfig()
    cfg.model.model, cfg.model.hidden_size, cfg.model.num_heads = "difsr", D, HEADS
    cfg.model.dropout = cfg.model.attention_dropout = 0.0
    cfg.model.lambda_attr, cfg.data.max_seq_len = 2.0, N
    table = item_table()
    info = DatasetInfo(data_dir="", num_items=NUM_ITEMS, field_vocab_sizes=FIELDS, field_max_tokens=MAX_TOKENS,
                       item_attributes=table, item_counts=np.ones(NUM_ITEMS + 1, np.int64), metadata={})
    tf.keras.utils.set_random_seed(0)
    model = registry.build_model(cfg, info)
    assert isinstance(model.encoder, DIFSREncoder)
    np.testing.assert_array_equal(model.encoder.attribute_embedding.tables["categories"].numpy(), table["categories"])
    h = histories()
    labels = np.array([[7, 1, 9, 12, 4, 6], [2, 8, 13, 0, 0, 0], [5, 0, 0, 0, 0, 0]], np.int64)
    loss = float(model.compute_loss({"history": tf.constant(h), "labels": tf.constant(labels)}))
    out = model.encoder(tf.constant(h), training=False, labels=tf.constant(labels))
    logits = out["sequence"].numpy()[labels > 0] @ model.item_embeddings().numpy().T
    logits[:, 0] = -1e9
    ce = -(logits[np.arange(len(logits)), labels[labels > 0]] - np.log(np.exp(
        logits - logits.max(1, keepdims=True)).sum(1)) - logits.max(1)).mean()
    np.testing.assert_allclose(loss, ce + float(out["aux_loss"]), rtol=1e-5)
    assert float(out["aux_loss"]) > 0


# ---------------------------------------------------------------- GRU4Rec


def test_gru4rec_matches_numpy_gru():
    enc = make("gru4rec", num_layers=1)
    h = histories()
    x = enc.item_embedding.embeddings.numpy()[h]
    cell = enc.grus[0].cell
    w, u, bias = cell.kernel.numpy(), cell.recurrent_kernel.numpy(), cell.bias.numpy()   # reset_after: bias [2, 3d]
    state = np.zeros((h.shape[0], D))
    outs = []
    sigmoid = lambda v: 1 / (1 + np.exp(-v))                                  # noqa: E731
    for t in range(N):
        xi = x[:, t] @ w + bias[0]
        hi = state @ u + bias[1]
        z = sigmoid(xi[:, :D] + hi[:, :D])
        r = sigmoid(xi[:, D:2 * D] + hi[:, D:2 * D])
        cand = np.tanh(xi[:, 2 * D:] + r * hi[:, 2 * D:])
        state = z * state + (1 - z) * cand
        outs.append(state)
    want = np_dense(np.stack(outs, 1), enc.output_dense)
    np.testing.assert_allclose(seq(enc, h), want, atol=1e-4)


def test_every_model_name_is_registered():
    assert set(registry.available_models()) >= {"sasrec", "sasrecf", "fdsa", "nova", "difsr", "gru4rec", "asif"}
