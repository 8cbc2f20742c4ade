"""The sped-up kernels against the kernels as they were (tests/flagging/reference_kernels.py).

On the small simulated group with its truth: the new block kernel must give the same flags as the
reference one, block by block, and so the same recall and false-flag fraction.
"""
from __future__ import annotations

import numpy as np
import pytest

from dsacont import flagging as F
from dsacont.flagging import kernels as K
from dsacont.flagging.blocks import kernel_args

from . import reference_kernels as R


@pytest.fixture(scope="module")
def small_amp(sim_small):
    from dsacont import load_truth
    from dsacont.io.uvh5 import open_group

    out, paths = sim_small
    ds = open_group(paths)
    amp = np.ascontiguousarray(np.abs(ds.vis.values), dtype=np.float32)
    auto = ds.antenna1.values == ds.antenna2.values
    return amp, auto, np.asarray(load_truth(out, paths[0])["rfi_mask"])


def _flag_all(kernel, amp, flags, auto, s, static):
    out = np.empty(amp.shape, bool)
    for lo, hi in F.baseline_blocks(amp.shape[1], s.block_baselines):
        out[:, lo:hi] = kernel(np.ascontiguousarray(amp[:, lo:hi]), np.ascontiguousarray(flags[:, lo:hi]),
                               auto[lo:hi], static, *kernel_args(s))
    return out


def test_new_kernels_give_the_reference_flags_on_the_simulated_truth(small_amp):
    amp, auto, truth = small_amp
    s = F.load_strategy()
    nf = amp.shape[2]
    rng = np.random.default_rng(3)
    # input flags, a static channel and an invalid sample exercise the pre-flag paths too
    flags = rng.random(amp.shape) < 2e-3
    static = np.zeros(nf, bool)
    static[nf // 3] = True
    amp = amp.copy()
    amp[5, 7, 11, 0] = 0.0
    new = _flag_all(K.flag_block_kernel, amp, flags, auto, s, static)
    old = _flag_all(R.flag_block_kernel, amp, flags, auto, s, static)
    assert new[flags].all() and new[:, :, nf // 3].all() and new[5, 7, 11, 0]
    recall_new, recall_old = new[truth].mean(), old[truth].mean()
    false_new, false_old = new[~truth].mean(), old[~truth].mean()
    print(f"recall new {recall_new:.5f} old {recall_old:.5f}; false new {false_new:.5%} old {false_old:.5%}; "
          f"equal {np.mean(new == old):.7f}")
    assert recall_new >= 0.95 and recall_new >= recall_old
    assert false_new <= false_old
    assert np.array_equal(new, old)


def test_sliding_running_median_is_the_selection_median():
    rng = np.random.default_rng(1)
    for trial in range(400):
        n = int(rng.integers(1, 60))
        w = int(rng.choice([1, 3, 5, 7, 15, 31]))
        x = rng.normal(size=n)
        if trial % 3 == 0:
            x = np.round(x)  # ties
        if trial % 2:
            x[rng.random(n) < 0.3] = np.nan
        for loo in (False, True):
            assert np.array_equal(K.running_median(x, w, loo), R.running_median(x, w, loo), equal_nan=True)


def test_zscore_and_combined_statistic_match_the_reference():
    rng = np.random.default_rng(2)
    nt, nb, nf = 24, 40, 96
    a = np.abs(3 + rng.standard_normal((nt, nf)) + 1j * rng.standard_normal((nt, nf)))
    a[4, 10:20] += 8
    pre = rng.random((nt, nf)) < 0.05
    spec = K.channel_medians(a, pre)
    assert np.array_equal(spec, R.channel_medians(a, pre), equal_nan=True)
    for fw in (1, 15):
        assert np.array_equal(K.background_spec(a, pre, spec, fw, 5), R.background_spec(a, pre, spec, fw, 5))
        assert np.array_equal(K.zscore_plane_spec(a, pre, spec, fw, 5, 3, 5),
                              R.zscore_plane_spec(a, pre, spec, fw, 5, 3, 5), equal_nan=True)
    x = a / a.mean() - 1
    assert np.array_equal(K.masked_box_smooth(x, pre, 3, 5), R.masked_box_smooth(x, pre, 3, 5))
    z = rng.standard_normal((nt, nb, nf)).astype(np.float32)
    z[rng.random(z.shape) < 0.01] = np.nan
    p3 = rng.random(z.shape) < 0.05
    use = np.arange(nb) % 7 != 0
    for u, v in zip(K.combined_statistic(z, use, p3), R.combined_statistic(z, use, p3)):
        assert np.array_equal(u, v, equal_nan=True)


def test_channel_medians_sorting_network_is_the_selection_median():
    rng = np.random.default_rng(4)
    for nt in [1, 2, 3, 5, 8, 13, 16, 17, 24, 31, 33, 48]:
        for frac in (0.0, 0.1, 0.6, 1.0):
            a = np.abs(3 + rng.normal(size=(nt, 40)))
            if nt % 2:
                a = np.round(a)  # ties
            fl = rng.random(a.shape) < frac
            assert np.array_equal(K.channel_medians(a, fl), R.channel_medians(a, fl), equal_nan=True)
    # an unflagged NaN takes the per-channel selection path: still the reference's value elsewhere
    a = np.abs(3 + rng.normal(size=(24, 40)))
    a[3, 5] = np.nan
    fl = np.isnan(a)
    assert np.array_equal(K.channel_medians(a, fl), R.channel_medians(a, fl))
    assert np.isfinite(K.channel_medians(a, np.zeros(a.shape, bool))[np.arange(40) != 5]).all()
