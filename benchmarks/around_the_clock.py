"""Around the clock: a simulated stretch from before the 0834+555 transit to hours after it,
through the streaming service, with the hourly (per-group) field gain solve and, from the same run,
with gain transfer only.

    python benchmarks/around_the_clock.py [--root DIR] [--start-h -1] [--end-h 6] [--every 1]
                                          [--fov 3.5] [--niter 2000] [--max-inflight 2]
                                          [--sky-models strip,catalogue]

1. Simulate the stretch (small preset, the realistic instrument: antenna phases wandering by tens
   of degrees over hours, amplitude drifts, phase jumps, RFI; the real sky: NVSS, the VLA
   calibrators). ``--every N`` keeps every N-th group (a cheaper run over the same hours; no
   mosaics then, as they need 12 consecutive tiles).
2. Run the streaming service on it (``run_service``, the path of ``dsacont stream``) with the field
   gain solve on (the default).
3. For every imaged group: the flux of the simulator's compact sources in the PB-corrected tile
   against the simulator's truth (median ratio), their position offsets (beams), the tile noise
   against the radiometer equation.
4. The same group calibrated with gain transfer only (the calibrator pair it got, without the
   field correction), imaged with the same settings, measured the same way.

Prints one JSON document: per hour (relative to the transit) both sets of figures, and the totals.
Goals (issue 15): 100 % of groups imaged, flux within 3 %, offsets <= 0.1 beam, noise <= 1.3x.
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
from astropy.coordinates import SkyCoord

from dsacont.calibration import apply_calibration
from dsacont.config import get_paths
from dsacont.demo import CADENCE_S, demo_window
from dsacont.imaging import image_ms
from dsacont.io.fits import beam_from_header, freq_from_header, read_fits_image
from dsacont.io.groups import find_groups
from dsacont.service.loop import ServiceOptions, run_service
from dsacont.service.products import Products
from dsacont.service.replay import replay
from dsacont.simulator import load_truth, simulate


def simulate_stretch(archive: Path, start_h: float, end_h: float, every: int, seed: int) -> list:
    start, _ = demo_window(1)  # the transit group's start
    t0 = start + start_h * u.hour
    minutes = (end_h - start_h) * 60.0 + 4.0
    if not (archive / "done.json").exists():
        shutil.rmtree(archive, ignore_errors=True)
        simulate(archive, t0, minutes, preset="small", seed=seed, realism="realistic", faults=False)
        (archive / "done.json").write_text(json.dumps({"start_h": start_h, "end_h": end_h, "seed": seed}))
    groups = sorted(find_groups(archive), key=lambda g: g.timestamp)
    return groups[::every]


def stream_groups(paths, groups: list, feed: Path, *, max_inflight: int = 2, processor_options: dict) -> tuple:
    """Replay ``groups`` (hard links through ``feed``) into a fresh ``paths`` tree and run the
    streaming service on them until it is idle: ``(wall seconds, completed, failed)``."""
    for d in (paths.incoming, paths.stage, paths.state):
        shutil.rmtree(d, ignore_errors=True)
    paths.ensure()
    shutil.rmtree(feed, ignore_errors=True)
    feed.mkdir(parents=True)
    for g in groups:
        for p in g.paths:
            if p:
                (feed / Path(p).name).hardlink_to(p)
    replay(feed, paths.incoming, mode="link")
    options = ServiceOptions(max_inflight=max_inflight, idle_exit_s=60.0, poll_s=1.0, incomplete_timeout_s=60.0,
                             cal_wait_s=10.0, min_free_gb=0.0, max_groups=len(groups),
                             processor_options=processor_options)
    t = time.perf_counter()
    summary = run_service(paths, options)
    return time.perf_counter() - t, len(summary.completed), len(summary.failed)


def measure_tile(pbcor: str, truth: dict, *, min_snr: float = 10.0, noise_jy: float | None = None,
                 max_major_arcsec: float = 0.0) -> dict:
    """Flux ratios and position offsets of the truth's compact sources in a PB-corrected tile.

    A source counts when it lies where the tile's PB-corrected noise (``noise_jy`` / PB, with PB
    read from the companion ``.pb.fits``) keeps it above ``min_snr``: its peak within one beam of
    the true position, interpolated to sub-pixel position. Only sources the simulator made no larger
    than ``max_major_arcsec`` (default: point sources) count: the peak of a source of 10" in a 1'
    beam is already 3 % below its flux.
    """
    img, hdr, wcs = read_fits_image(pbcor)
    img = np.squeeze(img)
    pb_path = pbcor.replace(".pbcor.fits", ".pb.fits")
    pb = np.squeeze(read_fits_image(pb_path)[0]) if Path(pb_path).exists() else np.ones_like(img)
    beam = beam_from_header(hdr)
    bmaj_deg = beam["bmaj_arcsec"] / 3600.0 if "bmaj_arcsec" in beam else float(hdr["BMAJ"])
    freq = freq_from_header(hdr)
    cell_deg = abs(float(hdr["CDELT1"]))
    r_pix = max(2, int(round(bmaj_deg / cell_deg)))
    names = np.atleast_1d(truth["source_name"])
    ra = np.atleast_1d(truth["source_ra_deg"])
    dec = np.atleast_1d(truth["source_dec_deg"])
    s_ref = np.atleast_1d(truth["source_flux_jy"]) * (freq / float(np.atleast_1d(truth["source_ref_freq_hz"])[0])) ** \
        np.atleast_1d(truth["source_spectral_index"])
    major = np.atleast_1d(truth.get("source_major_arcsec", np.zeros_like(ra)))
    ratios, offsets, used = [], [], []
    w2 = wcs.celestial
    for i in range(ra.size):
        if major[i] > max_major_arcsec or not np.isfinite(s_ref[i]):
            continue
        x, y = w2.world_to_pixel(SkyCoord(ra[i] * u.deg, dec[i] * u.deg))
        xi, yi = int(round(float(x))), int(round(float(y)))
        if not (r_pix <= xi < img.shape[-1] - r_pix and r_pix <= yi < img.shape[-2] - r_pix):
            continue
        p = float(pb[yi, xi])
        if not p > 0.3 or noise_jy is None or s_ref[i] * p < min_snr * noise_jy:
            continue
        box = img[yi - r_pix:yi + r_pix + 1, xi - r_pix:xi + r_pix + 1]
        if not np.all(np.isfinite(box)):
            continue
        jy, jx = np.unravel_index(np.argmax(box), box.shape)
        peak = float(box[jy, jx])
        dx = _vertex(box[jy, jx - 1:jx + 2]) if 0 < jx < box.shape[1] - 1 else 0.0
        dy = _vertex(box[jy - 1:jy + 2, jx]) if 0 < jy < box.shape[0] - 1 else 0.0
        px, py = xi - r_pix + jx + dx, yi - r_pix + jy + dy
        found = w2.pixel_to_world(px, py)
        off = found.separation(SkyCoord(ra[i] * u.deg, dec[i] * u.deg)).deg / bmaj_deg
        ratios.append(peak / s_ref[i])
        offsets.append(off)
        used.append(str(names[i]))
    return {"n_sources": len(ratios),
            "flux_ratio_median": round(float(np.median(ratios)), 4) if ratios else None,
            "flux_ratio_scatter": round(float(np.std(ratios)), 4) if len(ratios) > 1 else None,
            "offset_beam_median": round(float(np.median(offsets)), 4) if offsets else None,
            "sources": used[:20]}


def measure_image(pbcor: str, truth: dict, qa: dict) -> dict:
    """:func:`measure_tile` of a PB-corrected tile at the noise its QA measured, with the QA's noise
    against the radiometer equation (``noise_ratio``) and its ``dynamic_range``."""
    m = measure_tile(pbcor, truth, noise_jy=qa.get("noise_jy"))
    m["noise_ratio"] = round(qa["noise_jy"] / qa["radiometer_jy"], 3) if qa.get("radiometer_jy") else None
    m["dynamic_range"] = round(float(qa["dynamic_range"]), 1) if qa.get("dynamic_range") else None
    return m


def _vertex(v) -> float:
    """Sub-pixel offset of the maximum of three samples (parabola)."""
    den = v[0] - 2 * v[1] + v[2]
    return float(0.5 * (v[0] - v[2]) / den) if den != 0 else 0.0


def summarise(rows: list[dict], key: str) -> dict:
    vals = [r[key] for r in rows if r.get(key)]
    f = [v["flux_ratio_median"] for v in vals if v.get("flux_ratio_median") is not None]
    o = [v["offset_beam_median"] for v in vals if v.get("offset_beam_median") is not None]
    n = [v["noise_ratio"] for v in vals if v.get("noise_ratio") is not None]
    return {"tiles": len(vals), "flux_ratio_median": round(float(np.median(f)), 4) if f else None,
            "flux_ratio_p10_p90": [round(float(np.percentile(f, 10)), 4), round(float(np.percentile(f, 90)), 4)]
            if f else None,
            "offset_beam_median": round(float(np.median(o)), 4) if o else None,
            "noise_vs_radiometer_median": round(float(np.median(n)), 3) if n else None}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--root", default="/tmp/dsacont-around-the-clock", help="working directory")
    ap.add_argument("--start-h", type=float, default=-1.0, help="hours from the transit group to start (default -1)")
    ap.add_argument("--end-h", type=float, default=6.0, help="hours from the transit group to end (default 6)")
    ap.add_argument("--every", type=int, default=1, help="keep every N-th group (default 1: continuous)")
    ap.add_argument("--seed", type=int, default=0, help="simulator seed (default 0)")
    ap.add_argument("--fov", type=float, default=3.5, help="tile field of view, deg (default 3.5)")
    ap.add_argument("--niter", type=int, default=2000, help="tclean niter (default 2000)")
    ap.add_argument("--max-inflight", type=int, default=2, help="groups in flight (default 2)")
    ap.add_argument("--sky-models", default="strip,catalogue",
                    help="the field solve's sky models in order (the pipeline option sky_models; default "
                    "strip,catalogue: dsacont's own model of earlier tiles first, then NVSS)")
    ap.add_argument("--skip-transfer", action="store_true", help="do not image the transfer-only comparison")
    ap.add_argument("--measure-only", action="store_true",
                    help="measure the products of an earlier run under --root again (no simulation, no service)")
    ap.add_argument("--out", default=None, help="also write the JSON here (default <root>/around_the_clock.json)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    t_all = time.perf_counter()
    root = Path(args.root)
    archive = root / "archive"
    t = time.perf_counter()
    groups = simulate_stretch(archive, args.start_h, args.end_h, args.every, args.seed)
    t_sim = time.perf_counter() - t
    paths = get_paths(root=root / "run")
    imaging = {"fov_deg": args.fov, "niter": args.niter}
    t_stream, completed, failed = 0.0, None, None
    if not args.measure_only:
        shutil.rmtree(root / "transfer_images", ignore_errors=True)
        t_stream, completed, failed = stream_groups(paths, groups, root / "feed", max_inflight=args.max_inflight,
                                                    processor_options={"tiles_per_mosaic": 12, "imaging": imaging,
                                                                       "sky_models": args.sky_models})

    _, transit = demo_window(1)
    products = Products(paths.products_db)
    images = {im["ms_path"]: im for im in products.list_images()}
    rows = []
    t_transfer = 0.0
    for g in groups:
        ms_path = str(paths.ms / f"{g.timestamp}.ms")
        ms = products.get("ms", ms_path)
        truth = load_truth(archive, g.paths[0] or next(p for p in g.paths if p))
        row = {"group": g.timestamp, "hour": None, "imaged": False, "calibration": None}
        if ms is not None and ms.get("mid_mjd") is not None:
            row["hour"] = int(np.floor((ms["mid_mjd"] - transit.mjd) * 24.0 + 0.5 * CADENCE_S / 3600.0))
        im = images.get(ms_path)
        if im is not None:
            qa = im.get("qa") or {}
            row["imaged"] = True
            row["calibration"] = " ".join(qa.get("calibration") or [])
            row["hourly"] = measure_image(im["path"], truth, qa)
        chain = (ms or {}).get("caltables") or []
        field = next((c for c in chain if c["how"] == "field"), None)
        row["sky_model"] = (field["detail"].get("sky_model") or {}).get("name", "?").split(" (")[0] if field else None
        done = sorted((root / "transfer_images").glob(f"{g.timestamp}*.qa.json"))
        if im is not None and not args.skip_transfer and any(c["how"] == "field" for c in chain):
            t = time.perf_counter()
            if args.measure_only and done:
                rq = json.loads(done[0].read_text())
                rq = rq.get("qa", rq)
                pbcor = str(done[0]).replace(".qa.json", ".pbcor.fits")
            else:
                pair = [c["path"] for c in chain if c["how"] != "field"]
                apply_calibration(ms_path, tables=pair)
                res = image_ms(ms_path, root / "transfer_images", paths=paths, **imaging)
                rq, pbcor = res["qa"], res["pbcor"]
            row["transfer_only"] = measure_image(pbcor, truth, rq)
            t_transfer += time.perf_counter() - t
        elif im is not None:
            row["transfer_only"] = row["hourly"]  # the calibrator's own group: nothing to transfer
        rows.append(row)

    hours = sorted({r["hour"] for r in rows if r["hour"] is not None})
    per_hour = []
    for h in hours:
        hr = [r for r in rows if r["hour"] == h]
        per_hour.append({"hour": h, "groups": len(hr), "imaged": sum(r["imaged"] for r in hr),
                         "imaged_fraction": round(sum(r["imaged"] for r in hr) / len(hr), 3),
                         "with_hourly_solve": summarise(hr, "hourly"),
                         "transfer_only": summarise(hr, "transfer_only"),
                         "field_sky_models": {k: sum(r["sky_model"] == k for r in hr)
                                              for k in sorted({r["sky_model"] for r in hr if r["sky_model"]})},
                         "calibration": sorted({r["calibration"] for r in hr if r["calibration"]})})
    out = {
        "benchmark": "around_the_clock",
        "stretch_h": [args.start_h, args.end_h], "every": args.every, "groups": len(groups),
        "sky_models": args.sky_models,
        "completed": completed, "failed": failed,
        "imaged_fraction": round(sum(r["imaged"] for r in rows) / max(len(rows), 1), 3),
        "imaging": imaging,
        "per_hour": per_hour,
        "all_hours": {"with_hourly_solve": summarise(rows, "hourly"), "transfer_only": summarise(rows, "transfer_only")},
        "goals": {"imaged": 1.0, "flux_ratio_within": 0.03, "offset_beam_max": 0.1, "noise_vs_radiometer_max": 1.3},
        "wall_s": {"simulate": round(t_sim, 1), "stream": round(t_stream, 1), "transfer_only_images": round(t_transfer, 1),
                   "total": round(time.perf_counter() - t_all, 1)},
        "groups_detail": rows,
    }
    text = json.dumps(out, indent=1, default=str)
    Path(args.out or root / "around_the_clock.json").write_text(text)
    print(text)  # CASA writes to stdout too: the file holds the JSON alone
    return 0


if __name__ == "__main__":
    sys.exit(main())
