"""Where groups run: a Dask cluster (or threads of the service process), and the task functions.

The service process submits :func:`run_group_task` (the processor on one group) and
:func:`run_hook_task` (the on-complete hook) with a :class:`ServiceContext`: the paths, the
options and what the state databases know that the task needs (``known``), so a worker never
opens a state database; the task returns what it made and the service records it.

:class:`Executor` is a LocalCluster (one worker process per concurrent group, so casacore tables
and CASA state are never shared between groups), a client of an existing ``dask-scheduler``, or
an inline thread pool (debugging). Inside a task, ``dask.compute`` uses a local threaded scheduler
with ``context.threads`` threads.
"""
from __future__ import annotations

import importlib
import logging
import os
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor
from concurrent.futures import wait as futures_wait
from dataclasses import dataclass, field

import dask
from dask.distributed import Client, LocalCluster
from dask.distributed import wait as distributed_wait

from dsacont import db
from dsacont.errors import BadInputError, CalibrationUnavailable
from dsacont.service.queue import GroupRecord

log = logging.getLogger(__name__)


@dataclass
class ServiceContext:
    """What a processor gets besides the group (picklable; sent to the Dask worker).

    Attributes
    ----------
    paths : dsacont.config.Paths
        Where products go (ms, images, mosaics, tmp, caltables). ``paths.state`` is the service's:
        a task must not open the state databases there (on a cluster it may not even see them).
    worker : str
        The claiming service's identity (``host:pid:tag``).
    attempt : int
        1 for the first claim of this group, 2 after one failed/interrupted attempt, ...
    threads : int
        Threads this task may use (``dask.compute`` inside the task uses this many).
    options : dict
        The processor's options (``[pipeline]`` of the ``--config`` file, ``--option KEY=VALUE``).
    log_level : int
        Logging level of the ``dsacont`` loggers in the worker.
    service_pid : int
        The service process (a processor must never signal it; tests do).
    known : dict
        What the state databases hold that the task needs, read by the service when it submitted
        the task: for a group, ``products`` (the products registry rows of this group: ``ms``,
        ``images``) and ``calibration`` (the valid calibration tables whose windows reach the
        group's time, as :class:`dsacont.calibration.registry.CalRecord`); for the on-complete
        hook, ``unmosaicked_images`` (image rows not yet in any mosaic).
    requeue : bool
        The service takes a hand-over: a processor may return early with ``result["requeue"]``
        (why) and its products; the service records them and puts the group back to ``pending``
        at once, without using an attempt (e.g. a calibrator's tables handed over before its tile
        is imaged, so the groups waiting for them start).
    """

    paths: object
    worker: str = ""
    attempt: int = 1
    threads: int = 1
    options: dict = field(default_factory=dict)
    log_level: int = logging.INFO
    service_pid: int = 0
    known: dict = field(default_factory=dict)
    requeue: bool = False


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

    Returns ``{"status": "ok", "result": dict}`` or ``{"status": "requeue" | "calibration_wait" |
    "bad_input" | "error", "message": str, ...}`` (``requeue``: the processor's result said
    ``requeue``, see :class:`ServiceContext`; its products come at the top level, as an error's).
    """
    _configure_worker_logging(context.log_level)
    t0 = time.time()
    wlog = logging.getLogger("dsacont.service.executor.worker")
    try:
        fn = load_callable(processor)
        with dask.config.set(scheduler="threads", num_workers=max(1, context.threads)):
            result = fn(group, context)
        if isinstance(result, dict) and result.get("requeue"):
            return {"status": "requeue", "message": str(result["requeue"]), "products": result.get("products"),
                    "wall_s": time.time() - t0, "pid": os.getpid()}
        return {"status": "ok", "result": result if isinstance(result, dict) else {"value": result},
                "wall_s": time.time() - t0, "pid": os.getpid()}
    except CalibrationUnavailable as exc:
        return {"status": "calibration_wait", "message": str(exc), "wall_s": time.time() - t0,
                "products": _products_of(exc)}
    except BadInputError as exc:
        return {"status": "bad_input", "message": str(exc), "path": exc.path, "reason": exc.reason,
                "wall_s": time.time() - t0, "products": _products_of(exc)}
    except Exception as exc:  # noqa: BLE001 - everything else is reported to the queue
        wlog.exception("group %s failed", group.timestamp)
        return {"status": "error", "message": f"{type(exc).__name__}: {exc}", "disk_full": _chain_disk_full(exc),
                "traceback": traceback.format_exc(limit=8), "wall_s": time.time() - t0,
                "products": _products_of(exc)}


def _products_of(exc: BaseException) -> dict | None:
    """Return the products a processor made before it raised (it sets ``exc.products``).

    The service records them: a calibration solved by a group that then waits, an MS converted
    before a failure.
    """
    products = getattr(exc, "products", None)
    return products if isinstance(products, dict) and products else None


def run_hook_task(hook: str, group: GroupRecord | None, result: dict | None, context: ServiceContext):
    """Run the on-complete hook (e.g. the mosaic trigger) on a worker; returns its value or raises."""
    _configure_worker_logging(context.log_level)
    fn = load_callable(hook)
    with dask.config.set(scheduler="threads", num_workers=max(1, context.threads)):
        return fn(group, result, context)


# --------------------------------------------------------------------------------------- executor
class Executor:
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
            self.pool = ThreadPoolExecutor(max_workers=max_inflight, thread_name_prefix="dsacont-group")
            self.threads = max(1, ncpu // max_inflight)
            self.description = f"inline ({max_inflight} thread(s) in the service process)"
            return
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
            futures_wait(futures, timeout=timeout, return_when=FIRST_COMPLETED)
            return
        try:
            distributed_wait(futures, timeout=timeout, return_when="FIRST_COMPLETED")
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
        """Give up on a running group task.

        Cancel it and, on a LocalCluster, restart the worker process running it (a hung CASA
        call cannot be interrupted any other way).
        """
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
