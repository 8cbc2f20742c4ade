"""RFI flagging kernels (dsacont.flagging.kernels) on synthetic (time, frequency) planes."""
from __future__ import annotations

import numpy as np
import pytest

from dsacont.flagging import kernels as K

NT, NF = 24, 768


def noise_amp(rng, shape, level=1.0, sky=0.0):
    """Amplitudes of complex Gaussian noise (sigma ``level`` per part) plus a constant sky."""
    return np.abs(sky + level * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)))


def test_median_kernel_matches_numpy():
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 5, 16, 17, 24, 25, 100, 768, 5001]:
        for rounded in (False, True):
            x = rng.normal(size=n)
            if rounded:
                x = np.round(x)  # many ties
            buf = x.copy()
            assert K._median_buf(buf, n) == pytest.approx(np.median(x))
    assert np.isnan(K._median_buf(np.empty(3), 0))


def test_flag_invalid_zeros_nan_inf():
    a = np.ones((4, 5))
    a[0, 0], a[1, 1], a[2, 2], a[3, 3] = 0.0, np.nan, np.inf, -np.inf
    fl = np.zeros((4, 5), bool)
    fl[0, 4] = True
    out = K.flag_invalid(a, fl)
    assert out.sum() == 5 and out[0, 0] and out[1, 1] and out[2, 2] and out[3, 3] and out[0, 4]
    assert not fl[1, 1]  # input untouched


def test_running_median_ignores_spike_and_nan():
    x = np.ones(50)
    x[20] = 100.0
    x[30] = np.nan
    y = K.running_median(x, 7)
    assert np.allclose(y, 1.0)


def test_background_ignores_narrow_line_and_short_burst():
    rng = np.random.default_rng(1)
    bp = 1 + 0.3 * np.sin(np.linspace(0, 6, NF))
    a = noise_amp(rng, (NT, NF), 0.05, 1.0) * bp
    clean = a.copy()
    a[:, 300] += 20.0  # persistent line
    a[7, :] += 20.0  # broadband burst
    bg = K.background(a, np.zeros((NT, NF), bool), 15, 5)
    ref = K.background(clean, np.zeros((NT, NF), bool), 15, 5)
    assert np.allclose(bg, ref, rtol=0.02)
    assert np.allclose(bg / bp, 1.0, atol=0.08)


def test_masked_box_smooth_excludes_flags():
    x = np.ones((NT, NF))
    fl = np.zeros((NT, NF), bool)
    x[5, 5] = 1000.0
    fl[5, 5] = True
    sm = K.masked_box_smooth(x, fl, 3, 5)
    assert np.allclose(sm, 1.0)


def test_robust_sigma_of_gaussian():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(NT, NF))
    fl = np.zeros_like(x, bool)
    x[:, :10] = 1e6  # outliers hardly move a robust estimate
    med, sig = K.robust_sigma(x, fl)
    assert med == pytest.approx(3.0, abs=0.1) and sig == pytest.approx(2.0, rel=0.05)


def test_sumthreshold_thresholds_follow_rho():
    # a run of M samples at exactly above chi_M is flagged; just below it is not
    chi1, rho = 6.0, 1.5
    for m in (1, 2, 4, 8):
        thr = chi1 / rho ** np.log2(m)
        for scale, expect in ((1.01, True), (0.99, False)):
            z = np.zeros((NT, NF))
            z[3, 100:100 + m] = thr * scale
            out = K.sumthreshold(z, np.zeros((NT, NF), bool), chi1, rho, m, False, True)
            assert bool(out[3, 100:100 + m].all()) is expect, (m, scale)
            assert out.sum() == (m if expect else 0)


def test_sumthreshold_finds_weak_wide_rfi_in_both_directions():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((NT, NF))
    z[:, 400] += 2.5  # weak persistent line: no single sample is a 7-sigma outlier
    z[10, 100:700] += 2.0  # weak broadband burst
    single = K.sumthreshold(z, np.zeros((NT, NF), bool), 7.0, 1.5, 1, True, True)
    out = K.sumthreshold(z, np.zeros((NT, NF), bool), 7.0, 1.5, 32, True, True)
    assert single[:, 400].mean() < 0.1
    assert out[:, 400].mean() > 0.9 and out[10, 100:700].mean() > 0.9
    clean = np.ones((NT, NF), bool)
    clean[:, 400] = False
    clean[10] = False
    assert out[clean].mean() < 0.002


def test_sumthreshold_only_positive_and_respects_prior_flags():
    z = np.zeros((NT, NF))
    z[5, 10:20] = -50.0
    assert not K.sumthreshold(z, np.zeros((NT, NF), bool), 6.0, 1.5, 32, True, True).any()
    pri = np.zeros((NT, NF), bool)
    pri[2, 2] = True
    out = K.sumthreshold(np.zeros((NT, NF)), pri, 6.0, 1.5, 32, True, True)
    assert out.sum() == 1 and out[2, 2]


def test_dilate_and_extend_fraction():
    fl = np.zeros((NT, NF), bool)
    fl[10, 100] = True
    d = K.dilate(fl, 1, 2)
    assert d[9:12, 100].all() and d[10, 98:103].all() and d.sum() == 3 + 5 - 1
    e = np.zeros((NT, NF), bool)
    e[4, : int(0.7 * NF)] = True
    e[: int(0.8 * NT), 50] = True
    out = K.extend_fraction(e, 0.6, 0.6)
    assert out[4].all() and out[:, 50].all() and out.sum() == NF + NT - 1
    assert (K.extend_fraction(e, 1.0, 1.0) == e).all()


def test_flag_plane_noise_with_injected_rfi():
    rng = np.random.default_rng(4)
    bp = 1 + 0.2 * np.cos(np.linspace(0, 20, NF))
    a = noise_amp(rng, (NT, NF), 1.0, 3.0) * bp
    truth = np.zeros((NT, NF), bool)
    truth[:, 123] = truth[:, 600:603] = True
    truth[17:19] = True
    truth[3, 50:58] = True
    a[:, 123] += 12 * bp[123]
    a[:, 600:603] += 15 * bp[600:603]
    a[17:19] += 12 * bp
    a[3, 50:58] += 30 * bp[50:58]
    out, z = K.flag_plane(a, np.zeros((NT, NF), bool), 7.0, 1.5, 32, 15, 5, 3, 5, 2)
    assert out[truth].mean() > 0.97
    assert out[~truth].mean() < 0.005
    assert z.dtype == np.float32 and np.isfinite(z).all()
