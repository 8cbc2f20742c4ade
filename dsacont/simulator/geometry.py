"""Array geometry for the simulator, computed here from the shipped data (independent of the pipeline).

Frames
------
* ECEF/ITRF: metres, Earth-fixed. Source directions include the IERS polar motion (they agree
  with astropy's topocentric ITRS to < 1 mas, and with pyuvdata's phasing); the fringe-stop
  direction HADEC(0, dec) is taken about the CIP (polar motion, ~0.3 arcsec, not applied).
* Station positions: WGS84 geodetic latitude/longitude/height from
  ``dsacont/data/DSA110_Station_Coordinates.csv`` -> ECEF with ``erfa.gd2gc``.
  ``antenna_positions`` (as written to the files) are ECEF minus the ECEF of the array centre
  (pyuvdata's convention: rotated ECEF, not local east/north/up).
* Array centre: CASA's ``OVRO_MMA`` observatory (lat 0.6498455107 rad, lon -2.0644277991 rad,
  height 1188.05 m).
* Directions are unit vectors in ECEF.  A direction at apparent (true equator and equinox of
  date) hour angle H and declination d is ``(cos d cos(lon - H), cos d sin(lon - H), sin d)``.
  The correlator's fringe-stop / pointing direction CASA 'HADEC' (0, dec) is that vector at
  H = 0: a fixed azimuth/elevation (az 0, el = 90 - (lat - dec) for dec > lat).
"""
from __future__ import annotations

import csv
import re
from functools import lru_cache
from pathlib import Path

import erfa
import numpy as np

OVRO_LAT_RAD = 0.6498455107
OVRO_LON_RAD = -2.0644277991
OVRO_HEIGHT_M = 1188.05
DISH_DIAMETER_M = 4.65
N_PADS = 117
DEFAULT_ELEVATION_M = 1182.6  # DSA-117 has no elevation in the table
C_M_S = 299792458.0

DATA_DIR = Path(__file__).resolve().parent.parent / "data"


@lru_cache(maxsize=1)
def read_stations() -> np.ndarray:
    """Station table: array (117, 3) of [lat_deg, lon_deg, height_m], row i = antenna number i
    (name ``str(i + 1)``, station ``DSA-{i+1:03d}``)."""
    out = np.full((N_PADS, 3), np.nan)
    with open(DATA_DIR / "DSA110_Station_Coordinates.csv", newline="") as fh:
        for row in csv.reader(fh):
            m = re.fullmatch(r"DSA-(\d+)", row[1].strip()) if len(row) >= 4 else None
            if m is None:
                continue
            num = int(m.group(1))
            lat, lon = float(row[2]), float(row[3])
            h = float(row[4]) if len(row) > 4 and row[4].strip() else DEFAULT_ELEVATION_M
            out[num - 1] = (lat, lon, h)
    if np.isnan(out).any():
        missing = [i + 1 for i in np.nonzero(np.isnan(out).any(axis=1))[0]]
        raise RuntimeError(f"station table lacks DSA-{missing}")
    return out


def geodetic_to_ecef(lat_rad, lon_rad, height_m) -> np.ndarray:
    """WGS84 geodetic -> ECEF metres, shape (..., 3)."""
    return np.asarray(erfa.gd2gc(1, np.asarray(lon_rad), np.asarray(lat_rad), np.asarray(height_m)))


def center_ecef() -> np.ndarray:
    """ECEF (m) of the array centre, shape (3,)."""
    return geodetic_to_ecef(OVRO_LAT_RAD, OVRO_LON_RAD, OVRO_HEIGHT_M)


@lru_cache(maxsize=1)
def antenna_positions() -> np.ndarray:
    """ECEF positions of all 117 pads relative to the array centre, metres, shape (117, 3)."""
    st = read_stations()
    ecef = geodetic_to_ecef(np.radians(st[:, 0]), np.radians(st[:, 1]), st[:, 2])
    return ecef - center_ecef()


def hadec_vector(ha_rad, dec_rad, lon_rad=OVRO_LON_RAD) -> np.ndarray:
    """Unit ECEF vector of apparent hour angle/declination, shape (..., 3)."""
    ha = np.asarray(ha_rad, dtype=float)
    dec = np.asarray(dec_rad, dtype=float)
    a = lon_rad - ha
    return np.stack([np.cos(dec) * np.cos(a), np.cos(dec) * np.sin(a), np.sin(dec) * np.ones_like(a)], axis=-1)


def enu_basis(lat_rad=OVRO_LAT_RAD, lon_rad=OVRO_LON_RAD) -> np.ndarray:
    """Rows: east, north, up unit vectors (ECEF) at a geodetic position, shape (3, 3)."""
    sl, cl = np.sin(lat_rad), np.cos(lat_rad)
    so, co = np.sin(lon_rad), np.cos(lon_rad)
    return np.array([[-so, co, 0.0], [-sl * co, -sl * so, cl], [cl * co, cl * so, sl]])


def pointing_altaz(dec_rad: float) -> tuple[float, float]:
    """(azimuth, elevation) in radians of HADEC(0, dec) at the array centre (geodetic up)."""
    e, n, u = enu_basis() @ hadec_vector(0.0, dec_rad)
    return float(np.arctan2(e, n) % (2 * np.pi)), float(np.arcsin(np.clip(u, -1, 1)))


def uvw_basis(dec_rad: float) -> np.ndarray:
    """Rows u, v, w (ECEF unit vectors) for the phase centre HADEC(0, dec), shape (3, 3).

    w points at the phase centre, v towards the north celestial pole projected on the sky plane,
    u east: the usual (u, v, w) of a phase centre at hour angle 0.
    """
    w = hadec_vector(0.0, dec_rad)
    lon = OVRO_LON_RAD
    u = np.array([-np.sin(lon), np.cos(lon), 0.0])
    v = np.cross(w, u)
    return np.array([u, v, w])


def baselines(ant1: np.ndarray, ant2: np.ndarray) -> np.ndarray:
    """ECEF baseline vectors x[ant2] - x[ant1], metres, shape (Nbls, 3)."""
    pos = antenna_positions()
    return pos[ant2] - pos[ant1]


def source_vectors(ra_deg, dec_deg, times_jd) -> np.ndarray:
    """Apparent topocentric directions of ICRS sources at the given UTC times, ECEF unit vectors.

    ICRS -> astropy ``TETE`` (true equator/equinox of date, topocentric at the array centre:
    precession, nutation, annual and diurnal aberration) -> hour angle from the apparent local
    sidereal time of each time.  The apparent RA/Dec are computed at the first, middle and last
    time and interpolated quadratically between them (they change by milliarcseconds over a
    5-minute group; the hour angle is exact at every time).  Returns shape (Ntimes, Nsrc, 3).
    """
    import astropy.units as u
    from astropy.coordinates import TETE, EarthLocation, SkyCoord
    from astropy.time import Time

    ra = np.atleast_1d(np.asarray(ra_deg, dtype=float))
    dec = np.atleast_1d(np.asarray(dec_deg, dtype=float))
    tj = np.atleast_1d(np.asarray(times_jd, dtype=float))
    times = Time(tj, format="jd", scale="utc")
    loc = EarthLocation.from_geodetic(
        lon=np.degrees(OVRO_LON_RAD) * u.deg, lat=np.degrees(OVRO_LAT_RAD) * u.deg, height=OVRO_HEIGHT_M * u.m
    )
    knots = np.unique([tj[0], tj[tj.size // 2], tj[-1]])
    sc = SkyCoord(ra=ra * u.deg, dec=dec * u.deg, frame="icrs")
    app_ra, app_dec = [], []
    for tk in knots:
        app = sc.transform_to(TETE(obstime=Time(tk, format="jd", scale="utc"), location=loc))
        app_ra.append(app.ra.rad)
        app_dec.append(app.dec.rad)
    app_ra = np.unwrap(np.array(app_ra), axis=0)
    app_dec = np.array(app_dec)
    if knots.size == 1:
        ra_t = np.broadcast_to(app_ra[0], (tj.size, ra.size))
        dec_t = np.broadcast_to(app_dec[0], (tj.size, ra.size))
    else:
        x = (knots - knots[0]) * 86400.0
        xt = (tj - knots[0]) * 86400.0
        ra_t = _interp_knots(x, app_ra, xt)
        dec_t = _interp_knots(x, app_dec, xt)
    last = times.sidereal_time("apparent", longitude=loc.lon).rad  # (Ntimes,)
    ha = last[:, None] - ra_t
    vec = hadec_vector(ha, dec_t)  # terrestrial frame with z = CIP
    return vec @ polar_motion_matrix(tj[tj.size // 2]).T  # -> ITRF


def polar_motion_matrix(jd_utc: float) -> np.ndarray:
    """The erfa polar-motion matrix W (v_ITRF = W v_TIRS) at a UTC JD, from astropy's IERS table."""
    from astropy.time import Time
    from astropy.utils import iers

    t = Time(jd_utc, format="jd", scale="utc")
    xp, yp = iers.earth_orientation_table.get().pm_xy(t)
    tt = t.tt
    return erfa.pom00(xp.to_value("rad"), yp.to_value("rad"), erfa.sp00(tt.jd1, tt.jd2))


def _interp_knots(x, y, xt):
    """Lagrange interpolation through 2 or 3 knots: x (K,), y (K, N), xt (T,) -> (T, N)."""
    out = np.zeros((xt.size, y.shape[1]))
    for k in range(x.size):
        w = np.ones_like(xt)
        for m in range(x.size):
            if m != k:
                w = w * (xt - x[m]) / (x[k] - x[m])
        out += w[:, None] * y[k][None, :]
    return out


def airy_beam(cos_offset: np.ndarray, freq_hz: np.ndarray) -> np.ndarray:
    """Airy power pattern (2 J1(x)/x)^2, x = pi D sin(theta) / lambda, D = 4.65 m.

    ``cos_offset``: cosine of the angle from the pointing, any shape S; ``freq_hz``: shape (F,).
    Returns shape S + (F,).
    """
    from scipy.special import j1

    sin_t = np.sqrt(np.clip(1.0 - np.asarray(cos_offset) ** 2, 0.0, None))
    x = np.pi * DISH_DIAMETER_M * sin_t[..., None] * np.asarray(freq_hz) / C_M_S
    with np.errstate(invalid="ignore", divide="ignore"):
        b = np.where(x > 1e-8, 2.0 * j1(x) / np.where(x > 1e-8, x, 1.0), 1.0)
    return b * b
