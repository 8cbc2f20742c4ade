"""Light, real processors for the streaming-service tests (no CASA, no mocks).

``summarise`` opens the group with the real lazy loader, computes the mean visibility amplitude
of every channel (a real reduction of the real files), writes a small JSON product atomically
(temp file under ``paths.tmp``, fsync, ``os.replace`` into ``paths.images``) and registers it in
the real products database (``dsacont.service.products.Products.add_image``, keyed by path).

Test hooks, all through ``context.options`` (``dsacont stream --option KEY=VALUE``):

``kill_at``  ``"<group timestamp>@<point>"``: at that point kill the *service* process with
             SIGKILL (once: a marker file in the state directory stops it happening again after
             the restart). Points: ``start``, ``mid`` (temp file written, not moved),
             ``before_register`` (moved into place, not registered), ``after_register``
             (registered, not yet reported to the queue).
``crash_worker_at`` same, but the *worker* process kills itself (a segfault/OOM kill of CASA).
``hang_group`` a group timestamp whose processing hangs (sleeps 600 s).
``sleep_s``  extra seconds of "work" per group.
``cal_after`` a group timestamp: groups before it raise CalibrationUnavailable until that
             group has completed (mimics a calibrator transit in the middle of a replay; that
             group returns a stand-in gain table for the service to register);
             ``cal_lookup_s`` makes that lookup slow (so the solve can finish meanwhile);
             ``cal_lookup_until`` a group timestamp: the lookup lasts until the queue records that
             group completed (observable state, whatever the machine's load; deadline 300 s), so
             the calibrator is certain to finish during it; ``cal_waits_for`` a group timestamp:
             the ``cal_after`` group first waits until that group has started (deadline 300 s), so
             that group is certain to look for calibration before the calibrator is done.

Every call appends one line to ``<state>/ledger.jsonl`` (group, point, pid) so the tests can see
which worker process ran what.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import numpy as np


def _ledger(context, group, point):
    with open(Path(context.paths.state) / "ledger.jsonl", "a") as f:
        f.write(json.dumps({"group": group.timestamp, "point": point, "pid": os.getpid(), "t": time.time()}) + "\n")
        f.flush()
        os.fsync(f.fileno())


def _wait_completed(context, timestamp, deadline_s):
    """Wait until the queue records group ``timestamp`` as completed (read-only; a test stand-in)."""
    from dsacont.service.queue import IngestQueue

    q = IngestQueue(context.paths.queue_db)
    try:
        t0 = time.time()
        while time.time() - t0 < deadline_s:
            g = q.get(timestamp)
            if g is not None and g.state == "completed":
                return
            time.sleep(0.1)
    finally:
        q.close()
    raise TimeoutError(f"{timestamp} did not complete in {deadline_s} s")


def _wait_started(context, timestamp, deadline_s):
    """Wait until the ledger shows group ``timestamp`` started on some worker."""
    ledger = Path(context.paths.state) / "ledger.jsonl"
    t0 = time.time()
    while time.time() - t0 < deadline_s:
        if ledger.exists() and any(json.loads(x)["group"] == timestamp and json.loads(x)["point"] == "start"
                                   for x in ledger.read_text().splitlines() if x.strip()):
            return
        time.sleep(0.1)
    raise TimeoutError(f"{timestamp} did not start in {deadline_s} s")


def _maybe_kill(context, group, point):
    _ledger(context, group, point)
    for option, victim in (("kill_at", context.service_pid), ("crash_worker_at", os.getpid())):
        spec = context.options.get(option)
        if not spec or spec != f"{group.timestamp}@{point}":
            continue
        marker = Path(context.paths.state) / f"{option}_{group.timestamp}_{point}".replace(":", "")
        if marker.exists():
            continue
        marker.touch()
        os.kill(victim, signal.SIGKILL)
        time.sleep(60)  # the worker dies (with the service); never get past this point


def summarise(group, context) -> dict:
    from dsacont.errors import CalibrationUnavailable
    from dsacont.io.uvh5 import open_group
    from dsacont.service.products import Products

    paths = context.paths
    products = Products(paths.products_db)
    _maybe_kill(context, group, "start")
    cal_after = context.options.get("cal_after")
    if cal_after and group.timestamp < cal_after:
        done = Path(paths.state) / "calibrated"
        if not done.exists():
            time.sleep(float(context.options.get("cal_lookup_s", 0)))  # a slow lookup: races the solve
            if context.options.get("cal_lookup_until"):
                _wait_completed(context, context.options["cal_lookup_until"], 300.0)
            raise CalibrationUnavailable(f"no calibration valid for {group.timestamp} yet")
    if cal_after and group.timestamp == cal_after and context.options.get("cal_waits_for"):
        _wait_started(context, context.options["cal_waits_for"], 300.0)
    if context.options.get("hang_group") == group.timestamp:
        time.sleep(600)  # a hung CASA call
    ds = open_group(group.paths, allow_missing=True)
    amp = np.abs(ds.vis).where(~ds.flags).mean(("time", "baseline", "polarization")).compute()
    if context.options.get("sleep_s"):
        time.sleep(float(context.options["sleep_s"]))
    product = {
        "timestamp": group.timestamp,
        "n_channels": int(amp.size),
        "mean_amp": float(np.nanmean(amp.values)),
        "missing": list(group.missing),
        "source_files": [p for p in group.paths if p],
        "attempt": context.attempt,
        "pid": os.getpid(),
    }
    out = Path(paths.images) / f"{group.timestamp}.json"
    tmp = Path(paths.tmp) / f"{group.timestamp}.json.tmp"
    with open(tmp, "w") as f:
        json.dump(product, f)
        f.flush()
        os.fsync(f.fileno())
    _maybe_kill(context, group, "mid")
    os.replace(tmp, out)
    _maybe_kill(context, group, "before_register")
    products.add_image(out, start=group.timestamp, status="test", qa={"mean_amp": product["mean_amp"]})
    _maybe_kill(context, group, "after_register")
    result = {"product": str(out), "mean_amp": product["mean_amp"], "missing": product["missing"]}
    if cal_after and group.timestamp == cal_after:
        (Path(paths.state) / "calibrated").touch()
        # a stand-in "solve", returned for the service to register: the registry changes, which is
        # what wakes the groups waiting for calibration
        from dsacont.db import to_mjd

        result["products"] = {"calibration": [{"kind": "G", "calibrator": "stand-in", "solve_mjd": to_mjd(
            group.timestamp), "path": str(out), "source_ms": None}]}
    return result


def on_complete(group, result, context):
    """The on-complete hook (where the pipeline triggers mosaics): records each call in the ledger."""
    with open(Path(context.paths.state) / "hooks.jsonl", "a") as f:
        f.write(json.dumps({"group": group.timestamp if group else None, "result": result, "pid": os.getpid(),
                            "threads": context.threads}) + "\n")
    return {"hook": group.timestamp if group else "startup"}
