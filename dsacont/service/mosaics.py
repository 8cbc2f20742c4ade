"""The mosaic trigger: the service's on-complete hook builds every hour the new tiles allow.

Mosaic policy (documented for the operators): tiles are taken in time order; a mosaic is a run
of 12 consecutive tiles (consecutive = start times 250-370 s apart, i.e. no missing group) that
starts at the earliest tile not yet in a mosaic. The first mosaic after the service starts
therefore begins with the first tile it images: replaying the 60 minutes around a transit gives
the mosaic centred on that transit, with no group chosen by hand.

A tile the image QA gates (:func:`dsacont.imaging.qa.tile_gates`) or the cross-match gates
(:func:`dsacont.sources.crossmatch.tile_crossmatch_gates`) reject stays out, with its reason. Each
mosaic gets its source catalogue and forced photometry (:mod:`dsacont.service.catalogues`), on
the cores the service gives the hook.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from dsacont.config import Paths
from dsacont.imaging.mosaic import make_mosaic
from dsacont.imaging.qa import tile_gates
from dsacont.service.catalogues import catalogue_of, photometry_of
from dsacont.service.options import (
    GROUP_CADENCE_S,
    WORK_DIRS,
    PipelineOptions,
    known_of,
    options_of,
    paths_of,
    threads_of,
)
from dsacont.sources.crossmatch import tile_crossmatch_gates

log = logging.getLogger(__name__)


def maybe_mosaic(paths: Paths, images, options: PipelineOptions | None = None, cores: int = 1) -> list[dict]:
    """Build every mosaic that a run of ``tiles_per_mosaic`` consecutive new tiles makes possible.

    Parameters
    ----------
    paths : Paths
        Mosaics go to ``paths.mosaics``.
    images : list of dict
        Products rows of the images not yet in any mosaic (``known["unmosaicked_images"]``).
    cores : int
        Processes the mosaic's source finding may use (the service gives the hook the CPUs no
        group is using: ``context.threads``).

    Returns
    -------
    list of dict
        ``make_mosaic`` results, each with ``files`` and ``product`` (the products-database row
        to record: path, input image ids, files, centre, QA with ``mosaic_s`` and
        ``excluded_tiles``, the tiles :func:`~dsacont.imaging.qa.tile_gates` or the cross-match
        gates (:func:`~dsacont.sources.crossmatch.tile_crossmatch_gates`, on ``qa["crossmatch"]``)
        kept out, with the reason), ``rejected_images`` (their status updates), ``catalogue``
        and ``photometry`` (the mosaic's forced photometry record, with ``options.photometry``).
        A run whose every tile is kept out gives ``{"files": {}, "product": None,
        "rejected_images": [...]}``.
    """
    options = options or PipelineOptions()
    n = options.tiles_per_mosaic
    fresh = sorted(images, key=lambda r: r["start_mjd"] or 0.0)
    made = []
    i = 0
    while i + n <= len(fresh):
        run = fresh[i:i + n]
        gaps = np.diff([r["start_mjd"] * 86400 for r in run])
        bad = np.nonzero((gaps < 0.8 * GROUP_CADENCE_S) | (gaps > 1.2 * GROUP_CADENCE_S))[0]
        if bad.size:
            i += int(bad[0]) + 1  # a run must not straddle a gap: start after it
            continue
        name = f"mosaic_{run[0]['start_time'][:19]}_{n}tiles"
        out = paths.mosaics / f"{name}.fits"
        t0 = time.perf_counter()
        # image QA gates (imaging.qa.tile_gates) and the cross-match's: a bad tile stays out, its
        # reason goes with the mosaic
        excluded = [{"image_id": r["id"], "path": r["path"], "reason": "; ".join(why)}
                    for r in run if (why := tile_gates(r.get("qa") or {})
                                     + tile_crossmatch_gates((r.get("qa") or {}).get("crossmatch")))]
        kept = [r for r in run if r["id"] not in {e["image_id"] for e in excluded}]
        rejected = [{"path": e["path"], "status": "rejected", "qa": {"rejected": e["reason"]}} for e in excluded]
        for e in excluded:
            log.warning("tile %s kept out of the mosaic: %s", e["path"], e["reason"])
        if not kept:  # nothing to mosaic: the tiles are still recorded as rejected
            made.append({"files": {}, "product": None, "rejected_images": rejected})
            i += n
            continue
        res = make_mosaic([r["path"] for r in kept], out, **options.mosaic)
        files = {k: res[k] for k in ("mosaic", "noise", "png", "qa_json") if res.get(k)}
        res["files"] = files
        res["product"] = {"path": files.get("mosaic", str(out)), "images": [r["id"] for r in kept], "files": files,
                          "ra_deg": res.get("ra_deg"), "dec_deg": res.get("dec_deg"),
                          "qa": {**res.get("qa", {}), "mosaic_s": round(time.perf_counter() - t0, 2),
                                 "excluded_tiles": excluded}}
        res["rejected_images"] = rejected
        log.info("mosaic of %d tiles from %s -> %s", n, run[0]["start_time"], out)
        if options.catalogue_tiles and files.get("mosaic"):
            res["catalogue"] = catalogue_of(files["mosaic"], options, cores=cores)
        if options.photometry and files.get("mosaic"):
            ends = [r.get("end_mjd") or r["start_mjd"] for r in kept]
            res["photometry"] = photometry_of(files["mosaic"], "mosaic", options,
                                              0.5 * (min(r["start_mjd"] for r in kept) + max(ends)))
        made.append(res)
        i += n
    return made


def on_group_complete(group, result, context=None) -> dict:
    """Build the mosaics the new images allow (the service's on-complete hook; also at start-up).

    Builds the mosaics that the images of ``context.known["unmosaicked_images"]`` allow; returns
    ``{"mosaics": [paths], "mosaic_s": s, "products": {"mosaics": [rows to record]}}``.
    """
    paths = paths_of(context).ensure(*WORK_DIRS)
    t = time.perf_counter()
    made = maybe_mosaic(paths, known_of(context).get("unmosaicked_images") or [], options_of(context),
                        cores=threads_of(context) or 1)
    return {"mosaics": [m.get("files", {}).get("mosaic") for m in made if m["product"]],
            "mosaic_s": round(time.perf_counter() - t, 2),
            "products": {"mosaics": [m["product"] for m in made if m["product"]],
                         "images_update": [u for m in made for u in m.get("rejected_images", [])],
                         "catalogues": [m["catalogue"]["product"] for m in made if m.get("catalogue")],
                         "photometry": [m["photometry"] for m in made if m.get("photometry")]}}
