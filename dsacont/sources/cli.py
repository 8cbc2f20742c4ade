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
                                flux_limit_jy=args.flux_limit)
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
