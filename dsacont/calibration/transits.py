"""Calibrator transits over OVRO: which groups hold a usable calibrator, and when it crosses the meridian.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from astropy.time import Time

from dsacont import calibrators
from dsacont.telescope import airy_beam, beam_fwhm_rad, ovro_location

#: a calibrator must reach this catalogue flux (Jy, 1.4 GHz) ...
DEFAULT_MIN_FLUX_JY = 1.0
#: ... and this primary-beam response at transit to be used
DEFAULT_MIN_PB = 0.5
#: length of one group (24 integrations of 12.884902 s), seconds
GROUP_DURATION_S = 24 * 12.884902

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
