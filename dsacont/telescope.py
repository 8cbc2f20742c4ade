"""The DSA-110 telescope model: array centre, stations, dishes and primary beam.

Conventions
-----------
- Array centre: CASA's ``OVRO_MMA`` observatory entry, taken as WGS84 geodetic latitude,
  longitude and height (as the raw files' header and pyuvdata interpret it). This is the only
  copy of the array centre in the pipeline: use :data:`OVRO_LOCATION` everywhere.
- Stations: the 117 pads of ``data/DSA110_Station_Coordinates.csv`` (WGS84 latitude, longitude,
  elevation in metres; DSA-117 has no elevation and gets 1182.6 m). Antenna *names* are
  '1'..'117', antenna *numbers* 0..116 (name = number + 1), as in the raw files.
- Positions: ECEF (ITRF) metres; ``ecef_rel`` is relative to the array centre (pyuvdata's
  ``antenna_positions`` convention); ``enu`` is local east-north-up at the array centre.
- Primary beam: Airy pattern of a uniformly illuminated 4.65 m dish, power response
  ``(2 J1(x) / x)**2`` with ``x = pi * D * sin(theta) / lambda``. (The old pipeline used 4.7 m
  in places: a bug.)
"""
from __future__ import annotations

import csv
import functools
import re
from dataclasses import dataclass
from importlib import resources

import numpy as np

# CASA OVRO_MMA (me.observatory('OVRO_MMA')), geodetic WGS84
OVRO_LAT_RAD = 0.6498455107238486
OVRO_LON_RAD = -2.064427799136453
OVRO_HEIGHT_M = 1188.0519
TELESCOPE_NAME = "OVRO_MMA"
INSTRUMENT = "DSA"

DISH_DIAMETER_M = 4.65
N_STATIONS = 117
MISSING_ELEVATION_M = 1182.6
SEFD_JY = 6000.0
SPEED_OF_LIGHT = 299_792_458.0  # m/s


@functools.cache
def ovro_location():
    """The array centre as an ``astropy.coordinates.EarthLocation``."""
    from astropy import units as u
    from astropy.coordinates import EarthLocation

    return EarthLocation.from_geodetic(
        lon=np.degrees(OVRO_LON_RAD) * u.deg, lat=np.degrees(OVRO_LAT_RAD) * u.deg, height=OVRO_HEIGHT_M * u.m
    )


def __getattr__(name):  # OVRO_LOCATION without importing astropy at module import
    if name == "OVRO_LOCATION":
        return ovro_location()
    raise AttributeError(name)


def geodetic_to_ecef(lat_rad, lon_rad, height_m):
    """WGS84 geodetic to ECEF metres. Arrays broadcast; returns (..., 3)."""
    a = 6378137.0
    f = 1.0 / 298.257223563
    e2 = f * (2.0 - f)
    lat, lon, h = np.broadcast_arrays(np.asarray(lat_rad, float), np.asarray(lon_rad, float), np.asarray(height_m, float))
    n = a / np.sqrt(1.0 - e2 * np.sin(lat) ** 2)
    x = (n + h) * np.cos(lat) * np.cos(lon)
    y = (n + h) * np.cos(lat) * np.sin(lon)
    z = (n * (1.0 - e2) + h) * np.sin(lat)
    return np.stack([x, y, z], axis=-1)


def ecef_to_enu_matrix(lat_rad: float = OVRO_LAT_RAD, lon_rad: float = OVRO_LON_RAD) -> np.ndarray:
    """Rotation (3, 3) taking ECEF offsets to local east, north, up at (lat, lon)."""
    sl, cl = np.sin(lat_rad), np.cos(lat_rad)
    so, co = np.sin(lon_rad), np.cos(lon_rad)
    return np.array([[-so, co, 0.0], [-sl * co, -sl * so, cl], [cl * co, cl * so, sl]])


ARRAY_CENTRE_ECEF = geodetic_to_ecef(OVRO_LAT_RAD, OVRO_LON_RAD, OVRO_HEIGHT_M)


@dataclass(frozen=True)
class Stations:
    """The 117 DSA-110 pads.

    Attributes
    ----------
    names : list[str]      '1'..'117'
    numbers : ndarray      (117,) int, 0..116
    lat_rad, lon_rad, height_m : ndarray (117,)  WGS84 geodetic
    ecef : ndarray         (117, 3) metres, absolute ITRF
    ecef_rel : ndarray     (117, 3) metres, relative to the array centre
    enu : ndarray          (117, 3) metres, east-north-up at the array centre
    """

    names: list
    numbers: np.ndarray
    lat_rad: np.ndarray
    lon_rad: np.ndarray
    height_m: np.ndarray
    ecef: np.ndarray
    ecef_rel: np.ndarray
    enu: np.ndarray


@functools.cache
def stations() -> Stations:
    """Read the shipped station table (cached)."""
    text = resources.files("dsacont").joinpath("data/DSA110_Station_Coordinates.csv").read_text()
    rows = []
    for row in csv.reader(text.splitlines()):
        cells = [c.strip() for c in row]
        label = next((c for c in cells if re.fullmatch(r"DSA-\d{3}", c)), None)
        if label is None:
            continue
        i = cells.index(label)
        lat, lon = float(cells[i + 1]), float(cells[i + 2])
        elev = float(cells[i + 3]) if len(cells) > i + 3 and cells[i + 3] else MISSING_ELEVATION_M
        rows.append((int(label[4:]), lat, lon, elev))
    rows.sort()
    if [r[0] for r in rows] != list(range(1, N_STATIONS + 1)):
        raise ValueError("station table must list DSA-001..DSA-117 exactly once")
    arr = np.array(rows, dtype=float)
    lat, lon, h = np.radians(arr[:, 1]), np.radians(arr[:, 2]), arr[:, 3]
    ecef = geodetic_to_ecef(lat, lon, h)
    rel = ecef - ARRAY_CENTRE_ECEF
    enu = rel @ ecef_to_enu_matrix().T
    return Stations(
        names=[str(int(n)) for n in arr[:, 0]],
        numbers=arr[:, 0].astype(int) - 1,
        lat_rad=lat,
        lon_rad=lon,
        height_m=h,
        ecef=ecef,
        ecef_rel=rel,
        enu=enu,
    )


def airy_beam(offset_rad, freq_hz, diameter_m: float = DISH_DIAMETER_M):
    """Primary-beam power response of a DSA-110 dish.

    Parameters
    ----------
    offset_rad : array_like
        Angular distance from the pointing centre, radians.
    freq_hz : array_like
        Frequency, Hz. Broadcasts against ``offset_rad``.
    diameter_m : float
        Dish diameter (4.65 m).

    Returns
    -------
    ndarray
        ``(2 J1(x)/x)**2`` with ``x = pi D sin(offset) / lambda``; 1 on axis, dimensionless.
    """
    from scipy.special import j1

    lam = SPEED_OF_LIGHT / np.asarray(freq_hz, dtype=float)
    x = np.pi * diameter_m * np.sin(np.asarray(offset_rad, dtype=float)) / lam
    x = np.where(np.abs(x) < 1e-8, 1e-8, x)
    return (2.0 * j1(x) / x) ** 2


def beam_fwhm_rad(freq_hz, diameter_m: float = DISH_DIAMETER_M):
    """Half-power full width of the Airy beam, radians (1.029 lambda / D)."""
    return 1.028993969 * SPEED_OF_LIGHT / np.asarray(freq_hz, dtype=float) / diameter_m


def angular_separation(ra1, dec1, ra2, dec2):
    """Great-circle distance between directions, radians in and out (Vincenty; broadcasts)."""
    dra = np.asarray(ra2) - np.asarray(ra1)
    s1, c1 = np.sin(dec1), np.cos(dec1)
    s2, c2 = np.sin(dec2), np.cos(dec2)
    num = np.hypot(c2 * np.sin(dra), c1 * s2 - s1 * c2 * np.cos(dra))
    den = s1 * s2 + c1 * c2 * np.cos(dra)
    return np.arctan2(num, den)
