"""The calibration sky model: point sources through the drifting primary beam, written to MODEL_DATA.

A point source (Stokes I, so XX = YY = S) at its catalogue (J2000) position with flux
``S(f) = S_1.4GHz (f / 1.4 GHz) ** alpha``, predicted with the MS's own UVW and phase centre for
every row::

    V_model(t, f) = S(f) * A(theta(t), f) * exp(+2 pi i f/c (u l + v m + w (n - 1)))

where (l, m, n) are the direction cosines of the source relative to the row's field phase centre
(CASA's sign convention, checked against ``ft`` in the tests) and ``A`` is the Airy power beam of a
4.65 m dish. The dishes point at the fixed HADEC(0, dec_pointing) (a fixed az/el), so the pointing
drifts across the sky at the sidereal rate: ``theta(t)`` is the separation between the source and
the pointing at *each integration's* time (astropy, apparent places). A single mid-time beam would
be wrong by up to several per cent at the ends of a 5-minute tile, more at the top of the band;
``meta['beam_mid_error']`` (per SPW) gives that error for the data at hand.

The pointing declination (apparent, HADEC frame) is recovered from the MS: the conversion puts the
phase centre on the meridian at the group's mid-time, so transforming the phase centre to HADec at
that time gives it back (a warning is logged if its hour angle is not ~0).
"""
from __future__ import annotations

import logging
import time as _time

import numpy as np
from astropy import units as u
from astropy.coordinates import HADec, SkyCoord
from astropy.time import Time

from dsacont import calibrators
from dsacont.calibration.kernels import _gaussian_taper_kernel, _point_sources_kernel
from dsacont.calibration.msinfo import MSInfo, read_ms_info
from dsacont.calibration.transits import DEFAULT_MIN_FLUX_JY
from dsacont.errors import BadInputError
from dsacont.io.ms import ensure_column, iter_ddid, table
from dsacont.telescope import airy_beam, ovro_location

log = logging.getLogger(__name__)

#: model sign: V = S exp(SIGN * 2 pi i f/c (ul + vm + w(n-1))) with the MS UVW; +1 is what CASA ft computes
MODEL_SIGN = 1.0

def lmn(ra, dec, ra0, dec0):
    """Direction cosines (l, m, n) of (ra, dec) relative to the phase centre (ra0, dec0); radians."""
    dra = ra - ra0
    l = np.cos(dec) * np.sin(dra)
    m = np.sin(dec) * np.cos(dec0) - np.cos(dec) * np.sin(dec0) * np.cos(dra)
    n = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(dra)
    return np.array([l, m, n])


def pointing_dec_from_phase_centre(ra0, dec0, mjd) -> tuple[float, float]:
    """Apparent (HADEC) declination and hour angle, radians, of an ICRS direction at ``mjd``."""


    hd = SkyCoord(ra=ra0 * u.rad, dec=dec0 * u.rad, frame="icrs").transform_to(
        HADec(obstime=Time(mjd, format="mjd", scale="utc"), location=ovro_location()))
    ha = (hd.ha.rad + np.pi) % (2 * np.pi) - np.pi
    return float(hd.dec.rad), float(ha)


def beam_offsets(ra, dec, pointing_dec_app, mjds) -> np.ndarray:
    """Angular distance (radians) of ICRS (ra, dec) from the pointing HADEC(0, dec_app) at each time.

    ``mjds`` (Ntimes,) UTC; returns (Ntimes,).
    """


    t = Time(np.atleast_1d(mjds), format="mjd", scale="utc")
    p = SkyCoord(HADec(ha=np.zeros(t.size) * u.rad, dec=np.full(t.size, pointing_dec_app) * u.rad,
                       obstime=t, location=ovro_location())).transform_to("icrs")
    src = SkyCoord(ra=ra * u.rad, dec=dec * u.rad, frame="icrs")
    return np.asarray(p.separation(src).rad)


def point_model(uvw, freqs, tidx, fidx, lmn_sf, amp, sign=MODEL_SIGN, npol=2):
    """Predict point sources for MS rows; see :func:`_point_sources_kernel` for shapes.

    ``lmn_sf`` (nsrc, nfield, 3) and ``amp`` (nsrc, ntime, nchan); a single source may be given
    as (nfield, 3) and (ntime, nchan). Returns (npol, nchan, nrow) complex64.
    """
    lmn_sf = np.asarray(lmn_sf, dtype=np.float64)
    amp = np.asarray(amp, dtype=np.float64)
    if lmn_sf.ndim == 2:
        lmn_sf, amp = lmn_sf[None], amp[None]
    f = np.asarray(freqs, dtype=np.float64)
    if f.size > 2 and np.ptp(np.diff(f)) > 1e-6 * abs(f[1] - f[0]):
        raise ValueError("point_model needs equally spaced channels within an SPW")
    return _point_sources_kernel(np.ascontiguousarray(uvw, dtype=np.float64), f,
                                 np.asarray(tidx, dtype=np.int64), np.asarray(fidx, dtype=np.int64),
                                 np.ascontiguousarray(lmn_sf), np.ascontiguousarray(amp), float(sign), int(npol))


def source_shape(src) -> tuple[float, float, float] | None:
    """``(major, minor, pa)`` in radians of a source's Gaussian (attributes ``major_arcsec``,
    ``minor_arcsec``, ``pa_deg``), or None for a point source."""
    major = float(getattr(src, "major_arcsec", 0.0) or 0.0)
    if major <= 0.0:
        return None
    minor = float(getattr(src, "minor_arcsec", 0.0) or 0.0) or major
    return (np.radians(major / 3600.0), np.radians(minor / 3600.0), np.radians(float(getattr(src, "pa_deg", 0.0))))


def source_model(uvw, freqs, tidx, fidx, lmn_sf, amp, shapes=None, sign=MODEL_SIGN, npol=2):
    """Predict point and Gaussian sources for MS rows: :func:`point_model` with, per source, the
    visibility taper of its Gaussian (:func:`dsacont.calibration.kernels._gaussian_taper_kernel`).

    ``lmn_sf`` (nsrc, nfield, 3), ``amp`` (nsrc, ntime, nchan) Jy, ``shapes``: per source None
    (point) or ``(major, minor, pa)`` radians (:func:`source_shape`); None: all points. The taper
    uses the phase centre's (u, v), right for sources much smaller than their distance from it.
    Returns (npol, nchan, nrow) complex64.
    """
    lmn_sf = np.asarray(lmn_sf, dtype=np.float64)
    amp = np.asarray(amp, dtype=np.float64)
    if not shapes or all(sh is None for sh in shapes):
        return point_model(uvw, freqs, tidx, fidx, lmn_sf, amp, sign=sign, npol=npol)
    points = [k for k, sh in enumerate(shapes) if sh is None]
    out = (point_model(uvw, freqs, tidx, fidx, lmn_sf[points], amp[points], sign=sign, npol=npol) if points
           else np.zeros((npol, len(freqs), len(uvw)), dtype=np.complex64))
    uvw64 = np.ascontiguousarray(uvw, dtype=np.float64)
    f64 = np.asarray(freqs, dtype=np.float64)
    for k, sh in enumerate(shapes):
        if sh is None:
            continue
        taper = _gaussian_taper_kernel(uvw64, f64, float(sh[0]), float(sh[1]), float(sh[2]))
        out += point_model(uvw, freqs, tidx, fidx, lmn_sf[k:k + 1], amp[k:k + 1], sign=sign, npol=npol) \
            * taper[None].astype(np.float32)
    return out


def pointing_dec(info: MSInfo) -> float:
    ra0, dec0 = info.field_dirs[len(info.field_dirs) // 2]
    dec_app, ha = pointing_dec_from_phase_centre(ra0, dec0, info.mid_mjd)
    if abs(ha) > np.radians(0.25):
        log.warning("%s: phase centre is %.2f deg of hour angle off the meridian at mid-time; "
                    "the pointing declination taken from it may be off", info.path, np.degrees(ha))
    return dec_app


def model_amplitudes(src, info: MSInfo, *, beam: str = "time", pointing_dec_rad: float | None = None):
    """Flux x primary beam of one source per (time, channel) of each SPW.

    ``src``: Calibrator or SkySource (``ra_deg``, ``dec_deg``, ``flux_at``).
    Returns (amps, meta): ``amps[spw]`` is (Ntimes, Nchan_spw) in Jy; ``meta`` has the pointing
    declination, the beam offsets per time, and ``beam_mid_error``: per SPW, the relative error
    of the time-averaged model if the beam were evaluated at the mid-time only.
    """

    ra, dec = np.radians(src.ra_deg), np.radians(src.dec_deg)
    mjds = info.times_s / 86400.0
    if pointing_dec_rad is None:
        pointing_dec_rad = pointing_dec(info)
    offsets = beam_offsets(ra, dec, pointing_dec_rad, mjds)
    off_mid = float(beam_offsets(ra, dec, pointing_dec_rad, [info.mid_mjd])[0])
    amps, mid_err = [], []
    for f in info.spw_freqs:
        s = np.asarray(src.flux_at(f), dtype=float)
        a_t = airy_beam(offsets[:, None], f[None, :])
        a_mid = airy_beam(off_mid, f)
        if beam == "time":
            amps.append(s[None, :] * a_t)
        elif beam == "mid":
            amps.append(np.broadcast_to(s * a_mid, (len(mjds), len(f))).copy())
        elif beam == "none":
            amps.append(np.broadcast_to(s, (len(mjds), len(f))).copy())
        else:
            raise ValueError(f"beam must be 'time', 'mid' or 'none', not {beam!r}")
        mid_err.append(float(np.mean(a_mid / a_t.mean(axis=0)) - 1.0))
    meta = {
        "pointing_dec_deg": float(np.degrees(pointing_dec_rad)),
        "beam_offset_deg": [float(x) for x in np.degrees(offsets)],
        "beam_offset_mid_deg": float(np.degrees(off_mid)),
        "beam": beam,
        "beam_mid_error": mid_err,
    }
    return amps, meta


#: a field source enters a calibrator's model when its apparent flux in the tile reaches this
#: fraction of the calibrator's (:func:`significant_sky`)
SKY_MIN_FRACTION = 0.0025


def closest_approach_rad(src, info: MSInfo, pointing_dec_rad: float) -> float:
    """The least primary-beam offset (radians) of ``src`` (``ra_deg``, ``dec_deg``) during the
    tile, from its start, middle and end (the drift is monotonic over 5 minutes)."""
    mjds = np.array([info.times_s.min() / 86400.0, info.mid_mjd, info.times_s.max() / 86400.0])
    return float(np.min(beam_offsets(np.radians(src.ra_deg), np.radians(src.dec_deg), pointing_dec_rad, mjds)))


def significant_sky(info: MSInfo, cal, sky, *, min_fraction: float = SKY_MIN_FRACTION,
                    pointing_dec_rad: float | None = None) -> list:
    """The field sources of ``sky`` that matter to a solve on ``cal``: those whose apparent flux
    (1.4 GHz flux x primary beam at their closest approach in the tile) is at least
    ``min_fraction`` of the calibrator's, in the order given.

    The solve's noise sets the scale: one antenna's bandpass in one channel averages ~90
    baselines x 24 integrations, ~50 mJy of thermal noise at the real size (SEFD 6000 Jy, 244 kHz,
    12.9 s), 0.6 % of 0834+555. A source at 0.25 % (20 mJy) left out of the model enters that
    average further decorrelated by its fringe rotation over baselines and time, and the faint
    sources left out add incoherently. What matters is the bright neighbour (a 1.5 Jy source
    0.45 deg from 0834+555, 17 %), and the model predict costs time per source: the strip model
    or a tile's own catalogue brings ~100-300 sources, most of a few mJy.
    """
    if not sky:
        return []
    if pointing_dec_rad is None:
        pointing_dec_rad = pointing_dec(info)

    def apparent(src):
        return float(src.flux_jy * airy_beam(closest_approach_rad(src, info, pointing_dec_rad), 1.4e9))

    floor = min_fraction * apparent(cal)
    return [s for s in sky if apparent(s) >= floor]


#: a bright sidelobe source (:data:`dsacont.calibrators.BRIGHT_SIDELOBE_SOURCES`) is modelled when its
#: largest apparent flux over the tile and the band reaches this (Jy) ...
SIDELOBE_MIN_APPARENT_JY = 1.0
#: ... and it passes within this distance of the pointing (degrees): ~1 h of hour angle around Cas A's
#: transit at Dec +55.6, where its first and second sidelobes give it 2-40 Jy
SIDELOBE_MAX_OFFSET_DEG = 10.0


def sidelobe_sources(info: MSInfo, *, min_apparent_jy: float = SIDELOBE_MIN_APPARENT_JY,
                     max_offset_deg: float = SIDELOBE_MAX_OFFSET_DEG, pointing_dec_rad: float | None = None) -> list:
    """The bright sidelobe sources (Cas A, Cyg A) that matter in this tile.

    A source qualifies when it passes within ``max_offset_deg`` of the drifting pointing during the
    tile and its apparent flux (flux x Airy power beam) reaches ``min_apparent_jy`` at some
    integration and channel: near the beam's first null (Cas A at 3.4 deg from Dec +55.6) the
    response changes by orders of magnitude across the band, so one frequency is not enough.

    Returns a list of dicts ``{"source": BrightSource, "peak_apparent_jy", "mean_apparent_jy",
    "closest_deg"}``, brightest first.
    """
    if pointing_dec_rad is None:
        pointing_dec_rad = pointing_dec(info)
    mjds = np.linspace(info.times_s.min(), info.times_s.max(), 5) / 86400.0
    freqs = np.concatenate([np.asarray(f, dtype=float) for f in info.spw_freqs])
    out = []
    for src in calibrators.BRIGHT_SIDELOBE_SOURCES:
        if abs(src.dec_deg - np.degrees(pointing_dec_rad)) > max_offset_deg + 1.0:
            continue
        off = beam_offsets(np.radians(src.ra_deg), np.radians(src.dec_deg), pointing_dec_rad, mjds)
        if np.degrees(off.min()) > max_offset_deg:
            continue
        app = src.flux_at(freqs)[None, :] * airy_beam(off[:, None], freqs[None, :])
        if float(app.max()) >= min_apparent_jy:
            out.append({"source": src, "peak_apparent_jy": float(app.max()), "mean_apparent_jy": float(app.mean()),
                        "closest_deg": float(np.degrees(off.min()))})
    return sorted(out, key=lambda d: -d["peak_apparent_jy"])


def write_model(ms, calibrator, *, sky=None, beam: str = "time", pointing_dec_rad: float | None = None,
                info: MSInfo | None = None) -> dict:
    """Write MODEL_DATA of ``ms``: the calibrator as a point source through the drifting beam.

    Parameters
    ----------
    ms : path
    calibrator : str or Calibrator or None
        None: the ``sky`` sources alone (a field model).
    sky : list of SkySource, optional
        Further sources to include (field sources from a survey catalogue): where a
        bright source sits near the calibrator it otherwise limits the gain accuracy
        (confusion). Each is attenuated by the same time-dependent beam; a source with a size
        (``major_arcsec`` > 0) is predicted as its Gaussian (:func:`source_model`).
    beam : {'time', 'mid', 'none'}
        'time' (default): beam attenuation per integration (the pointing drifts);
        'mid': the beam at the mid-time for all integrations; 'none': no primary beam.
    pointing_dec_rad : float, optional
        Apparent (HADEC) pointing declination; default: recovered from the phase centre.

    Returns
    -------
    dict: calibrator name, flux, spectral index, number of sky sources, and the calibrator's
    beam meta data (see :func:`model_amplitudes`).
    """
    from dsacont.calibrators import get_calibrator

    cal = get_calibrator(calibrator) if isinstance(calibrator, str) else calibrator
    ms = str(ms)
    info = info or read_ms_info(ms)
    if pointing_dec_rad is None:
        pointing_dec_rad = pointing_dec(info)
    if cal is None and not sky:
        raise ValueError(f"{ms}: a model needs a calibrator or sky sources")
    sources = ([cal] if cal is not None else []) + [s for s in (sky or [])
                                                      if cal is None or getattr(s, "name", None) != cal.name]
    per_src = [model_amplitudes(s, info, beam=beam, pointing_dec_rad=pointing_dec_rad) for s in sources]
    shapes = [source_shape(s) for s in sources]
    meta = per_src[0][1]
    lmn_sf = np.array([[lmn(np.radians(s.ra_deg), np.radians(s.dec_deg), r0, d0) for r0, d0 in info.field_dirs]
                       for s in sources])
    ensure_column(ms, "MODEL_DATA")
    t0 = _time.perf_counter()
    with table(ms, readonly=False) as tb:
        npol = int(tb.getcell("DATA", 0).shape[0])
        for d, sub, s, n in iter_ddid(tb, range(len(info.ddid_spw))):
            spw = int(info.ddid_spw[d])
            amp = np.stack([a[spw] for a, _ in per_src])
            uvw = np.asarray(sub.getcol("UVW", s, n)).T
            tidx = np.searchsorted(info.times_s, sub.getcol("TIME", s, n))
            fidx = np.asarray(sub.getcol("FIELD_ID", s, n))
            model = source_model(uvw, info.spw_freqs[spw], tidx, fidx, lmn_sf, amp, shapes, npol=npol)
            sub.putcol("MODEL_DATA", model, s, n)
    n_field = len(sources) - (cal is not None)
    if cal is None:
        log.info("%s: MODEL_DATA written for %d field sources (%.1f s; beam %s)", ms, n_field,
                 _time.perf_counter() - t0, beam)
        return {"calibrator": None, "n_sky_sources": n_field, "pointing_dec_deg": meta["pointing_dec_deg"],
                "beam": beam}
    log.info("%s: MODEL_DATA written for %s + %d field sources (%.1f s; beam %s, offset at mid-time %.3f deg)",
             ms, cal.name, n_field, _time.perf_counter() - t0, beam, meta["beam_offset_mid_deg"])
    return {"calibrator": cal.name, "flux_jy": float(cal.flux_jy), "spectral_index": float(cal.spectral_index),
            "ra_deg": cal.ra_deg, "dec_deg": cal.dec_deg, "n_sky_sources": n_field, **meta}


def select_calibrator(ms, *, min_flux_jy: float = DEFAULT_MIN_FLUX_JY, info: MSInfo | None = None):
    """The catalogue calibrator with the largest beam-attenuated flux in ``ms`` at mid-time."""

    info = info or read_ms_info(ms)
    ra0, dec0 = info.field_dirs[len(info.field_dirs) // 2]
    dec_app, _ = pointing_dec_from_phase_centre(ra0, dec0, info.mid_mjd)
    best, best_flux = None, 0.0
    for cal in calibrators.load_catalogue():
        if not np.isfinite(cal.flux_jy) or cal.flux_jy < min_flux_jy or abs(cal.dec_deg - np.degrees(dec0)) > 6:
            continue
        off = beam_offsets(np.radians(cal.ra_deg), np.radians(cal.dec_deg), dec_app, [info.mid_mjd])[0]
        s = cal.flux_jy * float(airy_beam(off, 1.4e9))
        if s > best_flux:
            best, best_flux = cal, s
    if best is None or best_flux < 0.5 * min_flux_jy:
        raise BadInputError(ms, f"no catalogue calibrator brighter than {min_flux_jy} Jy in the primary beam")
    log.info("%s: calibrator %s (%.2f Jy in the beam at mid-time)", ms, best.name, best_flux)
    return best
