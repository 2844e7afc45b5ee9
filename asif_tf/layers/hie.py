"""Homogeneous Information Extraction (HIE) with r orthogonal bases (ASIF.md, paper Fig. 6).

Reference formulation, per sequence (E', F' float [n, d], W_r float [n, r]):
    Xr = W_r^T E'                    r x d
    Q  = thin QR of Xr^T             d x r, orthonormal basis of the ID subspace
    pX = E' Q,  pA = F' Q            n x r
    keep = 1[pX * pA > 0]            no gradient through the indicator
    E'' = E' + (keep * pA) Q^T

Implementation. Xr^T = Q R means G = Xr Xr^T = R^T R, i.e. R^T = L is the Cholesky
factor of the r x r Gram matrix and Q = Xr^T L^{-T}. Everything HIE needs can then be
written with r x r solves and n x n position-by-position inner products, without ever
materialising a d x r basis per position:
    pX_t = L^{-1} Xr e_t,  pA_t = L^{-1} Xr f_t,  (keep*pA)_t Q^T = Xr^T L^{-T} (keep*pA)_t.
This is exactly the basis Householder QR gives (up to column signs, which the kept
part does not depend on).

Causal HIE (default): position t uses Xr_t = sum_{i<=t} W_r[i] E'_i^T, built only from
the prefix up to t, so a loss at every position cannot see later items through the
basis; at the last position it equals the per-sequence basis with padding masked.
Non-causal (research) HIE uses one basis per sequence, with padded positions masked out
of it or, for the unmasked research variant, not.

Short prefixes give a rank-deficient Xr (rank <= t+1 < r). A ridge eps * tr(G)/r is
added to G before the Cholesky factorisation: directions with energy far above eps keep
an orthonormal basis vector, the missing directions get a vanishing one, so no spurious
random direction is injected and the gradient stays finite.
"""
from __future__ import annotations

from asif_tf import _env  # noqa: F401
import tensorflow as tf


@tf.keras.utils.register_keras_serializable(package="asif")
class HomogeneousInformationExtraction(tf.keras.layers.Layer):
    """Call: item E' float [b, n, d], fused F' float [b, n, d], valid float [b, n] (1 = real item)
    -> E'' float [b, n, d].

    With ``rows`` int [b] (one position per sequence, e.g. its last real item), only that
    position is computed: fused is F' at those rows, float [b, 1, d], and the result is E''
    there, float [b, 1, d]; item E' is still needed at every position (the basis is built
    from all of them). This does the r x r factorisation once per sequence instead of once
    per position, for models that read only the last position (prefix training, evaluation,
    serving)."""

    def __init__(self, num_bases: int = 16, max_seq_len: int = 50, causal: bool = True,
                 mask_padding: bool = True, ridge: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        self.num_bases, self.max_seq_len = int(num_bases), int(max_seq_len)
        self.causal, self.mask_padding, self.ridge = bool(causal), bool(mask_padding), float(ridge)
        # W_r ~ N(0, 1), one row per position of the (right-padded) sequence.
        self.bases = self.add_weight(name="position_bases", shape=(self.max_seq_len, self.num_bases),
                                     initializer=tf.keras.initializers.RandomNormal(stddev=1.0))

    def call(self, item, fused, valid, rows=None):
        if rows is not None:
            return self._call_at_rows(item, fused, valid, rows)
        n = tf.shape(item)[1]
        w = tf.cast(self.bases[:n], tf.float32)                                    # [n, r]
        # Solves in float32 even under mixed precision: the Gram matrix squares the conditioning.
        e, f = tf.cast(item, tf.float32), tf.cast(fused, tf.float32)
        m = self._basis_weights(valid)
        if self.causal:
            # coef[b, t, i] = 1[i <= t] m_i: which positions build position t's basis.
            lower = tf.linalg.band_part(tf.ones([n, n]), -1, 0)
            coef = lower[tf.newaxis] * m[:, tf.newaxis, :]                           # [b, n, n]
        else:
            coef = tf.broadcast_to(m[:, tf.newaxis, :], [tf.shape(m)[0], n, n])
        k_ee = tf.matmul(e, e, transpose_b=True)                                   # [b, n, n] e_t . e_i
        k_fe = tf.matmul(f, e, transpose_b=True)                                   # [b, n, n] f_t . e_i
        xe = tf.matmul(coef * k_ee, w)                                             # [b, n, r] Xr_t e_t
        xf = tf.matmul(coef * k_fe, w)                                             # [b, n, r] Xr_t f_t
        gram = self._gram(k_ee, m, w)                                              # [b, n|1, r, r]
        chol = self._cholesky(gram)
        chol = tf.broadcast_to(chol, tf.concat([tf.shape(xe)[:2], [self.num_bases, self.num_bases]], 0))
        p_item = tf.linalg.triangular_solve(chol, xe[..., tf.newaxis], lower=True)   # [b, n, r, 1]
        p_fused = tf.linalg.triangular_solve(chol, xf[..., tf.newaxis], lower=True)
        keep = tf.stop_gradient(tf.cast(p_item * p_fused > 0, tf.float32))
        u = tf.linalg.triangular_solve(chol, keep * p_fused, lower=True, adjoint=True)[..., 0]  # [b, n, r]
        # (keep*pA)_t Q_t^T = sum_i coef[t, i] (u_t . w_i) e_i
        injected = tf.matmul(coef * tf.matmul(u, w, transpose_b=True), e)          # [b, n, d]
        return item + tf.cast(injected, item.dtype)

    def _call_at_rows(self, item, fused, valid, rows):
        """E'' at one position per sequence: the same basis as ``call`` gives there (see the class)."""
        n = tf.shape(item)[1]
        w = tf.cast(self.bases[:n], tf.float32)                                    # [n, r]
        e, f = tf.cast(item, tf.float32), tf.cast(fused[:, 0], tf.float32)        # [b, n, d], [b, d]
        m = self._basis_weights(valid)
        if self.causal:
            m = m * tf.cast(tf.range(n)[tf.newaxis] <= rows[:, tf.newaxis], tf.float32)  # positions i <= row
        xr = tf.matmul(m[..., tf.newaxis] * w, e, transpose_a=True)               # [b, r, d] Xr
        gram = tf.matmul(xr, xr, transpose_b=True)                                 # [b, r, r]
        chol = self._cholesky(gram)
        e_row = tf.gather(e, rows, batch_dims=1)                                   # [b, d]
        p_item = tf.linalg.triangular_solve(chol, tf.matmul(xr, e_row[..., tf.newaxis]), lower=True)  # [b, r, 1]
        p_fused = tf.linalg.triangular_solve(chol, tf.matmul(xr, f[..., tf.newaxis]), lower=True)
        keep = tf.stop_gradient(tf.cast(p_item * p_fused > 0, tf.float32))
        u = tf.linalg.triangular_solve(chol, keep * p_fused, lower=True, adjoint=True)   # [b, r, 1]
        injected = tf.matmul(u, xr, transpose_a=True)                              # [b, 1, d] u^T Xr
        return tf.gather(item, rows[:, tf.newaxis], batch_dims=1) + tf.cast(injected, item.dtype)

    def _basis_weights(self, valid):
        """float [b, n]: which positions may build a basis (real items, or all for the unmasked research HIE)."""
        if self.mask_padding or self.causal:
            return tf.cast(valid, tf.float32)
        return tf.ones_like(valid, tf.float32)

    def _cholesky(self, gram):
        """Cholesky factor of the ridged Gram matrix (see the module docstring): float [..., r, r]."""
        scale = tf.linalg.trace(gram)[..., tf.newaxis, tf.newaxis] / self.num_bases
        return tf.linalg.cholesky(gram + (self.ridge * scale + 1e-12) * tf.eye(self.num_bases))

    def _gram(self, k_ee, m, w):
        """G = Xr Xr^T: float [b, 1, r, r] (one basis per sequence) or [b, n, r, r] (causal)."""
        mw = m[..., tf.newaxis] * w                                                # [b, n, r] m_i w_i
        if not self.causal:
            return tf.matmul(mw, tf.matmul(k_ee, mw), transpose_a=True)[:, tf.newaxis]
        # G_t = G_{t-1} + w_t g_t^T + g_t w_t^T - m_t K_tt w_t w_t^T, g_t = m_t sum_{j<=t} m_j K_tj w_j,
        # i.e. G_t = S_t + S_t^T with S_t = sum_{i<=t} mw_i h_i^T, h_i = g_i - m_i K_ii mw_i / 2.
        # The prefix sum over i is one [n, n] lower-triangular matmul on the flattened outer
        # products (a BLAS call, forward and backward), cheaper than a cumsum of the same tensor.
        b, n = tf.shape(k_ee)[0], tf.shape(k_ee)[1]
        lower = tf.linalg.band_part(tf.ones([n, n]), -1, 0)                        # [n, n] 1[j <= t], broadcast
        g = m[..., tf.newaxis] * tf.matmul(lower * k_ee, mw)                       # [b, n, r]
        diag = tf.linalg.diag_part(k_ee) * m                                       # [b, n]
        h = g - 0.5 * diag[..., tf.newaxis] * mw                                   # [b, n, r]
        outer = tf.reshape(mw[..., :, tf.newaxis] * h[..., tf.newaxis, :], [b, n, -1])  # [b, n, r*r]
        s = tf.reshape(tf.matmul(lower, outer), [b, n, self.num_bases, self.num_bases])  # [b, n, r, r]
        return s + tf.linalg.matrix_transpose(s)

    def get_config(self):
        return {**super().get_config(), "num_bases": self.num_bases, "max_seq_len": self.max_seq_len,
                "causal": self.causal, "mask_padding": self.mask_padding, "ridge": self.ridge}
