"""The primary beam of a drifting tile.

CASA has no DSA-110 beam (the MS says OVRO_MMA, 10.4 m dishes), so tclean gets an explicit Airy
voltage-pattern table for a 4.65 m unblocked dish (:func:`make_vptable`, ``vpmanager.setpbairy``);
its ``.pb`` is checked against :func:`dsacont.telescope.airy_beam` (QA ``casa_pb_max_abs_diff``,
~0.005). But a 5-minute tile *drifts*: the dishes stay at fixed az/el while the sky moves ~0.7 deg,
and the band spans 1.31-1.50 GHz; a single-pointing, single-frequency beam is ~1.5 % wrong even at
the tile centre. So a tile's ``pb.fits`` is its effective beam (:func:`effective_beam`,
:func:`beam_image`): the Airy power pattern averaged over the integrations (pointing =
:func:`dsacont.imaging.geometry.pointing_track`) and over the unflagged channels
(:func:`band_samples`).
"""
from __future__ import annotations

import os
import shutil

import numpy as np
from scipy.interpolate import RectBivariateSpline

from dsacont.casa import ensure_casa
from dsacont.io.atomic import move_into_place
from dsacont.telescope import DISH_DIAMETER_M, airy_beam, angular_separation


def make_vptable(path, *, telescope: str = "OVRO_MMA", diameter_m: float | None = None,
                 reffreq_hz: float = 1.4e9, maxrad_deg: float = 6.0) -> str:
    """Write a CASA voltage-pattern table: an unblocked Airy dish (atomically).

    Parameters
    ----------
    path : str or path-like
        The table directory to write (replaced if it exists).
    telescope : str
        Telescope name the table applies to (the MS's ``OBSERVATION::TELESCOPE_NAME``).
    diameter_m : float, optional
        Dish diameter, metres (default :data:`dsacont.telescope.DISH_DIAMETER_M`, 4.65 m).
    reffreq_hz : float
        Reference frequency of the pattern, Hz.
    maxrad_deg : float
        Largest radius the pattern covers, degrees.

    Returns
    -------
    str
        ``path``.
    """
    ct = ensure_casa()
    d = DISH_DIAMETER_M if diameter_m is None else diameter_m
    vp = ct.vpmanager()
    try:
        vp.reset()
        vp.setpbairy(telescope=telescope, dishdiam=f"{d}m", blockagediam="0m", maxrad=f"{maxrad_deg}deg",
                     reffreq=f"{reffreq_hz / 1e9}GHz", dopb=True)
        tmp = f"{path}.tmp{os.getpid()}"
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
        vp.saveastable(tmp)
        move_into_place(tmp, path)
    finally:
        vp.reset()
    return str(path)


def effective_beam(ra_rad, dec_rad, point_ra_rad, point_dec_rad, freqs_hz, freq_weights=None) -> np.ndarray:
    """Time- and band-averaged Airy power beam at sky positions.

    ``A(ra, dec) = sum_t sum_f w_f A_airy(sep((ra, dec), p_t), f) / (N_t sum_f w_f)``.

    Parameters
    ----------
    ra_rad, dec_rad : array, any shape (the same)
        Sky positions, radians.
    point_ra_rad, point_dec_rad : array, shape (Nt,)
        Pointing centres, radians (equal weights).
    freqs_hz : array, shape (Nf,)
        Frequencies, Hz.
    freq_weights : array, shape (Nf,), optional
        Their weights (default equal).

    Returns
    -------
    numpy.ndarray, float64, the shape of ``ra_rad``
        Power beam, 0..1.
    """
    ra = np.asarray(ra_rad, float)
    dec = np.asarray(dec_rad, float)
    fw = np.ones(len(freqs_hz)) if freq_weights is None else np.asarray(freq_weights, float)
    fw = fw / fw.sum()
    acc = np.zeros(ra.shape)
    for pra, pdec in zip(np.atleast_1d(point_ra_rad), np.atleast_1d(point_dec_rad)):
        sep = angular_separation(pra, pdec, ra, dec)
        for f, w in zip(freqs_hz, fw):
            if w > 0:
                acc += w * airy_beam(sep, f)
    return acc / len(np.atleast_1d(point_ra_rad))


def beam_image(wcs2d, shape, point_ra_rad, point_dec_rad, freqs_hz, freq_weights=None, *,
               coarse: int = 128) -> np.ndarray:
    """:func:`effective_beam` on an image grid (computed on a coarse grid, spline-interpolated).

    Parameters
    ----------
    wcs2d : astropy.wcs.WCS
        Celestial (2-D) WCS of the image.
    shape : tuple (ny, nx)
        Image shape, pixels.
    point_ra_rad, point_dec_rad, freqs_hz, freq_weights
        As :func:`effective_beam`.
    coarse : int
        Side of the coarse grid the beam is evaluated on.

    Returns
    -------
    numpy.ndarray, float32, shape (ny, nx)
        Power beam, 0..1 (0 where the WCS has no sky).
    """
    ny, nx = shape
    cx = np.linspace(0, nx - 1, min(coarse, nx))
    cy = np.linspace(0, ny - 1, min(coarse, ny))
    gx, gy = np.meshgrid(cx, cy)
    ra, dec = wcs2d.pixel_to_world_values(gx, gy)
    ra, dec = np.radians(ra), np.radians(dec)
    bad = ~np.isfinite(ra) | ~np.isfinite(dec)
    ra[bad], dec[bad] = 0.0, 0.0
    a = effective_beam(ra, dec, point_ra_rad, point_dec_rad, freqs_hz, freq_weights)
    a[bad] = 0.0
    if len(cx) == nx and len(cy) == ny:
        return a.astype(np.float32)
    spl = RectBivariateSpline(cy, cx, a, kx=3, ky=3)
    return np.clip(spl(np.arange(ny), np.arange(nx)), 0.0, 1.0).astype(np.float32)


def band_samples(freqs, weights, n: int) -> tuple[np.ndarray, np.ndarray]:
    """At most ``n`` frequency samples (weighted bin centres) with summed weights, for band averages.

    Parameters
    ----------
    freqs : array, shape (Nchan,)
        Channel frequencies, Hz (ascending).
    weights : array, shape (Nchan,)
        Channel weights (e.g. unflagged counts); all-zero means equal weights.
    n : int
        Largest number of samples.

    Returns
    -------
    freqs, weights : numpy.ndarray, shape (<= n,)
        Sample frequencies (Hz) and their weights.
    """
    freqs = np.asarray(freqs, float)
    weights = np.asarray(weights, float)
    if weights.sum() <= 0:
        weights = np.ones_like(freqs)
    if len(freqs) <= n:
        return freqs, weights
    edges = np.linspace(0, len(freqs), n + 1).astype(int)
    fq, fw = [], []
    for a, b in zip(edges[:-1], edges[1:]):
        w = weights[a:b]
        if w.sum() > 0:
            fq.append(np.average(freqs[a:b], weights=w))
            fw.append(w.sum())
    return np.array(fq), np.array(fw)
