"""Control plane and data plane: only the service process reads and writes the state databases.

The must-show test runs the service (``python -m dsacont.cli stream``) against a real
``dask-scheduler`` process and a real ``dask-worker`` process that cannot see the state directory:
the worker lives in its own mount namespace (``unshare --mount``) with an empty, read-only tmpfs
mounted over ``<root>/state``. The group runs the real chain (``dsacont.service.pipeline``:
convert + flag, calibration solved on the 0834+555 transit and applied, tclean image, and the
mosaic trigger with one tile per mosaic) on that worker; every product must land in the service's
databases exactly once, and the group must be completed.

Also here: the worker-side table choice agrees with the registry's own lookup, and the options
of ``dsacont stream`` come from one TOML file with command-line flags over it.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from dsacont.calibration.registry import Registry
from dsacont.config import get_paths
from dsacont.service.cli import stream_options, stream_parser
from dsacont.service.loop import ServiceOptions
from dsacont.service.products import Products
from dsacont.service.queue import IngestQueue
from dsacont.service.replay import replay
from dsacont.service.state import records_from_entries, select_tables
from streamtools import group_timestamp, run_service, service_env, sim_group_files, wait_for


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
                              "--host", "127.0.0.1", "--port", "0", "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
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
                              on_complete="dsacont.service.pipeline:on_group_complete", timeout=1000)
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
        recorded = g.result["recorded"]
    finally:
        q.close()
    # it ran on the cluster's worker, not in the service
    assert g.result["timings_s"]["convert"] > 0 and g.result["solved"] is True

    # calibration registry: B and G solved on this group's MS, each registered once, valid
    ms_path = str(paths.ms / f"{ts}.ms")
    reg = Registry(paths.registry_db).list()
    assert sorted(r.kind for r in reg) == ["B", "G"], reg
    assert all(r.status == "valid" and r.source_ms == ms_path and Path(r.path).is_dir() for r in reg)
    b, gain = sorted(reg, key=lambda r: r.kind)
    assert gain.depends_on == b.id and recorded["calibration"] == {"B": b.id, "G": gain.id}

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


# ------------------------------------------------------------------------ table choice on a worker
def test_select_tables_agrees_with_the_registry_lookup(tmp_path):
    """The worker chooses among the tables sent with its task by the registry's own rule."""
    rng = random.Random(7)
    reg = Registry(tmp_path / "cal.sqlite3")
    t0 = 60977.5
    for i in range(40):
        kind = rng.choice("BG")
        solve = t0 + rng.uniform(-1.5, 1.5)
        dep = None
        if kind == "G":
            bs = [r for r in reg.list(kind="B")]
            dep = rng.choice(bs).id if bs and rng.random() < 0.7 else None
        rid = reg.register_begin(kind, "0834+555", solve, f"/t/{i}.{kind}", depends_on=dep,
                                 valid_before_h=rng.choice([None, 0.5, 3.0]), valid_after_h=rng.choice([None, 2.0]))
        r = rng.random()
        if r < 0.75:
            reg.mark_valid(rid)
        elif r < 0.9:
            reg.reject(rid, "bad")
    records = reg.list()
    for _ in range(300):
        mjd = t0 + rng.uniform(-2.5, 2.5)
        assert [r.id for r in select_tables(records, mjd)] == [r.id for r in reg.lookup_set(mjd)]


def test_just_solved_tables_win_and_pair():
    entries = [{"kind": "B", "solve_mjd": 60977.5, "path": "/c/x.B", "status": "valid", "depends_on": None},
               {"kind": "G", "solve_mjd": 60977.5, "path": "/c/x.G", "status": "valid", "depends_on": "B"}]
    new = records_from_entries(entries)
    assert new[1].depends_on == new[0].id and new[0].valid_end - new[0].valid_start == pytest.approx(2.0)
    assert [r.path for r in select_tables(new, 60977.51)] == ["/c/x.B", "/c/x.G"]
    rejected = records_from_entries([dict(e, status="rejected") for e in entries])
    assert select_tables(rejected, 60977.51) == []


# ------------------------------------------------------------------------------------ the options
def test_toml_sets_options_and_a_flag_overrides_it(tmp_path):
    cfg = tmp_path / "dsacont.toml"
    cfg.write_text('[service]\nmax_inflight = 2\npoll_s = 5\nincomplete_timeout_s = 600.0\nonce = true\n'
                   '[pipeline]\ntiles_per_mosaic = 6\nimaging = { niter = 10 }\n')
    o = stream_options(stream_parser().parse_args(["--config", str(cfg), "--poll", "0.5", "--option", "calibrator=x"]))
    assert o.max_inflight == 2 and o.incomplete_timeout_s == 600.0 and o.once is True
    assert o.poll_s == 0.5  # the flag wins over the file
    assert o.processor_options == {"tiles_per_mosaic": 6, "imaging": {"niter": 10}, "calibrator": "x"}
    assert isinstance(o.poll_s, float) and o.tolerance_s == ServiceOptions().tolerance_s  # defaults elsewhere
    # no file: the dataclass defaults
    assert stream_options(stream_parser().parse_args([])) == ServiceOptions()
    # a wrong key or type names the file and the key
    cfg.write_text("[service]\npol_s = 1\n")
    with pytest.raises(Exception, match=r"dsacont.toml \[service\].*pol_s"):
        stream_options(stream_parser().parse_args(["--config", str(cfg)]))
    cfg.write_text('[service]\nmax_inflight = "two"\n')
    with pytest.raises(Exception, match="max_inflight: expected int"):
        stream_options(stream_parser().parse_args(["--config", str(cfg)]))


def test_stream_reads_the_config_file(sim_group_files_dir, tmp_path):
    """``dsacont stream --config FILE`` end to end: the file's processor and options are used."""
    root = tmp_path / "run"
    replay(sim_group_files_dir, get_paths(root=root).incoming, mode="link")
    cfg = tmp_path / "svc.toml"
    cfg.write_text('[service]\nprocessor = "stream_processors:summarise"\non_complete = ""\nonce = true\n'
                   'poll_s = 0.3\nmin_free_gb = 0.0\nlease_s = 30.0\n[pipeline]\nsleep_s = 0\n')
    env = service_env()
    r = subprocess.run([sys.executable, "-m", "dsacont.cli", "stream", "--root", str(root), "--config", str(cfg)],
                       env=env, capture_output=True, text=True, timeout=300, cwd=str(Path(__file__).parents[2]))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "processor stream_processors:summarise" in r.stderr
    assert [Path(x["path"]).suffix for x in Products(get_paths(root=root).products_db).list_images()] == [".json"]


@pytest.fixture
def sim_group_files_dir(request):
    return Path(sim_group_files(request)[0]).parent


def test_pipeline_options_are_typed():
    from dsacont.service.pipeline import PipelineOptions, options_from

    o = options_from({"tiles_per_mosaic": "3", "imaging.niter": "10", "mosaic": {"pb_cutoff": 0.3}})
    assert o == PipelineOptions(tiles_per_mosaic=3, imaging={"niter": 10}, mosaic={"pb_cutoff": 0.3})
    with pytest.raises(ValueError, match="unknown option"):
        options_from({"tiles": 1})
    with pytest.raises(ValueError, match="tiles_per_mosaic: expected int"):
        options_from({"tiles_per_mosaic": "many"})
