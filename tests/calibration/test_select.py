"""Which tables calibrate a group: the strip rule, transfer and borrowing, field corrections.

The rule is one function (:func:`dsacont.calibration.select.choose_tables`) used by the registry
(``Registry.choose``) and by the worker over the records its task carries.
"""
from __future__ import annotations

import random
import sqlite3

import pytest

from dsacont.calibration.registry import Registry
from dsacont.calibration.select import choose_tables
from dsacont.service.state import records_from_entries

T0 = 60977.58  # 2025-10-29 ~13:55 UTC
DEC = 55.57


def _pair(reg, solve, dec, name="0834+555"):
    b = reg.register_begin("B", name, solve, f"/t/{solve:.4f}_{dec}.B", dec_deg=dec)
    g = reg.register_begin("G", name, solve, f"/t/{solve:.4f}_{dec}.G", depends_on=b, dec_deg=dec)
    reg.mark_valid(b)
    reg.mark_valid(g)
    return b, g


def test_a_table_of_another_strip_is_never_applied(tmp_path):
    """Random registries of two strips (55.6 and 45.0 deg, with scatter): every choice for a
    group at 55.57 deg holds only tables within the tolerance, and B and G always belong together,
    even when the other strip's table is nearer in time."""
    rng = random.Random(3)
    for trial in range(20):
        reg = Registry(tmp_path / f"r{trial}.sqlite3")
        for _ in range(12):
            _pair(reg, T0 + rng.uniform(-3, 3), rng.choice([55.6, 55.2, 45.0, 57.0, 56.4]))
        recs = reg.list()
        for _ in range(30):
            t = T0 + rng.uniform(-3, 3)
            c = choose_tables(recs, t, DEC, dec_tolerance_deg=1.0)
            if c is None:
                assert not any(abs(r.dec_deg - DEC) <= 1.0 and abs(r.solve_mjd - t) <= 30 for r in recs)
                continue
            assert all(abs(r.dec_deg - DEC) <= 1.0 for r in c.tables)
            assert c.tables[1].depends_on == c.tables[0].id
            assert reg.choose(t, DEC).paths == c.paths


def test_nearer_bandpass_of_another_strip_loses_to_a_borrowed_one(tmp_path):
    reg = Registry(tmp_path / "r.sqlite3")
    old_b, old_g = _pair(reg, T0 - 5.0, 55.6)          # five days ago, this strip
    _pair(reg, T0 - 0.01, 45.0)                          # 15 minutes ago, another strip
    c = reg.choose(T0, DEC)
    assert [r.id for r in c.tables] == [old_b, old_g]
    assert c.how == ["borrowed", "borrowed"]
    assert c.describe()[0]["how"] == "borrowed" and c.describe()[0]["age_h"] == pytest.approx(120.0)
    assert reg.choose(T0 + 31.0, DEC) is None           # beyond the borrowing window: wait
    assert reg.choose(T0, DEC, borrow_days=3.0) is None


def test_transit_transferred_borrowed(tmp_path):
    reg = Registry(tmp_path / "r.sqlite3")
    _pair(reg, T0, DEC)
    assert reg.choose(T0 + 0.5 / 24, DEC).how == ["transit", "transit"]
    assert reg.choose(T0 + 6 / 24, DEC).how == ["transit", "transferred"]
    assert reg.choose(T0 - 2 / 24, DEC).how == ["transit", "transferred"]  # before the transit too
    assert reg.choose(T0 + 30 / 24, DEC).how == ["borrowed", "borrowed"]
    assert reg.choose(T0 + 6 / 24, DEC, transfer_h=3.0).how == ["transit", "borrowed"]


def test_field_correction_follows_its_own_pair(tmp_path):
    reg = Registry(tmp_path / "r.sqlite3")
    _b1, g1 = _pair(reg, T0, DEC)
    b2, g2 = _pair(reg, T0 + 3 / 24, DEC, name="0957+553")
    t = T0 + 1 / 24
    f1 = reg.register_begin("G", None, t, "/t/f1.G", depends_on=g1, dec_deg=DEC, origin="field",
                            valid_before_h=0.05, valid_after_h=0.05)
    reg.mark_valid(f1)
    c = reg.choose(t, DEC)
    assert [r.path for r in c.tables][-1] == "/t/f1.G" and c.how[-1] == "field"
    assert reg.choose(t, DEC, field_gains=False).paths == c.paths[:2]
    assert reg.choose(t + 0.2 / 24, DEC).how == ["transit", "transferred"]  # outside its window
    # a correction solved on top of the other pair is not applied on top of this one
    f2 = reg.register_begin("G", None, T0 + 2.9 / 24, "/t/f2.G", depends_on=g1, dec_deg=DEC, origin="field",
                            valid_before_h=0.05, valid_after_h=0.05)
    reg.mark_valid(f2)
    c = reg.choose(T0 + 2.9 / 24, DEC)
    assert [r.id for r in c.tables] == [b2, g2]
    assert reg.lookup("G", t).id == g1  # the registry's single-kind lookup never returns a correction


def test_just_solved_tables_win_and_pair():
    entries = [{"key": "B", "kind": "B", "solve_mjd": T0, "path": "/c/x.B", "status": "valid", "depends_on": None,
                "dec_deg": DEC},
               {"key": "G", "kind": "G", "solve_mjd": T0, "path": "/c/x.G", "status": "valid", "depends_on": "B",
                "dec_deg": DEC}]
    new = records_from_entries(entries)
    assert new[1].depends_on == new[0].id and new[0].valid_end - new[0].valid_start == pytest.approx(2.0)
    c = choose_tables(new, T0 + 0.01, DEC)
    assert c.paths == ["/c/x.B", "/c/x.G"]
    assert [d["key"] for d in c.describe()] == ["B", "G"] and c.describe()[0]["registry_id"] is None
    rejected = records_from_entries([dict(e, status="rejected") for e in entries])
    assert choose_tables(rejected, T0 + 0.01, DEC) is None
    assert choose_tables(new, T0 + 0.01, 45.0) is None


def test_an_older_registry_file_gains_the_new_columns(tmp_path):
    path = tmp_path / "old.sqlite3"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE caltables (id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, calibrator TEXT, "
                "solve_mjd REAL NOT NULL, valid_start REAL NOT NULL, valid_end REAL NOT NULL, status TEXT NOT NULL, "
                "metrics TEXT, source_ms TEXT, path TEXT NOT NULL, depends_on INTEGER, reason TEXT, "
                "created REAL NOT NULL, updated REAL NOT NULL)")
    con.execute("INSERT INTO caltables (kind, calibrator, solve_mjd, valid_start, valid_end, status, path, created, "
                "updated) VALUES ('B', '0834+555', ?, ?, ?, 'valid', '/old.B', 0, 0)", (T0, T0 - 1, T0 + 1))
    con.commit()
    con.close()
    reg = Registry(path)
    (old,) = reg.list()
    assert old.dec_deg is None and old.origin is None
    # a table of unknown declination is never applied to a group whose declination is known
    g = reg.register_begin("G", "0834+555", T0, "/old.G", depends_on=old.id)
    reg.mark_valid(g)
    assert reg.choose(T0, None).paths == ["/old.B", "/old.G"]
    assert reg.choose(T0, DEC) is None
