"""dsacont replay: archived subband files fed into an incoming directory in time order.

Each is written as ``_incomplete`` and renamed, paced by the data clock; real simulated files.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import filecmp
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from streamtools import CADENCE_S, make_archive

from dsacont.io.groups import parse_subband_name
from dsacont.service.replay import INCOMPLETE_SUFFIX, plan, replay


@pytest.fixture()
def archive(sim_files, tmp_path):
    stamps = make_archive(sim_files, tmp_path / "archive", range(3))
    return tmp_path / "archive", stamps


class InotifyLog:
    """The kernel's own record of what happens in a directory (Linux inotify).

    Unlike polling, no event is missed however loaded the machine is: the kernel queues them until
    :meth:`events` reads them. Records creations, closes after writing, and renames into the
    directory.
    """

    IN_CLOSE_WRITE, IN_MOVED_TO, IN_CREATE = 0x008, 0x080, 0x100

    def __init__(self, directory):
        self._libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK)
        if self.fd < 0 or self._libc.inotify_add_watch(
                self.fd, os.fsencode(str(directory)), self.IN_CLOSE_WRITE | self.IN_MOVED_TO | self.IN_CREATE) < 0:
            raise OSError(ctypes.get_errno(), "inotify")

    def events(self) -> list[tuple[int, str]]:
        """(mask, name) of every event so far, in order."""
        out, buf = [], b""
        while True:
            try:
                buf += os.read(self.fd, 1 << 16)
            except BlockingIOError:
                break
        i = 0
        while i < len(buf):
            _, mask, _, n = struct.unpack_from("iIII", buf, i)
            out.append((mask, buf[i + 16:i + 16 + n].rstrip(b"\0").decode()))
            i += 16 + n
        return out

    def close(self):
        os.close(self.fd)


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
    log = InotifyLog(incoming)
    try:
        delivered = replay(arch, incoming)
        events = log.events()
    finally:
        log.close()
    assert len(delivered) == 48
    final = sorted(os.listdir(incoming))
    assert not any(INCOMPLETE_SUFFIX in n for n in final)
    assert final == sorted(os.listdir(arch))
    for n in final:
        assert filecmp.cmp(incoming / n, arch / n, shallow=False)
    # a final name is never created or written: it appears only by the rename of an _incomplete
    # file that was written and closed before (so whenever it is visible, it is complete)
    created = [n for m, n in events if m & InotifyLog.IN_CREATE]
    assert created and all(n.endswith(INCOMPLETE_SUFFIX) for n in created)
    closed = set()
    moved = []
    for m, n in events:
        if m & InotifyLog.IN_CLOSE_WRITE:
            assert n.endswith(INCOMPLETE_SUFFIX), f"{n} written under its final name"
            closed.add(n)
        if m & InotifyLog.IN_MOVED_TO:
            assert n.removesuffix(".hdf5") + INCOMPLETE_SUFFIX in closed, f"{n} visible before it was complete"
            moved.append(n)
    assert sorted(moved) == final
    # and the final names appeared in the order of their timestamps
    stamps_seen = [parse_subband_name(n).timestamp for n in moved]
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
