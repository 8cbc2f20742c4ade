"""The products database: every Measurement Set, image and mosaic the pipeline made, with provenance.

One SQLite file (``Paths.products_db``, WAL journal, parameterised SQL only). Tables::

    ms               one row per Measurement Set: group timestamp, time range, source files,
                     status, QA JSON
    ms_caltables     calibration tables applied to an MS (path, kind, calibration-registry id),
                     in apply order, with how each was obtained (``how``: 'transit', 'field',
                     'transferred', 'borrowed') and its details (``detail`` JSON: calibrator, age,
                     sky model, QA of a field solve, windows filled or flagged)
    images           one row per tile image: the MS it came from, FITS files, pointing,
                     time range, imaging parameters, status, QA JSON (noise, peak, dynamic range...)
    mosaics          one row per mosaic: FITS files, time range, status, QA JSON
    mosaic_images    which images went into which mosaic
    catalogues       one row per source catalogue (``<image>.sources.fits``): the image it was
                     made from, number of sources, finder parameters, cross-match QA JSON
                     (flux ratio, offsets, completeness against the reference)
    photometry       forced photometry at reference positions (NVSS + VLA calibrators, or the
                     user's catalogue): one row per (image, source), with the image's kind
                     ('tile' or 'mosaic'), mid-time (MJD), flux, error, local rms, detected or
                     upper limit (:func:`dsacont.sources.photometry.reference_photometry`)
    photometry_images  one row per image measured (even with no reference source inside it),
                     so that a reader knows which images the ``photometry`` rows cover
    antenna_health   one row per receptor (antenna x polarisation) of an MS: state ('ok', 'dead',
                     'dies', 'bad', 'flagged'), reason, the metric it rests on, when it died
                     (:mod:`dsacont.calibration.health`)

Times are stored as ISO-8601 UTC strings (``YYYY-MM-DDTHH:MM:SS.sss``, sortable as text) and as
MJD floats (``*_mjd`` columns, for range queries). Any time argument may be an ISO string, a
``datetime`` (UTC), an ``astropy.time.Time`` or a float MJD.

Rule: a product is registered only after it has been moved into place, so ``add_*`` refuses a
path that does not exist (:class:`dsacont.errors.BadInputError`).

Example (notebook)::

    >>> from dsacont.service.products import Products
    >>> db = Products(get_paths().products_db)
    >>> for im in db.images_between("2025-10-29T13:25", "2025-10-29T14:25"):
    ...     print(im["path"], im["qa"]["noise_jy"])
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from astropy.time import Time

from dsacont import db
from dsacont.db import to_mjd
from dsacont.errors import BadInputError
from dsacont.jsonio import json_default

log = logging.getLogger(__name__)

KINDS = ("ms", "images", "mosaics", "catalogues")
_KIND_ALIASES = {"ms": "ms", "image": "images", "images": "images", "mosaic": "mosaics", "mosaics": "mosaics",
                 "catalogue": "catalogues", "catalogues": "catalogues"}

_SCHEMA = """
CREATE TABLE IF NOT EXISTS ms (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    group_timestamp TEXT,
    start_time TEXT, end_time TEXT, mid_mjd REAL, start_mjd REAL, end_mjd REAL,
    status TEXT NOT NULL,
    inputs TEXT NOT NULL DEFAULT '[]',
    qa TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL, updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS ms_caltables (
    id INTEGER PRIMARY KEY,
    ms_id INTEGER NOT NULL REFERENCES ms(id) ON DELETE CASCADE,
    caltable TEXT NOT NULL,
    kind TEXT,
    registry_id INTEGER,
    applied TEXT NOT NULL,
    how TEXT,
    detail TEXT NOT NULL DEFAULT '{}',
    UNIQUE (ms_id, caltable)
);
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    ms_id INTEGER REFERENCES ms(id),
    ms_path TEXT,
    files TEXT NOT NULL DEFAULT '{}',
    ra_deg REAL, dec_deg REAL,
    start_time TEXT, end_time TEXT, mid_mjd REAL, start_mjd REAL, end_mjd REAL,
    params TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    qa TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL, updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mosaics (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    files TEXT NOT NULL DEFAULT '{}',
    ra_deg REAL, dec_deg REAL,
    start_time TEXT, end_time TEXT, mid_mjd REAL, start_mjd REAL, end_mjd REAL,
    params TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    qa TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL, updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS mosaic_images (
    mosaic_id INTEGER NOT NULL REFERENCES mosaics(id) ON DELETE CASCADE,
    image_id INTEGER REFERENCES images(id),
    image_path TEXT NOT NULL,
    PRIMARY KEY (mosaic_id, image_path)
);
CREATE TABLE IF NOT EXISTS catalogues (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    image_path TEXT NOT NULL,
    image_id INTEGER REFERENCES images(id),
    mid_mjd REAL,
    n_sources INTEGER,
    params TEXT NOT NULL DEFAULT '{}',
    status TEXT NOT NULL,
    qa TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL, updated TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS antenna_health (
    id INTEGER PRIMARY KEY,
    ms_id INTEGER REFERENCES ms(id) ON DELETE CASCADE,
    ms_path TEXT NOT NULL,
    group_timestamp TEXT,
    antenna TEXT NOT NULL,
    pol TEXT NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    metric REAL,
    dead_from_mjd REAL,
    recorded TEXT NOT NULL,
    UNIQUE (ms_path, antenna, pol)
);
CREATE TABLE IF NOT EXISTS photometry_images (
    image_path TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    mjd REAL,
    n_sources INTEGER NOT NULL,
    reference TEXT,
    recorded TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS photometry (
    id INTEGER PRIMARY KEY,
    image_path TEXT NOT NULL REFERENCES photometry_images(image_path) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    name TEXT NOT NULL,
    ra_deg REAL NOT NULL, dec_deg REAL NOT NULL,
    mjd REAL,
    flux_jy REAL, flux_err_jy REAL, local_rms_jy REAL, snr REAL,
    detected INTEGER NOT NULL,
    upper_limit_jy REAL,
    x REAL, y REAL,
    UNIQUE (image_path, name)
);
CREATE INDEX IF NOT EXISTS photometry_pos ON photometry(dec_deg, ra_deg);
CREATE INDEX IF NOT EXISTS photometry_name ON photometry(name, mjd);
CREATE INDEX IF NOT EXISTS photometry_images_mjd ON photometry_images(mjd);
CREATE INDEX IF NOT EXISTS antenna_health_antenna ON antenna_health(antenna, state);
CREATE INDEX IF NOT EXISTS ms_mid ON ms(mid_mjd);
CREATE INDEX IF NOT EXISTS catalogues_mid ON catalogues(mid_mjd);
CREATE INDEX IF NOT EXISTS images_mid ON images(mid_mjd);
CREATE INDEX IF NOT EXISTS mosaics_mid ON mosaics(mid_mjd);
"""

_JSON_COLS = ("inputs", "qa", "files", "params")


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3]


def _iso(mjd: float | None) -> str | None:
    if mjd is None:
        return None
    return Time(mjd, format="mjd", scale="utc").isot


def _dumps(obj) -> str:
    return json.dumps(obj if obj is not None else {}, default=json_default, sort_keys=True)


class Products:
    """Query and register pipeline products in one SQLite database.

    Parameters
    ----------
    db_path : path
        The SQLite file (created with its tables on first use; parent directory too).

    Every method opens its own short connection, so one ``Products`` may be shared by threads
    and several processes may use the same file (WAL journal, 30 s busy timeout).
    """

    def __init__(self, db_path):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)
            have = {row[1] for row in con.execute("PRAGMA table_info(ms_caltables)")}
            for name, sqltype in (("how", "TEXT"), ("detail", "TEXT NOT NULL DEFAULT '{}'")):
                if name not in have:  # a database written by an older dsacont
                    con.execute(f"ALTER TABLE ms_caltables ADD COLUMN {name} {sqltype}")

    # -- plumbing -------------------------------------------------------------------------------
    def _connect(self):
        """Open a connection that closes when its ``with`` block ends.

        WAL, busy_timeout and foreign keys, as :func:`dsacont.db.connect` sets them.
        """
        return contextlib.closing(db.connect(self.db_path, timeout_s=30.0))

    @staticmethod
    def _row(row: sqlite3.Row | None) -> dict | None:
        if row is None:
            return None
        d = dict(row)
        for c in _JSON_COLS:
            if c in d and isinstance(d[c], str):
                d[c] = json.loads(d[c])
        return d

    @staticmethod
    def _require_exists(path) -> str:
        p = os.path.abspath(os.fspath(path))
        if not os.path.exists(p):
            raise BadInputError(p, "product does not exist; register it only after it has been moved into place")
        return p

    @staticmethod
    def _times(start, end):
        s, e = to_mjd(start), to_mjd(end)
        mid = None if s is None or e is None else 0.5 * (s + e)
        if mid is None:
            mid = s if s is not None else e
        return _iso(s), _iso(e), mid, s, e

    def _upsert(self, table: str, values: dict) -> int:
        now = _now()
        values = dict(values, updated=now)
        cols = list(values)
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            row = con.execute(f"SELECT id FROM {table} WHERE path = ?", (values["path"],)).fetchone()
            if row is None:
                values["created"] = now
                cols = list(values)
                cur = con.execute(
                    f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})",
                    [values[c] for c in cols],
                )
                rid = cur.lastrowid
            else:
                rid = row["id"]
                con.execute(
                    f"UPDATE {table} SET {', '.join(f'{c} = ?' for c in cols)} WHERE id = ?",
                    [values[c] for c in cols] + [rid],
                )
            con.execute("COMMIT")
        return int(rid)

    def _table(self, kind: str) -> str:
        try:
            return _KIND_ALIASES[kind]
        except KeyError:
            raise ValueError(f"unknown product kind {kind!r}; one of ms, image, mosaic") from None

    # -- registration ---------------------------------------------------------------------------
    def add_ms(self, path, *, start=None, end=None, group_timestamp=None, inputs=None,
               status: str = "converted", qa: dict | None = None, caltables=None) -> int:
        """Register (or update) a Measurement Set that is already in place; returns its id.

        ``inputs``: the subband files it was made from. ``caltables``: see :meth:`add_caltables`.
        """
        p = self._require_exists(path)
        s, e, mid, smjd, emjd = self._times(start, end)
        rid = self._upsert("ms", dict(
            path=p, group_timestamp=None if group_timestamp is None else str(group_timestamp),
            start_time=s, end_time=e, mid_mjd=mid, start_mjd=smjd, end_mjd=emjd, status=status,
            inputs=_dumps([os.fspath(x) for x in (inputs or [])]), qa=_dumps(qa or {}),
        ))
        if caltables:
            self.add_caltables(rid, caltables)
        return rid

    def add_caltables(self, ms, caltables) -> None:
        """Record calibration tables applied to an MS (id or path).

        ``caltables``: iterable of paths, or of dicts ``{"path", "kind", "registry_id", "how",
        "detail"}`` (``how``: 'transit', 'field', 'transferred' or 'borrowed'; ``detail``: a dict).
        The MS's previous list is replaced (a re-calibration applies a new chain).
        """
        ms_id = self._ms_id(ms)
        now = _now()
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM ms_caltables WHERE ms_id=?", (ms_id,))
            for ct in caltables:
                d = {"path": ct} if not isinstance(ct, dict) else ct
                con.execute(
                    "INSERT OR REPLACE INTO ms_caltables (ms_id, caltable, kind, registry_id, applied, how, detail) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?)",
                    (ms_id, os.path.abspath(os.fspath(d["path"])), d.get("kind"), d.get("registry_id"), now,
                     d.get("how"), _dumps(d.get("detail"))),
                )
            con.execute("COMMIT")

    def add_image(self, path, *, ms=None, files: dict | None = None, ra_deg=None, dec_deg=None,
                  start=None, end=None, params: dict | None = None, status: str = "imaged",
                  qa: dict | None = None) -> int:
        """Register (or update) a tile image already in place; returns its id.

        ``path``: the primary FITS file (the PB-corrected image); ``files``: all FITS of the tile
        (``{"image": ..., "pbcor": ..., "pb": ..., "residual": ...}``); ``ms``: id or path of the
        MS it was made from (an unregistered MS path is kept as text).
        """
        p = self._require_exists(path)
        ms_id, ms_path = None, None
        if ms is not None:
            ms_path = None if isinstance(ms, int) else os.path.abspath(os.fspath(ms))
            row = self.get("ms", ms)
            if row is not None:
                ms_id, ms_path = row["id"], row["path"]
        s, e, mid, smjd, emjd = self._times(start, end)
        return self._upsert("images", dict(
            path=p, ms_id=ms_id, ms_path=ms_path,
            files=_dumps({k: os.fspath(v) for k, v in (files or {}).items()}),
            ra_deg=ra_deg, dec_deg=dec_deg, start_time=s, end_time=e, mid_mjd=mid, start_mjd=smjd,
            end_mjd=emjd, params=_dumps(params or {}), status=status, qa=_dumps(qa or {}),
        ))

    def add_catalogue(self, path, *, image, mjd=None, n_sources: int = 0, params: dict | None = None,
                      qa: dict | None = None, status: str = "catalogued") -> int:
        """Register (or update) a source catalogue already in place; returns its id.

        ``image``: the image (tile or mosaic FITS path) it was made from, linked to the image row
        when that is registered; ``mjd``: the image's mid-time; ``qa``: its cross-match QA.
        """
        p = self._require_exists(path)
        image_path = os.path.abspath(os.fspath(image))
        row = self.get("image", image_path)
        return self._upsert("catalogues", dict(
            path=p, image_path=image_path, image_id=None if row is None else row["id"],
            mid_mjd=None if mjd is None else float(mjd), n_sources=int(n_sources), params=_dumps(params or {}),
            status=status, qa=_dumps(qa or {})))

    def add_mosaic(self, path, *, images=(), files: dict | None = None, ra_deg=None, dec_deg=None,
                   start=None, end=None, params: dict | None = None, status: str = "mosaicked",
                   qa: dict | None = None) -> int:
        """Register (or update) a mosaic already in place; returns its id.

        ``images``: the input tile images, as image ids or FITS paths (paths not in the database
        are kept as text). When ``start``/``end`` are not given they are taken from the images.
        """
        p = self._require_exists(path)
        links = []
        for im in images:
            row = self.get("image", im)
            if row is not None:
                links.append((row["id"], row["path"], row))
            elif not isinstance(im, int):
                links.append((None, os.path.abspath(os.fspath(im)), None))
            else:
                raise ValueError(f"no image with id {im} in {self.db_path}")
        if start is None:
            starts = [r["start_mjd"] for _, _, r in links if r and r["start_mjd"] is not None]
            start = min(starts) if starts else None
        if end is None:
            ends = [r["end_mjd"] for _, _, r in links if r and r["end_mjd"] is not None]
            end = max(ends) if ends else None
        s, e, mid, smjd, emjd = self._times(start, end)
        rid = self._upsert("mosaics", dict(
            path=p, files=_dumps({k: os.fspath(v) for k, v in (files or {}).items()}),
            ra_deg=ra_deg, dec_deg=dec_deg, start_time=s, end_time=e, mid_mjd=mid, start_mjd=smjd,
            end_mjd=emjd, params=_dumps(params or {}), status=status, qa=_dumps(qa or {}),
        ))
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM mosaic_images WHERE mosaic_id = ?", (rid,))
            con.executemany(
                "INSERT INTO mosaic_images (mosaic_id, image_id, image_path) VALUES (?, ?, ?)",
                [(rid, iid, ipath) for iid, ipath, _ in links],
            )
            con.execute("COMMIT")
        return rid

    def add_antenna_health(self, ms, records, *, group_timestamp: str | None = None) -> int:
        """Record the health of every receptor of an MS (replacing what was recorded for it).

        ``records``: :meth:`dsacont.calibration.health.AntennaHealth.records` (dicts with
        ``antenna``, ``pol``, ``state``, ``reason``, ``metric``, ``dead_from_s`` (MS TIME, s) or
        ``dead_from_mjd``). The MS need not be registered (``ms_id`` is then NULL). Returns the
        number of rows written.
        """
        path = os.path.abspath(os.fspath(ms))
        row = self.get("ms", path)
        now = _now()
        rows = []
        for r in records:
            dead = r.get("dead_from_mjd")
            if dead is None and r.get("dead_from_s") is not None:
                dead = float(r["dead_from_s"]) / 86400.0
            rows.append((row["id"] if row else None, path, group_timestamp or (row or {}).get("group_timestamp"),
                         str(r["antenna"]), str(r["pol"]), str(r["state"]), str(r.get("reason") or ""),
                         None if r.get("metric") is None else float(r["metric"]), dead, now))
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM antenna_health WHERE ms_path = ?", (path,))
            con.executemany(
                "INSERT INTO antenna_health (ms_id, ms_path, group_timestamp, antenna, pol, state, reason, metric, "
                "dead_from_mjd, recorded) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            con.execute("COMMIT")
        return len(rows)

    def add_photometry(self, record: dict) -> int:
        """Store the forced photometry of one image (replacing what was stored for it); returns the row count.

        ``record``: :func:`dsacont.sources.photometry.reference_photometry`'s result (``image``,
        ``kind`` 'tile' or 'mosaic', ``mjd``, ``reference``, ``rows``). The image need not be
        registered; it is recorded as measured even when no reference source lies inside it.
        """
        if record.get("kind") not in ("tile", "mosaic"):
            raise ValueError(f"photometry of {record.get('image')}: kind {record.get('kind')!r} is not 'tile' or 'mosaic'")
        image = os.path.abspath(os.fspath(record["image"]))
        mjd = None if record.get("mjd") is None else float(record["mjd"])
        rows = [(image, record["kind"], str(r["name"]), float(r["ra_deg"]), float(r["dec_deg"]), mjd,
                 r.get("flux_jy"), r.get("flux_err_jy"), r.get("local_rms_jy"), r.get("snr"), int(bool(r["detected"])),
                 r.get("upper_limit_jy"), r.get("x"), r.get("y")) for r in record.get("rows") or []]
        with self._connect() as con:
            con.execute("BEGIN IMMEDIATE")
            con.execute("DELETE FROM photometry WHERE image_path = ?", (image,))
            con.execute("INSERT OR REPLACE INTO photometry_images (image_path, kind, mjd, n_sources, reference, recorded) "
                        "VALUES (?, ?, ?, ?, ?, ?)", (image, record["kind"], mjd, len(rows), record.get("reference"),
                                                      _now()))
            con.executemany(
                "INSERT INTO photometry (image_path, kind, name, ra_deg, dec_deg, mjd, flux_jy, flux_err_jy, "
                "local_rms_jy, snr, detected, upper_limit_jy, x, y) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows)
            con.execute("COMMIT")
        return len(rows)

    def photometry(self, name: str | None = None, *, image=None, kind: str | None = None) -> list[dict]:
        """Stored forced photometry, by time: of one source ``name``, one ``image``, one ``kind``, or all."""
        where, args = [], []
        if name is not None:
            where.append("name = ?")
            args.append(str(name))
        if image is not None:
            where.append("image_path = ?")
            args.append(os.path.abspath(os.fspath(image)))
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        sql = "SELECT * FROM photometry" + (" WHERE " + " AND ".join(where) if where else "")
        with self._connect() as con:
            return [dict(r, detected=bool(r["detected"])) for r in con.execute(sql + " ORDER BY mjd, name, id", args)]

    def antenna_health(self, ms=None, *, state: str | None = None, antenna: str | None = None) -> list[dict]:
        """Recorded receptor health, oldest group first: of one MS (path), or of every MS; only
        one ``state`` (e.g. ``"dead"``) or one ``antenna`` (name) if given."""
        where, args = [], []
        if ms is not None:
            where.append("ms_path = ?")
            args.append(os.path.abspath(os.fspath(ms)))
        if state is not None:
            where.append("state = ?")
            args.append(state)
        if antenna is not None:
            where.append("antenna = ?")
            args.append(str(antenna))
        sql = "SELECT * FROM antenna_health" + (" WHERE " + " AND ".join(where) if where else "")
        with self._connect() as con:
            return [dict(r) for r in con.execute(sql + " ORDER BY group_timestamp, ms_path, id", args)]

    def set_status(self, kind: str, key, status: str, qa: dict | None = None) -> None:
        """Change a product's status (and merge ``qa`` into its QA JSON)."""
        table = self._table(kind)
        row = self.get(kind, key)
        if row is None:
            raise KeyError(f"no {kind} {key!r} in {self.db_path}")
        merged = dict(row["qa"], **(qa or {}))
        with self._connect() as con:
            con.execute(f"UPDATE {table} SET status = ?, qa = ?, updated = ? WHERE id = ?",
                        (status, _dumps(merged), _now(), row["id"]))

    # -- queries --------------------------------------------------------------------------------
    def _ms_id(self, ms) -> int:
        row = self.get("ms", ms)
        if row is None:
            raise KeyError(f"no MS {ms!r} in {self.db_path}")
        return row["id"]

    def get(self, kind: str, key) -> dict | None:
        """One product by id (int) or path, as a dict (JSON columns decoded); None if absent.

        MS rows carry ``caltables`` (list of dicts); mosaic rows carry ``images`` (list of paths).
        """
        table = self._table(kind)
        with self._connect() as con:
            if isinstance(key, int):
                row = con.execute(f"SELECT * FROM {table} WHERE id = ?", (key,)).fetchone()
            else:
                row = con.execute(f"SELECT * FROM {table} WHERE path = ?",
                                  (os.path.abspath(os.fspath(key)),)).fetchone()
            d = self._row(row)
            if d is None:
                return None
            if table == "ms":
                d["caltables"] = [dict(r, detail=json.loads(r["detail"] or "{}")) for r in con.execute(
                    "SELECT caltable AS path, kind, registry_id, applied, how, detail FROM ms_caltables "
                    "WHERE ms_id = ? ORDER BY id", (d["id"],))]
            elif table == "mosaics":
                d["images"] = [r["image_path"] for r in con.execute(
                    "SELECT image_path FROM mosaic_images WHERE mosaic_id = ? ORDER BY image_path", (d["id"],))]
        return d

    def _list(self, table: str, status=None, since=None, until=None, limit=None) -> list[dict]:
        sql, args = f"SELECT * FROM {table} WHERE 1 = 1", []
        if status is not None:
            sql += " AND status = ?"
            args.append(status)
        if since is not None:
            sql += " AND mid_mjd >= ?"
            args.append(to_mjd(since))
        if until is not None:
            sql += " AND mid_mjd <= ?"
            args.append(to_mjd(until))
        sql += " ORDER BY mid_mjd, id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        with self._connect() as con:
            return [self._row(r) for r in con.execute(sql, args)]

    def list_ms(self, *, status=None, since=None, until=None, limit=None) -> list[dict]:
        """MS rows ordered by mid-time; optional status and mid-time window filters."""
        return self._list("ms", status, since, until, limit)

    def list_images(self, *, status=None, since=None, until=None, limit=None) -> list[dict]:
        """Image rows ordered by mid-time; optional status and mid-time window filters."""
        return self._list("images", status, since, until, limit)

    def list_mosaics(self, *, status=None, since=None, until=None, limit=None) -> list[dict]:
        """Mosaic rows ordered by mid-time; optional status and mid-time window filters."""
        return self._list("mosaics", status, since, until, limit)

    def list_catalogues(self, *, status=None, since=None, until=None, limit=None) -> list[dict]:
        """Source catalogue rows ordered by their image's mid-time; optional filters as for images."""
        return self._list("catalogues", status, since, until, limit)

    def images_between(self, start, end, *, status=None) -> list[dict]:
        """Images whose mid-time lies in [start, end], ordered by time (the tiles of a mosaic)."""
        return self._list("images", status, start, end, None)

    def for_group(self, group_timestamp: str) -> dict:
        """Return the products of one group, each kind ordered by id.

        ``{"ms": [MS rows with this group_timestamp], "images": [image rows made from those MS
        (by id or path)]}``.
        """
        with self._connect() as con:
            ms = [self._row(r) for r in con.execute(
                "SELECT * FROM ms WHERE group_timestamp = ? ORDER BY id", (str(group_timestamp),))]
            ids = [m["id"] for m in ms]
            paths = [m["path"] for m in ms]
            images = []
            if ms:
                q = ", ".join("?" * len(ms))
                images = [self._row(r) for r in con.execute(
                    f"SELECT * FROM images WHERE ms_id IN ({q}) OR ms_path IN ({q}) ORDER BY id", ids + paths)]
        return {"ms": ms, "images": images}

    def mosaics_of_images(self, paths=(), start_mjd_between: tuple[float, float] | None = None) -> list[int]:
        """Ids of the mosaics made of any of the images at ``paths`` or of any image whose start
        lies in ``start_mjd_between`` = (lo, hi), MJD; ascending."""
        with self._connect() as con:
            images = set(map(str, paths))
            if start_mjd_between is not None:
                images |= {r[0] for r in con.execute("SELECT path FROM images WHERE start_mjd BETWEEN ? AND ?",
                                                     tuple(start_mjd_between))}
            images = sorted(images)
            if not images:
                return []
            return [r[0] for r in con.execute(
                f"SELECT DISTINCT mosaic_id FROM mosaic_images WHERE image_path IN ({','.join('?' * len(images))}) "
                "ORDER BY mosaic_id", images)]

    def images_not_in_mosaic(self) -> list[dict]:
        """Return the image rows in no mosaic yet (or only in ``stale`` ones), by mid-time (the mosaic
        trigger's candidates); a tile the QA gates kept out of a mosaic (status ``rejected``) is not
        one."""
        with self._connect() as con:
            return [self._row(r) for r in con.execute(
                "SELECT * FROM images WHERE status != 'rejected' AND path NOT IN (SELECT mi.image_path FROM mosaic_images mi "
                "JOIN mosaics m ON m.id = mi.mosaic_id WHERE m.status != 'stale') "
                "ORDER BY mid_mjd, id")]

    def counts(self) -> dict:
        """Count the rows per product kind and status: ``{"images": {"imaged": 12}, ...}``."""
        out = {}
        with self._connect() as con:
            for t in KINDS:
                out[t] = {r[0]: r[1] for r in con.execute(f"SELECT status, COUNT(*) FROM {t} GROUP BY status")}
        return out
