"""The ``dsacont sources``, ``dsacont lightcurve`` and ``dsacont variables`` commands (options only).

``dsacont sources IMAGE`` runs :func:`dsacont.sources.finder.find_sources` (and, with
``--reference``, :func:`dsacont.sources.crossmatch.crossmatch`).
"""
from __future__ import annotations

import argparse
import json
import sys

from dsacont.errors import BadInputError
from dsacont.jsonio import json_default
from dsacont.sources.crossmatch import DEFAULT_FLUX_LIMIT_JY
from dsacont.sources.finder import DEFAULT_ISLAND_NSIGMA, DEFAULT_NSIGMA
from dsacont.sources.photometry import DEFAULT_DETECT_NSIGMA, DEFAULT_UL_NSIGMA


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """``(default: X)`` after every option with a value default; computed defaults say so in their help."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def _noise_arg(text):
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _parser_sources() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dsacont sources", formatter_class=_Formatter,
        description="Find sources in tile or mosaic FITS images with Aegean, against dsacont's noise map; "
                    "write <image stem>.sources.fits beside each image; optionally cross-match with a reference.")
    ap.add_argument("images", nargs="+", help="FITS images (a mosaic, a tile's .pbcor.fits or .image.fits)")
    ap.add_argument("--noise", default=None,
                    help="noise map FITS or constant noise in Jy/beam (default: the mosaic's .noise.fits, the "
                         "tile's QA noise / pb, else Aegean's own estimate)")
    ap.add_argument("--nsigma", type=float, default=DEFAULT_NSIGMA, help="detection threshold, x local noise")
    ap.add_argument("--island-nsigma", type=float, default=DEFAULT_ISLAND_NSIGMA,
                    help="islands grow down to this many x the local noise")
    ap.add_argument("--reference", default=None,
                    help="cross-match with 'nvss' (shipped subset), 'vla' (calibrator list) or a catalogue file "
                         "(NVSS/FIRST/VLASS-style); default: no cross-match")
    ap.add_argument("--match-arcsec", type=float, default=None,
                    help="cross-match radius, arcsec (default: half the beam's major FWHM)")
    ap.add_argument("--flux-limit", type=float, default=DEFAULT_FLUX_LIMIT_JY,
                    help="completeness over reference sources at least this bright, Jy")
    ap.add_argument("--flux-column", default="int_flux", choices=["int_flux", "peak_flux"],
                    help="catalogue flux compared with the reference (peak: for unresolved sources)")
    ap.add_argument("--json", action="store_true", help="print one JSON object per image instead of a summary")
    return ap


def cli(argv: list[str]) -> int:
    """``dsacont sources``."""
    from dsacont.sources.crossmatch import crossmatch
    from dsacont.sources.finder import catalogue_product, find_sources

    args = _parser_sources().parse_args(argv)
    rc = 0
    for image in args.images:
        try:
            res = find_sources(image, noise=_noise_arg(args.noise), nsigma=args.nsigma,
                               island_nsigma=args.island_nsigma)
            qa = None
            if args.reference:
                qa = crossmatch(res, args.reference, noise=_noise_arg(args.noise), match_arcsec=args.match_arcsec,
                                flux_limit_jy=args.flux_limit, flux_column=args.flux_column)
        except BadInputError as exc:
            print(f"dsacont sources: {exc}", file=sys.stderr)
            rc = 1
            continue
        if args.json:
            print(json.dumps(catalogue_product(res, qa), default=json_default))
            continue
        print(f"{res['path']}: {res['n_sources']} sources >= {res['nsigma']:g} sigma "
              f"(noise: {res['noise_source']}; {res['elapsed_s']:.1f} s)")
        if qa:
            print(f"  vs {qa['reference']}: {qa['n_matched']}/{qa['n_reference']} matched within "
                  f"{qa['match_arcsec']:.1f}\"; flux ratio {qa['flux_ratio_median']:.3f} +- "
                  f"{qa['flux_ratio_scatter']:.3f}; offsets RA {qa['ra_offset_arcsec']:+.2f}\" "
                  f"Dec {qa['dec_offset_arcsec']:+.2f}\"; completeness >= {qa['flux_limit_jy'] * 1e3:g} mJy "
                  f"{qa['completeness']:.2f} ({qa['n_found_above_limit']}/{qa['n_reference_above_limit']}); "
                  f"gates {qa['gates']}")
    return rc


def _add_image_source_options(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--images", nargs="+", default=None,
                    help="FITS images to measure (tiles' .pbcor.fits or mosaics); default: the products database's")
    ap.add_argument("--db", default=None,
                    help="the products SQLite file, opened read-only (default: products.sqlite3 in the state "
                         "directory of --root/--state or of the CONTIMG_* variables)")
    ap.add_argument("--root", default=None, help="dsacont root directory, as get_paths(root=...)")
    ap.add_argument("--state", default=None, help="directory of the SQLite state databases")
    ap.add_argument("--kind", default="images", choices=["images", "mosaics", "all"],
                    help="which recorded products to measure: tiles, mosaics or both")
    ap.add_argument("--start", default=None, help="earliest product mid-time (ISO UTC or MJD; default: all)")
    ap.add_argument("--end", default=None, help="latest product mid-time (ISO UTC or MJD; default: all)")
    ap.add_argument("--detect-nsigma", type=float, default=DEFAULT_DETECT_NSIGMA,
                    help="a measurement is a detection at flux / error >= this")
    ap.add_argument("--ul-nsigma", type=float, default=DEFAULT_UL_NSIGMA,
                    help="upper limit = max(flux, 0) + this x error for non-detections")
    ap.add_argument("--remeasure", action="store_true",
                    help="measure every image anew instead of reading the forced photometry the pipeline stored in "
                         "the products database (default: the stored rows where they cover the source)")


def _time_arg(text):
    if text is None:
        return None
    try:
        return float(text)
    except ValueError:
        return text


def _image_kwargs(args) -> dict:
    kw = {"kind": args.kind, "start": _time_arg(args.start), "end": _time_arg(args.end),
          "detect_nsigma": args.detect_nsigma, "ul_nsigma": args.ul_nsigma}
    if args.images:
        return dict(kw, images=args.images)
    kw["use_stored"] = not args.remeasure
    if args.db:
        return dict(kw, products=args.db)
    from dsacont.config import get_paths

    over = {"state": args.state} if args.state else {}
    return dict(kw, products=get_paths(root=args.root, **over).products_db)


def _parser_lightcurve() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="dsacont lightcurve", formatter_class=_Formatter,
        description="Forced photometry of one source on every recorded tile (or mosaic), or on the given "
                    "images: a table, optionally CSV and a PNG plot. From the products database the photometry the "
                    "pipeline stored is read (NVSS sources and VLA calibrators, or its catalogue's); other "
                    "positions, and images never measured, are measured on the images.")
    ap.add_argument("source", help="NAME (a VLA calibrator, or a source of the shipped NVSS subset) or RA,DEC "
                                   "(degrees, or sexagesimal hh:mm:ss,+dd:mm:ss)")
    _add_image_source_options(ap)
    ap.add_argument("--csv", default=None, help="write the light curve to this CSV file")
    ap.add_argument("--plot", default=None, help="write a PNG plot of the light curve to this file")
    return ap


def cli_lightcurve(argv: list[str]) -> int:
    """``dsacont lightcurve``."""
    from dsacont.sources.lightcurve import light_curve, plot_light_curve

    args = _parser_lightcurve().parse_args(argv)
    try:
        lc = light_curve(args.source, **_image_kwargs(args))
    except (BadInputError, ValueError) as exc:
        print(f"dsacont lightcurve: {exc}", file=sys.stderr)
        return 1
    if lc.empty:
        print(f"dsacont lightcurve: no image covers {args.source}", file=sys.stderr)
        return 1
    print(f"{lc['name'].iloc[0]}  RA {lc['ra_deg'].iloc[0]:.5f}  Dec {lc['dec_deg'].iloc[0]:+.5f}  "
          f"({len(lc)} measurements)")
    print(f"{'mjd':>12} {'flux_mJy':>10} {'err_mJy':>9} {'snr':>7}  {'ul_mJy':>8}  image")
    for r in lc.itertuples():
        ul = f"{1e3 * r.upper_limit_jy:8.3f}" if not r.detected else " " * 8
        print(f"{r.mjd:12.5f} {1e3 * r.flux_jy:10.3f} {1e3 * r.flux_err_jy:9.3f} {r.snr:7.1f}  {ul}  {r.image}")
    if args.csv:
        from dsacont.io.atomic import atomic_path

        with atomic_path(args.csv) as tmp:
            lc.to_csv(tmp, index=False)
        print(f"wrote {args.csv}")
    if args.plot:
        plot_light_curve(lc, args.plot)
        print(f"wrote {args.plot}")
    return 0


def _parser_variables() -> argparse.ArgumentParser:
    from dsacont.sources.variability import DEFAULT_DIP_NSIGMA, DEFAULT_P_MAX, DEFAULT_V_MIN

    ap = argparse.ArgumentParser(
        prog="dsacont variables", formatter_class=_Formatter,
        description="Light curves of every reference source on the recorded tiles (or mosaics, or the given "
                    "images), variability metrics (eta, V, max deviation), ESE-like dips; candidates ranked.")
    ap.add_argument("--reference", default="nvss",
                    help="the sources to follow: 'nvss' (shipped subset), 'vla' (calibrators), or a catalogue file "
                         "(NVSS/FIRST/VLASS-style, or a dsacont .sources.fits)")
    _add_image_source_options(ap)
    ap.add_argument("--p-max", type=float, default=DEFAULT_P_MAX,
                    help="a candidate's light curve has at most this chance of coming from a steady source")
    ap.add_argument("--v-min", type=float, default=DEFAULT_V_MIN, help="a candidate's modulation index V is at least this")
    ap.add_argument("--frac-sys", type=float, default=0.0,
                    help="fraction of each flux added in quadrature to its error (flux-scale scatter)")
    ap.add_argument("--dip-nsigma", type=float, default=DEFAULT_DIP_NSIGMA, help="least significance of an ESE-like dip")
    ap.add_argument("--min-points", type=int, default=3, help="least number of measurements of a source")
    ap.add_argument("--every-measurement", action="store_true",
                    help="use every tile's measurement (default: one per pass through the beam, the tile where "
                         "the source is nearest the beam centre, so tiles are compared with the same tile each day)")
    ap.add_argument("--top", type=int, default=20, help="print at most this many candidates")
    ap.add_argument("--csv", default=None, help="write every source's metrics to this CSV file")
    ap.add_argument("--plots", default=None, help="write each printed candidate's light curve as a PNG in this directory")
    return ap


def cli_variables(argv: list[str]) -> int:
    """``dsacont variables``."""
    import os
    import re

    from dsacont.sources.crossmatch import reference_sources
    from dsacont.sources.lightcurve import light_curves, plot_light_curve
    from dsacont.sources.variability import rank_variables

    args = _parser_variables().parse_args(argv)
    try:
        refs = reference_sources(args.reference)
        lc = light_curves(refs, **_image_kwargs(args))
    except (BadInputError, ValueError) as exc:
        print(f"dsacont variables: {exc}", file=sys.stderr)
        return 1
    m = rank_variables(lc, p_max=args.p_max, v_min=args.v_min, frac_sys=args.frac_sys, dip_nsigma=args.dip_nsigma,
                       min_points=args.min_points, per_pass="all" if args.every_measurement else "best")
    cand = m[m["candidate"]] if not m.empty else m
    print(f"{len(m)} sources with >= {args.min_points} measurements, {len(cand)} candidates "
          f"({int(cand['dip'].sum()) if len(cand) else 0} ESE-like dips)")
    if len(cand):
        print(f"{'#':>3} {'name':<24} {'kind':<11} {'n':>3} {'mean_mJy':>9} {'eta':>9} {'V':>6} {'maxdev':>7}  dip")
    for rank, r in enumerate(cand.head(args.top).itertuples(), 1):
        dip = f"t0 {r.dip_t0_mjd:.1f} w {r.dip_width_days:.1f} d depth {r.dip_depth:.2f}" if r.dip else ""
        print(f"{rank:3d} {r.name:<24} {r.kind:<11} {r.n:3d} {1e3 * r.mean_flux_jy:9.2f} {r.eta:9.1f} {r.V:6.3f} "
              f"{r.max_dev_sigma:+7.1f}  {dip}")
        if args.plots:
            os.makedirs(args.plots, exist_ok=True)
            safe = re.sub(r"[^A-Za-z0-9+.\-_]", "_", str(r.name))
            plot_light_curve(lc[lc["name"] == r.name], os.path.join(args.plots, f"{rank:03d}_{safe}.png"),
                             title=f"{r.name} ({r.kind}, eta {r.eta:.0f}, V {r.V:.2f})")
    if args.csv:
        from dsacont.io.atomic import atomic_path

        with atomic_path(args.csv) as tmp:
            m.to_csv(tmp, index=False)
        print(f"wrote {args.csv}")
    return 0
