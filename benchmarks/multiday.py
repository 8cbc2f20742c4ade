r"""Benchmark: variable sources found by the whole pipeline in a multi-day simulated campaign; prints JSON.

    python benchmarks/multiday.py [--root DIR] [--days 10] [--groups-per-day 3] [--fraction 0.2]
                                  [--seed 0] [--max-inflight 2] [--measure-only]

1. Simulate the campaign: the same LST on ``--days`` successive sidereal days, ``--groups-per-day``
   groups a day from the 0834+555 transit group on (small preset, the ideal instrument, the
   synthetic sky), with ``--fraction`` of the field sources of at least 20 mJy flaring or dipping
   (``dsacont.simulator.Variability``: flares of 0.5-3x decaying over 1-3 days, ESE-like dips of
   30-60 % with sigma 1.5-3 days).
2. Run the streaming service on it (``run_service``, the path of ``dsacont stream``), with the
   forced photometry of every tile at the positions of a reference catalogue: the simulator's
   field sources (the catalogue file a user would point ``photometry_catalogue`` to). Calibration:
   each day's transit group, as the service decides.
3. Light curves from the products database (``dsacont.sources.light_curves(products=...)``: the
   stored photometry of every tile) and ``rank_variables`` with its defaults (one measurement per
   pass through the beam: the tile nearest the source's transit), and again on every tile's
   measurement (``per_pass='all'``).
4. Against the truth (``truth/variables.csv``): each injected flare and dip recovered as a
   candidate, overall and for those whose largest true deviation from the base flux reaches 10 x
   the measurement's own error at one of its epochs (the issue's goal: all of them); dips called
   dips; false candidates among the steady sources (goal < 1 %); the photometry's flux against
   the truth at each epoch (steady and variable sources, S/N >= 10).

Writes ``<root>/multiday.json`` (also printed) and ``<root>/lightcurves.png`` (the most
significant recovered dip and flare, measured points against their true light curves).
No peer: the operators' variability code is not a package this machine can install.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from astropy.time import TimeDelta

sys.path.insert(0, str(Path(__file__).resolve().parent))
from around_the_clock import stream_groups  # noqa: E402  (the same service run as that benchmark)

from dsacont.calibration.skymodel import SkySource  # noqa: E402
from dsacont.calibrators import SIDEREAL_DAY_S  # noqa: E402
from dsacont.config import get_paths  # noqa: E402
from dsacont.demo import demo_window  # noqa: E402
from dsacont.io.groups import find_groups  # noqa: E402
from dsacont.simulator import GROUP_S, Variability, load_truth, read_variables_truth, simulate  # noqa: E402
from dsacont.simulator.variables import light_curve  # noqa: E402
from dsacont.sources import light_curves, one_per_pass, rank_variables  # noqa: E402


def simulate_campaign(archive: Path, days: int, per_day: int, fraction: float, seed: int) -> list:
    """The campaign's groups (``find_groups``), simulated once (a marker file says with what)."""
    start, _ = demo_window(1)  # the transit group's start
    want = {"days": days, "per_day": per_day, "fraction": fraction, "seed": seed, "start": start.isot}
    marker = archive / "campaign.json"
    if not (marker.exists() and json.loads(marker.read_text()) == want):
        shutil.rmtree(archive, ignore_errors=True)
        archive.mkdir(parents=True)
        span_days = (days - 1) * SIDEREAL_DAY_S / 86400.0 + per_day * GROUP_S / 86400.0
        spec = Variability(start_mjd=start.mjd, end_mjd=start.mjd + span_days, fraction=fraction)
        for d in range(days):
            t0 = start + TimeDelta(d * SIDEREAL_DAY_S, format="sec")
            simulate(archive, t0, (per_day - 0.5) * GROUP_S / 60.0, preset="small", seed=seed, variables=spec)
        marker.write_text(json.dumps(want))
    return sorted((g for g in find_groups(archive) if g.complete), key=lambda g: g.timestamp)


def truth_catalogue(archive: Path, groups: list, path: Path) -> dict:
    """Every field source of the campaign's truth (name -> (ra, dec, base flux, spectral index)),
    written as a catalogue in the shipped NVSS file's columns (name, ra_deg, dec_deg, flux_jy)."""
    cat: dict = {}
    for g in groups:
        s = load_truth(archive, next(p for p in g.paths if p))["sources"]
        base = s.get("base_flux_jy", s["flux_jy"])
        for i, name in enumerate(map(str, s["name"])):
            if name != "0834+555":
                cat[name] = (float(s["ra_deg"][i]), float(s["dec_deg"][i]), float(base[i]),
                             float(s["spectral_index"][i]))
    with open(path, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["name", "ra_deg", "dec_deg", "flux_jy"])
        for name in sorted(cat):
            ra, dec, s0, _ = cat[name]
            wr.writerow([name, f"{ra:.6f}", f"{dec:.6f}", f"{s0:.6f}"])
    return cat


def score(lc, ranked, cat: dict, variables: dict) -> dict:
    """The recovery figures of the module docstring."""
    rank = {str(r.name): r for r in ranked.itertuples()}
    measured = set(rank)
    out: dict = {"sources_in_catalogue": len(cat), "sources_with_light_curves": len(measured)}
    ratios, dev_sigma = [], {}
    for name, g in lc.groupby("name", sort=False):
        if name not in cat:
            continue
        ra, dec, s0, alpha = cat[name]
        v = variables.get(name)
        true = (light_curve(s0, v["kind"], v["t0_mjd"], v["amplitude"], v["width_days"], g["mjd"].to_numpy())[0]
                if v else np.full(len(g), s0))
        err = g["flux_err_jy"].to_numpy(float)
        dev_sigma[name] = float(np.max(np.abs(true - s0) / err)) if v else 0.0
        good = g["flux_jy"].to_numpy(float) / err >= 10
        ratios += list(g["flux_jy"].to_numpy(float)[good] / true[good])
    out["flux_ratio_to_truth_snr_ge10"] = {"n": len(ratios), "median": round(float(np.median(ratios)), 4),
                                           "p16_p84": [round(float(np.percentile(ratios, q)), 4) for q in (16, 84)]}
    for kind, want in (("flare", "brightening"), ("dip", "dip")):
        names = [n for n, v in variables.items() if v["kind"] == kind and n in measured]
        strong = [n for n in names if dev_sigma.get(n, 0) >= 10]
        rec = [n for n in names if rank[n].candidate]
        out[kind] = {"injected_with_light_curves": len(names), "recovered": len(rec),
                     "injected_ge10sigma": len(strong), "recovered_ge10sigma": sum(rank[n].candidate for n in strong),
                     "classified_as": {k: sum(rank[n].kind == k for n in names) for k in
                                       sorted({rank[n].kind for n in names})},
                     "called_" + want: sum(rank[n].kind == want for n in names),
                     "missed": [{"name": n, "dev_sigma": round(dev_sigma.get(n, 0), 1),
                                 "eta": round(float(rank[n].eta), 2), "V": round(float(rank[n].V), 3),
                                 "points": int(rank[n].n)} for n in names if not rank[n].candidate]}
    steady = [n for n in measured if n not in variables and n in cat]
    false = [n for n in steady if rank[n].candidate]
    out["steady"] = {"with_light_curves": len(steady), "false_candidates": len(false),
                     "false_fraction": round(len(false) / max(len(steady), 1), 4),
                     "false_detail": [{"name": n, "kind": rank[n].kind, "eta": round(float(rank[n].eta), 2),
                                       "V": round(float(rank[n].V), 3), "max_dev_sigma":
                                       round(float(rank[n].max_dev_sigma), 1), "base_mjy": round(1e3 * cat[n][2], 1)}
                                      for n in false][:20],
                     "eta_median": round(float(np.median([rank[n].eta for n in steady])), 3) if steady else None}
    out["points_per_source_median"] = int(np.median([rank[n].n for n in measured])) if measured else 0
    return out, dev_sigma


def plot_best(lc, ranked, cat, variables, dev_sigma, path: Path) -> list:
    """The most significant recovered dip and flare: measured points and the true light curve."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rank = {str(r.name): r for r in ranked.itertuples()}
    picks = []
    for kind in ("dip", "flare"):
        names = [n for n, v in variables.items() if v["kind"] == kind and n in rank and rank[n].candidate]
        if names:
            picks.append(max(names, key=lambda n: dev_sigma.get(n, 0)))
    if not picks:
        return []
    fig = Figure(figsize=(10, 3.6 * len(picks)), dpi=100)
    FigureCanvasAgg(fig)
    for k, name in enumerate(picks):
        ax = fig.add_subplot(len(picks), 1, k + 1)
        g = lc[lc["name"] == name].sort_values("mjd")
        v, (_, _, s0, _) = variables[name], cat[name]
        t = np.linspace(g["mjd"].min() - 0.3, g["mjd"].max() + 0.3, 600)
        day0 = np.floor(g["mjd"].min())
        ax.plot(t - day0, 1e3 * light_curve(s0, v["kind"], v["t0_mjd"], v["amplitude"], v["width_days"], t)[0],
                color="k", lw=1, label="simulator's truth (1.4 GHz)")
        ax.errorbar(g["mjd"] - day0, 1e3 * g["flux_jy"], yerr=1e3 * g["flux_err_jy"], fmt="o", ms=3, capsize=2,
                    color="0.75", label="forced photometry, every tile")
        b = one_per_pass(g)
        ax.errorbar(b["mjd"] - day0, 1e3 * b["flux_jy"], yerr=1e3 * b["flux_err_jy"], fmt="o", ms=4, capsize=2,
                    color="C0", label="one per pass (the tile nearest transit): what is ranked")
        r = rank[name]
        ax.set_title(f"{name}: injected {v['kind']} (true max deviation {dev_sigma[name]:.0f} sigma); "
                     f"found as '{r.kind}', eta {r.eta:.1f}, V {r.V:.2f}", fontsize=9)
        ax.set_xlabel(f"MJD - {day0:.0f}")
        ax.set_ylabel("mJy")
        ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    return picks


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/dsacont-multiday", help="working directory")
    ap.add_argument("--days", type=int, default=10, help="sidereal days (default 10)")
    ap.add_argument("--groups-per-day", type=int, default=3, help="groups a day from the transit on (default 3)")
    ap.add_argument("--fraction", type=float, default=0.2,
                    help="fraction of the field sources >= 20 mJy that vary (default 0.2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-inflight", type=int, default=2)
    ap.add_argument("--fov", type=float, default=3.5, help="tile field of view, deg (default 3.5)")
    ap.add_argument("--measure-only", action="store_true", help="score an earlier run under --root again")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    root = Path(args.root)
    root.mkdir(parents=True, exist_ok=True)
    archive = root / "archive"
    t = time.perf_counter()
    groups = simulate_campaign(archive, args.days, args.groups_per_day, args.fraction, args.seed)
    t_sim = time.perf_counter() - t
    cat = truth_catalogue(archive, groups, root / "field_sources.csv")
    variables = {r["name"]: r for r in read_variables_truth(archive / "truth")}
    paths = get_paths(root=root / "run")
    t_stream, completed, failed = 0.0, None, None
    if not args.measure_only:
        t_stream, completed, failed = stream_groups(
            paths, groups, root / "feed", max_inflight=args.max_inflight,
            processor_options={"imaging": {"fov_deg": args.fov}, "photometry_catalogue": str(root / "field_sources.csv")})
    t = time.perf_counter()
    sources = [SkySource(n, ra, dec, s0, alpha) for n, (ra, dec, s0, alpha) in cat.items()]
    lc = light_curves(sources, products=paths.products_db, kind="images")
    t_lc = time.perf_counter() - t
    t = time.perf_counter()
    ranked = rank_variables(lc)
    t_rank = time.perf_counter() - t
    figures, dev_sigma = score(one_per_pass(lc), ranked, cat, variables)
    every, _ = score(lc[lc["covered"]], rank_variables(lc, per_pass="all"), cat, variables)
    every = {k: every[k] for k in ("flare", "dip", "steady")}
    for k in ("flare", "dip"):
        every[k].pop("missed")
    every["steady"].pop("false_detail")
    picks = plot_best(lc, ranked, cat, variables, dev_sigma, root / "lightcurves.png")
    out = {"benchmark": "multiday",
           "setup": {"days": args.days, "groups_per_day": args.groups_per_day, "groups": len(groups),
                     "fraction": args.fraction, "seed": args.seed, "preset": "small", "fov_deg": args.fov,
                     "first_group": groups[0].timestamp if groups else None,
                     "last_group": groups[-1].timestamp if groups else None,
                     "variables_injected": {k: sum(v["kind"] == k for v in variables.values())
                                            for k in ("flare", "dip")}},
           "completed": completed, "failed": failed,
           **figures,
           "every_measurement": every,
           "goals": {"recovered_ge10sigma": "all", "false_fraction_max": 0.01},
           "plotted": picks,
           "wall_s": {"simulate": round(t_sim, 1), "stream": round(t_stream, 1), "light_curves": round(t_lc, 1),
                      "rank_variables": round(t_rank, 2)}}
    text = json.dumps(out, indent=1, default=str)
    (root / "multiday.json").write_text(text)
    print(text)  # CASA writes to stdout too: the file holds the JSON alone
    return 0


if __name__ == "__main__":
    sys.exit(main())
