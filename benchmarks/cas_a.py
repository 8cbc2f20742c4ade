"""Cas A in a sidelobe: a realistic simulated hour centred on Cas A's transit, through the streaming
service, with and without the subtraction of Cas A.

    python benchmarks/cas_a.py [--root DIR] [--groups 12] [--every 1] [--fov 3.5] [--niter 2000]

Cas A (RA 23h23m24s, Dec +58d48m54s, ~1,700 Jy at 1.4 GHz) passes 3.4 deg north of the pointing at
Dec +55.6 (apparent places): at the first null of the 4.65 m dishes' Airy beam, inside the main lobe at
the band bottom (null at 3.5 deg at 1.28 GHz) and in the first sidelobe above ~1.33 GHz. Its apparent
flux (up to tens of Jy per channel, changing across the band and within a 5-minute tile) is larger
than every source in the field.

1. Simulate (small preset, the realistic simulator with its faults, seed ``--seed``): the 0834+555
   transit group of 2025-10-29 (bandpass and gains) and ``--groups`` groups centred on Cas A's next
   transit (2025-10-30 04:41:30 UTC, 14.8 h later: the bandpass is borrowed, the gains come from
   the field solve every group).
2. Run the streaming service (``run_service``, the path of ``dsacont stream``) on them: Cas A is in
   the field solve's model and subtracted before imaging (the defaults).
3. Per tile of the Cas A hour: Cas A's distance from the pointing and apparent flux at mid-time,
   the tile's noise against the radiometer equation and its dynamic range, the truth's compact
   sources' flux ratio and position offsets (as ``around_the_clock.py``); then the same MS imaged
   again *without* Cas A subtracted (same calibration, same imaging settings), measured the same way.

Prints one JSON document (also written to ``<root>/cas_a.json``).
"""
from __future__ import annotations

import argparse
import json
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from astropy import units as u

sys.path.insert(0, str(Path(__file__).resolve().parent))

from around_the_clock import measure_image, stream_groups  # noqa: E402

from dsacont.calibrators import bright_sidelobe_source, transit_time  # noqa: E402
from dsacont.config import get_paths  # noqa: E402
from dsacont.demo import CADENCE_S, demo_window  # noqa: E402
from dsacont.imaging import image_ms  # noqa: E402
from dsacont.io.groups import find_groups  # noqa: E402
from dsacont.service.products import Products  # noqa: E402
from dsacont.simulator import load_truth, simulate  # noqa: E402


def simulate_archive(archive: Path, n_groups: int, seed: int) -> tuple[list, list]:
    """The calibrator transit group and ``n_groups`` groups centred on Cas A's transit."""
    start, transit = demo_window(1)
    casa = bright_sidelobe_source("CasA")
    t_casa = transit_time(casa.ra_deg, transit, casa.dec_deg)
    # one seed for both windows: the same antennas, faults and gain histories (functions of time)
    want = {"seed": seed, "groups": n_groups, "casa_transit": t_casa.isot, "same_seed": True}
    marker = archive / "done.json"
    if not (marker.exists() and json.loads(marker.read_text()) == want):
        shutil.rmtree(archive, ignore_errors=True)
        simulate(archive / "calibrator", start, 4.0, preset="small", seed=seed, realism="realistic")
        simulate(archive / "casa", t_casa - (n_groups / 2) * CADENCE_S * u.s, (n_groups - 0.5) * CADENCE_S / 60.0,
                 preset="small", seed=seed, realism="realistic")
        marker.write_text(json.dumps(want))
    cal = sorted(find_groups(archive / "calibrator"), key=lambda g: g.timestamp)
    hour = sorted(find_groups(archive / "casa"), key=lambda g: g.timestamp)
    return cal, hour


def casa_geometry(ms_path: str) -> dict:
    """Cas A's distance from the pointing HADEC(0, dec) at the tile's mid-time and its apparent flux."""
    from dsacont.calibration import beam_offsets, pointing_dec, read_ms_info
    from dsacont.telescope import airy_beam

    casa = bright_sidelobe_source("CasA")
    info = read_ms_info(ms_path)
    off = float(beam_offsets(np.radians(casa.ra_deg), np.radians(casa.dec_deg), pointing_dec(info),
                             [info.mid_mjd])[0])
    freqs = np.array([1.31e9, 1.40e9, 1.49e9])
    return {"offset_deg": round(float(np.degrees(off)), 3),
            "apparent_jy_1.31_1.40_1.49GHz": [round(float(casa.flux_at(f) * airy_beam(off, f)), 2) for f in freqs]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/dsacont-cas-a", help="working directory (default /tmp/dsacont-cas-a)")
    ap.add_argument("--groups", type=int, default=12, help="groups centred on Cas A's transit (default 12: an hour)")
    ap.add_argument("--every", type=int, default=1, help="stream every N-th of them (default 1)")
    ap.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    ap.add_argument("--fov", type=float, default=3.5, help="tile field of view, deg (default 3.5)")
    ap.add_argument("--niter", type=int, default=2000, help="tclean niter (default 2000)")
    ap.add_argument("--measure-only", action="store_true",
                    help="measure the products of an earlier run under --root again (no simulation, no service)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    t_all = time.perf_counter()
    root = Path(args.root)
    t = time.perf_counter()
    cal, hour = simulate_archive(root / "archive", args.groups, args.seed)
    hour = hour[::args.every]
    t_sim = time.perf_counter() - t
    paths = get_paths(root=root / "run")
    imaging = {"fov_deg": args.fov, "niter": args.niter}
    t_stream, completed, failed = 0.0, None, None
    if not args.measure_only:
        shutil.rmtree(root / "without", ignore_errors=True)
        t_stream, completed, failed = stream_groups(paths, cal + hour, root / "feed",
                                                    processor_options={"tiles_per_mosaic": 12, "imaging": imaging})

    products = Products(paths.products_db)
    images = {im["ms_path"]: im for im in products.list_images()}
    rows = []
    t_without = 0.0
    for g in hour:
        ms_path = str(paths.ms / f"{g.timestamp}.ms")
        ms = products.get("ms", ms_path) or {}
        truth = load_truth(root / "archive" / "casa", g.paths[0] or next(p for p in g.paths if p))
        row = {"group": g.timestamp, "imaged": False}
        im = images.get(ms_path)
        if im is None:
            rows.append(row)
            continue
        qa = im.get("qa") or {}
        row.update(imaged=True, calibration=" ".join(qa.get("calibration") or []),
                   status=im.get("status"), **casa_geometry(ms_path))
        row["flattened"] = [(s["name"], s.get("mode", "flatten"), round(s["scale"], 3)) for s in qa.get("flattened") or []]
        chain = ms.get("caltables") or []
        field = next((c for c in chain if c["how"] == "field"), None)
        sky = (field or {}).get("detail", {}).get("sky_model") or {}
        row["field_solve"] = None if field is None else {
            "sky_model": sky.get("name", "?").split(" (")[0], "model_flux_ratio": field["detail"].get("model_flux_ratio"),
            "sidelobe_in_model": [d["name"] for d in sky.get("sidelobe", [])]}
        row["with_subtraction"] = _measure(im["path"], truth, qa)
        t = time.perf_counter()
        out = root / "without"
        done = sorted(out.glob(f"{g.timestamp}*.qa.json"))
        if args.measure_only and done:
            rq = json.loads(done[0].read_text())
            rq, pbcor = rq.get("qa", rq), str(done[0]).replace(".qa.json", ".pbcor.fits")
        else:
            res = image_ms(ms_path, out, paths=paths, flatten="calibrators", **imaging)
            rq, pbcor = res["qa"], res["pbcor"]
        row["without_subtraction"] = _measure(pbcor, truth, rq)
        t_without += time.perf_counter() - t
        rows.append(row)

    def summary_of(key):
        vals = [r[key] for r in rows if r.get(key)]
        col = {k: [v[k] for v in vals if v.get(k) is not None] for k in
               ("noise_ratio", "dynamic_range", "flux_ratio_median", "offset_beam_median")}
        return {"tiles": len(vals), **{f"{k}_median": round(float(np.median(x)), 4) if x else None for k, x in col.items()},
                "noise_ratio_max": round(float(max(col["noise_ratio"])), 3) if col["noise_ratio"] else None}

    out = {
        "benchmark": "cas_a", "groups": len(hour), "completed": completed, "failed": failed,
        "imaged": sum(r["imaged"] for r in rows), "imaging": imaging,
        "field_solves_valid": sum(bool(r.get("field_solve")) for r in rows),
        "casa_subtracted": sum(any(f[0] == "CasA" and f[1] == "subtract" for f in r.get("flattened", [])) for r in rows),
        "with_subtraction": summary_of("with_subtraction"),
        "without_subtraction": summary_of("without_subtraction"),
        "wall_s": {"simulate": round(t_sim, 1), "stream": round(t_stream, 1), "images_without": round(t_without, 1),
                   "total": round(time.perf_counter() - t_all, 1)},
        "tiles": rows,
    }
    text = json.dumps(out, indent=1, default=str)
    (root / "cas_a.json").write_text(text)
    print(text)
    return 0


def _measure(pbcor: str, truth: dict, qa: dict) -> dict:
    m = measure_image(pbcor, truth, qa)
    m.pop("sources", None)
    return m


if __name__ == "__main__":
    sys.exit(main())
