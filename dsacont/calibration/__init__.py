"""Calibration: calibrator transits, a drifting-beam point-source model, B and G solves, apply.

One calibrator group goes through::

    find_calibrator_transits(start, end, dec)     which groups hold a usable calibrator transit
    solve_calibration(ms, "0834+555")             flag autocorrelations and zeros,
                                                  write MODEL_DATA (time-dependent beam model),
                                                  solve G0 (phase, per integration) -> B (solint inf,
                                                  solnorm) -> G (amplitude+phase), register B and G
    apply_calibration(target_ms)                  look the tables up in the registry, applycal,
                                                  check CORRECTED_DATA

The model (:func:`write_model`)
-------------------------------
A point source (Stokes I, so XX = YY = S) at the catalogue (J2000) position with flux
``S(f) = S_1.4GHz (f / 1.4 GHz) ** alpha``, written to MODEL_DATA by our own prediction with the
MS's own UVW and phase centre, for every row::

    V_model(t, f) = S(f) * A(theta(t), f) * exp(+2 pi i f/c (u l + v m + w (n - 1)))

where (l, m, n) are the direction cosines of the calibrator relative to the row's field phase
centre (CASA's sign convention, checked against ``ft`` in the tests) and ``A`` is the Airy power
beam of a 4.65 m dish. The dishes point at the fixed HADEC(0, dec_pointing) (a fixed az/el), so
the pointing drifts across the sky at the sidereal rate: ``theta(t)`` is the separation between
the calibrator and the pointing at *each integration's* time, computed with astropy (apparent
places, precession included). A single mid-time beam would be wrong by up to several per cent at
the ends of a 5-minute tile, more at the top of the band, and the error would go straight into
the gain amplitudes and (through the time average) into the bandpass shape;
``metrics['model']['beam_mid_error']`` (per SPW) gives that error for the data at hand: on the
acceptance group (0834+555, group 2025-10-29T13:52:51, calibrator 0.30 deg from the pointing at
mid-time, 0.64 deg at the start to 0.09 deg at the true transit near the end) a mid-time beam would mis-set the flux scale by 1.3 % at
the bottom of the band and 1.7 % at the top, and tilt the bandpass by the difference.

The pointing declination (apparent, HADEC frame) is recovered from the MS: the conversion puts the
phase centre on the meridian at the group's mid-time, so transforming the phase centre to HADec at
that time gives it back (a warning is logged if its hour angle is not ~0).

Solutions
---------
- Reference antenna: chosen automatically among the antennas with (nearly) the fewest flags,
  the one closest to the array's centroid; CASA gets a ranked list to fall back on.
- ``G0``: phase-only, per integration, per SPW: removes the time-variable phase before the
  bandpass average (applied while solving B only; never registered).
- ``B``: ``bandtype='B'``, ``solint='inf'``, ``combine='scan'``, ``solnorm=True``, per SPW
  (subbands are never combined).
- ``G``: ``calmode='ap'`` per SPW with B applied; the amplitude follows the model, which sets
  the flux scale. ``solint`` default 'inf' (one per SPW per tile; 'int' possible).

Registry
--------
Tables are written under ``paths.tmp`` and moved into ``paths.caltables`` with ``os.replace``;
each is registered in 'writing' state before the solve and marked valid (or rejected, with the
reason) afterwards. A G records the B it was solved on (``depends_on``), so applying picks B and
G that belong together.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time as _time
from dataclasses import dataclass, field
from pathlib import Path

import numba
import numpy as np

from dsacont.errors import BadInputError, CalibrationUnavailable

log = logging.getLogger(__name__)

C_M_S = 299_792_458.0
DEFAULT_MIN_FLUX_JY = 1.0
DEFAULT_MIN_PB = 0.5
GROUP_DURATION_S = 24 * 12.884902
#: a solve is rejected when more than this fraction of its solutions is flagged
MAX_FLAGGED_SOLUTIONS = 0.5
#: model sign: V = S exp(SIGN * 2 pi i f/c (ul + vm + w(n-1))) with the MS UVW; +1 is what CASA ft computes
MODEL_SIGN = 1.0


# ------------------------------------------------------------------------------------------
# 1. calibrator selection
# ------------------------------------------------------------------------------------------
@dataclass
class CalibratorTransit:
    """One calibrator transit over OVRO.

    Attributes
    ----------
    calibrator : dsacont.calibrators.Calibrator
    transit : astropy Time        true meridian crossing (apparent hour angle 0)
    transit_catalogue : Time       LST = catalogue RA (the operators' quoted transit time)
    pb : float                     primary-beam power response at transit, 1.4 GHz
    flux_jy : float                catalogue 20 cm flux
    apparent_flux_jy : float       flux_jy * pb
    groups : list                  the groups (as given) whose time range contains the transit,
                                   nearest mid-time first
    """

    calibrator: object
    transit: object
    transit_catalogue: object
    pb: float
    flux_jy: float
    apparent_flux_jy: float
    groups: list = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.calibrator.name


def _as_time(t):
    from astropy.time import Time

    return t if isinstance(t, Time) else Time(t, scale="utc")


def _group_range(g):
    """(start, end) astropy Times of a group: Group, (start, end) pair, or a start time."""
    from astropy import units as u

    if hasattr(g, "timestamp"):
        start = _as_time(g.timestamp)
        return start, start + GROUP_DURATION_S * u.s
    if isinstance(g, (tuple, list)) and len(g) == 2:
        return _as_time(g[0]), _as_time(g[1])
    start = _as_time(g)
    return start, start + GROUP_DURATION_S * u.s


def find_calibrator_transits(start, end, dec_deg: float, *, min_flux_jy: float = DEFAULT_MIN_FLUX_JY,
                             min_pb: float = DEFAULT_MIN_PB, freq_hz: float = 1.4e9, groups=None,
                             catalogue=None) -> list[CalibratorTransit]:
    """Calibrator transits over OVRO in ``[start, end]`` bright enough in the primary beam.

    Parameters
    ----------
    start, end : str or astropy Time (UTC)
    dec_deg : float
        Pointing declination, degrees (the HADEC/apparent declination of the files'
        ``phase_center_dec``).
    min_flux_jy : float
        Minimum catalogue 20 cm flux density.
    min_pb : float
        Minimum primary-beam power response at transit, at ``freq_hz``.
    groups : iterable, optional
        Groups to match transits with: :class:`dsacont.io.groups.Group` objects, (start, end)
        pairs, or start times (a group then lasts 309.2 s).
    catalogue : list of Calibrator, optional (default: the shipped VLA catalogue)

    Returns
    -------
    list of :class:`CalibratorTransit`, in time order.
    """
    from astropy import units as u
    from astropy.coordinates import HADec, SkyCoord

    from dsacont import calibrators
    from dsacont.telescope import airy_beam, beam_fwhm_rad, ovro_location

    start, end = _as_time(start), _as_time(end)
    cats = catalogue if catalogue is not None else calibrators.load_catalogue()
    radius = np.degrees(2.0 * beam_fwhm_rad(freq_hz)) + 1.0  # generous pre-filter, degrees
    cands = [c for c in cats if np.isfinite(c.flux_jy) and c.flux_jy >= min_flux_jy
             and abs(c.dec_deg - dec_deg) < radius]
    group_ranges = [(g, *_group_range(g)) for g in (groups or [])]
    out = []
    for cal in cands:
        for tcat in calibrators.transits_between(cal.ra_deg, start - 0.5 * u.hour, end + 0.5 * u.hour,
                                                 convention="catalogue"):
            t = calibrators.transit_time(cal.ra_deg, tcat - 10 * u.min, cal.dec_deg, convention="apparent")
            if not (start <= t <= end):
                continue
            app = SkyCoord(ra=cal.ra_deg * u.deg, dec=cal.dec_deg * u.deg, frame="icrs").transform_to(
                HADec(obstime=t, location=ovro_location()))
            offset = abs(app.dec.rad - np.radians(dec_deg))
            pb = float(airy_beam(offset, freq_hz))
            if pb < min_pb:
                continue
            mids = []
            for g, g0, g1 in group_ranges:
                if g0 <= t <= g1:
                    mids.append((abs((g0 + (g1 - g0) / 2 - t).to_value(u.s)), g))
            mids.sort(key=lambda x: x[0])
            out.append(CalibratorTransit(cal, t, tcat, pb, float(cal.flux_jy), float(cal.flux_jy * pb),
                                         [g for _, g in mids]))
    out.sort(key=lambda x: x.transit.mjd)
    return out


# ------------------------------------------------------------------------------------------
# MS access (casatools only)
# ------------------------------------------------------------------------------------------
def _tools():
    from dsacont.casa import ensure_casa

    return ensure_casa()


@dataclass
class MSInfo:
    """What calibration needs to know about an MS.

    times_s : (Ntimes,) unique TIME values, seconds since MJD 0 (UTC)
    spw_freqs : list of (Nchan_spw,) channel frequencies, Hz, one per SPW
    ddid_spw : (Nddid,) spectral-window id of each DATA_DESCRIPTION row
    field_dirs : (Nfield, 2) phase centres (ra, dec), radians, J2000/ICRS
    antenna_names : list[str]
    antenna_positions : (Nant, 3) ITRF metres
    """

    path: str
    times_s: np.ndarray
    spw_freqs: list
    ddid_spw: np.ndarray
    field_dirs: np.ndarray
    antenna_names: list
    antenna_positions: np.ndarray
    nrows: int

    @property
    def mid_mjd(self) -> float:
        return float(0.5 * (self.times_s.min() + self.times_s.max()) / 86400.0)


def read_ms_info(ms) -> MSInfo:
    """Read :class:`MSInfo` from a Measurement Set (raises BadInputError if unusable)."""
    ct = _tools()
    ms = str(ms)
    if not os.path.isdir(ms):
        raise BadInputError(ms, "no such Measurement Set")
    tb = ct.table()
    try:
        tb.open(ms)
        nrows = tb.nrows()
        if nrows == 0:
            raise BadInputError(ms, "the Measurement Set has no rows")
        times = np.unique(tb.getcol("TIME"))
        tb.close()
        tb.open(ms + "/SPECTRAL_WINDOW")
        freqs = tb.getvarcol("CHAN_FREQ")
        spw_freqs = [np.asarray(freqs[f"r{i + 1}"]).ravel().astype(float) for i in range(len(freqs))]
        tb.close()
        tb.open(ms + "/DATA_DESCRIPTION")
        ddid_spw = np.asarray(tb.getcol("SPECTRAL_WINDOW_ID"), dtype=int)
        tb.close()
        tb.open(ms + "/FIELD")
        pd = np.asarray(tb.getcol("PHASE_DIR"))  # (2, 1, nfield)
        ref = tb.getcolkeyword("PHASE_DIR", "MEASINFO").get("Ref", "J2000")
        tb.close()
        if ref not in ("J2000", "ICRS"):
            raise BadInputError(ms, f"phase centres are in {ref}; J2000/ICRS expected")
        tb.open(ms + "/ANTENNA")
        names = list(tb.getcol("NAME"))
        pos = np.asarray(tb.getcol("POSITION")).T
        tb.close()
    except RuntimeError as exc:
        raise BadInputError(ms, f"casatools cannot read it: {exc}") from exc
    finally:
        tb.done()
    return MSInfo(ms, times, spw_freqs, ddid_spw, pd[:, 0, :].T.copy(), names, pos, int(nrows))


def _ensure_column(ms: str, name: str, like: str = "DATA") -> None:
    """Add a data column shaped like ``like`` (tiled storage) if the MS has none."""
    ct = _tools()
    tb = ct.table()
    tb.open(ms, nomodify=False)
    try:
        if name in tb.colnames():
            return
        desc = tb.getcoldesc(like)
        desc.pop("comment", None)
        cell = [int(x) for x in tb.getcell(like, 0).shape]
        # tiles of ~1 MiB holding whole cells: the same row blocks as DATA
        rows = int(np.clip(2**20 // (8 * int(np.prod(cell))), 64, 8192))
        dm = {"TYPE": "TiledShapeStMan", "NAME": f"Tiled{name}", "SEQNR": 0,
              "SPEC": {"DEFAULTTILESHAPE": np.array(cell + [rows], dtype=np.int32)}}
        tb.addcols({name: desc}, dm)
    finally:
        tb.close()
        tb.done()


def _iter_ddid(tb, ddids, chunk_rows: int = 200_000):
    """Yield (ddid, subtable, start, nrow) chunks of one DATA_DESC_ID at a time."""
    for d in ddids:
        sub = tb.query(f"DATA_DESC_ID=={int(d)}")
        try:
            n = sub.nrows()
            for s in range(0, n, chunk_rows):
                yield int(d), sub, s, min(chunk_rows, n - s)
        finally:
            sub.close()


# ------------------------------------------------------------------------------------------
# 2. the model
# ------------------------------------------------------------------------------------------
def lmn(ra, dec, ra0, dec0):
    """Direction cosines (l, m, n) of (ra, dec) relative to the phase centre (ra0, dec0); radians."""
    dra = ra - ra0
    l = np.cos(dec) * np.sin(dra)
    m = np.sin(dec) * np.cos(dec0) - np.cos(dec) * np.sin(dec0) * np.cos(dra)
    n = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(dra)
    return np.array([l, m, n])


def pointing_dec_from_phase_centre(ra0, dec0, mjd) -> tuple[float, float]:
    """Apparent (HADEC) declination and hour angle, radians, of an ICRS direction at ``mjd``."""
    from astropy import units as u
    from astropy.coordinates import HADec, SkyCoord
    from astropy.time import Time

    from dsacont.telescope import ovro_location

    hd = SkyCoord(ra=ra0 * u.rad, dec=dec0 * u.rad, frame="icrs").transform_to(
        HADec(obstime=Time(mjd, format="mjd", scale="utc"), location=ovro_location()))
    ha = (hd.ha.rad + np.pi) % (2 * np.pi) - np.pi
    return float(hd.dec.rad), float(ha)


def beam_offsets(ra, dec, pointing_dec_app, mjds) -> np.ndarray:
    """Angular distance (radians) of ICRS (ra, dec) from the pointing HADEC(0, dec_app) at each time.

    ``mjds`` (Ntimes,) UTC; returns (Ntimes,).
    """
    from astropy import units as u
    from astropy.coordinates import HADec, SkyCoord
    from astropy.time import Time

    from dsacont.telescope import ovro_location

    t = Time(np.atleast_1d(mjds), format="mjd", scale="utc")
    p = SkyCoord(HADec(ha=np.zeros(t.size) * u.rad, dec=np.full(t.size, pointing_dec_app) * u.rad,
                       obstime=t, location=ovro_location())).transform_to("icrs")
    src = SkyCoord(ra=ra * u.rad, dec=dec * u.rad, frame="icrs")
    return np.asarray(p.separation(src).rad)


@numba.njit(nogil=True, cache=True)
def _point_sources_kernel(uvw, freqs, tidx, fidx, lmn_sf, amp, sign, npol):
    """Sum of point sources, MODEL_DATA layout (npol, nchan, nrow) complex64.

    uvw (nrow, 3) m; freqs (nchan,) Hz, equally spaced; tidx (nrow,) index into amp's time
    axis; fidx (nrow,) field index; lmn_sf (nsrc, nfield, 3) direction cosines; amp
    (nsrc, ntime, nchan) Jy (flux x beam). The phase steps from channel to channel by one
    complex multiplication (channels equally spaced), exact to ~1e-13 rad over 48 channels.
    """
    nrow = uvw.shape[0]
    nchan = freqs.shape[0]
    nsrc = amp.shape[0]
    df = freqs[1] - freqs[0] if nchan > 1 else 0.0
    out = np.zeros((npol, nchan, nrow), dtype=np.complex64)
    acc = np.empty(nchan, dtype=np.complex128)
    k = sign * 2.0 * np.pi / 299792458.0
    for r in range(nrow):
        f = fidx[r]
        t = tidx[r]
        for c in range(nchan):
            acc[c] = 0.0
        for s in range(nsrc):
            d = (uvw[r, 0] * lmn_sf[s, f, 0] + uvw[r, 1] * lmn_sf[s, f, 1]
                 + uvw[r, 2] * (lmn_sf[s, f, 2] - 1.0))
            ph0 = k * freqs[0] * d
            dph = k * df * d
            z = np.cos(ph0) + 1j * np.sin(ph0)
            step = np.cos(dph) + 1j * np.sin(dph)
            for c in range(nchan):
                acc[c] += amp[s, t, c] * z
                z *= step
        for c in range(nchan):
            for p in range(npol):
                out[p, c, r] = acc[c]
    return out


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


@dataclass(frozen=True)
class SkySource:
    """A point source of the model: ICRS position (deg), flux (Jy) at ``ref_freq_hz``, S ~ nu^alpha."""

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float = -0.7
    ref_freq_hz: float = 1.4e9

    def flux_at(self, freq_hz):
        return self.flux_jy * (np.asarray(freq_hz, dtype=float) / self.ref_freq_hz) ** self.spectral_index


def sky_from_arrays(name, ra_deg, dec_deg, flux_jy, spectral_index, ref_freq_hz=1.4e9) -> list[SkySource]:
    """SkySources from parallel arrays (e.g. a survey catalogue, or the simulator's truth)."""
    return [SkySource(str(n), float(r), float(d), float(s), float(a), float(ref_freq_hz))
            for n, r, d, s, a in zip(name, ra_deg, dec_deg, flux_jy, spectral_index)]


def load_sky_csv(path) -> list[SkySource]:
    """Field sources from a CSV file with a header naming the columns
    ``name, ra_deg, dec_deg, flux_jy[, spectral_index[, ref_freq_hz]]`` (flux at 1.4 GHz by default)."""
    import csv

    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            row = {k.strip(): v for k, v in row.items()}
            try:
                out.append(SkySource(row.get("name", ""), float(row["ra_deg"]), float(row["dec_deg"]),
                                     float(row["flux_jy"]), float(row.get("spectral_index") or -0.7),
                                     float(row.get("ref_freq_hz") or 1.4e9)))
            except (KeyError, ValueError) as exc:
                raise BadInputError(path, f"bad sky-model row {row}: {exc}") from exc
    return out


def _pointing_dec(info: MSInfo) -> float:
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
    from dsacont.telescope import airy_beam

    ra, dec = np.radians(src.ra_deg), np.radians(src.dec_deg)
    mjds = info.times_s / 86400.0
    if pointing_dec_rad is None:
        pointing_dec_rad = _pointing_dec(info)
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


def write_model(ms, calibrator, *, sky=None, beam: str = "time", pointing_dec_rad: float | None = None,
                info: MSInfo | None = None) -> dict:
    """Write MODEL_DATA of ``ms``: the calibrator as a point source through the drifting beam.

    Parameters
    ----------
    ms : path
    calibrator : str or Calibrator
    sky : list of SkySource, optional
        Further point sources to include (field sources from a survey catalogue): where a
        bright source sits near the calibrator it otherwise limits the gain accuracy
        (confusion). Each is attenuated by the same time-dependent beam.
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
        pointing_dec_rad = _pointing_dec(info)
    sources = [cal] + [s for s in (sky or []) if getattr(s, "name", None) != cal.name]
    per_src = [model_amplitudes(s, info, beam=beam, pointing_dec_rad=pointing_dec_rad) for s in sources]
    meta = per_src[0][1]
    lmn_sf = np.array([[lmn(np.radians(s.ra_deg), np.radians(s.dec_deg), r0, d0) for r0, d0 in info.field_dirs]
                       for s in sources])
    _ensure_column(ms, "MODEL_DATA")
    ct = _tools()
    tb = ct.table()
    tb.open(ms, nomodify=False)
    t0 = _time.perf_counter()
    try:
        npol = int(tb.getcell("DATA", 0).shape[0])
        for d, sub, s, n in _iter_ddid(tb, range(len(info.ddid_spw))):
            spw = int(info.ddid_spw[d])
            amp = np.stack([a[spw] for a, _ in per_src])
            uvw = np.asarray(sub.getcol("UVW", s, n)).T
            tidx = np.searchsorted(info.times_s, sub.getcol("TIME", s, n))
            fidx = np.asarray(sub.getcol("FIELD_ID", s, n))
            model = point_model(uvw, info.spw_freqs[spw], tidx, fidx, lmn_sf, amp, npol=npol)
            sub.putcol("MODEL_DATA", model, s, n)
    finally:
        tb.close()
        tb.done()
    log.info("%s: MODEL_DATA written for %s + %d field sources (%.1f s; beam %s, offset at mid-time %.3f deg)",
             ms, cal.name, len(sources) - 1, _time.perf_counter() - t0, beam, meta["beam_offset_mid_deg"])
    return {"calibrator": cal.name, "flux_jy": float(cal.flux_jy), "spectral_index": float(cal.spectral_index),
            "ra_deg": cal.ra_deg, "dec_deg": cal.dec_deg, "n_sky_sources": len(sources) - 1, **meta}


def select_calibrator(ms, *, min_flux_jy: float = DEFAULT_MIN_FLUX_JY, info: MSInfo | None = None):
    """The catalogue calibrator with the largest beam-attenuated flux in ``ms`` at mid-time."""
    from dsacont import calibrators
    from dsacont.telescope import airy_beam

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


# ------------------------------------------------------------------------------------------
# 3. flags, reference antenna, solves
# ------------------------------------------------------------------------------------------
def flag_for_calibration(ms) -> dict:
    """Flag autocorrelations and exact zeros (FLAG column); returns flag fractions per antenna."""
    ct = casatasks()
    ct.flagdata(vis=str(ms), mode="manual", autocorr=True, flagbackup=False)
    ct.flagdata(vis=str(ms), mode="clip", clipzeros=True, flagbackup=False)
    summary = ct.flagdata(vis=str(ms), mode="summary")
    per_ant = {k: v["flagged"] / v["total"] for k, v in summary["antenna"].items() if v["total"] > 0}
    return {"total": summary["flagged"] / max(summary["total"], 1), "antenna": per_ant}


def casatasks():
    from dsacont.casa import casatasks as _ct

    return _ct()


def choose_refant(info: MSInfo, antenna_flags: dict, n: int = 5) -> list[str]:
    """Rank antennas for reference: low flag fraction first, then closeness to the array centre (median position).

    Antennas whose flag fraction exceeds the best by more than 5 percentage points are ranked
    after all others. Returns up to ``n`` antenna names (CASA takes them as a fall-back list).
    """
    names = [n_ for n_ in info.antenna_names if n_ in antenna_flags]
    if not names:
        raise BadInputError(info.path, "no antenna has unflagged data")
    idx = {a: i for i, a in enumerate(info.antenna_names)}
    pos = info.antenna_positions[[idx[a] for a in names]]
    dist = np.linalg.norm(pos - np.median(pos, axis=0), axis=1)  # median: robust to outriggers
    best = min(antenna_flags[a] for a in names)
    key = [(antenna_flags[a] > best + 0.05, d, a) for a, d in zip(names, dist)]
    key.sort()
    return [a for bad, _, a in key if antenna_flags[a] < 0.99][:n]


def read_caltable(path) -> dict:
    """Solutions of a caltable: arrays indexed [row] with CPARAM (npol, nchan, nrow)."""
    ct = _tools()
    tb = ct.table()
    tb.open(str(path))
    try:
        out = {c: np.asarray(tb.getcol(c)) for c in ("TIME", "ANTENNA1", "SPECTRAL_WINDOW_ID", "CPARAM", "FLAG", "SNR")}
    finally:
        tb.close()
    tb.open(str(path) + "/SPECTRAL_WINDOW")
    try:
        f = tb.getvarcol("CHAN_FREQ")
        out["spw_freqs"] = [np.asarray(f[f"r{i + 1}"]).ravel() for i in range(len(f))]
    finally:
        tb.close()
        tb.done()
    return out


def caltable_metrics(path, antennas=None) -> dict:
    """Quality metrics of a caltable: flagged fraction (overall, per SPW, per antenna), SNR.

    ``antennas``: antenna indices (MS ANTENNA rows) to count; default all rows of the table.
    Antennas absent from the data (an ANTENNA table lists all 117 pads) must be left out,
    otherwise their flagged solutions count as failures.
    """
    t = read_caltable(path)
    if antennas is not None:
        keep = np.isin(t["ANTENNA1"], np.asarray(list(antennas), dtype=int))
        t = {k: (v[..., keep] if isinstance(v, np.ndarray) and v.shape[-1] == keep.size else v) for k, v in t.items()}
    flag = t["FLAG"]
    good = ~flag
    snr = t["SNR"][good]
    amp = np.abs(t["CPARAM"])[good]
    per_spw = {int(s): float(flag[..., t["SPECTRAL_WINDOW_ID"] == s].mean()) for s in np.unique(t["SPECTRAL_WINDOW_ID"])}
    per_ant = {int(a): float(flag[..., t["ANTENNA1"] == a].mean()) for a in np.unique(t["ANTENNA1"])}
    return {
        "n_solutions": int(flag.size),
        "flagged_fraction": float(flag.mean()),
        "flagged_fraction_spw": per_spw,
        "flagged_fraction_antenna": per_ant,
        "snr_median": float(np.median(snr)) if snr.size else 0.0,
        "snr_p05": float(np.percentile(snr, 5)) if snr.size else 0.0,
        "amp_median": float(np.median(amp)) if amp.size else 0.0,
        "n_times": int(np.unique(t["TIME"]).size),
    }


def _move_into_place(src: Path, dst: Path) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    try:
        os.replace(src, dst)
    except OSError:  # other file system: copy next to it, then rename atomically
        tmp = dst.with_name(dst.name + f".part{os.getpid()}")
        shutil.copytree(src, tmp)
        os.replace(tmp, dst)
        shutil.rmtree(src, ignore_errors=True)


def solve_calibration(ms_path, calibrator=None, *, paths=None, registry=None, refant=None,
                      gain_solint: str = "inf", minsnr: float = 3.0, beam: str = "time",
                      validity_h: dict | None = None, plots: bool = True, uvrange: str = "",
                      sky=None) -> dict:
    """Solve bandpass (B) and complex gains (G) on a calibrator MS and register them.

    The MS is modified: autocorrelations and zeros are flagged, MODEL_DATA is written.

    Parameters
    ----------
    ms_path : path of the calibrator Measurement Set
    calibrator : str or Calibrator, optional
        Default: the brightest catalogue calibrator in the primary beam (:func:`select_calibrator`).
    paths : dsacont.config.Paths, optional (default ``get_paths()``); caltables go to
        ``paths.caltables``, temporaries to ``paths.tmp``.
    registry : Registry, path, or False
        Default: ``Registry(paths.registry_db)``. ``False``: do not register.
    refant : str, optional
        Reference antenna name(s), comma separated; default chosen automatically.
    gain_solint : str
        CASA solint of the G solve: 'inf' (default: one solution per SPW for the tile; the
        instrumental gains drift by well under 1 % and 1 deg in 5 minutes, and the SNR per
        solution is sqrt(24) higher than per integration), 'int' (one per 12.9 s), or e.g. '60s'.
    minsnr : float
        Solutions below this SNR are flagged.
    beam : 'time' | 'mid' | 'none'
        Primary-beam model (see :func:`write_model`).
    validity_h : dict, optional
        Half-width of the validity windows in hours per kind, e.g. ``{"B": 24, "G": 1}``.
    plots : bool
        Write bandpass and gain PNGs next to the tables.
    sky : list of SkySource, optional
        Field sources to add to the model (see :func:`write_model`).

    Returns
    -------
    dict with ``tables`` ({'B': path, 'G': path}), ``ids`` (registry ids), ``refant``,
    ``calibrator``, ``metrics`` ({'B': {...}, 'G': {...}, 'flags': ..., 'model': ..., 'timings_s': ...}),
    ``plots`` (list of PNG paths), ``status`` ('valid' or 'rejected'), ``registry_entries`` (one dict
    per table, B then G: the ``register_begin`` arguments, ``depends_on`` as the kind it depends
    on, and the ``status``, ``reason`` and ``metrics`` it is, or with ``registry=False`` would be,
    marked with).
    """
    from dsacont.calibrators import get_calibrator
    from dsacont.config import get_paths
    from dsacont.calibration.registry import Registry

    ms = str(Path(ms_path).absolute())
    paths = paths or get_paths()
    paths.ensure("caltables", "tmp", *(("state",) if registry is not False else ()))
    if registry is None:
        registry = Registry(paths.registry_db)
    elif registry is not False and not hasattr(registry, "lookup"):
        registry = Registry(registry)
    timings = {}
    t_all = _time.perf_counter()

    info = read_ms_info(ms)
    if calibrator is None:
        cal = select_calibrator(ms, info=info)
    else:
        cal = get_calibrator(calibrator) if isinstance(calibrator, str) else calibrator
    ct = casatasks()

    t = _time.perf_counter()
    flags = flag_for_calibration(ms)
    timings["flag"] = _time.perf_counter() - t
    t = _time.perf_counter()
    model_meta = write_model(ms, cal, sky=sky, beam=beam, info=info)
    timings["model"] = _time.perf_counter() - t
    refants = refant.split(",") if refant else choose_refant(info, flags["antenna"])
    refant_str = ",".join(refants)
    log.info("%s: reference antenna(s) %s", ms, refant_str)

    stem = f"{Path(ms).name.removesuffix('.ms')}_{cal.name}"
    work = Path(paths.tmp) / f"{stem}.cal.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    final = {k: Path(paths.caltables) / f"{stem}.{k}" for k in ("B", "G")}
    solve_mjd = info.mid_mjd
    validity_h = validity_h or {}
    ids = {}
    if registry:
        ids["B"] = registry.register_begin("B", cal.name, solve_mjd, final["B"], source_ms=ms,
                                           valid_before_h=validity_h.get("B"), valid_after_h=validity_h.get("B"))
        ids["G"] = registry.register_begin("G", cal.name, solve_mjd, final["G"], source_ms=ms, depends_on=ids["B"],
                                           valid_before_h=validity_h.get("G"), valid_after_h=validity_h.get("G"))
    tmp = {k: work / f"{stem}.{k}" for k in ("G0", "B", "G")}
    metrics = {"flags": {"total": flags["total"]}, "model": model_meta, "refant": refant_str,
               "calibrator": cal.name, "ms": ms, "solve_mjd": solve_mjd}
    try:
        t = _time.perf_counter()
        ct.gaincal(vis=ms, caltable=str(tmp["G0"]), solint="int", refant=refant_str, calmode="p",
                   gaintype="G", minsnr=minsnr, uvrange=uvrange)
        timings["prephase"] = _time.perf_counter() - t
        _require_table(tmp["G0"], "phase pre-solve")
        t = _time.perf_counter()
        ct.bandpass(vis=ms, caltable=str(tmp["B"]), solint="inf", combine="scan", refant=refant_str,
                    bandtype="B", solnorm=True, minsnr=minsnr, gaintable=[str(tmp["G0"])], interp=["linear"],
                    uvrange=uvrange)
        timings["bandpass"] = _time.perf_counter() - t
        _require_table(tmp["B"], "bandpass")
        t = _time.perf_counter()
        ct.gaincal(vis=ms, caltable=str(tmp["G"]), solint=gain_solint, refant=refant_str, calmode="ap",
                   gaintype="G", minsnr=minsnr, gaintable=[str(tmp["B"])], interp=["nearest"], uvrange=uvrange)
        timings["gaincal"] = _time.perf_counter() - t
        _require_table(tmp["G"], "gain")
        present = [i for i, a in enumerate(info.antenna_names) if flags["antenna"].get(a, 1.0) < 1.0]
        metrics["n_antennas"] = len(present)
        metrics["B"] = caltable_metrics(tmp["B"], present)
        metrics["G"] = caltable_metrics(tmp["G"], present)
    except Exception as exc:
        if registry:
            for k in ("B", "G"):
                registry.reject(ids[k], f"solve failed: {exc}")
        shutil.rmtree(work, ignore_errors=True)
        raise
    bad = {k: metrics[k]["flagged_fraction"] for k in ("B", "G") if metrics[k]["flagged_fraction"] > MAX_FLAGGED_SOLUTIONS}
    for k in ("B", "G"):
        _move_into_place(tmp[k], final[k])
    shutil.rmtree(work, ignore_errors=True)
    timings["total"] = _time.perf_counter() - t_all
    metrics["timings_s"] = timings
    status = "valid"
    why = ", ".join(f"{k}: {100 * v:.0f} % of solutions flagged" for k, v in bad.items()) if bad else None
    reg_metrics = {k: {**metrics[k], "refant": refant_str, "model": model_meta} if bad else
                   {**metrics[k], "refant": refant_str, "beam_mid_error": model_meta["beam_mid_error"],
                    "timings_s": timings} for k in ("B", "G")}
    if registry:
        if bad:
            status = "rejected"
            for k in ("B", "G"):
                registry.reject(ids[k], why, metrics=reg_metrics[k])
        else:
            for k in ("B", "G"):
                registry.mark_valid(ids[k], reg_metrics[k])
    # what the registry holds (or, with registry=False, should hold) for each table, for a caller
    # that registers elsewhere (the streaming service registers the tables its workers solve)
    entries = [{"kind": k, "calibrator": cal.name, "solve_mjd": solve_mjd, "path": str(final[k]), "source_ms": ms,
                "valid_before_h": validity_h.get(k), "valid_after_h": validity_h.get(k),
                "depends_on": "B" if k == "G" else None, "status": "rejected" if bad else "valid",
                "reason": why, "metrics": reg_metrics[k]} for k in ("B", "G")]
    pngs = []
    if plots:
        try:
            pngs = [plot_bandpass(final["B"]), plot_gains(final["G"])]
        except Exception as exc:  # a plot must never lose a solve
            log.warning("calibration plots failed: %s", exc)
    log.info("%s: B %.1f %% / G %.1f %% flagged solutions; bandpass %.1f s, gains %.1f s",
             ms, 100 * metrics["B"]["flagged_fraction"], 100 * metrics["G"]["flagged_fraction"],
             timings["bandpass"], timings["gaincal"])
    return {"tables": {k: str(v) for k, v in final.items()}, "ids": ids, "refant": refant_str,
            "calibrator": cal.name, "metrics": metrics, "plots": [str(p) for p in pngs], "status": status,
            "registry_entries": entries}


def _require_table(path, what):
    if not Path(path).is_dir():
        raise RuntimeError(f"CASA wrote no {what} table ({path}); see the CASA log")


# ------------------------------------------------------------------------------------------
# 5. apply
# ------------------------------------------------------------------------------------------
def _spwmap(ms_info: MSInfo, table) -> list[int]:
    """For each SPW of the MS, the caltable SPW with the nearest centre frequency."""
    t = read_caltable(table)
    cal_centres = np.array([np.mean(f) for f in t["spw_freqs"]])
    have = np.unique(t["SPECTRAL_WINDOW_ID"])
    out = []
    for f in ms_info.spw_freqs:
        cand = have[np.argsort(np.abs(cal_centres[have] - np.mean(f)))]
        best = int(cand[0])
        if abs(cal_centres[best] - np.mean(f)) > 0.5 * (f.max() - f.min() + abs(f[1] - f[0] if f.size > 1 else 0)):
            raise CalibrationUnavailable(f"{table}: no solutions for the SPW at {np.mean(f) / 1e6:.2f} MHz")
        out.append(best)
    return out


def apply_calibration(ms, tables=None, registry=None, time=None, *, interp: str = "linear", paths=None,
                      calwt: bool = False) -> dict:
    """Apply bandpass and gain tables to ``ms`` (writes CORRECTED_DATA) and check the result.

    Parameters
    ----------
    ms : path of the target Measurement Set
    tables : list of caltable paths in apply order [B, G], optional
        Default: looked up in the registry for ``time``.
    registry : Registry or path, optional (default ``Registry(get_paths().registry_db)``)
    time : astropy Time / ISO / MJD, optional
        Time to look tables up for; default the MS's mid-time.
    interp : 'linear' | 'nearest'
        Time interpolation of the gains (the bandpass always uses 'nearest' in time, linear in
        frequency is not needed: SPWs map one to one). Outside the gain table's time range
        CASA holds the nearest solution.
    calwt : bool
        Scale the weights by the gains (default False: weights stay as converted).

    Returns
    -------
    dict: tables, registry records (ids), interp, spwmap, flagged fraction after apply,
    timings. Raises :class:`dsacont.errors.CalibrationUnavailable` when the registry has no
    valid table for the time, RuntimeError if CORRECTED_DATA is missing or not finite.
    """
    from dsacont.config import get_paths
    from dsacont.calibration.registry import Registry, to_mjd

    ms = str(Path(ms).absolute())
    info = read_ms_info(ms)
    ids = []
    if tables is None:
        if registry is None:
            registry = Registry((paths or get_paths()).registry_db)
        elif not hasattr(registry, "lookup_set"):
            registry = Registry(registry)
        when = info.mid_mjd if time is None else to_mjd(time)
        recs = registry.lookup_set(when)
        kinds = [r.kind for r in recs]
        if "G" not in kinds or "B" not in kinds:
            raise CalibrationUnavailable(
                f"no valid {' and '.join(k for k in ('B', 'G') if k not in kinds)} table covers MJD {when:.5f} "
                f"in {registry.db_path} (for {ms})")
        tables = [r.path for r in recs]
        ids = [r.id for r in recs]
    tables = [str(t) for t in tables]
    for t in tables:
        if not Path(t).is_dir():
            raise CalibrationUnavailable(f"caltable {t} is registered but missing on disk")
    interps = ["nearest" if _table_kind(t) == "B" else interp for t in tables]
    spwmaps = [_spwmap(info, t) for t in tables]
    ct = casatasks()
    t0 = _time.perf_counter()
    ct.applycal(vis=ms, gaintable=tables, interp=interps, spwmap=spwmaps, calwt=[calwt] * len(tables),
                flagbackup=False, applymode="calflag")
    dt = _time.perf_counter() - t0
    from dsacont.io.ms import clear_state

    clear_state(ms)  # CORRECTED_DATA is new: no bright-source flattening (dsacont.imaging.flatten) in it
    t1 = _time.perf_counter()
    check = check_corrected(ms, info)
    log.info("%s: applied %s in %.1f s (check %.1f s); %.1f %% flagged", ms, [Path(t).name for t in tables], dt,
             _time.perf_counter() - t1, 100 * check["flagged_fraction"])
    return {"ms": ms, "tables": tables, "ids": ids, "interp": interps, "spwmap": spwmaps,
            **check, "timings_s": {"applycal": dt, "check": _time.perf_counter() - t1}}


def _table_kind(path) -> str:
    ct = _tools()
    tb = ct.table()
    tb.open(str(path))
    try:
        kw = tb.getkeywords()
    finally:
        tb.close()
        tb.done()
    vis = str(kw.get("VisCal", ""))
    return vis[:1] if vis else Path(path).suffix.lstrip(".")[:1].upper()


def check_corrected(ms, info: MSInfo | None = None) -> dict:
    """Check CORRECTED_DATA exists and is finite wherever it is not flagged."""
    ct = _tools()
    info = info or read_ms_info(ms)
    tb = ct.table()
    tb.open(str(ms))
    try:
        if "CORRECTED_DATA" not in tb.colnames():
            raise RuntimeError(f"{ms}: applycal wrote no CORRECTED_DATA column")
        nflag = ntot = nbad = 0
        for d, sub, s, n in _iter_ddid(tb, range(len(info.ddid_spw))):
            c = sub.getcol("CORRECTED_DATA", s, n)
            f = sub.getcol("FLAG", s, n)
            nbad += int(np.count_nonzero(~np.isfinite(c) & ~f))
            nflag += int(f.sum())
            ntot += f.size
    finally:
        tb.close()
        tb.done()
    if nbad:
        raise RuntimeError(f"{ms}: CORRECTED_DATA has {nbad} non-finite unflagged values")
    return {"flagged_fraction": nflag / max(ntot, 1), "n_checked": ntot}


def calibrated_flux_ratio(ms, info: MSInfo | None = None, calibrator=None) -> dict:
    """How well CORRECTED_DATA reproduces a model: ``sum(C conj M) / sum(|M|^2)`` over unflagged
    cross-correlations, per SPW and overall (complex; 1 means the calibrated data have exactly
    the model flux).

    ``calibrator`` None: M = MODEL_DATA (what the gains were solved against; 1 by construction
    of an amplitude+phase solve, so this checks the apply path). ``calibrator`` a name or
    Calibrator: M = that calibrator alone through the time-dependent beam, predicted here: the
    calibrated flux of the calibrator itself, other sky sources averaging down as noise.
    """
    ct = _tools()
    info = info or read_ms_info(ms)
    cal_pred = None
    if calibrator is not None:
        from dsacont.calibrators import get_calibrator

        cal = get_calibrator(calibrator) if isinstance(calibrator, str) else calibrator
        amps, _ = model_amplitudes(cal, info)
        lmn_f = np.array([lmn(np.radians(cal.ra_deg), np.radians(cal.dec_deg), r0, d0) for r0, d0 in info.field_dirs])
        cal_pred = (amps, lmn_f)
    tb = ct.table()
    tb.open(str(ms))
    per = {}
    try:
        for d, sub, s, n in _iter_ddid(tb, range(len(info.ddid_spw))):
            spw = int(info.ddid_spw[d])
            a1, a2 = sub.getcol("ANTENNA1", s, n), sub.getcol("ANTENNA2", s, n)
            c = sub.getcol("CORRECTED_DATA", s, n)
            if cal_pred is None:
                m = sub.getcol("MODEL_DATA", s, n)
            else:
                m = point_model(np.asarray(sub.getcol("UVW", s, n)).T, info.spw_freqs[spw],
                                np.searchsorted(info.times_s, sub.getcol("TIME", s, n)),
                                np.asarray(sub.getcol("FIELD_ID", s, n)), cal_pred[1], cal_pred[0][spw],
                                npol=c.shape[0])
            w = (~sub.getcol("FLAG", s, n)) & (a1 != a2)[None, None, :]
            acc = per.setdefault(spw, np.zeros(3, dtype=complex))
            acc += [np.sum((c * np.conj(m))[w]), np.sum((np.abs(m) ** 2)[w]), np.sum(np.abs(m)[w])]
    finally:
        tb.close()
        tb.done()
    ratios = {spw: complex(v[0] / v[1]) for spw, v in per.items() if v[1] > 0}
    tot = sum(per.values())
    r = complex(tot[0] / tot[1])
    return {"ratio": r, "amp_ratio": abs(r), "phase_deg": float(np.degrees(np.angle(r))),
            "ratio_spw": {k: abs(v) for k, v in ratios.items()},
            "max_spw_error": float(max(abs(abs(v) - 1) for v in ratios.values()))}


# ------------------------------------------------------------------------------------------
# plots
# ------------------------------------------------------------------------------------------
def _antenna_names(table) -> list[str]:
    ct = _tools()
    tb = ct.table()
    tb.open(str(table) + "/ANTENNA")
    try:
        return list(tb.getcol("NAME"))
    finally:
        tb.close()
        tb.done()


def plot_bandpass(table, out=None) -> str:
    """PNG of a bandpass table: amplitude and phase vs frequency, one line per antenna, per pol."""
    # object-oriented Figure: never touches pyplot's global backend (Jupyter's stays inline)
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    t = read_caltable(table)
    out = str(out or f"{table}.png")
    npol = t["CPARAM"].shape[0]
    fig = Figure(figsize=(6 * npol, 7))
    axes = fig.subplots(2, npol, sharex=True, squeeze=False)
    ants = np.unique(t["ANTENNA1"])
    ants = np.array([a for a in ants if not t["FLAG"][:, :, t["ANTENNA1"] == a].all()])
    cmap = colormaps["viridis"]
    for k, a in enumerate(ants):
        colour = cmap(k / max(len(ants) - 1, 1))
        for r in np.flatnonzero(t["ANTENNA1"] == a):
            f = t["spw_freqs"][t["SPECTRAL_WINDOW_ID"][r]] / 1e6
            for p in range(npol):
                g = np.where(t["FLAG"][p, :, r], np.nan, t["CPARAM"][p, :, r])
                axes[0, p].plot(f, np.abs(g), lw=0.5, color=colour)
                axes[1, p].plot(f, np.degrees(np.angle(g)), lw=0.5, color=colour)
    for p in range(npol):
        axes[0, p].set_title(f"{Path(table).name}  pol {['X', 'Y'][p] if npol == 2 else p}")
        axes[0, p].set_ylabel("amplitude")
        axes[1, p].set_ylabel("phase (deg)")
        axes[1, p].set_xlabel("frequency (MHz)")
    fig.tight_layout()
    tmp = out + f".tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, out)
    return out


def plot_gains(table, out=None) -> str:
    """PNG of a gain table, one line per antenna, per pol: amplitude and phase vs time
    (SPW-averaged) when the table has several solution times, else vs SPW centre frequency
    (one solution per subband, ``solint='inf'``)."""
    # object-oriented Figure: never touches pyplot's global backend (Jupyter's stays inline)
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    t = read_caltable(table)
    out = str(out or f"{table}.png")
    npol = t["CPARAM"].shape[0]
    g = np.where(t["FLAG"], np.nan, t["CPARAM"])[:, 0, :]  # (npol, nrow)
    # solution times differ slightly between SPWs: cluster them to the integration (12.9 s)
    tt = np.sort(np.unique(t["TIME"]))
    edges = np.concatenate([[0], np.flatnonzero(np.diff(tt) > 6.0) + 1])
    centres = np.array([tt[e] for e in edges])
    tidx = np.searchsorted(centres, t["TIME"] + 6.0) - 1
    ants = np.unique(t["ANTENNA1"])
    names = _antenna_names(table)
    vs_time = centres.size > 1
    if vs_time:
        x_of = (centres - centres[0]) / 60.0
        key, nkey, xlabel = tidx, centres.size, "minutes from first solution"
    else:
        spws = np.unique(t["SPECTRAL_WINDOW_ID"])
        x_of = np.array([np.mean(t["spw_freqs"][s_]) / 1e6 for s_ in spws])
        key = np.searchsorted(spws, t["SPECTRAL_WINDOW_ID"])
        nkey, xlabel = spws.size, "SPW centre frequency (MHz)"
    fig = Figure(figsize=(6 * npol, 7))
    axes = fig.subplots(2, npol, sharex=True, squeeze=False)
    cmap = colormaps["viridis"]
    ants = np.array([a for a in ants if not t["FLAG"][:, :, t["ANTENNA1"] == a].all()])
    for k, a in enumerate(ants):
        colour = cmap(k / max(len(ants) - 1, 1))
        rows = t["ANTENNA1"] == a
        for p in range(npol):
            vals = np.full(nkey, np.nan + 0j)
            for i in range(nkey):
                sel = rows & (key == i)
                if sel.any() and np.isfinite(g[p, sel]).any():
                    vals[i] = np.nanmean(g[p, sel])
            if np.all(np.isnan(vals)):
                continue
            axes[0, p].plot(x_of, np.abs(vals), ".-", lw=0.5, ms=3, color=colour)
            axes[1, p].plot(x_of, np.degrees(np.angle(vals)), ".-", lw=0.5, ms=3, color=colour)
    for p in range(npol):
        what = "SPW mean" if vs_time else "per SPW"
        axes[0, p].set_title(f"{Path(table).name}  pol {['X', 'Y'][p] if npol == 2 else p} ({what}, "
                             f"{len(ants)} antennas of {len(names)})")
        axes[0, p].set_ylabel("amplitude")
        axes[1, p].set_ylabel("phase (deg)")
        axes[1, p].set_xlabel(xlabel)
    fig.tight_layout()
    tmp = out + f".tmp{os.getpid()}.png"
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, out)
    return out


# ------------------------------------------------------------------------------------------
# 6. command line
# ------------------------------------------------------------------------------------------
def _paths_from_args(args):
    from dsacont.config import get_paths

    return get_paths(root=args.root) if args.root else get_paths()


def cli(argv: list[str]) -> int:
    """``dsacont calibrate MS [--calibrator NAME]``: solve B and G, register them, plot."""
    p = argparse.ArgumentParser(prog="dsacont calibrate", description=cli.__doc__)
    p.add_argument("ms", help="calibrator Measurement Set")
    p.add_argument("--calibrator", help="VLA calibrator name (default: brightest in the beam)")
    p.add_argument("--refant", help="reference antenna name(s), comma separated (default: automatic)")
    p.add_argument("--gain-solint", default="inf", help="G solution interval (CASA solint; default 'inf')")
    p.add_argument("--minsnr", type=float, default=3.0)
    p.add_argument("--beam", choices=("time", "mid", "none"), default="time", help="primary-beam model")
    p.add_argument("--sky", help="CSV of field sources to add to the model "
                                 "(name,ra_deg,dec_deg,flux_jy,spectral_index; flux at 1.4 GHz)")
    p.add_argument("--bandpass-validity-h", type=float, help="half-width of the B validity window (h; 24)")
    p.add_argument("--gain-validity-h", type=float, help="half-width of the G validity window (h; 1)")
    p.add_argument("--root", help="put caltables/state under this directory (like CONTIMG_ROOT)")
    p.add_argument("--registry", help="registry SQLite file (default: the state directory's)")
    p.add_argument("--no-register", action="store_true", help="solve only, do not register")
    p.add_argument("--no-plots", action="store_true")
    a = p.parse_args(argv)
    paths = _paths_from_args(a)
    validity = {k: v for k, v in (("B", a.bandpass_validity_h), ("G", a.gain_validity_h)) if v is not None}
    try:
        sky = load_sky_csv(a.sky) if a.sky else None
        res = solve_calibration(a.ms, a.calibrator, paths=paths, registry=False if a.no_register else a.registry,
                                refant=a.refant, gain_solint=a.gain_solint, minsnr=a.minsnr, beam=a.beam,
                                validity_h=validity, plots=not a.no_plots, sky=sky)
    except (BadInputError, KeyError) as exc:
        print(f"dsacont calibrate: {exc}", file=__import__("sys").stderr)
        return 2
    m = res["metrics"]
    summary = {"status": res["status"], "calibrator": res["calibrator"], "refant": res["refant"],
               "tables": res["tables"], "ids": res["ids"], "plots": res["plots"],
               "flagged_solutions": {k: m[k]["flagged_fraction"] for k in ("B", "G")},
               "snr_median": {k: m[k]["snr_median"] for k in ("B", "G")},
               "n_sky_sources": m["model"]["n_sky_sources"], "timings_s": m["timings_s"]}
    print(json.dumps(summary, indent=2))
    return 0 if res["status"] == "valid" else 1


def cli_applycal(argv: list[str]) -> int:
    """``dsacont applycal MS``: apply the registered tables valid at the MS's time."""
    p = argparse.ArgumentParser(prog="dsacont applycal", description=cli_applycal.__doc__)
    p.add_argument("ms", help="target Measurement Set")
    p.add_argument("--tables", nargs="+", help="caltables to apply (B then G) instead of the registry's")
    p.add_argument("--time", help="look tables up for this time (ISO UTC) instead of the MS mid-time")
    p.add_argument("--interp", choices=("linear", "nearest"), default="linear")
    p.add_argument("--root", help="state/caltables under this directory (like CONTIMG_ROOT)")
    p.add_argument("--registry", help="registry SQLite file (default: the state directory's)")
    a = p.parse_args(argv)
    paths = _paths_from_args(a)
    try:
        res = apply_calibration(a.ms, tables=a.tables, registry=a.registry, time=a.time, interp=a.interp,
                                paths=paths)
    except (CalibrationUnavailable, BadInputError) as exc:
        print(f"dsacont applycal: {exc}", file=__import__("sys").stderr)
        return 3
    print(json.dumps({k: res[k] for k in ("ms", "tables", "ids", "interp", "flagged_fraction", "timings_s")},
                     indent=2))
    return 0
