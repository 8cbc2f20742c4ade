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
import sqlite3
import time
from pathlib import Path

import pytest
from streamtools import make_archive, run_service, shifted_name, sim_group_files, start_service, wait_for

from dsacont.config import get_paths
from dsacont.io.groups import parse_subband_name
from dsacont.service.queue import IngestQueue

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def sim_files(request):
    return sim_group_files(request)


def _groups(root) -> dict:
    q = IngestQueue(get_paths(root=root).queue_db)
    try:
        return {g.timestamp: g for g in q.groups()}
    finally:
        q.close()


def _assert_all_complete_once(root, stamps):
    """Every group completed once, with all 16 subbands, no file quarantined, one product each."""
    paths = get_paths(root=root)
    groups = _groups(root)
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
