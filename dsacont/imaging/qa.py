"""Quality assessment of images and mosaics.

- :func:`robust_rms`: noise from the median absolute deviation (1.4826 MAD), ignoring NaN.
- :func:`radiometer_noise`: the ideal Stokes-I image noise of a tile from the radiometer
  equation, and :func:`briggs_weighting_factor`, the noise penalty of Briggs weighting over natural.
- :func:`fit_source`: a 2D Gaussian fit (sub-pixel peak and position) around a sky position.
- :func:`find_sources`: a simple peak finder on a signal-to-noise map, and :func:`completeness`
  to score it against a true source list.
- :func:`tile_qa`: the QA record of one tclean tile (noise in the main lobe against the radiometer
  figure, peak, dynamic range, CASA's beam against ours), with :func:`calibrator_checks`, the fitted
  flux and position of every catalogue calibrator in the tile against the catalogue.

Conventions: images are 2D arrays indexed ``[y, x]`` (FITS order, 0-based pixels); a ``wcs`` is a
2D celestial ``astropy.wcs.WCS``; angles in degrees at this user-facing level; fluxes in Jy
(images in Jy/beam).
"""
from __future__ import annotations

import math

import numpy as np
from scipy import ndimage
from scipy.optimize import least_squares

from dsacont.calibrators import get_calibrator, load_catalogue
from dsacont.imaging.beam import band_samples
from dsacont.io.fits import beam_from_header, freq_from_header
from dsacont.telescope import airy_beam, angular_separation

SEFD_JY = 6000.0
# the tile noise is measured where the tile's effective beam is at least this
MAIN_LOBE_PB = 0.5


def robust_rms(data, mask=None) -> float:
    """1.4826 x median absolute deviation from the median, over finite (and ``mask``-True) pixels."""
    a = np.asarray(data, dtype=np.float64)
    sel = np.isfinite(a) if mask is None else (np.isfinite(a) & mask)
    v = a[sel]
    if v.size == 0:
        return float("nan")
    return float(1.4826 * np.median(np.abs(v - np.median(v))))


def radiometer_noise(n_vis_unflagged: float, channel_width_hz: float, integration_s: float,
                     sefd_jy: float = SEFD_JY, weighting_factor: float = 1.0) -> float:
    """Expected Stokes-I image noise (Jy/beam) from the radiometer equation.

    Each unflagged cross-correlation visibility of one polarisation product (XX or YY), one
    channel and one integration has a complex noise whose real part has
    ``sigma_vis = SEFD / sqrt(2 * dnu * tau)``; Stokes I = (XX + YY) / 2 averages them, so with
    natural weighting the image noise is ``SEFD / sqrt(2 * dnu * tau * N)``, N the number of
    unflagged single-polarisation visibilities (both pols counted). For 96 antennas (4560
    baselines), 768 x 244.14 kHz channels, 24 x 12.885 s and 2 pols this gives 0.185 mJy.

    Parameters
    ----------
    n_vis_unflagged : float
        Number of unflagged (baseline, time, channel, pol) cross-correlation samples.
    channel_width_hz : float
        Channel width of a sample, Hz.
    integration_s : float
        Integration time of a sample, s.
    sefd_jy : float
        System equivalent flux density per antenna, Jy (6000 Jy for DSA-110).
    weighting_factor : float
        Noise penalty of the imaging weights over natural (>= 1), see
        :func:`briggs_weighting_factor`.

    Returns
    -------
    float
        Stokes-I image noise, Jy/beam (inf without samples).
    """
    if n_vis_unflagged <= 0:
        return float("inf")
    return float(weighting_factor * sefd_jy / np.sqrt(2.0 * channel_width_hz * integration_s * n_vis_unflagged))


def briggs_weights(u_lambda, v_lambda, weights, cell_uv_lambda: float, robust: float) -> np.ndarray:
    """CASA-style Briggs imaging weights of uv samples.

    Grids the natural weights of all samples (and their Hermitian conjugates) on a uv grid of cell
    ``cell_uv_lambda`` (1 / field of view, radians), then ``w_i' = w_i / (1 + W_k f^2)`` with
    ``f^2 = (5 * 10**-robust)**2 / (sum_k W_k^2 / sum_i w_i)``, ``W_k`` the gridded weight of the
    sample's cell. Returns ``w'`` (same length as the inputs).
    """
    w = np.asarray(weights, dtype=np.float64)
    iu = np.rint(np.asarray(u_lambda, dtype=np.float64) / cell_uv_lambda).astype(np.int64)
    iv = np.rint(np.asarray(v_lambda, dtype=np.float64) / cell_uv_lambda).astype(np.int64)
    if not iu.size:
        return np.zeros(0)
    mu, mv = int(np.abs(iu).max()), int(np.abs(iv).max())
    nu, nv = 2 * mu + 1, 2 * mv + 1
    if nu * nv <= max(8 * iu.size, 1 << 20):
        # a dense grid centred on the origin, where a sample's conjugate cell is the mirror index
        # (nu nv - 1 - k): no sort, and the conjugates are never made (a full-size tile: 7 M
        # samples on 2100 x 2000 cells)
        cell = (iu + mu) * nv + (iv + mv)
        W = np.bincount(cell, weights=w, minlength=nu * nv)
        W += W[::-1]
        Wc = W[cell]
    else:  # a grid much larger than the sample: the distinct cells of the samples and conjugates
        _, inv = np.unique(np.concatenate([iu * (1 << 32) + iv, -iu * (1 << 32) - iv]), return_inverse=True)
        W = np.bincount(inv, weights=np.concatenate([w, w]))
        Wc = W[inv[: iu.size]]
    f2 = (5.0 * 10.0 ** (-robust)) ** 2 / (float(np.dot(W, W)) / (2.0 * np.sum(w)))
    return w / (1.0 + Wc * f2)


def briggs_weighting_factor(u_lambda, v_lambda, weights, cell_uv_lambda: float, robust: float) -> float:
    """Noise penalty of Briggs (robust) weighting relative to natural weighting (>= 1).

    With Briggs weights ``w'`` (:func:`briggs_weights`) and natural weights ``w`` (inverse
    variances), the image noise ratio is ``sqrt(sum(w'^2 / w) * sum(w)) / sum(w')``.

    Parameters
    ----------
    u_lambda, v_lambda : array, shape (Nsample,)
        uv coordinates, wavelengths.
    weights : array, shape (Nsample,)
        Natural weight of each sample (e.g. count of unflagged visibilities).
    cell_uv_lambda : float
        uv cell size, wavelengths (1 / image field of view in radians).
    robust : float
        Briggs robust parameter.

    Returns
    -------
    float
        Noise ratio Briggs / natural.
    """
    w = np.asarray(weights, np.float64)
    ok = w > 0
    u, v, w = np.asarray(u_lambda)[ok], np.asarray(v_lambda)[ok], w[ok]
    wp = briggs_weights(u, v, w, cell_uv_lambda, robust)
    var_b = np.sum(wp * wp / w) / np.sum(wp) ** 2
    var_n = 1.0 / np.sum(w)
    return float(np.sqrt(var_b / var_n))


def psf_fwhm_arcsec(u_lambda, v_lambda, weights, cell_uv_lambda: float, robust: float,
                    n: int = 200, max_samples: int = 100_000) -> tuple[float, float]:
    """FWHM (arcsec) of the main lobe of the Briggs-weighted PSF along its narrowest and widest
    directions, computed directly from a uv sample (a 1-D DFT along each direction).

    The directions are the eigenvectors of the weighted uv covariance; along each, the PSF
    ``P(r) = sum w' cos(2 pi (u, v) . e r) / sum w'`` is evaluated on ``n`` radii and the first
    crossing of 0.5 found. Returns ``(minor, major)`` (the smaller and the larger of the two). Used to pick the image cell: DSA-110's PSF is
    a narrow core on a broad pedestal, and the longest baseline alone does not say how wide the
    main lobe (and CASA's restoring beam) will be.
    """
    w0 = np.asarray(weights, np.float64)
    ok = w0 > 0
    u, v, w0 = np.asarray(u_lambda, float)[ok], np.asarray(v_lambda, float)[ok], w0[ok]
    if u.size == 0:
        return float("nan"), float("nan")
    wp = briggs_weights(u, v, w0, cell_uv_lambda, robust)
    if u.size > max_samples:  # a fixed random subset is plenty for the main lobe
        pick = np.random.default_rng(0).choice(u.size, max_samples, replace=False)
        u, v, wp = u[pick], v[pick], wp[pick]
    cov = np.cov(np.stack([u, v]), aweights=wp)
    _, vecs = np.linalg.eigh(cov)
    out = []
    r_max = 1.0 / max(1e-9, np.sqrt(np.min(np.diag(cov)))) * 2.0
    for k in (1, 0):  # largest uv extent -> narrowest PSF direction first
        e = vecs[:, k]
        proj = u * e[0] + v * e[1]
        reach = 1.5 / max(np.abs(proj).max(), 1e-9)
        radii = np.linspace(0.0, min(r_max, 50 * reach), n)
        p = np.array([np.sum(wp * np.cos(2 * np.pi * proj * r)) for r in radii]) / np.sum(wp)
        below = np.nonzero(p < 0.5)[0]
        if below.size == 0:
            out.append(float("nan"))
            continue
        i = int(below[0])
        r_half = radii[i - 1] + (radii[i] - radii[i - 1]) * (p[i - 1] - 0.5) / (p[i - 1] - p[i])
        out.append(float(np.degrees(2.0 * r_half) * 3600.0))
    return min(out), max(out)


def _gauss2d(p, x, y):
    amp, x0, y0, sx, sy, th = p
    ct, st = np.cos(th), np.sin(th)
    xr = (x - x0) * ct + (y - y0) * st
    yr = -(x - x0) * st + (y - y0) * ct
    return amp * np.exp(-0.5 * ((xr / sx) ** 2 + (yr / sy) ** 2))


def fit_source(image, wcs, ra_deg: float, dec_deg: float, *, box_px: int = 15, beam_px: float = 4.0) -> dict | None:
    """Fit a 2D elliptical Gaussian around (ra, dec) and return its peak and position.

    The box (``2 * box_px + 1`` pixels) is centred on the brightest pixel within ``beam_px`` of
    the requested position. Returns None when the position is off the image.

    Returns
    -------
    dict
        ``peak`` (image units, the fitted Gaussian amplitude), ``ra_deg``, ``dec_deg`` (fitted
        centre), ``x``, ``y`` (0-based pixels), ``offset_arcsec`` (from the requested position),
        ``sigma_px`` (major, minor), ``pixel_peak`` (brightest pixel value).
    """
    img = np.asarray(image, dtype=np.float64)
    ny, nx = img.shape
    x0, y0 = wcs.world_to_pixel_values(ra_deg, dec_deg)
    x0, y0 = float(x0), float(y0)
    if not (0 <= x0 < nx and 0 <= y0 < ny):
        return None
    r = max(1, int(np.ceil(beam_px)))
    ix, iy = int(round(x0)), int(round(y0))
    ys, xs = slice(max(iy - r, 0), min(iy + r + 1, ny)), slice(max(ix - r, 0), min(ix + r + 1, nx))
    sub = np.nan_to_num(img[ys, xs], nan=-np.inf)
    jy, jx = np.unravel_index(np.argmax(sub), sub.shape)
    cy, cx = ys.start + jy, xs.start + jx
    y1, y2 = max(cy - box_px, 0), min(cy + box_px + 1, ny)
    x1, x2 = max(cx - box_px, 0), min(cx + box_px + 1, nx)
    box = img[y1:y2, x1:x2]
    yy, xx = np.mgrid[y1:y2, x1:x2]
    good = np.isfinite(box)
    pk = float(img[cy, cx])
    # fit only the main lobe: pixels within ~1.5 beam of the peak
    near = good & (np.hypot(xx - cx, yy - cy) <= 1.5 * beam_px)
    s0 = max(beam_px / 2.3548, 0.7)

    def resid(p):
        return (_gauss2d(p, xx[near], yy[near]) - box[near])

    p0 = [pk, float(cx), float(cy), s0, s0, 0.0]
    res = least_squares(resid, p0, x_scale=[abs(pk) or 1.0, 1, 1, s0, s0, 1], method="lm")
    amp, fx, fy, sx, sy, _ = res.x
    if not (x1 <= fx < x2 and y1 <= fy < y2):
        fx, fy, amp = float(cx), float(cy), pk
    ra_f, dec_f = wcs.pixel_to_world_values(fx, fy)
    off = np.degrees(angular_separation(np.radians(ra_deg), np.radians(dec_deg), np.radians(float(ra_f)),
                                        np.radians(float(dec_f)))) * 3600.0
    return {
        "peak": float(amp), "ra_deg": float(ra_f), "dec_deg": float(dec_f), "x": float(fx), "y": float(fy),
        "offset_arcsec": float(off), "sigma_px": [float(max(abs(sx), abs(sy))), float(min(abs(sx), abs(sy)))],
        "pixel_peak": pk,
    }


def find_sources(image, wcs, noise, *, nsigma: float = 5.0, beam_px: float = 4.0, pb=None,
                 pb_min: float = 0.0) -> list[dict]:
    """Find point sources: local maxima of ``image / noise`` above ``nsigma``.

    Parameters
    ----------
    image : array, shape (ny, nx)
        Image, Jy/beam (flat-noise or PB-corrected).
    wcs : astropy.wcs.WCS
        Celestial WCS of the image.
    noise : float or array, shape (ny, nx)
        Noise, Jy/beam.
    nsigma : float
        Detection threshold on ``image / noise``.
    beam_px : float
        Synthesized beam FWHM, pixels (sets the exclusion radius of the peak search).
    pb : array, shape (ny, nx), optional
        Primary beam; when given, ``flux = peak / pb`` and pixels with ``pb < pb_min`` are ignored.
    pb_min : float
        See ``pb``.

    Returns
    -------
    list of dict, brightest first: ``ra_deg``, ``dec_deg``, ``x``, ``y`` (sub-pixel by a
    parabola through the peak and its neighbours), ``peak`` (image units), ``snr``, ``flux``.
    """
    img = np.asarray(image, dtype=np.float64)
    snr = img / noise
    valid = np.isfinite(snr)
    if pb is not None:
        valid &= np.asarray(pb) >= max(pb_min, 1e-6)
    snr = np.where(valid, snr, -np.inf)
    size = max(3, int(2 * np.ceil(beam_px) + 1))
    peaks = (snr == ndimage.maximum_filter(snr, size=size, mode="constant", cval=-np.inf)) & (snr >= nsigma)
    ys, xs = np.nonzero(peaks)
    out = []
    ny, nx = img.shape
    for y, x in zip(ys, xs):
        fx, fy = float(x), float(y)
        if 0 < x < nx - 1 and np.isfinite(img[y, x - 1]) and np.isfinite(img[y, x + 1]):
            a, b, c = img[y, x - 1], img[y, x], img[y, x + 1]
            d = a - 2 * b + c
            if d < 0:
                fx += 0.5 * (a - c) / d
        if 0 < y < ny - 1 and np.isfinite(img[y - 1, x]) and np.isfinite(img[y + 1, x]):
            a, b, c = img[y - 1, x], img[y, x], img[y + 1, x]
            d = a - 2 * b + c
            if d < 0:
                fy += 0.5 * (a - c) / d
        ra, dec = wcs.pixel_to_world_values(fx, fy)
        flux = float(img[y, x]) / float(pb[y, x]) if pb is not None else float(img[y, x])
        out.append({"ra_deg": float(ra), "dec_deg": float(dec), "x": fx, "y": fy, "peak": float(img[y, x]),
                    "snr": float(snr[y, x]), "flux": flux})
    out.sort(key=lambda d: -d["snr"])
    return out


def completeness(found: list[dict], truth_ra_deg, truth_dec_deg, truth_snr, *, snr_min: float = 10.0,
                 match_arcsec: float = 20.0) -> dict:
    """Fraction of true sources with expected S/N above ``snr_min`` that were found.

    Parameters
    ----------
    found : list of dict
        Output of :func:`find_sources`.
    truth_ra_deg, truth_dec_deg : array, shape (Nsrc,)
        True positions, degrees.
    truth_snr : array, shape (Nsrc,)
        Each source's expected S/N in the image (true flux x PB / noise).
    snr_min : float
        Score only sources expected above this S/N.
    match_arcsec : float
        Match radius, arcsec (about one synthesized beam).

    Returns ``{"n_expected", "n_found", "completeness", "median_offset_arcsec"}``.
    """
    tra = np.radians(np.asarray(truth_ra_deg, float))
    tde = np.radians(np.asarray(truth_dec_deg, float))
    sel = np.asarray(truth_snr, float) >= snr_min
    if not found or not sel.any():
        return {"n_expected": int(sel.sum()), "n_found": 0, "completeness": float("nan") if not sel.any() else 0.0,
                "median_offset_arcsec": float("nan")}
    fra = np.radians([f["ra_deg"] for f in found])
    fde = np.radians([f["dec_deg"] for f in found])
    n_found, offs = 0, []
    for ra, de in zip(tra[sel], tde[sel]):
        d = np.degrees(angular_separation(ra, de, fra, fde)) * 3600.0
        j = int(np.argmin(d))
        if d[j] <= match_arcsec:
            n_found += 1
            offs.append(d[j])
    return {"n_expected": int(sel.sum()), "n_found": n_found, "completeness": n_found / int(sel.sum()),
            "median_offset_arcsec": float(np.median(offs)) if offs else float("nan")}


def tile_qa(info: dict, image, residual, pb, hdr, wcs2d, *, robust: float, imsize: int, cell_arcsec: float,
            calibrators="auto", casa_pb=None, centre=None) -> dict:
    """QA of one tile: noise vs radiometer expectation, peak, dynamic range, calibrator check.

    Parameters
    ----------
    info : dict
        From :func:`dsacont.imaging.tclean.inspect_ms` (uv sample, channel widths, counts).
    image, residual, pb : arrays, shape (ny, nx)
        Restored image and residual (Jy/beam, flat noise) and the tile's effective beam (0..1).
    hdr : astropy.io.fits.Header
        The image header (restoring beam, frequency).
    wcs2d : astropy.wcs.WCS
        Celestial WCS of the image.
    robust : float
        Briggs robust parameter used.
    imsize : int
        Image side, pixels.
    cell_arcsec : float
        Cell, arcsec.
    calibrators : 'auto', list of str, or None
        Calibrators to check (:func:`calibrator_checks`).
    casa_pb : array, shape (ny, nx), optional
        CASA's single-pointing beam from the vptable, compared with
        :func:`dsacont.telescope.airy_beam` and the effective beam.
    centre : tuple (ra, dec), radians, optional
        Image centre, for that comparison.

    Returns
    -------
    dict
        ``noise_jy`` (robust RMS of the residual in the tile's main lobe, effective beam >= 0.5;
        ``noise_image_jy`` over the inner 90 % of the image), ``radiometer_jy`` (expected, with
        ``weighting_factor`` and the flags), ``noise_ratio``, ``peak_jy`` (image peak, flat-noise),
        ``dynamic_range``, ``flagged_fraction``, ``n_ant``, ``beam_px``, ``casa_pb_max_abs_diff``
        (CASA's vptable beam vs telescope.airy_beam at the image frequency, where the beam > 0.2),
        and ``calibrators``: per calibrator in the field, the fitted PB-corrected ``flux_jy``, the
        catalogue ``expected_jy`` (band-averaged over the tile beam), ``ratio``, ``offset_arcsec``
        and ``offset_beams``.
    """
    ny, nx = residual.shape
    b = max(1, int(0.05 * nx))
    inner = np.zeros(residual.shape, bool)
    inner[b:ny - b, b:nx - b] = True
    # the noise of the tile is measured in its main lobe (effective beam >= 0.5), the same sky area
    # whatever the image size: a larger field adds low-beam area with few sources (less
    # deconvolution error), which would flatter a figure taken over the whole image
    main = inner & (np.asarray(pb) >= MAIN_LOBE_PB)
    noise_image = robust_rms(residual, inner)
    noise = robust_rms(residual, main) if main.sum() >= 1000 else noise_image
    npix = int(imsize)
    cell_uv = 1.0 / (npix * math.radians(cell_arcsec / 3600.0))
    wfac = briggs_weighting_factor(info["uv_u"], info["uv_v"], info["uv_w"], cell_uv, robust) \
        if len(info["uv_u"]) else 1.0
    dnu = float(np.median(info["chan_width"]))
    expected = radiometer_noise(info["n_vis_unflagged"], dnu, info["interval"], weighting_factor=wfac)
    peak = float(np.nanmax(image))
    beam = beam_from_header(hdr)
    beam_px = math.sqrt(beam["bmaj_arcsec"] * beam["bmin_arcsec"]) / cell_arcsec
    out = {
        "noise_jy": noise, "noise_image_jy": noise_image, "noise_region": f"pb >= {MAIN_LOBE_PB}",
        "radiometer_jy": expected, "radiometer_natural_jy": expected / wfac,
        "noise_ratio": noise / expected, "weighting_factor": wfac, "peak_jy": peak,
        "dynamic_range": peak / noise if noise > 0 else float("nan"),
        "flagged_fraction": info["flagged_fraction"], "n_ant": info["n_ant"], "beam_px": beam_px,
        "n_channels": int(len(info["freqs"])), "n_times": int(len(info["times"])),
    }
    if casa_pb is not None and centre is not None:
        yy, xx = np.mgrid[0:ny:8, 0:nx:8]
        ra, dec = wcs2d.pixel_to_world_values(xx, yy)
        sep = angular_separation(centre[0], centre[1], np.radians(ra), np.radians(dec))
        model = airy_beam(sep, freq_from_header(hdr))
        cp = casa_pb[::8, ::8]
        sel = (model > 0.2) & np.isfinite(cp)
        out["casa_pb_max_abs_diff"] = float(np.max(np.abs(cp[sel] - model[sel]))) if sel.any() else float("nan")
        out["pb_drift_band_vs_casa_centre"] = float(pb[ny // 2, nx // 2] / casa_pb[ny // 2, nx // 2])
    if calibrators:
        out["calibrators"] = calibrator_checks(image, pb, wcs2d, info, cell_arcsec, beam, calibrators)
    return out


def calibrator_checks(image, pb, wcs2d, info, cell_arcsec, beam, calibrators="auto", *,
                      pb_min: float = 0.3) -> list[dict]:
    """Fit every catalogue calibrator in the field (beam >= ``pb_min``) and compare with the catalogue.

    ``expected_jy`` is the catalogue spectrum averaged over the tile's channels and weighted by the
    beam at each frequency, divided by the band-averaged beam (what a PB-corrected MFS image of
    that source should show).

    Parameters
    ----------
    image, pb : arrays, shape (ny, nx)
        Flat-noise image (Jy/beam) and effective beam (0..1).
    wcs2d : astropy.wcs.WCS
        Celestial WCS of the image.
    info : dict
        From :func:`dsacont.imaging.tclean.inspect_ms` (``freqs``, ``chan_unflagged``).
    cell_arcsec : float
        Cell, arcsec.
    beam : dict
        Restoring beam, :func:`dsacont.io.fits.beam_from_header`.
    calibrators : 'auto' or list of str
        Every catalogue calibrator, or these names.
    pb_min : float
        Only calibrators where the beam reaches this.

    Returns
    -------
    list of dict
        Per calibrator: ``name``, ``ra_deg``, ``dec_deg``, ``pb``, ``detected``, ``flux_jy``,
        ``expected_jy``, ``ratio``, ``offset_arcsec``, ``offset_beams``, ``fit_ra_deg``,
        ``fit_dec_deg``.
    """
    cals = load_catalogue() if calibrators == "auto" else [get_calibrator(n) for n in calibrators]
    ny, nx = image.shape
    beam_px = math.sqrt(beam["bmaj_arcsec"] * beam["bmin_arcsec"]) / cell_arcsec
    out = []
    for cal in cals:
        if not np.isfinite(cal.flux_jy):
            continue
        x, y = wcs2d.world_to_pixel_values(cal.ra_deg, cal.dec_deg)
        if not (np.isfinite(x) and 3 <= x < nx - 3 and 3 <= y < ny - 3):
            continue
        a = float(pb[int(round(float(y))), int(round(float(x)))])
        if a < pb_min:
            continue
        fit = fit_source(image, wcs2d, cal.ra_deg, cal.dec_deg, beam_px=beam_px, box_px=int(max(6, 3 * beam_px)))
        if fit is None:
            continue
        a_fit = float(pb[int(round(fit["y"])), int(round(fit["x"]))])
        fq, fw = band_samples(info["freqs"], info["chan_unflagged"], 64)
        expected = float(np.sum(fw * cal.flux_at(fq)) / np.sum(fw))
        flux = fit["peak"] / a_fit
        out.append({
            "name": cal.name, "ra_deg": cal.ra_deg, "dec_deg": cal.dec_deg, "pb": a_fit,
            "detected": bool(fit["peak"] > 0.5 * expected * a_fit
                             and fit["offset_arcsec"] < 0.5 * beam["bmaj_arcsec"]),
            "flux_jy": flux, "expected_jy": expected, "ratio": flux / expected,
            "offset_arcsec": fit["offset_arcsec"],
            "offset_beams": fit["offset_arcsec"] / beam["bmaj_arcsec"],
            "fit_ra_deg": fit["ra_deg"], "fit_dec_deg": fit["dec_deg"],
        })
    return out


#: a tile whose main-lobe noise exceeds this multiple of the radiometer equation is kept out of mosaics
MAX_NOISE_RATIO = 3.0
#: ... or whose dynamic range (peak / noise) is below this (a tile of noise, or a broken image)
MIN_DYNAMIC_RANGE = 10.0
#: ... or in which a detected catalogue calibrator in the main lobe is off its catalogue flux by more
#: than this fraction (ratio outside [1 - x, 1 / (1 - x)])
MAX_FLUX_RATIO_ERROR = 0.35
#: the flux-ratio gate looks only at calibrators where the tile's beam reaches this
GATE_MIN_PB = 0.5


def tile_gates(qa: dict, *, max_noise_ratio: float = MAX_NOISE_RATIO, min_dynamic_range: float = MIN_DYNAMIC_RANGE,
               max_flux_ratio_error: float = MAX_FLUX_RATIO_ERROR) -> list[str]:
    """Why a tile must be kept out of a mosaic (empty: it may go in), from its QA record.

    Parameters
    ----------
    qa : dict
        :func:`tile_qa`'s record (as stored with the image). Missing figures are not judged (a
        tile made without QA passes); a figure that is present but not finite fails.
    max_noise_ratio : float
        ``noise_ratio`` (main-lobe noise / radiometer equation) above this fails.
    min_dynamic_range : float
        ``dynamic_range`` below this fails.
    max_flux_ratio_error : float
        A calibrator of ``qa["calibrators"]`` that is detected where the beam is at least
        :data:`GATE_MIN_PB` with a flux ratio outside [1 - x, 1 / (1 - x)] fails (a calibrator
        not detected is not held against the tile: the sky model may lack it).

    Returns
    -------
    list of str, one sentence per failed gate.
    """
    out = []
    qa = qa or {}
    r = qa.get("noise_ratio")
    if r is not None and not (np.isfinite(r) and r <= max_noise_ratio):
        out.append(f"noise {r:.2f}x the radiometer equation (> {max_noise_ratio:g})")
    dr = qa.get("dynamic_range")
    if dr is not None and not (np.isfinite(dr) and dr >= min_dynamic_range):
        out.append(f"dynamic range {dr:.1f} (< {min_dynamic_range:g})")
    lo, hi = 1.0 - max_flux_ratio_error, 1.0 / (1.0 - max_flux_ratio_error)
    for c in qa.get("calibrators") or []:
        if c.get("detected") and (c.get("pb") or 0.0) >= GATE_MIN_PB:
            ratio = c.get("ratio")
            if ratio is None or not (np.isfinite(ratio) and lo <= ratio <= hi):
                out.append(f"{c.get('name')} at {float(ratio if ratio is not None else 'nan'):.2f}x its "
                           f"catalogue flux (outside {lo:.2f}-{hi:.2f})")
    return out
