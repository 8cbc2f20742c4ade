"""Antenna health from the data, against the realistic simulator's truth: every dead receptor, bad
antenna and dying antenna it put in the data is found and flagged, no healthy one is, the reference
antenna comes from the healthy ones, and no calibration is solved against a dead reference.

The truth's antenna numbers are the MS's antenna ids (the converter writes every pad, in number
order); the truth's receptors 0/1 are X/Y, the MS's XX/YY.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
from conftest import GROUP_START, by_subband

from dsacont import calibration as C
from dsacont.calibration.health import antenna_health, flag_unhealthy, require_healthy
from dsacont.errors import BadInputError

pytestmark = pytest.mark.casa


@pytest.fixture(scope="module")
def real_ms(tmp_path_factory):
    """One realistic small calibrator group (0834+555 transit, seed 3: 7 dead receptors, a wild
    and a wrapping antenna, one that dies mid-group), converted without RFI flags."""
    from dsacont import load_truth, simulate
    from dsacont.config import get_paths
    from dsacont.convert import convert_group

    out = tmp_path_factory.mktemp("sim_health")
    files = by_subband(simulate(out, GROUP_START, 5, preset="small", seed=3, realism="realistic"))
    ms = convert_group(files, out / "real.ms", flag=False, paths=get_paths(root=out / "root"), progress=False)
    return str(ms), load_truth(out, GROUP_START)


@pytest.fixture(scope="module")
def health(real_ms):
    return antenna_health(real_ms[0])


def _truth_sets(truth):
    ants = np.asarray(truth["antennas"])
    dead = {(int(ants[i]), p) for i, p in np.argwhere(truth["fault_dead_pol"])}
    bad = {int(ants[i]) for i in np.nonzero(truth["fault_phase"] != "")[0]}
    dies = {int(ants[i]) for i in np.nonzero(np.isfinite(truth["fault_dies_at_jd"]))[0]}
    return ants, dead, bad, dies


def test_every_fault_found_and_no_healthy_receptor(real_ms, health):
    _, truth = real_ms
    ants, dead, bad, dies = _truth_sets(truth)
    assert len(dead) == 7 and len(bad) == 2 and len(dies) == 1  # the group holds every kind
    found = {(a, p): str(health.state[a, p]) for a in ants for p in range(2) if health.state[a, p] != "ok"}
    expect = {**{(a, p): "bad" for a in bad for p in range(2)}, **{(a, p): "dies" for a in dies for p in range(2)},
              **{k: "dead" for k in dead}}  # a dead receptor of a bad antenna stays dead
    assert found == expect
    # the absent pads are absent, not judged
    assert set(np.nonzero(np.all(health.state == "absent", axis=1))[0]) == set(range(117)) - set(ants.tolist())
    # the kinds: zeros by the autocorrelation, noise by the missing sky, wild and wrapping phases
    for i, p in np.argwhere(truth["fault_dead_pol"]):
        why = health.reason[ants[i], p]
        assert ("zeros" in why) == (truth["fault_dead_kind"][i, p] == "zeros"), why
    for i in np.nonzero(truth["fault_phase"] != "")[0]:
        assert {"wild": "wild phase", "wrap": "phase wraps"}[truth["fault_phase"][i]] in health.reason[ants[i], 0]
    # the dying antenna: dead exactly in the integrations the truth says (zeros-kind receptors alike)
    zero_kind = truth["fault_dead_kind"] == "zeros"
    for i in range(len(ants)):
        for p in range(2):
            if zero_kind[i, p] or np.isfinite(truth["fault_dies_at_jd"][i]):
                assert np.array_equal(health.dead_t[ants[i], :, p], truth["receptor_dead"][:, i, p])
            elif truth["fault_dead_kind"][i, p] == "":
                assert not health.dead_t[ants[i], :, p].any()
    # margins: healthy receptors far from every threshold
    ok = health.state == "ok"
    assert np.nanmin(health.snr_ratio[ok]) > 0.7 and np.nanmin(health.coherence_ratio[ok]) > 0.9
    assert np.nanmax(np.abs(health.phase_rate_deg_min[ok])) < 8
    recs = health.records()
    assert len(recs) == 2 * len(ants) and {r["state"] for r in recs} == {"ok", "dead", "dies", "bad"}


def test_flags_only_the_unhealthy_receptors(real_ms, health, tmp_path):
    ms = str(tmp_path / "f.ms")
    shutil.copytree(real_ms[0], ms)
    _, truth = real_ms
    ants, dead, bad, dies = _truth_sets(truth)
    before = _flags(ms)
    out = flag_unhealthy(ms, health)
    assert out["receptors"] == len(dead) + 2 * len(bad) + 2 * len(dies)
    a1, a2, ti, f0 = before
    f1 = _flags(ms)[3]
    new = f1 & ~f0  # (ncorr, nchan, nrow)
    assert not (f0 & ~f1).any()  # nothing unflagged
    kill = np.zeros((117, len(health.times_s), 2), bool)
    for a, p in dead:
        kill[a, :, p] = True
    for a in bad:
        kill[a] = True
    for a in dies:
        kill[a] = truth["receptor_dead"][:, list(ants).index(a), :]
    for p in range(2):
        want = kill[a1, ti, p] | kill[a2, ti, p]
        assert np.all(f1[p][:, want])  # every sample of an unhealthy receptor flagged
        assert not new[p][:, ~want].any()  # nothing else
    # a dead X leaves the antenna's YY alone
    a, p = sorted(dead)[0]
    rows = ((a1 == a) | (a2 == a)) & ~kill[a1, ti, 1 - p] & ~kill[a2, ti, 1 - p]
    assert rows.any() and not new[1 - p][:, rows].any()


def _flags(ms):
    from dsacont.io.ms import read_ms_info, table

    info = read_ms_info(ms)
    with table(ms) as tb:
        return (tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2"), np.searchsorted(info.times_s, tb.getcol("TIME")),
                tb.getcol("FLAG"))


def test_refant_only_from_healthy_antennas(real_ms, health):
    info = C.read_ms_info(real_ms[0])
    present = [info.antenna_names[a] for a in np.nonzero(health.state[:, 0] != "absent")[0]]
    flags = {a: 0.0 for a in present}
    healthy = set(health.healthy_antennas())
    assert len(healthy) == len(present) - 10  # 7 dead receptors on 7 antennas, 2 bad, 1 dying
    plain = C.choose_refant(info, flags, n=len(present))
    ranked = C.choose_refant(info, flags, n=len(present), health=health)
    assert set(ranked) == healthy and set(plain) - healthy  # without health an unhealthy one is ranked
    with pytest.raises(BadInputError, match="not healthy"):
        require_healthy([sorted(set(present) - healthy)[0]], health)


def test_no_table_solved_against_a_dead_reference_antenna(real_ms, health, tmp_path):
    """An unhealthy refant given by hand is refused before any solve: no table, nothing registered."""
    from dsacont.config import get_paths

    ms = str(tmp_path / "r.ms")
    shutil.copytree(real_ms[0], ms)
    paths = get_paths(root=tmp_path / "root")
    for a, _ in sorted({(int(a), p) for a, p in np.argwhere(health.state == "dead")})[:2]:
        name = health.antenna_names[a]
        with pytest.raises(BadInputError, match=f"reference antenna not healthy: {name} "):
            C.solve_calibration(ms, "0834+555", paths=paths, refant=name, plots=False)
    assert not list((tmp_path / "root").rglob("*.B")) and not list((tmp_path / "root").rglob("*.G"))
    from dsacont.calibration.registry import Registry

    assert Registry(paths.registry_db).list() == []  # nothing registered, not even as 'writing'


def test_ideal_group_all_healthy(sim_small, tmp_path):
    """The ideal simulator's group (gains near 1, RFI unflagged): no receptor judged unhealthy."""
    from dsacont.config import get_paths
    from dsacont.convert import convert_group

    ms = convert_group(sim_small[1], tmp_path / "i.ms", flag=False, paths=get_paths(root=tmp_path / "root"),
                       progress=False)
    h = antenna_health(ms)
    present = h.state != "absent"
    assert present.sum() == 96 and np.all(h.state[present] == "ok"), h.unhealthy()
    assert h.array_snr > 5 and not h.notes


def test_health_recorded_per_group_in_products_db(real_ms, tmp_path):
    """What a worker returns (assess_and_flag) is recorded by the service (state.record_products) in
    products.sqlite3's antenna_health table, one row per receptor; the grid PNG is beside the MS."""
    import json

    from dsacont.config import get_paths
    from dsacont.service.products import Products
    from dsacont.service.state import record_products

    ms = str(tmp_path / "2025-10-29T13:54:51.ms")
    shutil.copytree(real_ms[0], ms)
    _, truth = real_ms
    ants, dead, bad, dies = _truth_sets(truth)
    made = C.assess_and_flag(ms, group_timestamp="2025-10-29T13:54:51")
    made.pop("health")
    png = made["plot"]
    assert png == ms.removesuffix(".ms") + ".health.png" and open(png, "rb").read(8) == b"\x89PNG\r\n\x1a\n"
    assert made["summary"]["flagged"]["receptors"] == len(dead) + 2 * len(bad) + 2 * len(dies) == 13
    made = json.loads(json.dumps(made))  # what crosses from a worker to the service
    paths = get_paths(root=tmp_path / "root")
    ids = record_products(paths, {"ms": {"path": ms, "group_timestamp": "2025-10-29T13:54:51"},
                                  "antenna_health": made})
    assert ids["antenna_health"] == 2 * len(ants)
    db = Products(paths.products_db)
    rows = db.antenna_health(ms)
    assert len(rows) == 2 * len(ants) and all(r["ms_id"] == ids["ms"] for r in rows)
    assert {(int(r["antenna"]) - 1, "XY".index(r["pol"])) for r in db.antenna_health(state="dead")} == dead
    assert {int(r["antenna"]) - 1 for r in db.antenna_health(state="bad")} == bad
    died = db.antenna_health(state="dies")
    assert {int(r["antenna"]) - 1 for r in died} == dies
    assert abs(died[0]["dead_from_mjd"] + 2400000.5 - truth["time_jd"][12]) < 1e-6  # integration 12
    # recorded again (a reprocessed group): replaced, not doubled
    record_products(paths, {"antenna_health": made})
    assert len(db.antenna_health(ms)) == 2 * len(ants)
    one = db.antenna_health(antenna=rows[0]["antenna"])
    assert [(r["pol"], r["state"]) for r in one] == [(r["pol"], r["state"]) for r in rows[:2]] == [("X", "ok"), ("Y", "ok")]


def test_cli_health_prints_flags_and_draws(real_ms, tmp_path, capsys):
    import json

    from dsacont.cli import main

    ms = str(tmp_path / "c.ms")
    shutil.copytree(real_ms[0], ms)
    assert main(["health", ms, "--flag"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert (out["dead"], out["dies"], out["bad"], out["ok"]) == (7, 2, 4, 83)
    assert out["bad_antennas"] == sorted({str(a + 1) for a in _truth_sets(real_ms[1])[2]})
    assert out["flagged"]["receptors"] == 13 and out["flagged"]["flagged_fraction_added"] > 0.05
    assert out["plot"] == str(tmp_path / "c.health.png") and (tmp_path / "c.health.png").stat().st_size > 5000
    # flagged now: the dead and bad receptors have no data left to judge; the dying antenna's
    # unflagged half is healthy
    assert main(["health", ms, "--no-plot"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert (again["flagged"], again["ok"], again["dead"], again["dies"]) == (11, 85, 0, 0) and "plot" not in again
    assert main(["health", str(tmp_path / "none.ms"), "--no-plot"]) == 2


@pytest.mark.parametrize("minutes, seed", [(-10, 5), (-60, 3)])
def test_groups_off_the_transit(tmp_path, minutes, seed):
    """10 min before the transit (0834+555 1.4 deg off the phase centre: its fringes decorrelate and
    rotate on long baselines) every fault is still found and nothing else; an hour before (no
    bright source: the array's coherent SNR ~1) only the zeros can be told, and nothing healthy is
    flagged: the faults the data cannot show are left to the calibrator group's tables."""
    import astropy.units as u
    from astropy.time import Time

    from dsacont import load_truth, simulate
    from dsacont.config import get_paths
    from dsacont.convert import convert_group

    start = (Time(GROUP_START) + minutes * u.min).isot[:19]
    files = by_subband(simulate(tmp_path, start, 5, preset="small", seed=seed, realism="realistic"))
    ms = convert_group(files, tmp_path / "o.ms", flag=False, paths=get_paths(root=tmp_path / "root"), progress=False)
    truth = load_truth(tmp_path, start)
    h = antenna_health(ms)
    ants, dead, bad, dies = _truth_sets(truth)
    found = {(int(a), p) for a in ants for p in range(2) if h.state[a, p] != "ok"}
    zeros = {(int(ants[i]), p) for i, p in np.argwhere(truth["fault_dead_kind"] == "zeros")}
    everything = dead | {(a, p) for a in bad | dies for p in range(2)}
    if minutes == -10:
        assert h.array_snr > 5 and found == everything
    else:
        assert h.array_snr < 2 and h.notes and found == zeros | {(a, p) for a in dies for p in range(2)}
