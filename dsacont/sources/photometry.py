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
``covered`` False and NaN fluxes.
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
        ``covered`` (bool: on a finite pixel of the image).
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
    for i in range(len(ra)):
        if not (np.isfinite(x[i]) and np.isfinite(y[i]) and -0.5 < x[i] < nx - 0.5 and -0.5 < y[i] < ny - 0.5):
            continue
        xr, yr = int(round(x[i])), int(round(y[i]))
        if not np.isfinite(data[yr, xr]):
            continue
        flux[i] = _interp(data, x[i], y[i])
        if nmap is not None:
            err[i] = float(nmap[yr, xr])
        else:
            box = data[max(yr - 30, 0):yr + 31, max(xr - 30, 0):xr + 31]
            err[i] = robust_rms(box)
    covered = np.isfinite(flux) & np.isfinite(err) & (err > 0)
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = np.where(covered, flux / err, np.nan)
    detected = covered & (snr >= detect_nsigma)
    ul = np.where(covered & ~detected, np.maximum(flux, 0.0) + ul_nsigma * err, np.nan)
    return pd.DataFrame({"name": [str(n) for n in names], "ra_deg": ra, "dec_deg": dec, "image": image_path,
                         "mjd": image_mjd(image_path, hdr) if mjd is None else float(mjd), "flux_jy": flux,
                         "flux_err_jy": err, "snr": snr, "detected": detected, "upper_limit_jy": ul,
                         "x": x, "y": y, "covered": covered})
