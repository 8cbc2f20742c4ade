"""Calibration registry: real SQLite files, real processes."""
from __future__ import annotations

import multiprocessing as mp
import sqlite3

import pytest

from dsacont.calibration.registry import Registry, to_mjd

T0 = "2025-10-29T13:55:26"
H = 1.0 / 24.0


@pytest.fixture
def reg(tmp_path):
    return Registry(tmp_path / "state" / "cal_registry.sqlite3")


def _valid(reg, kind, t, path="x", **kw):
    rid = reg.register_begin(kind, "0834+555", t, path, **kw)
    reg.mark_valid(rid, {"flagged_fraction": 0.01})
    return rid


def test_wal_and_schema(reg):
    con = sqlite3.connect(reg.db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    cols = {r[1] for r in con.execute("PRAGMA table_info(caltables)")}
    assert {"kind", "calibrator", "solve_mjd", "valid_start", "valid_end", "status", "metrics",
            "source_ms", "path"} <= cols


def test_two_sided_lookup(reg):
    t0 = to_mjd(T0)
    rid = _valid(reg, "G", T0, "g.tbl", source_ms="cal.ms")
    # before and after the solve time, inside the default +-1 h gain window
    for dt_h in (-0.99, -0.5, 0.0, 0.5, 0.99):
        rec = reg.lookup("G", t0 + dt_h * H)
        assert rec is not None and rec.id == rid, dt_h
    rec = reg.lookup("G", T0)
    assert rec.path == "g.tbl" and rec.source_ms == "cal.ms" and rec.metrics == {"flagged_fraction": 0.01}
    assert abs(rec.valid_start - (t0 - H)) < 1e-9 and abs(rec.valid_end - (t0 + H)) < 1e-9
    # the bandpass default is +-24 h
    bid = _valid(reg, "B", T0)
    assert reg.lookup("B", t0 - 23.9 * H).id == bid
    assert reg.lookup("B", t0 + 23.9 * H).id == bid


def test_expiry_and_kind(reg):
    t0 = to_mjd(T0)
    _valid(reg, "G", T0)
    assert reg.lookup("G", t0 + 1.01 * H) is None
    assert reg.lookup("G", t0 - 1.01 * H) is None
    assert reg.lookup("B", T0) is None  # a G never answers for a B
    # configurable, asymmetric windows
    rid = _valid(reg, "G", t0 + 10 * H, valid_before_h=0.25, valid_after_h=3.0)
    assert reg.lookup("G", t0 + 12.9 * H).id == rid
    assert reg.lookup("G", t0 + 9.7 * H) is None


def test_nearest_valid_wins(reg):
    t0 = to_mjd(T0)
    a = _valid(reg, "G", t0)
    b = _valid(reg, "G", t0 + 0.8 * H)
    assert reg.lookup("G", t0 + 0.3 * H).id == a
    assert reg.lookup("G", t0 + 0.5 * H).id == b
    assert reg.lookup("G", t0 - 0.5 * H).id == a
    assert reg.lookup("G", t0 + 1.5 * H).id == b


def test_writing_and_rejected_never_returned(reg):
    t0 = to_mjd(T0)
    old = _valid(reg, "B", t0 - 10 * H)
    writing = reg.register_begin("B", "0834+555", t0, "new.tbl")
    assert reg.get(writing).status == "writing"
    # the nearer table is still being written: the older valid one is returned
    assert reg.lookup("B", t0).id == old
    reg.reject(writing, "bandpass had 60 % flagged solutions")
    assert reg.lookup("B", t0).id == old
    rec = reg.get(writing)
    assert rec.status == "rejected" and "60 %" in rec.reason
    # a G alone in 'writing' gives nothing at all
    reg.register_begin("G", "0834+555", t0, "g.tbl")
    assert reg.lookup("G", t0) is None
    assert reg.lookup_set(t0)[0].id == old and len(reg.lookup_set(t0)) == 1
    with pytest.raises(KeyError):
        reg.mark_valid(9999)


def test_lookup_set_keeps_b_with_its_g(reg):
    t0 = to_mjd(T0)
    b_old = _valid(reg, "B", t0 - 2 * H)
    b_new = _valid(reg, "B", t0 + 0.2 * H)  # nearer, but the G was solved on b_old
    g = _valid(reg, "G", t0, depends_on=b_old)
    assert [r.id for r in reg.lookup_set(t0)] == [b_old, g]
    reg.reject(b_old, "found bad later")
    assert [r.id for r in reg.lookup_set(t0)] == [b_new, g]


def test_reap_stale(reg):
    rid = reg.register_begin("G", "0834+555", T0, "g.tbl")
    assert reg.reap_stale(older_than_s=3600) == 0
    assert reg.reap_stale(older_than_s=-1) == 1
    assert reg.get(rid).status == "rejected"


def _worker(db, k, n, q, go):
    reg = Registry(db)
    go.wait(60)  # both processes start writing at the same moment
    ids = []
    for i in range(n):
        rid = reg.register_begin("G", f"cal{k}", 60977.0 + (k * n + i) * 1e-3, f"/t/{k}_{i}")
        reg.mark_valid(rid, {"worker": k, "i": i})
        ids.append(rid)
    q.put(ids)


def test_two_processes_register_at_once(tmp_path):
    db = tmp_path / "reg.sqlite3"
    Registry(db)
    ctx = mp.get_context("spawn")
    q, go = ctx.Queue(), ctx.Event()
    n = 100
    procs = [ctx.Process(target=_worker, args=(str(db), k, n, q, go)) for k in range(2)]
    for p in procs:
        p.start()
    go.set()
    ids = [q.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    flat = ids[0] + ids[1]
    assert len(set(flat)) == 2 * n  # every registration got its own id
    rows = Registry(db).list(status="valid")
    assert len(rows) == 2 * n
    assert {(r.metrics["worker"], r.metrics["i"]) for r in rows} == {(k, i) for k in range(2) for i in range(n)}
    assert {r.path for r in rows} == {f"/t/{k}_{i}" for k in range(2) for i in range(n)}
