"""The phasing kernels and their wrappers: rotation against the float64 formula (numpy and Dask),
uvw as a rotation of the baselines."""
from __future__ import annotations

import numpy as np

from dsacont.convert import phasing

C = 299_792_458.0


def test_rotate_kernel_matches_float64_formula():
    rng = np.random.default_rng(0)
    vis = (rng.standard_normal((3, 5, 7, 2)) + 1j * rng.standard_normal((3, 5, 7, 2))).astype(np.complex64)
    dw = rng.uniform(-2000, 2000, (3, 5))  # metres: phases of ~60000 rad, float32 phases would fail
    freq = np.linspace(1.31e9, 1.5e9, 7)
    expect = vis.astype(np.complex128) * np.exp(-2j * np.pi * freq[None, None, :, None] * dw[:, :, None, None] / C)
    out = phasing.rotate_vis_numpy(vis, dw, freq)
    assert out.dtype == np.complex64
    np.testing.assert_allclose(out, expect, rtol=0, atol=2e-6 * np.abs(vis).max())
    np.testing.assert_allclose(phasing.rotate_vis_numpy(vis, dw, freq, conjugate=True), np.conj(expect),
                               rtol=0, atol=2e-6 * np.abs(vis).max())
    # the dask wrapper gives the same, block by block
    import dask.array as da

    lazy = phasing.rotate_vis(da.from_array(vis, chunks=(2, 5, 3, 2)), dw, freq)
    np.testing.assert_array_equal(lazy.compute(), out)


def test_uvw_kernel_is_rotation_of_baselines():
    rng = np.random.default_rng(1)
    pos = rng.uniform(-1500, 1500, (6, 3))
    a1 = np.array([0, 0, 1, 2, 5])
    a2 = np.array([0, 1, 3, 4, 5])
    rot = phasing.uvw_rotation(np.array([2460978.08, 2460978.09]), 2.24, 0.97)
    uvw = phasing.baseline_uvw(rot, pos, a1, a2)
    b = pos[a2] - pos[a1]
    np.testing.assert_allclose(uvw, np.einsum("tij,bj->tbi", rot, b), atol=1e-9)
    # rotations are orthonormal; autocorrelations are zero
    np.testing.assert_allclose(np.einsum("tij,tkj->tik", rot, rot), np.broadcast_to(np.eye(3), (2, 3, 3)), atol=1e-12)
    assert np.all(uvw[:, 0] == 0) and np.all(uvw[:, -1] == 0)
