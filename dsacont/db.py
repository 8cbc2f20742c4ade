"""A small shared SQLite helper for dsacont's state databases (queue, products, registry).

Every dsacont database is a single SQLite file under ``Paths.state``, opened the same way:

* **WAL journal** (readers never block the writer, a crash never corrupts the file),
  ``synchronous=FULL`` (a committed transaction survives a power cut, not only a kill -9);
* **busy_timeout** (a writer waits for another process's transaction instead of failing at once);
* **foreign keys** enforced;
* **autocommit connection** (``isolation_level=None``): nothing is in a transaction unless you
  open one with :func:`transaction`, which issues ``BEGIN IMMEDIATE`` so the write lock is taken
  up front (no "database is locked" upgrade deadlock between two read-then-write processes);
* **schema versioning** with ``PRAGMA user_version`` and an ordered list of migrations
  (:func:`migrate`), applied once, under the write lock, so two processes starting together
  agree on the schema.

WAL needs a local filesystem (not NFS); the state directory must be local to the host that
runs the service. Readers on other hosts should use the ``dsacont status``/products commands on
that host.

Example::

    from dsacont import db

    MIGRATIONS = [
        "CREATE TABLE thing (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE)",   # -> version 1
        "ALTER TABLE thing ADD COLUMN size INTEGER",                                 # -> version 2
    ]
    conn = db.connect(paths.products_db)
    db.migrate(conn, MIGRATIONS)
    with db.transaction(conn):
        conn.execute("INSERT INTO thing (name) VALUES (?)", ("a",))
"""
from __future__ import annotations

import contextlib
import logging
import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime, timezone
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 60.0

Migration = str | Callable[[sqlite3.Connection], None]


def connect(
    path: str | os.PathLike,
    *,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    readonly: bool = False,
    synchronous: str = "FULL",
) -> sqlite3.Connection:
    """Open (creating if needed) a dsacont SQLite database.

    Parameters
    ----------
    path : path
        The database file. Its directory is created if missing (unless ``readonly``).
    timeout_s : float
        How long a statement waits for another process's lock (``busy_timeout``), seconds.
    readonly : bool
        Open with ``mode=ro`` (for status displays); the file must exist.
    synchronous : str
        ``FULL`` (default: durable across power loss) or ``NORMAL`` (durable across a process
        crash, faster).

    Returns
    -------
    sqlite3.Connection
        In autocommit mode (``isolation_level=None``); rows are :class:`sqlite3.Row`.
        Use :func:`transaction` for multi-statement writes.
    """
    path = Path(path)
    if readonly:
        if not path.exists():
            raise FileNotFoundError(f"database {path} does not exist")
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, timeout=timeout_s, isolation_level=None,
            check_same_thread=False,
        )
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(path), timeout=timeout_s, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {int(timeout_s * 1000)}")
    conn.execute("PRAGMA foreign_keys = ON")
    if not readonly:
        _retry_locked(lambda: conn.execute("PRAGMA journal_mode = WAL"), timeout_s)
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


def _retry_locked(fn, timeout_s: float):
    """Run ``fn`` again while SQLite says the database is locked (journal-mode switch races)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return fn()
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@contextlib.contextmanager
def transaction(conn: sqlite3.Connection, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception).

    The write lock is taken at ``BEGIN``, so everything read inside the block is still true when
    it commits: read-modify-write sequences (claim a queue row, allocate a name) are atomic
    across processes. ``mode`` may be ``DEFERRED`` for read-only snapshots or ``EXCLUSIVE``.
    Nested use is an error (SQLite has no nested transactions; use a SAVEPOINT yourself).
    """
    if conn.in_transaction:
        raise RuntimeError("dsacont.db.transaction() does not nest; a transaction is already open")
    conn.execute(f"BEGIN {mode}")
    try:
        yield conn
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    else:
        conn.execute("COMMIT")


def schema_version(conn: sqlite3.Connection) -> int:
    """The database's schema version (``PRAGMA user_version``; 0 for a new file)."""
    return int(conn.execute("PRAGMA user_version").fetchone()[0])


def migrate(conn: sqlite3.Connection, migrations: Sequence[Migration], *, name: str = "") -> int:
    """Bring the schema up to ``len(migrations)``; returns the version reached.

    ``migrations[i]`` takes the schema from version ``i`` to ``i + 1``: an SQL script (several
    statements separated by ``;`` are fine) or a callable ``f(conn)``. Each runs in its own
    ``BEGIN IMMEDIATE`` transaction together with the ``user_version`` bump, so a crash leaves
    the database at a consistent version, and two processes migrating at once apply each step
    exactly once. A database newer than this code raises ``RuntimeError`` (refuse to guess).
    """
    target = len(migrations)
    current = schema_version(conn)
    if current > target:
        raise RuntimeError(
            f"database {name or _db_file(conn)} has schema version {current}, newer than this "
            f"dsacont understands ({target}); upgrade dsacont"
        )
    while current < target:
        with transaction(conn):
            current = schema_version(conn)  # re-read under the lock: another process may have migrated
            if current >= target:
                break
            step = migrations[current]
            if callable(step):
                step(conn)
            else:
                for statement in _split_sql(step):
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {current + 1}")
            log.debug("migrated %s to schema version %d", name or _db_file(conn), current + 1)
            current += 1
    return current


def _split_sql(script: str) -> list[str]:
    """Split a migration script into statements (``sqlite3.complete_statement`` aware)."""
    out, buf = [], ""
    for ch in script:
        buf += ch
        if ch == ";" and sqlite3.complete_statement(buf):
            if buf.strip().strip(";").strip():
                out.append(buf.strip())
            buf = ""
    if buf.strip():
        out.append(buf.strip())
    return out


def _db_file(conn: sqlite3.Connection) -> str:
    row = conn.execute("PRAGMA database_list").fetchone()
    return row[2] if row else "?"


def is_disk_full(exc: BaseException) -> bool:
    """True if ``exc`` says the disk (or the database) is full: ENOSPC / SQLITE_FULL."""
    import errno

    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    if isinstance(exc, sqlite3.OperationalError) and "full" in str(exc).lower():
        return True
    return False


def to_mjd(t) -> float | None:
    """Time as stored in dsacont's databases: MJD (UTC) float.

    Accepts an ISO string (``T`` or space separated), a ``datetime`` (naive = UTC), an
    ``astropy.time.Time``, or a number already in MJD; ``None`` passes through.
    """
    if t is None:
        return None
    if isinstance(t, (int, float)):
        return float(t)
    from astropy.time import Time

    if isinstance(t, datetime):
        if t.tzinfo is not None:
            t = t.astimezone(timezone.utc).replace(tzinfo=None)
        return float(Time(t, scale="utc").mjd)
    if isinstance(t, Time):
        return float(t.utc.mjd)
    return float(Time(str(t).replace(" ", "T"), format="isot", scale="utc").mjd)
