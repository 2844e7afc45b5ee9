"""ASIF encoder and retrieval model: shapes, causality, ablation switches, FA loss, round trips."""
import numpy as np
import pytest
import tensorflow as tf

from asif_tf.models import registry
from asif_tf.models.asif import ASIFEncoder, feature_alignment_loss
from tests.helpers import histories, tiny_config, tiny_info


def build(**overrides):
    tf.keras.utils.set_random_seed(0)
    cfg = tiny_config(**overrides)
    return registry.build_model(cfg, tiny_info()), cfg


def sequence_out(model, h):
    return model.encoder(tf.constant(h), training=False)["sequence"].numpy()


def test_shapes():
    model, cfg = build()
    h = histories([8, 5, 1])
    out = model.encoder(tf.constant(h), training=False)
    assert out["sequence"].shape == (3, 8, 16)
    assert out["aux_loss"].shape == ()
    assert model(tf.constant(h)).shape == (3, 16)
    assert model.item_embeddings().shape == (31, 16)


@pytest.mark.parametrize("overrides", [{}, {"fusion": "gate"}, {"fusion": "concat"}, {"fusion": "attributes"}, {"rsa": False},
                                       {"up": False}, {"separate_ffn": False}, {"refine_fused": False}])
def test_no_leakage_later_items_never_change_earlier_positions(overrides):
    model, _ = build(**overrides)
    h = histories([8, 8, 6])
    base = sequence_out(model, h)
    for t in range(1, 8):
        changed = h.copy()
        changed[:, t:] = np.where(changed[:, t:] > 0, (changed[:, t:] % 30) + 1, 0)
        out = sequence_out(model, changed)
        np.testing.assert_allclose(out[:, :t], base[:, :t], atol=1e-5)
        assert np.abs(out[:2, t] - base[:2, t]).max() > 1e-4


def test_leakage_test_detects_non_causal_hie():
    """The same check catches the research HIE, whose basis mixes every position."""
    model, _ = build(hie_causal=False)
    h = histories([8])
    changed = h.copy()
    changed[0, 7] = h[0, 7] % 30 + 1
    assert np.abs(sequence_out(model, changed)[0, :7] - sequence_out(model, h)[0, :7]).max() > 1e-5


def test_position_t_of_a_sequence_equals_the_prefix_ending_at_t():
    """One sequence with a loss at every position trains exactly what every prefix would."""
    model, _ = build()
    h = histories([8])
    full = sequence_out(model, h)[0]
    for t in range(8):
        prefix = np.zeros((1, 8), np.int64)
        prefix[0, :t + 1] = h[0, :t + 1]
        np.testing.assert_allclose(model(tf.constant(prefix)).numpy()[0], full[t], atol=1e-4)


@pytest.mark.parametrize("num_layers,same", [(1, True), (2, False)])
def test_causal_and_per_sequence_hie_agree_at_the_last_position_only_for_one_layer(num_layers, same):
    """Under prefix training only the last position is scored. With one layer both HIE forms
    give it the same output (its causal basis is the whole masked sequence); from the second
    layer on they differ, since the per-sequence form let earlier positions see later ones in
    the layers below. So the research HIE is a different model, not a cheaper equivalent."""
    causal, _ = build(num_layers=num_layers)
    research, _ = build(num_layers=num_layers, hie_causal=False)
    h = histories([8, 5, 3])
    causal(tf.constant(h)), research(tf.constant(h))
    research.set_weights(causal.get_weights())
    last = np.array([7, 4, 2])
    a = sequence_out(causal, h)[np.arange(3), last]
    b = sequence_out(research, h)[np.arange(3), last]
    # Seen: 1 layer 1.2e-4 (two float32 paths to the same basis), 2 layers 0.097.
    if same:
        np.testing.assert_allclose(a, b, atol=1e-3)
    else:
        assert np.abs(a - b).max() > 1e-2


def has(model, fragment):
    return any(fragment in w.name for w in model.encoder.weights)


def test_ablation_switches_remove_exactly_their_part():
    full, _ = build()
    h = tf.constant(histories([8, 4]))
    full(h)
    assert has(full, "fused_scores") and has(full, "position_scores") and has(full, "position_bases")
    assert not has(full, "item_scores")
    base = full(h).numpy()
    for switch, gone, added in [("rsa", None, "item_scores"), ("up", "position_scores", None),
                                ("hie", "position_bases", None)]:
        model, _ = build(**{switch: False})
        model(h)
        if gone:
            assert not has(model, gone), switch
        if added:
            assert has(model, added), switch
        assert np.abs(model(h).numpy() - base).max() > 1e-4, switch
    # w/o UP: the position embedding is added to the inputs instead of forming a stream.
    no_up, _ = build(up=False)
    no_up(h)
    assert has(no_up, "position_embedding") and not has(no_up, "position_attention")
    # w/o FA: no auxiliary loss; with FA the loss is lambda times the alignment loss.
    no_fa, _ = build(fa=False)
    assert float(no_fa.encoder(h, training=False)["aux_loss"]) == 0.0
    assert float(full.encoder(h, training=False)["aux_loss"]) > 0.0


@pytest.mark.parametrize("rsa", [True, False])
def test_hie_from_layer_is_the_full_model_with_hie_skipped_below_it(rsa):
    """--hie_from_layer 1 of a 2-layer model gives what the every-layer model gives when its
    first layer's HIE is bypassed, with the same weights; without RSA the first layer still
    refines F for the HIE above it."""
    every, _ = build(num_layers=2, rsa=rsa)
    upper, _ = build(num_layers=2, rsa=rsa, hie_from_layer=1)
    h = histories([8, 5, 3])
    every(tf.constant(h)), upper(tf.constant(h))
    assert [b.hie is not None for b in upper.encoder.blocks] == [False, True]
    assert upper.encoder.blocks[0].refine_fused
    lower_bases = {id(w) for w in every.encoder.blocks[0].hie.weights}
    shared = [w for w in every.encoder.weights if id(w) not in lower_bases]
    assert len(lower_bases) == 1 and len(shared) == len(upper.encoder.weights)
    for src, dst in zip(shared, upper.encoder.weights):
        assert src.name.split("encoder/")[-1] == dst.name.split("encoder/")[-1]
        dst.assign(src)
    with_lower = sequence_out(every, h)
    every.encoder.blocks[0].hie = None
    expected = sequence_out(every, h)
    np.testing.assert_allclose(sequence_out(upper, h), expected, atol=1e-5)
    assert np.abs(with_lower - expected).max() > 1e-4


def test_hie_from_layer_must_name_a_layer():
    with pytest.raises(ValueError, match="hie_from_layer"):
        tiny_config(num_layers=2, hie_from_layer=2).validate()


def numpy_fa(x, a, valid, tau):
    x = x / np.linalg.norm(x, axis=-1, keepdims=True)
    a = a / np.maximum(np.linalg.norm(a, axis=-1, keepdims=True), 1e-12)  # padding rows are zero
    total, count = 0.0, 0
    for b in range(x.shape[0]):
        idx = np.flatnonzero(valid[b])
        s = x[b, idx] @ a[b, idx].T / tau
        for i in range(len(idx)):
            row = -s[i, i] + np.log(np.exp(s[i]).sum())
            col = -s[i, i] + np.log(np.exp(s[:, i]).sum())
            total += 0.5 * (row + col)
            count += 1
    return total / count


def test_fa_loss_matches_numpy():
    rng = np.random.default_rng(0)
    x, a = rng.normal(size=(3, 6, 5)), rng.normal(size=(3, 6, 5))
    valid = (np.arange(6)[None] < np.array([[6], [3], [1]])).astype(np.float32)
    got = float(feature_alignment_loss(x.astype(np.float32), a.astype(np.float32), valid, 0.2))
    assert got == pytest.approx(numpy_fa(x, a, valid, 0.2), rel=1e-4)


def test_aux_loss_is_lambda_times_fa():
    model, cfg = build(lambda_fa=0.3)
    h = tf.constant(histories([8, 5]))
    enc = model.encoder
    x = enc.item_embedding(h).numpy()
    a = tf.reduce_sum(enc.attribute_embedding(h), axis=2).numpy()
    want = 0.3 * numpy_fa(x, a, (h.numpy() > 0), 0.2)
    assert float(enc(h, training=False)["aux_loss"]) == pytest.approx(want, rel=1e-4)


def test_attributes_are_looked_up_inside_the_model():
    """Changing only the item -> attribute table changes ASIF's output."""
    model, _ = build()
    h = tf.constant(histories([8]))
    base = model(h).numpy()
    info = tiny_info()
    table = dict(info.item_attributes)
    table["categories"] = np.roll(table["categories"], 1, axis=0)
    model.encoder.set_item_table(table)
    assert np.abs(model(h).numpy() - base).max() > 1e-4


def test_config_round_trip_gives_same_outputs():
    model, _ = build(fusion="gate")
    h = tf.constant(histories([8, 3]))
    enc = model.encoder
    want = enc(h, training=False)["sequence"].numpy()
    clone = ASIFEncoder.from_config(enc.get_config())
    clone(h)
    clone.set_weights(enc.get_weights())
    np.testing.assert_allclose(clone(h, training=False)["sequence"].numpy(), want, atol=1e-6)


def test_savedmodel_round_trip_gives_same_scores(tmp_path):
    model, _ = build()
    h = histories([8, 2])
    want = model(tf.constant(h)).numpy() @ model.item_embeddings().numpy().T

    class Scorer(tf.Module):
        def __init__(self, m):
            self.m = m

        @tf.function(input_signature=[tf.TensorSpec([None, None], tf.int64)])
        def scores(self, history):
            return tf.matmul(self.m(history, training=False), self.m.item_embeddings(), transpose_b=True)

    tf.saved_model.save(Scorer(model), str(tmp_path / "sm"))
    loaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(loaded.scores(tf.constant(h)).numpy(), want, atol=1e-5)


@pytest.mark.parametrize("loss", ["softmax", "sampled"])
def test_training_steps_lower_the_loss(loss):
    tf.keras.utils.set_random_seed(0)
    cfg = tiny_config()
    cfg.train.loss = loss
    model = registry.build_model(cfg, tiny_info())
    model.compile(tf.keras.optimizers.Adam(1e-2))
    h = histories([8] * 16, seed=3)
    batch = {"history": tf.constant(h[:, :-1]), "labels": tf.constant(h[:, 1:])}
    ds = tf.data.Dataset.from_tensors(batch).repeat(30)
    first = float(model.compute_loss(batch))
    model.fit(ds, verbose=0)
    assert float(model.compute_loss(batch)) < 0.7 * first


def test_logged_epoch_loss_is_the_mean_over_batches_not_the_last_one(tmp_path):
    tf.keras.utils.set_random_seed(0)
    cfg = tiny_config()                      # no dropout: training=True gives the same loss
    model = registry.build_model(cfg, tiny_info())
    model.compile(tf.keras.optimizers.SGD(0.0))   # weights stay put, so each batch's loss is fixed
    # Batches of different lengths and sizes, as length buckets give.
    batches = []
    for i, (size, length) in enumerate([(8, 8), (3, 3), (5, 6), (2, 2)]):
        h = histories([length] * size, seed=10 + i)
        labels = np.zeros_like(h)
        labels[:, :length - 1] = h[:, 1:length]
        history = h.copy()
        history[:, length - 1] = 0
        batches.append({"history": tf.constant(history), "labels": tf.constant(labels)})
    per_batch = [float(model.compute_loss(b)) for b in batches]
    assert max(per_batch) - min(per_batch) > 0.01          # the last batch alone would differ
    ds = tf.data.Dataset.from_generator(lambda: iter(batches), output_signature={
        "history": tf.TensorSpec([None, 8], tf.int64), "labels": tf.TensorSpec([None, 8], tf.int64)})
    logged = model.fit(ds, epochs=2, verbose=0).history["loss"]
    # Each epoch logs the mean of its own batches' losses (reset between epochs).
    assert logged == pytest.approx([np.mean(per_batch)] * 2, rel=1e-5)
    # The tracker stays out of checkpoints, so runs checkpointed before it existed still restore
    # (the trainer and the exporter restore with assert_existing_objects_matched).
    path = tf.train.Checkpoint(model=model).save(str(tmp_path / "ckpt"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert any("aux_loss_tracker" in n for n in names)
    assert not any("loss_tracker" in n.replace("aux_loss_tracker", "") for n in names)


def test_attributes_fusion_leaves_the_item_id_out_of_the_fused_stream():
    """fusion="attributes": F0 = sum_k A_k, so the fused stream is blind to which item it is."""
    model, _ = build(fusion="attributes")
    enc = model.encoder
    h = tf.constant(histories([8, 5]))
    seen = {}
    fusion_call = enc.fusion.call

    def spy(item, attributes):
        seen["f"] = fusion_call(item, attributes)
        return seen["f"]

    enc.fusion.call = spy
    enc(h, training=False)
    want = enc.attribute_embedding(h).numpy().sum(axis=2)                      # [b, n, d], numpy sum
    np.testing.assert_allclose(seen["f"].numpy(), want, rtol=1e-6)
    # Changing the item table changes the item stream but not the fused stream.
    table = enc.item_embedding.embeddings
    table.assign(table + 1.0)
    enc(h, training=False)
    np.testing.assert_allclose(seen["f"].numpy(), want, rtol=1e-6)


@pytest.mark.parametrize("training", [False, True])
def test_attribute_dropout_drops_a_before_fusion_only(training):
    """What the fusion receives is A, dropped (and rescaled) only in training; FA still sees A undropped."""
    model, _ = build(attribute_dropout=0.5, lambda_fa=0.3)
    enc = model.encoder
    h = tf.constant(histories([8, 5]))
    attrs = enc.attribute_embedding(h).numpy()                                   # [b, n, m, d]
    seen = {}
    fusion_call = enc.fusion.call

    def spy(item, attributes):
        seen["a"] = attributes.numpy()
        return fusion_call(item, attributes)

    enc.fusion.call = spy
    tf.keras.utils.set_random_seed(1)
    aux = float(enc(h, training=training)["aux_loss"])
    got = seen["a"]
    if not training:
        np.testing.assert_allclose(got, attrs, rtol=1e-6)
    else:
        kept = got != 0
        np.testing.assert_allclose(got[kept], attrs[kept] / 0.5, rtol=1e-5)
        assert 0.35 < 1.0 - kept[attrs != 0].mean() < 0.65                    # about half dropped
    x = enc.item_embedding(h).numpy()
    a = attrs.sum(axis=2)
    assert aux == pytest.approx(0.3 * numpy_fa(x, a, (h.numpy() > 0), 0.2), rel=1e-4)


LAST_ONLY_CASES = [{}, {"hie_causal": False}, {"hie_causal": False, "hie_mask_padding": False}, {"hie": False},
                   {"rsa": False}, {"up": False}, {"hie_from_layer": 1}, {"hie_from_layer": 2},
                   {"refine_fused": False}, {"separate_ffn": False}, {"num_layers": 1}, {"fusion": "gate"}]


@pytest.mark.parametrize("overrides", LAST_ONLY_CASES)
def test_last_only_path_equals_the_full_sequence_at_the_last_item(overrides):
    # encode_last computes the last layer at one position (HIE factorised once per sequence);
    # it must give what the full n-position pass gives there, up to float32 rounding (the two
    # build the same r x r Gram matrix in different orders; a history of exactly r items makes
    # it ill-conditioned, which is where the largest difference, ~6e-5, was seen).
    model, _ = build(num_bases=3, **overrides)
    h = histories([8, 5, 1, 2, 3, 7])
    want = sequence_out(model, h)[np.arange(len(h)), np.maximum((h > 0).sum(1) - 1, 0)]
    got = model.encoder.encode_last(tf.constant(h), training=False)["last"].numpy()
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=2e-4)
    np.testing.assert_allclose(model(tf.constant(h)).numpy(), want, rtol=1e-3, atol=2e-4)


def test_hie_at_rows_equals_hie_at_every_position():
    from asif_tf.layers.hie import HomogeneousInformationExtraction
    rng = np.random.default_rng(3)
    e = tf.constant(rng.normal(size=(4, 6, 8)), tf.float32)
    f = tf.constant(rng.normal(size=(4, 6, 8)), tf.float32)
    valid = tf.constant((histories([6, 4, 2, 5], n=6) > 0).astype(np.float32))
    for causal in (True, False):
        hie = HomogeneousInformationExtraction(num_bases=3, max_seq_len=6, causal=causal)
        full = hie(e, f, valid).numpy()
        for row in range(6):       # every row, not only the last real one: rows=any position works
            rows = tf.fill([4], row)
            got = hie(e, tf.gather(f, rows[:, None], batch_dims=1), valid, rows=rows).numpy()[:, 0]
            np.testing.assert_allclose(got, full[:, row], rtol=1e-3, atol=2e-4)


def test_prefix_loss_on_the_last_position_equals_the_full_pass():
    model, cfg = build()
    h = histories([8, 5, 1, 3])
    labels = np.zeros_like(h)
    last = np.maximum((h > 0).sum(1) - 1, 0)
    labels[np.arange(len(h)), last] = [4, 9, 17, 30]
    batch = {"history": tf.constant(h), "labels": tf.constant(labels)}
    want = [t.numpy() for t in model.loss_terms(batch, training=False)]
    model.last_position_loss = True
    got = [t.numpy() for t in model.loss_terms(batch, training=False)]
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # One-sequence batches (labels at every position) are refused rather than cut to their last label.
    labels[0, :3] = [2, 3, 4]
    with pytest.raises(tf.errors.InvalidArgumentError, match="last_position_loss"):
        model.loss_terms({"history": tf.constant(h), "labels": tf.constant(labels)}, training=False)
