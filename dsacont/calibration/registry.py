"""Calibration registry: every caltable with its validity window, in one SQLite file.

The registry lives in the state directory (``get_paths().registry_db``). Each row is one
calibration table::

    id           integer, assigned by register_begin
    kind         'B' (bandpass) or 'G' (complex gains), or 'K' (delays; reserved)
    calibrator   calibrator name, e.g. '0834+555'
    solve_mjd    MJD (UTC) of the data the table was solved on (mid-time of the solve)
    valid_start  MJD (UTC) from which the table may be applied
    valid_end    MJD (UTC) until which the table may be applied
    status       'writing' -> 'valid' | 'rejected'
    metrics      JSON text (quality metrics of the solve)
    source_ms    the calibrator Measurement Set the table was solved on
    path         the caltable directory
    depends_on   id of the table that was applied while solving this one (G -> its B; a field
                 gain table -> the calibrator G it corrects), or NULL
    reason       why a table was rejected
    created, updated   unix seconds
    dec_deg      pointing declination (apparent, degrees) of the data the table was solved on;
                 a table is never applied to another declination strip
                 (:mod:`dsacont.calibration.select`)
    origin       'transit' (solved on a calibrator transit) or 'field' (a gain correction solved
                 on a field group against a sky model)

Validity is two-sided: a table solved at ``T`` is valid in ``[T - before, T + after]``
(defaults: bandpass 24 h, gains 1 h each side; see :data:`DEFAULT_VALIDITY_H`), so a group
observed *before* the calibrator transit is calibrated as well as one observed after it (the
old pipeline's windows were forward-only). :meth:`Registry.lookup` returns the valid table
whose window contains the time and whose solve time is nearest to it; a table still being
written ('writing') or rejected is never returned.

Concurrency: the database runs in WAL mode with a busy timeout; every write is one short
``BEGIN IMMEDIATE`` transaction, so several processes (the streaming service, a notebook, a
manual ``dsacont calibrate``) may register and look up at the same time. SQL is always
parameterised.

Example::

    >>> reg = Registry(get_paths().registry_db)
    >>> rid = reg.register_begin("B", "0834+555", "2025-10-29T13:55:26", path, source_ms=ms)
    >>> reg.mark_valid(rid, {"flagged_fraction": 0.01})
    >>> reg.lookup("B", "2025-10-29T20:00:00").path
"""
from __future__ import annotations

import contextlib
import json
import logging
import time as _time
from dataclasses import dataclass
from pathlib import Path

from dsacont import db
from dsacont.calibration.select import choose_tables
from dsacont.db import to_mjd  # noqa: F401  (also imported from here by calibration)
from dsacont.jsonio import json_default

log = logging.getLogger(__name__)

KINDS = ("B", "G", "K")
STATUSES = ("writing", "valid", "rejected")
#: default half-width (hours) of the validity window on each side of the solve time
DEFAULT_VALIDITY_H = {"B": 24.0, "G": 1.0, "K": 24.0}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS caltables (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    kind        TEXT NOT NULL CHECK (kind IN ('B', 'G', 'K')),
    calibrator  TEXT,
    solve_mjd   REAL NOT NULL,
    valid_start REAL NOT NULL,
    valid_end   REAL NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('writing', 'valid', 'rejected')),
    metrics     TEXT,
    source_ms   TEXT,
    path        TEXT NOT NULL,
    depends_on  INTEGER REFERENCES caltables(id),
    reason      TEXT,
    created     REAL NOT NULL,
    updated     REAL NOT NULL,
    dec_deg     REAL,
    origin      TEXT,
    CHECK (valid_start <= valid_end)
);
CREATE INDEX IF NOT EXISTS caltables_lookup ON caltables (kind, status, valid_start, valid_end);
"""
#: columns added after the first release: (name, SQL type); added to an older file on open
_ADDED_COLUMNS = (("dec_deg", "REAL"), ("origin", "TEXT"))
ORIGINS = ("transit", "field")


def mjd_to_iso(mjd: float) -> str:
    from astropy.time import Time

    return Time(mjd, format="mjd", scale="utc").isot


@dataclass(frozen=True)
class CalRecord:
    """One registry row. Times are MJD (UTC); ``metrics`` is a dict."""

    id: int
    kind: str
    calibrator: str | None
    solve_mjd: float
    valid_start: float
    valid_end: float
    status: str
    metrics: dict
    source_ms: str | None
    path: str
    depends_on: int | None
    reason: str | None
    created: float
    updated: float
    dec_deg: float | None = None
    origin: str | None = None
    #: for a table just solved and not yet registered: its name within the task's results
    key: str | None = None

    @property
    def solve_iso(self) -> str:
        return mjd_to_iso(self.solve_mjd)

    def covers(self, mjd: float) -> bool:
        return self.valid_start <= mjd <= self.valid_end


_COLS = ("id, kind, calibrator, solve_mjd, valid_start, valid_end, status, metrics, source_ms, path, "
         "depends_on, reason, created, updated, dec_deg, origin")


def _row(r) -> CalRecord:
    vals = list(r)
    vals[7] = json.loads(vals[7]) if vals[7] else {}
    return CalRecord(*vals)


class Registry:
    """The calibration registry in the SQLite file ``db_path`` (created on first use).

    Connections are opened per call, so a ``Registry`` can be pickled to Dask workers or
    shared by threads; the file can be used by several processes at once.
    """

    def __init__(self, db_path, timeout_s: float = 60.0):
        self.db_path = Path(db_path)
        self.timeout_s = float(timeout_s)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            self._write(con, self._create)

    @staticmethod
    def _create(c) -> None:
        for stmt in _SCHEMA.split(";"):
            if stmt.strip():
                c.execute(stmt)
        have = {row[1] for row in c.execute("PRAGMA table_info(caltables)")}
        for name, sqltype in _ADDED_COLUMNS:
            if name not in have:  # a registry written by an older dsacont
                c.execute(f"ALTER TABLE caltables ADD COLUMN {name} {sqltype}")

    def __repr__(self) -> str:
        return f"Registry({str(self.db_path)!r})"

    # -- connections -------------------------------------------------------------------------
    def _connect(self):
        """A connection (WAL, busy_timeout, foreign keys: :func:`dsacont.db.connect`) that
        closes when its ``with`` block ends."""
        return contextlib.closing(db.connect(self.db_path, timeout_s=self.timeout_s))

    @staticmethod
    def _write(con, func):
        """Run ``func(con)`` inside one ``BEGIN IMMEDIATE`` transaction (:func:`dsacont.db.transaction`;
        a second writer waits up to ``busy_timeout``)."""
        with db.transaction(con):
            return func(con)

    # -- writing -----------------------------------------------------------------------------
    def register_begin(self, kind: str, calibrator: str | None, solve_time, path, *, source_ms=None,
                       valid_before_h: float | None = None, valid_after_h: float | None = None,
                       depends_on: int | None = None, dec_deg: float | None = None,
                       origin: str = "transit") -> int:
        """Record a table about to be written; returns its id (status 'writing').

        Parameters
        ----------
        kind : 'B' | 'G' | 'K'
        calibrator : str or None
        solve_time : astropy Time, datetime, ISO string or MJD
            Time of the data the table is solved on (mid-time).
        path : path of the caltable
        valid_before_h, valid_after_h : float, optional
            Half-widths (hours) of the validity window before and after the solve time;
            default :data:`DEFAULT_VALIDITY_H` of the kind on both sides.
        depends_on : int, optional
            Registry id of a table applied while solving this one (the bandpass under a G).
        dec_deg : float, optional
            Pointing declination (apparent, degrees) of the data solved on.
        origin : 'transit' | 'field'
            A calibrator-transit solve, or a field gain correction.
        """
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
        if origin not in ORIGINS:
            raise ValueError(f"origin must be one of {ORIGINS}, not {origin!r}")
        solve = to_mjd(solve_time)
        before = DEFAULT_VALIDITY_H[kind] if valid_before_h is None else float(valid_before_h)
        after = DEFAULT_VALIDITY_H[kind] if valid_after_h is None else float(valid_after_h)
        if before < 0 or after < 0:
            raise ValueError("validity half-widths must be >= 0 hours")
        now = _time.time()
        params = (kind, calibrator, solve, solve - before / 24.0, solve + after / 24.0, "writing",
                  str(source_ms) if source_ms is not None else None, str(path), depends_on, now, now,
                  None if dec_deg is None else float(dec_deg), origin)
        with self._connect() as con:
            rid = self._write(con, lambda c: c.execute(
                "INSERT INTO caltables (kind, calibrator, solve_mjd, valid_start, valid_end, status, "
                "source_ms, path, depends_on, created, updated, dec_deg, origin) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)",
                params).lastrowid)
        log.info("registry: %s table %d (%s) registered as writing: %s", kind, rid, calibrator, path)
        return int(rid)

    def _set_status(self, rid: int, status: str, *, metrics=None, reason=None) -> None:
        def tx(c):
            row = c.execute("SELECT status FROM caltables WHERE id=?", (int(rid),)).fetchone()
            if row is None:
                raise KeyError(f"no calibration table with id {rid} in {self.db_path}")
            sets, vals = ["status=?", "updated=?"], [status, _time.time()]
            if metrics is not None:
                sets.append("metrics=?")
                vals.append(json.dumps(metrics, default=json_default))
            if reason is not None:
                sets.append("reason=?")
                vals.append(str(reason))
            c.execute(f"UPDATE caltables SET {', '.join(sets)} WHERE id=?", (*vals, int(rid)))

        with self._connect() as con:
            self._write(con, tx)

    def mark_valid(self, rid: int, metrics: dict | None = None) -> None:
        """The table ``rid`` is complete and good: it may now be returned by :meth:`lookup`."""
        self._set_status(rid, "valid", metrics=metrics or {})
        log.info("registry: table %d valid", rid)

    def reject(self, rid: int, why: str, metrics: dict | None = None) -> None:
        """The table ``rid`` failed (solve error, bad quality): never applied."""
        self._set_status(rid, "rejected", metrics=metrics, reason=why)
        log.warning("registry: table %d rejected: %s", rid, why)

    def reap_stale(self, older_than_s: float = 3600.0) -> int:
        """Reject tables left in 'writing' for more than ``older_than_s`` (a crashed solver)."""
        cutoff = _time.time() - older_than_s
        with self._connect() as con:
            n = self._write(con, lambda c: c.execute(
                "UPDATE caltables SET status='rejected', reason=?, updated=? "
                "WHERE status='writing' AND updated < ?",
                ("left in 'writing' state (solver died?)", _time.time(), cutoff)).rowcount)
        return int(n)

    # -- reading -----------------------------------------------------------------------------
    def get(self, rid: int) -> CalRecord:
        with self._connect() as con:
            r = con.execute(f"SELECT {_COLS} FROM caltables WHERE id=?", (int(rid),)).fetchone()
        if r is None:
            raise KeyError(f"no calibration table with id {rid} in {self.db_path}")
        return _row(r)

    def lookup(self, kind: str, time) -> CalRecord | None:
        """The valid ``kind`` table whose window contains ``time`` and was solved nearest to it.

        ``time``: astropy Time, datetime, ISO string or MJD. Returns None when nothing valid
        covers the time. Field gain corrections (origin 'field') are not stand-alone tables and are
        never returned here (see :meth:`choose`). Tables in 'writing' or 'rejected' state are never returned. Ties
        (equal distance) go to the most recently registered table.
        """
        mjd = to_mjd(time)
        with self._connect() as con:
            r = con.execute(
                f"SELECT {_COLS} FROM caltables WHERE kind=? AND status='valid' AND COALESCE(origin, 'transit')='transit' "
                "AND valid_start <= ? AND valid_end >= ? ORDER BY ABS(solve_mjd - ?) ASC, id DESC LIMIT 1",
                (kind, mjd, mjd, mjd)).fetchone()
        return _row(r) if r is not None else None

    def lookup_set(self, time) -> list[CalRecord]:
        """The tables to apply at ``time``, in apply order: [bandpass, gains].

        The gain table nearest in time is taken with the bandpass it was solved on (when
        that one is still valid and covers the time), so B and G always belong together;
        otherwise the nearest valid bandpass. Returns [] when no gain table covers the time
        and [B] alone when only a bandpass does.
        """
        g = self.lookup("G", time)
        b = None
        if g is not None and g.depends_on is not None:
            dep = self.get(g.depends_on)
            if dep.status == "valid" and dep.covers(to_mjd(time)):
                b = dep
        if b is None:
            b = self.lookup("B", time)
        return [r for r in (b, g) if r is not None]

    def choose(self, time, dec_deg: float | None = None, **rules):
        """The tables that calibrate a group at ``time`` and pointing declination ``dec_deg``.

        :func:`dsacont.calibration.select.choose_tables` over the valid records (``rules``: its
        keyword arguments); returns a :class:`~dsacont.calibration.select.Choice` or None.
        """
        return choose_tables(self.list(status="valid"), to_mjd(time), dec_deg, **rules)

    def list(self, kind: str | None = None, status: str | None = None) -> list[CalRecord]:
        """All rows (optionally of one kind/status), oldest solve first."""
        q, args = f"SELECT {_COLS} FROM caltables", []
        conds = []
        if kind is not None:
            conds.append("kind=?")
            args.append(kind)
        if status is not None:
            conds.append("status=?")
            args.append(status)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += " ORDER BY solve_mjd, id"
        with self._connect() as con:
            return [_row(r) for r in con.execute(q, args).fetchall()]
