"""FITS images: the one reader and writer of dsacont's image products.

Every FITS dsacont writes (a tile's image, residual, pb and pbcor, a mosaic and its noise map)
passes through this module, so each one carries the same standard cards:

- the observatory: ``OBSGEO-X/Y/Z`` (metres, ITRS geocentric) of the array centre
  (:mod:`dsacont.telescope`, CASA's ``OVRO_MMA``), and ``OBSGEO-L/B/H`` (deg, deg, m), the same
  point in geodetic coordinates on the IAU(1976) ellipsoid, as FITS WCS Paper VII (Rots et al.
  2015) prescribes and wcslib (astropy.wcs) checks. On that ellipsoid OVRO's 1188.05 m WGS84 height
  reads 1185.04 m; both triplets are the same place (the geocentric one is exact). CASA's
  ``exportfits`` writes a bogus OBSGEO-X/Y/Z (the site's height as a geocentric vector, 1.2 km
  from the Earth's centre: astropy then reads OBSGEO-H = -6377 km);
- ``MJD-OBS`` next to ``DATE-OBS`` (astropy would otherwise add it itself, with a warning).

With both triplets present and consistent, astropy.wcs has nothing to "fix": reading a dsacont
FITS emits no ``FITSFixedWarning``. Comments are kept short enough that no card is truncated.

Conventions: an image plane is a 2-D float32 array indexed ``[y, x]`` (FITS order, 0-based
pixels); the celestial WCS is a 2-D ``astropy.wcs.WCS``; files on disk keep CASA's 4 axes
(RA, Dec, FREQ, STOKES) when their template has them.
"""
from __future__ import annotations

import math

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from dsacont.telescope import ARRAY_CENTRE_ECEF

# FITS WCS Paper VII's ellipsoid for OBSGEO-L/B/H (IAU 1976), as wcslib's obsfix uses it
_IAU1976_A_M = 6378140.0
_IAU1976_F = 1.0 / 298.2577


def geocentric_to_geodetic_iau1976(x_m: float, y_m: float, z_m: float) -> tuple[float, float, float]:
    """Geodetic (longitude deg, latitude deg, height m) of a geocentric point on the IAU(1976) ellipsoid.

    The ellipsoid FITS WCS Paper VII prescribes for ``OBSGEO-L/B/H``; iterated to convergence
    (sub-millimetre), the same relation wcslib uses to check the two triplets against each other.
    """
    a, f = _IAU1976_A_M, _IAU1976_F
    e2 = (2.0 - f) * f
    r2 = x_m * x_m + y_m * y_m
    zeta = z_m
    for _ in range(20):
        rho = math.sqrt(r2 + zeta * zeta)
        sinlat = zeta / rho
        n = a / math.sqrt(1.0 - e2 * sinlat * sinlat)
        new = z_m / (1.0 - n * e2 / rho)
        if abs(new - zeta) < 1e-6:
            zeta = new
            break
        zeta = new
    rho = math.sqrt(r2 + zeta * zeta)
    sinlat = zeta / rho
    n = a / math.sqrt(1.0 - e2 * sinlat * sinlat)
    return math.degrees(math.atan2(y_m, x_m)), math.degrees(math.asin(sinlat)), rho - n


def observatory_cards() -> list[tuple[str, float, str]]:
    """The ``OBSGEO-*`` cards of the array centre: ``[(keyword, value, comment), ...]``.

    X/Y/Z in metres (ITRS, from :data:`dsacont.telescope.ARRAY_CENTRE_ECEF`), L/B in degrees and
    H in metres on the IAU(1976) ellipsoid (FITS WCS Paper VII).
    """
    x, y, z = (float(v) for v in ARRAY_CENTRE_ECEF)
    lon, lat, h = geocentric_to_geodetic_iau1976(x, y, z)
    return [
        ("OBSGEO-X", x, "[m] ITRS geocentric, array centre"),
        ("OBSGEO-Y", y, "[m] ITRS geocentric"),
        ("OBSGEO-Z", z, "[m] ITRS geocentric"),
        ("OBSGEO-L", lon, "[deg] geodetic, IAU(1976) ellipsoid"),
        ("OBSGEO-B", lat, "[deg] geodetic, IAU(1976) ellipsoid"),
        ("OBSGEO-H", h, "[m] height, IAU(1976) ellipsoid"),
    ]


def set_standard_cards(hdr: fits.Header) -> fits.Header:
    """Put the observatory position and ``MJD-OBS`` (from ``DATE-OBS``, if any) into ``hdr``, in place.

    Replaces whatever OBSGEO cards were there (CASA's are wrong). Returns ``hdr``.
    """
    for key, value, comment in observatory_cards():
        hdr[key] = (value, comment)
    date_obs = hdr.get("DATE-OBS")
    if date_obs and "MJD-OBS" not in hdr:
        scale = str(hdr.get("TIMESYS", "UTC")).strip().lower() or "utc"
        if scale not in Time.SCALES:
            scale = "utc"
        hdr["MJD-OBS"] = (float(Time(str(date_obs).strip(), format="isot", scale=scale).mjd), "[d] from DATE-OBS")
    return hdr


def read_fits_image(path) -> tuple[np.ndarray, fits.Header, WCS]:
    """Read one image plane and its coordinates.

    Parameters
    ----------
    path : str or path-like
        A FITS image (CASA-exported or written by dsacont), 2 to 4 axes.

    Returns
    -------
    data : numpy.ndarray, float32, shape (ny, nx)
        The first plane (first frequency, first Stokes), in the file's units (BUNIT).
    header : astropy.io.fits.Header
        The primary header.
    wcs : astropy.wcs.WCS
        The 2-D celestial WCS (degrees).
    """
    with fits.open(path) as hdul:
        hdr = hdul[0].header
        data = np.asarray(hdul[0].data, dtype=np.float32)
    while data.ndim > 2:
        data = data[0]
    return data, hdr, WCS(hdr).celestial


def read_header(path) -> fits.Header:
    """The primary header of a FITS file."""
    return fits.getheader(path)


def write_image(path, data, header: fits.Header) -> None:
    """Write ``data`` (float32) with ``header`` plus the standard cards to ``path`` (overwriting)."""
    hdr = set_standard_cards(header.copy())
    fits.PrimaryHDU(np.asarray(data, dtype=np.float32), hdr).writeto(path, overwrite=True)


def write_like(template_path, out_path, data2d, *, bunit: str | None = None, extra: dict | None = None) -> None:
    """Write a 2-D plane into a FITS with the header (and axes) of ``template_path``.

    Parameters
    ----------
    template_path : str or path-like
        An image whose header and axis layout are copied (e.g. the tile's ``image.fits``).
    out_path : str or path-like
        Output file (overwritten).
    data2d : array, shape (ny, nx)
        The plane; reshaped to the template's (1, 1, ny, nx) layout, stored as float32.
    bunit : str, optional
        New ``BUNIT`` (e.g. ``""`` for a primary beam).
    extra : dict, optional
        Further cards, ``{keyword: value}`` or ``{keyword: (value, comment)}``.
    """
    with fits.open(template_path) as hdul:
        hdr = hdul[0].header.copy()
        shape = hdul[0].data.shape
    arr = np.asarray(data2d, dtype=np.float32).reshape(shape)
    if bunit is not None:
        hdr["BUNIT"] = bunit
    for k, v in (extra or {}).items():
        hdr[k] = v
    write_image(out_path, arr, hdr)


def finish_casa_export(path, *, slant: tuple[float, float] | None = None) -> None:
    """Correct a FITS written by CASA's ``exportfits``, in place.

    Writes the true observatory position and ``MJD-OBS`` (:func:`set_standard_cards`) and, with
    ``slant = (xi, eta)``, the slant-orthographic SIN parameters (:func:`set_slant_sin`).
    """
    with fits.open(path, mode="update") as hdul:
        hdr = hdul[0].header
        set_standard_cards(hdr)
        if slant is not None:
            _set_slant(hdr, *slant)


def set_slant_sin(path, xi: float, eta: float) -> None:
    """Give a SIN image the slant-orthographic parameters ``PV2_1 = xi``, ``PV2_2 = eta`` (in place).

    A coplanar array with ``w = a u + b v`` imaged by a 2-D (standard) gridder puts a source at
    direction cosines (l, m, n) at ``(l - a (1 - n), m - b (1 - n))``: exactly the FITS SIN
    projection with ``xi = -a``, ``eta = -b`` (Calabretta & Greisen 2002, sect. 5.1.5), so the
    image is in focus and only its WCS changes.

    Parameters
    ----------
    path : str or path-like
        FITS image with a ``DEC--SIN`` axis.
    xi, eta : float
        Dimensionless projection parameters.
    """
    with fits.open(path, mode="update") as hdul:
        _set_slant(hdul[0].header, xi, eta)


def _set_slant(hdr: fits.Header, xi: float, eta: float) -> None:
    lat_axis = next(i for i in range(1, int(hdr["NAXIS"]) + 1) if str(hdr.get(f"CTYPE{i}", "")).startswith("DEC"))
    hdr[f"PV{lat_axis}_1"] = (float(xi), "SIN xi = -a, w-plane w = a u + b v")
    hdr[f"PV{lat_axis}_2"] = (float(eta), "SIN eta = -b, w-plane w = a u + b v")


def beam_from_header(hdr) -> dict:
    """Restoring beam of an image header: ``{"bmaj_arcsec", "bmin_arcsec", "bpa_deg"}`` (FWHM)."""
    return {"bmaj_arcsec": float(hdr["BMAJ"]) * 3600.0, "bmin_arcsec": float(hdr["BMIN"]) * 3600.0,
            "bpa_deg": float(hdr["BPA"])}


def freq_from_header(hdr) -> float:
    """Reference frequency (Hz) of the image's FREQ axis (``CRVALn``), else its ``FREQ`` or ``RESTFRQ``
    card (a 2-D mosaic's); NaN without any."""
    for i in range(1, int(hdr["NAXIS"]) + 1):
        if str(hdr.get(f"CTYPE{i}", "")).startswith("FREQ"):
            return float(hdr[f"CRVAL{i}"])
    for key in ("FREQ", "RESTFRQ"):
        if key in hdr:
            return float(hdr[key])
    return float("nan")


def add_cards(path, cards, history=()) -> None:
    """Add (or replace) primary-header cards of a FITS file in place.

    ``cards``: iterable of (keyword, value, comment); ``history``: lines appended as HISTORY cards.
    """
    with fits.open(path, mode="update") as hdul:
        hdr = hdul[0].header
        for key, value, comment in cards:
            hdr[key] = (value, comment)
        for line in history:
            hdr.add_history(str(line))


def write_table(path, table, *, header: dict | None = None) -> None:
    """Write an astropy ``Table`` as a FITS binary table (HDU 1) to ``path``, overwriting.

    Column units are kept (``TUNITn``). ``header``: cards for the table HDU, ``{keyword: value}``
    or ``{keyword: (value, comment)}`` (e.g. the image it was made from); the primary HDU carries
    the observatory cards (:func:`set_standard_cards`), and ``DATE-OBS``/``MJD-OBS`` when given.
    """
    hdu = fits.table_to_hdu(table)
    primary = fits.Header()
    for k, v in (header or {}).items():
        hdu.header[k] = v
        if k in ("DATE-OBS", "MJD-OBS"):
            primary[k] = v
    fits.HDUList([fits.PrimaryHDU(header=set_standard_cards(primary)), hdu]).writeto(path, overwrite=True)


def read_table(path):
    """The FITS binary table of ``path`` (HDU 1) as an astropy ``Table`` with units and text (not bytes)
    columns; its header in ``.meta``."""
    from astropy.table import Table

    return Table.read(path, hdu=1, character_as_bytes=False)
