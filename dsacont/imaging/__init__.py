"""Imaging one calibrated Measurement Set (one 5-minute tile) with CASA tclean.

``image_ms`` makes, for one MS, four FITS files in the images directory::

    <name>.image.fits     restored Stokes-I image, flat noise (NOT primary-beam corrected), Jy/beam
    <name>.pb.fits        the tile's effective primary beam A(ra, dec) (0..1)
    <name>.pbcor.fits     image / pb (blank where pb < pbcor_limit), Jy/beam = Jy for point sources
    <name>.residual.fits  residual after cleaning, Jy/beam
    <name>.qa.json        noise, peak, dynamic range, radiometer expectation, calibrator check

All carry BMAJ/BMIN/BPA (degrees), the frequency axis (CRVAL3 = reference frequency, Hz) and a
SIN-projection WCS centred on the MS phase centre (CASA's exportfits).

Choices (and the speed/quality trade-off)
-----------------------------------------
- **Cell**: ``cell = c / (f_max * B_max) / cells_per_beam``, ``cells_per_beam = 3``: the fringe
  spacing of the longest unflagged baseline at the top of the band over 3, and at most the PSF main
  lobe's narrowest FWHM over 3.5 (estimated from the uv coverage, :func:`dsacont.imaging.qa.psf_fwhm_arcsec`;
  on a compact small-preset layout the main lobe is only ~0.7 fringe spacings wide and 2 pixels
  across it cost 2.4 % of an off-pixel source's peak; on the full array the core's estimated
  16.6" FWHM gives 4.75" cells instead of 5.56"). The cost of a
  tile is dominated by gridding (per visibility, not per pixel), then by FFTs and Hogbom minor
  cycles (per pixel).
- **Field**: ``fov_deg = 5`` (the drift-averaged Airy beam is ~0.1 at the edge at 1.4 GHz): sources
  in the outer beam are deconvolved instead of leaving their sidelobes (the T-shaped array's PSF
  has long linear sidelobes) across the tile. On demo tile 13:45 (0834+555 flattened, 3 sigma)
  3.5 deg left the residual RMS 1.46x the radiometer equation, 5 deg 1.25x. The image side is rounded up to a
  2^a 3^b 5^c size. Full array: 3840^2 x 4.75" (664 s per tile here, 11.4 GB peak RSS: pass
  ``fov_deg=3.5`` / ``cell_arcsec`` to trade noise for speed); small preset ~1080^2 x 17" (~55 s).
- **Weighting**: Briggs, robust 0. The radiometer expectation includes the Briggs noise factor
  (computed from the MS's uv coverage; agrees with CASA's "theoretical sensitivity" to 2 %).
- **Gridder / w-term**: DSA-110 is nearly coplanar and phased near the meridian ~18 deg from
  zenith, so ``w = a u + b v + w_res`` with ``b ~ 0.33`` and ``w_res`` a few metres (station heights
  and the 5-minute drift). The plane part is not a defocus but a coordinate distortion: a 2-D
  (standard) gridder puts a source at ``(l - a(1 - n), m - b(1 - n))``, which is exactly FITS's
  slant orthographic projection SIN with ``PV2_1 = -a``, ``PV2_2 = -b`` (Calabretta & Greisen 2002,
  5.1.5). So the fast 'standard' gridder is used and the exported WCS carries PV2_1/PV2_2
  (astropy/wcslib, ds9 and the mosaic honour them). Measured: ignoring w costs 10.3 rad of phase
  at the field edge on the full array; after the plane fit 0.28 rad (0.11 rad small preset).
  ``gridder="auto"`` falls back to 'wproject' (CASA's automatic w-planes, ~5-10x slower) only when
  the residual phase exceeds ``wterm_tolerance_rad`` (1 rad).
- **Bright sources**: the drifting-beam modulation of bright catalogue sources (0834+555 and any
  VLA calibrator above 0.1 Jy apparent within 5 deg) is flattened in CORRECTED_DATA before tclean
  and restored afterwards (:mod:`dsacont.imaging.flatten`): tclean's fixed point components cannot follow
  a source whose beam gain changes by up to ~30 % during the tile. Small-preset demo tile 13:45
  (0834+555 1.4 deg east of centre): 5.4x the radiometer noise with the old settings (3.5 deg,
  4 sigma, no flattening), 2.8x with flattening alone, 1.25x with the field and depth below.
- **Deconvolution**: Hogbom (exact PSF in the minor cycle), cleaning the whole image
  (``clean_border=0``) until the peak residual is below ``threshold_nsigma`` (2.5) x the robust
  RMS of the residual, which tclean measures itself every major cycle (``nsigma``), at most
  ``nmajor`` (10) major cycles, ``cyclefactor=0.5`` (the snapshot PSF has ~0.45 near sidelobes;
  CASA's default needed 13 major cycles). Deeper cleaning removes the sidelobes of the many
  faint field sources: on the demo tile 13:45 (5 deg field, 0834+555 flattened) the residual RMS
  over the image was 1.45x the radiometer figure at 4 sigma, 1.25x at 3 sigma; on the transit
  tile 13:55 (main lobe) 1.41x at 3 sigma, 1.28x at 2.5 sigma, 1.25x at 2 sigma.
- **Primary beam**: CASA has no DSA-110 beam (the MS says OVRO_MMA, 10.4 m dishes), so tclean gets
  an explicit Airy vptable for a 4.65 m unblocked dish (``vpmanager.setpbairy``); its ``.pb`` is
  checked against :func:`dsacont.telescope.airy_beam` (QA ``casa_pb_max_abs_diff``, ~0.005). But a
  5-minute tile *drifts*: the dishes stay at fixed az/el while the sky moves ~0.7 deg, and the
  band spans 1.31-1.50 GHz; a single-pointing, single-frequency beam is ~1.5 % wrong even at the
  tile centre. So the exported ``pb.fits`` is the tile's effective beam: the Airy power pattern
  averaged over the integrations (pointing = the az/el of the phase centre at mid-time, converted
  to ICRS at each time) and over the unflagged channels. ``pbcor = image / pb``.
- **Noise**: QA ``noise_jy`` is the robust RMS of the residual in the tile's main lobe (effective
  beam >= 0.5: the same sky whatever the field size), ``noise_image_jy`` over the inner 90 % of the
  image; ``thermal_noise=True`` also measures the thermal noise on a dirty Stokes-Q image. Cleaning
  to 2.5 sigma removes some noise peaks too, so the residual RMS can read slightly below the
  radiometer figure on quiet tiles.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np

from dsacont.errors import BadInputError
from dsacont.jsonio import json_default

log = logging.getLogger(__name__)

C_M_S = 299_792_458.0
DEFAULT_FOV_DEG = 5.0
DEFAULT_CELLS_PER_BEAM = 3.0
PIXELS_PER_MINOR_AXIS = 3.5
DEFAULT_NITER = 20000
DEFAULT_NSIGMA = 2.5
DEFAULT_NMAJOR = 10
WTERM_TOLERANCE_RAD = 1.0
PBCOR_LIMIT = 0.05
MAIN_LOBE_PB = 0.5


# ------------------------------------------------------------------------------------------------
# MS inspection
# ------------------------------------------------------------------------------------------------
def inspect_ms(ms_path, *, datacolumn: str = "corrected", uv_channels: int = 64, chunk_rows: int = 20000) -> dict:
    """What imaging needs to know about an MS, read with casatools (no data column is read).

    Returns a dict: ``phase_dirs`` (nfield, 2) rad ICRS/J2000, ``telescope``, ``freqs`` (Hz,
    all channels of all SPWs, ascending), ``chan_width`` (Hz, per channel), ``times`` (unique TIME,
    s since MJD 0), ``interval`` (s), ``start_mjd``, ``end_mjd``, ``max_baseline_m`` (longest
    unflagged cross-correlation uv distance), ``max_w_m``, ``n_ant``, ``n_vis_unflagged`` (cross-
    correlation single-pol samples), ``flagged_fraction`` (of cross-correlations),
    ``chan_unflagged`` (per-channel counts, for the PB band average), and a channel-subsampled uv
    sample (``uv_u``, ``uv_v`` wavelengths, ``uv_w`` weights) for the Briggs noise factor.
    """
    ct = _casatools()
    ms_path = str(ms_path)
    if not os.path.isdir(ms_path) or not os.path.exists(os.path.join(ms_path, "table.dat")):
        raise BadInputError(ms_path, "not a Measurement Set directory (no table.dat)")
    tb = ct.table()
    try:
        tb.open(ms_path + "/FIELD")
        phase_dirs = np.asarray(tb.getcol("PHASE_DIR"))[:, 0, :].T  # (nfield, 2)
        tb.close()
        tb.open(ms_path + "/OBSERVATION")
        telescope = str(tb.getcol("TELESCOPE_NAME")[0])
        tb.close()
        tb.open(ms_path + "/SPECTRAL_WINDOW")
        nspw = tb.nrows()
        spw_freqs = [np.asarray(tb.getcell("CHAN_FREQ", i), float) for i in range(nspw)]
        spw_widths = [np.abs(np.asarray(tb.getcell("CHAN_WIDTH", i), float)) for i in range(nspw)]
        tb.close()
        tb.open(ms_path + "/DATA_DESCRIPTION")
        dd_spw = np.asarray(tb.getcol("SPECTRAL_WINDOW_ID"))
        tb.close()

        tb.open(ms_path)
        colnames = tb.colnames()
        want = {"corrected": "CORRECTED_DATA", "data": "DATA", "model": "MODEL_DATA"}[datacolumn.lower()]
        if want not in colnames:
            raise BadInputError(ms_path, f"has no {want} column (datacolumn={datacolumn!r}); "
                                         f"calibrate it first or image datacolumn='data'")
        nrow = tb.nrows()
        if nrow == 0:
            raise BadInputError(ms_path, "has no rows")
        times = np.asarray(tb.getcol("TIME"))
        interval = np.asarray(tb.getcol("INTERVAL"))
        a1 = np.asarray(tb.getcol("ANTENNA1"))
        a2 = np.asarray(tb.getcol("ANTENNA2"))
        ddid = np.asarray(tb.getcol("DATA_DESC_ID"))
        uvw = np.asarray(tb.getcol("UVW")).T  # (nrow, 3)
        cross = a1 != a2
        # per-SPW channel subsample for the uv-density estimate
        n_tot = 0
        n_unfl = 0.0
        chan_unfl = [np.zeros(len(f)) for f in spw_freqs]
        row_unfl = np.zeros(nrow)
        uu, vv, ww = [], [], []
        nchan_all = sum(len(f) for f in spw_freqs)
        step_all = max(1, int(round(nchan_all / max(uv_channels, 1))))
        for start in range(0, nrow, chunk_rows):
            n = min(chunk_rows, nrow - start)
            flag = np.asarray(tb.getcol("FLAG", start, n))  # (npol, nchan, n) — one DDID shape assumed
            sl = slice(start, start + n)
            c = cross[sl]
            good = ~flag  # (npol, nchan, n)
            cnt = good.sum(axis=0)  # (nchan, n) pols unflagged
            n_tot += flag[:, :, c].size
            n_unfl += float(cnt[:, c].sum())
            row_unfl[sl] = cnt.sum(axis=0)
            for spw in np.unique(dd_spw[ddid[sl]]):
                rows = c & (dd_spw[ddid[sl]] == spw)
                if not rows.any():
                    continue
                chan_unfl[spw] += cnt[:, rows].sum(axis=1)
                f = spw_freqs[spw]
                idx = np.arange(step_all // 2, len(f), step_all) if len(f) > step_all else np.array([len(f) // 2])
                scale = len(f) / len(idx)
                u_r = uvw[sl][rows]
                for j in idx:
                    lam = C_M_S / f[j]
                    uu.append(u_r[:, 0] / lam)
                    vv.append(u_r[:, 1] / lam)
                    ww.append(cnt[j, rows] * scale)
    finally:
        tb.close()
        tb.done()

    live = cross & (row_unfl > 0)
    if not live.any():
        raise BadInputError(ms_path, "every cross-correlation is flagged")
    uvdist = np.hypot(uvw[live, 0], uvw[live, 1])
    # the array is nearly coplanar: w ~ a u + b v; what is left is the real w-term
    A = uvw[live, :2]
    plane, *_ = np.linalg.lstsq(A, uvw[live, 2], rcond=None)
    w_res = uvw[live, 2] - A @ plane
    freqs = np.concatenate(spw_freqs)
    widths = np.concatenate(spw_widths)
    order = np.argsort(freqs, kind="stable")
    tu = np.unique(times)
    half = 0.5 * float(np.median(interval))
    ants = np.unique(np.concatenate([a1[live], a2[live]]))
    return {
        "ms": ms_path,
        "phase_dirs": phase_dirs,
        "telescope": telescope,
        "freqs": freqs[order],
        "chan_width": widths[order],
        "chan_unflagged": np.concatenate(chan_unfl)[order],
        "times": tu,
        "interval": float(np.median(interval)),
        "start_mjd": float((tu.min() - half) / 86400.0),
        "end_mjd": float((tu.max() + half) / 86400.0),
        "max_baseline_m": float(uvdist.max()),
        "max_w_m": float(np.abs(uvw[live, 2]).max()),
        "w_plane": (float(plane[0]), float(plane[1])),
        "max_w_residual_m": float(np.abs(w_res).max()),
        "n_ant": int(len(ants)),
        "n_vis_unflagged": float(n_unfl),
        "flagged_fraction": float(1.0 - n_unfl / n_tot) if n_tot else 1.0,
        "uv_u": np.concatenate(uu) if uu else np.zeros(0),
        "uv_v": np.concatenate(vv) if vv else np.zeros(0),
        "uv_w": np.concatenate(ww) if ww else np.zeros(0),
    }


def _casatools():
    from dsacont.casa import ensure_casa

    return ensure_casa()


def good_fft_size(n: int) -> int:
    """Smallest even integer >= n whose only prime factors are 2, 3 and 5."""
    m = max(2, int(n) + (int(n) % 2))
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 2


def choose_geometry(info: dict, *, fov_deg: float = DEFAULT_FOV_DEG, imsize: int | None = None,
                    cell_arcsec: float | None = None, cells_per_beam: float = DEFAULT_CELLS_PER_BEAM,
                    psf_minor_arcsec: float | None = None) -> tuple[int, float]:
    """Image side (pixels) and cell (arcsec).

    Cell: the fringe spacing of the longest unflagged baseline at the top of the band,
    ``c / (f_max B_max)``, over ``cells_per_beam``. DSA-110's Briggs-0 PSF is a narrow core
    (~1.2 c/(f B_max) across the east-west arm) on a broad pedestal from the dense core of the
    array, so CASA's fitted restoring beam is 2-3x wider than the core: with 3 cells per fringe
    spacing the core is sampled at Nyquist or better and the restoring beam spans 6-10 pixels.
    But a compact array (the small preset) has a main lobe only ~0.7 fringe spacings wide, so
    when ``psf_minor_arcsec`` (the main lobe's narrowest FWHM, :func:`dsacont.imaging.qa.psf_fwhm_arcsec`)
    is given, the cell is also at most ``psf_minor_arcsec / PIXELS_PER_MINOR_AXIS`` (3.5): with 2
    pixels across the minor axis an off-pixel 8.8 Jy source was spread over several Hogbom
    components and its restored peak came out 2.4 % low (measured).
    Side: ``fov_deg / cell`` rounded up to a 2^a 3^b 5^c size.
    """
    if cell_arcsec is None:
        res_rad = C_M_S / (info["freqs"].max() * info["max_baseline_m"])
        cell = math.degrees(res_rad) * 3600.0 / cells_per_beam
        if psf_minor_arcsec is not None and np.isfinite(psf_minor_arcsec):
            cell = min(cell, psf_minor_arcsec / PIXELS_PER_MINOR_AXIS)
        cell_arcsec = float(f"{cell:.3g}")
    if imsize is None:
        imsize = good_fft_size(int(math.ceil(fov_deg * 3600.0 / cell_arcsec)))
    return int(imsize), float(cell_arcsec)


def wterm_phase_error_rad(max_w_m: float, f_max_hz: float, half_width_rad: float) -> float:
    """Largest phase error (rad) of ignoring w at distance ``half_width_rad`` from the phase centre."""
    w_lambda = max_w_m * f_max_hz / C_M_S
    r = math.sin(half_width_rad)
    return 2.0 * math.pi * w_lambda * (1.0 - math.sqrt(1.0 - r * r))


# ------------------------------------------------------------------------------------------------
# primary beam
# ------------------------------------------------------------------------------------------------
def make_vptable(path, *, telescope: str = "OVRO_MMA", diameter_m: float | None = None,
                 reffreq_hz: float = 1.4e9, maxrad_deg: float = 6.0) -> str:
    """Write a CASA voltage-pattern table: an unblocked Airy dish of ``diameter_m`` (4.65 m)."""
    from dsacont.telescope import DISH_DIAMETER_M

    ct = _casatools()
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
        if os.path.exists(path):
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        vp.reset()
    return str(path)


def pointing_track(phase_ra_rad: float, phase_dec_rad: float, mid_mjd: float, times_mjd) -> tuple[np.ndarray, np.ndarray]:
    """ICRS pointing (ra, dec rad) at ``times_mjd`` of dishes parked at the az/el of the phase centre at mid-time.

    The DSA-110 drifts: the dishes stay at a fixed az/el (the meridian at the pointing declination)
    and the MS phase centre is that direction at the group's mid-time. No refraction.
    """
    from astropy import units as u
    from astropy.coordinates import AltAz, SkyCoord
    from astropy.time import Time

    from dsacont.telescope import ovro_location

    loc = ovro_location()
    t_mid = Time(mid_mjd, format="mjd", scale="utc")
    pc = SkyCoord(phase_ra_rad * u.rad, phase_dec_rad * u.rad, frame="icrs")
    aa = pc.transform_to(AltAz(obstime=t_mid, location=loc, pressure=0 * u.hPa))
    tt = Time(np.atleast_1d(times_mjd), format="mjd", scale="utc")
    fixed = SkyCoord(AltAz(az=np.full(len(tt), aa.az.rad) * u.rad, alt=np.full(len(tt), aa.alt.rad) * u.rad,
                           obstime=tt, location=loc, pressure=0 * u.hPa))
    icrs = fixed.icrs
    return icrs.ra.rad, icrs.dec.rad


def effective_beam(ra_rad, dec_rad, point_ra_rad, point_dec_rad, freqs_hz, freq_weights=None):
    """Time- and band-averaged Airy power beam at sky positions.

    ``A(ra, dec) = sum_t sum_f w_f A_airy(sep((ra, dec), p_t), f) / (N_t sum_f w_f)``.

    Parameters
    ----------
    ra_rad, dec_rad : arrays (any shape), positions
    point_ra_rad, point_dec_rad : (Nt,) pointing centres (equal weights)
    freqs_hz : (Nf,) frequencies; ``freq_weights`` (Nf,) their weights (default equal)
    """
    from dsacont.telescope import airy_beam, angular_separation

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


def beam_image(wcs2d, shape, point_ra_rad, point_dec_rad, freqs_hz, freq_weights=None, *, coarse: int = 128) -> np.ndarray:
    """:func:`effective_beam` on an image grid (computed on a coarse grid, spline-interpolated).

    ``wcs2d`` is the celestial WCS of the image, ``shape`` its (ny, nx). Returns float32 (ny, nx).
    """
    from scipy.interpolate import RectBivariateSpline

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


# ------------------------------------------------------------------------------------------------
# FITS helpers
# ------------------------------------------------------------------------------------------------
def read_fits_image(path) -> tuple[np.ndarray, "object", "object"]:
    """Read a CASA-exported FITS image: returns (2-D float32 [y, x] plane, header, celestial WCS)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    import warnings

    from astropy.wcs import FITSFixedWarning

    with fits.open(path) as hdul:
        hdr = hdul[0].header
        data = np.asarray(hdul[0].data, dtype=np.float32)
    while data.ndim > 2:
        data = data[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FITSFixedWarning)  # CASA's OBSGEO/DATE fix-ups
        w = WCS(hdr).celestial
    return data, hdr, w


def _write_like(template_path, out_path, data2d: np.ndarray, *, bunit: str | None = None, extra: dict | None = None) -> None:
    """Write ``data2d`` into a FITS with the same header (and axes) as ``template_path``."""
    from astropy.io import fits

    with fits.open(template_path) as hdul:
        hdr = hdul[0].header.copy()
        shape = hdul[0].data.shape
    arr = np.asarray(data2d, dtype=np.float32).reshape(shape)
    if bunit is not None:
        hdr["BUNIT"] = bunit
    for k, v in (extra or {}).items():
        hdr[k] = v
    fits.PrimaryHDU(arr, hdr).writeto(out_path, overwrite=True)


def set_slant_sin(path, xi: float, eta: float) -> None:
    """Give a CASA-exported SIN image the slant-orthographic parameters PV2_1 = xi, PV2_2 = eta.

    A coplanar array with ``w = a u + b v`` imaged by a 2-D (standard) gridder puts a source at
    direction cosines (l, m, n) at ``(l - a (1 - n), m - b (1 - n))``: exactly the FITS SIN
    projection with ``xi = -a``, ``eta = -b`` (Calabretta & Greisen 2002, sect. 5.1.5), so the
    image is in focus and only its WCS changes. Updates the file in place.
    """
    from astropy.io import fits

    with fits.open(path, mode="update") as hdul:
        hdr = hdul[0].header
        lat_axis = next(i for i in range(1, int(hdr["NAXIS"]) + 1) if str(hdr.get(f"CTYPE{i}", "")).startswith("DEC"))
        hdr[f"PV{lat_axis}_1"] = (float(xi), "SIN xi: coplanar-array w-term (w = a u + b v, xi = -a)")
        hdr[f"PV{lat_axis}_2"] = (float(eta), "SIN eta: coplanar-array w-term (eta = -b)")


def _beam_from_header(hdr) -> dict:
    return {"bmaj_arcsec": float(hdr["BMAJ"]) * 3600.0, "bmin_arcsec": float(hdr["BMIN"]) * 3600.0,
            "bpa_deg": float(hdr["BPA"])}


def _freq_from_header(hdr) -> float:
    for i in range(1, int(hdr["NAXIS"]) + 1):
        if str(hdr.get(f"CTYPE{i}", "")).startswith("FREQ"):
            return float(hdr[f"CRVAL{i}"])
    return float("nan")


# ------------------------------------------------------------------------------------------------
# the imaging step
# ------------------------------------------------------------------------------------------------
def image_ms(ms_path, out_dir=None, *, imsize: int | None = None, cell_arcsec: float | None = None,
             fov_deg: float = DEFAULT_FOV_DEG, robust: float = 0.0, niter: int = DEFAULT_NITER,
             threshold_nsigma: float = DEFAULT_NSIGMA, datacolumn: str = "corrected", paths=None,
             gridder: str = "auto", deconvolver: str = "auto", cells_per_beam: float = DEFAULT_CELLS_PER_BEAM,
             wterm_tolerance_rad: float = WTERM_TOLERANCE_RAD, pbcor_limit: float = PBCOR_LIMIT,
             name: str | None = None, calibrators="auto", register: bool = False, keep_casa: bool = False,
             cyclefactor: float = 0.5, nmajor: int = DEFAULT_NMAJOR, thermal_noise: bool = False,
             clean_border: float = 0.0, flatten="auto") -> dict:
    """Image one MS (one tile) with tclean; write FITS image, pb, pbcor, residual and QA.

    Parameters
    ----------
    ms_path : path of the (calibrated) MS; one field (a common phase centre) expected — with
        several fields the middle one is the image centre.
    out_dir : directory for the FITS (default ``paths.images``). Files appear atomically.
    imsize, cell_arcsec : override the image side (pixels) and cell (arcsec); by default from
        ``fov_deg`` and the longest baseline (see module docstring; ``cells_per_beam``).
    robust : Briggs robust parameter.
    niter : maximum number of clean iterations; cleaning stops at ``threshold_nsigma`` x the robust
        residual RMS (tclean ``nsigma``).
    datacolumn : 'corrected' (calibrated data) or 'data'.
    paths : :class:`dsacont.config.Paths` (default ``get_paths()``): images, tmp, products_db.
    gridder : 'auto' (w-term test, see module docstring), 'standard', 'wproject' or 'widefield'.
    deconvolver : 'auto' (= 'hogbom'), 'hogbom', 'clark' (PSF patch: faster minor cycles on big
        images, but deep minor cycles with cyclefactor 0.1 need the exact PSF).
    cells_per_beam : cells per fringe spacing of the longest baseline (when ``cell_arcsec`` is None).
    pbcor_limit : pbcor pixels where the beam is below this are blanked (NaN).
    name : file stem (default the MS name without '.ms').
    calibrators : 'auto' (every VLA calibrator inside the image), a list of names, or None.
    register : add the image to the products database (``paths.products_db``) after the move.
    keep_casa : keep CASA's image directories (in ``<out_dir>/<name>.casa/``) for inspection.
    cyclefactor : tclean's; a major cycle starts when the residual peak falls below
        ``cyclefactor x PSF sidelobe x peak`` (floor 1 % of the peak). DSA-110 snapshot PSFs have
        ~0.45 near sidelobes, so CASA's default 1.0 halves the peak per major cycle (13 major
        cycles on a tile with 0834+555). 0.1 needs ~3 but diverged on a tile with 0834+555 0.7 deg
        off centre (its beam gain changes by ~30 % during the tile, so no fixed PSF fits it and
        deep minor cycles oscillate: model 8.5 -> 7.4 -> 10.6 -> 6.2 -> 12.3 Jy); 0.5 converges
        there (4 cycles to the threshold) and elsewhere.
    thermal_noise : also make a dirty Stokes-Q image (XX - YY)/2 with the same weights and report its
        robust RMS (``qa["noise_q_jy"]``, ``qa["noise_q_ratio"]``): the thermal noise without the
        deconvolution errors of bright sources (an unpolarised sky has Q = 0; on real data with
        linear feeds Q also holds polarised emission and XX/YY gain mismatch). Costs two gridding
        passes.
    clean_border : fraction of the image side at each edge where no clean components are placed
        (default 0: with bright sources flattened, cleaning to the edge converges and removes the
        sidelobes of sources near it).
    flatten : 'auto' (default), None/False, or a list of calibrator names: flatten the drifting-beam
        modulation of bright catalogue sources in CORRECTED_DATA before tclean and restore it
        afterwards (:mod:`dsacont.imaging.flatten`; QA ``flattened``). Not done with ``datacolumn='data'``.
    nmajor : at most this many major cycles. Once the residual is near ``threshold_nsigma`` x RMS,
        tclean's nsigma stop is re-evaluated on every new residual and it can spend many cycles
        removing a few mJy near the threshold; 5 reaches the threshold on 0834+555 tiles.

    Returns
    -------
    dict with ``image``, ``pbcor``, ``pb``, ``residual``, ``qa_json`` (paths), ``name``,
    ``imsize``, ``cell_arcsec``, ``gridder``, ``deconvolver``, ``beam`` (arcsec/deg), ``freq_hz``,
    ``ra_deg``, ``dec_deg`` (image centre), ``start_mjd``, ``end_mjd``, ``qa`` (see
    :func:`tile_qa`), ``timing`` (seconds per step) and ``image_id`` when registered.
    """
    t_all = time.perf_counter()
    timing = {}
    ms_path = os.path.abspath(os.fspath(ms_path))
    if paths is None and (out_dir is None or register):
        from dsacont.config import get_paths

        paths = get_paths()
    out_dir = Path(out_dir) if out_dir is not None else Path(paths.images)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_base = Path(paths.tmp) if paths is not None else out_dir
    tmp_base.mkdir(parents=True, exist_ok=True)
    if name is None:
        name = Path(ms_path).name
        name = name[:-3] if name.endswith(".ms") else name

    t0 = time.perf_counter()
    info = inspect_ms(ms_path, datacolumn=datacolumn)
    timing["inspect_s"] = time.perf_counter() - t0
    psf_minor = None
    if cell_arcsec is None and len(info["uv_u"]):
        from dsacont.imaging.qa import psf_fwhm_arcsec

        t0 = time.perf_counter()
        psf_minor, psf_major = psf_fwhm_arcsec(info["uv_u"], info["uv_v"], info["uv_w"],
                                               1.0 / math.radians(fov_deg), robust)
        timing["psf_estimate_s"] = time.perf_counter() - t0
    imsize, cell_arcsec = choose_geometry(info, fov_deg=fov_deg, imsize=imsize, cell_arcsec=cell_arcsec,
                                          cells_per_beam=cells_per_beam, psf_minor_arcsec=psf_minor)
    half_width = math.radians(imsize * cell_arcsec / 3600.0 / 2.0)
    # w = a u + b v + w_res: the plane part is a coordinate distortion (slant SIN, PV2_1/PV2_2),
    # only w_res defocuses an image made with the standard (2-D) gridder
    wphase_full = wterm_phase_error_rad(info["max_w_m"], info["freqs"].max(), half_width)
    wphase = wterm_phase_error_rad(info["max_w_residual_m"], info["freqs"].max(), half_width)
    if gridder == "auto":
        gridder = "standard" if wphase <= wterm_tolerance_rad else "wproject"
    slant = (-info["w_plane"][0], -info["w_plane"][1]) if gridder == "standard" else None
    if deconvolver == "auto":
        deconvolver = "hogbom"
    nfield = info["phase_dirs"].shape[0]
    centre = info["phase_dirs"][nfield // 2]
    ra0, dec0 = float(centre[0]) % (2 * math.pi), float(centre[1])
    log.info("%s: %d antennas, %d channels %.1f-%.1f MHz, B_max %.0f m, w_max %.0f m (%.1f m off the plane) "
             "-> %d^2 x %.3g\" (w-phase at the edge %.2f rad, %.2f rad after the slant: %s, %s), flagged %.1f %%",
             name, info["n_ant"], len(info["freqs"]), info["freqs"].min() / 1e6, info["freqs"].max() / 1e6,
             info["max_baseline_m"], info["max_w_m"], info["max_w_residual_m"], imsize, cell_arcsec, wphase_full,
             wphase, gridder, deconvolver, 100 * info["flagged_fraction"])

    work = Path(tmp_base) / f"img-{name}-{os.getpid()}-{int(time.time() * 1e3) % 10**8}"
    work.mkdir(parents=True)
    stage = out_dir / f".{name}.partial-{os.getpid()}"
    stage.mkdir(parents=True, exist_ok=True)
    flattened = None
    try:
        if flatten and datacolumn.lower() != "corrected":
            log.info("%s: no bright-source flattening: it works on CORRECTED_DATA only (DATA, the "
                     "correlator's record, is never modified)", name)
        elif flatten:
            from dsacont.imaging import flatten as F

            t0 = time.perf_counter()
            flattened = F.flatten_sources(ms_path, flatten, column="CORRECTED_DATA")
            timing["flatten_s"] = time.perf_counter() - t0
        ct = _casatasks()
        vpt = make_vptable(str(work / "dsa110_airy.vp"), telescope=info["telescope"] or "OVRO_MMA",
                           reffreq_hz=float(np.median(info["freqs"])))
        imagename = str(work / name)
        phasecenter = "" if nfield == 1 else f"J2000 {ra0}rad {dec0}rad"
        t0 = time.perf_counter()
        kw = dict(vis=ms_path, imagename=imagename, datacolumn=datacolumn.lower(), specmode="mfs",
                  gridder=gridder, vptable=vpt, pblimit=-1e-4, imsize=[imsize, imsize],
                  cell=f"{cell_arcsec}arcsec", phasecenter=phasecenter, stokes="I", weighting="briggs",
                  robust=robust, niter=int(niter), gain=0.1, deconvolver=deconvolver, threshold="0Jy",
                  nsigma=float(threshold_nsigma), pbcor=False, savemodel="none", interactive=False,
                  restart=False, calcres=True, calcpsf=True, cyclefactor=float(cyclefactor),
                  minpsffraction=0.01, nmajor=int(nmajor))
        if clean_border > 0:
            # no clean components in the outer border: sources just outside the image put PSF
            # sidelobes there, and deep Hogbom cycles chasing them diverge (seen on a tile with
            # 0834+555 0.7 deg from its centre: residual 0.2 Jy at the edge without the mask)
            b = int(round(clean_border * imsize))
            kw.update(usemask="user", mask=f"box[[{b}pix,{b}pix],[{imsize - 1 - b}pix,{imsize - 1 - b}pix]]")
        if gridder == "wproject":
            kw["wprojplanes"] = -1
        if gridder == "widefield":
            kw["wprojplanes"] = -1
            kw["facets"] = 1
        ret = ct.tclean(**kw)
        timing["tclean_s"] = time.perf_counter() - t0
        noise_q = None
        if thermal_noise:
            t0 = time.perf_counter()
            kq = dict(kw, imagename=imagename + "_q", stokes="Q", niter=0, nsigma=0.0)
            kq.pop("nmajor", None)
            ct.tclean(**kq)
            qfits = str(work / "q.fits")
            ct.exportfits(imagename=imagename + "_q.residual", fitsimage=qfits, overwrite=True)
            from dsacont.imaging.qa import robust_rms

            noise_q = robust_rms(read_fits_image(qfits)[0])
            timing["thermal_noise_s"] = time.perf_counter() - t0
        if flattened and flattened["sources"]:
            from dsacont.imaging import flatten as F

            t0 = time.perf_counter()
            F.unflatten(ms_path)  # the column holds the calibrated data again
            timing["unflatten_s"] = time.perf_counter() - t0
            flattened["restored"] = True
        if not os.path.isdir(imagename + ".image"):
            raise RuntimeError(f"tclean made no image for {ms_path} (see the CASA log)")
        n_iter_done = int(ret.get("iterdone", -1)) if isinstance(ret, dict) else -1
        n_major = int(ret.get("nmajordone", -1)) if isinstance(ret, dict) else -1

        t0 = time.perf_counter()
        files = {k: str(stage / f"{name}.{k}.fits") for k in ("image", "residual", "pb", "pbcor")}
        ct.exportfits(imagename=imagename + ".image", fitsimage=files["image"], overwrite=True, velocity=False)
        ct.exportfits(imagename=imagename + ".residual", fitsimage=files["residual"], overwrite=True)
        casa_pb_fits = str(work / "casa_pb.fits")
        ct.exportfits(imagename=imagename + ".pb", fitsimage=casa_pb_fits, overwrite=True)
        if slant is not None:
            for f in (files["image"], files["residual"], casa_pb_fits):
                set_slant_sin(f, *slant)
        timing["export_s"] = time.perf_counter() - t0

        # the tile's own (drift + band averaged) primary beam
        t0 = time.perf_counter()
        img, hdr, wcs2d = read_fits_image(files["image"])
        mid_mjd = 0.5 * (info["start_mjd"] + info["end_mjd"])
        t_mjd = info["times"] / 86400.0
        if len(t_mjd) > 12:
            t_mjd = np.linspace(t_mjd.min(), t_mjd.max(), 12)
        pra, pdec = pointing_track(ra0, dec0, mid_mjd, t_mjd)
        fq, fw = _band_samples(info["freqs"], info["chan_unflagged"], 32)
        pb = beam_image(wcs2d, img.shape, pra, pdec, fq, fw)
        pb_hdr = {"PBTYPE": ("AIRY-DRIFT", "Airy 4.65 m, averaged over tile time and band")}
        _write_like(files["image"], files["pb"], pb, bunit="", extra=pb_hdr)
        pbcor = np.where(pb >= pbcor_limit, img / np.maximum(pb, 1e-6), np.nan)
        _write_like(files["image"], files["pbcor"], pbcor)
        timing["pb_s"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        casa_pb, _, _ = read_fits_image(casa_pb_fits)
        resid, _, _ = read_fits_image(files["residual"])
        qa = tile_qa(info, img, resid, pb, hdr, wcs2d, robust=robust, imsize=imsize, cell_arcsec=cell_arcsec,
                     calibrators=calibrators, casa_pb=casa_pb, centre=(ra0, dec0))
        qa.update({"gridder": gridder, "wterm_phase_edge_rad": wphase, "wterm_phase_edge_no_slant_rad": wphase_full,
                   "slant_sin": list(slant) if slant else None, "iterations": n_iter_done,
                   "noise_q_jy": noise_q, "flattened": (flattened or {}).get("sources", []),
                   "flatten_skipped": (flattened or {}).get("skipped", []),
                   "noise_q_ratio": None if noise_q is None else noise_q / qa["radiometer_jy"],
                   "major_cycles": n_major})
        timing["qa_s"] = time.perf_counter() - t0
        if keep_casa:
            dest = out_dir / f"{name}.casa"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(work, dest)

        result = {
            "name": name, "ms": ms_path, "imsize": imsize, "cell_arcsec": cell_arcsec, "gridder": gridder,
            "deconvolver": deconvolver, "robust": robust, "beam": _beam_from_header(hdr),
            "freq_hz": _freq_from_header(hdr), "ra_deg": math.degrees(ra0), "dec_deg": math.degrees(dec0),
            "start_mjd": info["start_mjd"], "end_mjd": info["end_mjd"], "qa": qa,
        }
        # atomic moves: pbcor (the primary product) last, then the QA file
        final = {}
        for k in ("pb", "residual", "image", "pbcor"):
            dst = out_dir / f"{name}.{k}.fits"
            os.replace(files[k], dst)
            final[k] = str(dst)
        result.update(final)
        timing["total_s"] = time.perf_counter() - t_all
        result["timing"] = timing
        qa_path = out_dir / f"{name}.qa.json"
        tmp_qa = stage / f"{name}.qa.json"
        tmp_qa.write_text(json.dumps(result, indent=2, default=json_default))
        os.replace(tmp_qa, qa_path)
        result["qa_json"] = str(qa_path)
    finally:
        if flattened and flattened["sources"] and not flattened.get("restored"):
            from dsacont.imaging import flatten as F

            F.unflatten(ms_path)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)

    if register:
        from dsacont.service.products import Products

        db = Products(paths.products_db)
        result["image_id"] = db.add_image(
            result["pbcor"], ms=ms_path, files={k: result[k] for k in ("image", "pbcor", "pb", "residual", "qa_json")},
            ra_deg=result["ra_deg"], dec_deg=result["dec_deg"], start=result["start_mjd"], end=result["end_mjd"],
            params={k: result[k] for k in ("imsize", "cell_arcsec", "gridder", "deconvolver", "robust")},
            qa=qa, status="imaged")
    log.info("%s: rms %.3g mJy/beam (radiometer %.3g, ratio %.2f), peak %.4g Jy/beam, DR %.0f, %.1f s",
             name, 1e3 * qa["noise_jy"], 1e3 * qa["radiometer_jy"], qa["noise_ratio"], qa["peak_jy"],
             qa["dynamic_range"], timing["total_s"])
    return result


def _casatasks():
    from dsacont.casa import casatasks

    return casatasks()


def _band_samples(freqs, weights, n: int):
    """At most ``n`` frequency samples (bin centres) with summed weights, for beam averaging."""
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


def tile_qa(info: dict, image, residual, pb, hdr, wcs2d, *, robust: float, imsize: int, cell_arcsec: float,
            calibrators="auto", casa_pb=None, centre=None) -> dict:
    """QA of one tile: noise vs radiometer expectation, peak, dynamic range, calibrator check.

    Returns a dict: ``noise_jy`` (robust RMS of the residual in the tile's main lobe, effective
    beam >= 0.5; ``noise_image_jy`` over the inner 90 % of the image),
    ``radiometer_jy`` (expected, with ``weighting_factor`` and the flags), ``noise_ratio``,
    ``peak_jy`` (image peak, flat-noise), ``dynamic_range``, ``flagged_fraction``, ``n_ant``,
    ``beam_px``, ``casa_pb_max_abs_diff`` (CASA's vptable beam vs telescope.airy_beam at the image
    frequency, where the beam > 0.2), and ``calibrators``: per calibrator in the field, the fitted
    PB-corrected ``flux_jy``, the catalogue ``expected_jy`` (band-averaged over the tile beam),
    ``ratio``, ``offset_arcsec`` and ``offset_beams``.
    """
    from dsacont.imaging import qa as Q

    ny, nx = residual.shape
    b = max(1, int(0.05 * nx))
    inner = np.zeros(residual.shape, bool)
    inner[b:ny - b, b:nx - b] = True
    # the noise of the tile is measured in its main lobe (effective beam >= 0.5), the same sky area
    # whatever the image size: a larger field adds low-beam area with few sources (less
    # deconvolution error), which would flatter a figure taken over the whole image
    main = inner & (np.asarray(pb) >= MAIN_LOBE_PB)
    noise_image = Q.robust_rms(residual, inner)
    noise = Q.robust_rms(residual, main) if main.sum() >= 1000 else noise_image
    npix = int(imsize)
    cell_uv = 1.0 / (npix * math.radians(cell_arcsec / 3600.0))
    wfac = Q.briggs_weighting_factor(info["uv_u"], info["uv_v"], info["uv_w"], cell_uv, robust, npix) \
        if len(info["uv_u"]) else 1.0
    dnu = float(np.median(info["chan_width"]))
    expected = Q.radiometer_noise(info["n_vis_unflagged"], dnu, info["interval"], weighting_factor=wfac)
    peak = float(np.nanmax(image))
    beam = _beam_from_header(hdr)
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
        from dsacont.telescope import airy_beam, angular_separation

        yy, xx = np.mgrid[0:ny:8, 0:nx:8]
        ra, dec = wcs2d.pixel_to_world_values(xx, yy)
        sep = angular_separation(centre[0], centre[1], np.radians(ra), np.radians(dec))
        model = airy_beam(sep, _freq_from_header(hdr))
        cp = casa_pb[::8, ::8]
        sel = (model > 0.2) & np.isfinite(cp)
        out["casa_pb_max_abs_diff"] = float(np.max(np.abs(cp[sel] - model[sel]))) if sel.any() else float("nan")
        out["pb_drift_band_vs_casa_centre"] = float(pb[ny // 2, nx // 2] / casa_pb[ny // 2, nx // 2])
    if calibrators:
        out["calibrators"] = calibrator_checks(image, pb, wcs2d, info, cell_arcsec, beam, calibrators)
    return out


def calibrator_checks(image, pb, wcs2d, info, cell_arcsec, beam, calibrators="auto", *, pb_min: float = 0.3) -> list[dict]:
    """Fit every catalogue calibrator in the field (beam >= ``pb_min``) and compare with the catalogue.

    ``expected_jy`` is the catalogue spectrum averaged over the tile's channels and weighted by the
    beam at each frequency, divided by the band-averaged beam (what a PB-corrected MFS image of
    that source should show).
    """
    from dsacont.imaging import qa as Q
    from dsacont.calibrators import get_calibrator, load_catalogue

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
        fit = Q.fit_source(image, wcs2d, cal.ra_deg, cal.dec_deg, beam_px=beam_px,
                           box_px=int(max(6, 3 * beam_px)))
        if fit is None:
            continue
        a_fit = float(pb[int(round(fit["y"])), int(round(fit["x"]))])
        fq, fw = _band_samples(info["freqs"], info["chan_unflagged"], 64)
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


# ------------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------------
def cli(argv: list[str]) -> int:
    """``dsacont image MS``: image one calibrated MS into the images directory."""
    ap = argparse.ArgumentParser(prog="dsacont image", description="image a calibrated MS with tclean (PB-corrected FITS)")
    ap.add_argument("ms", help="Measurement Set")
    ap.add_argument("--out-dir", help="output directory (default: the configured images directory)")
    ap.add_argument("--root", help="dsacont root directory (get_paths(root=...))")
    ap.add_argument("--imsize", type=int)
    ap.add_argument("--cell", type=float, dest="cell_arcsec", help="cell size, arcsec")
    ap.add_argument("--fov", type=float, default=DEFAULT_FOV_DEG, help="field of view, deg (3.5)")
    ap.add_argument("--cells-per-beam", type=float, default=DEFAULT_CELLS_PER_BEAM)
    ap.add_argument("--robust", type=float, default=0.0)
    ap.add_argument("--niter", type=int, default=DEFAULT_NITER)
    ap.add_argument("--nsigma", type=float, default=DEFAULT_NSIGMA, dest="threshold_nsigma")
    ap.add_argument("--datacolumn", default="corrected", choices=["corrected", "data"])
    ap.add_argument("--gridder", default="auto", choices=["auto", "standard", "wproject", "widefield"])
    ap.add_argument("--deconvolver", default="auto", choices=["auto", "hogbom", "clark"])
    ap.add_argument("--no-register", action="store_true", help="do not add the image to the products DB")
    args = ap.parse_args(argv)
    from dsacont.config import get_paths

    paths = get_paths(root=args.root)
    paths.ensure("images", "tmp", "state")
    try:
        res = image_ms(args.ms, args.out_dir, imsize=args.imsize, cell_arcsec=args.cell_arcsec, fov_deg=args.fov,
                       robust=args.robust, niter=args.niter, threshold_nsigma=args.threshold_nsigma,
                       datacolumn=args.datacolumn, paths=paths, gridder=args.gridder, deconvolver=args.deconvolver,
                       cells_per_beam=args.cells_per_beam, register=not args.no_register)
    except BadInputError as exc:
        print(f"dsacont image: {exc}", file=sys.stderr)
        return 1
    qa = res["qa"]
    print(f"{res['pbcor']}\n  rms {1e3 * qa['noise_jy']:.3f} mJy/beam (radiometer {1e3 * qa['radiometer_jy']:.3f}), "
          f"peak {qa['peak_jy']:.4g} Jy/beam, DR {qa['dynamic_range']:.0f}, beam "
          f"{res['beam']['bmaj_arcsec']:.1f}\"x{res['beam']['bmin_arcsec']:.1f}\", {res['timing']['total_s']:.1f} s")
    for c in qa.get("calibrators", []):
        print(f"  {c['name']}: {c['flux_jy']:.4f} Jy (expected {c['expected_jy']:.4f}, ratio {c['ratio']:.4f}), "
              f"offset {c['offset_arcsec']:.2f}\" ({c['offset_beams']:.3f} beam)")
    return 0
