"""Variable sources in the visibility simulator: flares and ESE-like dips with recorded truth,
the same events whichever call writes a group (a campaign simulated one sidereal day per call)."""
from __future__ import annotations

import h5py
import numpy as np
from conftest import GROUP_START, by_subband

SIDEREAL_DAY_S = 86164.0905


def test_light_curve_laws():
    from dsacont.simulator.variables import light_curve

    t = np.array([9.0, 10.0, 12.0, 8.0, 14.0])
    f = light_curve([0.1, 0.2, 0.3], ["flare", "dip", "steady"], [10.0, 11.0, np.nan], [2.0, 0.5, np.nan],
                    [2.0, 1.5, np.nan], t)
    assert f.shape == (3, 5)
    # flare: S0 before t0, S0 (1 + a) at t0, S0 (1 + a / e) one decay time later
    assert np.allclose(f[0, [0, 3]], 0.1) and np.isclose(f[0, 1], 0.3) and np.isclose(f[0, 2], 0.1 * (1 + 2 / np.e))
    # dip: symmetric about t0 (10 and 12 are 1 day either side of 11), deepest d at t0
    assert np.isclose(f[1, 1], f[1, 2]) and np.isclose(f[1, 1], 0.2 * (1 - 0.5 * np.exp(-0.5 / 1.5 ** 2)))
    assert np.isclose(light_curve(0.2, "dip", 11.0, 0.5, 1.5, 11.0)[0, 0], 0.1)
    assert np.allclose(f[2], 0.3)


def test_variable_sources_vary_by_their_truth_on_successive_days(sim_small, tmp_path):
    """Two calls a sidereal day apart with one Variability: each group's truth holds every source at
    its light curve at the group's mid-time, the same sources vary the same way in both calls,
    ``variables.csv`` lists them once, the calibrator is steady; with no source varying the files
    are bit-identical to the steady simulation's, and with variables they are not."""
    from astropy.time import Time, TimeDelta

    from dsacont import load_truth, simulate
    from dsacont.simulator import Variability, read_variables_truth
    from dsacont.simulator.variables import light_curve

    out0, steady_paths = sim_small  # seed 1, GROUP_START, no variables
    t0 = Time(GROUP_START, scale="utc")
    spec = Variability(start_mjd=t0.mjd - 2.0, end_mjd=t0.mjd + 4.0, fraction=0.5, min_flux_jy=0.01)
    none = Variability(start_mjd=t0.mjd - 2.0, end_mjd=t0.mjd + 4.0, fraction=0.0)

    same = by_subband(simulate(tmp_path / "none", GROUP_START, 5, preset="small", seed=1, variables=none))
    day0 = by_subband(simulate(tmp_path / "var", GROUP_START, 5, preset="small", seed=1, variables=spec))
    day1_start = t0 + TimeDelta(SIDEREAL_DAY_S, format="sec")
    day1 = by_subband(simulate(tmp_path / "var", day1_start, 5, preset="small", seed=1, variables=spec))

    for sb in (0, 11):
        with h5py.File(steady_paths[sb], "r") as fs, h5py.File(same[sb], "r") as fn, h5py.File(day0[sb], "r") as fv:
            vs, vn, vv = fs["Data/visdata"][:], fn["Data/visdata"][:], fv["Data/visdata"][:]
        assert np.array_equal(vs, vn)
        assert not np.array_equal(vs, vv)

    rows = {r["name"]: r for r in read_variables_truth(tmp_path / "var" / "truth")}
    assert {r["kind"] for r in rows.values()} == {"flare", "dip"}
    seen = []
    for paths in (day0, day1):
        tr = load_truth(tmp_path / "var", paths[0])
        src = tr["sources"]
        mjd = float(np.mean(tr["time_jd"])) - 2400000.5
        assert src["name"][0] == "0834+555" and src["flux_jy"][0] == src["base_flux_jy"][0]
        var = np.array([str(n) in rows for n in src["name"]])
        assert var.sum() >= 4
        for i in np.nonzero(var)[0]:
            r = rows[str(src["name"][i])]
            assert np.isclose(r["base_flux_jy"], src["base_flux_jy"][i])
            want = light_curve(r["base_flux_jy"], r["kind"], r["t0_mjd"], r["amplitude"], r["width_days"], mjd)[0, 0]
            assert np.isclose(src["flux_jy"][i], want, rtol=1e-12)
        # steady sources keep their flux; some variable ones are well away from it on this day
        assert np.array_equal(src["flux_jy"][~var], src["base_flux_jy"][~var])
        assert np.any(np.abs(src["flux_jy"][var] / src["base_flux_jy"][var] - 1) > 0.1)
        seen.append(set(map(str, src["name"][var])))
        # the steady simulation of the same sky has the same sources at their base flux
        if paths is day0:
            st = load_truth(out0, steady_paths[0])["sources"]
            assert list(map(str, st["name"])) == list(map(str, src["name"]))
            assert np.array_equal(st["flux_jy"], src["base_flux_jy"])
    # the same LST a sidereal day later: the same sky, so (mostly) the same variable sources
    assert len(seen[0] & seen[1]) >= 0.8 * max(len(seen[0]), len(seen[1]))
    assert seen[0] | seen[1] == set(rows)
