"""The streaming service: watch the incoming directory, queue groups, process them in time order.

``dsacont stream`` runs :func:`run_service`; ``dsacont status`` runs :func:`cli_status`.

How it works
------------
One loop, in one service process (several may share one queue; see below):

1. **Watch** (:class:`Watcher`): poll the incoming directory (polling works on every filesystem,
   NFS and Lustre included) for ``*_sbNN.hdf5``; ``*_incomplete.hdf5`` files are still being
   written and are ignored. A new file must look settled (unchanged size for one poll, or older
   than ``settle_s``) before it is read. Each file is validated cheaply
   (:func:`validate_subband_file`: HDF5 signature, UVH5 header consistency through
   :class:`dsacont.io.uvh5.SubbandHeader`, every visibility row readable, no NaN/Inf) and
   recorded in the ingest queue (:mod:`dsacont.service.queue`) under its group: files are clustered by
   the timestamp in their names with the anchored rule of :mod:`dsacont.io.groups`.
   A bad file is **quarantined** (left in place, never processed) with a reason naming it:
   not HDF5, truncated, unreadable, wrong shape (vs. the majority of its siblings), NaN/Inf,
   duplicate subband, or arriving after its group was taken for processing (a late
   subband still joins a group that is queued but not yet claimed).
2. **Incomplete-group policy** (:meth:`dsacont.service.queue.IngestQueue.finalize_groups`): a group is
   queued (``pending``) as soon as all 16 subbands have arrived. Otherwise it is finalised when
   no file has arrived for it for ``incomplete_timeout_s`` (default 900 s) of wall time, or
   when data ``incomplete_timeout_s`` newer than it has arrived (the correlator moved on; this
   makes the rule independent of replay speed). Then: >= ``min_subbands`` (default 12) usable
   subbands -> processed, with the missing ones recorded (the processor gets ``None`` for
   them, the loader's ``allow_missing=True`` flags them); fewer -> ``failed`` with
   ``incomplete: N of 16 usable subbands``.
3. **Claim and process**: pending groups are claimed atomically, oldest first, and handed to
   the *processor* ``process(group: GroupRecord, context: ServiceContext) -> dict`` (default
   ``dsacont.service.pipeline:process_group``; any ``module:function`` via ``--processor``). It runs as
   a task on a Dask distributed cluster: a ``LocalCluster`` by default (one worker process per
   concurrent group, ``max_inflight`` of them, so casacore tables and CASA state are never
   shared between groups), or an existing cluster with ``--scheduler ADDRESS``. Inside the task
   ``dask.compute`` uses a local threaded scheduler with ``context.threads`` threads.
4. **Outcomes**: the returned dict is stored with the ``completed`` group, then the
   *on-complete hook* runs (default ``dsacont.service.pipeline:on_group_complete`` if it exists: the
   mosaic trigger; it also runs once at start-up, with ``group=None``, to catch a trigger
   missed by a crash). ``CalibrationUnavailable`` puts the group back to ``pending`` without
   using an attempt; it is retried ``cal_wait_s`` later, or at once when another group
   completes. ``BadInputError`` quarantines the group. Any other error uses an attempt
   (retried with backoff; ``failed`` after ``max_attempts``).
5. **Full disk**: an ENOSPC/EDQUOT from the processor (or SQLite's "database or disk is full")
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
``os.replace``; register only after the move; registration keyed by product path, as
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

``--stop-on-error``: the operators' foreground mode. The first failure (a quarantined file, a
failed or quarantined group) stops claiming, lets groups in flight finish, prints the reason and
exits with status 1.
"""
from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import shutil
import signal
import socket
import sqlite3
import sys
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from dsacont import db
from dsacont.errors import BadInputError, CalibrationUnavailable
from dsacont.service.queue import GroupRecord, IngestQueue, WorkerId, iso_from_unix, unix_from_datetime

log = logging.getLogger(__name__)

DEFAULT_PROCESSOR = "dsacont.service.pipeline:process_group"
DEFAULT_ON_COMPLETE = "dsacont.service.pipeline:on_group_complete"
_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


# ------------------------------------------------------------------------------------- validation
def validate_subband_file(path, *, check_values: bool = True, max_nonfinite_frac: float = 0.0,
                          rows_per_read: int = 4096) -> dict:
    """Check that a subband file can be processed; return its shape.

    Cheap checks, in order: a regular non-empty file, the HDF5 signature, the UVH5 header and
    its consistency with the data arrays (:class:`dsacont.io.uvh5.SubbandHeader`), then the
    visibilities read in blocks of ``rows_per_read`` baseline-times (catches truncation; memory
    bounded) counting NaN/Inf (``check_values``). ~0.1-0.3 s for a full-size 140 MB file, and
    it warms the page cache for the conversion.

    Returns
    -------
    dict
        ``{"nblts", "nfreqs", "npols", "ntimes", "nbls", "nonfinite"}``.

    Raises
    ------
    BadInputError
        Naming the file and what is wrong.
    """
    import h5py
    import numpy as np

    from dsacont.io.uvh5 import SubbandHeader

    path = str(path)
    try:
        st = os.stat(path)
    except PermissionError as exc:
        raise BadInputError(path, f"unreadable: {exc.strerror}") from exc
    except FileNotFoundError:
        if os.path.islink(path):
            raise BadInputError(path, f"unreadable: broken symbolic link to {os.readlink(path)}") from None
        raise
    if not os.path.isfile(path):
        raise BadInputError(path, "unreadable: not a regular file")
    if st.st_size == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise BadInputError(path, f"unreadable: {exc.strerror or exc}") from exc
    if head != _HDF5_SIGNATURE and not h5py.is_hdf5(path):  # is_hdf5 also finds a user block
        raise BadInputError(path, f"not an HDF5 file (no HDF5 signature; {st.st_size} bytes, starts {head[:8]!r})")
    try:
        h = SubbandHeader(path)
    except BadInputError as exc:
        msg = exc.reason
        if "truncated" in msg:
            msg = f"truncated HDF5 file ({st.st_size} bytes): {msg}"
        raise BadInputError(path, msg) from exc
    shape = {"nblts": h.nblts, "nfreqs": h.nfreqs, "npols": h.npols, "ntimes": h.ntimes, "nbls": h.nbls}
    nonfinite = 0
    try:
        with h5py.File(path, "r") as f:
            vis = f["Data/visdata"]
            nrows = vis.shape[0]
            if check_values:
                for r0 in range(0, nrows, rows_per_read):
                    block = vis[r0:r0 + rows_per_read]
                    if block.dtype.names:  # compound (r, i) integer storage
                        block = block[block.dtype.names[0]].astype(np.float32) + 1j * block[block.dtype.names[1]]
                    nonfinite += int(block.size - np.count_nonzero(np.isfinite(block)))
            else:
                vis[nrows - 1:nrows]  # the last row: a truncated file fails here
            for name in ("flags", "nsamples"):
                ds = f["Data/" + name]
                ds[ds.shape[0] - 1:ds.shape[0]]
    except OSError as exc:
        raise BadInputError(path, f"truncated or corrupt HDF5 data ({st.st_size} bytes): cannot read "
                                  f"Data/visdata ({exc})") from exc
    shape["nonfinite"] = nonfinite
    if check_values and nonfinite:
        total = h.nblts * h.nfreqs * h.npols
        frac = nonfinite / max(total, 1)
        if frac > max_nonfinite_frac:
            raise BadInputError(path, f"{nonfinite} of {total} visibilities are NaN/Inf ({100 * frac:.3g}%)")
    return shape


# ---------------------------------------------------------------------------------------- watcher
class Watcher:
    """Poll a directory for new subband files and record them in the queue.

    Parameters
    ----------
    incoming : path
        Directory the correlator (or ``dsacont replay``) writes to. Not recursive.
    queue : IngestQueue
    settle_s : float
        A file whose modification time is younger than this, and whose size changed since the
        previous poll, is left for the next poll (guards against copies made without the
        ``_incomplete`` rename).
    validate : bool
        Run :func:`validate_subband_file` (``check_values`` reads the visibilities once).
    """

    def __init__(self, incoming, queue: IngestQueue, *, settle_s: float = 1.0, validate: bool = True,
                 check_values: bool = True, max_nonfinite_frac: float = 0.0):
        self.incoming = Path(incoming)
        self.queue = queue
        self.settle_s = settle_s
        self.validate = validate
        self.check_values = check_values
        self.max_nonfinite_frac = max_nonfinite_frac
        self.known: set[str] = queue.known_paths()
        self._sizes: dict[str, int] = {}
        self._ignored: set[str] = set()
        self.newest_arrival = 0.0
        self.backlog = 0  # files seen but not yet recorded (not settled, or validation budget used up)
        self.unsettled = 0

    def scan(self) -> list[tuple[str, object]]:
        """New, settled subband file paths (not yet in the queue) with their parsed names, oldest first."""
        from dsacont.io.groups import parse_subband_name

        out = []
        now = time.time()
        self.unsettled = 0
        try:
            entries = list(os.scandir(self.incoming))
        except FileNotFoundError:
            log.warning("incoming directory %s does not exist (yet)", self.incoming)
            return []
        for e in entries:
            if e.path in self.known or not e.name.endswith(".hdf5") or "_incomplete" in e.name:
                continue
            name = parse_subband_name(e.name)
            if name is None:
                if e.path not in self._ignored:
                    self._ignored.add(e.path)
                    log.debug("ignoring %s: not a subband file name", e.path)
                continue
            try:
                st = e.stat()
            except FileNotFoundError:
                if e.is_symlink():  # a broken link: report it (validation quarantines it)
                    out.append((e.path, name))
                continue  # renamed or removed meanwhile
            prev = self._sizes.get(e.path)
            if now - st.st_mtime < self.settle_s and prev != st.st_size:
                self._sizes[e.path] = st.st_size
                self.unsettled += 1
                continue
            self._sizes.pop(e.path, None)
            out.append((e.path, name))
        out.sort(key=lambda x: (x[1].timestamp, x[1].subband))
        return out

    def poll(self, budget_s: float | None = None) -> list:
        """Scan once, validate and record new files, oldest first; returns ``AddResult``s.

        ``budget_s``: stop after this many seconds (the rest waits for the next poll), so a
        backlog of thousands of files never starves the service loop's heartbeats.
        """
        results = []
        t0 = time.monotonic()
        todo = self.scan()
        self.backlog = self.unsettled  # files seen but not yet looked at count as a backlog too
        for i, (path, name) in enumerate(todo):
            if budget_s is not None and time.monotonic() - t0 > budget_s:
                self.backlog += len(todo) - i
                log.info("watcher: validation budget of %.0f s used; %d more file(s) next poll", budget_s,
                         len(todo) - i)
                break
            reason, shape = None, None
            size = mtime = None
            try:
                st = os.stat(path)
                size, mtime = st.st_size, st.st_mtime
            except FileNotFoundError:
                if not os.path.islink(path):
                    continue
            except OSError:
                pass
            if self.validate:
                try:
                    shape = validate_subband_file(path, check_values=self.check_values,
                                                  max_nonfinite_frac=self.max_nonfinite_frac)
                except BadInputError as exc:
                    reason = exc.reason
                except FileNotFoundError:
                    continue
                except Exception as exc:  # noqa: BLE001 - anything unexpected while reading: quarantine, go on
                    reason = f"unreadable: {type(exc).__name__}: {exc}"
            res = self.queue.add_file(path, unix_from_datetime(name.timestamp), name.subband, shape=shape,
                                      reason=reason, size=size, mtime=mtime)
            self.known.add(path)
            self.newest_arrival = time.time()
            if res.status == "ok":
                log.debug("file %s -> group %s", os.path.basename(path), res.group_timestamp)
            results.append(res)
        return results


# ----------------------------------------------------------------------------------------- tasks
@dataclass
class ServiceContext:
    """What a processor gets besides the group (picklable; sent to the Dask worker).

    Attributes
    ----------
    paths : dsacont.config.Paths
        Where products go (ms, images, mosaics, tmp, caltables) and the state databases.
    worker : str
        The claiming service's identity (``host:pid:tag``).
    attempt : int
        1 for the first claim of this group, 2 after one failed/interrupted attempt, ...
    threads : int
        Threads this task may use (``dask.compute`` inside the task uses this many).
    options : dict
        Free-form ``--option KEY=VALUE`` settings from the command line, for the processor.
    """

    paths: object
    worker: str = ""
    attempt: int = 1
    threads: int = 1
    options: dict = field(default_factory=dict)
    log_level: int = logging.INFO
    service_pid: int = 0  # the service process (a processor must never signal it; tests do)


def load_callable(spec: str):
    """``"package.module:function"`` -> the function (``module.function`` also accepted)."""
    if ":" in spec:
        mod, _, name = spec.partition(":")
    else:
        mod, _, name = spec.rpartition(".")
    if not mod or not name:
        raise ValueError(f"processor {spec!r}: expected 'module:function'")
    module = importlib.import_module(mod)
    try:
        return getattr(module, name)
    except AttributeError:
        raise ValueError(f"{spec!r}: module {mod} has no function {name!r}") from None


def _configure_worker_logging(level: int) -> None:
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("dsacont").setLevel(level)


def _chain_disk_full(exc: BaseException) -> bool:
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if db.is_disk_full(exc) or "No space left on device" in str(exc):
            return True
        exc = exc.__cause__ or exc.__context__
    return False


def run_group_task(processor: str, group: GroupRecord, context: ServiceContext) -> dict:
    """Run one group through the processor (on a Dask worker); never raises.

    Returns ``{"status": "ok", "result": dict}`` or ``{"status": "calibration_wait" |
    "bad_input" | "error", "message": str, ...}``.
    """
    import dask

    _configure_worker_logging(context.log_level)
    t0 = time.time()
    wlog = logging.getLogger("dsacont.service.streaming.worker")
    try:
        fn = load_callable(processor)
        with dask.config.set(scheduler="threads", num_workers=max(1, context.threads)):
            result = fn(group, context)
        return {"status": "ok", "result": result if isinstance(result, dict) else {"value": result},
                "wall_s": time.time() - t0, "pid": os.getpid()}
    except CalibrationUnavailable as exc:
        return {"status": "calibration_wait", "message": str(exc), "wall_s": time.time() - t0}
    except BadInputError as exc:
        return {"status": "bad_input", "message": str(exc), "path": exc.path, "reason": exc.reason,
                "wall_s": time.time() - t0}
    except Exception as exc:  # noqa: BLE001 - everything else is reported to the queue
        wlog.exception("group %s failed", group.timestamp)
        return {"status": "error", "message": f"{type(exc).__name__}: {exc}", "disk_full": _chain_disk_full(exc),
                "traceback": traceback.format_exc(limit=8), "wall_s": time.time() - t0}


def run_hook_task(hook: str, group: GroupRecord | None, result: dict | None, context: ServiceContext):
    """Run the on-complete hook (e.g. the mosaic trigger) on a worker; returns its value or raises."""
    import dask

    _configure_worker_logging(context.log_level)
    fn = load_callable(hook)
    with dask.config.set(scheduler="threads", num_workers=max(1, context.threads)):
        return fn(group, result, context)


# --------------------------------------------------------------------------------------- executor
class _Executor:
    """A Dask distributed client (LocalCluster or external scheduler), or an inline thread pool."""

    def __init__(self, scheduler: str | None, *, max_inflight: int, n_workers: int | None,
                 threads_per_worker: int | None):
        self.kind = "inline" if scheduler in ("inline", "threads") else "dask"
        self.cluster = None
        self.client = None
        self.pool = None
        self.resources = None
        ncpu = os.cpu_count() or 2
        if self.kind == "inline":
            from concurrent.futures import ThreadPoolExecutor

            self.pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="dsacont-group")
            self.threads = max(1, ncpu // max_inflight)
            self.description = f"inline ({max_inflight} thread(s) in the service process)"
            return
        import dask
        from dask.distributed import Client, LocalCluster

        if not logging.getLogger("dsacont").isEnabledFor(logging.DEBUG):
            logging.getLogger("distributed").setLevel(logging.WARNING)

        if scheduler:
            self.client = Client(scheduler, timeout="30s")
            info = self.client.scheduler_info()
            workers = info.get("workers", {})
            if any("group" in (w.get("resources") or {}) for w in workers.values()):
                self.resources = {"group": 1}
            elif max_inflight > 1:
                log.warning("the workers of %s have no 'group' resource: several groups may run in one worker "
                            "process at once (CASA is not thread-safe); start workers with "
                            "'dask worker ... --resources group=1'", scheduler)
            nthreads = [w.get("nthreads", 1) for w in workers.values()] or [1]
            self.threads = max(1, min(nthreads))
            self.description = f"Dask scheduler {scheduler} ({len(workers)} workers)"
        else:
            n = n_workers or max_inflight
            tpw = threads_per_worker or max(1, ncpu // n)
            with dask.config.set({"distributed.scheduler.allowed-failures": 0,
                                  "distributed.worker.daemon": False}):
                self.cluster = LocalCluster(n_workers=n, threads_per_worker=tpw, processes=True,
                                            dashboard_address=":0", resources={"group": 1})
                self.client = Client(self.cluster)
            self.resources = {"group": 1}
            self.threads = tpw
            self.description = f"Dask LocalCluster ({n} worker process(es) x {tpw} thread(s))"

    def submit(self, fn, *args, key: str):
        if self.pool is not None:
            return self.pool.submit(fn, *args)
        kw = {"resources": self.resources} if self.resources else {}
        return self.client.submit(fn, *args, key=key, pure=False, retries=0, **kw)

    def wait(self, futures, timeout: float) -> None:
        if not futures:
            time.sleep(timeout)
            return
        if self.pool is not None:
            from concurrent.futures import FIRST_COMPLETED, wait

            wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
            return
        from dask.distributed import wait

        try:
            wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
        except Exception:  # noqa: BLE001 - distributed raises TimeoutError on timeout
            pass

    @staticmethod
    def release(fut) -> None:
        """Forget a harvested future (the cluster must not keep or recompute its result)."""
        rel = getattr(fut, "release", None)
        if rel is not None:
            try:
                rel()
            except Exception:  # noqa: BLE001
                pass

    def abandon(self, fut, key: str) -> None:
        """Give up on a running group task: cancel it and, on a LocalCluster, restart the worker
        process running it (a hung CASA call cannot be interrupted any other way)."""
        busy = []
        if self.cluster is not None and self.client is not None:
            try:
                busy = [w for w, keys in self.client.processing().items() if key in map(str, keys)]
            except Exception as exc:  # noqa: BLE001
                log.error("cannot find the worker running %s: %s", key, exc)
        try:
            fut.cancel()
        except Exception:  # noqa: BLE001
            pass
        if not busy:
            return  # inline threads cannot be killed; an external cluster is not ours to restart
        try:
            self.client.restart_workers(busy, timeout=60)
            log.warning("restarted worker(s) %s that ran %s", busy, key)
        except Exception as exc:  # noqa: BLE001
            log.error("could not restart the worker of %s: %s", key, exc)

    @staticmethod
    def outcome(fut) -> dict:
        try:
            return fut.result()
        except Exception as exc:  # noqa: BLE001 - worker died (KilledWorker), cancelled, ...
            return {"status": "error", "message": f"{type(exc).__name__}: {exc} (the worker process died or the "
                                                  f"task was lost)", "disk_full": False}

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)
        if self.client is not None:
            try:
                self.client.close(timeout=10)
            except Exception:  # noqa: BLE001
                pass
        if self.cluster is not None:
            try:
                self.cluster.close(timeout=10)
            except Exception:  # noqa: BLE001
                pass


# ---------------------------------------------------------------------------------------- service
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


def run_service(paths, *, processor: str = DEFAULT_PROCESSOR, on_complete: str | None = DEFAULT_ON_COMPLETE,
                scheduler: str | None = None, max_inflight: int = 1, n_workers: int | None = None,
                threads_per_worker: int | None = None, once: bool = False, stop_on_error: bool = False,
                poll_s: float = 2.0, max_groups: int | None = None, idle_exit_s: float | None = None,
                tolerance_s: float = 30.0, incomplete_timeout_s: float = 900.0, min_subbands: int = 12,
                lease_s: float = 120.0, max_attempts: int = 3, retry_backoff_s: float = 10.0,
                cal_wait_s: float = 300.0, max_cal_wait_s: float = 86400.0, disk_full_pause_s: float = 60.0,
                min_free_gb: float = 0.0,
                validate: bool = True, check_values: bool = True, max_nonfinite_frac: float = 0.0,
                settle_s: float = 1.0, watch_budget_s: float | None = None, group_timeout_s: float | None = None,
                options: dict | None = None, install_signal_handlers: bool = True,
                stop_event: threading.Event | None = None) -> ServiceSummary:
    """Run the streaming service until told to stop (see the module docstring for the rules).

    Parameters
    ----------
    paths : dsacont.config.Paths
        ``incoming`` is watched; the queue is ``paths.queue_db``; products go where the processor
        puts them (normally under ``paths.stage``).
    processor : str
        ``"module:function"``, called as ``function(group: GroupRecord, context: ServiceContext)
        -> dict`` on a Dask worker.
    on_complete : str or None
        ``"module:function"`` called as ``function(group | None, result | None, context)`` after
        each completed group and once at start-up (``None, None``); skipped if the module or
        function does not exist. The mosaic trigger.
    scheduler : str, optional
        Dask scheduler address (``tcp://host:8786``) of an existing cluster; ``None`` starts a
        LocalCluster with ``max_inflight`` worker processes; ``"inline"`` runs groups in a thread
        of this process (debugging only).
    max_inflight : int
        Groups processed concurrently (each in its own worker process on a LocalCluster).
    once : bool
        Process what is in ``incoming`` now (incomplete groups are finalised at once) and exit
        when nothing is left to claim (groups still waiting for calibration stay pending).
    stop_on_error : bool
        Exit (status 1) at the first quarantined file or failed/quarantined group, after the
        groups in flight finish.
    poll_s : float
        Seconds between scans of ``incoming``.
    max_groups : int, optional
        Exit after this many groups reached an outcome (completed, failed or quarantined).
    idle_exit_s : float, optional
        Exit after this long with no new file and nothing to do (collecting groups are
        finalised first, as with ``once``).
    tolerance_s, incomplete_timeout_s, min_subbands :
        Grouping and the incomplete-group policy.
    lease_s, max_attempts, retry_backoff_s :
        Claim lease (renewed every loop), attempts before ``failed``, first retry delay (doubles).
    cal_wait_s : float
        Retry delay for a group whose calibration is not valid yet (it is retried sooner, as
        soon as another group completes).
    max_cal_wait_s : float
        A group still without valid calibration this long after it was queued fails (24 h).
    disk_full_pause_s, min_free_gb :
        Pause claiming after ENOSPC, and while ``paths.stage`` has less than ``min_free_gb``.
    validate, check_values, max_nonfinite_frac, settle_s :
        Watcher checks (see :class:`Watcher` and :func:`validate_subband_file`).
    watch_budget_s : float, optional
        Seconds of file validation per loop (default ``max(5, lease_s / 4)``); a backlog is
        validated over several loops, oldest first, while heartbeats and claims go on.
    group_timeout_s : float, optional
        Give up on a group running longer than this (an attempt fails with "timed out"; on a
        LocalCluster the worker process is restarted, killing a hung CASA call).
    options : dict
        Passed to the processor as ``context.options``.

    Returns
    -------
    ServiceSummary
    """
    t_start = time.time()
    paths.ensure()
    queue = IngestQueue(paths.queue_db, tolerance_s=tolerance_s, lease_s=lease_s, max_attempts=max_attempts,
                        retry_backoff_s=retry_backoff_s)
    me = WorkerId.this_process("stream")
    watcher = Watcher(paths.incoming, queue, settle_s=settle_s, validate=validate, check_values=check_values,
                      max_nonfinite_frac=max_nonfinite_frac)
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

    hook = _resolve_hook(on_complete)
    load_callable(processor)  # fail fast on a wrong --processor, before starting a cluster
    executor = _Executor(scheduler, max_inflight=max_inflight, n_workers=n_workers,
                         threads_per_worker=threads_per_worker)
    log.info("dsacont stream: watching %s, queue %s, processor %s, on %s", paths.incoming, paths.queue_db,
             processor, executor.description)
    ctx_base = dict(paths=paths, worker=me.name, threads=executor.threads, options=dict(options or {}),
                    service_pid=os.getpid(),
                    log_level=logging.getLogger("dsacont").getEffectiveLevel() or logging.INFO)

    inflight: dict[int, tuple[GroupRecord, object, float]] = {}  # group id -> (record, future, t0)
    hooks: list = []
    paused_until = 0.0
    outcomes = 0
    last_completion = 0.0
    last_activity = time.time()
    last_status = 0.0
    error_stop = None

    def submit_hook(group, result):
        if hook is None:
            return
        ctx = ServiceContext(**ctx_base)
        key = f"hook-{group.timestamp if group else 'startup'}-{time.time_ns()}"
        hooks.append((group, executor.submit(run_hook_task, hook, group, result, ctx, key=key)))

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
                new = watcher.poll(budget_s=watch_budget_s if watch_budget_s is not None else max(5.0, lease_s / 4))
                if new:
                    last_activity = now
                for r in new:
                    if r.status == "quarantined":
                        summary.quarantined_files.append((r.path, r.reason))
                        if stop_on_error and error_stop is None:
                            error_stop = f"quarantined {r.path}: {r.reason}"
                # finalise incomplete groups early only when every file present has been recorded
                force = once and watcher.backlog == 0
                if (idle_exit_s is not None and not inflight and watcher.backlog == 0
                        and now - last_activity >= idle_exit_s):
                    force = True
                for ts, state, note in queue.finalize_groups(incomplete_timeout_s=incomplete_timeout_s,
                                                             min_subbands=min_subbands, force=force):
                    last_activity = now
                    if state == "failed":
                        summary.failed.append((ts, note))
                        if stop_on_error and error_stop is None:
                            error_stop = f"group {ts} failed: {note}"
                # 2. groups of dead services back to the queue
                queue.heartbeat({gid: rec.claim_token for gid, (rec, _f, _t) in inflight.items()})
                for ts, why in queue.reclaim_stale():
                    last_activity = now
            except sqlite3.OperationalError as exc:
                if db.is_disk_full(exc):
                    log.error("queue database %s: disk full (%s); pausing %.0f s", paths.queue_db, exc,
                              disk_full_pause_s)
                    paused_until = time.time() + disk_full_pause_s
                    time.sleep(min(poll_s, disk_full_pause_s))
                    continue
                raise

            # 3. harvest finished groups and hooks (and give up on groups over their time limit)
            if group_timeout_s:
                for gid, (rec, fut, t0) in list(inflight.items()):
                    if not fut.done() and time.time() - t0 > group_timeout_s:
                        inflight.pop(gid)
                        executor.abandon(fut, _task_key(rec))
                        out = {"status": "error", "message": f"timed out after {group_timeout_s:.0f} s (the worker "
                               f"was restarted)", "disk_full": False}
                        state = _record_outcome(queue, rec, out, me, cal_wait_s=cal_wait_s,
                                                disk_full_pause_s=disk_full_pause_s, t0=t0, paths=paths)
                        if state in ("failed", "quarantined"):
                            outcomes += 1
                            summary.failed.append((rec.timestamp, out["message"]))
                        if stop_on_error and error_stop is None:
                            error_stop = f"group {rec.timestamp}: {out['message']}"
            done = []
            for gid in [g for g, (_r, f, _t) in inflight.items() if f.done()]:
                rec, fut, t0 = inflight.pop(gid)
                done.append((rec, executor.outcome(fut), t0))
                executor.release(fut)
            done.sort(key=lambda d: d[1].get("status") != "ok")  # completions first: they may wake waiters
            for rec, out, t0 in done:
                last_activity = time.time()
                # a group that found no calibration while another group completed (and may have
                # solved it) retries at once instead of waiting cal_wait_s
                wait = 0.0 if last_completion > t0 else cal_wait_s
                state = _record_outcome(queue, rec, out, me, cal_wait_s=wait, max_cal_wait_s=max_cal_wait_s,
                                        disk_full_pause_s=disk_full_pause_s, t0=t0, paths=paths)
                if state in ("completed", "failed", "quarantined"):
                    outcomes += 1
                if state == "completed":
                    last_completion = time.time()
                    summary.completed.append(rec.timestamp)
                    submit_hook(rec, out.get("result"))
                elif state == "deferred":
                    summary.deferred += 1
                elif state in ("failed", "quarantined", "pending"):
                    if state != "pending":
                        summary.failed.append((rec.timestamp, out.get("message")))
                    if out.get("disk_full"):
                        paused_until = time.time() + disk_full_pause_s
                    if stop_on_error and error_stop is None:
                        error_stop = f"group {rec.timestamp}: {out.get('message')}"
            for item in [h for h in hooks if h[1].done()]:
                hooks.remove(item)
                g, fut = item
                try:
                    value = fut.result()
                    executor.release(fut)
                    if value:
                        log.info("on-complete hook after %s: %s", g.timestamp if g else "start-up", value)
                except Exception as exc:  # noqa: BLE001
                    log.error("on-complete hook after %s failed: %s", g.timestamp if g else "start-up", exc)
                    if stop_on_error and error_stop is None:
                        error_stop = f"on-complete hook after {g.timestamp if g else 'start-up'}: {exc}"

            if error_stop is not None and not stop.is_set():
                log.error("--stop-on-error: %s; stopping after %d group(s) in flight", error_stop, len(inflight))
                summary.exit_code = 1
                stop.set()

            # 4. claim and submit
            now = time.time()
            can_claim = not stop.is_set() and now >= paused_until and (
                max_groups is None or outcomes + len(inflight) < max_groups)
            if can_claim and min_free_gb > 0:
                free = _free_gb(paths.stage)
                if free is not None and free < min_free_gb:
                    if now - last_status > 60:
                        log.warning("only %.2f GB free on %s (< %.2f GB): not starting new groups", free,
                                    paths.stage, min_free_gb)
                        last_status = now
                    can_claim = False
            while can_claim and len(inflight) < max_inflight:
                rec = queue.claim(me)
                if rec is None:
                    break
                ctx = ServiceContext(attempt=rec.attempts + 1, **ctx_base)
                fut = executor.submit(run_group_task, processor, rec, ctx, key=_task_key(rec))
                inflight[rec.id] = (rec, fut, time.time())
                last_activity = time.time()

            # 5. exit?
            if stop.is_set() and not inflight and not hooks:
                summary.exit_reason = summary.exit_reason or ("stopped on error" if error_stop else "stopped")
                break
            if not inflight and not hooks:
                if max_groups is not None and outcomes >= max_groups:
                    summary.exit_reason = f"max_groups={max_groups} reached"
                    break
                waiting = queue.next_claimable_in()
                collecting = queue.counts()["collecting"] + watcher.backlog
                if once and not collecting and waiting is None:
                    summary.exit_reason = "once: nothing left to claim"
                    break
                if (idle_exit_s is not None and not collecting and waiting is None
                        and time.time() - last_activity >= idle_exit_s):
                    summary.exit_reason = f"idle for {idle_exit_s:.0f} s"
                    break
            if time.time() - last_status >= 60:
                last_status = time.time()
                c = queue.counts()
                log.info("queue: %s", ", ".join(f"{k} {v}" for k, v in c.items() if v))
            executor.wait([f for _r, f, _t in inflight.values()] + [f for _g, f in hooks], timeout=poll_s)
    finally:
        for gid, (rec, fut, _t) in list(inflight.items()):
            try:
                fut.cancel()
            except Exception:  # noqa: BLE001
                pass
            queue.release(rec, "service stopped before the group finished", worker=me.name)
            log.warning("group %s released back to the queue (service stopping)", rec.timestamp)
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


def _task_key(rec: GroupRecord) -> str:
    return f"group-{rec.timestamp}-{rec.claim_token[:8]}"


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


def _record_outcome(queue: IngestQueue, rec: GroupRecord, out: dict, me: WorkerId, *, cal_wait_s: float,
                    disk_full_pause_s: float, t0: float, paths, max_cal_wait_s: float = 86400.0) -> str:
    """Write a task outcome to the queue; returns completed/deferred/quarantined/failed/pending/stale."""
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
    if status == "calibration_wait" and rec.queued and time.time() - rec.queued > max_cal_wait_s:
        new = queue.fail(rec, f"no valid calibration within {max_cal_wait_s / 3600:.1f} h of queueing: "
                              f"{out.get('message')}", retry=False, worker=me.name)
        log.error("group %s failed: no valid calibration within %.1f h", rec.timestamp, max_cal_wait_s / 3600)
        return new or "stale"
    if status == "calibration_wait":
        ok = queue.defer(rec, f"waiting for calibration: {out.get('message')}", delay_s=cal_wait_s, worker=me.name)
        log.info("group %s waits for calibration (%s); retry %s", rec.timestamp, out.get("message"),
                 f"within {cal_wait_s:.0f} s or when another group completes" if cal_wait_s else "now")
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


# -------------------------------------------------------------------------------------------- CLI
def _add_path_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("where (default: CONTIMG_* environment variables)")
    g.add_argument("--root", help="keep everything under this directory (incoming/, stage/, state/)")
    g.add_argument("--incoming", help="directory of arriving subband files")
    g.add_argument("--stage", help="staging base (ms/, images/, ... below it)")
    g.add_argument("--state", help="directory of the SQLite state databases")


def _paths_from_args(args):
    from dsacont.config import get_paths

    over = {k: getattr(args, k) for k in ("incoming", "stage", "state") if getattr(args, k, None)}
    return get_paths(root=args.root, **over)


def _parse_options(items) -> dict:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--option {item!r}: expected KEY=VALUE")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def cli(argv: list[str]) -> int:
    """``dsacont stream``: run the streaming service."""
    ap = argparse.ArgumentParser(prog="dsacont stream", description="Run the streaming service: watch the incoming "
                                 "directory, queue 16-subband groups, process them in time order on Dask.")
    _add_path_args(ap)
    ap.add_argument("--processor", default=DEFAULT_PROCESSOR, help=f"module:function per group (default {DEFAULT_PROCESSOR})")
    ap.add_argument("--on-complete", default=DEFAULT_ON_COMPLETE,
                    help="module:function after each completed group, the mosaic trigger ('' for none)")
    ap.add_argument("--scheduler", help="address of an existing dask-scheduler (default: start a LocalCluster; "
                    "'inline' to run in this process)")
    ap.add_argument("--max-inflight", type=int, default=1, help="groups processed at once (default 1)")
    ap.add_argument("--workers", type=int, help="LocalCluster worker processes (default = --max-inflight)")
    ap.add_argument("--threads", type=int, help="threads per LocalCluster worker (default: cores / workers)")
    ap.add_argument("--once", action="store_true", help="process what is there now, then exit")
    ap.add_argument("--stop-on-error", action="store_true", help="exit (status 1) at the first failure")
    ap.add_argument("--poll", type=float, default=2.0, help="seconds between scans (default 2)")
    ap.add_argument("--max-groups", type=int, help="exit after this many groups")
    ap.add_argument("--idle-exit", type=float, help="exit after this many idle seconds")
    ap.add_argument("--tolerance", type=float, default=30.0, help="grouping tolerance, s (default 30)")
    ap.add_argument("--incomplete-timeout", type=float, default=900.0,
                    help="finalise an incomplete group after this many s (default 900)")
    ap.add_argument("--min-subbands", type=int, default=12, help="process an incomplete group with at least this "
                    "many subbands, else fail it (default 12)")
    ap.add_argument("--lease", type=float, default=120.0, help="claim lease, s (default 120)")
    ap.add_argument("--max-attempts", type=int, default=3, help="attempts before a group fails (default 3)")
    ap.add_argument("--retry-backoff", type=float, default=10.0, help="first retry delay, s (default 10)")
    ap.add_argument("--cal-wait", type=float, default=300.0, help="retry delay while calibration is not valid, s")
    ap.add_argument("--max-cal-wait", type=float, default=86400.0,
                    help="fail a group still without valid calibration after this many s (default 24 h)")
    ap.add_argument("--disk-full-pause", type=float, default=60.0, help="pause after a full disk, s (default 60)")
    ap.add_argument("--min-free-gb", type=float, default=1.0, help="do not start groups below this free space "
                    "on the stage directory (default 1 GB)")
    ap.add_argument("--settle", type=float, default=1.0, help="a file younger than this (s) is read only once its "
                    "size stops changing (default 1)")
    ap.add_argument("--watch-budget", type=float, help="seconds of file validation per loop (default lease/4)")
    ap.add_argument("--group-timeout", type=float, help="give up on a group after this many s (restarts its worker)")
    ap.add_argument("--no-value-check", action="store_true", help="do not read visibilities to check for NaN/truncation")
    ap.add_argument("--max-nan-fraction", type=float, default=0.0, help="quarantine a file with more NaN/Inf "
                    "visibilities than this fraction (default 0: any)")
    ap.add_argument("--retry-failed", action="store_true", help="first put failed groups back in the queue "
                    "(attempts reset), e.g. after fixing a full disk")
    ap.add_argument("--option", action="append", metavar="KEY=VALUE", help="passed to the processor (repeatable)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args(argv)
    if args.verbose:
        logging.getLogger("dsacont").setLevel(logging.DEBUG)
    else:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    paths = _paths_from_args(args)
    if args.retry_failed:
        with IngestQueue(paths.queue_db) as q:
            log.info("--retry-failed: %d failed group(s) back in the queue", q.requeue(("failed",)))
    summary = run_service(
        paths, processor=args.processor, on_complete=args.on_complete or None, scheduler=args.scheduler,
        max_inflight=args.max_inflight, n_workers=args.workers, threads_per_worker=args.threads, once=args.once,
        stop_on_error=args.stop_on_error, poll_s=args.poll, max_groups=args.max_groups, idle_exit_s=args.idle_exit,
        tolerance_s=args.tolerance, incomplete_timeout_s=args.incomplete_timeout, min_subbands=args.min_subbands,
        lease_s=args.lease, max_attempts=args.max_attempts, retry_backoff_s=args.retry_backoff,
        cal_wait_s=args.cal_wait, max_cal_wait_s=args.max_cal_wait, disk_full_pause_s=args.disk_full_pause,
        min_free_gb=args.min_free_gb,
        check_values=not args.no_value_check, group_timeout_s=args.group_timeout, watch_budget_s=args.watch_budget,
        settle_s=args.settle, max_nonfinite_frac=args.max_nan_fraction,
        options=_parse_options(args.option),
    )
    print(format_status(paths))
    return summary.exit_code


# ----------------------------------------------------------------------------------------- status
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
                {"group": g.timestamp, "wait": g.wait_reason, "until": iso_from_unix(g.not_before) if g.not_before else None,
                 "reason": g.error}
                for g in q.groups("pending") if g.not_before]
            out["collecting"] = [{"group": g.timestamp, "subbands": 16 - len(g.missing)} for g in q.groups("collecting")]
            out["recent_failures"] = q.recent_failures(failures)
            last = q.conn.execute("SELECT MAX(finished) FROM groups WHERE state = 'completed'").fetchone()[0]
            out["last_completed"] = iso_from_unix(last) if last else None
        finally:
            q.close()
    else:
        out["groups"] = None
    if paths.products_db.exists():
        try:
            from dsacont.service.products import Products

            out["products"] = Products(paths.products_db).counts()
        except Exception as exc:  # noqa: BLE001 - status must never crash on another module's DB
            out["products"] = {"error": str(exc)}
    else:
        out["products"] = None
    return out


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
    return "\n".join(lines)


def cli_status(argv: list[str]) -> int:
    """``dsacont status``: queue counts per state, running/waiting groups, recent failures, products."""
    ap = argparse.ArgumentParser(prog="dsacont status", description="Queue and products at a glance.")
    _add_path_args(ap)
    ap.add_argument("--failures", type=int, default=10, help="how many recent failures to show (default 10)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    ap.add_argument("--watch", type=float, metavar="S", help="refresh every S seconds until interrupted")
    args = ap.parse_args(argv)
    paths = _paths_from_args(args)
    while True:
        if args.json:
            print(json.dumps(status(paths, failures=args.failures), indent=1, default=str))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
                print(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
            print(format_status(paths, failures=args.failures))
        if not args.watch:
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0
