r"""Benchmark: imaging one tile with each imager (tclean, WSClean) side by side, and a 12-tile mosaic; prints JSON.

    # a small-preset tile, both imagers, the same MS (about a minute)
    python benchmarks/image.py --simulate small --work /tmp/img/bsmall
    # one full-size tile: 96 antennas x 768 channels, the 0834+555 transit group of 2025-10-29
    nice -n 5 env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        python benchmarks/image.py --simulate full --work /tmp/img/bfull
    python benchmarks/image.py --ms CAL.ms --work /tmp/img/b            # an MS with CORRECTED_DATA
    # baseline-dependent averaging against none, one thread as in the service, on the MS above
    python benchmarks/image.py --ms /tmp/img/bfull/root/stage/ms/2025-10-29T13:52:51.ms --truth-dir /tmp/img/bfull/raw \
        --work /tmp/img/bda --option threads=1 --imagers wsclean:baseline_averaging=0,wsclean
    python benchmarks/image.py --group-dir /tmp/shared-full --datacolumn data
    python benchmarks/image.py --mosaic-only --imsize 2400 --cell 5.3    # full-size 12-tile mosaic

Measured figures: ``benchmarks/README.md`` (Imaging).

Steps:
1. the MS: ``--ms``; or ``--group-dir`` converted with ``convert_group`` (flag=False); or
   ``--simulate PRESET``: one group starting 2025-10-29T13:52:51 (0834+555 transits at its
   middle) simulated with thermal noise, no gains and no RFI (``seed`` 11), converted, and DATA
   copied to CORRECTED_DATA (with no gains, the calibrated data are DATA), so the imagers see what
   the service gives them (CORRECTED_DATA, bright-source flattening on);
2. ``dsacont.imaging.image_ms(ms, imager=X)`` for each ``--imagers`` (default tclean,wsclean),
   each in its own child process, default settings, the same grid: wall, CPU and peak RSS of that
   child and its own children (WSClean runs as one: ``os.wait4``'s rusage), the steps' times, noise
   vs the radiometer equation, dynamic range, 0834+555's fitted PB-corrected flux vs the
   simulator's truth (``--simulate``) and the QA's catalogue check, its offset in beams;
3. the difference image of the two restored images (same pixel grid; with gridder wgridder WSClean's is a true SIN
   projection and tclean's a slant SIN, so it is taken on the pixel grid and the source positions
   are compared in the sky): RMS of (a - b) over the inner 90 % vs the noise, and its peak;
4. (``--mosaic``) a 12-tile mosaic of copies of the first imager's tile with the pointing moved
   by 5 minutes of RA (1.25 deg) each, combined by ``make_mosaic``.

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


GROUP_START = "2025-10-29T13:52:51"  # 0834+555 transits at the middle of this group


def simulate_ms(preset: str, work: Path, paths) -> tuple[str, Path]:
    """Simulate one group (noise, no gains, no RFI), convert it, CORRECTED_DATA = DATA."""
    from dsacont import simulate
    from dsacont.io.ms import copy_column

    raw = work / "raw"
    files = sorted(str(p) for p in simulate(raw, GROUP_START, 5, preset=preset, seed=11, rfi=False,
                                            noise=True, gains=False))
    ms = convert_group(files, paths.ms / f"{GROUP_START}.ms", flag=False, paths=paths, progress=False)
    copy_column(str(ms), "DATA", "CORRECTED_DATA")
    return str(ms), raw


def _child(argv) -> int:
    """``--child IMAGER MS OUT_DIR KWARGS_JSON RESULT_JSON``: one imaging run in this process."""
    import logging

    from dsacont.imaging import image_ms

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    imager, ms, out_dir, kw, out = argv
    res = image_ms(ms, out_dir, imager=imager, **json.loads(kw))
    Path(out).write_text(json.dumps(res, default=str))
    return 0


def run_imager(imager: str, ms: str, out_dir: Path, kwargs: dict) -> tuple[dict, dict]:
    """Run one imager in a child process: (its result, {wall_s, cpu_s, peak_rss_mb}): CPU of the child
    and its own children (WSClean) from ``os.wait4``, peak RSS of the largest of them (GNU time's %M)."""
    import subprocess

    out_dir.mkdir(parents=True, exist_ok=True)
    res_json = out_dir / "result.json"
    cmd = [sys.executable, __file__, "--child", imager, ms, str(out_dir), json.dumps(kwargs), str(res_json)]
    # the child is started by /usr/bin/time, which forks it from its own small image: a child forked
    # from this (large) process would inherit our RSS high-water mark in its ru_maxrss
    time_bin = shutil.which("time") or ("/usr/bin/time" if os.path.exists("/usr/bin/time") else None)
    rss_file = out_dir / "maxrss_kb"
    if time_bin:
        cmd = [time_bin, "-f", "%M", "-o", str(rss_file), *cmd]
    t0 = time.perf_counter()
    with open(out_dir / "child.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{imager} failed (exit {proc.returncode}); see {out_dir / 'child.log'}")
    rss_kb = float(rss_file.read_text().split()[-1]) if rss_file.exists() else float("nan")
    return json.loads(res_json.read_text()), {"wall_s": round(wall, 2), "cpu_s": round(ru.ru_utime + ru.ru_stime, 2),
                                              "peak_rss_mb": round(rss_kb / 1024, 1),
                                              "peak_rss_of": "the largest process of the imager's tree"}


def _options(pairs) -> dict:
    """``KEY=VALUE`` strings as a dict, each value JSON when it parses (``threads=1`` -> 1), else the string."""
    out = {}
    for pair in pairs:
        k, _, v = pair.partition("=")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def calibrator_vs_truth(res: dict, raw: Path | None) -> dict:
    """0834+555 fitted in the PB-corrected image vs the simulator's truth (band-mean flux), and the QA check."""
    from dsacont.imaging.qa import fit_source
    from dsacont.io.fits import read_fits_image

    qa = res["qa"]
    out = {}
    cal = [c for c in qa.get("calibrators", []) if c.get("name") == "0834+555" and c.get("detected", True)]
    if cal:
        out["qa_ratio"] = round(cal[0]["ratio"], 4)
        out["qa_offset_beams"] = round(cal[0]["offset_beams"], 4)
    if raw is not None:
        from dsacont import load_truth

        first = sorted(Path(raw).glob("*.hdf5"))[0]
        truth = load_truth(raw, str(first))
        s = truth["sources"]
        k = list(s["name"]).index("0834+555")
        freqs = np.asarray(truth["freq_hz"])
        expected = float(np.mean(s["flux_jy"][k] * (freqs / 1.4e9) ** s["spectral_index"][k]))
        pbcor, _, w = read_fits_image(res["pbcor"])
        bpx = qa["beam_px"]
        fit = fit_source(pbcor, w, s["ra_deg"][k], s["dec_deg"][k], beam_px=bpx, box_px=int(3 * bpx))
        beam = math.sqrt(res["beam"]["bmaj_arcsec"] * res["beam"]["bmin_arcsec"])
        out.update({"truth_jy": round(expected, 4), "flux_jy": round(float(fit["peak"]), 4),
                    "ratio_to_truth": round(float(fit["peak"]) / expected, 4),
                    "offset_arcsec": round(float(fit["offset_arcsec"]), 3),
                    "offset_beams": round(float(fit["offset_arcsec"]) / beam, 4)})
    return out


def difference(a: dict, b: dict) -> dict:
    """RMS and peak of image(a) - image(b) over the inner 90 %, relative to the noise (mean of the two QA noises)."""
    from dsacont.imaging.qa import robust_rms
    from dsacont.io.fits import read_fits_image

    ia, ha, _ = read_fits_image(a["image"])
    ib, hb, _ = read_fits_image(b["image"])
    if ia.shape != ib.shape:
        return {"error": f"different grids {ia.shape} vs {ib.shape}"}
    ny, nx = ia.shape
    m = max(1, int(0.05 * nx))
    d = (ia - ib)[m:ny - m, m:nx - m]
    noise = 0.5 * (a["qa"]["noise_jy"] + b["qa"]["noise_jy"])
    rms = float(np.sqrt(np.mean(d.astype(np.float64) ** 2)))
    return {"rms_mjy": round(1e3 * rms, 4), "rms_over_noise": round(rms / noise, 3),
            "robust_rms_over_noise": round(float(robust_rms(d)) / noise, 3),
            "peak_abs_mjy": round(1e3 * float(np.max(np.abs(d))), 3),
            "peak_abs_over_image_peak": round(float(np.max(np.abs(d))) / float(np.nanmax(ia)), 5),
            "same_grid": all(math.isclose(float(ha[k]), float(hb[k]), rel_tol=1e-9, abs_tol=1e-9)
                             for k in ("NAXIS1", "NAXIS2", "CRPIX1", "CRPIX2", "CDELT1", "CDELT2", "CRVAL1", "CRVAL2"))}


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        return _child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--group-dir", help="directory with one 16-subband group")
    ap.add_argument("--ms", help="use this MS instead of converting")
    ap.add_argument("--simulate", choices=["small", "full"], help="simulate and convert one transit group of this preset")
    ap.add_argument("--truth-dir", help="the simulator's output directory of --ms's group (for the truth)")
    ap.add_argument("--work", default="/tmp/img/bench")
    ap.add_argument("--datacolumn", default="corrected")
    ap.add_argument("--imagers", default="tclean,wsclean",
                    help="comma-separated imagers to run, in order; IMAGER:KEY=VALUE[;KEY=VALUE] runs one with "
                         "its own options (e.g. wsclean:baseline_averaging=0,wsclean)")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="an image_ms keyword for every imager (JSON value, e.g. threads=2)")
    ap.add_argument("--mosaic", action="store_true", help="also time a 12-tile mosaic of the first imager's tile")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--imsize", type=int)
    ap.add_argument("--cell", type=float)
    ap.add_argument("--mosaic-only", action="store_true",
                    help="skip imaging: time a 12-tile mosaic of synthetic --imsize/--cell tiles")
    args = ap.parse_args(argv)
    work = Path(args.work)
    paths = get_paths(root=work / "root").ensure()
    report = {"date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
              "machine": {"cpus": os.cpu_count(), "load_before": [round(x, 2) for x in os.getloadavg()]},
              "peer": {"old_pipeline_image_5040px_s": 480, "old_pipeline_threads": 40}}
    if args.mosaic_only:
        tile = synthetic_tile(work / "synthetic", args.imsize or 2400, args.cell or 5.3)
        return _mosaic_and_report(tile, work, paths, report, args,
                                  tile_imsize=args.imsize or 2400, tile_cell_arcsec=args.cell or 5.3)
    ms, raw = args.ms, args.truth_dir
    if args.simulate:
        (ms, raw), t = _timed(simulate_ms, args.simulate, work, paths)
        report["simulate_convert"] = t
    elif ms is None:
        groups = [g for g in find_groups(args.group_dir) if g.complete]
        if not groups:
            print(f"no complete group in {args.group_dir}", file=sys.stderr)
            return 1
        g = groups[0]
        ms, t = _timed(convert_group, g, paths.ms / f"{g.timestamp}.ms", flag=False, paths=paths, progress=False)
        report["convert"] = t
    kwargs = {"datacolumn": args.datacolumn, "imsize": args.imsize, "cell_arcsec": args.cell, **_options(args.option)}
    results = {}
    report["imagers"] = {}
    for spec in args.imagers.split(","):
        # IMAGER or IMAGER:KEY=VALUE[;KEY=VALUE]: the same imager with its own options
        imager, _, extra = spec.partition(":")
        own = {**kwargs, **_options(filter(None, extra.split(";")))}
        res, t = run_imager(imager, ms, work / ("images-" + spec.replace(":", "-").replace(";", "-").replace("=", "")),
                            own)
        results[spec] = res
        qa = res["qa"]
        report["imagers"][spec] = {
            "ran": res.get("imager"), **t, "steps_s": {k: round(v, 2) for k, v in res["timing"].items()},
            "imsize": res["imsize"], "cell_arcsec": res["cell_arcsec"], "gridder": res["gridder"],
            "beam_arcsec": [round(res["beam"]["bmaj_arcsec"], 2), round(res["beam"]["bmin_arcsec"], 2)],
            "noise_mjy": round(1e3 * qa["noise_jy"], 4), "radiometer_mjy": round(1e3 * qa["radiometer_jy"], 4),
            "noise_ratio": round(qa["noise_ratio"], 3), "noise_image_mjy": round(1e3 * qa["noise_image_jy"], 4),
            "peak_jy": round(qa["peak_jy"], 4), "dynamic_range": round(qa["dynamic_range"], 1),
            "iterations": qa["iterations"], "major_cycles": qa["major_cycles"],
            "calibrator_0834": calibrator_vs_truth(res, raw),
            "n_channels": qa.get("n_channels"), "n_times": qa.get("n_times"), "n_ant": qa.get("n_ant"),
            **({"baseline_averaging_wl": qa["baseline_averaging_wl"],
                "time_smearing_loss_edge": qa["time_smearing_loss_edge"],
                "bandwidth_smearing_loss_edge": qa.get("smearing_loss_edge")} if "baseline_averaging_wl" in qa else {}),
        }
    names = list(results)
    if len(names) == 2:
        report["difference"] = {"of": f"{names[1]} - {names[0]}", **difference(results[names[1]], results[names[0]])}
    report["machine"]["load_after"] = [round(x, 2) for x in os.getloadavg()]
    if args.mosaic:
        return _mosaic_and_report(results[names[0]], work, paths, report, args)
    print(json.dumps(report, indent=2))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


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
