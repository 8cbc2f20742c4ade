"""The ingest queue (dsacont.service.queue) and the SQLite helper (dsacont.db), on real SQLite files.

Concurrency is tested with real processes hammering one database file.
"""
from __future__ import annotations

import json
import multiprocessing as mp
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dsacont import db
from dsacont.service.queue import IngestQueue, WorkerId, pid_alive

T0 = 1761745971.0  # 2025-10-29T13:52:51 UTC
CADENCE = 309.0


def add_group(q: IngestQueue, t0: float, subbands=range(16),
              jitter=(0, 3, 7, 11, 2, 5, 9, 13, 1, 4, 8, 12, 6, 10, 14, 15),
              shape=None, now=None):
    """Add one group's files (names jittered by seconds, as 16 correlator clocks do)."""
    res = []
    for sb in subbands:
        t = t0 + jitter[sb]
        ts = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t))
        res.append(q.add_file(f"/in/{ts}_sb{sb:02d}.hdf5", t, sb, shape=shape or {"nblts": 10, "nfreqs": 48, "npols": 2,
                                                                                 "ntimes": 2}, now=now))
    return res


# ---------------------------------------------------------------------------------------- db.py
def test_db_connect_wal_busy_fk_and_migrations(tmp_path):
    path = tmp_path / "x.sqlite3"
    conn = db.connect(path, timeout_s=5)
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert conn.execute("PRAGMA busy_timeout").fetchone()[0] == 5000
    assert conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    migs = ["CREATE TABLE a (id INTEGER PRIMARY KEY, x TEXT); CREATE TABLE b (a_id INTEGER REFERENCES a(id))",
            lambda c: c.execute("ALTER TABLE a ADD COLUMN y INTEGER")]
    assert db.migrate(conn, migs) == 2
    assert db.migrate(conn, migs) == 2  # idempotent
    assert db.schema_version(conn) == 2
    with pytest.raises(sqlite3.IntegrityError):  # foreign keys are enforced
        with db.transaction(conn):
            conn.execute("INSERT INTO b (a_id) VALUES (42)")
    # a failed transaction rolls back everything in it
    with pytest.raises(ZeroDivisionError):
        with db.transaction(conn):
            conn.execute("INSERT INTO a (x, y) VALUES ('kept?', 1)")
            1 / 0
    assert conn.execute("SELECT COUNT(*) FROM a").fetchone()[0] == 0
    # newer schema than the code: refuse
    with pytest.raises(RuntimeError, match="newer"):
        db.migrate(conn, migs[:1])
    ro = db.connect(path, readonly=True)
    with pytest.raises(sqlite3.OperationalError):
        ro.execute("INSERT INTO a (x) VALUES ('no')")


def test_db_immediate_transaction_blocks_second_writer(tmp_path):
    path = tmp_path / "x.sqlite3"
    a = db.connect(path, timeout_s=0.2)
    a.execute("CREATE TABLE t (v INTEGER)")
    b = db.connect(path, timeout_s=0.2)
    with db.transaction(a):
        a.execute("INSERT INTO t VALUES (1)")
        with pytest.raises(sqlite3.OperationalError, match="locked"):
            with db.transaction(b):
                pass
        # readers are not blocked by the writer (WAL) and see the last committed state
        assert b.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 0
    assert b.execute("SELECT COUNT(*) FROM t").fetchone()[0] == 1


# ---------------------------------------------------------------------------------- grouping
def test_files_cluster_into_groups_and_complete_groups_become_pending(tmp_path):
    q = IngestQueue(tmp_path / "q.sqlite3")
    # two observations, files arriving interleaved and out of order inside each group
    add_group(q, T0 + CADENCE, subbands=range(8))
    add_group(q, T0, subbands=range(16))
    add_group(q, T0 + CADENCE, subbands=range(8, 16))
    groups = q.groups()
    assert [g.timestamp for g in groups] == ["2025-10-29T13:52:51", "2025-10-29T13:58:00"]
    assert all(len(g.present) == 16 for g in groups)
    assert q.counts()["collecting"] == 2
    moved = q.finalize_groups()
    assert [(ts, st) for ts, st, _ in moved] == [("2025-10-29T13:52:51", "pending"), ("2025-10-29T13:58:00", "pending")]
    # group name is the earliest file timestamp even when a later file arrived first
    g = q.get("2025-10-29T13:52:51")
    assert g.paths[0].endswith("13:52:51_sb00.hdf5") and g.paths[15].endswith("13:53:06_sb15.hdf5")
    assert g.missing == []


def test_anchor_moves_to_earliest_file_when_it_arrives_late(tmp_path):
    q = IngestQueue(tmp_path / "q.sqlite3")
    q.add_file("/in/b_sb01.hdf5", T0 + 20, 1)
    q.add_file("/in/a_sb00.hdf5", T0, 0)          # earlier clock, arrives second
    q.add_file("/in/c_sb02.hdf5", T0 + 29, 2)      # within 30 s of the new anchor
    q.add_file("/in/d_sb03.hdf5", T0 + 45, 3)      # would stretch the group past 30 s: a new group
    gs = q.groups()
    assert [g.timestamp for g in gs] == ["2025-10-29T13:52:51", "2025-10-29T13:53:36"]
    assert [len(g.present) for g in gs] == [3, 1]


def test_duplicate_and_late_files_are_quarantined_with_reasons(tmp_path):
    q = IngestQueue(tmp_path / "q.sqlite3")
    add_group(q, T0, subbands=range(15))
    dup = q.add_file("/in/2025-10-29T13:52:58_sb03.hdf5", T0 + 7, 3)
    assert dup.status == "quarantined" and "duplicate sb03" in dup.reason and "13:53:02_sb03" in dup.reason
    add_group(q, T0, subbands=[15])
    q.finalize_groups()
    q.claim(WorkerId.this_process("t"))
    late = q.add_file("/in/2025-10-29T13:53:00_sb07.hdf5", T0 + 9, 7)  # a duplicate, though late
    assert late.status == "quarantined" and "duplicate sb07" in late.reason
    g = q.get("2025-10-29T13:52:51")
    assert g.state == "in_progress" and len(g.present) == 16 and "13:52:58_sb03" not in json.dumps(g.paths)
    assert {f["path"] for f in q.files("quarantined")} == {dup.path, late.path}
    # the same path twice is recorded once (two watchers on one directory)
    assert q.add_file(dup.path, T0 + 7, 3).status == "known"


def test_incomplete_policy(tmp_path):
    q = IngestQueue(tmp_path / "q.sqlite3")
    now = time.time()
    add_group(q, T0, subbands=range(13), now=now)            # 13 subbands: processed with 3 missing
    add_group(q, T0 + CADENCE, subbands=range(5), now=now)   # 5 subbands: failed
    assert q.finalize_groups(now=now + 10, incomplete_timeout_s=600) == []  # still waiting
    moved = {ts: (st, note) for ts, st, note in q.finalize_groups(now=now + 601, incomplete_timeout_s=600)}
    st, note = moved["2025-10-29T13:52:51"]
    assert st == "pending" and "missing sb13,sb14,sb15" in note
    st, note = moved["2025-10-29T13:58:00"]
    assert st == "failed" and note.startswith("incomplete: only 5 of 16")
    g = q.get("2025-10-29T13:52:51")
    assert g.missing == [13, 14, 15] and g.paths[13] is None and g.paths[12] is not None


def test_late_subband_joins_a_group_still_pending(tmp_path):
    q = IngestQueue(tmp_path / "q.sqlite3")
    now = time.time()
    add_group(q, T0, subbands=range(14), now=now)
    q.finalize_groups(now=now + 1000, incomplete_timeout_s=600)
    assert q.get(1).state == "pending" and q.get(1).missing == [14, 15]
    r = q.add_file("/in/late_sb14.hdf5", T0 + 14, 14, shape={"nblts": 10, "nfreqs": 48, "npols": 2, "ntimes": 2})
    assert r.status == "ok" and q.get(1).missing == [15]
    r = q.add_file("/in/late_sb15.hdf5", T0 + 15, 15, shape={"nblts": 5, "nfreqs": 48, "npols": 2, "ntimes": 1})
    assert r.status == "quarantined" and "wrong shape" in r.reason and q.get(1).missing == [15]


def test_one_file_with_a_wild_clock_does_not_finalise_everything(tmp_path):
    q = IngestQueue(tmp_path / "q.sqlite3")
    add_group(q, T0, subbands=range(10))
    q.add_file("/in/2030-01-01T00:00:00_sb03.hdf5", T0 + 1e8, 3)
    assert q.finalize_groups(incomplete_timeout_s=600) == []


def test_incomplete_group_finalised_when_newer_data_arrives(tmp_path):
    """Data-time rule: works at any replay speed (no wall-clock wait)."""
    q = IngestQueue(tmp_path / "q.sqlite3")
    add_group(q, T0, subbands=range(14))
    add_group(q, T0 + CADENCE, subbands=range(16))
    moved = dict((ts, st) for ts, st, _ in q.finalize_groups(incomplete_timeout_s=300))
    assert moved == {"2025-10-29T13:52:51": "pending", "2025-10-29T13:58:00": "pending"}


def test_wrong_shape_quarantined_by_majority(tmp_path):
    q = IngestQueue(tmp_path / "q.sqlite3")
    add_group(q, T0, subbands=range(15))
    odd = q.add_file("/in/2025-10-29T13:53:06_sb15.hdf5", T0 + 15, 15,
                     shape={"nblts": 10, "nfreqs": 24, "npols": 2, "ntimes": 2})
    assert odd.status == "ok"  # cannot know yet
    q.finalize_groups(min_subbands=12)
    f = {x["path"]: x for x in q.files()}[odd.path]
    assert f["status"] == "quarantined" and "wrong shape" in f["reason"] and "Nfreqs=24" in f["reason"]
    g = q.get("2025-10-29T13:52:51")
    assert g.state == "pending" and g.missing == [15]


# ------------------------------------------------------------------------------------- claims
def _ready_queue(path, n=3):
    q = IngestQueue(path, lease_s=60, max_attempts=2, retry_backoff_s=0.0)
    for i in reversed(range(n)):  # arrive newest first: claims must still be oldest first
        add_group(q, T0 + i * CADENCE)
    q.finalize_groups()
    return q


def test_claims_in_time_order_with_fencing(tmp_path):
    q = _ready_queue(tmp_path / "q.sqlite3")
    me = WorkerId.this_process("t")
    a, b, c = q.claim(me), q.claim(me), q.claim(me)
    assert [a.timestamp, b.timestamp, c.timestamp] == sorted([a.timestamp, b.timestamp, c.timestamp])
    assert q.claim(me) is None
    assert q.complete(a, {"ms": "x.ms"}) is True
    assert q.complete(a, {"ms": "x.ms"}) is False  # twice: refused
    assert q.get(a.id).result == {"ms": "x.ms"}
    # a stale holder (its claim was reclaimed and re-claimed) can neither complete nor fail it
    q.conn.execute("UPDATE groups SET lease_until = 0 WHERE id = ?", (b.id,))
    assert q.reclaim_stale(host="elsewhere")
    b2 = q.claim(me)
    assert b2.id == b.id and b2.claim_token != b.claim_token
    assert q.complete(b, {}) is False and q.fail(b, "late error") is None
    assert q.complete(b2, {}) is True
    assert [e["event"] for e in q.events(b.id)].count("completed") == 1
    assert any(e["event"] == "stale_completed" for e in q.events(b.id))


def test_a_prioritised_group_is_claimed_first_the_rest_in_time_order(tmp_path):
    q = _ready_queue(tmp_path / "q.sqlite3", n=4)
    todo = q.unassessed()
    stamps = [g.timestamp for g, _ in todo]
    assert stamps == sorted(stamps) and len(stamps) == 4
    assert all(header["nfreqs"] == 48 for _, header in todo)  # a file's header summary comes along
    q.set_priority(todo[2][0], 1, "calibrator 0834+555 transits at 2025-10-29T13:57:25")
    for g, _ in todo[:2] + todo[3:]:
        q.set_priority(g, 0)
    assert q.unassessed() == []
    me = WorkerId.this_process("t")
    claimed = [q.claim(me).timestamp for _ in range(4)]
    assert claimed == [stamps[2], stamps[0], stamps[1], stamps[3]]
    (ev,) = q.events(todo[2][0].id, "prioritised")
    assert json.loads(ev["detail"]) == {"priority": 1, "reason": "calibrator 0834+555 transits at 2025-10-29T13:57:25"}
    assert q.get(todo[2][0].id).priority == 1 and q.get(todo[0][0].id).priority == 0


def test_a_group_waits_for_its_inner_neighbour_when_another_can_go(tmp_path):
    """Priorities 1 2 3 2 1 (a calibrator transits in the middle group). With two workers, a group
    whose neighbour towards the transit is still being processed goes after one whose neighbour
    is done, although the time order would take it first: its tile then finds the neighbour's
    sources in the strip model instead of being imaged twice."""
    q = _ready_queue(tmp_path / "q.sqlite3", n=5)
    groups = [g for g, _ in q.unassessed()]
    for g, p in zip(groups, [1, 2, 3, 2, 1]):
        q.set_priority(g, p)
    me = WorkerId.this_process("t")
    transit = q.claim(me)
    assert transit.id == groups[2].id
    west = q.claim(me)  # every other group waits on a neighbour: the highest priority, the oldest
    assert west.id == groups[1].id
    assert q.complete(transit, {}) is True
    east = q.claim(me)
    assert east.id == groups[3].id
    assert q.complete(east, {}) is True
    # the oldest is the westmost, but its neighbour (west) is still in progress: the eastmost goes
    assert q.claim(me).id == groups[4].id
    assert q.complete(west, {}) is True
    assert q.claim(me).id == groups[0].id
    assert q.claim(me) is None


def test_errors_retry_then_fail_and_calibration_waits_do_not_count(tmp_path):
    q = _ready_queue(tmp_path / "q.sqlite3", n=1)
    me = WorkerId.this_process("t")
    g = q.claim(me)
    assert q.defer(g, "no bandpass yet", delay_s=3600) is True
    g = q.get(g.id)
    assert g.state == "pending" and g.waits == 1 and g.attempts == 0
    assert q.claim(me) is None                     # deferred
    assert q.wake("calibration") == 1              # another group completed
    g = q.claim(me)
    assert q.fail(g, "RuntimeError: boom") == "pending"
    g = q.claim(me)
    assert g.attempts == 1
    assert q.fail(g, "RuntimeError: boom again") == "failed"
    g = q.get(g.id)
    assert g.state == "failed" and "gave up after 2 attempts" in g.error
    add_group(q, T0 + CADENCE, subbands=range(4))
    q.finalize_groups(force=True)  # incomplete: failed by the policy, never claimed
    assert q.counts()["failed"] == 2
    assert q.requeue() == 1 and q.get(g.id).state == "pending"  # only the processed one
    assert q.get("2025-10-29T13:58:00").state == "failed"


def test_reclaim_dead_worker_pid(tmp_path):
    q = _ready_queue(tmp_path / "q.sqlite3", n=1)
    p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        fake = WorkerId.this_process("t")
        fake = WorkerId(fake.host, p.pid, None, f"dead:{p.pid}")
        g = q.claim(fake)
        assert q.reclaim_stale() == []               # alive: kept
        p.kill()
        p.wait()
        assert not pid_alive(p.pid)
        out = q.reclaim_stale()
        assert len(out) == 1 and "is gone" in out[0][1]
        g = q.get(g.id)
        assert g.state == "pending" and g.attempts == 1 and "interrupted" in g.error
    finally:
        p.kill()


def test_live_but_silent_worker_on_this_host_is_reclaimed_only_when_hung(tmp_path):
    q = _ready_queue(tmp_path / "q.sqlite3", n=1)
    me = WorkerId.this_process("t")  # alive: this test process
    g = q.claim(me, now=1000.0)
    assert q.reclaim_stale(now=1000.0 + q.lease_s + 5) == []  # late heartbeat: a busy loop, not dead
    out = q.reclaim_stale(now=1000.0 + q.lease_s + q.hung_after_s + 5)
    assert len(out) == 1 and "hung" in out[0][1]
    assert q.get(g.id).state == "pending"


def test_zombie_counts_as_dead():
    p = subprocess.Popen([sys.executable, "-c", "pass"])

    def state():
        try:
            return Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, IndexError):
            return None

    t0 = time.time()
    while state() != "Z" and time.time() - t0 < 120:  # exited but not reaped: a zombie
        time.sleep(0.05)
    assert state() == "Z"
    assert not pid_alive(p.pid)
    p.wait()


def _claimer(db_path, out_q, n_loops, barrier):
    q = IngestQueue(db_path)
    me = WorkerId.this_process("c")
    got = []
    barrier.wait(60)  # all start together
    for _ in range(n_loops):
        g = q.claim(me)
        if g is None:
            break
        got.append(g.timestamp)
        time.sleep(0.01)  # "work"
        q.complete(g, {"by": me.name})
    out_q.put(got)


def test_concurrent_claims_never_take_a_group_twice(tmp_path):
    path = tmp_path / "q.sqlite3"
    q = _ready_queue(path, n=40)
    ctx = mp.get_context("spawn")
    out_q = ctx.Queue()
    barrier = ctx.Barrier(4)
    procs = [ctx.Process(target=_claimer, args=(str(path), out_q, 100, barrier)) for _ in range(4)]
    for p in procs:
        p.start()
    results = [out_q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(30)
    claimed = [ts for r in results for ts in r]
    assert len(claimed) == 40 and len(set(claimed)) == 40
    assert sum(1 for r in results if r) >= 2, "expected the work to be shared between processes"
    assert q.counts()["completed"] == 40
    assert all(len([e for e in q.events(g.id) if e["event"] == "claimed"]) == 1 for g in q.groups())
