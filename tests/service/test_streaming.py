"""The streaming service, run as a REAL separate process, with a light real processor.

``python -m dsacont.cli stream`` on a real Dask LocalCluster, fed real simulated UVH5 files, with
a light real processor
(``tests/stream_processors.py``: lazy loader -> per-channel mean amplitude -> JSON product written
atomically and registered in the real products database).

Shown here: replay end to end; kill -9 of the service at several points (inside the claim
transaction, at the start of a group, mid-write, between the product's move and its
registration, between registration and the queue update) and of a worker, each followed by a
restart, with nothing lost or doubled; every kind of bad input quarantined or failed with a
reason naming the file while the other groups complete; a full disk; --stop-on-error; two
services on one queue.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from streamtools import (
    group_timestamp,
    make_archive,
    run_service,
    service_env,
    shifted_name,
    start_service,
    subband_file,
    wait_for,
    write_half_integrations,
    write_not_hdf5,
    write_truncated,
    write_with_nans,
)

from dsacont.config import get_paths
from dsacont.service.products import Products
from dsacont.service.queue import IngestQueue, pid_alive
from dsacont.service.replay import replay

pytestmark = pytest.mark.timeout(600)


def _queue(root) -> IngestQueue:
    return IngestQueue(get_paths(root=root).queue_db)


def _products(root) -> list[dict]:
    p = get_paths(root=root).products_db
    return Products(p).list_images() if p.exists() else []


def _check_nothing_lost_or_doubled(root, timestamps):
    """Every group completed exactly once, one registered, complete product per group, no extras."""
    paths = get_paths(root=root)
    q = _queue(root)
    try:
        groups = {g.timestamp: g for g in q.groups()}
        assert sorted(groups) == sorted(timestamps)
        assert all(g.state == "completed" for g in groups.values()), {t: (g.state, g.error) for t, g in groups.items()}
        completed = Counter(q.conn.execute(
            "SELECT g.timestamp FROM events e JOIN groups g ON g.id = e.group_id WHERE e.event = 'completed'"
        ).fetchall()[i][0] for i in range(len(timestamps)))
        n_completed_events = q.conn.execute("SELECT COUNT(*) FROM events WHERE event = 'completed'").fetchone()[0]
        assert n_completed_events == len(timestamps) and set(completed) == set(timestamps)
    finally:
        q.close()
    rows = _products(root)
    assert sorted(Path(r["path"]).name for r in rows) == sorted(f"{t}.json" for t in timestamps)
    assert sorted(p.name for p in paths.images.iterdir()) == sorted(f"{t}.json" for t in timestamps)
    for r in rows:
        prod = json.loads(Path(r["path"]).read_text())  # complete, parseable: never half-written
        assert prod["timestamp"] == Path(r["path"]).stem
        assert len(prod["source_files"]) == 16 - len(prod["missing"])
        assert prod["mean_amp"] > 0
    return rows


# ------------------------------------------------------------------------------------- end to end
def test_replay_end_to_end_through_the_service(sim_files, tmp_path):
    root = tmp_path / "run"
    stamps = make_archive(sim_files, tmp_path / "archive", range(3))
    svc = start_service(root, "--idle-exit", "4")
    try:
        # the correlator side: files arrive in time order while the service runs
        delivered = replay(tmp_path / "archive", get_paths(root=root).incoming, speed=600)
        assert len(delivered) == 48
        rc = svc.wait(timeout=180)
    finally:
        if svc.poll() is None:
            svc.kill()
    log = svc.log_path.read_text()
    assert rc == 0, log[-3000:]
    rows = _check_nothing_lost_or_doubled(root, stamps)
    # processed in time order, each in one claim, on the Dask worker (not the service process)
    q = _queue(root)
    claims = [e for e in q.events(event="claimed")]
    assert [q.get(e["group_id"]).timestamp for e in claims] == stamps
    q.close()
    prods = [json.loads(Path(r["path"]).read_text()) for r in rows]
    assert all(p["pid"] != svc.pid for p in prods)
    assert "LocalCluster" in log
    # the on-complete hook (mosaic trigger) ran once at start-up and once after each group, with its result
    hooks = [json.loads(x) for x in (get_paths(root=root).state / "hooks.jsonl").read_text().splitlines()]
    assert [h["group"] for h in hooks] == [None] + stamps
    assert all(h["result"]["product"].endswith(f"{h['group']}.json") for h in hooks[1:])
    out = subprocess.run([sys.executable, "-m", "dsacont.cli", "status", "--root", str(root)],
                         capture_output=True, text=True, check=True).stdout
    assert "completed" in out and "images" in out and "48 ok, 0 quarantined" in out


def test_validation_backlog_never_splits_a_group(sim_files, tmp_path):
    """--once with a validation budget far smaller than the backlog.

    Files are recorded over many loops, and no group is finalised (as incomplete) before all its
    files are in.
    """
    root = tmp_path / "run"
    stamps = make_archive(sim_files, tmp_path / "archive", range(3))
    replay(tmp_path / "archive", get_paths(root=root).incoming)  # fresh copies: not settled at the first poll
    rc, log = run_service(root, "--once", "--watch-budget", "0.01", "--settle", "30")
    assert rc == 0 and "more file(s) next poll" in log, log[-2000:]
    _check_nothing_lost_or_doubled(root, stamps)
    q = _queue(root)
    assert all(g.missing == [] for g in q.groups())
    q.close()


# ----------------------------------------------------------------------------------- kill -9
def test_kill_minus_9_at_every_stage_then_restart(sim_files, tmp_path):
    root = tmp_path / "run"
    stamps = make_archive(sim_files, tmp_path / "archive", range(4))
    replay(tmp_path / "archive", get_paths(root=root).incoming)
    g0, g1, g2, g3 = stamps
    ledger = get_paths(root=root).state / "ledger.jsonl"

    # 1. killed inside the claim transaction: rolled back, the group is still pending, unclaimed
    rc, log = run_service(root, "--once", env={"DSACONT_FAILPOINT": "claim_mid"})
    assert rc == -signal.SIGKILL, log[-2000:]
    q = _queue(root)
    assert q.get(g0).state == "pending" and q.get(g0).claims == 0 and q.counts()["in_progress"] == 0
    assert q.events(event="claimed") == []
    q.close()

    # 2. killed at the start of g0 (worker running it): the worker process dies with the service
    rc, log = run_service(root, "--once", "--option", f"kill_at={g0}@start")
    assert rc == -signal.SIGKILL, log[-2000:]
    worker_pid = [json.loads(x) for x in ledger.read_text().splitlines()][-1]["pid"]
    wait_for(lambda: not pid_alive(worker_pid), 20, what="the orphaned Dask worker to exit")
    q = _queue(root)
    assert q.get(g0).state == "in_progress"  # until a service notices its claimer is dead
    q.close()

    # 3. restart: g0 reclaimed and done; killed mid-write of g1 (temp file written, not moved)
    rc, log = run_service(root, "--once", "--option", f"kill_at={g1}@mid")
    assert rc == -signal.SIGKILL and "reclaimed" in log, log[-2000:]
    paths = get_paths(root=root)
    assert (paths.tmp / f"{g1}.json.tmp").exists() and not (paths.images / f"{g1}.json").exists()
    assert [Path(r["path"]).stem for r in _products(root)] == [g0]

    # 4. killed after g2's product was moved into place but before it was registered
    rc, log = run_service(root, "--once", "--option", f"kill_at={g2}@before_register")
    assert rc == -signal.SIGKILL, log[-2000:]
    assert (paths.images / f"{g2}.json").exists()
    assert sorted(Path(r["path"]).stem for r in _products(root)) == [g0, g1]

    # 5. killed after g3 was registered, before the queue heard of it
    rc, log = run_service(root, "--once", "--option", f"kill_at={g3}@after_register")
    assert rc == -signal.SIGKILL, log[-2000:]
    q = _queue(root)
    assert q.get(g3).state == "in_progress" and q.counts()["completed"] == 3
    q.close()

    # 6. final restart: everything resumes; nothing lost, nothing doubled
    rc, log = run_service(root, "--once")
    assert rc == 0, log[-2000:]
    _check_nothing_lost_or_doubled(root, stamps)
    q = _queue(root)
    assert {g.timestamp: g.attempts for g in q.groups()} == {g0: 1, g1: 1, g2: 1, g3: 1}
    q.close()


def test_worker_crash_is_retried(sim_files, tmp_path):
    """A worker process that dies (segfault, OOM kill) fails the attempt; the group is retried."""
    root = tmp_path / "run"
    stamps = make_archive(sim_files, tmp_path / "archive", range(2))
    replay(tmp_path / "archive", get_paths(root=root).incoming)
    rc, log = run_service(root, "--once", "--retry-backoff", "0.5", "--option", f"crash_worker_at={stamps[1]}@mid")
    assert rc == 0, log[-3000:]
    _check_nothing_lost_or_doubled(root, stamps)
    q = _queue(root)
    g = q.get(stamps[1])
    assert g.attempts == 1 and g.claims == 2
    assert any("died" in (e["detail"] or "") or "Killed" in (e["detail"] or "") for e in q.events(g.id, "retry"))
    q.close()


# -------------------------------------------------------------------------------------- bad inputs
def test_bad_inputs_are_quarantined_and_the_rest_completes(sim_files, tmp_path):
    root = tmp_path / "run"
    incoming = get_paths(root=root).incoming
    # group 0 good; group 1 loses sb03/05/07 to corruption; group 2 loses sb09/11 and gets a
    # duplicate sb13; group 3 has only 5 subbands
    stamps = make_archive(sim_files, incoming, range(4), skip={1: {3, 5, 7}, 2: {9, 11}, 3: set(range(5, 16))})
    bad = {
        incoming / shifted_name(subband_file(sim_files, 3), 1): "truncated",
        incoming / shifted_name(subband_file(sim_files, 5), 1): "not an HDF5 file",
        incoming / shifted_name(subband_file(sim_files, 7), 1): "NaN/Inf",
        incoming / shifted_name(subband_file(sim_files, 9), 2): "wrong shape",
        incoming / shifted_name(subband_file(sim_files, 11), 2): "broken symbolic link",
        incoming / shifted_name(subband_file(sim_files, 13), 2, extra_s=1): "duplicate sb13",
    }
    names = list(bad)
    write_truncated(subband_file(sim_files, 3), names[0])
    write_not_hdf5(names[1])
    write_with_nans(subband_file(sim_files, 7), names[2])
    write_half_integrations(subband_file(sim_files, 9), names[3])
    os.symlink("/nonexistent/archive/mount/file.hdf5", names[4])
    os.link(subband_file(sim_files, 13), names[5])
    # an unreadable sb14 (group 3 is incomplete anyway); root reads anything, so as root (CI) the
    # service runs without the capabilities that let it (a normal user's view of permissions)
    import shutil

    unreadable = incoming / shifted_name(subband_file(sim_files, 14), 3, extra_s=0)
    shutil.copyfile(subband_file(sim_files, 14), unreadable)
    os.chmod(unreadable, 0)
    bad[unreadable] = "Permission denied"

    rc, log = run_service(root, "--once", as_normal_user=True)
    assert rc == 0, log[-3000:]
    q = _queue(root)
    files = {f["path"]: f for f in q.files()}
    for path, why in bad.items():
        f = files[str(path)]
        assert f["status"] == "quarantined" and why in f["reason"], (path, f["reason"])
        assert str(path) in log  # the log names the file
    groups = {g.timestamp: g for g in q.groups()}
    assert [groups[t].state for t in stamps] == ["completed", "completed", "completed", "failed"]
    assert groups[stamps[1]].missing == [3, 5, 7] and groups[stamps[2]].missing == [9, 11]
    assert groups[stamps[3]].error.startswith("incomplete: only 5 of 16 usable subbands")
    q.close()
    prods = {Path(r["path"]).stem: json.loads(Path(r["path"]).read_text()) for r in _products(root)}
    assert sorted(prods) == stamps[:3]
    assert prods[stamps[1]]["missing"] == [3, 5, 7] and prods[stamps[1]]["n_channels"] > 0
    # nothing deleted: every bad file is still where it arrived
    assert all(os.path.lexists(p) for p in bad)
    out = subprocess.run([sys.executable, "-m", "dsacont.cli", "status", "--root", str(root), "--failures", "20"],
                         capture_output=True, text=True, check=True).stdout
    assert "not an HDF5 file" in out and "incomplete: only 5 of 16" in out


def test_stop_on_error_then_resume(sim_files, tmp_path):
    root = tmp_path / "run"
    incoming = get_paths(root=root).incoming
    make_archive(sim_files, incoming, range(2), skip={1: {5}})
    write_not_hdf5(incoming / shifted_name(subband_file(sim_files, 5), 1))
    rc, log = run_service(root, "--stop-on-error")
    assert rc == 1 and "--stop-on-error" in log and "not an HDF5 file" in log, log[-2000:]
    rc, log = run_service(root, "--once")
    assert rc == 0
    q = _queue(root)
    assert [g.state for g in q.groups()] == ["completed", "completed"]
    q.close()


def test_full_disk_pauses_then_resumes_without_losing_data(sim_files, tmp_path):
    root = tmp_path / "run"
    paths = get_paths(root=root).ensure()
    stamps = make_archive(sim_files, tmp_path / "archive", range(2))
    replay(tmp_path / "archive", paths.incoming)
    before = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in paths.incoming.iterdir()}
    # the product of group 1 is written on a full device: a real ENOSPC from the kernel
    os.symlink("/dev/full", paths.tmp / f"{stamps[1]}.json.tmp")
    svc = start_service(root, "--idle-exit", "3", "--disk-full-pause", "1", "--max-attempts", "10")
    try:
        def disk_full_seen():
            q = _queue(root)
            try:
                g = q.get(stamps[1])
                return g is not None and g.error and "disk full" in g.error and g
            finally:
                q.close()
        g = wait_for(disk_full_seen, 120, what="the disk-full error")
        assert "No space left on device" in g.error and g.state in ("pending", "in_progress")
        os.unlink(paths.tmp / f"{stamps[1]}.json.tmp")  # the operator frees space
        rc = svc.wait(timeout=120)
    finally:
        if svc.poll() is None:
            svc.kill()
    log = svc.log_path.read_text()
    assert rc == 0, log[-3000:]
    assert "pausing new groups" in log
    _check_nothing_lost_or_doubled(root, stamps)
    after = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in paths.incoming.iterdir()}
    assert after == before  # raw data untouched


# -------------------------------------------------------------------------------- two services
def test_two_services_on_one_queue_never_take_the_same_group(sim_files, tmp_path):
    root = tmp_path / "run"
    stamps = make_archive(sim_files, tmp_path / "archive", range(6))
    incoming = get_paths(root=root).incoming
    incoming.mkdir(parents=True, exist_ok=True)
    args = ("--idle-exit", "30", "--option", "sleep_s=1.5")
    a = start_service(root, *args, log_name="a.log")
    b = start_service(root, *args, log_name="b.log")
    try:
        # both services watching before any file arrives (however long their start-up takes here)
        for svc in (a, b):
            wait_for(lambda: svc.log_path.exists() and "watching" in svc.log_path.read_text(), 180,
                     what=f"{svc.log_path.name} to start watching")
        replay(tmp_path / "archive", incoming)
        assert a.wait(timeout=240) == 0, a.log_path.read_text()[-2000:]
        assert b.wait(timeout=240) == 0, b.log_path.read_text()[-2000:]
    finally:
        for p in (a, b):
            if p.poll() is None:
                p.kill()
    _check_nothing_lost_or_doubled(root, stamps)
    q = _queue(root)
    claims = q.events(event="claimed")
    assert Counter(e["group_id"] for e in claims) == Counter({g.id: 1 for g in q.groups()})
    workers = {e["worker"].split(":")[1] for e in claims}
    assert workers == {str(a.pid), str(b.pid)}, "both services should have taken some groups"
    q.close()


def test_calibration_wait_defers_without_failing(sim_files, tmp_path):
    """Groups before the calibrator wait (no attempt used) and complete once it is done."""
    root = tmp_path / "run"
    stamps = make_archive(sim_files, tmp_path / "archive", range(3))
    replay(tmp_path / "archive", get_paths(root=root).incoming)
    # two in flight: group 0 finds no calibration while group 1 (the "calibrator") completes (its
    # lookup lasts until the queue records group 1 completed, and group 1 starts only once group 0 has:
    # no timing race); it must retry at
    # once, not after --cal-wait (600 s: the test would time out)
    rc, log = run_service(root, "--once", "--cal-wait", "600", "--max-inflight", "2",
                          "--option", f"cal_after={stamps[1]}", "--option", f"cal_lookup_until={stamps[1]}",
                          "--option", f"cal_waits_for={stamps[0]}",
                          timeout=400)
    assert rc == 0, log[-3000:]
    _check_nothing_lost_or_doubled(root, stamps)
    q = _queue(root)
    g0 = q.get(stamps[0])
    assert g0.waits >= 1 and g0.attempts == 0 and g0.state == "completed"
    q.close()
    assert "waits for calibration" in log and "retry now" in log


# ----------------------------------------------------------------------------- run-time controls
def test_sigterm_finishes_the_group_in_flight_then_stops(sim_files, tmp_path):
    root = tmp_path / "run"
    stamps = make_archive(sim_files, tmp_path / "archive", range(3))
    replay(tmp_path / "archive", get_paths(root=root).incoming)
    svc = start_service(root, "--idle-exit", "60", "--option", "sleep_s=3")
    try:
        def running():
            q = _queue(root)
            try:
                return q.counts()["in_progress"] == 1
            finally:
                q.close()
        wait_for(running, 60, what="a group in progress")
        svc.send_signal(signal.SIGTERM)
        rc = svc.wait(timeout=60)
    finally:
        if svc.poll() is None:
            svc.kill()
    log = svc.log_path.read_text()
    assert rc == 0 and "finishing the groups in flight" in log, log[-2000:]
    q = _queue(root)
    assert [g.state for g in q.groups()] == ["completed", "pending", "pending"]
    q.close()
    rc, log = run_service(root, "--once")
    assert rc == 0
    _check_nothing_lost_or_doubled(root, stamps)


def test_two_groups_in_flight_on_two_workers(sim_files, tmp_path):
    root = tmp_path / "run"
    stamps = make_archive(sim_files, tmp_path / "archive", range(4))
    replay(tmp_path / "archive", get_paths(root=root).incoming)
    rc, log = run_service(root, "--once", "--max-inflight", "2", "--option", "sleep_s=2")
    assert rc == 0 and "2 worker process(es)" in log, log[-2000:]
    rows = _check_nothing_lost_or_doubled(root, stamps)
    q = _queue(root)
    ev = [e["event"] for e in q.events() if e["event"] in ("claimed", "completed")]
    assert ev[:2] == ["claimed", "claimed"]  # two groups ran at once
    q.close()
    assert len({json.loads(Path(r["path"]).read_text())["pid"] for r in rows}) == 2
    # the on-complete hook gets the CPUs no group uses or waits for: one worker's share at start-up
    # (the queue not read yet), every core after the last group (the hour's mosaic and its catalogue)
    hooks = [json.loads(x) for x in (get_paths(root=root).state / "hooks.jsonl").read_text().splitlines()]
    assert hooks[0]["group"] is None and hooks[0]["threads"] == 1
    assert hooks[-1]["threads"] == min(os.cpu_count(), 2)


def test_hung_group_times_out_and_the_service_goes_on(sim_files, tmp_path):
    root = tmp_path / "run"
    stamps = make_archive(sim_files, tmp_path / "archive", range(2))
    replay(tmp_path / "archive", get_paths(root=root).incoming)
    # the hung group sleeps 600 s; 60 s is ample for a normal group on a fresh worker under load
    rc, log = run_service(root, "--once", "--group-timeout", "60", "--max-attempts", "1",
                          "--option", f"hang_group={stamps[0]}", timeout=400)
    assert rc == 0, log[-3000:]
    q = _queue(root)
    g0, g1 = q.get(stamps[0]), q.get(stamps[1])
    assert g0.state == "failed" and "timed out after 60 s" in g0.error
    assert g1.state == "completed"
    q.close()
    # the operator fixed the cause: --retry-failed puts it back and it completes
    rc, log = run_service(root, "--once", "--retry-failed")
    assert rc == 0 and "1 failed group(s) back in the queue" in log, log[-2000:]
    _check_nothing_lost_or_doubled(root, stamps)


def test_external_dask_scheduler(sim_files, tmp_path):
    """--scheduler ADDRESS: groups run on the workers of an existing dask-scheduler cluster."""
    root = tmp_path / "run"
    stamps = make_archive(sim_files, tmp_path / "archive", range(2))
    replay(tmp_path / "archive", get_paths(root=root).incoming)
    sfile = tmp_path / "scheduler.json"
    env = service_env()
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--scheduler-file", str(sfile),
                              "--host", "127.0.0.1", "--port", "0", "--no-dashboard"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = None
    try:
        wait_for(sfile.exists, 60, what="the scheduler file")
        worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", "--scheduler-file", str(sfile),
                                   "--nthreads", "1", "--resources", "group=1", "--host", "127.0.0.1",
                                   "--no-dashboard"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        address = json.loads(sfile.read_text())["address"]
        rc, log = run_service(root, "--once", "--scheduler", address)
        assert rc == 0 and f"Dask scheduler {address}" in log, log[-3000:]
    finally:
        for p in (worker, sched):
            if p is not None:
                p.terminate()
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
    rows = _check_nothing_lost_or_doubled(root, stamps)
    q = _queue(root)
    service_pids = {int(e["worker"].split(":")[1]) for e in q.events(event="claimed")}
    q.close()
    pids = {json.loads(Path(r["path"]).read_text())["pid"] for r in rows}
    assert len(pids) == 1 and not pids & service_pids  # ran on the cluster's worker, not in the service


# ------------------------------------------------------------------- the real conversion stage
@pytest.mark.casa
def test_kill_during_real_conversion_then_restart(sim_files, tmp_path):
    """The real convert stage in a Dask worker, the service killed -9 mid-write, restarted.

    The real convert stage (CASA, dsacont.service.pipeline:convert_only) runs in a Dask worker; the
    service is killed -9 in the middle of writing the MS and restarted: one complete MS registered,
    none half-written.
    """
    root = tmp_path / "run"
    paths = get_paths(root=root)
    replay(Path(sim_files[0]).parent, paths.incoming, mode="link")
    ts = group_timestamp(sim_files, 0)
    proc = "dsacont.service.pipeline:convert_only"
    svc = start_service(root, "--once", processor=proc, on_complete="")
    try:
        # convert_group logs "writing N rows (...) to <tmp>" as the MS skeleton is started in
        # its temporary place, before any data are written
        wait_for(lambda: re.search(r"writing \d+ rows", svc.log_path.read_text()) is not None, 180,
                 interval=0.05, what="the conversion to start writing")
        svc.kill()
        assert svc.wait(30) == -signal.SIGKILL
    finally:
        if svc.poll() is None:
            svc.kill()
    assert not (paths.ms / f"{ts}.ms").exists()
    assert not paths.products_db.exists() or Products(paths.products_db).list_ms() == []
    rc, log = run_service(root, "--once", processor=proc, on_complete="", timeout=300)
    assert rc == 0, log[-3000:]
    ms_rows = Products(paths.products_db).list_ms()
    assert [Path(r["path"]).name for r in ms_rows] == [f"{ts}.ms"]
    assert (paths.ms / f"{ts}.ms" / "table.dat").exists()
    assert sorted(p.name for p in paths.ms.glob("*.ms")) == [f"{ts}.ms"]  # no second or partial MS
    q = _queue(root)
    g = q.get(ts)
    assert g.state == "completed" and g.attempts == 1 and "interrupted" in (q.events(g.id, "reclaimed")[0]["detail"])
    q.close()
