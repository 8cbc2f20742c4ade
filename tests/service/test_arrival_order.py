"""Files in any order, late files and backlogs: no group lost to arrival order.

The real service (``python -m dsacont.cli stream``, a real Dask LocalCluster) with the light real
processor of ``tests/stream_processors.py``, fed shifted copies of one real simulated group:

* an archive copied into incoming file by file in random order while the service runs with
  ``--incomplete-timeout 60``: every group completed with its 16 subbands, nothing quarantined;
* the service started on a backlog with random modification times (some files fresh, so not
  settled at the first poll): the same;
* a group failed as incomplete (11 subbands) whose other 5 subbands arrive later: re-opened and
  processed with all 16;
* a late subband for a completed group is recorded (not quarantined), and ``dsacont reprocess``
  rebuilds the group's product once, with nothing doubled in the products database.
"""
from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamtools import (
    make_archive,
    queue_groups,
    run_service,
    service_env,
    shifted_name,
    start_service,
    subband_file,
    wait_for,
)

from dsacont.config import get_paths
from dsacont.io.groups import parse_subband_name
from dsacont.service.queue import IngestQueue

pytestmark = pytest.mark.timeout(300)


def _assert_all_complete_once(root, stamps):
    """Every group completed once, with all 16 subbands, no file quarantined, one product each."""
    paths = get_paths(root=root)
    groups = queue_groups(root)
    assert sorted(groups) == sorted(stamps)
    bad = {t: (g.state, g.missing, g.error) for t, g in groups.items() if g.state != "completed" or g.missing}
    assert not bad, bad
    q = IngestQueue(paths.queue_db)
    try:
        assert q.files("quarantined") == []
        done = [q.get(e["group_id"]).timestamp for e in q.events(event="completed")]
    finally:
        q.close()
    assert sorted(done) == sorted(stamps)  # each completed exactly once
    con = sqlite3.connect(paths.products_db)
    try:
        rows = con.execute("SELECT path FROM images").fetchall()
    finally:
        con.close()
    assert sorted(Path(r[0]).name for r in rows) == sorted(f"{t}.json" for t in stamps)
    for r in rows:
        prod = json.loads(Path(r[0]).read_text())
        assert prod["missing"] == [] and len(prod["source_files"]) == 16
    return groups


def _wait_watching(svc):
    wait_for(lambda: "dsacont stream: watching" in svc.log_path.read_text(errors="replace"), 120,
             what="the service to start watching")


def _finish(svc, timeout=180):
    try:
        rc = svc.wait(timeout=timeout)
    finally:
        if svc.poll() is None:
            svc.kill()
            svc.wait()
    log = svc.log_path.read_text(errors="replace")
    assert rc == 0, log[-4000:]
    return log


def test_archive_copied_in_random_order_while_the_service_runs(sim_files, tmp_path):
    """(a) 4 groups, 64 files copied one every 50 ms in random order (plain copies: no
    ``_incomplete`` rename), with the demo's ``--incomplete-timeout 60``."""
    root = tmp_path / "run"
    incoming = get_paths(root=root).ensure().incoming
    stamps = make_archive(sim_files, tmp_path / "archive", range(4))
    files = sorted((tmp_path / "archive").iterdir())
    random.Random(17).shuffle(files)
    # the order really mixes the groups: the oldest group's last file comes after files of the newest
    k_of = {shifted_name(f, k): k for f in sim_files for k in range(4)}
    order = [k_of[f.name] for f in files]
    assert max(i for i, k in enumerate(order) if k == 0) > min(i for i, k in enumerate(order) if k == 3)
    svc = start_service(root, "--incomplete-timeout", "60", "--idle-exit", "5")
    _wait_watching(svc)
    for f in files:
        shutil.copyfile(f, incoming / f.name)
        time.sleep(0.05)
    log = _finish(svc)
    groups = _assert_all_complete_once(root, stamps)
    assert all(g.claims == 1 for g in groups.values()), {t: g.claims for t, g in groups.items()}
    assert not re.search(r"quarantined \S+: |-> failed|incomplete: ", log), log[-4000:]


def test_service_started_on_a_backlog_with_random_mtimes(sim_files, tmp_path):
    """(b) 5 groups already in incoming, modification times scattered over the last 6 h, and five
    files of the oldest group (the transit group) just written, so not settled at the first poll
    (the first poll records the four newer groups whole: data 1236 s newer than the oldest)."""
    root = tmp_path / "run"
    incoming = get_paths(root=root).ensure().incoming
    stamps = make_archive(sim_files, tmp_path / "archive", range(5))
    rng = random.Random(5)
    now = time.time()
    fresh = set()
    first_fresh = {shifted_name(f, 0) for f in sim_files if parse_subband_name(f).subband in (2, 4, 5, 6, 15)}
    for f in sorted((tmp_path / "archive").iterdir()):
        dst = incoming / f.name
        shutil.copyfile(f, dst)
        if f.name in first_fresh:
            fresh.add(dst)
            continue
        t = now - rng.uniform(60, 6 * 3600)
        os.utime(dst, (t, t))
    assert len(fresh) == 5
    for dst in fresh:
        os.utime(dst, None)  # now
    rc, log = run_service(root, "--incomplete-timeout", "60", "--idle-exit", "4", "--settle", "60", timeout=180)
    assert rc == 0, log[-4000:]
    _assert_all_complete_once(root, stamps)
    assert not re.search(r"quarantined \S+: |-> failed|incomplete: ", log), log[-4000:]


# ------------------------------------------------------------------------------ the queue's rules
T0 = 1761745971.0  # 2025-10-29T13:52:51 UTC


def _add(q, t, subbands):
    for sb in subbands:
        q.add_file(f"/in/{t:.0f}_sb{sb:02d}.hdf5", t + sb % 3, sb)


def test_no_finalising_while_a_file_of_the_group_is_unrecorded(tmp_path):
    q = IngestQueue(tmp_path / "q.sqlite3")
    _add(q, T0, range(11))
    _add(q, T0 + 1236, range(16))  # much newer data, whole
    # sb11 of the old group is in incoming, not settled yet: the old group waits for it
    assert q.finalize_groups(incomplete_timeout_s=60, unrecorded=[T0 + 2]) == [
        ("2025-10-29T14:13:27", "pending", "all 16 subbands arrived")]
    assert q.get("2025-10-29T13:52:51").state == "collecting"
    # a file of another group is unrecorded: "newer data" is suspended, the wall-time rule is not
    assert q.finalize_groups(incomplete_timeout_s=60, unrecorded=[T0 + 900], hold_newer=True) == []
    assert q.finalize_groups(incomplete_timeout_s=60, unrecorded=[T0 + 900], hold_newer=True,
                             now=time.time() + 61)[0][1] == "failed"
    # the watcher's report of what it has not recorded: visible to status, dropped once recorded
    from dsacont.service.queue import WorkerId

    me = WorkerId.this_process("t")
    q.set_unrecorded(me, [("/in/x_sb11.hdf5", T0 + 2, 11, "unsettled")])
    assert [(r["path"], r["reason"]) for r in q.unrecorded()] == [("/in/x_sb11.hdf5", "unsettled")]
    q.add_file("/in/x_sb11.hdf5", T0 + 2, 11)
    assert q.unrecorded() == []
    q.set_unrecorded(me, [])
    assert q.conn.execute("SELECT COUNT(*) FROM unrecorded").fetchone()[0] == 0
    q.close()


# ----------------------------------------------------------------------------------- late files
def _stop(svc):
    if svc.poll() is None:
        svc.send_signal(signal.SIGTERM)
        try:
            svc.wait(60)
        except subprocess.TimeoutExpired:
            svc.kill()
            svc.wait()
    return svc.log_path.read_text(errors="replace")


def _state(root, ts):
    g = queue_groups(root).get(ts)
    return g.state if g else None


def test_group_failed_as_incomplete_is_rescued_by_its_late_subbands(sim_files, tmp_path):
    """(c) 11 of 16 subbands: failed as incomplete (newer data arrived); the other 5 arrive later:
    the group re-opens and is processed with all 16."""
    root = tmp_path / "run"
    incoming = get_paths(root=root).ensure().incoming
    late_sbs = (2, 4, 5, 6, 15)
    stamps = make_archive(sim_files, incoming, range(3), skip={0: set(late_sbs)})
    svc = start_service(root, "--incomplete-timeout", "60")
    try:
        wait_for(lambda: _state(root, stamps[0]) == "failed" and _state(root, stamps[2]) == "completed", 120,
                 what="the incomplete group to fail and the others to complete")
        assert queue_groups(root)[stamps[0]].error.startswith("incomplete: only 11 of 16")
        for f in sim_files:
            if parse_subband_name(f).subband in late_sbs:
                shutil.copyfile(f, incoming / shifted_name(f, 0))
        wait_for(lambda: _state(root, stamps[0]) == "completed", 120, what="the re-opened group to complete")
    finally:
        log = _stop(svc)
    assert "re-opened" in log
    g = queue_groups(root)[stamps[0]]
    assert g.missing == [] and g.claims == 1 and g.reopened >= 1 and g.attempts == 0
    q = IngestQueue(get_paths(root=root).queue_db)
    try:
        assert q.files("quarantined") == [] and q.late_files() == []
    finally:
        q.close()
    prod = json.loads((get_paths(root=root).images / f"{stamps[0]}.json").read_text())
    assert prod["missing"] == [] and len(prod["source_files"]) == 16


def test_late_subband_for_a_completed_group_then_reprocess(sim_files, tmp_path):
    """(d) A group completed with 15 subbands; its sb07 arrives late: recorded (not quarantined),
    the products untouched (the policy is off); ``dsacont reprocess`` rebuilds the group once, over
    its old row, and marks the mosaic that used its image stale."""
    from dsacont.service.products import Products

    root = tmp_path / "run"
    paths = get_paths(root=root).ensure()
    stamps = make_archive(sim_files, paths.incoming, range(3), skip={0: {7}})
    svc = start_service(root, "--incomplete-timeout", "60")
    try:
        wait_for(lambda: all(_state(root, s) == "completed" for s in stamps), 120, what="three groups completed")
        assert queue_groups(root)[stamps[0]].missing == [7]
        products = Products(paths.products_db)
        before = {r["path"]: r for r in products.list_images()}
        img0 = str(paths.images / f"{stamps[0]}.json")
        fits = paths.mosaics / "mosaic_test.fits"
        fits.write_bytes(b"SIMPLE")
        mosaic = products.add_mosaic(fits, images=[img0, str(paths.images / f"{stamps[1]}.json")])
        late = paths.incoming / shifted_name(subband_file(sim_files, 7), 0)
        shutil.copyfile(subband_file(sim_files, 7), late)
        q = IngestQueue(paths.queue_db)
        try:
            wait_for(lambda: q.late_files(stamps[0]), 30, what="the late file to be recorded")
            assert q.files("quarantined") == []
            time.sleep(1.5)  # a few polls: the policy is off, nothing is rebuilt by itself
            assert q.get(stamps[0]).claims == 1
        finally:
            q.close()
        r = subprocess.run([sys.executable, "-m", "dsacont.cli", "reprocess", stamps[0], "--root", str(root)],
                           capture_output=True, text=True, env=service_env())
        assert r.returncode == 0 and "queued for rebuilding" in r.stdout, r.stdout + r.stderr
        wait_for(lambda: queue_groups(root)[stamps[0]].claims == 2 and _state(root, stamps[0]) == "completed", 60,
                 what="the rebuild")
    finally:
        log = _stop(svc)
    g = queue_groups(root)[stamps[0]]
    assert g.missing == [] and not g.rebuild
    q = IngestQueue(paths.queue_db)
    try:
        assert len(q.events(g.id, "completed")) == 2 and len(q.events(g.id, "rebuild")) == 1
        assert q.late_files() == [] and q.files("quarantined") == []
    finally:
        q.close()
    # the product rebuilt with 16 subbands, over its old row: one row per group, same ids
    prod = json.loads(Path(img0).read_text())
    assert prod["missing"] == [] and len(prod["source_files"]) == 16
    after = {r["path"]: r for r in products.list_images()}
    assert sorted(after) == sorted(before) and len(after) == 3
    assert {p: r["id"] for p, r in after.items()} == {p: r["id"] for p, r in before.items()}
    assert after[img0]["updated"] > before[img0]["updated"]
    assert all(after[p]["updated"] == before[p]["updated"] for p in after if p != img0)
    ledger = [json.loads(x) for x in (paths.state / "ledger.jsonl").read_text().splitlines()]
    assert sum(1 for e in ledger if e["group"] == stamps[0] and e["point"] == "start") == 2
    assert products.get("mosaic", mosaic)["status"] == "stale"
    assert {r["path"] for r in products.images_not_in_mosaic()} >= {img0}
    assert "rebuilt: mosaic(s)" in log


def test_late_files_reopen_or_wait_for_a_rebuild(tmp_path):
    """The queue's side: a late subband re-opens a group failed as incomplete (which then waits for
    the wall-time rule, not "newer data"); for a taken group it is recorded usable, with a note;
    ``rebuild_late`` (the ``reprocess_late`` policy) queues a completed group once its late files
    have stopped coming; the claim takes them in."""
    from dsacont.service.queue import WorkerId

    me = WorkerId.this_process("t")
    q = IngestQueue(tmp_path / "q.sqlite3")
    _add(q, T0, range(11))
    _add(q, T0 + 1236, range(16))
    assert [s for _t, s, _n in q.finalize_groups(incomplete_timeout_s=60)] == ["failed", "pending"]
    r = q.add_file("/in/late_sb11.hdf5", T0 + 2, 11)
    g = q.get("2025-10-29T13:52:51")
    assert r.status == "ok" and g.state == "collecting" and g.reopened == 1 and len(g.present) == 12
    assert q.finalize_groups(incomplete_timeout_s=60) == []  # newer data does not count for it
    assert q.finalize_groups(incomplete_timeout_s=60, now=time.time() + 61)[0][1] == "pending"
    g = q.claim(me)
    assert g.timestamp == "2025-10-29T13:52:51" and g.missing == [12, 13, 14, 15]
    assert q.complete(g, {})
    r = q.add_file("/in/late_sb12.hdf5", T0 + 2, 12)
    assert r.status == "ok" and r.reason.startswith("late: arrived after group 2025-10-29T13:52:51")
    assert q.get(g.id).state == "completed" and [f["path"] for f in q.late_files()] == [r.path]
    assert q.rebuild_late(quiet_s=60) == {}  # more may come
    assert q.rebuild_late(quiet_s=60, now=time.time() + 61) == {"2025-10-29T13:52:51": "queued"}
    g2 = q.claim(me)
    assert g2.id == g.id and g2.rebuild and 12 in [i for i, p in enumerate(g2.paths) if p]
    assert q.late_files() == []
    assert q.complete(g2, {}) and not q.get(g.id).rebuild
    assert q.rebuild(["2025-10-29T13:52:51", "2030-01-01T00:00:00"]) == {
        "2025-10-29T13:52:51": "queued", "2030-01-01T00:00:00": "unknown"}
    q.close()


def test_newer_data_does_not_count_while_data_arrive_out_of_order(tmp_path):
    """Newer data recorded *before* an older group's files (a backlog copied in random order) is no
    sign that the older group is over: only the wall-time rule finalises it. In time order, the
    rule works as before."""
    q = IngestQueue(tmp_path / "q.sqlite3")
    _add(q, T0 + 1236, range(16))
    _add(q, T0, range(11))  # arrives after data 1236 s newer: out of order
    assert q.finalize_groups(incomplete_timeout_s=60) == [("2025-10-29T14:13:27", "pending", "all 16 subbands arrived")]
    assert q.get("2025-10-29T13:52:51").state == "collecting"
    assert q.finalize_groups(incomplete_timeout_s=60, now=time.time() + 61)[0][1] == "failed"
    q.close()
    q = IngestQueue(tmp_path / "q2.sqlite3")
    _add(q, T0, range(11))
    _add(q, T0 + 1236, range(16))  # in time order
    assert [s for _t, s, _n in q.finalize_groups(incomplete_timeout_s=60)] == ["failed", "pending"]
    q.close()


def test_late_subband_for_a_group_waiting_after_an_attempt_rebuilds_it(tmp_path):
    """A group that was tried without a subband and waits (for calibration: a bandpass without
    that window, say) is claimable again at once when the subband arrives, its products rebuilt."""
    from dsacont.service.queue import WorkerId

    me = WorkerId.this_process("t")
    q = IngestQueue(tmp_path / "q.sqlite3")
    _add(q, T0, range(15))
    q.finalize_groups(force=True)
    g = q.claim(me)
    assert g.missing == [15] and q.defer(g, "no bandpass solutions for sb15", delay_s=86400, wait_token="1:2")
    assert q.claim(me) is None
    assert q.wake_calibration("1:2") == []  # nothing changed in the registry
    r = q.add_file("/in/late_sb15.hdf5", T0 + 2, 15)
    assert r.status == "ok"
    g2 = q.claim(me)
    assert g2 is not None and g2.id == g.id and g2.rebuild and g2.missing == []
    q.close()
