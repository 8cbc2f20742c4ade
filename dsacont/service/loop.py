"""The service loop: watch, queue, claim, run each group on a worker, record what it made.

``dsacont stream`` runs :func:`run_service` with a :class:`ServiceOptions`. One loop, in one
service process (several may share one queue; see below):

1. **Watch** (:class:`dsacont.service.watcher.Watcher`): poll the incoming directory for
   ``*_sbNN.hdf5``, validate each settled file and record it in the ingest queue
   (:mod:`dsacont.service.queue`) under its group; a bad file is **quarantined** (left in place,
   never processed) with a reason naming it: not HDF5, truncated, unreadable, wrong shape (vs. the
   majority of its siblings), NaN/Inf, or duplicate subband. A late subband still joins a group
   that is queued but not yet claimed; one for a group that failed as incomplete re-opens it; one
   for a group already taken is recorded as late (``dsacont reprocess GROUP``, or the
   ``reprocess_late`` option, rebuilds the group's products with it).
2. **Incomplete-group policy** (:meth:`dsacont.service.queue.IngestQueue.finalize_groups`): a group is
   queued (``pending``) as soon as all 16 subbands have arrived. Otherwise it is finalised when
   no file has arrived for it for ``incomplete_timeout_s`` (default 900 s) of wall time, or
   when data ``incomplete_timeout_s`` newer than it has arrived (the correlator moved on; this
   makes the rule independent of replay speed). Then: >= ``min_subbands`` (default 12) usable
   subbands -> processed, with the missing ones recorded (the processor gets ``None`` for
   them, the loader's ``allow_missing=True`` flags them); fewer -> ``failed`` with
   ``incomplete: N of 16 usable subbands``. Arrival order never splits a group: no rule
   finalises a group while a file of it is in ``incoming`` but not yet recorded (not settled,
   or left by the validation budget), and "newer data" counts only once the watcher has recorded
   everything it sees (a backlog copied in any order, a restart on hours of files).
3. **Claim and process**: pending groups are claimed atomically, oldest first within a
   priority (``priority``: by default a group in which a calibrator transits goes first, then
   those outward from it, so in a backlog its tables come before the groups that wait for them),
   and handed to
   the *processor* ``process(group: GroupRecord, context: ServiceContext) -> dict`` (default
   ``dsacont.service.pipeline:process_group``; any ``module:function`` via ``processor``). It runs
   as a task on a Dask cluster (:mod:`dsacont.service.executor`).
4. **Control plane and data plane**: only this process reads and writes the state databases.
   With each task it sends what the databases hold that the task needs
   (``context.known``: :func:`dsacont.service.state.known_for_group`); the task returns what it
   made (``result["products"]``, or ``exc.products`` when it raised after making some), and
   this loop records it (:func:`dsacont.service.state.record_products`) right before it records
   the group's outcome in the queue. A worker may thus run on a host that cannot see the state
   directory.
5. **Outcomes**: the returned dict is stored with the ``completed`` group, then the
   *on-complete hook* runs (default ``dsacont.service.mosaics:on_group_complete`` if it exists: the
   mosaic trigger; it also runs once at start-up, with ``group=None``, to catch a trigger
   missed by a crash). Hooks run one at a time, in completion order, each given the products
   recorded before it (``known_for_hook``); the products a hook returns are recorded too.
   A *hand-over* (the task's result says ``requeue``: a calibrator group whose tables are solved,
   before its tile is imaged) records the products and puts the group back to ``pending`` at
   once, without using an attempt: the groups waiting for those tables are woken by them.
   ``CalibrationUnavailable`` puts the group back to ``pending`` without using an attempt; it
   is claimed again only when the calibration registry has changed since its task started (at
   once if it changed while the task ran), or at its deadline (``max_cal_wait_s`` after it was
   queued, when it fails); the log says once what it waits for. ``BadInputError``
   quarantines the group. Any other error uses an attempt (retried with backoff; ``failed``
   after ``max_attempts``).
6. **Full disk**: an ENOSPC/EDQUOT from the processor (or SQLite's "database or disk is full")
   returns the group to ``pending`` (an attempt is used; after ``max_attempts`` it is
   ``failed`` with ``disk full``) and the service **pauses claiming** for
   ``disk_full_pause_s`` (default 60 s) while logging the free space; the raw files are never
   touched, so nothing is lost, and processing resumes by itself once space is freed.
   Claiming also pauses while the stage directory has less than ``min_free_gb`` free.

Crash safety
------------
kill -9 at any point loses nothing: every transition is a committed SQLite transaction; a
group whose worker died is reclaimed (the claim records host, pid and the process start
time, and a lease renewed every loop), counted as one attempt and processed again. Processors
must therefore be idempotent and write products atomically (write under ``tmp``, then
``os.replace``; registration only after the move, keyed by product path, as
:class:`dsacont.service.products.Products` does), so a group interrupted between writing and
registering is simply redone. A stale worker (one whose claim was reclaimed while it still
ran) can never complete or fail a group: every outcome is fenced by the claim token. LocalCluster
workers die with the service process (distributed's parent-alive pipe), so no orphan keeps
writing after a kill -9.

Two services on one queue
-------------------------
Safe: claims are ``BEGIN IMMEDIATE; UPDATE ... RETURNING`` transactions, files are keyed by
path (both watchers may see the same file; it is recorded once), and reclaiming checks the
claimer's pid/lease, so no group is ever taken twice.

``stop_on_error``: the operators' foreground mode. The first failure (a quarantined file, a
failed or quarantined group) stops claiming, lets groups in flight finish, prints the reason and
exits with status 1.
"""
from __future__ import annotations

import json
import logging
import math
import os
import shutil
import signal
import sqlite3
import threading
import time
from collections import deque
from dataclasses import dataclass, field

from tqdm.auto import tqdm

from dsacont import db
from dsacont.options import merge
from dsacont.service.executor import Executor, ServiceContext, load_callable, run_group_task, run_hook_task
from dsacont.service.products import Products
from dsacont.service.queue import GroupRecord, IngestQueue, WorkerId, iso_from_unix
from dsacont.service.state import known_for_group, known_for_hook, record_products
from dsacont.service.watcher import Watcher

log = logging.getLogger(__name__)

DEFAULT_PROCESSOR = "dsacont.service.pipeline:process_group"
DEFAULT_ON_COMPLETE = "dsacont.service.mosaics:on_group_complete"
DEFAULT_PRIORITY = "dsacont.service.priority:group_priority"


@dataclass
class ServiceOptions:
    """Every setting of the streaming service (``[service]`` of the ``--config`` TOML file).

    Attributes
    ----------
    processor : str
        ``"module:function"`` run on a worker for each group, as ``function(group: GroupRecord,
        context: ServiceContext) -> dict``.
    on_complete : str or None
        ``"module:function"`` run as ``function(group | None, result | None, context)`` after each
        completed group and once at start-up; skipped if the default's module or function does
        not exist; None or ``""``: none. The mosaic trigger.
    priority : str or None
        ``"module:function"`` run in the service on each group that became pending, as
        ``function(group: GroupRecord, header: dict, options: dict) -> (int, str | None)`` (``header``:
        what the watcher read of one of its files, e.g. ``dec_deg`` and ``time_unix``; ``options``:
        ``processor_options``): its claim priority, highest first, oldest first within one, and why.
        The default (:func:`dsacont.service.priority.group_priority`) takes a group in which a
        calibrator transits first, then the groups outward from it, up to an hour away: in a
        backlog (an archive replayed, a restart after downtime) the groups around it wait for its
        tables, and on a strip's first day its sky model grows outward from it. It must be cheap
        (no file is opened). None or ``""``: time order.
    processor_options : dict
        The processor's options, ``context.options`` (``[pipeline]`` of the config file,
        ``--option KEY=VALUE``); for the default processor the fields of
        :class:`dsacont.service.options.PipelineOptions`.
    scheduler : str or None
        Dask scheduler address (``tcp://host:8786``) of an existing cluster; None starts a
        LocalCluster with ``max_inflight`` worker processes; ``"inline"`` runs groups in a thread
        of the service process (debugging only).
    max_inflight : int
        Groups processed concurrently (each in its own worker process on a LocalCluster).
    n_workers, threads_per_worker : int or None
        LocalCluster worker processes (default ``max_inflight``) and threads per worker
        (default cores / workers).
    once : bool
        Process what is in ``incoming`` now (incomplete groups are finalised at once) and exit
        when nothing is left to claim (groups still waiting for calibration stay pending).
    stop_on_error : bool
        Exit (status 1) at the first quarantined file or failed/quarantined group, after the
        groups in flight finish.
    poll_s : float
        Seconds between scans of ``incoming``.
    max_groups : int or None
        Exit after this many groups reached an outcome (completed, failed or quarantined).
    idle_exit_s : float or None
        Exit after this many seconds with no new file and nothing to do (collecting groups are
        finalised first, as with ``once``).
    tolerance_s : float
        Grouping tolerance: files within this many seconds of a group's earliest file join it.
    incomplete_timeout_s : float
        Finalise an incomplete group after this many seconds without a new file for it.
    min_subbands : int
        Process an incomplete group with at least this many usable subbands, else fail it.
    lease_s : float
        Claim lease in seconds (renewed every loop).
    max_attempts : int
        Attempts before a group fails.
    retry_backoff_s : float
        First retry delay in seconds (doubles with each attempt).
    cal_wait_s : float or None
        A group whose calibration is not valid yet waits, without being claimed, until the
        calibration registry changes (a table registered, made valid or rejected: its row count
        or latest update changed) or its deadline (``max_cal_wait_s``); with this set, it is also
        tried again every ``cal_wait_s`` seconds (default None: never just because time passed).
    max_cal_wait_s : float
        A group still without valid calibration this many seconds after it was queued fails.
    disk_full_pause_s : float
        Pause claiming this many seconds after a full disk.
    min_free_gb : float
        Do not start groups while the stage directory has less free space than this (GB).
    validate, check_values : bool
        Validate new files (:func:`dsacont.service.watcher.validate_subband_file`); read every
        visibility to find NaN/Inf and truncation.
    max_nonfinite_frac : float
        Quarantine a file with a larger fraction of NaN/Inf visibilities (0: any).
    settle_s : float
        A file younger than this (seconds) is read only once its size stops changing.
    watch_budget_s : float or None
        Seconds of file validation per loop (default ``max(5, lease_s / 4)``); a backlog is
        validated over several loops, oldest first, while heartbeats and claims go on.
    group_timeout_s : float or None
        Give up on a group running longer than this many seconds (an attempt fails with "timed
        out"; on a LocalCluster the worker process is restarted, killing a hung CASA call).
    reprocess_late : bool
        A subband that arrives after its group was completed without it is always recorded (and
        ``dsacont reprocess GROUP`` rebuilds the group's products with it); with this option the
        service queues such a group for rebuilding by itself, once all 16 subbands are in or no
        late file came for ``incomplete_timeout_s``. The products are recorded over the old rows,
        and mosaics that used the group's images are marked ``stale`` (the mosaic trigger makes
        them again).
    """

    processor: str = DEFAULT_PROCESSOR
    on_complete: str | None = DEFAULT_ON_COMPLETE
    priority: str | None = DEFAULT_PRIORITY
    processor_options: dict = field(default_factory=dict)
    scheduler: str | None = None
    max_inflight: int = 1
    n_workers: int | None = None
    threads_per_worker: int | None = None
    once: bool = False
    stop_on_error: bool = False
    poll_s: float = 2.0
    max_groups: int | None = None
    idle_exit_s: float | None = None
    tolerance_s: float = 30.0
    incomplete_timeout_s: float = 900.0
    min_subbands: int = 12
    lease_s: float = 120.0
    max_attempts: int = 3
    retry_backoff_s: float = 10.0
    cal_wait_s: float | None = None
    max_cal_wait_s: float = 86400.0
    disk_full_pause_s: float = 60.0
    min_free_gb: float = 1.0
    validate: bool = True
    check_values: bool = True
    max_nonfinite_frac: float = 0.0
    settle_s: float = 1.0
    watch_budget_s: float | None = None
    group_timeout_s: float | None = None
    reprocess_late: bool = False


@dataclass
class ServiceSummary:
    """What one :func:`run_service` call did."""

    exit_reason: str = ""
    exit_code: int = 0
    completed: list = field(default_factory=list)
    failed: list = field(default_factory=list)
    deferred: int = 0
    quarantined_files: list = field(default_factory=list)
    counts: dict = field(default_factory=dict)
    wall_s: float = 0.0


def _free_gb(path) -> float | None:
    try:
        return shutil.disk_usage(path).free / 1e9
    except OSError:
        return None


def run_service(paths, options: ServiceOptions | None = None, *, install_signal_handlers: bool = True,
                stop_event: threading.Event | None = None, **overrides) -> ServiceSummary:
    """Run the streaming service until told to stop (see the module docstring for the rules).

    Parameters
    ----------
    paths : dsacont.config.Paths
        ``incoming`` is watched; the state databases are in ``paths.state``; products go where
        the processor puts them (normally under ``paths.stage``).
    options : ServiceOptions, optional
        Every setting (default ``ServiceOptions()``); e.g. from the config file,
        ``dsacont.options.load(ServiceOptions, "dsacont.toml", "service")``.
    install_signal_handlers : bool
        SIGTERM/SIGINT finish the groups in flight and stop (twice: stop now). Only in the main
        thread.
    stop_event : threading.Event, optional
        Set it (from another thread) to stop as on SIGTERM.
    **overrides
        Single fields of ``options`` to replace (``run_service(paths, once=True)``), as
        :func:`dataclasses.replace` does.

    Returns
    -------
    ServiceSummary
    """
    o = merge(options if options is not None else ServiceOptions(), overrides)
    if DEFAULT_PROCESSOR in (o.processor, o.on_complete):  # fail fast on a wrong pipeline option
        load_callable("dsacont.service.options:options_from")(o.processor_options)
    # what a task is sent follows the pipeline's rules (tables of the strip within its borrowing reach)
    known_kw = {"borrow_days": float(o.processor_options["bandpass_borrow_days"])} \
        if "bandpass_borrow_days" in (o.processor_options or {}) else {}
    t_start = time.time()
    paths.ensure()
    queue = IngestQueue(paths.queue_db, tolerance_s=o.tolerance_s, lease_s=o.lease_s, max_attempts=o.max_attempts,
                        retry_backoff_s=o.retry_backoff_s)
    me = WorkerId.this_process("stream")
    watcher = Watcher(paths.incoming, queue, settle_s=o.settle_s, validate=o.validate, check_values=o.check_values,
                      max_nonfinite_frac=o.max_nonfinite_frac)
    summary = ServiceSummary()
    stop = stop_event or threading.Event()
    hard_stop = threading.Event()

    old_handlers = {}
    if install_signal_handlers and threading.current_thread() is threading.main_thread():
        def _on_signal(signum, _frame):
            if stop.is_set():
                log.warning("second %s: stopping now; groups in flight go back to the queue",
                            signal.Signals(signum).name)
                hard_stop.set()
            else:
                log.warning("%s: finishing the groups in flight, then stopping (again to stop now)",
                            signal.Signals(signum).name)
                stop.set()
        for s in (signal.SIGTERM, signal.SIGINT):
            old_handlers[s] = signal.signal(s, _on_signal)

    hook = _resolve_hook(o.on_complete)
    # the default priority reads the default processor's options (a custom processor's may differ)
    prioritise = load_callable(o.priority) if o.priority and (
        o.priority != DEFAULT_PRIORITY or o.processor == DEFAULT_PROCESSOR) else None
    load_callable(o.processor)  # fail fast on a wrong --processor, before starting a cluster
    executor = Executor(o.scheduler, max_inflight=o.max_inflight, n_workers=o.n_workers,
                        threads_per_worker=o.threads_per_worker)
    log.info("dsacont stream: watching %s, queue %s, processor %s, on %s", paths.incoming, paths.queue_db,
             o.processor, executor.description)
    ctx_base = dict(paths=paths, worker=me.name, threads=executor.threads, options=dict(o.processor_options),
                    service_pid=os.getpid(),
                    log_level=logging.getLogger("dsacont").getEffectiveLevel() or logging.INFO)

    inflight: dict[int, tuple[GroupRecord, object, float]] = {}  # group id -> (record, future, t0)
    hooks: list = []  # the on-complete hook in flight: [(group, future)], one at a time
    hook_queue: deque = deque()  # hooks to run next, in completion order: (group, result)
    paused_until = 0.0
    outcomes = 0
    last_activity = time.time()
    last_status = 0.0
    error_stop = None
    # the calibration registry's state when the waiting groups were last woken (None: wake those
    # that began waiting before a change made while the service was down)
    cal_state = None
    cal_seen: dict[int, str] = {}  # group id -> the registry's state when its task was submitted

    def submit_hook(group, result):
        """Queue the hook; hooks run one at a time, each given the products recorded before it."""
        if hook is not None:
            hook_queue.append((group, result))
        pump_hooks()

    def hook_threads(group) -> int:
        """A worker's share of the CPUs, and after a group the shares of the slots no group is
        using or waiting for (e.g. the hour's last group done: its mosaic's source finding gets
        every core). At start-up the queue is not read yet: one share."""
        if group is None:
            return executor.threads
        try:
            pending = int(queue.counts().get("pending", 0))
        except Exception:  # noqa: BLE001 - the queue unreadable now: assume every slot is wanted
            pending = o.max_inflight
        spare = max(0, o.max_inflight - len(inflight) - pending)
        return min(os.cpu_count() or 1, executor.threads * (1 + spare))

    def pump_hooks():
        if hooks or not hook_queue:
            return
        group, result = hook_queue.popleft()
        try:
            known = known_for_hook(paths)
        except Exception as exc:  # noqa: BLE001 - the products database unreadable now: a later hook catches up
            log.error("on-complete hook: cannot read the products database: %s", exc)
            known = {}
        ctx = ServiceContext(**{**ctx_base, "threads": hook_threads(group)}, known=known)
        key = f"hook-{group.timestamp if group else 'startup'}-{time.time_ns()}"
        hooks.append((group, executor.submit(run_hook_task, hook, group, result, ctx, key=key)))

    # groups finished, as a bar in a terminal or notebook (nothing in a log file)
    bar = tqdm(desc="groups", unit="group", disable=None, leave=True)
    try:
        for ts, why in queue.reclaim_stale():
            log.warning("start-up: group %s back to the queue (%s)", ts, why)
        submit_hook(None, None)
        while True:
            now = time.time()
            if hard_stop.is_set():
                summary.exit_reason = "stopped (signal)"
                break
            # 1. keep our claims alive, watch and queue
            try:
                lost = queue.heartbeat({gid: rec.claim_token for gid, (rec, _f, _t) in inflight.items()})
                for gid in lost:
                    rec, fut, _ = inflight.pop(gid)
                    log.error("group %s: our claim was taken over (lease lost); abandoning it", rec.timestamp)
                budget = o.watch_budget_s if o.watch_budget_s is not None else max(5.0, o.lease_s / 4)
                new = watcher.poll(budget_s=budget)
                watcher.report(me)
                if new:
                    last_activity = now
                for r in new:
                    if r.status == "quarantined":
                        summary.quarantined_files.append((r.path, r.reason))
                        if o.stop_on_error and error_stop is None:
                            error_stop = f"quarantined {r.path}: {r.reason}"
                # finalise incomplete groups early only when every file present has been recorded
                force = o.once and watcher.backlog == 0
                if (o.idle_exit_s is not None and not inflight and watcher.backlog == 0
                        and now - last_activity >= o.idle_exit_s):
                    force = True
                # never while a file of the group is in incoming but not recorded; "newer data" counts
                # only once the watcher has looked at everything it sees
                for ts, state, note in queue.finalize_groups(incomplete_timeout_s=o.incomplete_timeout_s,
                                                             min_subbands=o.min_subbands, force=force,
                                                             unrecorded=watcher.unrecorded_times(),
                                                             hold_newer=watcher.backlog > 0):
                    last_activity = now
                    if state == "failed":
                        summary.failed.append((ts, note))
                        if o.stop_on_error and error_stop is None:
                            error_stop = f"group {ts} failed: {note}"
                if o.reprocess_late and queue.rebuild_late(quiet_s=o.incomplete_timeout_s):
                    last_activity = now
                # 2. groups of dead services back to the queue
                queue.heartbeat({gid: rec.claim_token for gid, (rec, _f, _t) in inflight.items()})
                for ts, why in queue.reclaim_stale():
                    last_activity = now
            except sqlite3.OperationalError as exc:
                if db.is_disk_full(exc):
                    log.error("queue database %s: disk full (%s); pausing %.0f s", paths.queue_db, exc,
                              o.disk_full_pause_s)
                    paused_until = time.time() + o.disk_full_pause_s
                    time.sleep(min(o.poll_s, o.disk_full_pause_s))
                    continue
                raise

            # 3. harvest finished groups and hooks (and give up on groups over their time limit)
            if o.group_timeout_s:
                for gid, (rec, fut, t0) in list(inflight.items()):
                    if not fut.done() and time.time() - t0 > o.group_timeout_s:
                        inflight.pop(gid)
                        executor.abandon(fut, _task_key(rec))
                        out = {"status": "error", "message": f"timed out after {o.group_timeout_s:.0f} s (the worker "
                               f"was restarted)", "disk_full": False}
                        state = _record_outcome(queue, rec, out, me, cal_wait_s=o.cal_wait_s,
                                                disk_full_pause_s=o.disk_full_pause_s, t0=t0, paths=paths)
                        if state in ("failed", "quarantined"):
                            outcomes += 1
                            summary.failed.append((rec.timestamp, out["message"]))
                        if o.stop_on_error and error_stop is None:
                            error_stop = f"group {rec.timestamp}: {out['message']}"
            done = []
            for gid in [g for g, (_r, f, _t) in inflight.items() if f.done()]:
                rec, fut, t0 = inflight.pop(gid)
                done.append((rec, executor.outcome(fut), t0))
                executor.release(fut)
            done.sort(key=lambda d: d[1].get("status") != "ok")  # completions first: they may wake waiters
            for rec, out, t0 in done:
                last_activity = time.time()
                out = _record_products(paths, rec, out)  # the products first, then the queue
                # a group that found no calibration waits until the registry changes, unless it
                # already changed while its task ran (a solve recorded meanwhile): then at once
                seen = cal_seen.pop(rec.id, None)
                cal_now = calibration_state(paths) if out.get("status") == "calibration_wait" else None
                state = _record_outcome(queue, rec, out, me, cal_wait_s=o.cal_wait_s, max_cal_wait_s=o.max_cal_wait_s,
                                        disk_full_pause_s=o.disk_full_pause_s, t0=t0, paths=paths,
                                        cal_token=seen, cal_now=cal_now)
                if state in ("completed", "failed", "quarantined"):
                    outcomes += 1
                if state == "completed":
                    summary.completed.append(rec.timestamp)
                    if rec.rebuild:
                        _mark_mosaics_stale(paths, rec, o.tolerance_s)
                    submit_hook(rec, out.get("result"))
                elif state == "deferred":
                    summary.deferred += 1
                elif state in ("failed", "quarantined", "pending"):
                    if state != "pending":
                        summary.failed.append((rec.timestamp, out.get("message")))
                    if out.get("disk_full"):
                        paused_until = time.time() + o.disk_full_pause_s
                    if o.stop_on_error and error_stop is None:
                        error_stop = f"group {rec.timestamp}: {out.get('message')}"
            if outcomes > bar.n:  # groups finished (any way, time-outs included) since the last pass
                bar.set_postfix(completed=len(summary.completed), failed=len(summary.failed), refresh=False)
                bar.update(outcomes - bar.n)
            for item in [h for h in hooks if h[1].done()]:
                hooks.remove(item)
                g, fut = item
                try:
                    value = fut.result()
                    executor.release(fut)
                    if isinstance(value, dict) and "products" in value:
                        value = dict(value)
                        made = value.pop("products")
                        if made and any(made.values()):
                            value["recorded"] = record_products(paths, made)
                    if value:
                        log.info("on-complete hook after %s: %s", g.timestamp if g else "start-up", value)
                except Exception as exc:  # noqa: BLE001
                    log.error("on-complete hook after %s failed: %s", g.timestamp if g else "start-up", exc)
                    if o.stop_on_error and error_stop is None:
                        error_stop = f"on-complete hook after {g.timestamp if g else 'start-up'}: {exc}"
            pump_hooks()

            if error_stop is not None and not stop.is_set():
                log.error("--stop-on-error: %s; stopping after %d group(s) in flight", error_stop, len(inflight))
                summary.exit_code = 1
                stop.set()

            # 4. claim and submit (groups waiting for calibration first, if the registry changed;
            #    new pending groups get their priority first)
            if prioritise is not None:
                _assess_priorities(queue, prioritise, o.processor_options)
            new_state = calibration_state(paths)
            if new_state != cal_state:
                cal_state = new_state
                woken = queue.wake_calibration(cal_state)
                if woken:
                    log.info("calibration registry changed: %d group(s) waiting for calibration claimable again "
                             "(%s)", len(woken), ", ".join(woken))
            now = time.time()
            can_claim = not stop.is_set() and now >= paused_until and (
                o.max_groups is None or outcomes + len(inflight) < o.max_groups)
            if can_claim and o.min_free_gb > 0:
                free = _free_gb(paths.stage)
                if free is not None and free < o.min_free_gb:
                    if now - last_status > 60:
                        log.warning("only %.2f GB free on %s (< %.2f GB): not starting new groups", free,
                                    paths.stage, o.min_free_gb)
                        last_status = now
                    can_claim = False
            while can_claim and len(inflight) < o.max_inflight:
                rec = queue.claim(me)
                if rec is None:
                    break
                try:
                    known = known_for_group(paths, rec.timestamp, **known_kw)
                    if rec.rebuild:  # make every product again: the task is told of none, nor of
                        # calibration solved on the group's own MS (a calibrator group solves again)
                        own = {m.get("path") for m in (known.get("products") or {}).get("ms", [])}
                        known = dict(known, products={"ms": [], "images": []}, rebuild=True,
                                     calibration=[r for r in known.get("calibration") or []
                                                  if getattr(r, "source_ms", None) not in own])
                except Exception as exc:  # noqa: BLE001 - a state database unreadable now: retry later
                    log.error("group %s: cannot read what the state databases hold for it: %s", rec.timestamp, exc)
                    queue.fail(rec, f"reading the state databases: {type(exc).__name__}: {exc}", retry=True,
                               worker=me.name)
                    break
                ctx = ServiceContext(attempt=rec.attempts + 1, known=known, requeue=True, **ctx_base)
                fut = executor.submit(run_group_task, o.processor, rec, ctx, key=_task_key(rec))
                inflight[rec.id] = (rec, fut, time.time())
                cal_seen[rec.id] = cal_state  # read just before this claim loop
                last_activity = time.time()

            # 5. exit?
            if stop.is_set() and not inflight and not hooks and not hook_queue:
                summary.exit_reason = summary.exit_reason or ("stopped on error" if error_stop else "stopped")
                break
            if not inflight and not hooks and not hook_queue:
                if o.max_groups is not None and outcomes >= o.max_groups:
                    summary.exit_reason = f"max_groups={o.max_groups} reached"
                    break
                waiting = queue.next_claimable_in()
                collecting = queue.counts()["collecting"] + watcher.backlog
                if o.once and not collecting and waiting is None:
                    summary.exit_reason = "once: nothing left to claim"
                    break
                if (o.idle_exit_s is not None and not collecting and waiting is None
                        and time.time() - last_activity >= o.idle_exit_s):
                    summary.exit_reason = f"idle for {o.idle_exit_s:.0f} s"
                    break
            if time.time() - last_status >= 60:
                last_status = time.time()
                c = queue.counts()
                log.info("queue: %s", ", ".join(f"{k} {v}" for k, v in c.items() if v))
            executor.wait([f for _r, f, _t in inflight.values()] + [f for _g, f in hooks], timeout=o.poll_s)
    finally:
        for gid, (rec, fut, _t) in list(inflight.items()):
            try:
                fut.cancel()
            except Exception:  # noqa: BLE001
                pass
            queue.release(rec, "service stopped before the group finished", worker=me.name)
            log.warning("group %s released back to the queue (service stopping)", rec.timestamp)
        bar.close()
        executor.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        summary.counts = queue.counts()
        summary.wall_s = time.time() - t_start
        queue.close()
    waiting = summary.counts.get("pending", 0)
    log.info("dsacont stream stopped: %s; %d completed, %d failed this run; queue: %s%s", summary.exit_reason,
             len(summary.completed), len(summary.failed),
             ", ".join(f"{k} {v}" for k, v in summary.counts.items() if v),
             f" ({waiting} still pending)" if waiting else "")
    return summary


def _mark_mosaics_stale(paths, rec: GroupRecord, tolerance_s: float) -> list[int]:
    """After a group's products were rebuilt: mark the mosaics made of its images ``stale``.

    The group's images: those of its MS rows, and any image whose start lies within the group's
    span of file timestamps (``tolerance_s`` either side). The mosaic trigger then sees them as in
    no (current) mosaic and makes the mosaics again, at the same paths, so their rows are
    replaced. Returns the mosaic ids marked.
    """
    timestamp = rec.timestamp
    if not paths.products_db.exists():
        return []
    try:
        products = Products(paths.products_db)
        images = [r["path"] for r in products.for_group(timestamp).get("images", [])]
        lo = rec.t_unix - tolerance_s
        hi = rec.t_unix + 2 * tolerance_s  # a group spans at most tolerance_s
        ids = products.mosaics_of_images(images, (lo / 86400.0 + 40587.0, hi / 86400.0 + 40587.0))
        for mid in ids:
            products.set_status("mosaic", mid, "stale", qa={"stale_reason": f"group {timestamp} was rebuilt"})
    except Exception as exc:  # noqa: BLE001 - the group is done; say what could not be marked
        log.error("group %s rebuilt, but its mosaics could not be marked stale: %s", timestamp, exc)
        return []
    if ids:
        log.warning("group %s rebuilt: mosaic(s) %s marked stale, to be made again", timestamp,
                    ", ".join(map(str, ids)))
    return ids


def _task_key(rec: GroupRecord) -> str:
    return f"group-{rec.timestamp}-{rec.claim_token[:8]}"


def _assess_priorities(queue: IngestQueue, prioritise, options: dict) -> None:
    """Give each pending group not assessed yet its claim priority (``ServiceOptions.priority``).

    A failing priority function is logged and the group keeps time order (priority 0).
    """
    for rec, header in queue.unassessed():
        try:
            value, why = prioritise(rec, header, options)
        except Exception as exc:  # noqa: BLE001 - a priority is an optimisation: never stop for it
            log.warning("group %s: no priority (%s: %s); time order", rec.timestamp, type(exc).__name__, exc)
            value, why = 0, None
        queue.set_priority(rec, int(value), why)
        if value:
            log.info("group %s goes first (priority %d): %s", rec.timestamp, value, why)


def _resolve_hook(spec: str | None) -> str | None:
    if not spec:
        return None
    try:
        load_callable(spec)
    except (ImportError, ValueError) as exc:
        if spec == DEFAULT_ON_COMPLETE:
            log.info("no on-complete hook (%s)", exc)
            return None
        raise
    return spec


def calibration_state(paths) -> str:
    """The calibration registry's state, as ``"<rows>:<latest update>"``: it changes whenever a
    table is registered, made valid or rejected (``"0:0"`` without a registry)."""
    if not paths.registry_db.exists():
        return "0:0"
    try:
        con = db.connect(paths.registry_db, readonly=True)
        try:
            n, last = con.execute("SELECT COUNT(*), MAX(updated) FROM caltables").fetchone()
        finally:
            con.close()
    except sqlite3.Error as exc:  # e.g. created but no table yet
        log.debug("calibration registry %s unreadable now: %s", paths.registry_db, exc)
        return "0:0"
    return f"{n}:{last or 0}"


def _record_outcome(queue: IngestQueue, rec: GroupRecord, out: dict, me: WorkerId, *, cal_wait_s: float | None,
                    disk_full_pause_s: float, t0: float, paths, max_cal_wait_s: float = 86400.0,
                    cal_token: str | None = None, cal_now: str | None = None) -> str:
    """Write a task outcome to the queue; returns completed/requeued/deferred/quarantined/failed/pending/stale."""
    status = out.get("status")
    wall = time.time() - t0
    if status == "ok":
        ok = queue.complete(rec, out.get("result"), worker=me.name)
        if ok:
            c = queue.counts()
            log.info("group %s completed in %.1f s%s [queue: %d completed, %d pending, %d running, %d failed]",
                     rec.timestamp, wall, f" ({16 - len(rec.missing)}/16 subbands)" if rec.missing else "",
                     c["completed"], c["pending"] + c["collecting"], c["in_progress"], c["failed"] + c["quarantined"])
        return "completed" if ok else "stale"
    if status == "requeue":  # a hand-over: the products are recorded, the group goes on as a new task
        ok = queue.defer(rec, f"requeued: {out.get('message')}", delay_s=0.0, wait_reason="requeue", worker=me.name)
        log.info("group %s handed over after %.1f s (%s); requeued", rec.timestamp, wall, out.get("message"))
        return "requeued" if ok else "stale"
    if status == "calibration_wait" and rec.queued and time.time() - rec.queued > max_cal_wait_s:
        new = queue.fail(rec, f"no valid calibration within {max_cal_wait_s / 3600:.1f} h of queueing: "
                              f"{out.get('message')}", retry=False, worker=me.name)
        log.error("group %s failed: no valid calibration within %.1f h", rec.timestamp, max_cal_wait_s / 3600)
        return new or "stale"
    if status == "calibration_wait":
        now = time.time()
        deadline = (rec.queued or now) + max_cal_wait_s + 1.0
        changed = cal_token is not None and cal_now is not None and cal_token != cal_now
        delay = 0.0 if changed else max(0.0, min(deadline - now, cal_wait_s if cal_wait_s else math.inf))
        reason = f"waiting for calibration: {out.get('message')}"
        ok = queue.defer(rec, reason, delay_s=delay, worker=me.name, wait_token=cal_token if not changed else None)
        if changed:
            log.info("group %s waits for calibration (%s), but the calibration registry changed meanwhile: "
                     "retry now", rec.timestamp, out.get("message"))
        elif rec.waits == 0 or rec.error != reason:  # say once what it waits for
            log.info("group %s waits for calibration (%s); claimed again when the calibration registry changes%s, "
                     "or fails at %s UTC", rec.timestamp, out.get("message"),
                     f" or in {cal_wait_s:.0f} s" if cal_wait_s else "", iso_from_unix(deadline))
        else:
            log.debug("group %s still waits for calibration", rec.timestamp)
        return "deferred" if ok else "stale"
    if status == "bad_input":
        ok = queue.quarantine(rec, f"bad input: {out.get('message')}", worker=me.name)
        log.error("group %s quarantined: %s", rec.timestamp, out.get("message"))
        return "quarantined" if ok else "stale"
    msg = out.get("message") or "unknown error"
    if out.get("disk_full"):
        free = {str(p): _free_gb(p) for p in {paths.stage, paths.tmp, paths.ms}}
        msg = f"disk full: {msg}; free GB {json.dumps(free)}; input files untouched"
        new = queue.fail(rec, msg, retry=True, worker=me.name, wait_reason="disk_full",
                         not_before=time.time() + disk_full_pause_s)
        log.error("group %s: %s; pausing new groups for %.0f s", rec.timestamp, msg, disk_full_pause_s)
    else:
        new = queue.fail(rec, msg, retry=True, worker=me.name)
        log.error("group %s attempt failed after %.1f s: %s%s", rec.timestamp, wall, msg,
                  "" if new == "pending" else " (no attempts left)")
        if out.get("traceback"):
            log.debug("%s", out["traceback"])
    return new or "stale"


def _record_products(paths, rec: GroupRecord, out: dict) -> dict:
    """Record what a group's task made, on any outcome (see :mod:`dsacont.service.state`).

    Returns the outcome to give the queue (an error if the products cannot be recorded).
    """
    made = out.get("products")
    result = out.get("result")
    if out.get("status") == "ok" and isinstance(result, dict) and "products" in result:
        result = dict(result)
        made = result.pop("products")
        out = dict(out, result=result)
    if not made:
        return out
    try:
        ids = record_products(paths, made)
    except Exception as exc:  # noqa: BLE001 - e.g. a product the service cannot see, a full disk
        log.error("group %s: recording its products failed: %s", rec.timestamp, exc)
        return {"status": "error", "message": f"recording the products failed: {type(exc).__name__}: {exc}",
                "disk_full": db.is_disk_full(exc)}
    if out.get("status") == "ok":
        out["result"] = dict(out["result"], recorded=ids)
    return out
