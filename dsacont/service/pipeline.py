"""The per-group chain the streaming service runs on a worker: files -> MS -> calibrated -> image -> mosaic.

``process_group(record, context)`` takes one queued group through every stage, in one
direction. It runs on a Dask worker and never opens a state database: what the databases know
about the group comes with the task (``context.known``, read by the service:
:func:`dsacont.service.state.known_for_group`), and what it makes goes back in its result
(``result["products"]``, recorded by the service: :func:`dsacont.service.state.record_products`).
Each stage is idempotent (a product already made and registered is not made again), so a group
that is retried after a crash or after waiting for calibration resumes where it stopped:

1. **convert** (with RFI flags computed in the same Dask graph): ``<stage>/ms/<timestamp>.ms``,
   written elsewhere and moved into place atomically;
2. **calibrate**: if a calibrator transits inside this group and no valid table solved on this MS
   came with the task, solve bandpass and gains on it; then take the valid bandpass and gain
   tables for the MS's mid-time (two-sided windows; the registry's lookup rule applied to the
   tables sent with the task plus those just solved) and apply them. If none is valid yet, raise
   :class:`dsacont.errors.CalibrationUnavailable` (carrying the products made so far): the service
   records them and puts the group back to wait. A group is never imaged uncalibrated. Under the
   streaming service a group that solved a calibrator hands its tables over here (the service
   records them, waking the groups that wait for them, and requeues it for its image);
3. **image**: WSClean or tclean of CORRECTED_DATA, primary-beam corrected FITS, with QA;
4. **mosaic**: after each completed group the service runs the on-complete hook
   (:func:`dsacont.service.mosaics.on_group_complete`), which builds every hour of 12 consecutive
   tiles the new images allow.

The options of the chain are :class:`dsacont.service.options.PipelineOptions`; the tile's
catalogue and photometry are made by :mod:`dsacont.service.catalogues`.
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
from astropy.time import Time

from dsacont import calibration
from dsacont.calibration.field import solve_field_gains
from dsacont.calibration.select import choose_tables, origin_of, same_strip
from dsacont.calibration.skymodel import SkySource, rows_of_sources, sources_from_rows
from dsacont.calibrators import get_calibrator
from dsacont.config import Paths
from dsacont.convert import convert_group
from dsacont.errors import CalibrationUnavailable
from dsacont.imaging import image_ms
from dsacont.imaging.flatten import DEFAULT_MIN_APPARENT_JY as FLATTEN_MIN_APPARENT_JY
from dsacont.imaging.flatten import bright_among as flatten_bright_among
from dsacont.imaging.flatten import bright_in_tile
from dsacont.imaging.tclean import image_product
from dsacont.io.fits import add_cards, read_header
from dsacont.io.groups import Group, cluster_files
from dsacont.io.ms import FlattenInterrupted
from dsacont.io.uvh5 import open_group
from dsacont.service.catalogues import catalogue_of, photometry_of
from dsacont.service.options import (  # noqa: F401 - PipelineOptions and options_from: also the pipeline's API
    WORK_DIRS,
    PipelineOptions,
    known_of,
    options_from,
    options_of,
    paths_of,
    takes_handoff,
    threads_of,
)
from dsacont.service.state import records_from_entries
from dsacont.sources import clean_fit
from dsacont.sources.crossmatch import TILE_QA_KEYS

log = logging.getLogger(__name__)

def _group_of(record):
    """(timestamp, 16 paths) from a queue record, a Group, or a list of paths."""
    if hasattr(record, "timestamp") and hasattr(record, "paths"):
        return record.timestamp, list(record.paths)
    groups = cluster_files([p for p in record if p is not None])
    g = groups[0] if groups else Group("unknown")
    return g.timestamp, g.paths


def _ms_times(info):
    """Return (start, end, mid) of an MS's TIME column as astropy Times (UTC).

    ``info.times_s``: seconds since MJD 0, of :func:`dsacont.calibration.read_ms_info`.
    """
    t0, t1 = float(info.times_s.min()), float(info.times_s.max())
    return (Time(t0 / 86400, format="mjd", scale="utc"), Time(t1 / 86400, format="mjd", scale="utc"),
            Time((t0 + t1) / 2 / 86400, format="mjd", scale="utc"))


def _pointing_dec_deg(info, mid) -> float:
    """Return the pointing declination, degrees, from the MS's ICRS phase centre.

    Apparent, HADEC frame (the files' phase_center_dec); the phase centre is the meridian at
    ``mid``.
    """
    d = info.field_dirs  # (nfield, 2) radians
    ra0, dec0 = float(np.median(d[:, 0])), float(np.median(d[:, 1]))
    return float(np.degrees(calibration.pointing_dec_from_phase_centre(ra0, dec0, mid.mjd)[0]))


def _ms_row(known: dict, ms: Path) -> dict | None:
    return next((r for r in (known.get("products") or {}).get("ms", []) if r["path"] == str(ms)), None)


def stage_convert(timestamp, files, paths: Paths, known: dict, made: dict) -> Path:
    """Convert (and flag) the group unless its MS is already in place and registered.

    The new MS goes into ``made["ms"]``.
    """
    ms = paths.ms / f"{timestamp}.ms"
    if ms.exists() and _ms_row(known, ms) is not None:
        log.info("%s: MS already converted (%s)", timestamp, ms)
        return ms
    t = time.perf_counter()
    # the service's incomplete-group policy hands over >= 12 subbands, None for the rest:
    # those are written flagged (loader allow_missing)
    ds = open_group(files, allow_missing=True)
    out = Path(convert_group(ds, ms, paths=paths))
    start, end, _ = _ms_times(calibration.read_ms_info(out))
    qa = {"convert_s": round(time.perf_counter() - t, 2)}
    summary = out.parent / f"{timestamp}.flags.json"
    if summary.exists():  # written by convert_group beside the MS, with the waterfall PNG
        flags = json.loads(summary.read_text())
        qa.update(flagged_fraction=flags.get("overall"), flag_summary=str(summary),
                  waterfall=str(out.parent / f"{timestamp}.waterfall.png"))
    try:  # dead receptors and bad antennas, from the data: flagged, recorded per group by the service
        health = calibration.assess_and_flag(out, group_timestamp=timestamp)
        health.pop("health")
        made["antenna_health"], qa["antenna_health"] = health, health["summary"]
    except Exception as exc:  # never lose a group to its health check
        log.warning("%s: antenna health not assessed: %s", timestamp, exc)
    made["ms"] = {"path": str(out), "start": start.mjd, "end": end.mjd, "group_timestamp": timestamp,
                  "inputs": [f for f in files if f], "status": "converted", "qa": qa}
    log.info("%s: converted in %.1f s -> %s", timestamp, time.perf_counter() - t, out)
    return out


def _choose(ms, mid, dec_deg, candidates, options: PipelineOptions, field_gains: bool):
    """The calibration chain for the MS (:func:`dsacont.calibration.select.choose_tables`).

    Raises CalibrationUnavailable when no calibrator pair of the strip is within reach.
    """
    choice = choose_tables(candidates, mid.mjd, dec_deg, dec_tolerance_deg=options.cal_dec_tolerance_deg,
                           transfer_h=options.cal_transfer_h, borrow_days=options.bandpass_borrow_days,
                           field_gains=field_gains)
    if choice is None:
        strip = [r for r in candidates if same_strip(r, dec_deg, options.cal_dec_tolerance_deg)]
        raise CalibrationUnavailable(
            f"no calibrator bandpass and gains of the declination strip {dec_deg:+.2f} deg within "
            f"{options.bandpass_borrow_days:g} days of {mid.isot} ({len(strip)} of the {len(candidates)} "
            f"registered table(s) near this group are of this strip) (for {ms})")
    return choice


def _sky_models(known: dict, options: PipelineOptions) -> list[tuple[str | None, object]]:
    """The field solve's sky models in the order to try: (name, catalogue for ``solve_field_gains``).

    ``strip``: the model of earlier tiles the service sent (``known["sky_model"]``, see
    :meth:`dsacont.service.sky.SkyStore.model_near`), named with its provenance; ``catalogue``:
    ``options.sky_catalogue`` or the shipped NVSS subset. Always at least one (the catalogue).
    """
    out: list[tuple[str | None, object]] = []
    for kind in [k.strip() for k in options.sky_models.split(",") if k.strip()]:
        if kind == "strip":
            sources = _strip_sources(known)
            if sources:
                prov = (known.get("sky_model") or {}).get("provenance") or {}
                name = (f"dsacont strip model ({len(sources)} sources from {prov.get('images', '?')} tile(s), "
                        f"{prov.get('days', '?')} day(s))")
                out.append((name, sources))
        elif kind == "catalogue":
            out.append((None, options.sky_catalogue))
        else:
            raise ValueError(f"unknown sky model {kind!r} in sky_models={options.sky_models!r} "
                             "(known: strip, catalogue)")
    return out or [(None, options.sky_catalogue)]


def stage_calibrate(timestamp, ms: Path, paths: Paths, known: dict, made: dict, options: PipelineOptions) -> dict:
    """Calibrate the group: solve on a calibrator transit, else correct the gains on the field; apply.

    1. A calibrator transits in the group and no table from this MS came with the task: solve B
       and G on it (windows the group lacks are filled from earlier tables of the strip).
    2. Choose the calibrator pair [B, G] of the strip (:func:`_choose`: within the windows, or
       transferred, or borrowed).
    3. Unless this group is the calibrator's own, solve a field gain correction on top of the pair
       against the sky model (``options.field_gains``), QA-gated; apply [B, G, F], or the pair
       alone when the correction is rejected.

    Tables solved go into ``made["calibration"]`` (for the registry), the applied ones with how
    each was obtained into ``made["caltables"]``, and the MS's new status and calibration summary
    into ``made["ms_update"]``.
    """
    row = _ms_row(known, ms) or made.get("ms")
    if row is not None and row.get("status") == "calibrated":
        return {"applied": "already"}
    info = calibration.read_ms_info(ms)
    start, end, mid = _ms_times(info)
    candidates = list(known.get("calibration") or [])
    solved = donors = None
    dec_deg = _pointing_dec_deg(info, mid)
    transits = calibration.find_calibrator_transits(
        start, end, dec_deg, min_flux_jy=options.cal_min_flux_jy, min_pb=options.cal_min_pb
    )
    if options.calibrator:
        transits = [t for t in transits if t.name == options.calibrator]
    timing = {}
    if transits:
        t0 = time.perf_counter()
        existing = [r for r in candidates if r.status == "valid" and r.source_ms == str(ms)]
        if not existing:
            cal = transits[0].name
            log.info("%s: calibrator %s transits in this group: solving", timestamp, cal)
            donors = {k: [r.path for r in sorted(
                (r for r in candidates if r.kind == k and r.status == "valid" and origin_of(r) == "transit"
                 and same_strip(r, dec_deg, options.cal_dec_tolerance_deg)),
                key=lambda r: abs(r.solve_mjd - mid.mjd))] for k in ("B", "G")}
            sky = _calibrator_sky(_strip_sources(known), cal) if options.calibrator_sky else []
            solved = calibration.solve_calibration(str(ms), cal, paths=paths, registry=False, fill_from=donors,
                                                   sky=sky or None)
            solved["field_sources"] = len(sky)
            timing["solve_s"] = round(time.perf_counter() - t0, 2)
            made["calibration"] = list(solved["registry_entries"])
            candidates += records_from_entries(solved["registry_entries"])
    t0 = time.perf_counter()
    choice = _choose(ms, mid, dec_deg, candidates, options, field_gains=False)
    chain = choice.describe()
    own_transit = any(r.source_ms == str(ms) for r in choice.tables)
    field = None
    if options.field_gains and not own_transit:
        g = choice.tables[1]
        refant = (g.metrics or {}).get("refant")
        tried = []
        for name, catalogue in _sky_models(known, options):
            # the strip model is what the telescope saw: no calibrator is added to it
            field = solve_field_gains(str(ms), choice.paths, paths=paths, refant=refant,
                                      catalogue=catalogue, sky_name=name, add_calibrators=name is None)
            if field["status"] == "valid":
                break
            tried.append({"sky_model": field["sky"], "reason": field["reason"]})
        if tried and field["status"] == "valid":
            field["sky"]["rejected_before"] = tried
        entry = dict(field["entry"])
        if g.key is not None:
            entry["depends_on"] = g.key
        else:
            entry["depends_on_id"] = g.id
        made.setdefault("calibration", []).append(entry)
        applied = field["applied"]
        timing["field_solve_s"] = round(time.perf_counter() - t0, 2)
        if field["status"] == "valid":
            chain.append({"path": field["path"], "kind": "G", "key": "F", "registry_id": None, "how": "field",
                          "origin": "field", "age_h": 0.0, "calibrator": None, "dec_deg": entry["dec_deg"],
                          "sky_model": field["sky"]})
        else:
            chain[1]["field_solve_rejected"] = field["reason"]
        for c in chain:
            c["model_flux_ratio"] = field["qa"].get("model_flux_ratio_after" if field["status"] == "valid"
                                                    else "model_flux_ratio_before")
    else:
        applied = calibration.apply_calibration(str(ms), tables=choice.paths)
    timing["apply_s"] = round(time.perf_counter() - t0 - timing.get("field_solve_s", 0.0), 2)
    if applied.get("spw_flagged_unsolved"):
        for c in chain:
            c["spw_flagged_unsolved"] = applied["spw_flagged_unsolved"]
    for c in chain:  # a borrowed table is checked on the group it is applied to
        c["applied_flagged_fraction"] = round(float(applied.get("flagged_fraction", float("nan"))), 4)
    made["caltables"] = {"ms": str(ms), "tables": [
        {"path": c["path"], "kind": c["kind"], "registry_id": c.get("registry_id"), "key": c.get("key"),
         "how": c["how"], "detail": {k: v for k, v in c.items() if k not in ("path", "kind", "registry_id", "key", "how")}}
        for c in chain]}
    summary = [f"{c['kind']}:{c['how']}" for c in chain]
    made["ms_update"] = {"path": str(ms), "status": "calibrated",
                         "qa": {**(row or {}).get("qa", {}), **timing, "calibration": summary,
                                "calibration_chain": chain}}
    log.info("%s: calibrated with %s", timestamp, ", ".join(f"{c['kind']} {Path(c['path']).name} ({c['how']})"
                                                            for c in chain))
    return {"solved": solved, "applied": applied, "field": field, "chain": chain, "donors": donors}


def _strip_sources(known: dict) -> list:
    """The strip model the service sent (``known["sky_model"]``) as SkySources, brightest first."""
    return sources_from_rows((known.get("sky_model") or {}).get("sources"))


def _calibrator_sky(sources: list, calibrator: str, exclude_arcsec: float = 60.0) -> list:
    """The field sources of a calibrator's solve: ``sources`` without the calibrator itself
    (the solve puts in its catalogue model; a strip-model source within ``exclude_arcsec`` is it)."""
    cal = get_calibrator(calibrator)
    itself = {id(s) for s in calibration.sources_near(sources, cal.ra_deg, cal.dec_deg, exclude_arcsec / 3600.0)}
    return [s for s in sources if id(s) not in itself]


def stage_resolve_with_field(timestamp, ms: Path, cal: dict, paths: Paths, made: dict) -> list:
    """On a strip's first day: solve the calibrator again against its own tile's sources.

    ``cal`` is :func:`stage_calibrate`'s result for a group that solved its calibrator transit
    with no field model (``solved["field_sources"] == 0``); ``made["detections"]`` the tile's
    sources (:func:`stage_catalogue`). The tables are solved again with those sources (the
    calibrator excluded) beside the calibrator, replace the first ones (same paths, not yet
    registered), and are applied; the image, catalogue and photometry of the first pass are
    dropped from ``made`` (the caller images again, flattening the bright ones among these
    sources as it would the strip model's). Returns the sources (empty: the tile found none, nothing
    done).
    """
    solved = cal["solved"]
    rows = (made.get("detections") or {}).get("rows") or []
    name = str(solved["calibrator"])
    sky = _calibrator_sky([SkySource(f"{timestamp}#{i}", r[0], r[1], r[2]) for i, r in enumerate(rows)], name)
    if not sky:
        return []
    t0 = time.perf_counter()
    log.info("%s: first day of the strip: solving %s again with the %d sources of its tile (%.2f Jy)",
             timestamp, name, len(sky), sum(s.flux_jy for s in sky))
    again = calibration.solve_calibration(str(ms), name, paths=paths, registry=False, sky=sky,
                                          fill_from=cal.get("donors"))
    made["calibration"] = list(again["registry_entries"])
    calibration.apply_calibration(str(ms), tables=[e["path"] for e in made["calibration"]])
    for key in ("images", "catalogues", "photometry"):
        made.pop(key, None)
    made.pop("detections", None)
    qa = made["ms_update"]["qa"]
    qa["solve_s"] = round(qa.get("solve_s", 0.0) + time.perf_counter() - t0, 2)
    qa["calibrator_field_sources"] = {"first_solve": 0, "second_solve": int(again["metrics"]["model"]["n_sky_sources"]),
                                      "own_tile": len(sky), "from": "own tile"}
    log.info("%s: calibrator tables solved again (%s) in %.1f s", timestamp,
             ", ".join(sorted(e["kind"] for e in made["calibration"])), time.perf_counter() - t0)
    return sky


def _strip_bright(known: dict, ms: Path, min_apparent_jy: float = FLATTEN_MIN_APPARENT_JY) -> list:
    """The strip model's sources bright enough in this tile to flatten."""
    sources = _strip_sources(known)
    return flatten_bright_among(calibration.read_ms_info(ms), sources, min_apparent_jy=min_apparent_jy) \
        if sources else []


def _flatten_own_bright(timestamp, ms: Path, res: dict, paths: Paths, imaging: dict, options: PipelineOptions) -> dict:
    """Image the tile again when its own image shows bright sources nothing flattened.

    With ``options.flatten_strip`` (and no ``flatten`` of the user's): the peaks of the restored
    tile of ``flatten_strip_min_jy`` (apparent) or more that were not flattened
    (:func:`dsacont.imaging.flatten.bright_in_tile`: sources the strip model does not hold yet)
    are flattened with the rest in a second imaging pass. On the demo hour the first tile of the
    day left 20 false detections around three 0.5-0.7 Jy sources at its western edge.
    """
    if not options.flatten_strip or "flatten" in options.imaging or not res.get("pb"):
        return res
    done = list((res.get("qa") or {}).get("flattened") or []) + list((res.get("qa") or {}).get("flatten_skipped") or [])
    done = [d for d in done if "ra_deg" in d] + [s for s in imaging.get("flatten") or [] if hasattr(s, "ra_deg")]
    new = bright_in_tile(res["image"], res["pb"], done, min_apparent_jy=options.flatten_strip_min_jy)
    if not new:
        return res
    log.info("%s: %d bright source(s) of the tile not in the strip model (%s): imaging again with them flattened",
             timestamp, len(new), ", ".join(f"{s.name} {s.flux_jy:.2f} Jy" for s in new[:5]))
    first = res.get("timing", {}).get("total_s")
    again = dict(imaging, flatten=["auto", *[s for s in imaging.get("flatten") or [] if s != "auto"], *new])
    res = image_ms(str(ms), paths=paths, **again)
    res.setdefault("qa", {})["flattened_own"] = [s.name for s in new]
    if first is not None:
        res["qa"]["first_pass_s"] = round(first, 2)
    return res


def stage_image(timestamp, ms: Path, paths: Paths, known: dict, made: dict, options: PipelineOptions,
                threads: int | None = None, own_bright: bool = True, depth_nsigma: float | None = None) -> dict:
    """Image the calibrated MS unless an image of it is registered.

    The image goes into ``made["images"]``. ``threads``: the worker's share of the CPUs
    (``context.threads``), WSClean's ``-j`` unless ``imaging.threads`` is set; without it WSClean
    would take every CPU of the machine in each of the groups in flight. ``own_bright``: image
    again when the tile shows bright sources nothing flattened (:func:`_flatten_own_bright`).
    ``depth_nsigma``: clean in one stage down to this many sigma (a first image made only to find
    the bright sources, ``options.field_image_nsigma``).
    """
    row = _ms_row(known, ms)
    existing = [im for im in (known.get("products") or {}).get("images", [])
                if im.get("ms_path") == str(ms) or (row is not None and im.get("ms_id") == row["id"])]
    if existing:
        return existing[0]
    t0 = time.perf_counter()
    imaging = {"threads": threads, **options.imaging} if threads else dict(options.imaging)
    if depth_nsigma is not None:
        imaging.update(threshold_nsigma=float(depth_nsigma), auto_mask=None, mask_nsigma=None)
    if options.flatten_strip and "flatten" not in imaging:
        strip = _strip_bright(known, ms, options.flatten_strip_min_jy)
        # a calibrator tile handed over with its own bright sources (the strip model leaves it out)
        # (first in the list: a strip source within 30" of one is left out, imaging.flatten)
        strip = sources_from_rows(((row or {}).get("qa") or {}).get("flatten_own")) + strip
        if strip:
            imaging["flatten"] = ["auto", *strip]
    try:
        res = image_ms(str(ms), paths=paths, **imaging)
        if own_bright:
            res = _flatten_own_bright(timestamp, ms, res, paths, imaging, options)
    except FlattenInterrupted as exc:
        # an earlier attempt died while CORRECTED_DATA was being flattened or restored:
        # rewrite it from DATA and the registered tables, then image
        log.warning("%s: %s; re-applying the calibration", timestamp, exc)
        info = calibration.read_ms_info(ms)
        mid = _ms_times(info)[2]
        candidates = list(known.get("calibration") or []) + records_from_entries(made.get("calibration") or [])
        choice = _choose(ms, mid, _pointing_dec_deg(info, mid), candidates, options, field_gains=True)
        calibration.apply_calibration(str(ms), tables=choice.paths)
        res = image_ms(str(ms), paths=paths, **imaging)
    res.setdefault("qa", {})["image_s"] = round(time.perf_counter() - t0, 2)
    chain = (((made.get("ms_update") or {}).get("qa") or (row or {}).get("qa") or {}).get("calibration_chain")) or []
    if chain:
        res["qa"]["calibration"] = [f"{c['kind']}:{c['how']}" for c in chain]
        _stamp_calibration(res, chain)
    start, end, _ = _ms_times(calibration.read_ms_info(ms))
    product = {**image_product(res), "ms": str(ms), "start": start.mjd, "end": end.mjd}
    made.setdefault("images", []).append(product)
    res["files"] = product["files"]
    log.info("%s: imaged in %.1f s", timestamp, time.perf_counter() - t0)
    return res


def stage_catalogue(timestamp, img: dict, paths: Paths, made: dict, options: PipelineOptions) -> dict | None:
    """Find the sources of the new tile, cross-match them with the reference, and hand them back.

    The catalogue (``<tile>.pbcor.sources.fits``, :func:`dsacont.sources.find_sources`) goes into
    ``made["catalogues"]`` with its cross-match QA against NVSS (or ``options.sky_catalogue``);
    its compact sources (clean fits, not sidelobe candidates, S/N >= ``options.model_min_snr``) into
    ``made["detections"]`` for the strip sky model (:mod:`dsacont.service.sky`), marked trusted
    when the tile's gains came from a calibrator transit or an accepted field solve and its noise
    is within ``options.model_max_noise_ratio`` of the radiometer equation. The cross-match's
    figures go into the tile's own QA too (``qa["crossmatch"]``), for the mosaic's gates
    (:func:`dsacont.sources.crossmatch.tile_crossmatch_gates`). With ``options.photometry``, the
    forced photometry of the reference sources in the tile goes into ``made["photometry"]``.
    A failure of the finder or the photometry is logged and leaves the group imaged (by-products).
    """
    image = (img.get("files") or {}).get("pbcor")
    if not image or not made.get("images"):
        return None
    product = made["images"][-1]
    if options.photometry:
        start, end = product.get("start"), product.get("end")
        ph = photometry_of(image, "tile", options, None if start is None or end is None else 0.5 * (start + end))
        if ph is not None:
            made.setdefault("photometry", []).append(ph)
    if not options.catalogue_tiles:
        return None
    res = catalogue_of(image, options)
    if res is None:
        return None
    qa = res["qa"]
    if product.get("qa") is None:
        product["qa"] = {}
    product["qa"]["crossmatch"] = {k: qa.get(k) for k in TILE_QA_KEYS}
    tab = res["table"]
    bmaj = float(res["beam"]["bmaj_arcsec"])
    err = np.asarray(tab["int_flux_err"], float)
    flux = np.asarray(tab["int_flux"], float)
    snr = np.asarray(tab["snr"], float)
    err = np.where(np.isfinite(err) & (err > 0), err, np.abs(flux) / np.maximum(snr, 1e-3))
    sidelobe = np.asarray(tab["sidelobe"], bool) if "sidelobe" in tab.colnames else np.zeros(len(tab), bool)
    keep = (clean_fit(tab["flags"]) & ~sidelobe & (snr >= options.model_min_snr) & (flux > 0)
            & (np.asarray(tab["major_arcsec"], float) <= 1.3 * bmaj))
    chain = ((made.get("ms_update") or {}).get("qa") or {}).get("calibration_chain") or []
    # the calibration applied: this task's, or (a tile imaged after a hand-over, its MS calibrated
    # by the task before) what stage_image stamped on the image from the MS's record
    how = [f"{c['kind']}:{c['how']}" for c in chain] or list((product.get("qa") or {}).get("calibration") or [])
    noise_ratio = (product.get("qa") or {}).get("noise_ratio")
    trusted = (any(h in ("G:transit", "G:field") for h in how)
               and noise_ratio is not None and noise_ratio <= options.model_max_noise_ratio)
    made.setdefault("catalogues", []).append(res["product"])
    hdr = read_header(image)
    made["detections"] = {
        "image": image, "group": timestamp, "mjd": 0.5 * (product["start"] + product["end"]), "trusted": trusted,
        "calibration": how, "beam_arcsec": bmaj, "freq_hz": res["freq_hz"],
        "ra_deg": float(hdr["CRVAL1"]), "dec_deg": float(hdr["CRVAL2"]),
        "radius_deg": 0.5 * min(int(hdr["NAXIS1"]), int(hdr["NAXIS2"])) * abs(float(hdr["CDELT2"])),
        "noise_jy": (product.get("qa") or {}).get("noise_jy"),
        "rows": np.column_stack([np.asarray(tab["ra_deg"], float), np.asarray(tab["dec_deg"], float), flux, err,
                                 snr])[keep].round(7).tolist()}
    log.info("%s: %d sources (%d for the sky model, %s), NVSS flux ratio %.3f over %d matches, in %.1f s",
             timestamp, res["n_sources"], int(keep.sum()), "trusted" if trusted else "not trusted",
             qa.get("flux_ratio_median", float("nan")), qa.get("n_matched", 0), qa["catalogue_s"])
    return res


def _stamp_calibration(res: dict, chain) -> None:
    """Write the calibration chain into the tile's FITS headers (CALCHAIN, and a HISTORY line each)."""
    cards = [("CALCHAIN", " ".join(f"{c['kind']}:{c['how']}" for c in chain)[:68],
              "calibration chain (kind:how)")]
    history = [f"dsacont calibration {i + 1}: {c['kind']} {Path(c['path']).name} ({c['how']}"
               + (f", {c['calibrator']}" if c.get("calibrator") else "")
               + (f", solved {c['age_h']:+.2f} h from the data" if c.get("age_h") is not None else "")
               + (f", sky model {c['sky_model']['name']}" if c.get("sky_model") else "") + ")"
               for i, c in enumerate(chain)]
    for f in {res.get(k) for k in ("image", "pbcor", "residual")} - {None}:
        if str(f).endswith(".fits") and Path(f).exists():
            add_cards(f, cards, history)


def process_group(record, context=None) -> dict:
    """Take one group through convert, calibrate and image (the streaming service's processor).

    Parameters
    ----------
    record : dsacont.service.queue.GroupRecord or dsacont.io.groups.Group
        The group (timestamp and 16 paths, None where missing).
    context : dsacont.service.executor.ServiceContext or dict, optional
        ``paths`` (:class:`dsacont.config.Paths`), ``options`` (:class:`PipelineOptions` or its
        dict) and ``known`` (what the state databases hold for this group; empty: nothing).

    Returns
    -------
    dict
        ``timestamp``, ``ms``, ``solved`` (bool), ``image`` (PB-corrected FITS path),
        ``timings_s`` (seconds per stage) and ``products`` (what was made, for the service to
        record: see :mod:`dsacont.service.state`). JSON-serialisable. When the caller takes a
        hand-over (``context.requeue``, the streaming service) and this group solved a calibrator
        transit, ``requeue`` (why) and ``image`` None: the tables are handed over before the tile
        is imaged (:func:`_handed_over`), the service calls again for the image.

    Raises
    ------
    dsacont.errors.CalibrationUnavailable
        No valid calibration covers the group yet: retry later (the MS is kept). Like any
        exception raised here, it carries ``products``: what was made before it.
    """
    paths = paths_of(context).ensure(*WORK_DIRS)
    options = options_of(context)
    known = known_of(context)
    timestamp, files = _group_of(record)
    timings = {}
    made: dict = {}
    try:
        t = time.perf_counter()
        ms = stage_convert(timestamp, files, paths, known, made)
        timings["convert"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        cal = stage_calibrate(timestamp, ms, paths, known, made, options)
        timings["calibrate"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        solved = cal.get("solved") or {}
        resolve = bool(options.calibrator_sky and solved and solved.get("field_sources") == 0)
        handoff = bool(solved) and takes_handoff(context)
        if handoff and not resolve:
            return _handed_over(timestamp, ms, solved, timings, made)
        # a group to be solved again with its tile's sources is imaged again anyway, then with
        # its own bright sources flattened
        img = stage_image(timestamp, ms, paths, known, made, options, threads=threads_of(context),
                          own_bright=not resolve, depth_nsigma=options.field_image_nsigma if resolve else None)
        timings["image"] = round(time.perf_counter() - t, 2)
        t = time.perf_counter()
        if stage_catalogue(timestamp, img, paths, made, options) is not None:
            timings["catalogue"] = round(time.perf_counter() - t, 2)
        first = made.get("detections")
        own = stage_resolve_with_field(timestamp, ms, cal, paths, made) if resolve else []
        # (no field sources: the first image is the tile's, the group is done; nothing brighter
        # than the finder's 5 sigma but the flattened calibrator was left to clean deeper)
        if handoff and own:
            # the first image (for the tile's sources) is not the tile's product: its time goes with the MS
            made["ms_update"]["qa"]["field_image_s"] = round(timings["image"] + timings.get("catalogue", 0.0), 2)
            if first:  # the strip model has the tile's sources until its final image replaces them
                made["detections"] = first
            # the strip model sent with a task leaves out the group's own tile: its bright
            # sources, to flatten when it is imaged, go with the MS
            bright = flatten_bright_among(calibration.read_ms_info(ms), own,
                                          min_apparent_jy=options.flatten_strip_min_jy)
            made["ms_update"]["qa"]["flatten_own"] = rows_of_sources(bright)
            return _handed_over(timestamp, ms, solved, timings, made)
        if own:
            t = time.perf_counter()
            own_model = {"sources": rows_of_sources(own)}
            img = stage_image(timestamp, ms, paths, {**known, "sky_model": own_model},
                              made, options, threads=threads_of(context))
            stage_catalogue(timestamp, img, paths, made, options)
            timings["image"] = round(timings["image"] + time.perf_counter() - t, 2)
    except Exception as exc:
        try:
            exc.products = made  # the service records what was made before the error
        except AttributeError:  # an exception type that takes no attributes: the products are redone
            pass
        raise
    return {
        "timestamp": timestamp,
        "ms": str(ms),
        "solved": bool(cal.get("solved")),
        "image": (img.get("files") or {}).get("pbcor") or img.get("path") if isinstance(img, dict) else None,
        "timings_s": timings,
        "products": made,
    }


def _handed_over(timestamp, ms: Path, solved: dict, timings: dict, made: dict) -> dict:
    """The result of a calibrator group that hands its tables to the service before its tile is imaged.

    On a strip's first day every group of the hour waits for the calibrator's tables; with one
    group in flight per core the others would sit idle while this one images. The service records
    the tables (and the MS, now calibrated) and requeues the group: the next task finds the MS
    calibrated and images it. ``made`` may hold the detections of a first image (the tables solved
    again with them): they feed the strip model until the tile's final image replaces them.
    """
    why = f"calibrator {solved.get('calibrator')} solved: its tables go to the registry before the tile is imaged"
    log.info("%s: %s", timestamp, why)
    return {"timestamp": timestamp, "ms": str(ms), "solved": True, "image": None, "timings_s": timings,
            "products": made, "requeue": why}


def convert_only(record, context=None) -> dict:
    """Convert only (the service records the MS): a light processor for tests and quick looks."""
    paths = paths_of(context).ensure(*WORK_DIRS)
    timestamp, files = _group_of(record)
    made: dict = {}
    ms = stage_convert(timestamp, files, paths, known_of(context), made)
    return {"timestamp": timestamp, "ms": str(ms), "products": made}
