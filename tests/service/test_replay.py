"""dsacont replay: archived subband files fed into an incoming directory in time order.

Each is written as ``_incomplete`` and renamed, paced by the data clock; real simulated files.
"""
from __future__ import annotations

import filecmp
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from streamtools import CADENCE_S, make_archive, sim_group_files

from dsacont.io.groups import parse_subband_name
from dsacont.service.replay import INCOMPLETE_SUFFIX, plan, replay


@pytest.fixture(scope="module")
def sim_files(request):
    return sim_group_files(request)


@pytest.fixture()
def archive(sim_files, tmp_path):
    stamps = make_archive(sim_files, tmp_path / "archive", range(3))
    return tmp_path / "archive", stamps


class DirectoryObserver(threading.Thread):
    """Polls a directory as fast as it can.

    Records when each name first appeared and, for final names, the file's size at that moment.
    """

    def __init__(self, directory):
        super().__init__(daemon=True)
        self.directory = Path(directory)
        self.first_seen: dict[str, float] = {}
        self.size_at_first_sight: dict[str, int] = {}
        self.stop = threading.Event()

    def run(self):
        while not self.stop.is_set():
            try:
                names = os.listdir(self.directory)
            except FileNotFoundError:
                names = []
            now = time.monotonic()
            for n in names:
                if n not in self.first_seen:
                    self.first_seen[n] = now
                    if not n.endswith(INCOMPLETE_SUFFIX):
                        try:
                            self.size_at_first_sight[n] = os.path.getsize(self.directory / n)
                        except FileNotFoundError:
                            pass
            time.sleep(0.0005)


def test_plan_selects_whole_groups_in_time_order(archive):
    arch, stamps = archive
    files = plan(arch)
    assert len(files) == 48
    assert [t for t, _, _ in files] == sorted(t for t, _, _ in files)
    # a window on group timestamps selects whole groups, never part of one
    mid = plan(arch, start=stamps[1], end=stamps[1])
    assert len(mid) == 16 and {sb for _, sb, _ in mid} == set(range(16))
    assert plan(arch, start=stamps[1]) == [f for f in files if f in mid or f[0] > mid[-1][0]]


def test_replay_writes_incomplete_then_renames_in_time_order(archive, tmp_path):
    arch, stamps = archive
    incoming = tmp_path / "incoming"
    incoming.mkdir()
    obs = DirectoryObserver(incoming)
    obs.start()
    try:
        delivered = replay(arch, incoming)
    finally:
        obs.stop.set()
        obs.join()
    assert len(delivered) == 48
    final = sorted(os.listdir(incoming))
    assert not any(INCOMPLETE_SUFFIX in n for n in final)
    assert final == sorted(os.listdir(arch))
    for n in final:
        assert filecmp.cmp(incoming / n, arch / n, shallow=False)
    # whenever a final name was visible, the file was already complete
    for n, size in obs.size_at_first_sight.items():
        assert size == os.path.getsize(arch / n), f"{n} visible before it was complete"
    # the _incomplete names were used, and final names appeared in the order of their timestamps
    assert any(n.endswith(INCOMPLETE_SUFFIX) for n in obs.first_seen)
    order = sorted((t, n) for n, t in obs.first_seen.items() if not n.endswith(INCOMPLETE_SUFFIX))
    stamps_seen = [parse_subband_name(n).timestamp for _, n in order]
    assert stamps_seen == sorted(stamps_seen)


def test_replay_paces_by_the_data_clock_and_resumes(archive, tmp_path):
    arch, stamps = archive
    incoming = tmp_path / "incoming"
    speed = 2 * CADENCE_S / 1.5  # two cadences of data in ~1.5 s of wall time
    t0 = time.monotonic()
    delivered = replay(arch, incoming, speed=speed, mode="link")
    wall = time.monotonic() - t0
    span = plan(arch)[-1][0] - plan(arch)[0][0]
    assert len(delivered) == 48
    assert wall >= span / speed * 0.95  # the last file waited for its time
    assert all(os.path.samefile(incoming / Path(p).name, arch / Path(p).name) for p in delivered)  # hard links
    # a second run delivers nothing: replays can be resumed
    assert replay(arch, incoming) == []


def test_replay_cli_window(archive, tmp_path):
    arch, stamps = archive
    incoming = tmp_path / "incoming"
    r = subprocess.run([sys.executable, "-m", "dsacont.cli", "replay", str(arch), str(incoming), "--start", stamps[1],
                        "--end", stamps[2], "--mode", "symlink"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "delivered 32 files" in r.stdout
    names = sorted(os.listdir(incoming))
    assert len(names) == 32 and min(names).startswith(stamps[1])
    assert all(os.path.islink(incoming / n) for n in names)
