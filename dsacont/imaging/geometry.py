"""Image geometry of one tile: cell, image side, the w-term budget and the drifting pointing.

- **Cell**: ``cell = c / (f_max * B_max) / cells_per_beam``, ``cells_per_beam = 3``: the fringe
  spacing of the longest unflagged baseline at the top of the band over 3, and at most the PSF main
  lobe's narrowest FWHM over 3.5 (estimated from the uv coverage,
  :func:`dsacont.imaging.qa.psf_fwhm_arcsec`; on a compact small-preset layout the main lobe is
  only ~0.7 fringe spacings wide and 2 pixels across it cost 2.4 % of an off-pixel source's peak;
  on the full array the core's estimated 16.6" FWHM gives 4.75" cells instead of 5.56").
- **Field**: ``fov_deg = 5`` (the drift-averaged Airy beam is ~0.1 at the edge at 1.4 GHz): sources
  in the outer beam are deconvolved instead of leaving their sidelobes (the T-shaped array's PSF
  has long linear sidelobes) across the tile. The image side is rounded up to a 2^a 3^b 5^c size.
- **w-term**: DSA-110 is nearly coplanar and phased near the meridian ~18 deg from zenith, so
  ``w = a u + b v + w_res``; only ``w_res`` defocuses an image made with a 2-D gridder (the plane
  part is the slant SIN projection, :func:`dsacont.io.fits.set_slant_sin`).
  :func:`wterm_phase_error_rad` is the phase error of ignoring a given w at the field edge.
- **Pointing**: the dishes stay at a fixed az/el while the sky drifts; :func:`pointing_track` gives
  the ICRS pointing at each time of the tile.
- **Channel averaging** for imaging: :func:`choose_channel_bin` averages as many adjacent channels
  as keep the bandwidth smearing at the field edge within a budget, judged on the tile's own uv
  coverage (:func:`uv_smearing_loss`, worst direction): 1 %, which at full size allows 3 of the
  244 kHz channels (0.81 % at 2.6 deg; 4 would be 1.42 %, measured 0.7 % on the median edge
  source).
"""
from __future__ import annotations

import math

import numpy as np
from astropy import units as u
from astropy.coordinates import AltAz, SkyCoord
from astropy.time import Time

from dsacont.telescope import SPEED_OF_LIGHT as C_M_S
from dsacont.telescope import ovro_location

DEFAULT_FOV_DEG = 5.0
DEFAULT_CELLS_PER_BEAM = 3.0
PIXELS_PER_MINOR_AXIS = 3.5


def good_fft_size(n: int) -> int:
    """Smallest even integer >= ``n`` whose only prime factors are 2, 3 and 5 (pixels)."""
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
    """Image side (pixels) and cell (arcsec) of a tile.

    Cell: the fringe spacing of the longest unflagged baseline at the top of the band,
    ``c / (f_max B_max)``, over ``cells_per_beam``. DSA-110's Briggs-0 PSF is a narrow core
    (~1.2 c/(f B_max) across the east-west arm) on a broad pedestal from the dense core of the
    array, so CASA's fitted restoring beam is 2-3x wider than the core: with 3 cells per fringe
    spacing the core is sampled at Nyquist or better and the restoring beam spans 6-10 pixels.
    But a compact array (the small preset) has a main lobe only ~0.7 fringe spacings wide, so
    when ``psf_minor_arcsec`` is given, the cell is also at most
    ``psf_minor_arcsec / PIXELS_PER_MINOR_AXIS`` (3.5): with 2 pixels across the minor axis an
    off-pixel 8.8 Jy source was spread over several Hogbom components and its restored peak came
    out 2.4 % low (measured). Side: ``fov_deg / cell`` rounded up to a 2^a 3^b 5^c size.

    Parameters
    ----------
    info : dict
        From :func:`dsacont.imaging.tclean.inspect_ms`; uses ``freqs`` (Hz) and
        ``max_baseline_m`` (m).
    fov_deg : float
        Field of view (image side), degrees.
    imsize : int, optional
        Image side in pixels (overrides ``fov_deg``).
    cell_arcsec : float, optional
        Cell in arcsec (overrides the rule above).
    cells_per_beam : float
        Cells per fringe spacing of the longest baseline.
    psf_minor_arcsec : float, optional
        FWHM of the PSF main lobe along its narrowest direction, arcsec
        (:func:`dsacont.imaging.qa.psf_fwhm_arcsec`).

    Returns
    -------
    imsize : int
        Image side, pixels.
    cell_arcsec : float
        Cell, arcsec (3 significant digits when computed).
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
    """Largest phase error (rad) of ignoring ``w`` at ``half_width_rad`` from the phase centre.

    ``2 pi w (1 - sqrt(1 - r^2))`` with ``w = max_w_m f_max / c`` in wavelengths and
    ``r = sin(half_width_rad)``.
    """
    w_lambda = max_w_m * f_max_hz / C_M_S
    r = math.sin(half_width_rad)
    return 2.0 * math.pi * w_lambda * (1.0 - math.sqrt(1.0 - r * r))


def bandwidth_smearing_loss(chan_width_hz: float, freq_hz: float, offset_rad: float,
                            beam_fwhm_rad: float) -> float:
    """Fractional loss of a point source's peak from averaging over one channel of ``chan_width_hz``.

    A Gaussian beam and a rectangular band: ``beta = (dnu / nu) (offset / beam_fwhm)``,
    loss ``= 1 - erf(x) sqrt(pi) / (2 x)`` with ``x = sqrt(ln 2) beta`` (Bridle & Schwab 1999,
    eq. 18-24). ``offset_rad`` is the distance from the phase centre, ``beam_fwhm_rad`` the
    synthesised beam's FWHM along that direction (the minor axis is the worst case).
    """
    x = math.sqrt(math.log(2.0)) * (chan_width_hz / freq_hz) * (offset_rad / beam_fwhm_rad)
    if x < 1e-6:
        return x * x / 3.0
    return 1.0 - math.erf(x) * math.sqrt(math.pi) / (2.0 * x)


def uv_smearing_loss(u, v, w, chan_width_hz: float, freq_hz: float, offset_rad: float, *,
                     n_angles: int = 12, max_samples: int = 200_000) -> float:
    """Fractional peak loss to averaging over ``chan_width_hz``, from the uv coverage itself.

    A channel of width ``dnu`` turns each visibility's fringe towards a source at (l, m) into a
    sinc: the dirty image's peak there is ``sum w sinc(dnu/nu (u l + v m)) / sum w``
    (``np.sinc(x) = sin(pi x) / (pi x)``). Returns ``1 -`` that, the worst of ``n_angles``
    position angles at ``offset_rad`` from the phase centre; no Gaussian-beam approximation.

    Parameters
    ----------
    u, v : array_like (Nsample,)
        Baseline coordinates in wavelengths (e.g. :func:`dsacont.imaging.tile.inspect_ms`'s
        ``uv_u``, ``uv_v``).
    w : array_like (Nsample,)
        Their weights.
    chan_width_hz, freq_hz : float
        The averaged channel's width and the frequency judged at (Hz).
    offset_rad : float
        Distance from the phase centre (rad).
    n_angles : int
        Position angles tried, spread over 180 deg.
    max_samples : int
        At most this many samples are used (an even stride through them).
    """
    u, v, w = (np.asarray(a, float) for a in (u, v, w))
    step = max(1, len(u) // max_samples)
    u, v, w = u[::step], v[::step], w[::step]
    x = chan_width_hz / freq_hz * offset_rad
    worst = 0.0
    for pa in np.arange(n_angles) * (math.pi / n_angles):
        peak = float(np.sum(w * np.sinc(x * (u * math.sin(pa) + v * math.cos(pa)))) / np.sum(w))
        worst = max(worst, 1.0 - peak)
    return worst


def choose_channel_bin(nchan_per_spw: int, loss_of_bin, max_loss: float = 0.01) -> tuple[int, float]:
    """The most channels to average for imaging within a bandwidth-smearing budget at the field edge.

    Parameters
    ----------
    nchan_per_spw : int
        Channels in each spectral window; the bin divides it (no average spans two windows).
    loss_of_bin : callable
        ``loss_of_bin(k)``: the fractional peak loss at the field edge when ``k`` channels are
        averaged (:func:`uv_smearing_loss` or :func:`bandwidth_smearing_loss` at ``k`` times the
        channel width).
    max_loss : float
        The budget: the largest loss allowed.

    Returns
    -------
    (int, float)
        The bin (1 when even two channels exceed the budget) and its loss.
    """
    best = (1, float(loss_of_bin(1)))
    for k in range(2, int(nchan_per_spw) + 1):
        if nchan_per_spw % k:
            continue
        loss = float(loss_of_bin(k))
        if loss > max_loss:
            break
        best = (k, loss)
    return best


#: one turn of WSClean's baseline-dependent averaging rule: 2 pi radians per day of 86400 s
_WSCLEAN_TURN_PER_S = 2.0 * math.pi / 86400.0


def averaging_factors(length_wl, interval_s: float, nwavelengths: float, ntimes: int | None = None) -> np.ndarray:
    """Integrations WSClean averages per baseline under ``-baseline-averaging nwavelengths``.

    WSClean's rule: ``max(1, floor(nwavelengths / (2 pi L dt / 86400 s)))`` with ``L`` the
    baseline's length in wavelengths at its window's highest frequency and ``dt`` the integration
    (s); here at most ``ntimes`` (the tile's integrations), all a baseline has.
    """
    per_int = _WSCLEAN_TURN_PER_S * np.maximum(np.asarray(length_wl, float), 1e-9) * float(interval_s)
    n = np.maximum(np.floor(float(nwavelengths) / per_int), 1.0)
    return np.minimum(n, ntimes) if ntimes else n


def time_smearing_loss(du, dv, length_wl, weights, interval_s: float, offset_rad: float, nwavelengths: float,
                       *, ntimes: int | None = None, n_angles: int = 12, max_samples: int = 200_000) -> float:
    """Fractional peak loss at the field edge added by baseline-dependent time averaging.

    A source at (l, m) turns each visibility's phase at ``2 pi (du l + dv m)`` rad/s. One
    integration of ``dt`` already holds a boxcar of that fringe (``sinc(dt (du l + dv m))``,
    ``np.sinc(x) = sin(pi x) / (pi x)``); averaging ``n`` of them (:func:`averaging_factors`) makes
    it ``sinc(n dt (du l + dv m))``. The dirty image's peak there is the weighted mean of that over
    the samples. Returns ``1 - peak(n) / peak(1)``, the worst of ``n_angles`` position angles at
    ``offset_rad``: the loss the averaging adds to what the correlator's integrations cost already.

    Parameters
    ----------
    du, dv : array_like (Nsample,)
        Rates of change of u and v, wavelengths per second (:func:`dsacont.imaging.tile.inspect_ms`'s
        ``uv_du``, ``uv_dv``).
    length_wl : array_like (Nsample,)
        Baseline lengths in wavelengths (``uv_len``).
    weights : array_like (Nsample,)
        Sample weights (``uv_w``).
    interval_s : float
        The integration, s.
    offset_rad : float
        Distance from the phase centre, rad.
    nwavelengths : float
        WSClean's ``-baseline-averaging`` value (0: none; the loss is 0).
    ntimes : int, optional
        Integrations in the tile (caps the averaging factor).
    n_angles, max_samples
        As :func:`uv_smearing_loss`.
    """
    if not nwavelengths:
        return 0.0
    du, dv, ln, w = (np.asarray(a, float) for a in (du, dv, length_wl, weights))
    step = max(1, len(du) // max_samples)
    du, dv, ln, w = du[::step], dv[::step], ln[::step], w[::step]
    n = averaging_factors(ln, interval_s, nwavelengths, ntimes)
    worst = 0.0
    for pa in np.arange(n_angles) * (math.pi / n_angles):
        cycles = interval_s * offset_rad * (du * math.sin(pa) + dv * math.cos(pa))
        p1 = float(np.sum(w * np.sinc(cycles)))
        pn = float(np.sum(w * np.sinc(n * cycles)))
        if p1 > 0:
            worst = max(worst, 1.0 - pn / p1)
    return worst


#: candidate ``-baseline-averaging`` values, in units of the longest baseline's turn per integration
BDA_MULTIPLES = (0.1, 0.15, 0.2, 0.25, 0.3, 0.35, 0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0)


def choose_baseline_averaging(length_wl, interval_s: float, loss_of, max_loss: float = 0.01,
                              multiples=BDA_MULTIPLES) -> tuple[float, float]:
    """The most baseline-dependent averaging within a time-smearing budget at the field edge.

    Candidates are ``multiples`` of the longest baseline's turn per integration (``2 pi L_max dt /
    86400 s`` wavelengths: 1 averages nothing on it and 2 integrations on baselines half as long,
    0.4 two integrations on baselines under a fifth of it); ``loss_of(nwavelengths)`` is the loss
    (:func:`time_smearing_loss`). Returns ``(nwavelengths, loss)`` of the largest within
    ``max_loss``, ``(0.0, 0.0)`` if none is.

    On the full-size transit tile (natural weights, the 2.51 deg field edge) the correlator's
    12.9 s integrations already cost 1.1 % there; 0.4 adds 1.1 % and grids 0.42 of the
    visibilities, 0.3 adds 0.6 % for 0.50, 1.0 adds 7.3 % for 0.26.
    """
    longest = float(np.max(length_wl)) if len(length_wl) else 0.0
    if longest <= 0:
        return 0.0, 0.0
    base = _WSCLEAN_TURN_PER_S * longest * float(interval_s)
    best = (0.0, 0.0)
    for k in multiples:
        x = float(k) * base
        loss = float(loss_of(x))
        if loss > max_loss:
            break
        best = (x, loss)
    return best


def pointing_track(phase_ra_rad: float, phase_dec_rad: float, mid_mjd: float,
                   times_mjd) -> tuple[np.ndarray, np.ndarray]:
    """ICRS pointing of dishes parked at the az/el of the phase centre at mid-time.

    The DSA-110 drifts: the dishes stay at a fixed az/el (the meridian at the pointing declination)
    and the MS phase centre is that direction at the group's mid-time. No refraction.

    Parameters
    ----------
    phase_ra_rad, phase_dec_rad : float
        Phase centre (ICRS), radians.
    mid_mjd : float
        Mid-time of the tile, MJD (UTC).
    times_mjd : float or array, shape (Nt,)
        Times, MJD (UTC).

    Returns
    -------
    ra, dec : numpy.ndarray, shape (Nt,)
        ICRS pointing at each time, radians.
    """
    loc = ovro_location()
    t_mid = Time(mid_mjd, format="mjd", scale="utc")
    pc = SkyCoord(phase_ra_rad * u.rad, phase_dec_rad * u.rad, frame="icrs")
    aa = pc.transform_to(AltAz(obstime=t_mid, location=loc, pressure=0 * u.hPa))
    tt = Time(np.atleast_1d(times_mjd), format="mjd", scale="utc")
    fixed = SkyCoord(AltAz(az=np.full(len(tt), aa.az.rad) * u.rad, alt=np.full(len(tt), aa.alt.rad) * u.rad,
                           obstime=tt, location=loc, pressure=0 * u.hPa))
    icrs = fixed.icrs
    return icrs.ra.rad, icrs.dec.rad
