"""The service loop as control plane: only the service process reads and writes the state databases.

The must-show test runs the service (``python -m dsacont.cli stream``) against a real
``dask-scheduler`` process and a real ``dask-worker`` process that cannot see the state directory:
the worker lives in its own mount namespace (``unshare --mount``) with an empty, read-only tmpfs
mounted over ``<root>/state``. The group runs the real chain (``dsacont.service.pipeline``:
convert + flag, calibration solved on the 0834+555 transit and applied, tclean image, and the
mosaic trigger with one tile per mosaic) on that worker; every product must land in the service's
databases exactly once, and the group must be completed.
"""
from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from streamtools import group_timestamp, run_service, service_env, sim_group_files, wait_for

from dsacont.calibration.registry import Registry
from dsacont.config import get_paths
from dsacont.service.products import Products
from dsacont.service.queue import IngestQueue
from dsacont.service.replay import replay


def _can_unshare() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    r = subprocess.run(["unshare", "--mount", "--propagation", "private", "true"], capture_output=True)
    return r.returncode == 0


def _stop(*procs):
    for p in procs:
        if p is not None and p.poll() is None:
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.mark.casa
@pytest.mark.timeout(1200)
@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare --mount (a private mount namespace)")
def test_worker_without_the_state_directory_products_recorded_once(request, tmp_path):
    files = sim_group_files(request)
    root = tmp_path / "run"
    paths = get_paths(root=root).ensure()
    replay(Path(files[0]).parent, paths.incoming, mode="link")
    ts = group_timestamp(files, 0)
    sfile = tmp_path / "scheduler.json"
    view = tmp_path / "worker_view.txt"
    env = service_env(OMP_NUM_THREADS=1, OPENBLAS_NUM_THREADS=1)
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(sfile),
                              "--host", "127.0.0.1", "--port", "0", "--no-dashboard"], env=env,
                             stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    worker = None
    worker_log = open(tmp_path / "worker.log", "wb")
    try:
        wait_for(sfile.exists, 60, what="the scheduler file")
        # the worker's own mount namespace: an empty read-only tmpfs hides the state directory
        script = (f"mount -t tmpfs -o ro,size=1m dsacont-no-state {paths.state} && "
                  f"{{ ls -A {paths.state}; touch {paths.state}/probe 2>&1; echo \"touch: $?\"; }} > {view}; "
                  f"exec {sys.executable} -m distributed.cli.dask_worker --scheduler-file {sfile} --nthreads 1 "
                  f"--resources group=1 --host 127.0.0.1 --no-dashboard")
        worker = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c", script], env=env,
                                  stdout=worker_log, stderr=subprocess.STDOUT, cwd=str(tmp_path))
        address = json.loads(sfile.read_text())["address"]
        wait_for(lambda: view.exists() and "touch:" in view.read_text(), 60, what="the worker's namespace")
        rc, log = run_service(root, "--once", "--scheduler", address, "--option", "tiles_per_mosaic=1",
                              processor="dsacont.service.pipeline:process_group",
                              on_complete="dsacont.service.mosaics:on_group_complete", timeout=1000)
    finally:
        _stop(worker, sched)
        worker_log.close()
    wlog = (tmp_path / "worker.log").read_text(errors="replace")
    assert rc == 0, log[-4000:] + "\n--- worker ---\n" + wlog[-3000:]
    # the worker saw an empty, unwritable state directory ...
    seen = view.read_text().splitlines()
    assert seen[-1] != "touch: 0" and "Read-only file system" in view.read_text(), seen
    assert [x for x in seen if not x.startswith("touch")] == []
    # ... while the service's state directory holds the three databases
    assert {p.name for p in paths.state.glob("*.sqlite3")} == {"ingest.sqlite3", "products.sqlite3",
                                                               "cal_registry.sqlite3"}
    assert f"Dask scheduler {address}" in log

    # the group completed, once, with what it recorded
    q = IngestQueue(paths.queue_db)
    try:
        g = q.get(ts)
        assert g.state == "completed" and g.attempts == 0, (g.state, g.error)
        assert len(q.events(g.id, "completed")) == 1
        # the calibrator's tables handed over (recorded, the group requeued, a second task images
        # it) when its first image found field sources to solve again with; else one task
        handed = [json.loads(e["detail"])["wait"] for e in q.events(g.id, "deferred")]
        assert handed in ([], ["requeue"]) and len(q.events(g.id, "claimed")) == 1 + len(handed), handed
    finally:
        q.close()
    # it ran on the cluster's worker, not in the service
    assert g.result["timings_s"]["convert"] > 0 and g.result["image"]

    # calibration registry: B and G solved on this group's MS, each registered once, valid
    ms_path = str(paths.ms / f"{ts}.ms")
    reg = Registry(paths.registry_db).list()
    assert sorted(r.kind for r in reg) == ["B", "G"], reg
    assert all(r.status == "valid" and r.source_ms == ms_path and Path(r.path).is_dir() for r in reg)
    b, gain = sorted(reg, key=lambda r: r.kind)
    assert gain.depends_on == b.id

    # products: one MS (calibrated, both tables applied), one image, one mosaic of it
    db = Products(paths.products_db)
    ms = db.list_ms()
    assert [m["path"] for m in ms] == [ms_path] and ms[0]["status"] == "calibrated"
    assert ms[0]["group_timestamp"] == ts and ms[0]["qa"]["convert_s"] > 0 and "apply_s" in ms[0]["qa"]
    assert sorted(c["path"] for c in db.get("ms", ms_path)["caltables"]) == sorted([b.path, gain.path])
    images = db.list_images()
    assert len(images) == 1 and images[0]["ms_id"] == ms[0]["id"] and Path(images[0]["path"]).exists()
    assert images[0]["qa"]["noise_jy"] > 0
    mosaics = db.list_mosaics()
    assert len(mosaics) == 1 and Path(mosaics[0]["path"]).exists()
    assert db.get("mosaic", mosaics[0]["id"])["images"] == [images[0]["path"]]
    # exactly once, counted in SQL (no duplicate rows under other paths)
    con = sqlite3.connect(paths.products_db)
    try:
        counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                  for t in ("ms", "ms_caltables", "images", "mosaics", "mosaic_images")}
    finally:
        con.close()
    assert counts == {"ms": 1, "ms_caltables": 2, "images": 1, "mosaics": 1, "mosaic_images": 1}
