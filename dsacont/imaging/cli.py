"""The ``dsacont image`` and ``dsacont mosaic`` commands: options only, the work is the library's.

``dsacont image MS`` runs :func:`dsacont.imaging.image_ms` (WSClean or tclean); ``dsacont mosaic`` runs
:func:`dsacont.imaging.mosaic.make_mosaic` on tile files or on the images registered in a time
window. Every option shows its real default (the library's constants).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from dsacont.config import get_paths
from dsacont.errors import BadInputError
from dsacont.imaging.geometry import DEFAULT_CELLS_PER_BEAM, DEFAULT_FOV_DEG
from dsacont.imaging.imager import DEFAULT_IMAGER, IMAGERS, image_ms
from dsacont.imaging.mosaic import _stem, make_mosaic
from dsacont.imaging.tclean import (
    DEFAULT_CYCLEFACTOR,
    DEFAULT_MASK_NSIGMA,
    DEFAULT_NITER,
    DEFAULT_NMAJOR,
    DEFAULT_NSIGMA,
    DEFAULT_ROBUST,
    PBCOR_LIMIT,
    WTERM_TOLERANCE_RAD,
)
from dsacont.imaging.wsclean import DEFAULT_NITER as WSCLEAN_NITER

DEFAULT_PB_CUTOFF = 0.2


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows ``(default: X)`` after every option with a value default; an option whose default is
    computed (None) says what it is in its own help, and flags (False) need none."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _parser_image() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dsacont image", formatter_class=_Formatter,
        description="Image one calibrated Measurement Set (one 5-minute tile) with WSClean or CASA tclean: writes "
                    "<name>.image/.pb/.pbcor/.residual.fits and <name>.qa.json into the images directory.")
    ap.add_argument("ms", help="the calibrated Measurement Set to image")
    ap.add_argument("--out-dir", default=None,
                    help="output directory (default: the configured images directory)")
    ap.add_argument("--root", default=None,
                    help="dsacont root directory, as get_paths(root=...) (default: from the CONTIMG_* environment variables)")
    ap.add_argument("--imager", default=DEFAULT_IMAGER, choices=list(IMAGERS),
                    help="auto: WSClean when the wsclean program is installed, else tclean; 'wsclean' without "
                         "the program also falls back to tclean (with a log line)")
    ap.add_argument("--imsize", type=int, default=None,
                    help="image side in pixels (default: --fov over the cell, rounded up to a 2^a 3^b 5^c size)")
    ap.add_argument("--cell", type=float, dest="cell_arcsec", default=None,
                    help="cell size in arcsec (default: the longest baseline's fringe spacing over "
                         "--cells-per-beam, at most the PSF main lobe's narrowest FWHM over 3.5)")
    ap.add_argument("--fov", type=float, default=DEFAULT_FOV_DEG, help="field of view (image side), degrees")
    ap.add_argument("--cells-per-beam", type=float, default=DEFAULT_CELLS_PER_BEAM,
                    help="cells per fringe spacing of the longest baseline (when --cell is not given)")
    ap.add_argument("--robust", type=float, default=DEFAULT_ROBUST, help="Briggs robust parameter")
    ap.add_argument("--niter", type=int, default=None,
                    help=f"largest number of clean iterations (default: tclean {DEFAULT_NITER}, "
                         f"WSClean {WSCLEAN_NITER}, a safety cap behind its 4-sigma auto-mask)")
    ap.add_argument("--nsigma", type=float, default=DEFAULT_NSIGMA, dest="threshold_nsigma",
                    help="clean down to this many times the residual's robust RMS (tclean nsigma)")
    ap.add_argument("--mask-nsigma", type=float, default=DEFAULT_MASK_NSIGMA,
                    help="tclean: clean the whole image down to this many times the residual's RMS, then "
                         "only within a beam of the components found down to --nsigma (0: one unmasked stage)")
    ap.add_argument("--nmajor", type=int, default=DEFAULT_NMAJOR, help="largest number of major cycles")
    ap.add_argument("--cyclefactor", type=float, default=DEFAULT_CYCLEFACTOR,
                    help="tclean cyclefactor (when a major cycle starts, relative to the PSF sidelobe)")
    ap.add_argument("--datacolumn", default="corrected", choices=["corrected", "data"],
                    help="column to image: corrected (calibrated) or data")
    ap.add_argument("--gridder", default="auto", choices=["auto", "standard", "wproject", "widefield"],
                    help="auto: standard with a slant-SIN WCS unless the residual w-term at the field edge "
                         f"exceeds {WTERM_TOLERANCE_RAD} rad, then wproject")
    ap.add_argument("--deconvolver", default="auto", choices=["auto", "hogbom", "clark"],
                    help="auto = hogbom (exact PSF in the minor cycle)")
    ap.add_argument("--pbcor-limit", type=float, default=PBCOR_LIMIT,
                    help="blank the PB-corrected image where the primary beam is below this")
    ap.add_argument("--no-flatten", action="store_true",
                    help="do not flatten the drifting-beam modulation of bright catalogue sources before tclean")
    ap.add_argument("--thermal-noise", action="store_true",
                    help="also image Stokes Q (dirty) and report its RMS as the thermal noise (two more gridding passes)")
    ap.add_argument("--keep-casa", action="store_true",
                    help="keep the imager's work directory (<out-dir>/<name>.casa/ or <name>.wsclean/) for inspection")
    ap.add_argument("--no-register", action="store_true", help="do not add the image to the products database")
    return ap


def cli(argv: list[str], *, on_result=None) -> int:
    """``dsacont image MS``: image one calibrated MS into the images directory.

    ``on_result(result, args)``: called with :func:`image_ms`'s result and the parsed options
    after a successful run (the ``dsacont image`` command records the image in the products
    database through it: :func:`dsacont.service.cli.cli_image`).
    """
    args = _parser_image().parse_args(argv)
    paths = get_paths(root=args.root)
    paths.ensure("images", "tmp", "state")
    try:
        res = image_ms(args.ms, args.out_dir, imsize=args.imsize, cell_arcsec=args.cell_arcsec, fov_deg=args.fov,
                       robust=args.robust, threshold_nsigma=args.threshold_nsigma,
                       **({"niter": args.niter} if args.niter is not None else {}),
                       datacolumn=args.datacolumn, paths=paths, gridder=args.gridder, deconvolver=args.deconvolver,
                       cells_per_beam=args.cells_per_beam, pbcor_limit=args.pbcor_limit, nmajor=args.nmajor,
                       cyclefactor=args.cyclefactor, flatten=None if args.no_flatten else "auto",
                       mask_nsigma=args.mask_nsigma or None,
                       thermal_noise=args.thermal_noise, keep_casa=args.keep_casa, imager=args.imager)
    except BadInputError as exc:
        print(f"dsacont image: {exc}", file=sys.stderr)
        return 1
    if on_result is not None:
        on_result(res, args)
    qa = res["qa"]
    print(f"{res['pbcor']}\n  rms {1e3 * qa['noise_jy']:.3f} mJy/beam (radiometer {1e3 * qa['radiometer_jy']:.3f}), "
          f"peak {qa['peak_jy']:.4g} Jy/beam, DR {qa['dynamic_range']:.0f}, beam "
          f"{res['beam']['bmaj_arcsec']:.1f}\"x{res['beam']['bmin_arcsec']:.1f}\", {res['timing']['total_s']:.1f} s")
    for c in qa.get("calibrators", []):
        print(f"  {c['name']}: {c['flux_jy']:.4f} Jy (expected {c['expected_jy']:.4f}, ratio {c['ratio']:.4f}), "
              f"offset {c['offset_arcsec']:.2f}\" ({c['offset_beams']:.3f} beam)")
    return 0


def _parser_mosaic() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dsacont mosaic", formatter_class=_Formatter,
        description="Primary-beam-weighted mosaic of tile images (each tile weighted by its own drifting "
                    "beam and noise): writes the mosaic, its noise map, a PNG and a QA JSON.")
    ap.add_argument("images", nargs="*", help="tile FITS (<name>.image.fits or <name>.pbcor.fits)")
    ap.add_argument("-o", "--out", default=None,
                    help="mosaic FITS path (default: <mosaics dir>/<first tile>_<last tile>.mosaic.fits)")
    ap.add_argument("--start", default=None,
                    help="also use the registered images with mid-time >= START (ISO UTC, or MJD; default: no lower bound)")
    ap.add_argument("--end", default=None, help="... and mid-time <= END (ISO UTC, or MJD; default: no upper bound)")
    ap.add_argument("--root", default=None,
                    help="dsacont root directory, as get_paths(root=...) (default: from the CONTIMG_* environment variables)")
    ap.add_argument("--pb-cutoff", type=float, default=DEFAULT_PB_CUTOFF,
                    help="a tile contributes only where its primary beam reaches this")
    ap.add_argument("--projection", default="SIN", choices=["SIN", "TAN"], help="projection of the mosaic grid")
    ap.add_argument("--cell", type=float, dest="cell_arcsec", default=None,
                    help="output cell, arcsec (default: the finest tile cell)")
    ap.add_argument("--no-png", action="store_true", help="do not write the PNG preview")
    ap.add_argument("--no-register", action="store_true", help="do not add the mosaic to the products database")
    return ap


def cli_mosaic(argv: list[str], *, find_images=None, on_result=None) -> int:
    """``dsacont mosaic``: combine tile images (or the images of a time window) into a mosaic.

    ``find_images(paths, start, end)``: the recorded images of a time window (``--start/--end``;
    the products database is the service's, so ``dsacont mosaic`` passes it:
    :func:`dsacont.service.cli.cli_mosaic`). ``on_result(result, args)``: called after a
    successful run.
    """
    args = _parser_mosaic().parse_args(argv)
    paths = get_paths(root=args.root)
    images = list(args.images)
    if args.start or args.end:
        if find_images is None:
            print("dsacont mosaic: --start/--end need the products database (run it as `dsacont mosaic`)",
                  file=sys.stderr)
            return 2
        found = find_images(paths, args.start, args.end)
        if found is None:
            return 1
        images += found
    if not images:
        print("dsacont mosaic: no tile images given (paths, or --start/--end with a products database)", file=sys.stderr)
        return 2
    out = args.out
    if out is None:
        paths.ensure("mosaics")
        first, last = Path(_stem(images[0])).name, Path(_stem(images[-1])).name
        out = str(paths.mosaics / f"{first}_{last}.mosaic.fits")
    try:
        res = make_mosaic(images, out, pb_cutoff=args.pb_cutoff, projection=args.projection,
                          cell_arcsec=args.cell_arcsec, png=not args.no_png)
    except BadInputError as exc:
        print(f"dsacont mosaic: {exc}", file=sys.stderr)
        return 1
    if on_result is not None:
        on_result(res, args)
    qa = res["qa"]
    print(f"{res['mosaic']}  {res['shape'][1]}x{res['shape'][0]}  {res['n_tiles']} tiles  "
          f"min noise {1e3 * qa['noise_min_jy']:.3f} mJy/beam  {res['timing']['total_s']:.1f} s")
    for c in qa.get("calibrators", []):
        if c.get("detected"):
            print(f"  {c['name']}: {c['flux_jy']:.4f} Jy (expected {c['expected_jy']:.4f}), offset {c['offset_arcsec']:.2f}\"")
    return 0
