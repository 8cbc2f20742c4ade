"""The service's side of the state databases: what a task is given, and recording what it made.

Only the service process opens the state databases (``ingest.sqlite3``, ``products.sqlite3``,
``cal_registry.sqlite3`` in ``paths.state``); a worker may run on another host that cannot see
them (SQLite's WAL journal does not work over a network filesystem). So:

* before a task is submitted, the service reads what the task needs (:func:`known_for_group`,
  :func:`known_for_hook`) and sends it with the task (``ServiceContext.known``);
* the task returns a description of every product it made (``result["products"]``, or
  ``exc.products`` when it raised after making some), and the service writes it
  (:func:`record_products`) in the same step that records the group's outcome in the queue:
  products first, then the queue, so a crash in between redoes the group and the idempotent
  writes (keyed by path) leave one row per product.

The products description (every key optional, JSON-serialisable)::

    {"calibration": [<entry of solve_calibration's "registry_entries">, ...],
     "ms":          {<Products.add_ms arguments, "path" included>},
     "ms_update":   {"path", "status", "qa"},              # Products.set_status (QA merged)
     "caltables":   {"ms": path, "tables": [path | {"path", "kind", "how", "detail",
                                                    "registry_id" | "key"}, ...]},  # add_caltables
                    # "key": a table solved by the same task (its entry's key in "calibration")
     "images":      [{<Products.add_image arguments, "path" included>}, ...],
     "mosaics":     [{<Products.add_mosaic arguments, "path" included>}, ...],
     "catalogues":  [<dsacont.sources.catalogue_product record>, ...],      # Products.add_catalogue
     "detections":  {<SkyStore.add_image argument>},        # a tile's sources, for the sky model
     "antenna_health": {"ms": path, "group_timestamp", "records": [...]},  # add_antenna_health
     "photometry":  [<dsacont.sources.reference_photometry record>, ...],  # Products.add_photometry
     "images_update": [{"path", "status", "qa"}, ...]}        # Products.set_status (a tile gated out)
"""
from __future__ import annotations

import logging
import math

from dsacont.calibration.registry import DEFAULT_VALIDITY_H, CalRecord, Registry
from dsacont.calibration.select import BORROW_DAYS, origin_of
from dsacont.db import to_mjd
from dsacont.service.products import Products
from dsacont.service.sky import SkyStore

log = logging.getLogger(__name__)

#: calibration tables whose validity window reaches this far (hours) from a group's timestamp are
#: sent with the group; the worker picks among them for the exact mid-time of its Measurement Set
CALIBRATION_MARGIN_H = 0.5


# ------------------------------------------------------------------------------ what a task gets
def known_for_group(paths, timestamp: str, *, borrow_days: float = BORROW_DAYS) -> dict:
    """Read what the state databases hold for one group, for its task.

    Returns
    -------
    dict
        ``products``: ``{"ms": [rows], "images": [rows]}`` registered for the group
        (:meth:`Products.for_group`); ``calibration``: the valid
        :class:`~dsacont.calibration.registry.CalRecord` the group could be calibrated with
        (after rejecting tables a crashed solver left in 'writing'): every calibrator-transit table
        solved within ``borrow_days`` of the group's timestamp (ISO, UTC), and the field gain
        tables whose validity reaches within :data:`CALIBRATION_MARGIN_H` of it. The worker
        chooses among them (:func:`dsacont.calibration.select.choose_tables`) once it knows the
        group's exact mid-time and pointing declination. ``sky_model``: the sources of earlier
        trusted tiles near the group's meridian, not of the group itself
        (:meth:`dsacont.service.sky.SkyStore.model_near`), for its field gain solve; None when
        none was recorded yet.
    """
    out = {"products": {"ms": [], "images": []}, "calibration": [], "sky_model": None}
    if paths.sky_db.exists():
        out["sky_model"] = SkyStore(paths.sky_db).model_near(timestamp, exclude_group=timestamp)
    if paths.products_db.exists():
        out["products"] = Products(paths.products_db).for_group(timestamp)
    registry = Registry(paths.registry_db)
    registry.reap_stale()
    t = to_mjd(timestamp)
    lo, hi = t - CALIBRATION_MARGIN_H / 24.0, t + CALIBRATION_MARGIN_H / 24.0
    out["calibration"] = [
        r for r in registry.list(status="valid")
        if (origin_of(r) == "field" and r.valid_start <= hi and r.valid_end >= lo)
        or (origin_of(r) != "field" and abs(r.solve_mjd - t) <= borrow_days)]
    return out


def known_for_hook(paths) -> dict:
    """Read what the on-complete hook (the mosaic trigger) needs.

    ``unmosaicked_images``: the image rows not yet in any mosaic, oldest first.
    """
    if not paths.products_db.exists():
        return {"unmosaicked_images": []}
    return {"unmosaicked_images": Products(paths.products_db).images_not_in_mosaic()}


def records_from_entries(entries, first_id: int = 10**12) -> list[CalRecord]:
    """Turn tables just solved (``registry_entries`` of a solve) into CalRecords.

    Their ids are above every registered one (they are the newest), and each carries its
    ``key`` (its name among the task's results) so that what is applied can be recorded with the
    registry id the service gives it. An entry's ``depends_on`` names another entry's key;
    ``depends_on_id`` a table already registered.
    """
    out, ids = [], {}
    for i, e in enumerate(entries):
        rid = first_id + i
        key = e.get("key", e["kind"])
        ids[key] = rid
        before = e.get("valid_before_h")
        after = e.get("valid_after_h")
        before = DEFAULT_VALIDITY_H[e["kind"]] if before is None else float(before)
        after = DEFAULT_VALIDITY_H[e["kind"]] if after is None else float(after)
        solve = float(e["solve_mjd"])
        dep = ids.get(e.get("depends_on")) if e.get("depends_on") else e.get("depends_on_id")
        out.append(CalRecord(id=rid, kind=e["kind"], calibrator=e.get("calibrator"), solve_mjd=solve,
                             valid_start=solve - before / 24.0, valid_end=solve + after / 24.0,
                             status=e.get("status", "valid"), metrics=e.get("metrics") or {},
                             source_ms=e.get("source_ms"), path=e["path"], depends_on=dep,
                             reason=e.get("reason"), created=math.nan, updated=math.nan,
                             dec_deg=e.get("dec_deg"), origin=e.get("origin", "transit"), key=key))
    return out


# ---------------------------------------------------------------------------- what a task made
def record_products(paths, made: dict | None) -> dict:
    """Write a task's products (see the module docstring) into the state databases.

    Into the products database and the calibration registry; returns the ids written
    (``{"calibration": {key: id}, "ms": id, "images": [id], "mosaics": [id]}``).

    Idempotent: products are keyed by path; a calibration table already registered valid with the
    same path, source MS and solve time is not registered again.
    """
    ids: dict = {}
    if not made:
        return ids
    if made.get("calibration"):
        ids["calibration"] = _record_calibration(Registry(paths.registry_db), made["calibration"])
    if made.get("detections"):
        ids["sky_image"] = SkyStore(paths.sky_db).add_image(made["detections"])
    keys = ("ms", "ms_update", "caltables", "images", "mosaics", "catalogues", "antenna_health", "images_update",
            "photometry")
    if not any(made.get(k) for k in keys):
        return ids
    products = Products(paths.products_db)
    if made.get("ms"):
        ms = dict(made["ms"])
        ids["ms"] = products.add_ms(ms.pop("path"), **ms)
    if made.get("antenna_health"):
        h = made["antenna_health"]
        ids["antenna_health"] = products.add_antenna_health(h["ms"], h["records"],
                                                            group_timestamp=h.get("group_timestamp"))
    if made.get("ms_update"):
        u = made["ms_update"]
        products.set_status("ms", u["path"], u["status"], qa=u.get("qa"))
    if made.get("caltables"):
        solved = ids.get("calibration", {})
        tables = [dict(t, registry_id=solved.get(t.get("key"))) if isinstance(t, dict) and t.get("key") else t
                  for t in made["caltables"]["tables"]]
        products.add_caltables(made["caltables"]["ms"], tables)
    for im in made.get("images") or []:
        im = dict(im)
        ids.setdefault("images", []).append(products.add_image(im.pop("path"), **im))
    for m in made.get("mosaics") or []:
        m = dict(m)
        ids.setdefault("mosaics", []).append(products.add_mosaic(m.pop("path"), **m))
    for c in made.get("catalogues") or []:
        c = dict(c)
        ids.setdefault("catalogues", []).append(products.add_catalogue(
            c["path"], image=c["image"], mjd=c.get("mjd"), n_sources=c.get("n_sources", 0), params=c.get("params"),
            qa=c.get("qa"), status=c.get("status", "catalogued")))
    for u in made.get("images_update") or []:
        products.set_status("images", u["path"], u["status"], qa=u.get("qa"))
    for ph in made.get("photometry") or []:
        ids.setdefault("photometry", []).append(products.add_photometry(ph))
    return ids


def _record_calibration(registry: Registry, entries) -> dict:
    """Register the tables a task solved; returns ``{key: registry id}``."""
    ids: dict = {}
    existing = registry.list(status="valid")
    for e in entries:
        key = e.get("key", e["kind"])
        same = [r for r in existing if r.kind == e["kind"] and r.path == e["path"]
                and r.source_ms == e.get("source_ms") and abs(r.solve_mjd - float(e["solve_mjd"])) < 1e-9]
        if same:
            ids[key] = same[-1].id
            continue
        dep = ids.get(e["depends_on"]) if e.get("depends_on") else e.get("depends_on_id")
        rid = registry.register_begin(e["kind"], e.get("calibrator"), float(e["solve_mjd"]), e["path"],
                                      source_ms=e.get("source_ms"), valid_before_h=e.get("valid_before_h"),
                                      valid_after_h=e.get("valid_after_h"), depends_on=dep,
                                      dec_deg=e.get("dec_deg"), origin=e.get("origin", "transit"))
        if e.get("status", "valid") == "valid":
            registry.mark_valid(rid, e.get("metrics"))
        else:
            registry.reject(rid, e.get("reason") or "rejected by the solver", metrics=e.get("metrics"))
        ids[key] = rid
    return ids
