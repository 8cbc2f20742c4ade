"""Forced photometry: the flux at given sky positions on an image, with upper limits where not detected.

For an unresolved source the image value at its position (Jy/beam) is its flux density (Jy): the
measurement is the image interpolated at the position (cubic spline on a small cut-out, so a
position between pixels loses nothing of the peak), and its error is the local noise there
(:func:`dsacont.sources.finder.noise_for_image`: the mosaic's noise map, the tile's QA noise / pb;
else a robust RMS of the image around the position). In noise whose correlation is the beam's
(as in a restored image) this estimate has exactly the local variance, and it is better than a
beam-weighted fit, whose error is 2/sqrt(3) = 1.15 x larger there.

A source is ``detected`` when ``flux / error >= detect_nsigma``; otherwise its upper limit is
``max(flux, 0) + ul_nsigma * error``. Positions outside the image or on blanked pixels have
``covered`` False and NaN fluxes. Beside the error, ``local_rms_jy`` is the robust RMS (1.4826
MAD) of the image in a 61 x 61 pixel box around the position: unlike the noise map it counts the
sidelobes and artefacts of nearby bright sources.

The pipeline measures every tile and mosaic at the reference positions inside it
(:func:`reference_photometry`: the NVSS subset and the VLA calibrators, or the user's catalogue)
and hands the rows back for the service to store in the products database (table
``photometry``), from which :mod:`dsacont.sources.lightcurve` reads light curves without opening
an image.
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path

import numpy as np

from dsacont.errors import BadInputError
from dsacont.io.fits import read_fits_image

DEFAULT_DETECT_NSIGMA = 3.0
DEFAULT_UL_NSIGMA = 3.0
_HALF = 3  # half-size (pixels) of the interpolation cut-out
_BOX = 30  # half-size (pixels) of the local-rms box
#: the default reference positions of :func:`reference_photometry`
DEFAULT_REFERENCE = "nvss+vla"
#: an NVSS source this close to a VLA calibrator is that calibrator (measured once, by its name)
SAME_SOURCE_ARCSEC = 30.0


def image_mjd(image_path, header=None) -> float:
    """Mid-time (MJD UTC) of an image: a tile's QA JSON (start/end), else ``MJD-OBS``/``DATE-OBS``; NaN if none."""
    p = os.fspath(image_path)
    for suf in (".pbcor.fits", ".image.fits"):
        if p.endswith(suf):
            qa = p[: -len(suf)] + ".qa.json"
            try:
                q = json.loads(Path(qa).read_text())
                return 0.5 * (float(q["start_mjd"]) + float(q["end_mjd"]))
            except (OSError, KeyError, ValueError, TypeError):
                pass
    if header is None:
        from dsacont.io.fits import read_header

        header = read_header(p)
    if "MJD-OBS" in header:
        return float(header["MJD-OBS"])
    if "DATE-OBS" in header:
        from astropy.time import Time

        return float(Time(str(header["DATE-OBS"]).strip(), scale="utc").mjd)
    return float("nan")


def _interp(data, x, y):
    """Cubic-spline value of ``data`` at (x, y) from a small cut-out; NaN near blanks or edges."""
    from scipy.ndimage import map_coordinates

    ny, nx = data.shape
    xi, yi = int(math.floor(x)), int(math.floor(y))
    x0, x1, y0, y1 = xi - _HALF, xi + _HALF + 2, yi - _HALF, yi + _HALF + 2
    if x0 < 0 or y0 < 0 or x1 > nx or y1 > ny:
        # near the edge: nearest pixel if it is inside
        xr, yr = int(round(x)), int(round(y))
        return float(data[yr, xr]) if 0 <= xr < nx and 0 <= yr < ny else float("nan")
    cut = data[y0:y1, x0:x1]
    if not np.isfinite(cut).all():
        xr, yr = int(round(x)), int(round(y))
        return float(data[yr, xr])
    return float(map_coordinates(cut.astype(np.float64), [[y - y0], [x - x0]], order=3, mode="nearest")[0])


def forced_photometry(image_path, ra_deg, dec_deg, *, names=None, noise=None,
                      detect_nsigma: float = DEFAULT_DETECT_NSIGMA, ul_nsigma: float = DEFAULT_UL_NSIGMA,
                      mjd: float | None = None):
    """Measure the flux at sky positions on one image.

    Parameters
    ----------
    image_path : str or path-like
        A FITS image: a mosaic, a tile's ``.pbcor.fits`` (true fluxes) or ``.image.fits`` (apparent).
    ra_deg, dec_deg : float or array, shape (N,)
        ICRS positions, degrees.
    names : sequence of str, optional
        Source names (default ``"ra,dec"``).
    noise : path or float, optional
        The image's noise (:func:`dsacont.sources.finder.noise_for_image`); default dsacont's own,
        else the robust RMS of a 61 x 61 pixel box around each position.
    detect_nsigma : float
        Detection threshold, flux / error.
    ul_nsigma : float
        Upper limit = max(flux, 0) + ``ul_nsigma`` x error, for sources not detected.
    mjd : float, optional
        The image's time (MJD); default :func:`image_mjd`.

    Returns
    -------
    pandas.DataFrame, one row per position
        ``name``, ``ra_deg``, ``dec_deg``, ``image``, ``mjd``, ``flux_jy``, ``flux_err_jy``, ``snr``,
        ``detected`` (bool), ``upper_limit_jy`` (NaN when detected), ``x``, ``y`` (0-based pixels),
        ``covered`` (bool: on a finite pixel of the image), ``local_rms_jy`` (robust RMS of the
        image in a 61 x 61 pixel box around the position, Jy/beam).
    """
    import pandas as pd

    from dsacont.imaging.qa import robust_rms
    from dsacont.sources.finder import noise_for_image

    image_path = os.fspath(image_path)
    if not os.path.exists(image_path):
        raise BadInputError(image_path, "image does not exist")
    data, hdr, wcs = read_fits_image(image_path)
    ra = np.atleast_1d(np.asarray(ra_deg, float))
    dec = np.atleast_1d(np.asarray(dec_deg, float))
    if names is None:
        names = [f"{r:.5f},{d:+.5f}" for r, d in zip(ra, dec)]
    nmap, _ = noise_for_image(image_path, noise)
    x, y = wcs.world_to_pixel_values(ra, dec)
    x, y = np.atleast_1d(np.asarray(x, float)), np.atleast_1d(np.asarray(y, float))
    ny, nx = data.shape
    flux = np.full(len(ra), np.nan)
    err = np.full(len(ra), np.nan)
    lrms = np.full(len(ra), np.nan)
    for i in range(len(ra)):
        if not (np.isfinite(x[i]) and np.isfinite(y[i]) and -0.5 < x[i] < nx - 0.5 and -0.5 < y[i] < ny - 0.5):
            continue
        xr, yr = int(round(x[i])), int(round(y[i]))
        if not np.isfinite(data[yr, xr]):
            continue
        flux[i] = _interp(data, x[i], y[i])
        lrms[i] = robust_rms(data[max(yr - _BOX, 0):yr + _BOX + 1, max(xr - _BOX, 0):xr + _BOX + 1])
        err[i] = float(nmap[yr, xr]) if nmap is not None else lrms[i]
    covered = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(covered, flux / err, np.nan)
    detected = covered & (snr >= detect_nsigma)
    ul = np.where(covered & ~detected, np.maximum(flux, 0.0) + ul_nsigma * err, np.nan)
    return pd.DataFrame({"name": [str(n) for n in names], "ra_deg": ra, "dec_deg": dec, "image": image_path,
                         "mjd": image_mjd(image_path, hdr) if mjd is None else float(mjd), "flux_jy": flux,
                         "flux_err_jy": err, "snr": snr, "detected": detected, "upper_limit_jy": ul,
                         "x": x, "y": y, "covered": covered, "local_rms_jy": lrms})


def reference_positions(image_path, reference=None) -> list:
    """The reference sources inside an image's footprint, to measure on it.

    Parameters
    ----------
    image_path : str or path-like
        A FITS image (its WCS and finite pixels are the footprint).
    reference : str, path-like, list of SkySource or None
        ``None`` or ``"nvss+vla"``: the shipped NVSS subset and the VLA calibrators (an NVSS source
        within :data:`SAME_SOURCE_ARCSEC` of a calibrator is dropped: the calibrator keeps its
        name); else anything :func:`dsacont.sources.crossmatch.reference_sources` reads (``"nvss"``,
        ``"vla"``, a catalogue file in NVSS/FIRST/VLASS style, or a list of sources).

    Returns
    -------
    list of dsacont.calibration.skymodel.SkySource
        Those on finite pixels of the image.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    from dsacont.sources.crossmatch import reference_sources

    if reference is None or (isinstance(reference, str) and reference.lower() == DEFAULT_REFERENCE):
        cals = reference_sources("vla")
        nvss = reference_sources("nvss")
        if cals and nvss:
            c = SkyCoord([s.ra_deg for s in cals] * u.deg, [s.dec_deg for s in cals] * u.deg)
            n = SkyCoord([s.ra_deg for s in nvss] * u.deg, [s.dec_deg for s in nvss] * u.deg)
            _, sep, _ = n.match_to_catalog_sky(c)
            nvss = [s for s, d in zip(nvss, sep.arcsec) if d > SAME_SOURCE_ARCSEC]
        refs = cals + nvss
    else:
        refs = reference_sources(reference)
    if not refs:
        return []
    data, _, wcs = read_fits_image(image_path)
    ra = np.array([s.ra_deg for s in refs], float)
    dec = np.array([s.dec_deg for s in refs], float)
    x, y = wcs.world_to_pixel_values(ra, dec)
    x, y = np.asarray(x, float), np.asarray(y, float)
    ny, nx = data.shape
    ok = np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
    idx = np.flatnonzero(ok)
    ok[idx] = np.isfinite(data[np.round(y[idx]).astype(int), np.round(x[idx]).astype(int)])
    return [s for s, keep in zip(refs, ok) if keep]


def _reference_label(reference) -> str:
    if reference is None:
        return DEFAULT_REFERENCE
    if isinstance(reference, (list, tuple)):
        return f"{len(reference)} sources"
    return os.path.basename(os.fspath(reference)) if os.sep in os.fspath(reference) else os.fspath(reference)


def reference_photometry(image_path, kind: str, *, reference=None, mjd: float | None = None, noise=None,
                         detect_nsigma: float = DEFAULT_DETECT_NSIGMA, ul_nsigma: float = DEFAULT_UL_NSIGMA) -> dict:
    """Forced photometry of the reference sources inside an image, as a record for the products database.

    The worker's side of the ``photometry`` table: no database is touched; the service stores the
    record (:meth:`dsacont.service.products.Products.add_photometry`).

    Parameters
    ----------
    image_path : str or path-like
        A tile's ``.pbcor.fits`` or a mosaic FITS.
    kind : {'tile', 'mosaic'}
        What the image is.
    reference : str, path-like, list of SkySource or None
        The positions to measure (:func:`reference_positions`; default NVSS + VLA calibrators).
    mjd : float, optional
        The image's mid-time (MJD); default :func:`image_mjd`.
    noise, detect_nsigma, ul_nsigma
        As for :func:`forced_photometry`.

    Returns
    -------
    dict (JSON-serialisable)
        ``image`` (absolute path), ``kind``, ``mjd``, ``reference`` (its label), ``rows``: one dict
        per covered reference source, ``name``, ``ra_deg``, ``dec_deg``, ``flux_jy``,
        ``flux_err_jy``, ``local_rms_jy``, ``snr``, ``detected``, ``upper_limit_jy`` (None when
        detected), ``x``, ``y``.
    """
    if kind not in ("tile", "mosaic"):
        raise ValueError(f"kind {kind!r}: 'tile' or 'mosaic'")
    image_path = os.path.abspath(os.fspath(image_path))
    refs = reference_positions(image_path, reference)
    mjd = image_mjd(image_path) if mjd is None else float(mjd)
    rows = []
    if refs:
        df = forced_photometry(image_path, [s.ra_deg for s in refs], [s.dec_deg for s in refs],
                               names=[s.name for s in refs], noise=noise, detect_nsigma=detect_nsigma,
                               ul_nsigma=ul_nsigma, mjd=mjd)
        for r in df[df["covered"]].itertuples():
            rows.append({"name": r.name, "ra_deg": float(r.ra_deg), "dec_deg": float(r.dec_deg),
                         "flux_jy": float(r.flux_jy), "flux_err_jy": float(r.flux_err_jy),
                         "local_rms_jy": float(r.local_rms_jy) if math.isfinite(r.local_rms_jy) else None,
                         "snr": float(r.snr), "detected": bool(r.detected),
                         "upper_limit_jy": None if r.detected else float(r.upper_limit_jy),
                         "x": float(r.x), "y": float(r.y)})
    return {"image": image_path, "kind": kind, "mjd": None if not math.isfinite(mjd) else mjd,
            "reference": _reference_label(reference), "rows": rows}
