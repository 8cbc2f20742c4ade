"""Flagging a Measurement Set (dsacont.flagging.ms) through casatools, scored on simulator truth."""
from __future__ import annotations

import json

import numpy as np
import pytest

from dsacont import flagging as F
from dsacont.io.ms import read_ms_info


def score(flags, truth_mask, vis_zero=None):
    """(recall of RFI samples, false-flag fraction of clean samples)."""
    t = np.asarray(truth_mask)
    clean = ~t if vis_zero is None else (~t & ~vis_zero)
    return float(flags[t].mean()), float(flags[clean].mean())


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


def test_flag_ms_many_spws_from_convert(sim_small, tmp_path):
    """The conversion stage's MS (one SPW per subband): SPWs are flagged as one band."""
    from dsacont import convert_group, load_truth

    out, paths = sim_small
    truth = load_truth(out, paths[0])
    ms = convert_group(paths, tmp_path / "conv.ms", flag=False, tmp_dir=tmp_path / "tmp", progress=False)
    layout = read_ms_info(ms).ddid_layout()
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
    layout = read_ms_info(ms).ddid_layout()
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


def _flag_column(ms):
    """Read FLAG (ncorr, nchan, nrow) and DATA_DESC_ID (nrow,) of an MS, rows in table order (casatools)."""
    from dsacont.casa import ensure_casa

    tb = ensure_casa().table()
    tb.open(str(ms))
    try:
        return tb.getcol("FLAG"), tb.getcol("DATA_DESC_ID")
    finally:
        tb.close()


def test_dsacont_flag_ms_equals_the_conversions_flags_bit_for_bit(sim_small, tmp_path):
    """`dsacont flag MS` gives the conversion's own flags, bit for bit.

    `dsacont flag` on an MS converted with flag=False gives the FLAG column that the conversion
    with flag=True writes (fused pass and flag_dataset path alike), on a cut where the old twin
    disagreed: 1176 baselines in blocks of ``block_baselines`` = 16 are cut at a fixed
    size of 17 (the last block 3 baselines) by baseline_blocks, and were cut at linspace edges
    (16 or 17 each) by the old flag_arrays, which flagged 974 samples differently here.
    """
    from dsacont import convert_group, load_truth
    from dsacont.cli import main
    from dsacont.io.uvh5 import open_group

    out, paths = sim_small
    truth = load_truth(out, paths[0])
    strat = {"block_baselines": 16}
    strat_file = tmp_path / "blocks16.json"
    strat_file.write_text(json.dumps(strat))
    s = F.load_strategy(strat_file)

    # the two cuts differ on this baseline count, and so do their flags
    ds = open_group(paths)
    nb = ds.sizes["baseline"]
    assert nb == 1176
    blocks = F.baseline_blocks(nb, s.block_baselines)
    edges = np.linspace(0, nb, nb // s.block_baselines + 1).astype(int)
    assert blocks != list(zip(edges[:-1].tolist(), edges[1:].tolist()))
    amp = np.abs(ds.vis.values)
    pre = ds.flags.values
    auto = ds.antenna1.values == ds.antenna2.values
    static = s.static_channel_mask(ds.frequency.values)
    new = F.flag_arrays(amp, pre, auto, s, static)
    old = np.empty_like(new)
    for lo, hi in zip(edges[:-1], edges[1:]):
        old[:, lo:hi] = F.flag_block(amp[:, lo:hi], pre[:, lo:hi], auto[lo:hi], s, static)
    assert (old != new).any()
    del amp

    kw = dict(tmp_dir=tmp_path / "tmp", progress=False)
    fused = convert_group(paths, tmp_path / "fused.ms", flag=True, strategy=strat, qa_dir=tmp_path / "qa", **kw)
    lazy = convert_group(paths, tmp_path / "lazy.ms", flag=True, strategy=strat, fuse_flags=False,
                         qa_dir=tmp_path / "qa", **kw)
    plain = convert_group(paths, tmp_path / "plain.ms", flag=False, **kw)
    assert main(["flag", str(plain), "--strategy", str(strat_file)]) == 0

    f_fused, dd_fused = _flag_column(fused)
    f_plain, dd_plain = _flag_column(plain)
    f_lazy, _ = _flag_column(lazy)
    assert f_fused.shape == f_plain.shape and (dd_fused == dd_plain).all()
    assert f_fused.any() and not f_fused.all()
    assert np.array_equal(f_plain, f_fused)
    assert np.array_equal(f_lazy, f_fused)
    # and both are the in-memory flags of the one cut
    assert np.array_equal(_ms_cube_multi(fused, truth), new)
