"""The per-group chain the streaming service runs: files -> MS -> calibrated -> image -> mosaic.

``process_group(record, context)`` takes one queued group through every stage, in one
direction, each stage idempotent (a product already made and registered is not made again), so
a group that is retried after a crash or after waiting for calibration resumes where it stopped:

1. **convert** (with RFI flags computed in the same Dask graph): ``<stage>/ms/<timestamp>.ms``,
   written elsewhere and moved into place atomically, then registered in the products DB;
2. **calibrate**: if a calibrator transits inside this group and no valid table from that
   transit is registered, solve bandpass and gains on it (registry); then look up the valid
   bandpass and gain tables for the group's mid-time (two-sided windows) and apply them. If
   none is valid yet, raise :class:`dsacont.errors.CalibrationUnavailable`: the service puts the
   group back to wait. A group is never imaged uncalibrated;
3. **image**: tclean of CORRECTED_DATA, primary-beam corrected FITS, registered with QA;
4. **mosaic**: after each completed group the service calls :func:`on_group_complete`, which
   looks for a run of ``tiles_per_mosaic`` (12) consecutive imaged tiles not yet mosaicked and
   builds the mosaic (:func:`maybe_mosaic`).

Mosaic policy (documented for the operators): tiles are taken in time order; a mosaic is a run
of 12 consecutive tiles (consecutive = start times 250-370 s apart, i.e. no missing group) that
starts at the earliest tile not yet in a mosaic. The first mosaic after the service starts
therefore begins with the first tile it images: replaying the 60 minutes around a transit gives
the mosaic centred on that transit, with no group chosen by hand.
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsacont.config import Paths, get_paths


log = logging.getLogger(__name__)

TILES_PER_MOSAIC = 12
GROUP_CADENCE_S = 24 * 12.884902
CAL_MIN_FLUX_JY = 2.0
CAL_MIN_PB = 0.5


@dataclass
class PipelineOptions:
    """Knobs of the per-group chain (defaults are the operators')."""

    tiles_per_mosaic: int = TILES_PER_MOSAIC
    calibrator: str | None = None  # None: any catalogue calibrator bright enough in the beam
    cal_min_flux_jy: float = CAL_MIN_FLUX_JY
    cal_min_pb: float = CAL_MIN_PB
    imaging: dict = field(default_factory=dict)  # passed to imaging.image_ms
    mosaic: dict = field(default_factory=dict)  # passed to mosaic.make_mosaic


def _paths_of(context) -> Paths:
    p = getattr(context, "paths", None) if context is not None else None
    if isinstance(context, dict):
        p = context.get("paths")
    return p if p is not None else get_paths()


def _options_of(context) -> PipelineOptions:
    """Options from ``context.options``: a PipelineOptions, or a dict (``--option KEY=VALUE``
    strings from ``dsacont stream``; keys ``imaging.X`` / ``mosaic.X`` go to those stages)."""
    o = getattr(context, "options", None) if context is not None else None
    if isinstance(context, dict):
        o = context.get("options")
    if isinstance(o, PipelineOptions):
        return o
    opts = PipelineOptions()
    for key, value in (o or {}).items():
        value = _parse_value(value)
        if "." in key:
            stage, _, sub = key.partition(".")
            getattr(opts, stage)[sub] = value
        elif hasattr(opts, key):
            setattr(opts, key, value)
        else:
            raise ValueError(f"unknown pipeline option {key!r}")
    return opts


def _parse_value(v):
    if not isinstance(v, str):
        return v
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)


def _group_of(record):
    """(timestamp, 16 paths) from a queue record, a Group, or a list of paths."""
    from dsacont.io.groups import Group, cluster_files

    if hasattr(record, "timestamp") and hasattr(record, "paths"):
        return record.timestamp, list(record.paths)
    groups = cluster_files([p for p in record if p is not None])
    g = groups[0] if groups else Group("unknown")
    return g.timestamp, g.paths


def _time_range(ms_path):
    """(start, end, mid) of the MS TIME column (seconds since MJD 0), as astropy Times (UTC)."""
    from astropy.time import Time

    from dsacont.casa import ensure_casa

    tb = ensure_casa().table()
    tb.open(str(ms_path))
    try:
        t = tb.getcol("TIME")
    finally:
        tb.close()
    t0, t1 = Time(t.min() / 86400, format="mjd", scale="utc"), Time(t.max() / 86400, format="mjd", scale="utc")
    return t0, t1, Time((t.min() + t.max()) / 2 / 86400, format="mjd", scale="utc")


def stage_convert(timestamp, files, paths: Paths, products) -> Path:
    """Convert (and flag) the group unless its MS is already in place and registered."""
    from dsacont.convert import convert_group

    ms = paths.ms / f"{timestamp}.ms"
    row = products.get("ms", str(ms)) if ms.exists() else None
    if row is not None:
        log.info("%s: MS already converted (%s)", timestamp, ms)
        return ms
    from dsacont.io.uvh5 import open_group

    t = time.perf_counter()
    # the service's incomplete-group policy hands over >= 12 subbands, None for the rest:
    # those are written flagged (loader allow_missing)
    ds = open_group(files, allow_missing=True)
    out = Path(convert_group(ds, ms, paths=paths))
    start, end, _ = _time_range(out)
    qa = {"convert_s": round(time.perf_counter() - t, 2)}
    summary = out.parent / f"{timestamp}.flags.json"
    if summary.exists():  # written by convert_group beside the MS, with the waterfall PNG
        flags = json.loads(summary.read_text())
        qa.update(flagged_fraction=flags.get("overall"), flag_summary=str(summary),
                  waterfall=str(out.parent / f"{timestamp}.waterfall.png"))
    products.add_ms(out, start=start, end=end, group_timestamp=timestamp,
                    inputs=[f for f in files if f], status="converted", qa=qa)
    log.info("%s: converted in %.1f s -> %s", timestamp, time.perf_counter() - t, out)
    return out


def stage_calibrate(timestamp, ms: Path, paths: Paths, products, options: PipelineOptions) -> dict:
    """Solve if a calibrator transits in this group and no table from it exists; then apply."""
    from dsacont import calibration
    from dsacont.calibration.registry import Registry

    registry = Registry(paths.registry_db)
    row = products.get("ms", str(ms))
    if row is not None and row.get("status") == "calibrated":
        return {"applied": "already"}
    start, end, mid = _time_range(ms)
    solved = None
    dec_deg = _pointing_dec_deg(ms, mid)
    transits = calibration.find_calibrator_transits(
        start, end, dec_deg, min_flux_jy=options.cal_min_flux_jy, min_pb=options.cal_min_pb
    )
    if options.calibrator:
        transits = [t for t in transits if t.name == options.calibrator]
    if transits:
        t0 = time.perf_counter()
        registry.reap_stale()  # tables a crashed solver left in 'writing' are rejected, never used
        existing = [r for r in registry.list(status="valid") if r.source_ms == str(ms)]
        if not existing:
            cal = transits[0].name
            log.info("%s: calibrator %s transits in this group: solving", timestamp, cal)
            solved = calibration.solve_calibration(str(ms), cal, paths=paths, registry=registry)
            solved["solve_s"] = round(time.perf_counter() - t0, 2)
    t0 = time.perf_counter()
    applied = calibration.apply_calibration(str(ms), registry=registry, time=mid)  # raises CalibrationUnavailable
    apply_s = round(time.perf_counter() - t0, 2)
    tables = applied.get("tables", []) if isinstance(applied, dict) else []
    products.add_caltables(str(ms), tables)
    products.set_status("ms", str(ms), "calibrated", qa={**(row or {}).get("qa", {}), "apply_s": apply_s,
                                                         **({"solve_s": solved["solve_s"]} if solved else {})})
    return {"solved": solved, "applied": applied}


def _pointing_dec_deg(ms, mid) -> float:
    """The pointing declination (apparent, HADEC frame: the files' phase_center_dec), degrees,
    recovered from the MS's ICRS phase centre, which is the meridian at ``mid``."""
    from dsacont.calibration import pointing_dec_from_phase_centre
    from dsacont.casa import ensure_casa

    tb = ensure_casa().table()
    tb.open(f"{ms}/FIELD")
    try:
        d = tb.getcol("PHASE_DIR")  # (2, 1, nfield) radians
    finally:
        tb.close()
    ra0, dec0 = float(np.median(d[0])), float(np.median(d[1]))
    return float(np.degrees(pointing_dec_from_phase_centre(ra0, dec0, mid.mjd)[0]))


def stage_image(timestamp, ms: Path, paths: Paths, products, options: PipelineOptions) -> dict:
    from dsacont.imaging import image_ms

    existing = [im for im in products.list_images() if im.get("ms_path") == str(ms) or im.get("ms_id") == (products.get("ms", str(ms)) or {}).get("id")]
    if existing:
        return existing[0]
    from dsacont.io.ms import FlattenInterrupted

    t0 = time.perf_counter()
    try:
        res = image_ms(str(ms), paths=paths, **options.imaging)
    except FlattenInterrupted as exc:
        # an earlier attempt died while CORRECTED_DATA was being flattened or restored:
        # rewrite it from DATA and the registered tables, then image
        from dsacont import calibration
        from dsacont.calibration.registry import Registry

        log.warning("%s: %s; re-applying the calibration", timestamp, exc)
        calibration.apply_calibration(str(ms), registry=Registry(paths.registry_db), time=_time_range(ms)[2])
        res = image_ms(str(ms), paths=paths, **options.imaging)
    res.setdefault("qa", {})["image_s"] = round(time.perf_counter() - t0, 2)
    start, end, _ = _time_range(ms)
    files = {k: res[k] for k in ("image", "pbcor", "pb", "residual") if res.get(k)}
    params = {k: res.get(k) for k in ("imsize", "cell_arcsec", "gridder", "deconvolver", "robust", "beam", "freq_hz")}
    products.add_image(files["pbcor"], ms=str(ms), files=files, ra_deg=res.get("ra_deg"), dec_deg=res.get("dec_deg"),
                       start=start, end=end, params=params, qa=res.get("qa"))
    res["files"] = files
    log.info("%s: imaged in %.1f s", timestamp, time.perf_counter() - t0)
    return res


def maybe_mosaic(paths: Paths, products, options: PipelineOptions | None = None) -> list[dict]:
    """Build every mosaic that a run of ``tiles_per_mosaic`` consecutive new tiles makes possible."""
    from dsacont.imaging.mosaic import make_mosaic

    options = options or PipelineOptions()
    n = options.tiles_per_mosaic
    images = sorted(products.list_images(), key=lambda r: r["start_mjd"] or 0.0)
    used = set()
    for m in products.list_mosaics():
        full = products.get("mosaic", m["id"]) or m
        for im in full.get("images", []):
            used.add(im["image_path"] if isinstance(im, dict) else im)
    fresh = [im for im in images if im["path"] not in used]
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
        res = make_mosaic([r["path"] for r in run], out, **options.mosaic)
        files = {k: res[k] for k in ("mosaic", "noise", "png", "qa_json") if res.get(k)}
        res["files"] = files
        products.add_mosaic(files.get("mosaic", str(out)), images=[r["id"] for r in run], files=files,
                            ra_deg=res.get("ra_deg"), dec_deg=res.get("dec_deg"),
                            qa={**res.get("qa", {}), "mosaic_s": round(time.perf_counter() - t0, 2)})
        log.info("mosaic of %d tiles from %s -> %s", n, run[0]["start_time"], out)
        made.append(res)
        i += n
    return made


def process_group(record, context=None) -> dict:
    """The streaming service's processor: one group through convert, calibrate, image, mosaic.

    Parameters
    ----------
    record : dsacont.service.queue.GroupRecord or dsacont.io.groups.Group
        The group (timestamp and 16 paths, None where missing).
    context : object or dict, optional
        ``paths`` (:class:`dsacont.config.Paths`) and ``options`` (:class:`PipelineOptions`).

    Returns
    -------
    dict  per-stage results and timings (seconds), JSON-serialisable.

    Raises
    ------
    dsacont.errors.CalibrationUnavailable
        No valid calibration covers the group yet: retry later (the MS is kept).
    """
    from dsacont.service.products import Products

    paths = _paths_of(context).ensure()
    options = _options_of(context)
    products = Products(paths.products_db)
    timestamp, files = _group_of(record)
    timings = {}
    t = time.perf_counter()
    ms = stage_convert(timestamp, files, paths, products)
    timings["convert"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    cal = stage_calibrate(timestamp, ms, paths, products, options)
    timings["calibrate"] = round(time.perf_counter() - t, 2)
    t = time.perf_counter()
    img = stage_image(timestamp, ms, paths, products, options)
    timings["image"] = round(time.perf_counter() - t, 2)
    return {
        "timestamp": timestamp,
        "ms": str(ms),
        "solved": bool(cal.get("solved")),
        "image": (img.get("files") or {}).get("pbcor") or img.get("path") if isinstance(img, dict) else None,
        "timings_s": timings,
    }


def on_group_complete(group, result, context=None) -> dict:
    """The service's on-complete hook: the mosaic trigger (also run once at start-up)."""
    from dsacont.service.products import Products

    paths = _paths_of(context).ensure()
    t = time.perf_counter()
    made = maybe_mosaic(paths, Products(paths.products_db), _options_of(context))
    return {"mosaics": [m.get("files", {}).get("mosaic") for m in made],
            "mosaic_s": round(time.perf_counter() - t, 2)}


def convert_only(record, context=None) -> dict:
    """A light processor (conversion + registration only), for tests and quick-look runs."""
    from dsacont.service.products import Products

    paths = _paths_of(context).ensure()
    timestamp, files = _group_of(record)
    ms = stage_convert(timestamp, files, paths, Products(paths.products_db))
    return {"timestamp": timestamp, "ms": str(ms)}
