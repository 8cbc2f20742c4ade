"""Cas A in a sidelobe: found, subtracted whole before imaging, restored after, in the field model.

The data are the simulator's (its own sky, beam and Gaussian, written as a correlator would): one
small-preset group at Cas A's transit, 3.4 deg north of the pointing at Dec +55.57 (just past the first null
of the beam at 1.4 GHz), with only the catalogue sky (VLA calibrators and Cas A), no noise, no
gains, no RFI, so DATA is what calibrated CORRECTED_DATA would be.
"""
from __future__ import annotations

import numpy as np
import pytest

CASA_GROUP_START = "2025-10-30T04:38:55"  # Cas A transits (LST 23h23m24s) at 04:41:30 UTC


@pytest.fixture(scope="module")
def casa_ms(tmp_path_factory):
    from dsacont import simulate
    from dsacont.config import get_paths
    from dsacont.convert import convert_group
    from dsacont.io.ms import copy_column

    base = tmp_path_factory.mktemp("casa")
    files = sorted(str(p) for p in simulate(base / "raw", CASA_GROUP_START, 5, preset="small", seed=5, rfi=False,
                                            noise=False, gains=False, sky_model="real", field=False))
    paths = get_paths(root=base / "root").ensure()
    ms = str(convert_group(files, paths.ms / "casa.ms", flag=False, paths=paths, progress=False))
    copy_column(ms, "DATA", "CORRECTED_DATA")  # no gains were simulated: the calibrated data are DATA
    return ms


def _short_baseline_rms(ms, column, max_m=60.0):
    from dsacont.casa import ensure_casa

    tb = ensure_casa().table()
    tb.open(ms)
    try:
        uvw = tb.getcol("UVW")
        a1, a2 = tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2")
        sel = (np.hypot(uvw[0], uvw[1]) < max_m) & (a1 != a2)
        return float(np.sqrt(np.mean(np.abs(tb.getcol(column)[..., sel]) ** 2))), int(sel.sum())
    finally:
        tb.close()


def test_cas_a_found_in_the_sidelobes(casa_ms):
    from dsacont import calibration as C

    side = C.sidelobe_sources(C.read_ms_info(casa_ms))
    assert [d["source"].name for d in side] == ["CasA"]
    assert side[0]["closest_deg"] == pytest.approx(3.39, abs=0.05)  # apparent places (J2000: 3.24)
    assert side[0]["peak_apparent_jy"] > 5.0  # first sidelobe at the top of the band
    # a tile 2 h later is past the 10 deg limit
    assert C.sidelobe_sources(C.read_ms_info(casa_ms), max_offset_deg=2.0) == []


def test_cas_a_subtracted_and_restored(casa_ms):
    from dsacont.casa import ensure_casa
    from dsacont.imaging import flatten as F

    before, n = _short_baseline_rms(casa_ms, "CORRECTED_DATA")
    assert n > 20 and before > 1.0  # Cas A dominates the short baselines
    only_cals = F.flatten_sources(casa_ms, "calibrators")
    assert "CasA" not in {s["name"] for s in only_cals["sources"]}
    F.unflatten(casa_ms)
    out = F.flatten_sources(casa_ms, "auto")
    rec = {s["name"]: s for s in out["sources"]}
    assert rec["CasA"]["mode"] == "subtract" and rec["CasA"]["mean_amp_jy"] == 0.0
    assert rec["CasA"]["scale"] == pytest.approx(1.0, abs=0.02)  # the simulator's Cas A, fitted
    assert rec["CasA"]["major_arcsec"] == 300.0
    after, _ = _short_baseline_rms(casa_ms, "CORRECTED_DATA")
    assert after < before / 20.0, (before, after)
    F.unflatten(casa_ms)
    tb = ensure_casa().table()
    tb.open(casa_ms)
    try:
        d, c = tb.getcol("DATA"), tb.getcol("CORRECTED_DATA")
    finally:
        tb.close()
    assert np.abs(c - d).max() < 1e-4 * np.abs(d).max()


def test_field_model_puts_cas_a_first(casa_ms):
    from dsacont import calibration as C

    sky, meta = C.field_sky(C.read_ms_info(casa_ms))
    assert sky[0].name == "CasA" and sky[0].major_arcsec == 300.0
    assert all(s.major_arcsec == 0.0 for s in sky[1:])  # the field's compact sources: points
    assert meta["sidelobe"][0]["name"] == "CasA"
    without, _ = C.field_sky(C.read_ms_info(casa_ms), sidelobe=False)
    assert "CasA" not in {s.name for s in without}
