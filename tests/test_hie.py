"""HIE against an explicit numpy implementation with Householder QR."""
import numpy as np
import pytest

from asif_tf.layers import HomogeneousInformationExtraction


def numpy_hie(e, f, w, valid, causal, mask_padding, sign_flip=None):
    """Per sequence and position: Xr built explicitly, Q from np.linalg.qr."""
    b, n, d = e.shape
    out = e.copy()
    for s in range(b):
        for t in range(n):
            if causal:
                rows = [i for i in range(t + 1) if valid[s, i]]
            else:
                rows = [i for i in range(n) if valid[s, i] or not mask_padding]
            xr = w[rows].T @ e[s, rows]                     # r x d
            q, _ = np.linalg.qr(xr.T)                       # d x r
            if sign_flip is not None:
                q = q * sign_flip
            px, pa = e[s, t] @ q, f[s, t] @ q
            out[s, t] = e[s, t] + ((px * pa > 0) * pa) @ q.T
    return out


def make_inputs(b=3, n=9, d=8, seed=0):
    rng = np.random.default_rng(seed)
    e = rng.normal(size=(b, n, d)).astype(np.float64)
    f = rng.normal(size=(b, n, d)).astype(np.float64)
    lengths = np.array([n, n - 2, n - 4])[:b]
    valid = (np.arange(n)[None, :] < lengths[:, None]).astype(np.float64)
    return e, f, valid


@pytest.mark.parametrize("causal,mask_padding", [(True, True), (False, True), (False, False)])
def test_matches_numpy_qr(causal, mask_padding):
    r = 3
    e, f, valid = make_inputs()
    layer = HomogeneousInformationExtraction(num_bases=r, max_seq_len=9, causal=causal,
                                             mask_padding=mask_padding, ridge=1e-9)
    got = layer(e.astype(np.float32), f.astype(np.float32), valid.astype(np.float32)).numpy()
    w = layer.bases.numpy().astype(np.float64)
    want = numpy_hie(e, f, w, valid, causal, mask_padding)
    # Compare real positions whose basis has full rank r (earlier causal positions are rank-deficient).
    for s in range(e.shape[0]):
        for t in range(e.shape[1]):
            if valid[s, t] and (not causal or t + 1 >= r):
                np.testing.assert_allclose(got[s, t], want[s, t], rtol=2e-3, atol=2e-3)


def test_invariant_to_column_signs_and_injects_in_span():
    r = 4
    e, f, valid = make_inputs(seed=3)
    layer = HomogeneousInformationExtraction(num_bases=r, max_seq_len=9, causal=False, ridge=1e-9)
    got = layer(e.astype(np.float32), f.astype(np.float32), valid.astype(np.float32)).numpy()
    w = layer.bases.numpy().astype(np.float64)
    flipped = numpy_hie(e, f, w, valid, False, True, sign_flip=np.array([-1, 1, -1, -1]))
    plain = numpy_hie(e, f, w, valid, False, True)
    np.testing.assert_allclose(flipped, plain, atol=1e-9)
    np.testing.assert_allclose(got[valid > 0], plain[valid > 0], rtol=2e-3, atol=2e-3)
    # The injected part lies in the row space of Xr (span of Q).
    for s in range(e.shape[0]):
        rows = valid[s] > 0
        xr = w[rows].T @ e[s, rows]
        q, _ = np.linalg.qr(xr.T)
        injected = got[s, rows] - e[s, rows]
        np.testing.assert_allclose(injected @ q @ q.T, injected, atol=2e-3)


def test_causal_position_ignores_later_items():
    e, f, valid = make_inputs(b=1, n=8, seed=5)
    layer = HomogeneousInformationExtraction(num_bases=3, max_seq_len=8, causal=True)
    base = layer(e.astype(np.float32), f.astype(np.float32), valid.astype(np.float32)).numpy()
    e2, f2 = e.copy(), f.copy()
    e2[0, 5:] += 3.0
    f2[0, 5:] -= 2.0
    changed = layer(e2.astype(np.float32), f2.astype(np.float32), valid.astype(np.float32)).numpy()
    np.testing.assert_allclose(base[0, :5], changed[0, :5], atol=1e-5)
    assert np.abs(base[0, 5:] - changed[0, 5:]).max() > 1e-2


def test_rank_deficient_prefix_is_finite_with_gradient():
    import tensorflow as tf
    e, f, valid = make_inputs(b=2, n=5, seed=7)
    layer = HomogeneousInformationExtraction(num_bases=16, max_seq_len=5, causal=True)
    e_t = tf.constant(e, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(e_t)
        out = layer(e_t, tf.constant(f, tf.float32), tf.constant(valid, tf.float32))
        loss = tf.reduce_sum(out ** 2)
    grads = tape.gradient(loss, [e_t] + layer.trainable_variables)
    assert all(np.isfinite(g.numpy()).all() for g in grads)


@pytest.mark.parametrize("causal", [True, False])
def test_gram_matches_explicit_basis_products(causal):
    """G_t = Xr_t Xr_t^T at every position (short prefixes and padding included), with Xr_t
    built explicitly: the prefix-sum form the layer uses must not drift from the definition."""
    r, (e, _, valid) = 4, make_inputs(n=7, d=5, seed=3)
    layer = HomogeneousInformationExtraction(num_bases=r, max_seq_len=7, causal=causal)
    layer.build(None)
    w = layer.bases.numpy().astype(np.float64)
    k_ee = np.einsum("btd,bid->bti", e, e)
    got = layer._gram(k_ee.astype(np.float32), valid.astype(np.float32), w.astype(np.float32)).numpy()
    b, n, _ = e.shape
    for s in range(b):
        for t in range(n):
            upto = t + 1 if causal else n
            xr = (valid[s, :upto, None] * w[:upto]).T @ e[s, :upto]          # r x d
            np.testing.assert_allclose(got[s, t if causal else 0], xr @ xr.T, rtol=1e-4, atol=1e-4)
