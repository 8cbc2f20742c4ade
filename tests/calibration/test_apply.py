"""dsacont's own apply (engine='dsacont') against CASA applycal on the small simulated group.

Real CASA solves (bandpass, and gains every 60 s so the linear interpolation in time is used) on
two SPWs of the converted MS, some solutions flagged by hand; both engines apply them to copies
of the MS; CORRECTED_DATA must agree to float precision and FLAG exactly (the other 14 SPWs have
no solutions: both flag them).
"""
from __future__ import annotations

import contextlib
import io
import json
import shutil

import numpy as np
import pytest

from dsacont.calibration.apply import apply_calibration
from dsacont.calibration.apply_kernels import interp_gains_linear
from dsacont.calibration.cli import cli_applycal
from dsacont.io.ms import table


@pytest.fixture(scope="module")
def small_cal(sim_small, tmp_path_factory):
    """(MS path, [B, G] tables) for the small group; solutions on SPWs 0 and 1 only."""
    from dsacont.casa import casatasks
    from dsacont.config import get_paths
    from dsacont.convert import convert_group

    _, files = sim_small
    base = tmp_path_factory.mktemp("apply")
    ms = str(convert_group(files, base / "small.ms", flag=False, paths=get_paths(root=base / "root"),
                           progress=False))
    ct = casatasks()
    b, g = str(base / "cal.B"), str(base / "cal.G")
    ct.bandpass(vis=ms, caltable=b, spw="0,1", solint="inf", combine="scan", refant="0", bandtype="B",
                solnorm=True, minsnr=3)
    ct.gaincal(vis=ms, caltable=g, spw="0,1", solint="60s", refant="0", calmode="ap", gaintype="G", minsnr=3,
               gaintable=[b], interp=["nearest"])
    # flagged solutions (antennas with data): the middle X gain of one antenna in SPW 0, the
    # last Y gain of another in SPW 1, the first X gain of a third in SPW 1 (applycal flags the
    # data on either side of a flagged solution, and beyond a flagged end solution)
    with table(g, readonly=False) as tb:
        fl, ant, tm, spw = tb.getcol("FLAG"), tb.getcol("ANTENNA1"), tb.getcol("TIME"), tb.getcol("SPECTRAL_WINDOW_ID")
        live = np.unique(ant[~fl[0, 0]])
        a, b_, c = (int(x) for x in live[[3, 7, 11]])
        t0, t1 = np.unique(tm[spw == 0]), np.unique(tm[spw == 1])
        assert t0.size >= 4 and t1.size >= 4
        fl[0, 0, (ant == a) & (spw == 0) & (tm == t0[t0.size // 2])] = True
        fl[1, 0, (ant == b_) & (spw == 1) & (tm == t1[-1])] = True
        fl[0, 0, (ant == c) & (spw == 1) & (tm == t1[0])] = True
        tb.putcol("FLAG", fl)
    with table(b, readonly=False) as tb:
        fl, ant = tb.getcol("FLAG"), tb.getcol("ANTENNA1")
        fl[:, 2:4, ant == live[5]] = True
        tb.putcol("FLAG", fl)
    return ms, [b, g]


def _columns(ms):
    with table(ms) as tb:
        return tb.getcol("CORRECTED_DATA"), tb.getcol("FLAG"), tb.getcol("DATA_DESC_ID")


def _flag_differences(ms, fc, fd):
    """Where two FLAG columns differ: (ddid, antenna pair, time from start, correlation) of a few."""
    with table(ms) as tb:
        dd, a1, a2, tt = (tb.getcol(c) for c in ("DATA_DESC_ID", "ANTENNA1", "ANTENNA2", "TIME"))
    c, _, r = np.nonzero(fc != fd)
    rows = sorted(set(zip(dd[r].tolist(), a1[r].tolist(), a2[r].tolist(), np.round(tt[r] - tt.min(), 1).tolist(),
                          c.tolist())))
    return f"{len(rows)} (ddid, ant1, ant2, t, corr) differ, applycal flags {int((fc & ~fd).sum())} more, " \
           f"dsacont {int((fd & ~fc).sum())} more: {rows[:12]}"


def test_dsacont_apply_equals_applycal(small_cal, tmp_path):
    ms0, tables = small_cal
    out = {}
    for engine in ("casa", "dsacont"):
        ms = str(tmp_path / f"{engine}.ms")
        shutil.copytree(ms0, ms)
        if engine == "casa":
            res = apply_calibration(ms, tables=tables, engine=engine)
            assert res["spw_flagged_unsolved"] == list(range(2, 16))
        else:  # through `dsacont applycal --engine dsacont`
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf):
                assert cli_applycal([ms, "--tables", *tables, "--engine", engine]) == 0
            res = json.loads(buf.getvalue())
        assert res["engine"] == engine
        out[engine] = _columns(ms)
    (c, fc, dd), (d, fd, _) = out["casa"], out["dsacont"]
    assert np.array_equal(fc, fd), _flag_differences(ms0, fc, fd)
    assert fc[:, :, dd >= 2].all()  # unsolved windows flagged by both
    ok = ~fc
    assert 0.5 < ok[:, :, dd < 2].mean() < 1.0  # the hand-flagged solutions flagged some data, not all
    rel = np.abs(c[ok] - d[ok]) / np.abs(c[ok])
    print(f"dsacont vs applycal: max relative difference {rel.max():.2e}, median {np.median(rel):.2e}")
    assert rel.max() < 1e-5
    # and the data were calibrated (not copied): DATA differs from CORRECTED_DATA
    with table(ms0) as tb:
        raw = tb.getcol("DATA")
    assert np.median(np.abs(raw[ok] / c[ok])) > 2 or np.median(np.abs(raw[ok] / c[ok])) < 0.5


def test_unknown_engine_is_refused(small_cal, tmp_path):
    ms0, tables = small_cal
    with pytest.raises(ValueError, match="engine"):
        apply_calibration(ms0, tables=tables, engine="fast")


def test_linear_gain_interpolation_amplitude_and_phase():
    st = np.array([0.0, 10.0, 20.0])
    g = np.zeros((3, 1, 1), complex)
    g[:, 0, 0] = [1.0 * np.exp(3.0j), 3.0 * np.exp(-3.0j), 2.0]
    fl = np.zeros(g.shape, bool)
    out, of = interp_gains_linear(st, g, fl, np.array([-5.0, 5.0, 15.0, 25.0]))
    assert not of.any()
    assert out[0, 0, 0] == pytest.approx(g[0, 0, 0]) and out[3, 0, 0] == pytest.approx(2.0)
    # halfway: amplitude 2, phase across the +-pi wrap the short way (pi, not 0)
    assert abs(out[1, 0, 0]) == pytest.approx(2.0)
    assert np.angle(out[1, 0, 0]) == pytest.approx(np.pi, abs=1e-9) or np.angle(out[1, 0, 0]) == pytest.approx(-np.pi)
    # a flagged solution is not bridged (as applycal): the times on either side of it are flagged,
    # the times held from an unflagged end solution are not
    fl[1] = True
    out, of = interp_gains_linear(st, g, fl, np.array([-5.0, 5.0, 15.0, 20.0, 25.0]))
    assert of[:, 0, 0].tolist() == [False, True, True, False, False]
    assert out[4, 0, 0] == pytest.approx(2.0)
    fl[:] = True
    out, of = interp_gains_linear(st, g, fl, np.array([5.0]))
    assert of.all()
