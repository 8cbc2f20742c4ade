"""The queue and the products at a glance: what ``dsacont status`` prints.

Besides the counts: the backlog (files the service's watcher sees in incoming but has not recorded
yet, groups collecting, pending and running), the oldest data not processed yet and so how far
behind real time the service is, groups waiting (and for what), and recent failures.
"""
from __future__ import annotations

import sqlite3
import time

from dsacont.calibration.registry import Registry
from dsacont.service.products import Products
from dsacont.service.queue import IngestQueue, iso_from_unix
from dsacont.service.sky import SkyStore


def status(paths, *, failures: int = 10) -> dict:
    """Queue and products at a glance, as a dict (what ``dsacont status --json`` prints)."""
    out: dict = {"queue_db": str(paths.queue_db), "products_db": str(paths.products_db)}
    if paths.queue_db.exists():
        q = IngestQueue(paths.queue_db, readonly=True)
        try:
            out["groups"] = q.counts()
            out["files"] = {r[0]: r[1] for r in q.conn.execute("SELECT status, COUNT(*) FROM files GROUP BY status")}
            now = time.time()
            out["in_progress"] = [
                {"group": g.timestamp, "worker": g.worker, "running_s": round(now - (g.started or now), 1),
                 "attempt": g.attempts + 1}
                for g in q.groups("in_progress")]
            out["waiting"] = [
                {"group": g.timestamp, "wait": g.wait_reason,
                 "until": iso_from_unix(g.not_before) if g.not_before else None,
                 "reason": g.error}
                for g in q.groups("pending") if g.not_before]
            out["collecting"] = [{"group": g.timestamp, "subbands": 16 - len(g.missing)}
                                 for g in q.groups("collecting")]
            out["backlog"] = _backlog(q, now)
            out["recent_failures"] = q.recent_failures(failures)
            last = q.conn.execute("SELECT MAX(finished) FROM groups WHERE state = 'completed'").fetchone()[0]
            out["last_completed"] = iso_from_unix(last) if last else None
        finally:
            q.close()
    else:
        out["groups"] = None
    if paths.products_db.exists():
        try:
            out["products"] = Products(paths.products_db).counts()
        except Exception as exc:  # noqa: BLE001 - status must never crash on another module's DB
            out["products"] = {"error": str(exc)}
    else:
        out["products"] = None
    out["calibration"] = calibration_status(paths)
    return out


def calibration_status(paths, *, last: int = 12) -> dict | None:
    """The calibration at a glance: the latest calibrator tables, field corrections, and how the
    last ``last`` calibrated groups were calibrated (kind:how of each table applied)."""
    out: dict = {}
    if paths.registry_db.exists():
        rows = Registry(paths.registry_db).list()
        transit = [r for r in rows if r.origin != "field" and r.status == "valid"]
        out["latest_transit_tables"] = [
            {"kind": r.kind, "calibrator": r.calibrator, "solved": r.solve_iso[:19], "dec_deg": r.dec_deg,
             "path": r.path} for r in transit[-2:]]
        fields = [r for r in rows if r.origin == "field"]
        out["field_corrections"] = {"valid": sum(r.status == "valid" for r in fields),
                                    "rejected": sum(r.status == "rejected" for r in fields)}
    if paths.products_db.exists():
        try:
            ms = Products(paths.products_db).list_ms(status="calibrated")[-last:]
        except Exception:  # noqa: BLE001 - status must never crash on another module's DB
            ms = []
        out["recent_groups"] = [{"group": r.get("group_timestamp"),
                                 "calibration": " ".join((r.get("qa") or {}).get("calibration") or ["?"])} for r in ms]
    if paths.sky_db.exists():
        try:
            out["sky_model"] = SkyStore(paths.sky_db).summary()
        except Exception as exc:  # noqa: BLE001 - status must never crash on another module's DB
            out["sky_model"] = {"error": str(exc)}
    return out or None


def _backlog(q: IngestQueue, now: float) -> dict:
    """What is not processed yet: files seen but not recorded, groups not finished, how old the data is."""
    try:
        files = q.unrecorded()
    except sqlite3.OperationalError:  # a queue database older than the 'unrecorded' table
        files = []
    by_reason: dict = {}
    for f in files:
        by_reason[f["reason"]] = by_reason.get(f["reason"], 0) + 1
    open_states = ("collecting", "pending", "in_progress")
    oldest_group, newest_group = q.conn.execute(
        f"SELECT MIN(t_unix), MAX(t_max_unix) FROM groups WHERE state IN {open_states}").fetchone()
    times = [t for t in (oldest_group, *(f["t_unix"] for f in files)) if t is not None]
    oldest = min(times) if times else None
    newest_seen = max([t for t in (q.conn.execute("SELECT MAX(t_max_unix) FROM groups").fetchone()[0],
                                   *(f["t_unix"] for f in files)) if t is not None], default=None)
    done = q.conn.execute("SELECT MAX(t_max_unix) FROM groups WHERE state = 'completed'").fetchone()[0]
    return {
        "unrecorded_files": len(files),
        "unrecorded_by_reason": by_reason,
        "unrecorded": [{"path": f["path"], "subband": f["subband"], "time": iso_from_unix(f["t_unix"]),
                        "reason": f["reason"], "seen_s": round(now - f["first_seen"], 1)} for f in files[:20]],
        "groups_open": dict(q.conn.execute(
            f"SELECT state, COUNT(*) FROM groups WHERE state IN {open_states} GROUP BY state").fetchall()),
        "oldest_unprocessed": iso_from_unix(oldest) if oldest is not None else None,
        "newest_data": iso_from_unix(newest_seen) if newest_seen is not None else None,
        "latest_completed_data": iso_from_unix(done) if done is not None else None,
        # how far behind real time: the age of the oldest data not processed yet (0: caught up)
        "behind_s": round(now - oldest, 1) if oldest is not None else 0.0,
    }


def _duration(s: float) -> str:
    for unit, size in (("d", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if abs(s) >= size:
            return f"{s / size:.1f} {unit}"
    return f"{s:.0f} s"


def format_status(paths, *, failures: int = 10) -> str:
    """:func:`status` as a printed table."""
    s = status(paths, failures=failures)
    lines = [f"queue    {s['queue_db']}"]
    if s["groups"] is None:
        lines.append("  (no queue database yet)")
    else:
        lines.append("  " + "  ".join(f"{k:>11}" for k in s["groups"]))
        lines.append("  " + "  ".join(f"{v:>11}" for v in s["groups"].values()))
        files = s.get("files") or {}
        lines.append(f"  files: {files.get('ok', 0)} ok, {files.get('quarantined', 0)} quarantined"
                     + (f"; last group completed {s['last_completed']} UTC" if s.get("last_completed") else ""))
        b = s.get("backlog") or {}
        if b:
            why = ", ".join(f"{n} {r}" for r, n in sorted(b["unrecorded_by_reason"].items()))
            opened = b["groups_open"]
            lines.append(f"  backlog: {b['unrecorded_files']} file(s) seen, not recorded yet" + (f" ({why})" if why else "")
                         + f"; groups collecting {opened.get('collecting', 0)}, pending {opened.get('pending', 0)}, "
                         f"running {opened.get('in_progress', 0)}")
            if b["oldest_unprocessed"]:
                lines.append(f"  oldest unprocessed data {b['oldest_unprocessed']} UTC: behind real time by "
                             f"{_duration(b['behind_s'])}; newest data seen {b['newest_data']} UTC")
            else:
                lines.append("  caught up: nothing unprocessed" + (f"; newest data {b['newest_data']} UTC"
                                                                   if b["newest_data"] else ""))
            for f in b["unrecorded"][:5]:
                lines.append(f"  unrecorded {f['path']}  ({f['reason']}, seen {f['seen_s']:.0f} s ago)")
        for g in s["in_progress"]:
            lines.append(f"  running   {g['group']}  {g['running_s']:>7.0f} s  attempt {g['attempt']}  {g['worker']}")
        for g in s["collecting"]:
            lines.append(f"  collecting {g['group']}  {g['subbands']}/16 subbands")
        for g in s["waiting"]:
            lines.append(f"  waiting   {g['group']}  ({g['wait']}) until {g['until']}: {g['reason']}")
        if s["recent_failures"]:
            lines.append("  recent failures:")
            for f in s["recent_failures"]:
                when = iso_from_unix(f["t"]) if f["t"] else "?"
                lines.append(f"    {when}  {f['kind']:<5} {f['state']:<11} {f['name']}\n        {f['reason']}")
    lines.append(f"products {s['products_db']}")
    prods = s.get("products")
    if prods is None:
        lines.append("  (no products database yet)")
    elif "error" in prods:
        lines.append(f"  cannot read: {prods['error']}")
    else:
        for kind, by_status in prods.items():
            total = sum(by_status.values())
            detail = ", ".join(f"{k} {v}" for k, v in sorted(by_status.items()))
            lines.append(f"  {kind:<8} {total:>5}" + (f"  ({detail})" if detail else ""))
    cal = s.get("calibration") or {}
    if cal:
        lines.append("calibration")
        for t in cal.get("latest_transit_tables") or []:
            dec = f"{t['dec_deg']:+.2f} deg" if t["dec_deg"] is not None else "unknown"
            lines.append(f"  {t['kind']} on {t['calibrator']} solved {t['solved']} (dec {dec})  {t['path']}")
        if cal.get("field_corrections"):
            f = cal["field_corrections"]
            lines.append(f"  field gain corrections: {f['valid']} valid, {f['rejected']} rejected (gains transferred)")
        sky = cal.get("sky_model") or {}
        if sky.get("sources") is not None:
            lines.append(f"  sky model of the strip: {sky['sources']} sources from {sky['trusted_images']} trusted "
                         f"tile(s) ({sky['images']} recorded)")
        for g in cal.get("recent_groups") or []:
            lines.append(f"  {g['group']}  {g['calibration']}")
    return "\n".join(lines)
