"""The sky model dsacont keeps itself: the sources of earlier tiles, by declination strip.

A drift scan at one declination sees the same sky every sidereal day, and consecutive 5-minute
tiles overlap (the pointing moves 1.25 deg of RA per group, the primary beam is ~3.2 deg wide).
So the sources found on the tiles already imaged make the sky model for the field gain solve of
the next group (:func:`dsacont.calibration.field.solve_field_gains`):

* on the first day it grows outward in time from the calibrator's hour: the transit tile's
  sources calibrate the next group, whose tile adds the sources entering the beam, and so on
  (a bootstrap through the overlap of the tiles, rather than a self-calibration of each tile on
  its own clean model: no second imaging pass, and the model of a group never comes from its own
  data);
* on later days the whole strip is known, from every earlier day's tiles.

Only tiles whose gains came from a calibrator transit (inside its window) or from an accepted
field solve are *trusted*: their sources enter the model. Tiles calibrated by transferred gains
alone are recorded (their detections are kept) but do not feed the model. And a source enters a
model only when at least half the trusted tiles that should have seen it (inside the tile, at
>= 10 sigma after the primary beam) found it: the stripe a bright source just outside a tile's
field leaves across it (measured: a row of 0.2-2.2 Jy "sources" east of 0834+555 on the tile
two groups after its transit) is not found again by the tiles around it.

One SQLite file in the state directory (``Paths.sky_db``, ``sky_model.sqlite3``), written only by
the service (the control plane): workers return the sources they found
(``result["products"]["detections"]``) and the service records them (:meth:`SkyStore.add_image`);
before a group's task, the service reads the model near the group's meridian
(:meth:`SkyStore.model_near`) and sends it with the task. Tables::

    images      one row per tile whose sources were recorded: path, group, MJD, trusted, the
                calibration chain, restoring beam, frequency, number of sources
    sources     one row per sky source: name, position (the S/N^2-weighted mean of its detections),
                number of detections, first and last MJD
    detections  one row per source per tile: position, integrated flux and error (Jy, primary-beam
                corrected), S/N

Provenance: every model source carries the tiles and days it comes from
(:meth:`SkyStore.model_near` returns them); ``dsacont status`` shows the store's extent.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from dsacont import db
from dsacont.db import to_mjd
from dsacont.telescope import OVRO_LON_RAD, airy_beam

log = logging.getLogger(__name__)

#: detections within this fraction of the restoring beam's major axis are the same source
MATCH_BEAMS = 0.5
#: a tile "should have seen" a source where its apparent flux (flux x primary beam at the source's
#: offset from the tile centre) is at least this many times the tile's noise
EXPECTED_SNR = 10.0
#: a source enters a model only when found by at least this fraction of the trusted tiles that
#: should have seen it (an artefact of one tile, e.g. a stripe of a bright source outside its
#: field, is not found again by the tiles around it; a real source at the newest tile's leading
#: edge has been covered by that tile alone)
MIN_FOUND_FRACTION = 0.5
#: a group's model holds the sources within this RA half-width (deg) of its meridian at any
#: declination (the worker keeps those within the model radius of its pointing): 4.5 deg on the
#: sky up to |dec| 68 deg
RA_HALF_WIDTH_DEG = 12.0

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,
    path TEXT UNIQUE NOT NULL,
    group_ts TEXT,
    mjd REAL NOT NULL,
    trusted INTEGER NOT NULL,
    calibration TEXT NOT NULL DEFAULT '[]',
    beam_arcsec REAL,
    freq_hz REAL,
    ra_deg REAL, dec_deg REAL,
    radius_deg REAL,
    noise_jy REAL,
    n_sources INTEGER NOT NULL,
    created TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sources (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    ra_deg REAL NOT NULL,
    dec_deg REAL NOT NULL,
    n_det INTEGER NOT NULL,
    first_mjd REAL, last_mjd REAL
);
CREATE TABLE IF NOT EXISTS detections (
    id INTEGER PRIMARY KEY,
    source_id INTEGER NOT NULL REFERENCES sources(id),
    image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    ra_deg REAL NOT NULL, dec_deg REAL NOT NULL,
    flux_jy REAL NOT NULL, flux_err_jy REAL NOT NULL, snr REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sources_ra ON sources(ra_deg);
CREATE INDEX IF NOT EXISTS detections_source ON detections(source_id);
CREATE INDEX IF NOT EXISTS detections_image ON detections(image_id);
"""


def _unit(ra_deg, dec_deg) -> np.ndarray:
    ra, dec = np.radians(np.asarray(ra_deg, float)), np.radians(np.asarray(dec_deg, float))
    return np.stack([np.cos(dec) * np.cos(ra), np.cos(dec) * np.sin(ra), np.sin(dec)], axis=-1)


def _radec(xyz) -> tuple[np.ndarray, np.ndarray]:
    xyz = np.atleast_2d(xyz)
    ra = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0])) % 360.0
    dec = np.degrees(np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1])))
    return ra, dec


def _name(ra_deg: float, dec_deg: float) -> str:
    h = ra_deg / 15.0
    d = abs(dec_deg)
    return (f"D{int(h):02d}{int(h * 60) % 60:02d}{h * 3600 % 60:04.1f}"
            f"{'+' if dec_deg >= 0 else '-'}{int(d):02d}{int(d * 60) % 60:02d}{int(d * 3600) % 60:02d}")


def _ra_window(column: str, ra_deg: float, half_width_deg: float) -> tuple[str, tuple]:
    """SQL condition (and its parameters) for ``column`` within ``half_width_deg`` of ``ra_deg``, wrapping at 0/360."""
    lo, hi = (ra_deg - half_width_deg) % 360.0, (ra_deg + half_width_deg) % 360.0
    if half_width_deg >= 180.0:
        return "1", ()
    if lo <= hi:
        return f"{column} BETWEEN ? AND ?", (lo, hi)
    return f"({column} >= ? OR {column} <= ?)", (lo, hi)


def _expected_tiles(tiles, ra_deg: float, dec_deg: float, flux_jy: float) -> set:
    """Ids of the tiles that should have found a source of ``flux_jy`` (Jy) at (``ra_deg``, ``dec_deg``).

    Inside the tile (within ``radius_deg`` of its centre, on the sky), with an apparent flux
    (:func:`dsacont.telescope.airy_beam` at the tile's frequency) of at least
    :data:`EXPECTED_SNR` times its noise.
    """
    if not tiles:
        return set()
    t = np.asarray([row[1:] for row in tiles], dtype=float)
    sep = np.arccos(np.clip(_unit(t[:, 0], t[:, 1]) @ _unit(ra_deg, dec_deg), -1.0, 1.0))
    inside = sep <= np.radians(t[:, 2])
    apparent = flux_jy * airy_beam(sep, np.where(np.isfinite(t[:, 4]), t[:, 4], 1.4e9))
    return {int(tiles[i][0]) for i in np.flatnonzero(inside & (apparent >= EXPECTED_SNR * t[:, 3]))}


def meridian_ra_deg(time) -> float:
    """RA (deg) on the OVRO meridian at ``time`` (ISO string, MJD, datetime or astropy Time).

    The mean sidereal time: the model window is degrees wide, seconds do not matter.
    """
    import astropy.units as u
    from astropy.time import Time

    t = Time(to_mjd(time), format="mjd", scale="utc")
    return float(t.sidereal_time("mean", longitude=math.degrees(OVRO_LON_RAD) * u.deg).deg % 360.0)


class SkyStore:
    """The accumulated sky model (see the module docstring).

    Parameters
    ----------
    db_path : path
        The SQLite file (``Paths.sky_db``); created with its tables on first use.
    """

    def __init__(self, db_path):
        self.db_path = Path(db_path)
        self.db_path.parent.mkdir(parents=True, exist_ok=True)
        with self._connect() as con:
            con.executescript(_SCHEMA)

    def _connect(self):
        return contextlib.closing(db.connect(self.db_path, timeout_s=30.0))

    # ------------------------------------------------------------------------------- writing
    def add_image(self, detections: dict) -> int:
        """Record the sources found on one tile; returns the image's id.

        Parameters
        ----------
        detections : dict
            What the worker returned (``products["detections"]``): ``image`` (path), ``group``
            (timestamp), ``mjd`` (the tile's mid-time), ``trusted`` (bool), ``calibration``
            (``["B:transit", "G:transferred", "G:field"]``), ``beam_arcsec`` (restoring beam
            major FWHM), ``freq_hz``, the tile's ``ra_deg``/``dec_deg`` (centre),
            ``radius_deg`` (half its width) and ``noise_jy`` (before PB correction), and
            ``rows``: ``[[ra_deg, dec_deg, flux_jy, flux_err_jy, snr], ...]`` (primary-beam
            corrected integrated fluxes).

        A tile recorded before (same path) has its detections replaced (a reprocessed group).
        Each detection joins the nearest known source within :data:`MATCH_BEAMS` restoring beams,
        else starts a new source.
        """
        rows = np.asarray(detections.get("rows") or [], dtype=float).reshape(-1, 5)
        beam = float(detections.get("beam_arcsec") or 60.0)
        radius = math.radians(MATCH_BEAMS * beam / 3600.0)
        mjd = float(detections["mjd"])
        with self._connect() as con, db.transaction(con):
            old = con.execute("SELECT id FROM images WHERE path = ?", (str(detections["image"]),)).fetchone()
            touched: set[int] = set()
            if old is not None:
                touched |= {r[0] for r in con.execute("SELECT DISTINCT source_id FROM detections WHERE image_id = ?",
                                                      (old[0],))}
                con.execute("DELETE FROM detections WHERE image_id = ?", (old[0],))
                con.execute("DELETE FROM images WHERE id = ?", (old[0],))
            cur = con.execute(
                "INSERT INTO images (path, group_ts, mjd, trusted, calibration, beam_arcsec, freq_hz, ra_deg, dec_deg,"
                " radius_deg, noise_jy, n_sources, created) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (str(detections["image"]), detections.get("group"), mjd, int(bool(detections.get("trusted"))),
                 json.dumps(detections.get("calibration") or []), beam, detections.get("freq_hz"),
                 detections.get("ra_deg"), detections.get("dec_deg"), detections.get("radius_deg"),
                 detections.get("noise_jy"), len(rows), datetime.now(timezone.utc).isoformat(timespec="seconds")))
            image_id = int(cur.lastrowid)
            if len(rows):
                ra_c = float(_radec(_unit(rows[:, 0], rows[:, 1]).mean(axis=0))[0][0])
                span = float(np.max(np.abs((rows[:, 0] - ra_c + 180.0) % 360.0 - 180.0)))
                max_cos = max(math.cos(math.radians(min(89.0, float(np.max(np.abs(rows[:, 1])))))), 0.02)
                cond, params = _ra_window("ra_deg", ra_c, span + MATCH_BEAMS * beam / 3600.0 / max_cos + 0.1)
                known = con.execute(f"SELECT id, ra_deg, dec_deg FROM sources WHERE {cond}", params).fetchall()
                ids = np.array([k[0] for k in known], dtype=np.int64)
                xyz_known = _unit([k[1] for k in known], [k[2] for k in known]).reshape(-1, 3)
                xyz = _unit(rows[:, 0], rows[:, 1]).reshape(-1, 3)
                taken: set[int] = set()
                for i in np.argsort(-rows[:, 4]):  # the brightest detection claims a source first
                    sid = None
                    if len(ids):
                        sep = np.arccos(np.clip(xyz_known @ xyz[i], -1.0, 1.0))
                        j = int(np.argmin(sep))
                        if sep[j] <= radius and int(ids[j]) not in taken:
                            sid = int(ids[j])
                    if sid is None:
                        sid = int(con.execute(
                            "INSERT INTO sources (name, ra_deg, dec_deg, n_det, first_mjd, last_mjd) VALUES (?, ?, ?, 0, ?, ?)",
                            (_name(rows[i, 0], rows[i, 1]), rows[i, 0], rows[i, 1], mjd, mjd)).lastrowid)
                    taken.add(sid)
                    con.execute("INSERT INTO detections (source_id, image_id, ra_deg, dec_deg, flux_jy, flux_err_jy, snr)"
                                " VALUES (?, ?, ?, ?, ?, ?, ?)", (sid, image_id, *map(float, rows[i])))
                touched |= taken
            for sid in touched:
                self._refresh(con, sid)
        log.info("sky model: %d source(s) of %s recorded (%s)", len(rows), detections["image"],
                 "trusted" if detections.get("trusted") else "not trusted: transferred gains")
        return image_id

    @staticmethod
    def _refresh(con, sid: int) -> None:
        """Recompute a source's position and extent from its detections (S/N^2 weights)."""
        det = con.execute("SELECT d.ra_deg, d.dec_deg, d.snr, i.mjd FROM detections d JOIN images i ON i.id = d.image_id"
                          " WHERE d.source_id = ?", (sid,)).fetchall()
        if not det:
            con.execute("DELETE FROM sources WHERE id = ?", (sid,))
            return
        a = np.asarray(det, dtype=float)
        ra, dec = _radec((_unit(a[:, 0], a[:, 1]) * (a[:, 2] ** 2)[:, None]).sum(axis=0))
        con.execute("UPDATE sources SET ra_deg = ?, dec_deg = ?, n_det = ?, first_mjd = ?, last_mjd = ? WHERE id = ?",
                    (float(ra[0]), float(dec[0]), len(a), float(a[:, 3].min()), float(a[:, 3].max()), sid))

    # ------------------------------------------------------------------------------- reading
    def model_near(self, time, *, exclude_group: str | None = None,
                   ra_half_width_deg: float = RA_HALF_WIDTH_DEG, max_sources: int = 3000) -> dict:
        """The model for a group: trusted sources near the meridian at ``time``, and where they come from.

        Parameters
        ----------
        time : ISO string, MJD, datetime or astropy Time
            The group's time; the sources within ``ra_half_width_deg`` of RA of the meridian then.
        exclude_group : str, optional
            A group timestamp whose own tile's sources are left out (a reprocessed group's model
            never comes from its own data).
        max_sources : int
            The brightest this many at most.

        Returns
        -------
        dict
            ``sources``: ``[[name, ra_deg, dec_deg, flux_jy, n_det], ...]`` brightest first (flux:
            the inverse-variance weighted mean of the trusted detections; position: their S/N^2
            weighted mean), only those found by at least :data:`MIN_FOUND_FRACTION` of the
            trusted tiles that should have seen them (:data:`EXPECTED_SNR`);
            ``provenance``: ``{"images", "days", "first_mjd", "last_mjd"}`` of the tiles they come
            from; ``rejected_unconfirmed``: how many sources were left out by that rule. Empty
            ``sources`` when nothing is known there.
        """
        cond, params = _ra_window("s.ra_deg", meridian_ra_deg(time), ra_half_width_deg)
        sql = ("SELECT s.id, s.name, d.ra_deg, d.dec_deg, d.flux_jy, d.flux_err_jy, d.snr, i.mjd, i.id"
               " FROM detections d JOIN sources s ON s.id = d.source_id JOIN images i ON i.id = d.image_id"
               f" WHERE i.trusted = 1 AND {cond}")
        if exclude_group is not None:
            sql += " AND (i.group_ts IS NULL OR i.group_ts != ?)"
            params = (*params, exclude_group)
        with self._connect() as con:
            rows = con.execute(sql, params).fetchall()
        empty = {"sources": [], "provenance": {"images": 0, "days": 0, "first_mjd": None, "last_mjd": None},
                 "rejected_unconfirmed": 0}
        if not rows:
            return empty
        tiles = self._tiles_near(time, ra_half_width_deg + 5.0, exclude_group)
        sid = np.array([r[0] for r in rows], dtype=np.int64)
        names = {r[0]: r[1] for r in rows}
        a = np.array([r[2:8] for r in rows], dtype=float)
        image_ids = np.array([r[8] for r in rows])
        out, used, unconfirmed = [], [], 0
        for s in np.unique(sid):
            m = sid == s
            w = 1.0 / np.maximum(a[m, 3], 1e-9) ** 2
            flux = float(np.sum(w * a[m, 2]) / np.sum(w))
            ra, dec = _radec((_unit(a[m, 0], a[m, 1]) * (a[m, 4] ** 2)[:, None]).sum(axis=0))
            seen_by = set(image_ids[m].tolist())
            expected = _expected_tiles(tiles, float(ra[0]), float(dec[0]), flux) | seen_by
            if len(seen_by) < MIN_FOUND_FRACTION * len(expected):
                unconfirmed += 1
                continue
            used.append(m)
            out.append([names[int(s)], round(float(ra[0]), 6), round(float(dec[0]), 6), round(flux, 6), int(m.sum())])
        if not out:
            return dict(empty, rejected_unconfirmed=unconfirmed)
        out.sort(key=lambda r: -r[3])
        keep = np.any(used, axis=0)
        mjds = a[keep, 5]
        return {"sources": out[:max_sources],
                "provenance": {"images": int(np.unique(image_ids[keep]).size),
                               "days": int(np.unique(np.floor(mjds)).size),
                               "first_mjd": float(mjds.min()), "last_mjd": float(mjds.max())},
                "rejected_unconfirmed": unconfirmed}

    def _tiles_near(self, time, ra_half_width_deg: float, exclude_group: str | None) -> list[tuple]:
        """Trusted tiles near the meridian at ``time``: ``(id, ra_deg, dec_deg, radius_deg, noise_jy, freq_hz)``."""
        cond, params = _ra_window("ra_deg", meridian_ra_deg(time), ra_half_width_deg)
        sql = (f"SELECT id, ra_deg, dec_deg, radius_deg, noise_jy, freq_hz FROM images WHERE trusted = 1 AND {cond}"
               " AND ra_deg IS NOT NULL AND noise_jy > 0 AND radius_deg > 0")
        if exclude_group is not None:
            sql += " AND (group_ts IS NULL OR group_ts != ?)"
            params = (*params, exclude_group)
        with self._connect() as con:
            return con.execute(sql, params).fetchall()

    def summary(self) -> dict:
        """Counts for ``dsacont status``: images (trusted), sources, detections, MJD range."""
        with self._connect() as con:
            n_img, n_trusted, lo, hi = con.execute(
                "SELECT COUNT(*), COALESCE(SUM(trusted), 0), MIN(mjd), MAX(mjd) FROM images").fetchone()
            n_src = con.execute("SELECT COUNT(*) FROM sources").fetchone()[0]
            n_det = con.execute("SELECT COUNT(*) FROM detections").fetchone()[0]
        return {"images": int(n_img), "trusted_images": int(n_trusted), "sources": int(n_src),
                "detections": int(n_det), "first_mjd": lo, "last_mjd": hi}
