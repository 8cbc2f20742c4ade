"""The simulated sky: the VLA calibrator 0834+555 plus a seeded field-source population.

Calibrator
----------
Parsed here from ``dsacont/data/vlacalibrators.txt`` (own parser).  Flux: the 20 cm (L band)
catalogue value at ``REF_FREQ_HZ`` = 1.4 GHz; spectral index from the 20 cm and 6 cm (4.86 GHz)
catalogue fluxes, alpha = ln(S6/S20) / ln(4.86/1.4) (S ~ nu^alpha).  For 0834+555:
8.80 Jy, alpha = -0.363.

Field sources
-------------
Integral source counts at 1.4 GHz, a single power law normalised to NVSS-like counts:
``N(>S) = 53 deg^-2 (S / 2.5 mJy)^-1.16``  (i.e. differential dN/dS ~ S^-2.16; about 53 deg^-2
above 2.5 mJy and about 0.05 deg^-2 above 1 Jy, as NVSS/FIRST), drawn above ``S_MIN_JY``
(10 mJy) and capped at 2 Jy.  Spectral indices ~ N(-0.7, 0.2).  Positions are uniform on the sphere
in a declination band ``dec +- FIELD_RADIUS_DEG`` and are generated per 1-degree RA cell with a
generator seeded by (seed, cell, round(dec * 1000)) so any time range, split into any number of
``simulate`` calls, sees the same sky.  Only sources that come within ``FIELD_RADIUS_DEG``
(1.5 x the FWHM at the band bottom, i.e. past the first null and into the first sidelobe) of the
pointing during a group, and whose peak apparent flux (flux x primary beam at 1.4 GHz) reaches
``APPARENT_MIN_JY`` (0.3 mJy, ~1.5 sigma of a full-size 5-minute image), are put in that group's
visibilities; the group's truth lists exactly those.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from .geometry import DATA_DIR

REF_FREQ_HZ = 1.4e9
CALIBRATOR = "0834+555"
S_MIN_JY = 10e-3
APPARENT_MIN_JY = 0.3e-3
S_MAX_JY = 2.0
COUNT_NORM_PER_DEG2 = 53.0  # N(> 2.5 mJy)
COUNT_S0_JY = 2.5e-3
COUNT_SLOPE = 1.16
FIELD_RADIUS_DEG = 4.35
_BAND_FREQ_HZ = {"90cm": 0.33e9, "20cm": 1.4e9, "6cm": 4.86e9, "3.7cm": 8.46e9, "2cm": 14.94e9,
                 "1.3cm": 22.46e9, "0.7cm": 43.34e9}


@dataclass(frozen=True)
class CatalogueSource:
    name: str
    ra_deg: float
    dec_deg: float
    fluxes: dict  # band name -> Jy


def _sexa(text: str, hours: bool) -> float:
    nums = [float(x) for x in re.findall(r"[-+]?\d+(?:\.\d*)?", text)]
    sign = -1.0 if text.strip().startswith("-") else 1.0
    d, m, s = abs(nums[0]), nums[1], nums[2]
    val = sign * (d + m / 60 + s / 3600)
    return val * 15.0 if hours else val


@lru_cache(maxsize=1)
def read_vla_catalogue() -> dict[str, CatalogueSource]:
    """The J2000 entries of the VLA calibrator list: {name: CatalogueSource}."""
    out: dict[str, CatalogueSource] = {}
    cur = None
    with open(DATA_DIR / "vlacalibrators.txt", errors="replace") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 5 and parts[1] == "J2000":
                cur = CatalogueSource(parts[0], _sexa(parts[3], True), _sexa(parts[4], False), {})
                out[cur.name] = cur
                continue
            if cur is not None and parts and parts[0] in _BAND_FREQ_HZ:
                # BAND  code  A B C D  FLUX ...: the flux is the first number after the 4 config codes
                toks = parts[1:]
                for i, tok in enumerate(toks):
                    try:
                        flux = float(tok)
                    except ValueError:
                        continue
                    if i >= 4:  # band letter + 4 quality codes come first
                        cur.fluxes[parts[0]] = flux
                    break
    return out


def calibrator_model(name: str = CALIBRATOR) -> dict:
    """{name, ra_deg, dec_deg, flux_jy (at REF_FREQ_HZ), spectral_index, ref_freq_hz}."""
    src = read_vla_catalogue()[name]
    s20 = src.fluxes["20cm"]
    alpha = 0.0
    if src.fluxes.get("6cm", 0.0) > 0:
        alpha = float(np.log(src.fluxes["6cm"] / s20) / np.log(_BAND_FREQ_HZ["6cm"] / _BAND_FREQ_HZ["20cm"]))
    return dict(name=name, ra_deg=src.ra_deg, dec_deg=src.dec_deg, flux_jy=s20, spectral_index=alpha,
                ref_freq_hz=REF_FREQ_HZ)


def _cell_sources(seed: int, cell: int, dec_deg: float, radius_deg: float, s_max_jy: float = S_MAX_JY):
    rng = np.random.default_rng([seed, 1000 + cell % 360, int(round(dec_deg * 1000)) % 10_000_000])
    d1 = np.radians(max(-90.0, dec_deg - radius_deg))
    d2 = np.radians(min(90.0, dec_deg + radius_deg))
    area_deg2 = np.degrees(np.radians(1.0)) * np.degrees(np.sin(d2) - np.sin(d1))
    nexp = COUNT_NORM_PER_DEG2 * (S_MIN_JY / COUNT_S0_JY) ** (-COUNT_SLOPE) * area_deg2
    if s_max_jy != S_MAX_JY:  # the faint population below a real catalogue: N(S_MIN..s_max) exactly
        nexp -= COUNT_NORM_PER_DEG2 * (s_max_jy / COUNT_S0_JY) ** (-COUNT_SLOPE) * area_deg2
    n = rng.poisson(nexp)
    ra = (cell % 360) + rng.random(n)
    dec = np.degrees(np.arcsin(np.sin(d1) + rng.random(n) * (np.sin(d2) - np.sin(d1))))
    # inverse CDF of N(>S) ~ S^-k between S_MIN and S_MAX
    u = rng.random(n)
    k = COUNT_SLOPE
    lo, hi = S_MIN_JY ** (-k), s_max_jy ** (-k)
    flux = (lo - u * (lo - hi)) ** (-1.0 / k)
    alpha = rng.normal(-0.7, 0.2, n)
    names = [f"F{cell % 360:03d}_{i:04d}" for i in range(n)]
    return names, ra, dec, flux, alpha


def field_sources(seed: int, dec_deg: float, ra_lo_deg: float, ra_hi_deg: float,
                  radius_deg: float = FIELD_RADIUS_DEG, s_max_jy: float = S_MAX_JY) -> dict:
    """Field sources in RA cells covering [ra_lo, ra_hi] (degrees, may wrap) in the dec band.

    Returns dict of arrays: name (str), ra_deg, dec_deg, flux_jy (at 1.4 GHz), spectral_index.
    """
    cells = sorted({c % 360 for c in range(int(np.floor(ra_lo_deg)), int(np.floor(ra_hi_deg)) + 1)})
    names, ra, dec, flux, alpha = [], [], [], [], []
    for c in cells:
        n_, r_, d_, f_, a_ = _cell_sources(seed, c, dec_deg, radius_deg, s_max_jy)
        names += n_
        ra.append(r_)
        dec.append(d_)
        flux.append(f_)
        alpha.append(a_)
    cat = lambda xs: np.concatenate(xs) if xs else np.zeros(0)  # noqa: E731
    return dict(name=np.array(names, dtype="U16"), ra_deg=cat(ra), dec_deg=cat(dec), flux_jy=cat(flux),
                spectral_index=cat(alpha))


# --- the real sky (realism="realistic") -------------------------------------------------------
# NVSS: dsacont/data/nvss_compact_dec50_61.csv (compact, isolated NVSS components, peak > 52 mJy/beam,
# dec +50..+61; see docs/SIMULATOR.md). Every VLA calibrator of the catalogue with a 20 cm flux in the
# dec band (alpha from 20/6 cm, 0 when no 6 cm flux). Cas A. Below the NVSS limit: the power law of
# the synthetic field, drawn between S_MIN_JY and FAINT_MAX_JY.
NVSS_FILE = "nvss_compact_dec50_61.csv"
FAINT_MAX_JY = 0.05
CAL_MATCH_ARCSEC = 60.0
CASA = dict(name="CasA", ra_deg=(23 + 23 / 60 + 24 / 3600) * 15.0, dec_deg=58 + 48 / 60 + 54 / 3600,
            flux_jy=1700.0, spectral_index=-0.77, major_arcsec=300.0, minor_arcsec=300.0, pa_deg=0.0)
TAG_NVSS_ALPHA = 151
# sources this bright (Cas A) are predicted out to BRIGHT_RADIUS_DEG from the pointing: the Airy
# beam's far sidelobes (~1e-3 at 10 deg) still give them Jy-level apparent fluxes
BRIGHT_FLUX_JY = 100.0
BRIGHT_RADIUS_DEG = 15.0


@lru_cache(maxsize=1)
def read_nvss() -> dict:
    """The shipped NVSS table: dict of arrays name, ra_deg, dec_deg, flux_jy (1.4 GHz, integrated),
    major_arcsec, minor_arcsec (deconvolved FWHM, 0 = unresolved), pa_deg."""
    import csv

    cols = dict(name=[], ra_deg=[], dec_deg=[], flux_jy=[], major_arcsec=[], minor_arcsec=[], pa_deg=[])
    with open(DATA_DIR / NVSS_FILE, newline="") as fh:
        for row in csv.DictReader(fh):
            for k in cols:
                cols[k].append(row[k] if k == "name" else float(row[k]))
    return {k: (np.array(v, dtype="U16") if k == "name" else np.array(v, dtype=float)) for k, v in cols.items()}


def _empty_shape(n):
    return dict(major_arcsec=np.zeros(n), minor_arcsec=np.zeros(n), pa_deg=np.zeros(n))


def catalogue_bright_sources(dec_deg: float, radius_deg: float = FIELD_RADIUS_DEG) -> dict:
    """The calibrator 0834+555 first, then every other VLA calibrator with a 20 cm flux in the dec band
    ``dec +- radius``, then Cas A (if within BRIGHT_RADIUS_DEG in declination): dict of arrays name, ra_deg, dec_deg, flux_jy,
    spectral_index, major_arcsec, minor_arcsec, pa_deg."""
    cat = read_vla_catalogue()
    names = [CALIBRATOR] + sorted(n for n, s in cat.items()
                                  if n != CALIBRATOR and s.fluxes.get("20cm", 0.0) > 0 and abs(s.dec_deg - dec_deg) <= radius_deg)
    rows = [calibrator_model(n) for n in names]
    out = dict(name=np.array([r["name"] for r in rows], dtype="U16"),
               ra_deg=np.array([r["ra_deg"] for r in rows]), dec_deg=np.array([r["dec_deg"] for r in rows]),
               flux_jy=np.array([r["flux_jy"] for r in rows]),
               spectral_index=np.array([r["spectral_index"] for r in rows]), **_empty_shape(len(rows)))
    if abs(CASA["dec_deg"] - dec_deg) <= max(radius_deg, BRIGHT_RADIUS_DEG):
        out = {k: np.concatenate([out[k], np.array([CASA[k]], dtype=out[k].dtype)]) for k in out}
    return out


def real_field_sources(seed: int, dec_deg: float, ra_lo_deg: float, ra_hi_deg: float,
                       radius_deg: float = FIELD_RADIUS_DEG) -> dict:
    """NVSS sources (minus those within 60" of a VLA calibrator) plus the faint power law
    (S_MIN_JY..FAINT_MAX_JY) in RA [ra_lo, ra_hi] (may wrap) and the dec band; same keys as
    ``catalogue_bright_sources``. NVSS spectral indices ~ N(-0.7, 0.2), seeded per source row."""
    nv = read_nvss()
    ra_c = 0.5 * (ra_lo_deg + ra_hi_deg)
    half = 0.5 * (ra_hi_deg - ra_lo_deg)
    dra = (nv["ra_deg"] - ra_c + 180.0) % 360.0 - 180.0
    sel = (np.abs(dra) <= half) & (np.abs(nv["dec_deg"] - dec_deg) <= radius_deg)
    cal = catalogue_bright_sources(dec_deg, radius_deg + 0.1)
    rows = np.nonzero(sel)[0]
    if rows.size and cal["name"].size:
        cosd = (np.sin(np.radians(nv["dec_deg"][rows, None])) * np.sin(np.radians(cal["dec_deg"][None, :]))
                + np.cos(np.radians(nv["dec_deg"][rows, None])) * np.cos(np.radians(cal["dec_deg"][None, :]))
                * np.cos(np.radians(nv["ra_deg"][rows, None] - cal["ra_deg"][None, :])))
        sep = np.degrees(np.arccos(np.clip(cosd, -1, 1))) * 3600.0
        rows = rows[(sep > CAL_MATCH_ARCSEC).all(axis=1)]
    alpha = np.array([np.random.default_rng([seed, TAG_NVSS_ALPHA, int(r)]).normal(-0.7, 0.2) for r in rows])
    nvss = dict(name=nv["name"][rows], ra_deg=nv["ra_deg"][rows], dec_deg=nv["dec_deg"][rows],
                flux_jy=nv["flux_jy"][rows], spectral_index=alpha.reshape(-1),
                major_arcsec=nv["major_arcsec"][rows], minor_arcsec=nv["minor_arcsec"][rows],
                pa_deg=nv["pa_deg"][rows])
    faint = field_sources(seed, dec_deg, ra_lo_deg, ra_hi_deg, radius_deg, s_max_jy=FAINT_MAX_JY)
    faint.update(_empty_shape(faint["name"].size))
    return {k: np.concatenate([nvss[k], faint[k]]) for k in nvss}
