"""The ingest queue: which subband files arrived, which groups they form, and who processes them.

One SQLite file (``Paths.queue_db``) opened through :mod:`dsacont.db` (WAL, busy timeout,
``BEGIN IMMEDIATE`` for every read-modify-write), so several service processes, ``dsacont
status`` and notebooks can use it at once.

Group life cycle::

    collecting --(16 subbands, or timeout with >= min_subbands)--> pending
    collecting --(timeout with too few subbands)-----------------> failed      ('incomplete ...')
    failed (incomplete, never claimed) --(a late subband)--------> collecting  (re-opened)
    completed/failed/quarantined --(rebuild: dsacont reprocess)--> pending     (products made again)
    pending ----(claim: atomic, highest priority, oldest first)--> in_progress (inner neighbour done first)
    in_progress --(processor returned)----------------------------> completed
    in_progress --(error, attempts left)--------------------------> pending     (not_before = backoff)
    in_progress --(error, no attempts left)-----------------------> failed
    in_progress --(BadInputError from the processor)--------------> quarantined
    in_progress --(CalibrationUnavailable)------------------------> pending     (waits, no attempt used, until
                                                                               the calibration registry
                                                                               changes or its deadline)
    in_progress --(processor handed over: result["requeue"])-----> pending     (claimable at once, no attempt
                                                                               used: e.g. a calibrator's tables
                                                                               recorded before its tile is imaged)
    in_progress --(worker pid dead / lease expired)---------------> pending     (reclaimed; counts as an attempt)

Files: each ``*_sbNN.hdf5`` seen is one row in ``files`` with ``status`` ``ok`` or
``quarantined`` (with the reason: not HDF5, truncated, wrong shape, NaNs, duplicate subband,
unreadable). Quarantined files are never given to the processor; they are left in place (nothing
is deleted or moved). A usable subband that arrives after its group was taken for processing is
``ok`` with a ``late: ...`` note (:meth:`IngestQueue.late_files`): the group's products lack it
until the group is processed again (:meth:`IngestQueue.rebuild`, ``dsacont reprocess``; the
next claim takes every usable file and clears the notes).

Arrival order: a group is never finalised while a file of it is in the incoming directory but
not yet recorded (the watcher passes those to :meth:`IngestQueue.finalize_groups`, and writes
them to the ``unrecorded`` table for ``dsacont status``).

Safety:

* **Atomic claim**: ``UPDATE groups SET state='in_progress' ... WHERE id = (SELECT ... pending
  ORDER BY ... LIMIT 1) RETURNING ...`` inside ``BEGIN IMMEDIATE``: two processes never
  claim the same group (the order: :meth:`IngestQueue.claim`).
* **Leases and fencing**: a claim records the worker (host, pid, process start time), a lease
  (``lease_until``) renewed by heartbeats, and a fresh ``claim_token``. A group whose worker
  process is dead (same host) or whose lease expired is reclaimed to ``pending``. Completion and
  failure are accepted only with the current token, so a stale worker (reclaimed while it was
  still running) can never mark a group done or failed twice.
* **Events**: every transition is appended to ``events`` (an audit log: who claimed what, when,
  and how it ended), so "nothing processed twice" can be checked.

Times are Unix seconds (float, UTC) in the database; group timestamps are the ISO names of the
groups, ``YYYY-MM-DDTHH:MM:SS`` (the earliest file timestamp, as :mod:`dsacont.io.groups`).
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import sqlite3
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timezone

from astropy.time import Time

from dsacont import db

log = logging.getLogger(__name__)

N_SUBBANDS = 16
STATES = ("collecting", "pending", "in_progress", "completed", "failed", "quarantined")
TERMINAL = ("completed", "failed", "quarantined")
#: a pending group whose inner neighbour (within this many seconds, of a higher priority) is still
#: pending or in progress is claimed after the others (:meth:`IngestQueue.claim`): more than one
#: group's cadence (~309 s), less than two
INNER_NEIGHBOUR_S = 450.0

MIGRATIONS = [
    """
    CREATE TABLE groups (
        id            INTEGER PRIMARY KEY,
        timestamp     TEXT NOT NULL,           -- ISO name of the group: earliest file timestamp
        t_unix        REAL NOT NULL,           -- same, Unix seconds (claim order)
        t_max_unix    REAL NOT NULL,           -- latest file timestamp in the group
        state         TEXT NOT NULL CHECK (state IN
                        ('collecting','pending','in_progress','completed','failed','quarantined')),
        n_ok          INTEGER NOT NULL DEFAULT 0,
        missing       TEXT NOT NULL DEFAULT '[]',  -- JSON list of subbands without a usable file
        attempts      INTEGER NOT NULL DEFAULT 0,  -- failed attempts (errors, dead workers)
        claims        INTEGER NOT NULL DEFAULT 0,  -- times claimed
        waits         INTEGER NOT NULL DEFAULT 0,  -- times deferred for calibration
        first_seen    REAL NOT NULL,
        last_file     REAL NOT NULL,
        queued        REAL,                    -- became pending
        started       REAL,                    -- last claim
        finished      REAL,
        not_before    REAL,                    -- pending but not claimable before this time
        wait_reason   TEXT,                    -- 'retry' | 'calibration' | 'disk_full'
        error         TEXT,
        worker        TEXT, host TEXT, pid INTEGER, pid_start TEXT,
        heartbeat     REAL, lease_until REAL,
        claim_token   TEXT,
        result        TEXT                     -- JSON returned by the processor
    );
    CREATE INDEX groups_state_t ON groups (state, t_unix);
    CREATE INDEX groups_t ON groups (t_unix);
    CREATE TABLE files (
        path      TEXT PRIMARY KEY,
        group_id  INTEGER NOT NULL REFERENCES groups (id),
        subband   INTEGER NOT NULL,
        t_unix    REAL NOT NULL,               -- timestamp in the file name
        status    TEXT NOT NULL CHECK (status IN ('ok', 'quarantined')),
        reason    TEXT,
        size      INTEGER, mtime REAL,
        shape     TEXT,                        -- JSON {nblts, nfreqs, npols, ntimes, nbls} (+ dec_deg, time_unix)
        added     REAL NOT NULL
    );
    CREATE UNIQUE INDEX files_one_ok_subband ON files (group_id, subband) WHERE status = 'ok';
    CREATE INDEX files_group ON files (group_id);
    CREATE TABLE events (
        id        INTEGER PRIMARY KEY,
        t         REAL NOT NULL,
        group_id  INTEGER,
        event     TEXT NOT NULL,
        worker    TEXT,
        detail    TEXT
    );
    CREATE INDEX events_group ON events (group_id);
    """,
    """
    ALTER TABLE groups ADD COLUMN reopened INTEGER NOT NULL DEFAULT 0;  -- times re-opened by a late file
    ALTER TABLE groups ADD COLUMN rebuild INTEGER NOT NULL DEFAULT 0;   -- queued to rebuild its products
    ALTER TABLE groups ADD COLUMN wait_token TEXT;  -- calibration state when it began to wait
    ALTER TABLE files ADD COLUMN behind REAL;  -- s its data time was behind the newest recorded before it
    CREATE INDEX files_added ON files (added);
    CREATE TABLE unrecorded (                  -- files a watcher sees but has not recorded yet
        path       TEXT PRIMARY KEY,
        t_unix     REAL NOT NULL,              -- timestamp in the file name
        subband    INTEGER NOT NULL,
        reason     TEXT NOT NULL,              -- 'unsettled' | 'validation budget'
        first_seen REAL NOT NULL,
        watcher    TEXT NOT NULL, host TEXT, pid INTEGER, pid_start TEXT
    );
    """,
    """
    ALTER TABLE groups ADD COLUMN priority INTEGER;  -- claimed highest first; NULL: not assessed yet (as 0)
    """,
]


# --------------------------------------------------------------------------------------- helpers
def iso_from_unix(t: float) -> str:
    """Unix seconds -> ``YYYY-MM-DDTHH:MM:SS`` (UTC)."""
    return datetime.fromtimestamp(t, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")


def unix_from_datetime(dt: datetime) -> float:
    """Naive-UTC (or aware) datetime -> Unix seconds."""
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.timestamp()


def process_start_ticks(pid: int) -> str | None:
    """Return the start time of process ``pid`` (Linux ``/proc/<pid>/stat`` field 22), None if unknown.

    Stored with a claim so a recycled pid is not mistaken for the claiming worker.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except OSError:
        return None
    rest = stat[stat.rfind(")") + 2:].split()
    return rest[19] if len(rest) > 19 else None


def pid_alive(pid: int, start_ticks: str | None = None) -> bool:
    """Whether process ``pid`` (on this host) still runs; zombies count as dead.

    With ``start_ticks`` (from :func:`process_start_ticks` at claim time), a different process
    that reuses the pid is reported dead too.
    """
    if pid is None or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            stat = f.read()
    except FileNotFoundError:
        return False
    except OSError:
        return True
    rest = stat[stat.rfind(")") + 2:].split()
    if rest and rest[0] in ("Z", "X"):
        return False
    if start_ticks is not None and len(rest) > 19 and rest[19] != start_ticks:
        return False
    return True


@dataclass(frozen=True)
class WorkerId:
    """Who holds a claim: ``name`` is ``host:pid:random`` (unique per service process)."""

    host: str
    pid: int
    pid_start: str | None
    name: str

    @classmethod
    def this_process(cls, label: str = "") -> "WorkerId":
        host, pid = socket.gethostname(), os.getpid()
        tag = uuid.uuid4().hex[:6]
        name = f"{label + '@' if label else ''}{host}:{pid}:{tag}"
        return cls(host, pid, process_start_ticks(pid), name)


@dataclass
class GroupRecord:
    """One group as the queue knows it; this is what a processor receives.

    Attributes
    ----------
    id : int
        Queue row id.
    timestamp : str
        Group name, ``YYYY-MM-DDTHH:MM:SS`` UTC (earliest file timestamp).
    paths : list[str | None]
        16 entries sb00..sb15 (sb00 = highest frequency); None where no usable file
        (missing or quarantined).
    missing : list[int]
        Subbands without a usable file (processed anyway by the incomplete-group policy).
    state, attempts, claims, waits, error, claim_token, ... : as in the ``groups`` table.
    """

    id: int
    timestamp: str
    t_unix: float
    state: str
    paths: list = field(default_factory=lambda: [None] * N_SUBBANDS)
    missing: list = field(default_factory=list)
    attempts: int = 0
    claims: int = 0
    waits: int = 0
    first_seen: float | None = None
    last_file: float | None = None
    queued: float | None = None
    started: float | None = None
    finished: float | None = None
    not_before: float | None = None
    wait_reason: str | None = None
    error: str | None = None
    worker: str | None = None
    claim_token: str | None = None
    result: dict | None = None
    reopened: int = 0
    rebuild: bool = False
    wait_token: str | None = None
    priority: int | None = None

    @property
    def complete(self) -> bool:
        return not self.missing

    @property
    def present(self) -> list[str]:
        return [p for p in self.paths if p is not None]

    @property
    def time(self):
        """The group timestamp as an astropy Time (UTC)."""
        return Time(self.timestamp, scale="utc")

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass
class AddResult:
    """What :meth:`IngestQueue.add_file` did with one file."""

    path: str
    group_id: int | None
    group_timestamp: str | None
    status: str  # 'ok' | 'quarantined' | 'known'
    reason: str | None = None


# ----------------------------------------------------------------------------------------- queue
class IngestQueue:
    """The ingest queue in one SQLite file.

    Parameters
    ----------
    db_path : path
        ``Paths.queue_db``; created with its schema on first use.
    tolerance_s : float
        Clustering tolerance (s): a file joins a group if the group then still spans at most
        ``tolerance_s`` (the anchored rule of :func:`dsacont.io.groups.cluster_files`).
    lease_s : float
        A claim's lease; the holder must :meth:`heartbeat` within it or lose the group.
    max_attempts : int
        Failed attempts (errors, dead workers) before a group is ``failed`` for good.
    retry_backoff_s : float
        Delay before retrying a failed attempt (doubles each attempt).
    """

    def __init__(self, db_path, *, tolerance_s: float = 30.0, lease_s: float = 120.0,
                 max_attempts: int = 3, retry_backoff_s: float = 10.0, readonly: bool = False):
        self.db_path = db_path
        self.tolerance_s = float(tolerance_s)
        self.lease_s = float(lease_s)
        self.max_attempts = int(max_attempts)
        self.retry_backoff_s = float(retry_backoff_s)
        self.hung_after_s = 10 * self.lease_s
        self.conn = db.connect(db_path, readonly=readonly)
        if not readonly:
            db.migrate(self.conn, MIGRATIONS, name=str(db_path))

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- reading -----------------------------------------------------------------------------
    def _record(self, row: sqlite3.Row) -> GroupRecord:
        paths = [None] * N_SUBBANDS
        for f in self.conn.execute(
            "SELECT path, subband FROM files WHERE group_id = ? AND status = 'ok'", (row["id"],)
        ):
            paths[f["subband"]] = f["path"]
        return GroupRecord(
            id=row["id"], timestamp=row["timestamp"], t_unix=row["t_unix"], state=row["state"],
            paths=paths, missing=[i for i, p in enumerate(paths) if p is None],
            attempts=row["attempts"], claims=row["claims"], waits=row["waits"],
            first_seen=row["first_seen"], last_file=row["last_file"], queued=row["queued"],
            started=row["started"], finished=row["finished"], not_before=row["not_before"],
            wait_reason=row["wait_reason"], error=row["error"], worker=row["worker"],
            claim_token=row["claim_token"], result=json.loads(row["result"]) if row["result"] else None,
            **{k: row[k] for k in ("reopened", "wait_token", "priority") if k in row.keys()},
            rebuild=bool(row["rebuild"]) if "rebuild" in row.keys() else False,
        )

    def get(self, group) -> GroupRecord | None:
        """Return a group by id or timestamp."""
        if isinstance(group, str):
            row = self.conn.execute("SELECT * FROM groups WHERE timestamp = ?", (group,)).fetchone()
        else:
            row = self.conn.execute("SELECT * FROM groups WHERE id = ?", (int(group),)).fetchone()
        return None if row is None else self._record(row)

    def groups(self, state: str | None = None) -> list[GroupRecord]:
        """All groups (or those in ``state``), oldest first."""
        if state is None:
            rows = self.conn.execute("SELECT * FROM groups ORDER BY t_unix").fetchall()
        else:
            rows = self.conn.execute("SELECT * FROM groups WHERE state = ? ORDER BY t_unix", (state,)).fetchall()
        return [self._record(r) for r in rows]

    def counts(self) -> dict[str, int]:
        """Count the groups per state (every state present, zeros included)."""
        out = dict.fromkeys(STATES, 0)
        for r in self.conn.execute("SELECT state, COUNT(*) FROM groups GROUP BY state"):
            out[r[0]] = r[1]
        return out

    def known_paths(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT path FROM files")}

    def files(self, status: str | None = None, group=None) -> list[dict]:
        sql, args = "SELECT f.*, g.timestamp AS group_timestamp FROM files f JOIN groups g ON g.id = f.group_id", []
        where = []
        if status:
            where.append("f.status = ?")
            args.append(status)
        if group is not None:
            where.append("f.group_id = ?")
            args.append(group.id if isinstance(group, GroupRecord) else int(group))
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [dict(r) for r in self.conn.execute(sql + " ORDER BY f.t_unix, f.subband", args)]

    def events(self, group=None, event: str | None = None) -> list[dict]:
        sql, args, where = "SELECT * FROM events", [], []
        if group is not None:
            where.append("group_id = ?")
            args.append(group.id if isinstance(group, GroupRecord) else int(group))
        if event is not None:
            where.append("event = ?")
            args.append(event)
        if where:
            sql += " WHERE " + " AND ".join(where)
        return [dict(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def recent_failures(self, limit: int = 10) -> list[dict]:
        """Most recent failed/quarantined groups and quarantined files, newest first."""
        rows = [
            {"kind": "group", "name": r["timestamp"], "state": r["state"], "t": r["finished"] or r["last_file"],
             "reason": r["error"]}
            for r in self.conn.execute(
                "SELECT * FROM groups WHERE state IN ('failed','quarantined') ORDER BY finished DESC LIMIT ?",
                (limit,))
        ]
        rows += [
            {"kind": "file", "name": r["path"], "state": "quarantined", "t": r["added"], "reason": r["reason"]}
            for r in self.conn.execute(
                "SELECT * FROM files WHERE status = 'quarantined' ORDER BY added DESC LIMIT ?", (limit,))
        ]
        rows.sort(key=lambda d: d["t"] or 0, reverse=True)
        return rows[:limit]

    # -- writing helpers ---------------------------------------------------------------------
    def _event(self, group_id, event: str, worker: str | None = None, detail=None, t: float | None = None):
        if detail is not None and not isinstance(detail, str):
            detail = json.dumps(detail, default=str)
        self.conn.execute(
            "INSERT INTO events (t, group_id, event, worker, detail) VALUES (?, ?, ?, ?, ?)",
            (time.time() if t is None else t, group_id, event, worker, detail),
        )

    # -- files -------------------------------------------------------------------------------
    def add_file(self, path: str, t_unix: float, subband: int, *, shape: dict | None = None,
                 reason: str | None = None, size: int | None = None, mtime: float | None = None,
                 now: float | None = None) -> AddResult:
        """Record one arrived subband file and attach it to its group (creating the group).

        ``reason`` not None quarantines the file (validation failed). Otherwise the file is
        ``ok`` unless its subband is already present in the group (duplicate: the first file
        is kept) or its group is already past ``collecting`` (late). A path already recorded is
        left alone (``status='known'``), so two service processes may scan the same directory.
        """
        now = time.time() if now is None else now
        path = str(path)
        with db.transaction(self.conn):
            if self.conn.execute("SELECT 1 FROM files WHERE path = ?", (path,)).fetchone():
                return AddResult(path, None, None, "known")
            newest = self.conn.execute("SELECT MAX(t_max_unix) FROM groups").fetchone()[0]
            behind = None if newest is None else max(0.0, newest - t_unix)
            g = self._find_group(t_unix)
            if g is None:
                cur = self.conn.execute(
                    "INSERT INTO groups (timestamp, t_unix, t_max_unix, state, first_seen, last_file, missing) "
                    "VALUES (?, ?, ?, 'collecting', ?, ?, ?)",
                    (iso_from_unix(t_unix), t_unix, t_unix, now, now, json.dumps(list(range(N_SUBBANDS)))),
                )
                gid, gstate, gts = cur.lastrowid, "collecting", iso_from_unix(t_unix)
                self._event(gid, "group_created", detail={"timestamp": gts, "first_file": path}, t=now)
            else:
                gid, gstate = g["id"], g["state"]
                if gstate == "collecting":
                    lo, hi = min(g["t_unix"], t_unix), max(g["t_max_unix"], t_unix)
                    self.conn.execute(
                        "UPDATE groups SET t_unix = ?, t_max_unix = ?, timestamp = ?, last_file = ? WHERE id = ?",
                        (lo, hi, iso_from_unix(lo), now, gid),
                    )
                gts = iso_from_unix(min(g["t_unix"], t_unix)) if gstate == "collecting" else g["timestamp"]
            status = "ok"
            note = None  # a usable file that the group's products so far lack
            if reason is None:
                dup = self.conn.execute(
                    "SELECT path FROM files WHERE group_id = ? AND subband = ? AND status = 'ok'",
                    (gid, subband),
                ).fetchone()
                if dup is not None:
                    reason = f"duplicate sb{subband:02d} for group {gts}: already have {dup['path']}"
                elif gstate != "collecting" and shape:  # the group's shape was settled when it was queued
                    ref = self.conn.execute(
                        "SELECT shape FROM files WHERE group_id = ? AND status = 'ok' AND shape IS NOT NULL "
                        "LIMIT 1", (gid,)).fetchone()
                    if ref is not None and _shape_key(json.loads(ref["shape"])) != _shape_key(shape):
                        reason = (f"wrong shape: {_fmt_shape(_shape_key(shape))} but the files of group {gts} "
                                  f"have {_fmt_shape(_shape_key(json.loads(ref['shape'])))}")
            if reason is None and gstate == "failed" and g["claims"] == 0:
                # failed as incomplete by the policy, never processed: the late subband re-opens it
                lo, hi = min(g["t_unix"], t_unix), max(g["t_max_unix"], t_unix)
                self.conn.execute(
                    "UPDATE groups SET state = 'collecting', reopened = reopened + 1, error = NULL, finished = NULL, "
                    "t_unix = ?, t_max_unix = ?, timestamp = ?, last_file = ? WHERE id = ?",
                    (lo, hi, iso_from_unix(lo), now, gid))
                self._event(gid, "reopened", detail={"late_file": path, "subband": int(subband)}, t=now)
                log.warning("group %s re-opened: its sb%02d arrived after it failed as incomplete (%s)",
                            g["timestamp"], subband, path)
                gstate, gts = "collecting", iso_from_unix(lo)
            elif reason is None and gstate == "pending" and g["claims"] > 0:
                # queued again after an attempt (e.g. waiting for calibration): products made
                # without this subband may exist, so the next claim rebuilds them, and now
                self.conn.execute("UPDATE groups SET rebuild = 1, not_before = NULL, wait_token = NULL WHERE id = ?",
                                  (gid,))
                self._event(gid, "rebuild", detail={"from": "pending", "reason": f"late sb{subband:02d}: {path}"},
                            t=now)
                log.warning("group %s: its sb%02d arrived after an attempt without it; the group is rebuilt with it "
                            "(%s)", gts, subband, path)
            elif reason is None and gstate not in ("collecting", "pending"):
                # taken for processing without it: recorded, used when the group is processed again
                note = (f"late: arrived after group {gts} was taken for processing (state {gstate}) without it; "
                        f"used when the group is processed again (dsacont reprocess {gts})")
            if reason is not None:
                status = "quarantined"
            self.conn.execute(
                "INSERT INTO files (path, group_id, subband, t_unix, status, reason, size, mtime, shape, added, behind) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (path, gid, int(subband), t_unix, status, reason or note, size, mtime,
                 json.dumps(shape) if shape else None, now, behind),
            )
            if status == "ok":
                self._refresh_counts(gid)
                if note is not None:
                    self._event(gid, "late_file", detail={"path": path, "subband": int(subband), "state": gstate},
                                t=now)
            else:
                self._event(gid, "file_quarantined", detail={"path": path, "reason": reason}, t=now)
        if status == "quarantined":
            log.warning("quarantined %s: %s", path, reason)
        elif note is not None:
            log.warning("%s: %s", path, note)
        return AddResult(path, gid, gts, status, reason or note)

    def _find_group(self, t_unix: float):
        """Find the group this timestamp belongs to: after adding it the group spans <= tolerance."""
        tol = self.tolerance_s
        rows = self.conn.execute(
            "SELECT * FROM groups WHERE t_max_unix - ? <= ? AND ? - t_unix <= ? ORDER BY ABS(t_unix - ?)",
            (t_unix, tol, t_unix, tol, t_unix),
        ).fetchall()
        # prefer a group still collecting, then the nearest
        for r in rows:
            if r["state"] == "collecting":
                return r
        return rows[0] if rows else None

    def _refresh_counts(self, gid: int) -> None:
        subs = {r[0] for r in self.conn.execute(
            "SELECT subband FROM files WHERE group_id = ? AND status = 'ok'", (gid,))}
        missing = [i for i in range(N_SUBBANDS) if i not in subs]
        self.conn.execute("UPDATE groups SET n_ok = ?, missing = ? WHERE id = ?",
                          (len(subs), json.dumps(missing), gid))

    # -- what a watcher sees but has not recorded ---------------------------------------------
    def set_unrecorded(self, worker: WorkerId, files, *, now: float | None = None) -> None:
        """Replace the list of files ``worker``'s watcher sees but has not recorded yet.

        ``files``: ``[(path, t_unix, subband, reason), ...]`` (reason ``unsettled`` or
        ``validation budget``). Read by ``dsacont status``; rows of a watcher whose process is
        gone are ignored there and dropped by the next :meth:`set_unrecorded` of any watcher.
        """
        now = time.time() if now is None else now
        files = {str(f[0]): f for f in files}
        alive: dict = {}  # (pid, start) -> bool, asked once per watcher
        with db.transaction(self.conn):
            old = {r["path"]: r for r in self.conn.execute("SELECT * FROM unrecorded")}
            for path, r in old.items():
                mine = r["watcher"] == worker.name
                key = (r["pid"], r["pid_start"])
                if not mine and r["host"] == worker.host and key not in alive:
                    alive[key] = pid_alive(*key)
                dead = not mine and r["host"] == worker.host and not alive[key]
                if (mine and path not in files) or dead:
                    self.conn.execute("DELETE FROM unrecorded WHERE path = ?", (path,))
            self.conn.execute("DELETE FROM unrecorded WHERE path IN (SELECT path FROM files)")
            for path, (_p, t_unix, subband, reason) in files.items():
                if path in old and old[path]["reason"] == reason and old[path]["watcher"] == worker.name:
                    continue
                self.conn.execute(
                    "INSERT OR REPLACE INTO unrecorded (path, t_unix, subband, reason, first_seen, watcher, host, "
                    "pid, pid_start) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (path, float(t_unix), int(subband), reason,
                     old[path]["first_seen"] if path in old else now, worker.name, worker.host, worker.pid,
                     worker.pid_start))

    def unrecorded(self) -> list[dict]:
        """Files seen in incoming but not recorded yet (by live watchers), oldest data first."""
        host = socket.gethostname()
        rows = [dict(r) for r in self.conn.execute(
            "SELECT * FROM unrecorded WHERE path NOT IN (SELECT path FROM files) ORDER BY t_unix, subband")]
        alive = {(r["pid"], r["pid_start"]): pid_alive(r["pid"], r["pid_start"])
                 for r in rows if r["host"] == host}
        return [r for r in rows if r["host"] != host or alive[(r["pid"], r["pid_start"])]]

    # -- collecting -> pending / failed ------------------------------------------------------
    def finalize_groups(self, *, now: float | None = None, incomplete_timeout_s: float = 900.0,
                        min_subbands: int = 12, force: bool = False, unrecorded=(),
                        hold_newer: bool = False) -> list[tuple[str, str, str]]:
        """Move ``collecting`` groups on, by the incomplete-group policy.

        A collecting group is finalised when
          * all 16 subbands have been *seen* (usable or quarantined): nothing more is expected; or
          * no file arrived for it for ``incomplete_timeout_s`` of wall time; or
          * the newest file in the queue is ``incomplete_timeout_s`` newer (data time) than the
            group: the correlator has moved on (this makes the policy work at any replay speed); or
          * ``force`` (the service was told no more files will come: ``--once``).

        Never while a file of the group is visible but not yet recorded: ``unrecorded`` holds the
        name timestamps (Unix s) of the files the watcher has seen but not recorded (not settled,
        or beyond its validation budget); a group any of them would join waits for them (unless
        all 16 subbands are already seen). The "newer data" rule counts only data the watcher has
        fully looked at: ``hold_newer`` (the watcher has such files at all) suspends it, and it
        never applies to a group re-opened by a late file (newer data says nothing about a late
        subband). Nor while data arrive out of order: when a file recorded within the last
        ``incomplete_timeout_s`` (wall time) was itself that much older than data recorded before
        it (a backlog copied in random order, a late correlator node), newer data is no sign that
        a group is over. The wall-time rule still applies to all of these.

        On finalising, usable files whose shape differs from the majority of the group's files
        are quarantined ("wrong shape"). Then: 16 usable subbands -> ``pending``; at least
        ``min_subbands`` -> ``pending`` with ``missing`` recorded (the processor gets None for
        those subbands); fewer -> ``failed`` with ``incomplete: N of 16 subbands``.

        Returns ``[(timestamp, new_state, note), ...]``.
        """
        now = time.time() if now is None else now
        out = []
        with db.transaction(self.conn):
            # "the correlator moved on": a newer group with at least half its subbands (one file with
            # a wild clock cannot finalise everything)
            newest = self.conn.execute(
                "SELECT MAX(t_max_unix) FROM groups WHERE n_ok >= ?", (N_SUBBANDS // 2,)).fetchone()[0] or 0.0
            rows = self.conn.execute("SELECT * FROM groups WHERE state = 'collecting' ORDER BY t_unix").fetchall()
            if rows and not hold_newer:
                hold_newer = self.conn.execute(
                    "SELECT 1 FROM files WHERE added >= ? AND behind >= ? LIMIT 1",
                    (now - incomplete_timeout_s, incomplete_timeout_s)).fetchone() is not None
            tol = self.tolerance_s
            unrecorded = [float(t) for t in unrecorded]
            for g in rows:
                gid = g["id"]
                seen = {r[0] for r in self.conn.execute("SELECT DISTINCT subband FROM files WHERE group_id = ?",
                                                         (gid,))}
                why = None
                if len(seen) >= N_SUBBANDS:
                    why = "all 16 subbands arrived"
                elif any(g["t_max_unix"] - t <= tol and t - g["t_unix"] <= tol for t in unrecorded):
                    continue  # a file of it is in incoming, not yet recorded: wait for it
                elif now - g["last_file"] >= incomplete_timeout_s:
                    why = f"no new file for {now - g['last_file']:.0f} s"
                elif hold_newer or g["reopened"]:
                    pass
                elif newest - g["t_max_unix"] >= incomplete_timeout_s:
                    why = f"newer data ({iso_from_unix(newest)}) arrived {newest - g['t_max_unix']:.0f} s later"
                elif force:
                    why = "no more files expected"
                if why is None:
                    continue
                self._quarantine_odd_shapes(gid, now)
                self._refresh_counts(gid)
                n_ok, missing = self._ok_count(gid)
                msub = ",".join(f"sb{i:02d}" for i in missing)
                if n_ok == N_SUBBANDS:
                    state, note = "pending", why
                elif n_ok >= min_subbands:
                    state, note = "pending", f"{why}; processing {n_ok}/16 subbands, missing {msub}"
                else:
                    state = "failed"
                    note = (f"incomplete: only {n_ok} of 16 usable subbands (missing {msub}) when finalised "
                            f"({why}); at least {min_subbands} needed")
                if state == "pending":
                    self.conn.execute(
                        "UPDATE groups SET state = 'pending', queued = ?, error = ? WHERE id = ?",
                        (now, None if n_ok == N_SUBBANDS else note, gid))
                else:
                    self.conn.execute(
                        "UPDATE groups SET state = 'failed', finished = ?, error = ? WHERE id = ?", (now, note, gid))
                self._event(gid, state if state == "failed" else "queued", detail=note, t=now)
                out.append((g["timestamp"], state, note))
        for ts, state, note in out:
            level = log.warning if state == "failed" or "missing" in note else log.info
            level("group %s -> %s (%s)", ts, state, note)
        return out

    def _ok_count(self, gid: int) -> tuple[int, list[int]]:
        subs = {r[0] for r in self.conn.execute(
            "SELECT subband FROM files WHERE group_id = ? AND status = 'ok'", (gid,))}
        return len(subs), [i for i in range(N_SUBBANDS) if i not in subs]

    def _quarantine_odd_shapes(self, gid: int, now: float) -> None:
        rows = self.conn.execute(
            "SELECT path, subband, shape FROM files WHERE group_id = ? AND status = 'ok' AND shape IS NOT NULL",
            (gid,)).fetchall()
        if len(rows) < 2:
            return
        keys = {r["path"]: _shape_key(json.loads(r["shape"])) for r in rows}
        common, n_common = Counter(keys.values()).most_common(1)[0]
        if n_common <= len(rows) / 2 and len(set(keys.values())) > 1:
            # no majority: cannot tell which is right; keep the shape of the lowest subband number
            common = keys[min(rows, key=lambda r: r["subband"])["path"]]
        for r in rows:
            k = keys[r["path"]]
            if k != common:
                reason = (f"wrong shape: {_fmt_shape(k)} but {n_common} sibling file(s) of group have "
                          f"{_fmt_shape(common)}")
                self.conn.execute("UPDATE files SET status = 'quarantined', reason = ? WHERE path = ?",
                                  (reason, r["path"]))
                self._event(gid, "file_quarantined", detail={"path": r["path"], "reason": reason}, t=now)
                log.warning("quarantined %s: %s", r["path"], reason)

    # -- claims ------------------------------------------------------------------------------
    def claim(self, worker: WorkerId, *, now: float | None = None) -> GroupRecord | None:
        """Atomically take the oldest claimable pending group of the highest priority, or None.

        Claimable: ``state='pending'`` and ``not_before`` unset or past (priority: see
        :meth:`set_priority`; unassessed counts as 0). A group whose inner neighbour (a group
        within :data:`INNER_NEIGHBOUR_S` of it with a higher priority: the next one towards a
        calibrator's transit) is not done yet goes after those whose inner neighbour is done,
        whatever their priority: its tile would otherwise be imaged without the neighbour's
        sources in the strip model and be imaged again for them. The group gets a new
        ``claim_token``, the worker's identity and a lease of ``lease_s``.
        """
        now = time.time() if now is None else now
        token = uuid.uuid4().hex
        with db.transaction(self.conn):
            _failpoint("claim_begin")
            row = self.conn.execute(
                """
                UPDATE groups SET state = 'in_progress', claims = claims + 1, started = ?, finished = NULL,
                       worker = ?, host = ?, pid = ?, pid_start = ?, heartbeat = ?, lease_until = ?,
                       claim_token = ?, not_before = NULL
                 WHERE id = (SELECT id FROM groups AS g
                              WHERE state = 'pending' AND (not_before IS NULL OR not_before <= ?)
                              ORDER BY EXISTS (SELECT 1 FROM groups AS n
                                                WHERE n.state IN ('pending', 'in_progress') AND n.id != g.id
                                                  AND n.t_unix BETWEEN g.t_unix - ? AND g.t_unix + ?
                                                  AND COALESCE(n.priority, 0) > COALESCE(g.priority, 0)),
                                       COALESCE(priority, 0) DESC, t_unix LIMIT 1)
                   AND state = 'pending'
                RETURNING *
                """,
                (now, worker.name, worker.host, worker.pid, worker.pid_start, now, now + self.lease_s, token, now,
                 INNER_NEIGHBOUR_S, INNER_NEIGHBOUR_S),
            ).fetchone()
            if row is None:
                return None
            _failpoint("claim_mid")
            # this claim takes every usable file of the group: none is late for it any more
            self.conn.execute(f"UPDATE files SET reason = NULL WHERE group_id = ? AND status = 'ok' AND {_LATE}",
                              (row["id"],))
            self._event(row["id"], "claimed", worker.name,
                        detail={"token": token, "claim": row["claims"], **({"rebuild": True} if row["rebuild"] else {})},
                        t=now)
            rec = self._record(row)
        log.info("claimed group %s (claim %d, %d/16 subbands)", rec.timestamp, rec.claims,
                 N_SUBBANDS - len(rec.missing))
        return rec

    def heartbeat(self, claims: dict[int, str], *, now: float | None = None) -> list[int]:
        """Extend the leases of ``{group_id: claim_token}``; returns the ids no longer ours."""
        now = time.time() if now is None else now
        lost = []
        if not claims:
            return lost
        with db.transaction(self.conn):
            for gid, token in claims.items():
                cur = self.conn.execute(
                    "UPDATE groups SET heartbeat = ?, lease_until = ? "
                    "WHERE id = ? AND claim_token = ? AND state = 'in_progress'",
                    (now, now + self.lease_s, gid, token),
                )
                if cur.rowcount == 0:
                    lost.append(gid)
        return lost

    def _finish(self, gid: int, token: str, sets: str, args: tuple, event: str, worker, detail, now) -> bool:
        with db.transaction(self.conn):
            cur = self.conn.execute(
                f"UPDATE groups SET {sets} WHERE id = ? AND claim_token = ? AND state = 'in_progress'",
                args + (gid, token),
            )
            if cur.rowcount == 0:
                row = self.conn.execute("SELECT timestamp, state, worker FROM groups WHERE id = ?", (gid,)).fetchone()
                self._event(gid, "stale_" + event, worker,
                            detail={"note": "claim no longer held", "state": row and row["state"]}, t=now)
                log.warning("group %s: %s ignored, the claim is no longer held (now %s by %s)",
                            row and row["timestamp"], event, row and row["state"], row and row["worker"])
                return False
            self._event(gid, event, worker, detail=detail, t=now)
        return True

    def complete(self, group: GroupRecord, result: dict | None = None, *, worker: str | None = None,
                 now: float | None = None) -> bool:
        """Mark a claimed group ``completed`` (False if the claim was lost meanwhile).

        Groups waiting for calibration are not woken by a completion as such, only by a change of
        the calibration registry (:meth:`wake_calibration`, called by the service).
        """
        now = time.time() if now is None else now
        res = json.dumps(result, default=str) if result is not None else None
        return self._finish(group.id, group.claim_token,
                            "state = 'completed', finished = ?, result = ?, error = NULL, lease_until = NULL, "
                            "wait_reason = NULL, wait_token = NULL, rebuild = 0",
                            (now, res), "completed", worker, None, now)

    def wake(self, wait_reason: str = "calibration") -> int:
        """Make groups deferred for ``wait_reason`` claimable now; returns how many."""
        with db.transaction(self.conn):
            cur = self.conn.execute(
                "UPDATE groups SET not_before = NULL WHERE state = 'pending' AND wait_reason = ? "
                "AND not_before IS NOT NULL", (wait_reason,))
        return cur.rowcount

    def wake_calibration(self, token: str) -> list[str]:
        """Make claimable the groups waiting for calibration since before the registry was in state
        ``token`` (any other ``wait_token``): something that could satisfy them has happened.
        Returns their timestamps."""
        with db.transaction(self.conn):
            rows = self.conn.execute(
                "UPDATE groups SET not_before = NULL WHERE state = 'pending' AND wait_reason = 'calibration' "
                "AND not_before IS NOT NULL AND (wait_token IS NULL OR wait_token != ?) RETURNING timestamp",
                (token,)).fetchall()
            for r in rows:
                self.conn.execute("INSERT INTO events (t, group_id, event, detail) SELECT ?, id, 'woken', ? "
                                  "FROM groups WHERE timestamp = ?",
                                  (time.time(), json.dumps({"calibration": token}), r[0]))
        return sorted(r[0] for r in rows)

    def fail(self, group: GroupRecord, error: str, *, retry: bool = True, worker: str | None = None,
             not_before: float | None = None, wait_reason: str = "retry", now: float | None = None) -> str | None:
        """Record a failed attempt. Returns the new state (``pending`` or ``failed``), None if stale.

        With ``retry`` and attempts left, the group returns to ``pending`` (claimable after a
        backoff, or ``not_before``); otherwise it is ``failed`` with ``error``.
        """
        now = time.time() if now is None else now
        row = self.conn.execute("SELECT attempts FROM groups WHERE id = ?", (group.id,)).fetchone()
        attempts = (row["attempts"] if row else group.attempts) + 1
        if retry and attempts < self.max_attempts:
            nb = not_before if not_before is not None else now + self.retry_backoff_s * 2 ** (attempts - 1)
            ok = self._finish(group.id, group.claim_token,
                              "state = 'pending', attempts = ?, error = ?, not_before = ?, wait_reason = ?, "
                              "lease_until = NULL, finished = ?",
                              (attempts, error, nb, wait_reason, now), "retry",
                              worker, {"error": error, "attempt": attempts}, now)
            return "pending" if ok else None
        msg = error if not retry else f"{error} (gave up after {attempts} attempts)"
        ok = self._finish(group.id, group.claim_token,
                          "state = 'failed', attempts = ?, error = ?, finished = ?, lease_until = NULL",
                          (attempts, msg, now), "failed", worker, {"error": msg, "attempt": attempts}, now)
        return "failed" if ok else None

    def quarantine(self, group: GroupRecord, reason: str, *, worker: str | None = None,
                   now: float | None = None) -> bool:
        """Quarantine a group whose input the processor found unusable (BadInputError): no retry."""
        now = time.time() if now is None else now
        return self._finish(group.id, group.claim_token,
                            "state = 'quarantined', error = ?, finished = ?, lease_until = NULL",
                            (reason, now), "quarantined", worker, {"error": reason}, now)

    def unassessed(self, limit: int = 200) -> list[tuple[GroupRecord, dict]]:
        """Pending groups whose priority is not assessed yet, oldest first, each with the header
        summary of one of its usable files (``files.shape``: what the watcher read; {} if none)."""
        out = []
        for row in self.conn.execute("SELECT * FROM groups WHERE state = 'pending' AND priority IS NULL "
                                     "ORDER BY t_unix LIMIT ?", (limit,)).fetchall():
            f = self.conn.execute("SELECT shape FROM files WHERE group_id = ? AND status = 'ok' AND shape IS NOT NULL "
                                  "ORDER BY subband LIMIT 1", (row["id"],)).fetchone()
            out.append((self._record(row), json.loads(f["shape"]) if f else {}))
        return out

    def set_priority(self, group, priority: int, reason: str | None = None) -> None:
        """Set a group's claim priority (higher first; the oldest first within one); a non-zero
        one is logged as a ``prioritised`` event with its reason."""
        gid = group.id if isinstance(group, GroupRecord) else int(group)
        with db.transaction(self.conn):
            self.conn.execute("UPDATE groups SET priority = ? WHERE id = ?", (int(priority), gid))
            if priority:
                self._event(gid, "prioritised", detail={"priority": int(priority), "reason": reason})

    def defer(self, group: GroupRecord, reason: str, *, delay_s: float, wait_reason: str = "calibration",
              worker: str | None = None, wait_token: str | None = None, now: float | None = None) -> bool:
        """Put a claimed group back to ``pending`` without using an attempt.

        E.g. calibration not valid yet; claimable after ``delay_s``, or when :meth:`wake` is called,
        or (``wait_token``: the calibration registry's state the task saw) when
        :meth:`wake_calibration` is called with another state.
        """
        now = time.time() if now is None else now
        return self._finish(group.id, group.claim_token,
                            "state = 'pending', waits = waits + 1, error = ?, not_before = ?, wait_reason = ?, "
                            "wait_token = ?, lease_until = NULL",
                            (reason, now + delay_s, wait_reason, wait_token), "deferred", worker,
                            {"reason": reason, "wait": wait_reason, "until": now + delay_s}, now)

    def release(self, group: GroupRecord, reason: str = "service stopped", *, worker: str | None = None,
                now: float | None = None) -> bool:
        """Give a claimed group back unprocessed (clean shutdown): no attempt used."""
        now = time.time() if now is None else now
        return self._finish(group.id, group.claim_token,
                            "state = 'pending', lease_until = NULL, not_before = NULL",
                            (), "released", worker, {"reason": reason}, now)

    def reclaim_stale(self, *, now: float | None = None, host: str | None = None) -> list[tuple[str, str]]:
        """Return ``in_progress`` groups of dead workers to ``pending`` (``failed`` when out of attempts).

        Dead means: the claiming process is on this host and no longer runs (kill -9, crash,
        OOM kill; checked by pid and process start time), or is on another host and its lease
        expired (no heartbeat for ``lease_s``). A live process on this host loses its groups
        only when it has sent no heartbeat for ``hung_after_s`` (10 leases: hung). Returns
        ``[(timestamp, reason), ...]``.
        """
        now = time.time() if now is None else now
        host = socket.gethostname() if host is None else host
        out = []
        with db.transaction(self.conn):
            for g in self.conn.execute("SELECT * FROM groups WHERE state = 'in_progress'").fetchall():
                why = None
                expired = g["lease_until"] is not None and g["lease_until"] < now
                if g["host"] == host:
                    if not pid_alive(g["pid"], g["pid_start"]):
                        why = f"worker {g['worker']} (pid {g['pid']}) is gone"
                    elif expired and now - g["lease_until"] > self.hung_after_s:
                        # alive but silent for very long: a hung service; take the group over
                        why = (f"worker {g['worker']} (pid {g['pid']}) sent no heartbeat for "
                               f"{now - g['heartbeat']:.0f} s (hung)")
                elif expired:
                    why = (f"lease of worker {g['worker']} on host {g['host']} expired "
                           f"{now - g['lease_until']:.0f} s ago")
                if why is None:
                    continue
                attempts = g["attempts"] + 1
                err = f"interrupted: {why} while processing (attempt {attempts})"
                if attempts < self.max_attempts:
                    self.conn.execute(
                        "UPDATE groups SET state = 'pending', attempts = ?, error = ?, claim_token = NULL, "
                        "lease_until = NULL, not_before = NULL, wait_reason = NULL WHERE id = ?",
                        (attempts, err, g["id"]))
                    self._event(g["id"], "reclaimed", g["worker"], detail=err, t=now)
                else:
                    err = f"{err}; gave up after {attempts} attempts"
                    self.conn.execute(
                        "UPDATE groups SET state = 'failed', attempts = ?, error = ?, claim_token = NULL, "
                        "lease_until = NULL, finished = ? WHERE id = ?", (attempts, err, now, g["id"]))
                    self._event(g["id"], "failed", g["worker"], detail=err, t=now)
                out.append((g["timestamp"], err))
        for ts, err in out:
            log.warning("reclaimed group %s: %s", ts, err)
        return out

    def requeue(self, states=("failed",), *, timestamps=None) -> int:
        """Operator action: put failed (or quarantined) groups back to ``pending``, attempts reset.

        Only groups that were processed (claimed at least once) are requeued: a group failed as
        incomplete by the policy stays failed (it would only fail again).
        """
        states = tuple(states)
        where = f"state IN ({','.join('?' * len(states))}) AND claims > 0"
        args = list(states)
        if timestamps:
            where += f" AND timestamp IN ({','.join('?' * len(timestamps))})"
            args += list(timestamps)
        with db.transaction(self.conn):
            ids = [r[0] for r in self.conn.execute(f"SELECT id FROM groups WHERE {where}", args)]
            self.conn.execute(
                "UPDATE groups SET state = 'pending', attempts = 0, not_before = NULL, claim_token = NULL, "
                f"wait_reason = NULL WHERE {where}", args)
            for gid in ids:
                self._event(gid, "requeued", detail={"from": list(states)})
        return len(ids)

    def late_files(self, group=None) -> list[dict]:
        """Usable files that arrived after their group was taken for processing and are in none of its
        products yet (all groups, or one by id/timestamp/record)."""
        sql = (f"SELECT f.*, g.timestamp AS group_timestamp, g.state AS group_state FROM files f "
               f"JOIN groups g ON g.id = f.group_id WHERE f.status = 'ok' AND f.{_LATE}")
        args: list = []
        if group is not None:
            gid = group.id if isinstance(group, GroupRecord) else (self.get(group).id if self.get(group) else -1)
            sql += " AND f.group_id = ?"
            args.append(gid)
        return [dict(r) for r in self.conn.execute(sql + " ORDER BY f.t_unix, f.subband", args)]

    def rebuild(self, timestamps, *, reason: str = "operator", now: float | None = None) -> dict[str, str]:
        """Queue groups to be processed again, their products rebuilt (``dsacont reprocess``).

        A group that is completed, failed or quarantined goes back to ``pending`` (attempts reset)
        with ``rebuild`` set: the service gives its task none of the group's recorded products, so
        every product is made again from all its usable files, late ones included, and recorded
        over the old rows (same paths). A pending group is only marked. Returns ``{timestamp:
        outcome}``: ``queued`` / ``marked``, or why not (``unknown``, ``collecting``,
        ``in_progress``).
        """
        now = time.time() if now is None else now
        out = {}
        with db.transaction(self.conn):
            for ts in timestamps:
                row = self.conn.execute("SELECT id, state FROM groups WHERE timestamp = ?", (ts,)).fetchone()
                if row is None:
                    out[ts] = "unknown"
                    continue
                if row["state"] in ("collecting", "in_progress"):
                    out[ts] = row["state"]
                    continue
                if row["state"] == "pending":
                    self.conn.execute("UPDATE groups SET rebuild = 1 WHERE id = ?", (row["id"],))
                    out[ts] = "marked"
                else:
                    self.conn.execute(
                        "UPDATE groups SET state = 'pending', rebuild = 1, attempts = 0, not_before = NULL, "
                        "claim_token = NULL, wait_reason = NULL, wait_token = NULL, queued = ?, error = NULL "
                        "WHERE id = ?", (now, row["id"]))
                    out[ts] = "queued"
                self._event(row["id"], "rebuild", detail={"from": row["state"], "reason": reason}, t=now)
        for ts, what in out.items():
            log.info("group %s: rebuild %s (%s)", ts, what, reason)
        return out

    def rebuild_late(self, *, quiet_s: float, now: float | None = None) -> dict[str, str]:
        """Queue for rebuilding the completed groups that have late files (the policy option
        ``reprocess_late``): once all 16 subbands are in, or no late file came for ``quiet_s``."""
        now = time.time() if now is None else now
        due = [r["timestamp"] for r in self.conn.execute(
            f"SELECT g.timestamp, g.n_ok, MAX(f.added) AS last FROM groups g JOIN files f ON f.group_id = g.id "
            f"WHERE g.state = 'completed' AND f.status = 'ok' AND f.{_LATE} GROUP BY g.id")
            if r["n_ok"] >= N_SUBBANDS or now - r["last"] >= quiet_s]
        return self.rebuild(due, reason="late subbands arrived (reprocess_late)", now=now) if due else {}

    def next_claimable_in(self, *, now: float | None = None, wait_reasons=("retry", "disk_full", None)) -> float | None:
        """Return the seconds until the next pending group becomes claimable.

        Groups deferred for one of ``wait_reasons`` count; 0 if one is claimable now; None if there
        is none.
        """
        now = time.time() if now is None else now
        best = None
        for r in self.conn.execute("SELECT not_before, wait_reason FROM groups WHERE state = 'pending'"):
            if r["not_before"] is None or r["not_before"] <= now:
                return 0.0
            if r["wait_reason"] in wait_reasons:
                d = r["not_before"] - now
                best = d if best is None else min(best, d)
        return best


#: SQL condition on ``files``: a usable file that arrived after its group was taken for processing
_LATE = "reason LIKE 'late:%'"


def _shape_key(shape: dict) -> tuple:
    return tuple(shape.get(k) for k in ("nblts", "nfreqs", "npols", "ntimes"))


def _fmt_shape(k: tuple) -> str:
    return f"(Nblts={k[0]}, Nfreqs={k[1]}, Npols={k[2]}, Ntimes={k[3]})"


def _failpoint(name: str) -> None:
    """Crash-test hook: ``DSACONT_FAILPOINT=<name>`` kills this process (SIGKILL) at ``name``.

    Used only by the tests to kill the service inside a claim transaction; unset in production.
    """
    want = os.environ.get("DSACONT_FAILPOINT")
    if want and want == name:
        log.error("failpoint %s: killing process %d", name, os.getpid())
        os.kill(os.getpid(), signal.SIGKILL)
