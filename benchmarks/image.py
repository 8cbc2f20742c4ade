r"""Benchmark: imaging one tile and a 12-tile mosaic; prints JSON.

    flock /tmp/dsacont-heavy.lock env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=2 \
        python benchmarks/image.py --group-dir /tmp/shared-full --work /tmp/img/bench
    python benchmarks/image.py --ms SMALL.ms --work /tmp/img/bsmall          # a small-preset tile
    python benchmarks/image.py --mosaic-only --imsize 2400 --cell 5.3         # full-size 12-tile mosaic

Measured figures: ``benchmarks/README.md`` (Imaging).

Steps (each timed, wall and CPU):
1. (if no ``--ms``) convert the group in ``--group-dir`` with ``convert_group`` (flag=False);
2. ``image_ms`` of that MS (DATA column unless ``--datacolumn corrected``), default settings;
3. a 12-tile mosaic: the tile's FITS are copied 12 times with the pointing moved by 5 minutes of
   RA (1.25 deg) each, as 12 consecutive drift tiles would be, and ``make_mosaic`` combines them
   (the mosaic cost depends only on the tile sizes, not on their content).

Peer figure (same machine not available): the old pipeline's CPU imaging of a 5040^2 image took
~8 min on a 40-thread Xeon (one 13-second integration per tile).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import numpy as np
from astropy.io import fits
from astropy.wcs import WCS

from dsacont.config import get_paths
from dsacont.convert import convert_group
from dsacont.imaging.beam import beam_image
from dsacont.imaging.mosaic import make_mosaic
from dsacont.imaging.tclean import image_ms
from dsacont.io.groups import find_groups


def _timed(fn, *a, **k):
    t0, c0 = time.perf_counter(), time.process_time()
    out = fn(*a, **k)
    return out, {"wall_s": round(time.perf_counter() - t0, 2), "cpu_s": round(time.process_time() - c0, 2)}


def fake_tiles(tile: dict, out_dir: Path, n: int = 12, step_deg: float = 1.25) -> list[str]:
    """Copies of one tile's image/pb/qa with CRVAL1 moved by ``step_deg`` per tile."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for k in range(n):
        stem = out_dir / f"tile{k:02d}"
        for kind in ("image", "pb"):
            with fits.open(tile[kind]) as hdul:
                hdul[0].header["CRVAL1"] = (hdul[0].header["CRVAL1"] + (k - (n - 1) / 2) * step_deg) % 360.0
                hdul.writeto(f"{stem}.{kind}.fits", overwrite=True)
        shutil.copy(tile["qa_json"], f"{stem}.qa.json")
        paths.append(f"{stem}.image.fits")
    return paths


def synthetic_tile(out_dir: Path, imsize: int, cell_arcsec: float) -> dict:
    """A tile-shaped FITS set (noise image, drift-free Airy pb, qa.json) at 0834+555's transit."""
    out_dir.mkdir(parents=True, exist_ok=True)
    w = WCS(naxis=4)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN", "FREQ", "STOKES"]
    w.wcs.crval = [128.72877, 55.57252, 1.405e9, 1.0]
    w.wcs.cdelt = [-cell_arcsec / 3600, cell_arcsec / 3600, 1.875e8, 1.0]
    w.wcs.crpix = [imsize / 2 + 1, imsize / 2 + 1, 1, 1]
    hdr = w.to_header()
    hdr.update(BMAJ=4 * cell_arcsec / 3600, BMIN=3 * cell_arcsec / 3600, BPA=0.0, BUNIT="Jy/beam")
    img = np.random.default_rng(0).normal(0, 2e-4, (1, 1, imsize, imsize)).astype(np.float32)
    pb = beam_image(w.celestial, (imsize, imsize), [math.radians(128.72877)], [math.radians(55.57252)], [1.405e9])
    stem = out_dir / "synthetic"
    fits.PrimaryHDU(img, hdr).writeto(f"{stem}.image.fits", overwrite=True)
    fits.PrimaryHDU(pb.reshape(1, 1, imsize, imsize), hdr).writeto(f"{stem}.pb.fits", overwrite=True)
    Path(f"{stem}.qa.json").write_text(json.dumps({"qa": {"noise_jy": 2e-4}}))
    return {"image": f"{stem}.image.fits", "pb": f"{stem}.pb.fits", "qa_json": f"{stem}.qa.json"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group-dir", help="directory with one 16-subband group")
    ap.add_argument("--ms", help="use this MS instead of converting")
    ap.add_argument("--work", default="/tmp/img/bench")
    ap.add_argument("--datacolumn", default="data")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--imsize", type=int)
    ap.add_argument("--cell", type=float)
    ap.add_argument("--mosaic-only", action="store_true",
                    help="skip imaging: time a 12-tile mosaic of synthetic --imsize/--cell tiles")
    args = ap.parse_args(argv)
    work = Path(args.work)
    paths = get_paths(root=work / "root").ensure()
    report = {"machine": {"cpus": os.cpu_count()}, "peer": {"old_pipeline_image_5040px_s": 480,
                                                           "old_pipeline_threads": 40}}
    if args.mosaic_only:
        tile = synthetic_tile(work / "synthetic", args.imsize or 2400, args.cell or 5.3)
        return _mosaic_and_report(tile, work, paths, report, args,
                                  tile_imsize=args.imsize or 2400, tile_cell_arcsec=args.cell or 5.3)
    ms = args.ms
    if ms is None:
        groups = [g for g in find_groups(args.group_dir) if g.complete]
        if not groups:
            print(f"no complete group in {args.group_dir}", file=sys.stderr)
            return 1
        g = groups[0]
        ms, t = _timed(convert_group, g, paths.ms / f"{g.timestamp}.ms", flag=False, paths=paths, progress=False)
        report["convert"] = t
    res, t = _timed(image_ms, ms, paths.images, datacolumn=args.datacolumn, paths=paths,
                    imsize=args.imsize, cell_arcsec=args.cell)
    qa = res["qa"]
    report["image_tile"] = {
        **t, "steps_s": {k: round(v, 2) for k, v in res["timing"].items()}, "imsize": res["imsize"],
        "cell_arcsec": res["cell_arcsec"], "gridder": res["gridder"], "deconvolver": res["deconvolver"],
        "beam_arcsec": [round(res["beam"]["bmaj_arcsec"], 2), round(res["beam"]["bmin_arcsec"], 2)],
        "noise_mjy": round(1e3 * qa["noise_jy"], 4), "radiometer_mjy": round(1e3 * qa["radiometer_jy"], 4),
        "noise_ratio": round(qa["noise_ratio"], 3), "dynamic_range": round(qa["dynamic_range"], 1),
        "iterations": qa["iterations"], "major_cycles": qa["major_cycles"],
        "calibrators": [{k: c[k] for k in ("name", "ratio", "offset_arcsec", "offset_beams")}
                        for c in qa.get("calibrators", []) if c.get("detected")],
        "n_channels": qa.get("n_channels"), "n_times": qa.get("n_times"), "n_ant": qa.get("n_ant"),
    }
    return _mosaic_and_report(res, work, paths, report, args)


def _mosaic_and_report(tile, work, paths, report, args, **extra) -> int:
    """The 12-tile mosaic of copies of ``tile`` (step 3), then print the JSON report."""
    tiles = fake_tiles(tile, work / "tiles12")
    mres, t = _timed(make_mosaic, tiles, paths.mosaics / "bench12.fits")
    report["mosaic_12"] = {**t, **extra, "steps_s": {k: round(v, 2) for k, v in mres["timing"].items()},
                           "shape": mres["shape"], "cell_arcsec": mres["cell_arcsec"]}
    report["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
