from datetime import datetime, timedelta

import pytest

from dsacont.io.groups import find_groups, parse_subband_name


def _touch(d, ts, sb, suffix=""):
    p = d / f"{ts:%Y-%m-%dT%H:%M:%S}_sb{sb:02d}{suffix}.hdf5"
    p.write_bytes(b"")
    return p


def _write_group(d, t0, jitter, subbands=range(16)):
    return [_touch(d, t0 + timedelta(seconds=jitter[sb % len(jitter)]), sb) for sb in subbands]


def test_parse_names():
    n = parse_subband_name("/x/2025-10-29T13:52:51_sb07.hdf5")
    assert n.timestamp == datetime(2025, 10, 29, 13, 52, 51) and n.subband == 7
    for bad in ("2025-10-29T13:52:51_sb07_incomplete.hdf5", "2025-10-29T13:52:51_sb16.hdf5", "notes.txt",
                "2025-10-29T13:52:51_sb7.hdf5", "2025-13-29T13:52:51_sb07.hdf5"):
        assert parse_subband_name(bad) is None, bad


def test_clusters_jittered_groups_and_reports_incomplete(tmp_path):
    t0 = datetime(2025, 10, 29, 13, 52, 51)
    jitter = [0, 3, 7, 12, 1, 25, 4, 9, 2, 18, 6, 0, 5, 11, 8, 29]
    _write_group(tmp_path, t0, jitter)
    _write_group(tmp_path, t0 + timedelta(seconds=309.24), jitter[::-1])
    _write_group(tmp_path, t0 + timedelta(seconds=2 * 309.24), jitter, subbands=[s for s in range(16) if s != 5])
    _touch(tmp_path, t0 + timedelta(seconds=3 * 309.24), 3, suffix="_incomplete")  # being written: ignored
    (tmp_path / "README.txt").write_text("not data")
    groups = find_groups(tmp_path)
    assert [g.complete for g in groups] == [True, True, False]
    assert groups[2].missing == [5]
    assert groups[0].timestamp == "2025-10-29T13:52:51"
    for g in groups:  # subband order sb00..sb15, never two groups mixed
        for sb, p in enumerate(g.paths):
            if p is not None:
                assert p.endswith(f"_sb{sb:02d}.hdf5")
        stamps = {parse_subband_name(p).timestamp for p in g.present}
        assert max(stamps) - min(stamps) <= timedelta(seconds=30)


def test_tolerance_and_window(tmp_path):
    t0 = datetime(2025, 10, 29, 13, 0, 0)
    jitter = [0] * 15 + [40]  # one node 40 s late
    _write_group(tmp_path, t0, jitter)
    g30 = find_groups(tmp_path)
    assert len(g30) == 2 and not g30[0].complete and g30[0].missing == [15]
    g60 = find_groups(tmp_path, tolerance_s=60)
    assert len(g60) == 1 and g60[0].complete
    _write_group(tmp_path, t0 + timedelta(minutes=10), [0])
    inside = find_groups(tmp_path, tolerance_s=60, start="2025-10-29T13:05:00", end="2025-10-29T14:00:00")
    assert [g.timestamp for g in inside] == ["2025-10-29T13:10:00"]


def test_duplicate_subband_is_reported_not_used(tmp_path):
    t0 = datetime(2025, 10, 29, 13, 0, 0)
    _write_group(tmp_path, t0, [0])
    dup = _touch(tmp_path, t0 + timedelta(seconds=5), 4)
    (g,) = find_groups(tmp_path)
    assert g.complete and g.duplicates == [str(dup)]
    assert g.paths[4].endswith("13:00:00_sb04.hdf5")


def test_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a directory"):
        find_groups(tmp_path / "nope")


def test_groups_command(tmp_path, capsys):
    """``dsacont groups DIR`` (the command, through dsacont.cli): one line per group, then the count;
    ``--json`` gives the same groups as find_groups."""
    import json

    from dsacont.cli import main

    t0 = datetime(2025, 10, 29, 13, 52, 51)
    _write_group(tmp_path, t0, [0, 2, 5])
    _write_group(tmp_path, t0 + timedelta(seconds=309.24), [1], subbands=[s for s in range(16) if s not in (2, 9)])
    assert main(["groups", str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "2025-10-29T13:52:51  16/16  complete"
    assert out[1].endswith("14/16  incomplete (missing sb02,sb09)")
    assert out[-1] == "1 complete, 1 incomplete groups"
    assert main(["groups", str(tmp_path), "--json", "--start", "2025-10-29T13:55:00"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["timestamp"] for r in rows] == [g.timestamp for g in find_groups(tmp_path, start="2025-10-29T13:55:00")]
    assert len(rows) == 1 and rows[0]["missing"] == [2, 9]
