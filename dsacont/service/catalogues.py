"""The science by-products of an image, tile or mosaic: its source catalogue and its forced photometry.

Both are by-products: a failure is logged and returns None, and never fails a group or a mosaic.
"""
from __future__ import annotations

import logging
import time

from dsacont.service.options import PipelineOptions
from dsacont.sources import catalogue_product, find_sources

# the function from its module: once dsacont.sources.crossmatch has been imported anywhere in the process, the
# package's attribute 'crossmatch' is that module, and `from dsacont.sources import crossmatch` would give it
from dsacont.sources.crossmatch import crossmatch
from dsacont.sources.photometry import reference_photometry

log = logging.getLogger(__name__)


def catalogue_of(image: str, options: PipelineOptions, cores: int = 1) -> dict | None:
    """:func:`dsacont.sources.find_sources` on ``image`` (BANE and Aegean on ``cores`` processes)
    and the cross-match with the reference.

    Returns find_sources's result with ``qa`` (the cross-match, ``catalogue_s``) and ``product``
    (the record for the products database); None when the finder fails (logged: a catalogue is a
    by-product and never fails a group or a mosaic).
    """
    t0 = time.perf_counter()
    try:
        res = find_sources(image, cores=cores)
        qa = crossmatch(res, reference=options.sky_catalogue or "nvss")
    except Exception as exc:  # noqa: BLE001 - a by-product: never fails the group
        log.warning("no source catalogue of %s (%s: %s)", image, type(exc).__name__, exc)
        return None
    res["qa"] = {k: v for k, v in qa.items() if k != "matches"}
    res["qa"]["catalogue_s"] = round(time.perf_counter() - t0, 2)
    res["product"] = catalogue_product(res, res["qa"])
    return res


def photometry_of(image: str, kind: str, options: PipelineOptions, mjd: float | None = None) -> dict | None:
    """:func:`dsacont.sources.photometry.reference_photometry` of ``image`` (the record for the
    products database, with ``photometry_s``); None when it fails (logged: a by-product)."""
    t0 = time.perf_counter()
    try:
        rec = reference_photometry(image, kind, reference=options.photometry_catalogue or options.sky_catalogue,
                                   mjd=mjd)
    except Exception as exc:  # noqa: BLE001 - a by-product: never fails the group or the mosaic
        log.warning("no forced photometry of %s (%s: %s)", image, type(exc).__name__, exc)
        return None
    rec["photometry_s"] = round(time.perf_counter() - t0, 2)
    return rec
