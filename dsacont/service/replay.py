"""Replay archived subband files into an incoming directory, in time order, as the correlator would.

Each file is first written as ``<name>_incomplete.hdf5`` (copied, flushed to disk) and then
renamed to its final ``YYYY-MM-DDTHH:MM:SS_sbNN.hdf5`` name, so a watcher never sees a partial
file under a final name. Files go out in the order of the timestamps in their names (then by
subband), whole groups only: the window ``[start, end]`` selects groups by their timestamp
(the earliest file of the group, :func:`dsacont.io.groups.find_groups`), so no group is cut in two.

``speed`` paces the delivery against the data's own clock: a file stamped ``dt`` seconds after
the first one is delivered ``dt / speed`` wall seconds after the start (``speed=1`` is real
time, 60 is one hour of data per minute); ``None`` or 0 delivers as fast as possible.

Example::

    dsacont replay /data/archive /data/incoming --start 2025-10-29T13:25 --end 2025-10-29T14:25 --speed 10

A file already present under its final name in ``incoming`` is not delivered again (a replay can
be resumed after an interruption).
"""
from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from datetime import timezone
from pathlib import Path

from tqdm import tqdm

from dsacont.io.groups import find_groups, parse_subband_name

log = logging.getLogger(__name__)

INCOMPLETE_SUFFIX = "_incomplete.hdf5"


def incomplete_name(final_name: str) -> str:
    """``2025-10-29T13:52:51_sb03.hdf5`` -> ``2025-10-29T13:52:51_sb03_incomplete.hdf5``."""
    stem = final_name[: -len(".hdf5")] if final_name.endswith(".hdf5") else final_name
    return stem + INCOMPLETE_SUFFIX


def plan(archive, start=None, end=None, *, tolerance_s: float = 30.0) -> list[tuple[float, int, str]]:
    """List the files a replay delivers, in delivery order: ``[(t_unix, subband, path), ...]``.

    Whole groups whose timestamp lies in ``[start, end]`` (ISO string, datetime or astropy
    Time, UTC); duplicates of a subband inside a group are delivered too (as the correlator
    would have written them).
    """
    out = []
    for g in find_groups(archive, start=start, end=end, tolerance_s=tolerance_s):
        for p in list(g.present) + list(g.duplicates):
            name = parse_subband_name(p)
            out.append((name.timestamp.replace(tzinfo=timezone.utc).timestamp(), name.subband, str(p)))
    out.sort()
    return out


def _deliver(src: str, incoming: Path, mode: str, fsync: bool) -> str:
    final = incoming / os.path.basename(src)
    tmp = incoming / incomplete_name(final.name)
    if mode == "copy":
        shutil.copyfile(src, tmp)
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
    elif mode == "link":
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        os.link(src, tmp)
    elif mode == "symlink":
        if tmp.exists() or tmp.is_symlink():
            tmp.unlink()
        os.symlink(os.path.abspath(src), tmp)
    else:
        raise ValueError(f"mode must be copy, link or symlink, not {mode!r}")
    os.rename(tmp, final)
    return str(final)


def replay(archive, incoming, start=None, end=None, speed: float | None = None, *, mode: str = "copy",
           tolerance_s: float = 30.0, fsync: bool = True, progress: bool = False,
           stop_event: threading.Event | None = None) -> list[str]:
    """Feed archived subband files into ``incoming`` in time order (see the module docstring).

    Parameters
    ----------
    archive : path
        Directory holding the archived ``*_sbNN.hdf5`` files (not recursive).
    incoming : path
        Directory the streaming service watches (created if missing).
    start, end : str, datetime or astropy Time, optional
        UTC window on group timestamps (inclusive).
    speed : float, optional
        Data seconds per wall second; None/0 = as fast as possible.
    mode : {'copy', 'link', 'symlink'}
        ``copy`` (default) writes real files; ``link`` hard-links (same filesystem, no extra
        space); ``symlink`` links to the archive.
    tolerance_s : float
        Grouping tolerance for selecting whole groups.
    fsync : bool
        Flush each copied file to disk before its rename (as a correlator should).
    progress : bool
        Show a progress bar (tqdm).
    stop_event : threading.Event, optional
        Set it to stop the replay early (between files).

    Returns
    -------
    list[str]
        The final paths delivered, in order (files already present are skipped and not listed).
    """
    incoming = Path(incoming)
    incoming.mkdir(parents=True, exist_ok=True)
    files = plan(archive, start, end, tolerance_s=tolerance_s)
    if not files:
        log.warning("replay: no subband groups in %s between %s and %s", archive, start, end)
        return []
    log.info("replay: %d files (%s .. %s) from %s to %s, speed %s, %s", len(files),
             time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(files[0][0])),
             time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(files[-1][0])), archive, incoming,
             f"x{speed:g}" if speed else "as fast as possible", mode)
    bar = None
    if progress:
        bar = tqdm(total=len(files), unit="file", desc="replay")
    delivered = []
    t_data0, t_wall0 = files[0][0], time.monotonic()
    try:
        for t, _sb, src in files:
            if stop_event is not None and stop_event.is_set():
                log.info("replay stopped after %d files", len(delivered))
                break
            if speed:
                delay = t_wall0 + (t - t_data0) / speed - time.monotonic()
                if delay > 0:
                    if stop_event is not None:
                        if stop_event.wait(delay):
                            log.info("replay stopped after %d files", len(delivered))
                            break
                    else:
                        time.sleep(delay)
            if (incoming / os.path.basename(src)).exists():
                log.info("replay: %s already in %s, skipped", os.path.basename(src), incoming)
            else:
                delivered.append(_deliver(src, incoming, mode, fsync))
                log.debug("replay: delivered %s", delivered[-1])
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    log.info("replay: delivered %d files in %.1f s", len(delivered), time.monotonic() - t_wall0)
    return delivered
