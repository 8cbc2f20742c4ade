"""RFI flagging: kernel unit tests on synthetic planes, strategy files, and scoring on simulator
truth through the lazy Dataset (flag_dataset) and through a real Measurement Set (flag_ms)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from dsacont import flagging as F
from dsacont.errors import BadInputError

NT, NF = 24, 768


def noise_amp(rng, shape, level=1.0, sky=0.0):
    """Amplitudes of complex Gaussian noise (sigma ``level`` per part) plus a constant sky."""
    return np.abs(sky + level * (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)))


# ---------------------------------------------------------------------------------------------
# kernels
# ---------------------------------------------------------------------------------------------


def test_median_kernel_matches_numpy():
    rng = np.random.default_rng(0)
    for n in [1, 2, 3, 5, 16, 17, 24, 25, 100, 768, 5001]:
        for rounded in (False, True):
            x = rng.normal(size=n)
            if rounded:
                x = np.round(x)  # many ties
            buf = x.copy()
            assert F._median_buf(buf, n) == pytest.approx(np.median(x))
    assert np.isnan(F._median_buf(np.empty(3), 0))


def test_flag_invalid_zeros_nan_inf():
    a = np.ones((4, 5))
    a[0, 0], a[1, 1], a[2, 2], a[3, 3] = 0.0, np.nan, np.inf, -np.inf
    fl = np.zeros((4, 5), bool)
    fl[0, 4] = True
    out = F.flag_invalid(a, fl)
    assert out.sum() == 5 and out[0, 0] and out[1, 1] and out[2, 2] and out[3, 3] and out[0, 4]
    assert not fl[1, 1]  # input untouched


def test_running_median_ignores_spike_and_nan():
    x = np.ones(50)
    x[20] = 100.0
    x[30] = np.nan
    y = F.running_median(x, 7)
    assert np.allclose(y, 1.0)


def test_background_ignores_narrow_line_and_short_burst():
    rng = np.random.default_rng(1)
    bp = 1 + 0.3 * np.sin(np.linspace(0, 6, NF))
    a = noise_amp(rng, (NT, NF), 0.05, 1.0) * bp
    clean = a.copy()
    a[:, 300] += 20.0  # persistent line
    a[7, :] += 20.0  # broadband burst
    bg = F.background(a, np.zeros((NT, NF), bool), 15, 5)
    ref = F.background(clean, np.zeros((NT, NF), bool), 15, 5)
    assert np.allclose(bg, ref, rtol=0.02)
    assert np.allclose(bg / bp, 1.0, atol=0.08)


def test_masked_box_smooth_excludes_flags():
    x = np.ones((NT, NF))
    fl = np.zeros((NT, NF), bool)
    x[5, 5] = 1000.0
    fl[5, 5] = True
    sm = F.masked_box_smooth(x, fl, 3, 5)
    assert np.allclose(sm, 1.0)


def test_robust_sigma_of_gaussian():
    rng = np.random.default_rng(2)
    x = rng.normal(3.0, 2.0, size=(NT, NF))
    fl = np.zeros_like(x, bool)
    x[:, :10] = 1e6  # outliers hardly move a robust estimate
    med, sig = F.robust_sigma(x, fl)
    assert med == pytest.approx(3.0, abs=0.1) and sig == pytest.approx(2.0, rel=0.05)


def test_sumthreshold_thresholds_follow_rho():
    # a run of M samples at exactly above chi_M is flagged; just below it is not
    chi1, rho = 6.0, 1.5
    for m in (1, 2, 4, 8):
        thr = chi1 / rho ** np.log2(m)
        for scale, expect in ((1.01, True), (0.99, False)):
            z = np.zeros((NT, NF))
            z[3, 100:100 + m] = thr * scale
            out = F.sumthreshold(z, np.zeros((NT, NF), bool), chi1, rho, m, False, True)
            assert bool(out[3, 100:100 + m].all()) is expect, (m, scale)
            assert out.sum() == (m if expect else 0)


def test_sumthreshold_finds_weak_wide_rfi_in_both_directions():
    rng = np.random.default_rng(3)
    z = rng.standard_normal((NT, NF))
    z[:, 400] += 2.5  # weak persistent line: no single sample is a 7-sigma outlier
    z[10, 100:700] += 2.0  # weak broadband burst
    single = F.sumthreshold(z, np.zeros((NT, NF), bool), 7.0, 1.5, 1, True, True)
    out = F.sumthreshold(z, np.zeros((NT, NF), bool), 7.0, 1.5, 32, True, True)
    assert single[:, 400].mean() < 0.1
    assert out[:, 400].mean() > 0.9 and out[10, 100:700].mean() > 0.9
    clean = np.ones((NT, NF), bool)
    clean[:, 400] = False
    clean[10] = False
    assert out[clean].mean() < 0.002


def test_sumthreshold_only_positive_and_respects_prior_flags():
    z = np.zeros((NT, NF))
    z[5, 10:20] = -50.0
    assert not F.sumthreshold(z, np.zeros((NT, NF), bool), 6.0, 1.5, 32, True, True).any()
    pri = np.zeros((NT, NF), bool)
    pri[2, 2] = True
    out = F.sumthreshold(np.zeros((NT, NF)), pri, 6.0, 1.5, 32, True, True)
    assert out.sum() == 1 and out[2, 2]


def test_dilate_and_extend_fraction():
    fl = np.zeros((NT, NF), bool)
    fl[10, 100] = True
    d = F.dilate(fl, 1, 2)
    assert d[9:12, 100].all() and d[10, 98:103].all() and d.sum() == 3 + 5 - 1
    e = np.zeros((NT, NF), bool)
    e[4, : int(0.7 * NF)] = True
    e[: int(0.8 * NT), 50] = True
    out = F.extend_fraction(e, 0.6, 0.6)
    assert out[4].all() and out[:, 50].all() and out.sum() == NF + NT - 1
    assert (F.extend_fraction(e, 1.0, 1.0) == e).all()


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
    out, z = F.flag_plane(a, np.zeros((NT, NF), bool), 7.0, 1.5, 32, 15, 5, 3, 5, 2)
    assert out[truth].mean() > 0.97
    assert out[~truth].mean() < 0.005
    assert z.dtype == np.float32 and np.isfinite(z).all()


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


# ---------------------------------------------------------------------------------------------
# strategy
# ---------------------------------------------------------------------------------------------


def test_default_strategy_file_and_user_overrides(tmp_path):
    s = F.load_strategy()
    assert F.DEFAULT_STRATEGY_PATH.exists()
    assert s.rho == 1.5 and s.combine_baselines and s.cross_chi1 > 0 and s.auto_freq_window == 1
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"cross_chi1": 9.5, "static_mask_hz": [[1.38e9, 1.382e9]]}))
    u = F.load_strategy(user)
    assert u.cross_chi1 == 9.5 and u.static_mask_hz == [[1.38e9, 1.382e9]] and u.rho == s.rho
    toml = tmp_path / "mine.toml"
    toml.write_text("[cross]\nchi1 = 8.0\n[combined]\nenabled = false\n")
    t = F.load_strategy(toml)
    assert t.cross_chi1 == 8.0 and t.combine_baselines is False
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cross_chi": 9}))
    with pytest.raises(BadInputError, match="cross_chi"):
        F.load_strategy(bad)
    with pytest.raises(BadInputError):
        F.load_strategy(tmp_path / "missing.json")


# ---------------------------------------------------------------------------------------------
# simulator truth: lazy Dataset
# ---------------------------------------------------------------------------------------------


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
    # input flags are kept (OR)
    assert not ds.flags.values.any() or flags[ds.flags.values].all()

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


# ---------------------------------------------------------------------------------------------
# Measurement Set
# ---------------------------------------------------------------------------------------------

_WRITE_MS = textwrap.dedent(
    """
    # pyuvdata's write_ms (python-casacore) in its own process: never casacore next to casatools
    import sys
    import numpy as np
    from pyuvdata import UVData
    out, paths = sys.argv[1], sys.argv[2:]
    uvs = []
    for p in paths:
        uv = UVData()
        uv.read(p, file_type="uvh5", run_check=False)
        uv.uvw_array = uv.uvw_array.astype(np.float64)
        uvs.append(uv)
    uv = uvs[0]
    uv.fast_concat(uvs[1:], axis="freq", inplace=True, run_check=False)
    uv.reorder_freqs(channel_order="freq", run_check=False)
    uv.write_ms(out, clobber=True, run_check=False, force_phase=True)
    """
)


@pytest.fixture(scope="module")
def small_ms(sim_small, tmp_path_factory):
    """A Measurement Set of the small group (pyuvdata write_ms, 1 SPW, ascending)."""
    _, paths = sim_small
    ms = tmp_path_factory.mktemp("flag_ms") / "small.ms"
    subprocess.run([sys.executable, "-c", _WRITE_MS, str(ms), *paths], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return ms


def _ms_cube(ms, truth):
    """FLAG of the MS as a (time, baseline, freq, pol) cube in the truth's order (casatools)."""
    from dsacont.casa import ensure_casa

    tb = ensure_casa().table()
    tb.open(str(ms))
    try:
        flag = tb.getcol("FLAG")  # (ncorr, nchan, nrow)
        t = tb.getcol("TIME")
        a1, a2 = tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")
    finally:
        tb.close()
    tvals, ti = np.unique(np.round(t, 3), return_inverse=True)
    key = {(int(x), int(y)): i for i, (x, y) in enumerate(zip(truth["ant1"], truth["ant2"]))}
    bi = np.array([key[(int(x), int(y))] for x, y in zip(a1, a2)])
    nt, nb, nf, npol = np.asarray(truth["rfi_mask"]).shape
    cube = np.zeros((nt, nb, nf, npol), bool)
    cube[ti, bi] = flag.transpose(2, 1, 0)
    return cube


def test_flag_ms_updates_flag_column_and_meets_truth(small_ms, sim_small, tmp_path):
    from dsacont import load_truth

    out, paths = sim_small
    truth = load_truth(out, paths[0])
    before = _ms_cube(small_ms, truth)
    assert not before.any()
    dry = F.flag_ms(small_ms, dry_run=True)
    assert dry["overall"] > 0.1
    assert not _ms_cube(small_ms, truth).any()  # dry run wrote nothing
    summ_path = tmp_path / "summary.json"
    png = tmp_path / "wf.png"
    summ = F.flag_ms(small_ms, summary_json=summ_path, waterfall=png)
    cube = _ms_cube(small_ms, truth)
    recall, false = score(cube, truth["rfi_mask"])
    print(f"small preset via flag_ms: recall {recall:.4f}, false flags {false:.4%}, {summ['seconds']:.1f} s")
    assert recall >= 0.95 and false <= 0.01
    assert summ["overall"] == pytest.approx(cube.mean(), abs=1e-6)
    assert json.loads(summ_path.read_text())["ms"] == str(small_ms)
    assert png.exists()
    # running again keeps every flag (existing flags are pre-flags) and adds few
    again = F.flag_ms(small_ms, strategy={"combine_baselines": True})
    assert (_ms_cube(small_ms, truth) >= cube).all()
    assert again["overall"] - summ["overall"] < 0.01


def test_cli(small_ms, tmp_path):
    from dsacont.cli import main

    summ = tmp_path / "s.json"
    strat = tmp_path / "st.json"
    strat.write_text(json.dumps({"cross_chi1": 8.0}))
    assert main(["flag", str(small_ms), "--strategy", str(strat), "--summary-json", str(summ), "--dry-run"]) == 0
    data = json.loads(summ.read_text())
    assert data["strategy"]["cross_chi1"] == 8.0 and 0 < data["overall"] < 1
    with pytest.raises(BadInputError):
        F.flag_ms(tmp_path / "nothing.ms")


def test_flag_ms_many_spws_from_convert(sim_small, tmp_path):
    """The conversion stage's MS (one SPW per subband): SPWs are flagged as one band."""
    from dsacont import convert_group, load_truth

    out, paths = sim_small
    truth = load_truth(out, paths[0])
    ms = convert_group(paths, tmp_path / "conv.ms", flag=False, tmp_dir=tmp_path / "tmp", progress=False)
    layout = F._read_ms_layout(__import__("dsacont.casa", fromlist=["x"]).ensure_casa().table(), ms)
    summ = F.flag_ms(ms)
    assert len(summ.get("spws", [])) == len(layout) >= 1
    cube = _ms_cube_multi(ms, truth)
    recall, false = score(cube, truth["rfi_mask"])
    print(f"small preset, {len(layout)} SPWs, via flag_ms: recall {recall:.4f}, false flags {false:.4%}")
    assert recall >= 0.95 and false <= 0.01


def _ms_cube_multi(ms, truth):
    """FLAG of a multi-SPW MS as a (time, baseline, freq ascending, pol) cube (casatools)."""
    from dsacont.casa import ensure_casa

    tb = ensure_casa().table()
    layout = F._read_ms_layout(tb, ms)
    tf = np.asarray(truth["freq_hz"])
    key = {(int(x), int(y)): i for i, (x, y) in enumerate(zip(truth["ant1"], truth["ant2"]))}
    t_s = (np.asarray(truth["time_jd"]) - 2400000.5) * 86400.0
    nt, nb, nf, npol = np.asarray(truth["rfi_mask"]).shape
    cube = np.zeros((nt, nb, nf, npol), bool)
    tb.open(str(ms))
    try:
        for d, info in layout.items():
            sub = tb.query(f"DATA_DESC_ID=={d}")
            try:
                if sub.nrows() == 0:
                    continue
                flag = sub.getcol("FLAG").transpose(2, 1, 0)
                ti = np.abs(sub.getcol("TIME")[:, None] - t_s[None, :]).argmin(axis=1)
                bi = np.array([key[(int(x), int(y))] for x, y in zip(sub.getcol("ANTENNA1"), sub.getcol("ANTENNA2"))])
            finally:
                sub.close()
            ci = np.abs(info["freq"][:, None] - tf[None, :]).argmin(axis=1)
            cube[ti[:, None], bi[:, None], ci[None, :], :] = flag
    finally:
        tb.close()
    return cube
