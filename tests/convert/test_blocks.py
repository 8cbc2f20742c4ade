"""One block of the main table (compute_block over the block kernels) against phasing's kernel."""
from __future__ import annotations

import numpy as np

from dsacont.convert import phasing


def test_block_kernel_matches_rotate_kernel():
    """The fused block kernel (flip, recurrence phases, weights, flags) against phasing's kernel."""
    from dsacont.convert import compute_block

    rng = np.random.default_rng(5)
    shape = (3, 7, 48, 2)
    vis = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
    ns = rng.choice([0.0, 0.5, 1.0], size=shape).astype(np.float32)
    fl = rng.random(shape) < 0.1
    dw = rng.uniform(-3000, 3000, shape[:2])
    for freq in (1.31e9 + 244140.625 * np.arange(48), np.sort(rng.uniform(1.3e9, 1.5e9, 48))):
        for flip in (False, True):
            src = lambda x: x[:, :, ::-1] if flip else x  # noqa: E731
            data, flags, weight, sigma = compute_block(vis, ns, fl, dw, freq, flip)
            expect = phasing.rotate_vis_numpy(src(vis), dw, freq, conjugate=True)
            np.testing.assert_allclose(data, expect, rtol=0, atol=3e-6 * np.abs(vis).max())
            np.testing.assert_array_equal(flags, src(fl) | (src(ns) == 0))
            w = ns.mean(axis=2, dtype=np.float64).astype(np.float32)
            np.testing.assert_allclose(weight, w, rtol=1e-6)
            np.testing.assert_allclose(sigma, np.where(w > 0, 1 / np.sqrt(np.maximum(w, 1e-30)), 0), rtol=1e-6)
