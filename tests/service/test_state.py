"""What a task is given and what it returns.

The worker's choice of calibration tables among those the service sent agrees with the registry's
own lookup.
"""
from __future__ import annotations

import random

import pytest

from dsacont.calibration.registry import Registry
from dsacont.service.state import records_from_entries, select_tables


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
