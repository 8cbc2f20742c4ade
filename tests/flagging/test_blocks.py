"""Flagging in baseline blocks (dsacont.flagging.blocks).

The block cut, one block on synthetic data, and the lazy Dataset scored on simulator truth (with
its summary and waterfall).
"""
from __future__ import annotations

import json

import numpy as np
import pytest

from dsacont import flagging as F

NT, NF = 24, 768


def noise_amp(rng, shape, level=1.0, sky=0.0):
    """Amplitudes of complex Gaussian noise (sigma ``level`` per part) plus a constant sky."""
    return np.abs(sky + level * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)))


def _block(rng, nb=200, rfi=0.0):
    """Synthetic block: crosses noise + sky, a few autos at ~SEFD with tiny relative noise."""
    nant = 20
    a1, a2 = np.triu_indices(nant)
    a1, a2 = a1[:nb], a2[:nb]
    auto = a1 == a2
    bp = 1 + 0.2 * np.cos(np.linspace(0, 20, NF))
    amp = noise_amp(rng, (NT, nb, NF, 2), 1.0, 3.0) * bp[None, None, :, None]
    amp[:, auto] = (6000 + 3.0 * rng.standard_normal((NT, auto.sum(), NF, 2))) * bp[None, None, :, None] ** 2
    truth = np.zeros(amp.shape, bool)
    return amp.astype(np.float32), truth, auto, bp


def test_flag_block_combined_detector_finds_rfi_below_the_noise():
    rng = np.random.default_rng(5)
    amp, truth, auto, bp = _block(rng)
    cross = ~auto
    # RFI at ~0.4 sigma of one visibility's noise, common to every baseline: invisible per
    # baseline, obvious in the median over 190 cross-correlations
    for c in (200, 201, 500):
        amp[:, cross, c, :] = np.abs(amp[:, cross, c, :] + 0.4 * bp[c])
        truth[:, :, c, :] = True
    amp[9, cross] = np.abs(amp[9, cross] + 0.4 * bp[None, :, None])
    truth[9] = True
    s = F.load_strategy()
    off = F.flag_block(amp, None, auto, {"combine_baselines": False})
    on = F.flag_block(amp, None, auto, s)
    assert off[:, cross][truth[:, cross]].mean() < 0.5
    assert on[truth].mean() > 0.99  # autos inherit the across-baseline hits
    assert on[~truth].mean() < 0.005
    # the input flags are kept
    pre = np.zeros(amp.shape, bool)
    pre[0, 0, 0, 0] = True
    assert F.flag_block(amp, pre, auto, s)[0, 0, 0, 0]


def test_flag_block_autos_have_their_own_statistics():
    rng = np.random.default_rng(6)
    amp, truth, auto, bp = _block(rng)
    out = F.flag_block(amp, None, auto, F.load_strategy())
    # bandpass shape on autos is followed exactly; nothing (or almost nothing) flagged
    assert out[:, auto].mean() < 0.005 and out[:, ~auto].mean() < 0.005
    # a transmitter seen in one auto only
    ia = np.nonzero(auto)[0][3]
    amp[12, ia, 300:310, 0] += 200.0
    out = F.flag_block(amp, None, auto, F.load_strategy())
    assert out[12, ia, 300:310, 0].all()


def test_static_channel_mask():
    s = F.load_strategy()
    s.static_mask_hz = [[1.0e9, 1.1e9]]
    freqs = np.linspace(0.9e9, 1.2e9, NF)
    m = s.static_channel_mask(freqs)
    assert m.sum() == ((freqs >= 1.0e9) & (freqs <= 1.1e9)).sum() > 0
    rng = np.random.default_rng(7)
    amp, truth, auto, bp = _block(rng, nb=30)
    out = F.flag_block(amp, None, auto, s, m)
    assert out[:, :, m].all()


def score(flags, truth_mask, vis_zero=None):
    """(recall of RFI samples, false-flag fraction of clean samples)."""
    t = np.asarray(truth_mask)
    clean = ~t if vis_zero is None else (~t & ~vis_zero)
    return float(flags[t].mean()), float(flags[clean].mean())


@pytest.fixture(scope="module")
def small_ds(sim_small):
    from dsacont import load_truth
    from dsacont.io.uvh5 import open_group

    out, paths = sim_small
    return open_group(paths), load_truth(out, paths[0])


def test_flag_dataset_is_lazy_and_meets_truth(small_ds, tmp_path):
    import dask.array as da

    ds, truth = small_ds
    fl = F.flag_dataset(ds)
    assert isinstance(fl.data, da.Array) and fl.dtype == bool
    assert fl.dims == ds.vis.dims and fl.shape == ds.vis.shape
    nt, nb, nf, npol = ds.vis.shape
    assert all(c == (nt,) for c in [fl.data.chunks[0]]) and fl.data.chunks[2] == (nf,)
    flags = fl.values
    assert (np.asarray(truth["ant1"]) == ds.antenna1.values).all()
    recall, false = score(flags, truth["rfi_mask"])
    print(f"small preset via flag_dataset: recall {recall:.4f}, false flags {false:.4%}")
    assert recall >= 0.95
    assert false <= 0.01
    # input flags are kept (OR): the simulator writes none, so put some where the data are clean
    rng = np.random.default_rng(11)
    pre = rng.random(ds.vis.shape) < 1e-3
    pre[:, 5] = True  # and one whole baseline
    pre &= ~np.asarray(truth["rfi_mask"]) & ~flags
    assert pre.sum() > 1000
    ds_pre = ds.assign(flags=(ds.flags.dims, da.from_array(pre, chunks=ds.flags.data.chunks)))
    assert F.flag_dataset(ds_pre).values[pre].all()

    summ = F.flag_summary(fl, ds)
    json.dumps(summ)
    assert summ["overall"] == pytest.approx(flags.mean())
    assert len(summ["per_time"]) == nt and len(summ["per_subband"]) == 16
    assert len(summ["per_antenna"]) == len(np.unique(np.r_[ds.antenna1.values, ds.antenna2.values]))
    # the burst integrations are (almost) fully flagged in the summary
    burst_t = np.nonzero(np.asarray(truth["rfi_tf_mask"]).all(axis=1))[0]
    for t in burst_t:
        assert summ["per_time"][t]["fraction"] > 0.95
    png = F.plot_waterfall(ds, fl, tmp_path / "wf.png")
    assert png.exists() and png.stat().st_size > 10_000


def test_baseline_blocks_one_cut_for_every_path(small_ds):
    for nb, bb, sizes in [(4656, 256, [259] * 17 + [253]), (1176, 256, [294] * 4), (1176, 16, [17] * 69 + [3]),
                          (10, 256, [10]), (7, 0, [1] * 7)]:
        blocks = F.baseline_blocks(nb, bb)
        assert [b1 - b0 for b0, b1 in blocks] == sizes
        assert blocks[0][0] == 0 and blocks[-1][1] == nb
        assert all(a[1] == b[0] for a, b in zip(blocks, blocks[1:]))
    assert F.baseline_blocks(0, 256) == []
    # flag_dataset's Dask chunks are these blocks
    ds, _ = small_ds
    fl = F.flag_dataset(ds, {"block_baselines": 16})
    assert fl.data.chunks[1] == tuple(b1 - b0 for b0, b1 in F.baseline_blocks(ds.sizes["baseline"], 16))


def test_flag_ms_keeps_the_ms_baseline_order():
    from dsacont.flagging.ms import _first_seen, _index_in

    keys = np.array([5, 3, 9, 5, 3, 9, 5, 3, 9])
    vals, idx = _first_seen(keys)
    assert vals.tolist() == [5, 3, 9] and idx.tolist() == [0, 1, 2] * 3
    assert _index_in(vals, np.array([9, 5, 3])).tolist() == [2, 0, 1]
