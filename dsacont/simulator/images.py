"""Image-plane simulation: restored-looking FITS images of point sources with recorded truth.

For scoring source finding, forced photometry and variability without running the whole
pipeline: each image is ``sum_s S_s B(x - x_s) + sigma(x) n(x)``, with ``B`` the elliptical
Gaussian restoring beam (peak 1, so a point source's peak in Jy/beam equals its flux in Jy) and
``n`` unit-variance noise correlated over the beam (white noise convolved with the beam's
Gaussian of half its variance, so its autocorrelation has the beam's shape, as in a real image).
``sigma(x)`` rises away from the centre like ``1 / A(x)`` of a primary-beam-corrected image and
is written beside the image as ``<stem>.noise.fits`` (the layout of a dsacont mosaic).

Like the rest of the simulator this imports nothing of the pipeline (it writes its FITS with
astropy directly, on CASA's 4-axis layout: RA, Dec, FREQ, STOKES).

    sky_image(out_path, *, sources=None, ...) -> dict   (the truth; also ``<stem>.truth.csv``)
    random_sources(n, *, ...) -> dict
    variable_epochs(out_dir, n_days, *, ...) -> dict    (daily images of steady, flaring, dipping sources)
"""
from __future__ import annotations

import csv
import math
import os

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from .variables import light_curve

FWHM_TO_SIGMA = 1.0 / (2.0 * math.sqrt(2.0 * math.log(2.0)))


def _wcs(npix, cell_arcsec, ra_deg, dec_deg, freq_hz):
    w = WCS(naxis=4)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN", "FREQ", "STOKES"]
    w.wcs.crval = [ra_deg, dec_deg, freq_hz, 1.0]
    w.wcs.cdelt = [-cell_arcsec / 3600.0, cell_arcsec / 3600.0, 1.875e8, 1.0]
    w.wcs.crpix = [npix / 2 + 1, npix / 2 + 1, 1.0, 1.0]
    w.wcs.cunit = ["deg", "deg", "Hz", ""]
    return w


def beam_kernel(dx, dy, bmaj_px, bmin_px, bpa_deg):
    """Elliptical Gaussian of peak 1 at pixel offsets (dx, dy) (arrays, pixels; x to the west on sky).

    ``bmaj_px``, ``bmin_px``: FWHM in pixels; ``bpa_deg``: position angle of the major axis, east
    of north (north = +y, east = -x for an image with negative CDELT1).
    """
    pa = math.radians(bpa_deg)
    u = -dx * math.sin(pa) + dy * math.cos(pa)   # along the major axis
    v = dx * math.cos(pa) + dy * math.sin(pa)    # along the minor axis
    smaj, smin = bmaj_px * FWHM_TO_SIGMA, bmin_px * FWHM_TO_SIGMA
    return np.exp(-0.5 * (u * u / (smaj * smaj) + v * v / (smin * smin)))


def correlated_noise(shape, bmaj_px, bmin_px, bpa_deg, rng) -> np.ndarray:
    """Unit-variance Gaussian noise whose autocorrelation is the beam (white noise x beam/sqrt 2)."""
    ny, nx = shape
    white = rng.normal(0.0, 1.0, shape)
    fy = np.fft.fftfreq(ny)[:, None] * ny
    fx = np.fft.fftfreq(nx)[None, :] * nx
    # kernel with sigma / sqrt(2): FWHM / sqrt(2), centred on pixel (0, 0) with wrap-around
    k = beam_kernel(fx, fy, bmaj_px / math.sqrt(2), bmin_px / math.sqrt(2), bpa_deg)
    out = np.fft.irfft2(np.fft.rfft2(white) * np.fft.rfft2(k), s=shape)
    return out / out.std()


def random_sources(n, *, npix=1024, cell_arcsec=6.0, ra_deg=128.72877, dec_deg=55.57252, noise_jy=1e-3,
                   snr_range=(2.0, 500.0), min_sep_beams=4.0, bmaj_arcsec=45.0, seed=0) -> dict:
    """``n`` point sources at random positions in the inner 90 % of the image, S/N log-uniform.

    Positions are at least ``min_sep_beams`` beam majors apart (no blends), fluxes
    ``snr * noise_jy`` (the S/N at the image centre). Returns ``{"name", "ra_deg", "dec_deg",
    "flux_jy"}`` (arrays, degrees and Jy).
    """
    rng = np.random.default_rng(seed)
    w = _wcs(npix, cell_arcsec, ra_deg, dec_deg, 1.4e9).celestial
    min_sep_px = min_sep_beams * bmaj_arcsec / cell_arcsec
    xs, ys = [], []
    tries = 0
    while len(xs) < n and tries < 200 * n:
        tries += 1
        x, y = rng.uniform(0.05 * npix, 0.95 * npix, 2)
        if xs and np.min(np.hypot(np.array(xs) - x, np.array(ys) - y)) < min_sep_px:
            continue
        xs.append(x)
        ys.append(y)
    ra, dec = w.pixel_to_world_values(np.array(xs), np.array(ys))
    snr = np.exp(rng.uniform(math.log(snr_range[0]), math.log(snr_range[1]), len(xs)))
    return {"name": np.array([f"SIM{i:04d}" for i in range(len(xs))]), "ra_deg": np.asarray(ra) % 360.0,
            "dec_deg": np.asarray(dec), "flux_jy": snr * noise_jy}


def sky_image(out_path, *, sources=None, n_sources=200, npix=1024, cell_arcsec=6.0,
              beam_arcsec=(45.0, 33.0, 30.0), noise_jy=1e-3, noise_rise=1.0, ra_deg=128.72877,
              dec_deg=55.57252, freq_hz=1.405e9, date_obs="2025-10-29T13:55:26", seed=0,
              snr_range=(2.0, 500.0), write_noise_map=True) -> dict:
    """Write a simulated image (and its noise map) of point sources; return the truth.

    Parameters
    ----------
    out_path : str or path-like
        The image FITS (``<stem>.fits``); ``<stem>.noise.fits`` (Jy/beam) and ``<stem>.truth.csv``
        (``name, ra_deg, dec_deg, flux_jy, x, y, noise_jy, snr``) are written beside it.
    sources : dict, optional
        ``{"name", "ra_deg", "dec_deg", "flux_jy"}`` arrays; default :func:`random_sources`.
    n_sources : int
        Number of random sources when ``sources`` is None.
    npix : int
        Image side, pixels.
    cell_arcsec : float
        Pixel size, arcsec.
    beam_arcsec : (float, float, float)
        Restoring beam: major and minor FWHM (arcsec) and position angle (deg, east of north).
    noise_jy : float
        Noise at the image centre, Jy/beam.
    noise_rise : float
        The noise at the image corner is ``noise_jy * (1 + noise_rise)`` (quadratic in radius).
    ra_deg, dec_deg, freq_hz : float
        Image centre (ICRS degrees) and frequency (Hz).
    date_obs : str
        ``DATE-OBS`` (ISO UTC); ``MJD-OBS`` is written from it.
    seed : int
        Random seed of the noise (and of the random sources).
    snr_range : (float, float)
        Centre S/N range of the random sources.
    write_noise_map : bool
        Write ``<stem>.noise.fits``.

    Returns
    -------
    dict
        The truth: ``name``, ``ra_deg``, ``dec_deg``, ``flux_jy``, ``x``, ``y`` (0-based pixels),
        ``noise_jy`` (the local sigma), ``snr`` (arrays, sources inside the image only), and
        ``image``, ``noise`` (paths), ``beam_arcsec``, ``cell_arcsec``, ``mjd``.
    """
    rng = np.random.default_rng(seed)
    bmaj, bmin, bpa = (float(b) for b in beam_arcsec)
    if sources is None:
        sources = random_sources(n_sources, npix=npix, cell_arcsec=cell_arcsec, ra_deg=ra_deg, dec_deg=dec_deg,
                                 noise_jy=noise_jy, snr_range=snr_range, bmaj_arcsec=bmaj, seed=seed + 1)
    w4 = _wcs(npix, cell_arcsec, ra_deg, dec_deg, freq_hz)
    w = w4.celestial
    yy, xx = np.mgrid[0:npix, 0:npix].astype(np.float64)
    c = (npix - 1) / 2.0
    r2 = ((xx - c) ** 2 + (yy - c) ** 2) / (2 * c * c)
    sigma = noise_jy * (1.0 + noise_rise * r2)
    bmaj_px, bmin_px = bmaj / cell_arcsec, bmin / cell_arcsec
    img = sigma * correlated_noise((npix, npix), bmaj_px, bmin_px, bpa, rng)
    x, y = w.world_to_pixel_values(np.asarray(sources["ra_deg"], float), np.asarray(sources["dec_deg"], float))
    x, y = np.asarray(x), np.asarray(y)
    inside = np.isfinite(x) & (x >= 0) & (x <= npix - 1) & (y >= 0) & (y <= npix - 1)
    half = int(math.ceil(3 * bmaj_px))
    flux = np.asarray(sources["flux_jy"], float)
    for xs, ys, s in zip(x[inside], y[inside], flux[inside]):
        x0, x1 = max(int(xs) - half, 0), min(int(xs) + half + 1, npix)
        y0, y1 = max(int(ys) - half, 0), min(int(ys) + half + 1, npix)
        img[y0:y1, x0:x1] += s * beam_kernel(xx[y0:y1, x0:x1] - xs, yy[y0:y1, x0:x1] - ys, bmaj_px, bmin_px, bpa)
    hdr = w4.to_header()
    hdr["BMAJ"], hdr["BMIN"], hdr["BPA"] = bmaj / 3600.0, bmin / 3600.0, bpa
    hdr["BUNIT"] = "Jy/beam"
    hdr["DATE-OBS"] = date_obs
    hdr["MJD-OBS"] = float(Time(date_obs, scale="utc").mjd)
    hdr["ORIGIN"] = "dsacont.simulator.images"
    stem = os.fspath(out_path)[:-5] if os.fspath(out_path).endswith(".fits") else os.fspath(out_path)
    fits.PrimaryHDU(img.astype(np.float32).reshape(1, 1, npix, npix), hdr).writeto(stem + ".fits", overwrite=True)
    if write_noise_map:
        fits.PrimaryHDU(sigma.astype(np.float32).reshape(1, 1, npix, npix), hdr).writeto(stem + ".noise.fits",
                                                                                        overwrite=True)
    xi, yi = x[inside], y[inside]
    local = sigma[np.round(yi).astype(int), np.round(xi).astype(int)]
    truth = {"name": np.asarray(sources["name"])[inside], "ra_deg": np.asarray(sources["ra_deg"], float)[inside],
             "dec_deg": np.asarray(sources["dec_deg"], float)[inside], "flux_jy": flux[inside], "x": xi, "y": yi,
             "noise_jy": local, "snr": flux[inside] / local}
    with open(stem + ".truth.csv", "w", newline="") as fh:
        wr = csv.writer(fh)
        cols = ["name", "ra_deg", "dec_deg", "flux_jy", "x", "y", "noise_jy", "snr"]
        wr.writerow(cols)
        for i in range(len(xi)):
            wr.writerow([truth[k][i] for k in cols])
    truth.update(image=stem + ".fits", noise=stem + ".noise.fits" if write_noise_map else None,
                 beam_arcsec=(bmaj, bmin, bpa), cell_arcsec=cell_arcsec, mjd=hdr["MJD-OBS"])
    return truth


def variable_light_curves(mjd, n_steady, n_flare, n_dip, *, base_flux_jy=(0.02, 0.5), flare_amp=(0.5, 3.0),
                          flare_decay_days=(1.0, 3.0), dip_depth=(0.3, 0.6), dip_sigma_days=(1.5, 3.0), seed=0):
    """True fluxes of steady, flaring and ESE-dipping sources at the epochs ``mjd``.

    Flares and ESE-like dips follow :func:`dsacont.simulator.variables.light_curve`; a dip's centre
    is at least 2 w from the ends of the series. Base fluxes are log-uniform.

    Returns
    -------
    dict
        ``kind`` (N,) 'steady'/'flare'/'dip'; ``base_flux_jy`` (N,); ``flux_jy`` (N, T);
        ``t0_mjd``, ``amplitude`` (flare a or dip d), ``width_days`` (tau or w), NaN for steady ones.
    """
    rng = np.random.default_rng(seed)
    mjd = np.asarray(mjd, float)
    n = n_steady + n_flare + n_dip
    kind = np.array(["steady"] * n_steady + ["flare"] * n_flare + ["dip"] * n_dip)
    base = np.exp(rng.uniform(math.log(base_flux_jy[0]), math.log(base_flux_jy[1]), n))
    t0 = np.full(n, np.nan)
    amp = np.full(n, np.nan)
    width = np.full(n, np.nan)
    span = (mjd.min(), mjd.max())
    for i in range(n):
        if kind[i] == "flare":
            t0[i] = rng.uniform(span[0] + 0.2 * (span[1] - span[0]), span[0] + 0.7 * (span[1] - span[0]))
            amp[i], width[i] = rng.uniform(*flare_amp), rng.uniform(*flare_decay_days)
        elif kind[i] == "dip":
            width[i], amp[i] = rng.uniform(*dip_sigma_days), rng.uniform(*dip_depth)
            lo, hi = span[0] + 2 * width[i], span[1] - 2 * width[i]
            t0[i] = rng.uniform(lo, hi) if hi > lo else 0.5 * (span[0] + span[1])
    flux = light_curve(base, kind, t0, amp, width, mjd)
    return {"kind": kind, "base_flux_jy": base, "flux_jy": flux, "t0_mjd": t0, "amplitude": amp, "width_days": width}


def variable_epochs(out_dir, n_days, *, n_steady=60, n_flare=4, n_dip=4, npix=512, cell_arcsec=6.0,
                    beam_arcsec=(45.0, 33.0, 30.0), noise_jy=1e-3, start="2025-10-29T13:55:26",
                    base_flux_jy=(0.02, 0.5), seed=0, **lc_kwargs) -> dict:
    """Daily images of one field (the same LST on successive sidereal days) with variable sources.

    Each epoch is a :func:`sky_image` (with its noise map) ``out_dir/day<NN>.fits``, one sidereal
    day (0.99727 d) after the previous one; the sources keep their positions, their fluxes follow
    :func:`variable_light_curves`. The truth is written to ``out_dir/variables_truth.csv`` (one
    row per source: name, ra_deg, dec_deg, kind, base_flux_jy, t0_mjd, amplitude, width_days) and
    ``out_dir/variables_flux.npy`` (N, T).

    Returns
    -------
    dict
        ``images`` (paths), ``mjd`` (T,), ``name``, ``ra_deg``, ``dec_deg`` (N,), and
        :func:`variable_light_curves`'s arrays.
    """
    os.makedirs(out_dir, exist_ok=True)
    n = n_steady + n_flare + n_dip
    pos = random_sources(n, npix=npix, cell_arcsec=cell_arcsec, noise_jy=noise_jy, bmaj_arcsec=beam_arcsec[0],
                         seed=seed + 1000)
    t_start = Time(start, scale="utc")
    mjd = t_start.mjd + 0.99726957 * np.arange(n_days)
    lc = variable_light_curves(mjd, n_steady, n_flare, n_dip, base_flux_jy=base_flux_jy, seed=seed, **lc_kwargs)
    images = []
    for k in range(n_days):
        src = {"name": pos["name"], "ra_deg": pos["ra_deg"], "dec_deg": pos["dec_deg"], "flux_jy": lc["flux_jy"][:, k]}
        date = Time(mjd[k], format="mjd", scale="utc").isot
        t = sky_image(os.path.join(os.fspath(out_dir), f"day{k:02d}.fits"), sources=src, npix=npix,
                      cell_arcsec=cell_arcsec, beam_arcsec=beam_arcsec, noise_jy=noise_jy, date_obs=date,
                      seed=seed + 10 * k + 7)
        images.append(t["image"])
    with open(os.path.join(os.fspath(out_dir), "variables_truth.csv"), "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(["name", "ra_deg", "dec_deg", "kind", "base_flux_jy", "t0_mjd", "amplitude", "width_days"])
        for i in range(n):
            wr.writerow([pos["name"][i], pos["ra_deg"][i], pos["dec_deg"][i], lc["kind"][i], lc["base_flux_jy"][i],
                         lc["t0_mjd"][i], lc["amplitude"][i], lc["width_days"][i]])
    np.save(os.path.join(os.fspath(out_dir), "variables_flux.npy"), lc["flux_jy"])
    return dict(lc, images=images, mjd=mjd, name=pos["name"], ra_deg=pos["ra_deg"], dec_deg=pos["dec_deg"])
