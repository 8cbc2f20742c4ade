r"""Benchmark: variable sources recovered from a multi-day simulated run; prints JSON.

    python benchmarks/variability.py [--days 14] [--n-steady 1000] [--n-flare 20] [--n-dip 20]

Daily images of one field at the same LST (``dsacont.simulator.images.variable_epochs``: one
image per sidereal day, beam-correlated noise 1 mJy/beam at the centre rising 2x to the corners,
its noise map beside it) with steady sources, flares (fast rise, exponential decay of 1-3 days,
amplitude 0.5-3x) and ESE-like dips (Gaussian, sigma 1.5-3 days, depth 30-60 %), base fluxes
log-uniform in 5-300 mJy. The pipeline: ``light_curves`` (forced photometry at the true
positions on every image) and ``rank_variables`` (eta, V, ESE dip search) with their defaults.

Figures: the fraction of injected flares and dips recovered as candidates, overall and for those
whose largest true deviation from the base flux is at least 10 x the local noise (the issue's goal:
all of them); dips classified as dips and flares as brightenings; false candidates among the
steady sources (goal < 1 %) and steady sources called dips; times. No peer: the operators'
variability code is not a package this machine can install.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dsacont.io.fits import read_fits_image
from dsacont.simulator.images import variable_epochs
from dsacont.sources import light_curves, rank_variables


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--days", type=int, default=14)
    ap.add_argument("--n-steady", type=int, default=1000)
    ap.add_argument("--n-flare", type=int, default=20)
    ap.add_argument("--n-dip", type=int, default=20)
    ap.add_argument("--npix", type=int, default=2048)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-var-"))
    t0 = time.perf_counter()
    v = variable_epochs(work, args.days, n_steady=args.n_steady, n_flare=args.n_flare, n_dip=args.n_dip,
                        npix=args.npix, base_flux_jy=(0.005, 0.3), seed=args.seed)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    lc = light_curves(list(zip(v["ra_deg"], v["dec_deg"])), v["images"])
    t_phot = time.perf_counter() - t0
    t0 = time.perf_counter()
    m = rank_variables(lc)
    t_var = time.perf_counter() - t0
    # the local noise of each source (the noise map of the first epoch at its position)
    noise = read_fits_image(v["images"][0][:-5] + ".noise.fits")[0]
    _, _, wcs = read_fits_image(v["images"][0])
    x, y = wcs.world_to_pixel_values(v["ra_deg"], v["dec_deg"])
    sigma = noise[np.round(y).astype(int), np.round(x).astype(int)]
    dev_sigma = np.max(np.abs(v["flux_jy"] - v["base_flux_jy"][:, None]), axis=1) / sigma
    names = [f"{r:.5f},{d:+.5f}" for r, d in zip(v["ra_deg"], v["dec_deg"])]
    row = {n: r for n, r in zip(m["name"], m.itertuples())}
    cand = np.array([bool(row[n].candidate) if n in row else False for n in names])
    kind = np.array([row[n].kind if n in row else "" for n in names])
    out = {"setup": {"days": args.days, "n_steady": args.n_steady, "n_flare": args.n_flare, "n_dip": args.n_dip,
                     "npix": args.npix, "seed": args.seed, "noise_centre_jy": 1e-3,
                     "base_flux_jy": [0.005, 0.3]},
           "time_s": {"simulate": round(t_sim, 1), "photometry": round(t_phot, 1), "variability": round(t_var, 2)},
           "n_sources_measured": int(len(m))}
    for k in ("flare", "dip"):
        sel = v["kind"] == k
        strong = sel & (dev_sigma >= 10)
        want = "dip" if k == "dip" else "brightening"
        out[k] = {"injected": int(sel.sum()), "recovered": round(float(cand[sel].mean()), 4),
                  "injected_ge10sigma": int(strong.sum()),
                  "recovered_ge10sigma": round(float(cand[strong].mean()), 4) if strong.any() else None,
                  "classified": round(float((kind[sel] == want).mean()), 4),
                  "classified_ge10sigma": round(float((kind[strong] == want).mean()), 4) if strong.any() else None,
                  "missed_dev_sigma": [round(float(s), 1) for s in dev_sigma[sel & ~cand]]}
    steady = v["kind"] == "steady"
    out["steady"] = {"n": int(steady.sum()), "false_candidates": int(cand[steady].sum()),
                     "false_rate": round(float(cand[steady].mean()), 5),
                     "called_dips": int((kind[steady] == "dip").sum()),
                     "eta_median": round(float(m.set_index("name").loc[np.array(names)[steady], "eta"].median()), 3)}
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
