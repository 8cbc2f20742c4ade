"""The queue and the products at a glance: what ``dsacont status`` prints."""
from __future__ import annotations

import time

from dsacont.calibration.registry import Registry
from dsacont.service.products import Products
from dsacont.service.queue import IngestQueue, iso_from_unix


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
    return out or None


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
        for g in cal.get("recent_groups") or []:
            lines.append(f"  {g['group']}  {g['calibration']}")
    return "\n".join(lines)
