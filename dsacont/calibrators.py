"""The VLA calibrator catalogue and calibrator transits over OVRO.

The catalogue is the VLA calibrator manual in text form (``data/vlacalibrators.txt``): for each
source a J2000 position and, per band, array-configuration quality codes and a flux density in Jy.
We keep the J2000 position, every band's flux, and a spectral index ``alpha`` (``S ~ nu**alpha``)
fitted from the bands nearest L band (20 cm with 6 cm, else 90 cm with 20 cm, else -0.7).

Transit times come in two conventions (``convention=``):

- ``"catalogue"`` (default): when the local apparent sidereal time at the OVRO array centre
  equals the source's catalogue (J2000) right ascension. This is how the DSA-110 operators
  quote transits: 0834+555 transits at 13:55:26 UTC on 2025-10-29.
- ``"apparent"``: when the source's *apparent* hour angle is zero, i.e. when it really crosses
  the meridian and the correlator's fringe-stop centre HADEC(0, dec). For 0834+555 on
  2025-10-29 this is 13:57:25 UTC: 26 years of precession since J2000 move its right
  ascension by +119 s of time (and its declination by -5.4 arcmin).

The simulator, the conversion (phase centres) and the primary beam all use true apparent
positions; the catalogue convention only names the time around which the operators centre
windows. Both are within one 5-minute group of each other.
"""
from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from importlib import resources

import numpy as np

# band label -> representative frequency (Hz) of the VLA band the manual's flux refers to
BAND_FREQ_HZ = {
    "90cm": 0.33e9,
    "20cm": 1.4e9,
    "6cm": 4.86e9,
    "3.7cm": 8.46e9,
    "2cm": 14.94e9,
    "1.3cm": 22.46e9,
    "0.7cm": 43.34e9,
}
REF_FREQ_HZ = BAND_FREQ_HZ["20cm"]
DEFAULT_SPECTRAL_INDEX = -0.7
SIDEREAL_DAY_S = 86164.0905

_HEAD = re.compile(
    r"^(?P<name>\S+)\s+J2000\s+(?P<pc>\S)\s+(?P<ra>\d+h\d+m[\d.]+s)\s+(?P<dec>[-+]?\d+d\d+'[\d.]+\")"
)
_BAND = re.compile(r"^\s*(?P<band>[\d.]+cm)\s+\S+\s+\S\s+\S\s+\S\s+\S\s+(?P<flux>[\d.]+)")


@dataclass(frozen=True)
class Calibrator:
    """One VLA calibrator.

    Attributes
    ----------
    name : str             IAU J2000 name as in the manual, e.g. '0834+555'
    ra_deg, dec_deg : float  J2000 (ICRS) position, degrees
    flux_jy : float        20 cm (1.4 GHz) flux density, Jy (NaN if the manual has none)
    fluxes : dict          band label ('20cm', '6cm', ...) -> Jy
    spectral_index : float  alpha in S(nu) = flux_jy * (nu / 1.4 GHz) ** alpha
    position_code : str    the manual's position accuracy code (A best)
    """

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    fluxes: dict = field(default_factory=dict)
    spectral_index: float = DEFAULT_SPECTRAL_INDEX
    position_code: str = ""

    @property
    def ra_rad(self) -> float:
        return np.radians(self.ra_deg)

    @property
    def dec_rad(self) -> float:
        return np.radians(self.dec_deg)

    def flux_at(self, freq_hz):
        """Flux density (Jy) at ``freq_hz`` (Hz, array_like) from the 20 cm flux and alpha."""
        return self.flux_jy * (np.asarray(freq_hz, dtype=float) / REF_FREQ_HZ) ** self.spectral_index


def _sexagesimal(ra: str, dec: str) -> tuple[float, float]:
    h, m, s = (float(x) for x in re.match(r"(\d+)h(\d+)m([\d.]+)s", ra).groups())
    sign = -1.0 if dec.strip().startswith("-") else 1.0
    d, dm, ds = (float(x) for x in re.match(r"[-+]?(\d+)d(\d+)'([\d.]+)\"", dec.strip()).groups())
    return 15.0 * (h + m / 60 + s / 3600), sign * (d + dm / 60 + ds / 3600)


def _spectral_index(fluxes: dict) -> float:
    for a, b in (("20cm", "6cm"), ("90cm", "20cm"), ("20cm", "3.7cm")):
        if a in fluxes and b in fluxes and fluxes[a] > 0 and fluxes[b] > 0:
            return float(np.log(fluxes[b] / fluxes[a]) / np.log(BAND_FREQ_HZ[b] / BAND_FREQ_HZ[a]))
    return DEFAULT_SPECTRAL_INDEX


def parse_catalogue(text: str) -> list[Calibrator]:
    """Parse the VLA calibrator manual text into :class:`Calibrator` records."""
    out: list[Calibrator] = []
    current = None
    fluxes: dict = {}

    def flush():
        if current is not None:
            name, ra, dec, pc = current
            out.append(
                Calibrator(
                    name=name,
                    ra_deg=ra,
                    dec_deg=dec,
                    flux_jy=fluxes.get("20cm", float("nan")),
                    fluxes=dict(fluxes),
                    spectral_index=_spectral_index(fluxes),
                    position_code=pc,
                )
            )

    for line in text.splitlines():
        m = _HEAD.match(line)
        if m:
            flush()
            ra, dec = _sexagesimal(m["ra"], m["dec"])
            current, fluxes = (m["name"], ra, dec, m["pc"]), {}
            continue
        b = _BAND.match(line)
        if b and current is not None and b["band"] in BAND_FREQ_HZ:
            fluxes[b["band"]] = float(b["flux"])
    flush()
    return out


@functools.cache
def _catalogue() -> tuple[Calibrator, ...]:
    text = resources.files("dsacont").joinpath("data/vlacalibrators.txt").read_text(errors="replace")
    return tuple(parse_catalogue(text))


def load_catalogue() -> list[Calibrator]:
    """All calibrators of the shipped VLA catalogue (cached)."""
    return list(_catalogue())


def get_calibrator(name: str) -> Calibrator:
    """Look a calibrator up by name ('0834+555', or with a 'J' prefix)."""
    key = name.upper().lstrip("J")
    for cal in _catalogue():
        if cal.name.upper() == key:
            return cal
    raise KeyError(f"calibrator {name!r} is not in the VLA calibrator catalogue")


# --- the brightest sources of the sky, which matter far outside the main lobe -----------------------
@dataclass(frozen=True)
class BrightSource:
    """A source bright enough to matter in the primary beam's sidelobes (the "A-team").

    Attributes
    ----------
    name : str
    ra_deg, dec_deg : float   J2000 (ICRS) position, degrees
    flux_jy : float           flux density at 1.4 GHz, Jy (a round published figure: the pipeline
                              fits the scale to the data, so 10-20 % does not matter)
    spectral_index : float    alpha in S(nu) = flux_jy * (nu / 1.4 GHz) ** alpha
    major_arcsec, minor_arcsec, pa_deg : float
                              a Gaussian of the source's extent (FWHM, arcsec; PA east of north, deg)
    """

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float
    major_arcsec: float = 0.0
    minor_arcsec: float = 0.0
    pa_deg: float = 0.0

    def flux_at(self, freq_hz):
        """Flux density (Jy) at ``freq_hz`` (Hz, array_like)."""
        return self.flux_jy * (np.asarray(freq_hz, dtype=float) / REF_FREQ_HZ) ** self.spectral_index


#: Cas A (the supernova remnant 3C461: 1.4 GHz flux fading ~0.6 %/yr, ~1,700 Jy in the 2020s; a shell
#: of ~5' diameter) and Cyg A (3C405: ~1,600 Jy, two lobes ~2' apart). At DSA-110's usual
#: declinations (+50..+62) Cas A passes 0-10 deg from the pointing and reaches tens of Jy in the
#: first sidelobes; Cyg A, at +40.7, reaches ~1 Jy in the far sidelobes for pointings below +52.
BRIGHT_SIDELOBE_SOURCES = (
    BrightSource("CasA", 350.8500, 58.8150, 1700.0, -0.77, 300.0, 300.0, 0.0),
    BrightSource("CygA", 299.8682, 40.7339, 1600.0, -0.78, 120.0, 40.0, 115.0),
)


def bright_sidelobe_source(name: str) -> BrightSource:
    """One of :data:`BRIGHT_SIDELOBE_SOURCES` by name ('CasA', 'Cas A', 'cyga', ...)."""
    key = name.replace(" ", "").lower()
    for s in BRIGHT_SIDELOBE_SOURCES:
        if s.name.lower() == key:
            return s
    raise KeyError(f"{name!r} is not one of the bright sidelobe sources "
                   f"({', '.join(s.name for s in BRIGHT_SIDELOBE_SOURCES)})")


def _to_time(t):
    from astropy.time import Time

    return t if isinstance(t, Time) else Time(t, scale="utc")


def hour_angle_rad(ra_deg, dec_deg, time) -> np.ndarray:
    """Apparent hour angle (radians, wrapped to [-pi, pi)) of an ICRS position over OVRO."""
    from astropy import units as u
    from astropy.coordinates import HADec, SkyCoord

    from dsacont.telescope import ovro_location

    t = _to_time(time)
    c = SkyCoord(ra=ra_deg * u.deg, dec=dec_deg * u.deg, frame="icrs")
    ha = c.transform_to(HADec(obstime=t, location=ovro_location())).ha.rad
    return (np.asarray(ha) + np.pi) % (2 * np.pi) - np.pi


def catalogue_hour_angle_rad(ra_deg, time) -> np.ndarray:
    """Local apparent sidereal time at OVRO minus the catalogue RA, radians in [-pi, pi)."""
    from dsacont.telescope import ovro_location

    lst = _to_time(time).sidereal_time("apparent", ovro_location().lon).rad
    return (np.asarray(lst) - np.radians(ra_deg) + np.pi) % (2 * np.pi) - np.pi


def transit_time(ra_deg: float, after, dec_deg: float = 0.0, *, convention: str = "catalogue"):
    """The first transit over OVRO at or after ``after`` (astropy Time, UTC, ~10 ms precision).

    Parameters
    ----------
    ra_deg, dec_deg : float
        ICRS (J2000) position, degrees.
    after : str or astropy.time.Time
    convention : {"catalogue", "apparent"}
        See the module docstring: LST = catalogue RA (the operators' transit times), or the
        true meridian crossing (apparent hour angle 0).
    """
    from astropy import units as u

    if convention == "catalogue":
        ha_of = lambda t: catalogue_hour_angle_rad(ra_deg, t)  # noqa: E731
    elif convention == "apparent":
        ha_of = lambda t: hour_angle_rad(ra_deg, dec_deg, t)  # noqa: E731
    else:
        raise ValueError(f"convention must be 'catalogue' or 'apparent', not {convention!r}")
    t0 = _to_time(after)
    # time until HA = 0 going forward, then Newton steps (dHA/dt = 2 pi per sidereal day)
    t = t0 + ((-ha_of(t0)) % (2 * np.pi)) / (2 * np.pi) * SIDEREAL_DAY_S * u.s
    for _ in range(3):
        t = t - ha_of(t) / (2 * np.pi) * SIDEREAL_DAY_S * u.s
    return t


def nearest_transit(ra_deg: float, time, dec_deg: float = 0.0, *, convention: str = "catalogue"):
    """The transit (astropy Time) nearest to ``time``, before or after it."""
    from astropy import units as u

    t = _to_time(time)
    return transit_time(ra_deg, t - SIDEREAL_DAY_S / 2 * u.s, dec_deg, convention=convention)


def transits_between(ra_deg: float, start, end, dec_deg: float = 0.0, *, convention: str = "catalogue") -> list:
    """All transits (astropy Times) in ``[start, end]``."""
    from astropy import units as u

    t, end = transit_time(ra_deg, start, dec_deg, convention=convention), _to_time(end)
    out = []
    while t <= end:
        out.append(t)
        t = transit_time(ra_deg, t + 60 * u.s, dec_deg, convention=convention)
    return out
