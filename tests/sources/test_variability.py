"""Variability metrics, the ESE-like dip detector and ``dsacont variables``, against injected truth."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dsacont.simulator.images import variable_epochs, variable_light_curves
from dsacont.sources import find_dip, light_curves, metrics, rank_variables


def test_metrics_by_hand():
    f = np.array([1.0, 2.0, 3.0])
    e = np.array([1.0, 1.0, 1.0])
    m = metrics(f, e)
    assert m["mean_flux_jy"] == pytest.approx(2.0)
    assert m["eta"] == pytest.approx(1.0)          # sum (f - 2)^2 / (N - 1) = 2 / 2
    assert m["V"] == pytest.approx(0.5)            # std (ddof 1) = 1, mean 2
    assert abs(m["max_dev_sigma"]) == pytest.approx(1.0)
    # weights: a precise point pulls the mean
    m = metrics([1.0, 3.0], [0.1, 1.0])
    assert m["mean_flux_jy"] == pytest.approx((100 * 1 + 3) / 101)
    assert m["max_dev_sigma"] == pytest.approx((3 - (103 / 101)) / 1.0)


def _synthetic(kind, rng, n=20, snr=50.0):
    t = 60000.0 + np.arange(n, dtype=float)
    lc = variable_light_curves(t, int(kind == "steady"), int(kind == "flare"), int(kind == "dip"),
                               base_flux_jy=(0.1, 0.1), seed=int(rng.integers(1 << 30)))
    err = np.full(n, 0.1 / snr)
    return t, lc["flux_jy"][0] + rng.normal(0, err), err, lc


@pytest.mark.parametrize("kind", ["steady", "flare", "dip"])
def test_dip_detector_tells_dips_from_flares_and_noise(kind):
    rng = np.random.default_rng({"steady": 1, "flare": 2, "dip": 3}[kind])
    found = 0
    for _ in range(20):
        t, f, e, lc = _synthetic(kind, rng)
        d = find_dip(t, f, e)
        found += d["dip"]
        if kind == "dip" and d["dip"]:
            assert d["t0_mjd"] == pytest.approx(lc["t0_mjd"][0], abs=1.0)
            assert d["depth"] == pytest.approx(lc["amplitude"][0], abs=0.1)
            assert d["width_days"] == pytest.approx(lc["width_days"][0], rel=0.4)
    assert found == {"steady": 0, "flare": 0, "dip": 20}[kind]


def test_dip_must_be_symmetric():
    t = 60000.0 + np.arange(30, dtype=float)
    # a slow fall and a sudden recovery: a dip in depth, not in shape
    f = 0.1 * np.where(t < 60015, 1 - 0.5 * np.exp(-0.5 * ((t - 60015) / 5.0) ** 2), 1.0)
    f[t == 60015] = 0.05
    e = np.full_like(t, 1e-3)
    d = find_dip(t, f, e)
    assert not d["dip"] and max(d["asymmetry"], 1 / d["asymmetry"]) > 2.5


@pytest.fixture(scope="module")
def epochs(tmp_path_factory):
    """12 daily 512^2 images, 40 steady, 3 flaring and 3 dipping sources (30-300 mJy, noise 1 mJy/beam)."""
    d = tmp_path_factory.mktemp("var")
    return d, variable_epochs(d, 12, n_steady=40, n_flare=3, n_dip=3, npix=512, base_flux_jy=(0.03, 0.3), seed=7)


def test_variability_ranks_the_injected_sources(epochs):
    d, v = epochs
    lc = light_curves(list(zip(v["ra_deg"], v["dec_deg"])), v["images"])
    m = rank_variables(lc)
    names = [f"{r:.5f},{dd:+.5f}" for r, dd in zip(v["ra_deg"], v["dec_deg"])]
    truth = pd.Series(v["kind"], index=names)
    m["true"] = truth.loc[m["name"]].to_numpy()
    assert len(m) == len(names)
    assert m["candidate"].sum() == 6 and set(m[m["candidate"]]["true"]) == {"flare", "dip"}
    assert list(m["candidate"][:6]) == [True] * 6, "candidates first"
    assert set(m[m["dip"]]["true"]) == {"dip"} and m["dip"].sum() == 3
    assert set(m[m["kind"] == "brightening"]["true"]) == {"flare"}
    steady = m[m["true"] == "steady"]
    assert steady["eta"].median() == pytest.approx(1.0, abs=0.5)  # honest errors


def test_cli_variables(epochs, tmp_path):
    d, v = epochs
    ref = d / "ref.csv"
    ref.write_text("name,ra_deg,dec_deg,flux_jy\n" + "\n".join(
        f"{n},{r},{dd},{f}" for n, r, dd, f in zip(v["name"], v["ra_deg"], v["dec_deg"], v["base_flux_jy"])) + "\n")
    out = subprocess.run([sys.executable, "-m", "dsacont.cli", "variables", "--reference", str(ref), "--images",
                          *v["images"], "--csv", str(tmp_path / "m.csv"), "--plots", str(tmp_path / "plots")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "46 sources" in out.stdout and "6 candidates (3 ESE-like dips)" in out.stdout
    m = pd.read_csv(tmp_path / "m.csv")
    kinds = dict(zip(v["name"], v["kind"]))
    assert {kinds[n] for n in m[m["dip"]]["name"]} == {"dip"}
    assert len(list((tmp_path / "plots").glob("*.png"))) == 6


def _drift_scan_table(rng, days=10, bias=(1.0, 0.6, 1.25), err=(0.002, 0.004, 0.003)):
    """Light-curve rows of a drift scan: each source read by three tiles a pass, each tile position
    with its own systematic flux error (``bias``) repeated every day, and its own noise (``err``, Jy).
    A steady 0.1 Jy source and a dipping one (depth 0.5, sigma 2 days, at day 5). Passes straddle
    the UTC midnight, as transits do."""
    from dsacont.simulator.variables import light_curve

    rows = []
    for name, kind in (("steady", "steady"), ("dip", "dip")):
        for d in range(days):
            for k in range(3):
                t = 60000.996 + d * 0.99727 + k * 0.0036  # three 5-minute tiles; the first passes cross 0h UTC
                s = light_curve(0.1, kind, 60005.0, 0.5, 2.0, t)[0, 0]
                rows.append({"name": name, "ra_deg": 10.0, "dec_deg": 55.0, "mjd": t, "kind": "image",
                             "flux_jy": s * bias[k] + rng.normal(0, err[k]), "flux_err_jy": err[k],
                             "detected": True, "covered": True, "tile": k})
    return pd.DataFrame(rows)


def test_one_measurement_per_pass_compares_each_tile_position_with_itself():
    from dsacont.sources import one_per_pass

    lc = _drift_scan_table(np.random.default_rng(5))
    best = one_per_pass(lc)
    assert len(best) == 2 * 10 and set(best["tile"]) == {0}  # the smallest error, every pass
    assert list(best.groupby("name")["pass"].max()) == [9, 9]  # a pass across midnight is one pass
    every = rank_variables(lc, per_pass="all").set_index("name")
    once = rank_variables(lc).set_index("name")
    # every tile: the steady source's tiles disagree by 40 % at 50-sigma errors, so it reads variable
    assert every.loc["steady", "candidate"] and every.loc["steady", "n"] == 30
    # one per pass: steady again, and the dip is still found as a dip
    assert not once.loc["steady", "candidate"] and once.loc["steady", "n"] == 10
    assert once.loc["dip", "candidate"] and once.loc["dip", "kind"] == "dip"
    assert once.loc["dip", "dip_t0_mjd"] == pytest.approx(60005.0, abs=1.0)
    with pytest.raises(ValueError, match="per_pass"):
        rank_variables(lc, per_pass="first")
