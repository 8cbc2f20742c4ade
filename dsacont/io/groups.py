"""Group discovery: which 16 subband files belong to one 5-minute observation.

Each of the 16 correlator nodes names its file with its own clock, so the files of one
observation carry timestamps that differ by seconds to tens of seconds::

    2025-10-29T13:52:51_sb00.hdf5  2025-10-29T13:52:58_sb01.hdf5  ...  2025-10-29T13:53:04_sb15.hdf5

Files are clustered by timestamp: sorted in time, a group is anchored on its earliest file, and
a file joins it when it is within ``tolerance_s`` of that anchor (default 30 s; observations
are ~309 s apart). Anchoring (rather than chaining neighbours) guarantees two observations are
never merged. A second file for a subband already in the group is recorded in
``Group.duplicates`` and never silently replaces the first.

Ignored: ``*_incomplete.hdf5`` (still being written) and any name that is not a subband file.
"""
from __future__ import annotations

import argparse
import json
import os
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import NamedTuple

N_SUBBANDS = 16
DEFAULT_TOLERANCE_S = 30.0
_NAME = re.compile(r"^(?P<ts>\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2})_sb(?P<sb>\d{2})\.hdf5$")


class SubbandName(NamedTuple):
    """What a subband file's name says: ``timestamp`` (naive UTC datetime), ``subband`` (0-15)."""

    timestamp: datetime
    subband: int


def parse_subband_name(path) -> SubbandName | None:
    """Parse ``YYYY-MM-DDTHH:MM:SS_sbNN.hdf5``; None for anything else (incl. ``_incomplete``)."""
    m = _NAME.match(os.path.basename(str(path)))
    if not m:
        return None
    sb = int(m["sb"])
    if sb >= N_SUBBANDS:
        return None
    try:
        ts = datetime.strptime(m["ts"], "%Y-%m-%dT%H:%M:%S")
    except ValueError:
        return None
    return SubbandName(ts, sb)


@dataclass
class Group:
    """One observation's subband files.

    Attributes
    ----------
    timestamp : str
        The group's name: the earliest file timestamp, ``YYYY-MM-DDTHH:MM:SS`` (UTC).
    paths : list[str | None]
        16 entries in subband order sb00..sb15 (sb00 = highest frequency); None where missing.
    duplicates : list[str]
        Extra files for a subband that already has one (never used; reported).
    """

    timestamp: str
    paths: list = field(default_factory=lambda: [None] * N_SUBBANDS)
    duplicates: list = field(default_factory=list)

    @property
    def complete(self) -> bool:
        return all(p is not None for p in self.paths)

    @property
    def missing(self) -> list[int]:
        """Subband indices with no file."""
        return [i for i, p in enumerate(self.paths) if p is None]

    @property
    def present(self) -> list[str]:
        return [p for p in self.paths if p is not None]

    @property
    def datetime(self) -> datetime:
        return datetime.strptime(self.timestamp, "%Y-%m-%dT%H:%M:%S")

    @property
    def time(self):
        """The group timestamp as an astropy Time (UTC)."""
        from astropy.time import Time

        return Time(self.timestamp, scale="utc")

    def __repr__(self) -> str:
        state = "complete" if self.complete else f"missing sb{self.missing}"
        return f"Group({self.timestamp}, {len(self.present)}/16 {state})"

    def as_dict(self) -> dict:
        return {
            "timestamp": self.timestamp,
            "complete": self.complete,
            "missing": self.missing,
            "paths": self.paths,
            "duplicates": self.duplicates,
        }


def _as_datetime(t) -> datetime | None:
    if t is None:
        return None
    if isinstance(t, datetime):
        return t.astimezone(timezone.utc).replace(tzinfo=None) if t.tzinfo else t
    if hasattr(t, "to_datetime"):  # astropy Time
        return t.utc.to_datetime()
    return datetime.fromisoformat(str(t).replace("Z", ""))


def cluster_files(files, tolerance_s: float = DEFAULT_TOLERANCE_S) -> list[Group]:
    """Cluster subband file paths into groups (see module docstring). Non-subband names are skipped."""
    parsed = []
    for f in files:
        name = parse_subband_name(f)
        if name is not None:
            parsed.append((name.timestamp, name.subband, str(f)))
    parsed.sort()
    groups: list[Group] = []
    anchor = None
    tol = timedelta(seconds=tolerance_s)
    for ts, sb, path in parsed:
        if anchor is None or ts - anchor > tol:
            anchor = ts
            groups.append(Group(timestamp=ts.strftime("%Y-%m-%dT%H:%M:%S")))
        g = groups[-1]
        if g.paths[sb] is None:
            g.paths[sb] = path
        else:
            g.duplicates.append(path)
    return groups


def find_groups(directory, *, start=None, end=None, tolerance_s: float = DEFAULT_TOLERANCE_S) -> list[Group]:
    """Find subband groups in ``directory`` (not recursive), oldest first.

    Parameters
    ----------
    directory : path
    start, end : str, datetime or astropy Time, optional
        Keep groups whose timestamp is within ``[start, end]`` (UTC).
    tolerance_s : float
        Clustering tolerance in seconds (operators used 30 s, later 60 s).

    Returns
    -------
    list[Group]
        Complete and incomplete groups; check ``.complete`` / ``.missing``.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise FileNotFoundError(f"{directory}: not a directory")
    files = [e.path for e in os.scandir(directory) if e.is_file()]
    groups = cluster_files(files, tolerance_s)
    lo, hi = _as_datetime(start), _as_datetime(end)
    return [g for g in groups if (lo is None or g.datetime >= lo) and (hi is None or g.datetime <= hi)]


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="dsacont groups", description=__doc__.split("\n")[0])
    ap.add_argument("directory", nargs="?", help="directory of subband files (default: CONTIMG incoming)")
    ap.add_argument("--start", help="UTC, e.g. 2025-10-29T13:25:00")
    ap.add_argument("--end", help="UTC")
    ap.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE_S, help="seconds (default 30)")
    ap.add_argument("--json", action="store_true", help="print JSON")
    args = ap.parse_args(argv)
    directory = args.directory
    if directory is None:
        from dsacont.config import get_paths

        directory = get_paths().incoming
    groups = find_groups(directory, start=args.start, end=args.end, tolerance_s=args.tolerance)
    if args.json:
        print(json.dumps([g.as_dict() for g in groups], indent=1))
        return 0
    for g in groups:
        extra = f"  duplicates: {len(g.duplicates)}" if g.duplicates else ""
        state = "complete" if g.complete else f"incomplete (missing {','.join(f'sb{i:02d}' for i in g.missing)})"
        print(f"{g.timestamp}  {len(g.present):2d}/16  {state}{extra}")
    print(f"{sum(g.complete for g in groups)} complete, {sum(not g.complete for g in groups)} incomplete groups")
    return 0
