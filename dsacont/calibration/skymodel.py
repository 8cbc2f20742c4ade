"""Sky models for calibration: point sources with a flux and a spectral index, from catalogues.

Three sources of sky models, best first for a drift-scan strip (issue 15):

- dsacont's own accumulated model of a strip (clean components and catalogues of earlier days; not
  yet written),
- a reference catalogue: the real NVSS subset shipped with dsacont (:func:`nvss_catalogue`:
  3,777 compact, isolated NVSS components with peak > 52 mJy/beam at declinations +50 to +61 deg,
  Condon et al. 1998; right for flux-scale and phase references, NOT a complete sample), or any
  catalogue file a user points to (:func:`read_catalogue`: NVSS/FIRST/VLASS/RACS-style tables in
  any format astropy reads),
- the calibrator alone (:func:`dsacont.calibrators.get_calibrator`).

Fluxes are in Jy at ``ref_freq_hz`` (1.4 GHz unless the catalogue says otherwise), positions ICRS
(J2000) degrees, ``S(f) = S_ref (f / f_ref) ** spectral_index`` (default -0.7, the median of
optically thin synchrotron sources; NVSS has one frequency only).
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from dsacont.errors import BadInputError

#: spectral index given to catalogue sources that have none
DEFAULT_SPECTRAL_INDEX = -0.7
NVSS_FILE = "data/nvss_compact_dec50_61.csv"


@dataclass(frozen=True)
class SkySource:
    """A source of the model.

    Attributes
    ----------
    name : str
    ra_deg, dec_deg : float
        ICRS (J2000) position, degrees.
    flux_jy : float
        Integrated flux density at ``ref_freq_hz``, Jy.
    spectral_index : float
        ``S ~ nu ** spectral_index``.
    ref_freq_hz : float
        Reference frequency of ``flux_jy``, Hz.
    major_arcsec, minor_arcsec, pa_deg : float
        Deconvolved Gaussian FWHM (arcsec; 0 = unresolved) and position angle (deg, east of north).
        Models predict the Gaussian where a size is given (:func:`dsacont.calibration.model.source_model`);
        the field solve selects compact sources and models them as points.
    """

    name: str
    ra_deg: float
    dec_deg: float
    flux_jy: float
    spectral_index: float = DEFAULT_SPECTRAL_INDEX
    ref_freq_hz: float = 1.4e9
    major_arcsec: float = 0.0
    minor_arcsec: float = 0.0
    pa_deg: float = 0.0

    def flux_at(self, freq_hz):
        """Flux density (Jy) at ``freq_hz`` (Hz, scalar or array)."""
        return self.flux_jy * (np.asarray(freq_hz, dtype=float) / self.ref_freq_hz) ** self.spectral_index


def sky_from_arrays(name, ra_deg, dec_deg, flux_jy, spectral_index, ref_freq_hz=1.4e9) -> list[SkySource]:
    """SkySources from parallel arrays (e.g. a survey catalogue, or the simulator's truth)."""
    return [SkySource(str(n), float(r), float(d), float(s), float(a), float(ref_freq_hz))
            for n, r, d, s, a in zip(name, ra_deg, dec_deg, flux_jy, spectral_index)]


def rows_of_sources(sources) -> list[list]:
    """SkySources as JSON rows ``[name, ra_deg, dec_deg, flux_jy]`` (how a sky model travels between
    the service and its workers, e.g. :meth:`dsacont.service.sky.SkyStore.model_near`); see
    :func:`sources_from_rows`."""
    return [[s.name, float(s.ra_deg), float(s.dec_deg), float(s.flux_jy)] for s in sources]


def sources_from_rows(rows) -> list[SkySource]:
    """SkySources from rows ``[name, ra_deg, dec_deg, flux_jy, ...]`` (columns after the fourth,
    e.g. the strip model's detection count, ignored); None or empty: none."""
    return [SkySource(str(r[0]), float(r[1]), float(r[2]), float(r[3])) for r in rows or []]


def load_sky_csv(path) -> list[SkySource]:
    """Field sources from a CSV file with a header naming the columns
    ``name, ra_deg, dec_deg, flux_jy[, spectral_index[, ref_freq_hz]]`` (flux at 1.4 GHz by default)."""
    out = []
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            row = {k.strip(): v for k, v in row.items()}
            try:
                out.append(SkySource(row.get("name", ""), float(row["ra_deg"]), float(row["dec_deg"]),
                                     float(row["flux_jy"]),
                                     float(row.get("spectral_index") or DEFAULT_SPECTRAL_INDEX),
                                     float(row.get("ref_freq_hz") or 1.4e9),
                                     float(row.get("major_arcsec") or 0.0), float(row.get("minor_arcsec") or 0.0),
                                     float(row.get("pa_deg") or 0.0)))
            except (KeyError, ValueError) as exc:
                raise BadInputError(path, f"bad sky-model row {row}: {exc}") from exc
    return out


def nvss_catalogue() -> list[SkySource]:
    """The NVSS subset shipped with dsacont (see the module docstring), flux at 1.4 GHz."""
    with resources.as_file(resources.files("dsacont").joinpath(NVSS_FILE)) as path:
        return load_sky_csv(path)


# column names used by survey catalogues (NVSS, FIRST, VLASS, RACS, PyBDSF, Aegean, VizieR), lower case
_RA = ("ra_deg", "raj2000", "_raj2000", "ra", "ra_j2000", "ra(deg)", "radeg")
_DEC = ("dec_deg", "dej2000", "_dej2000", "decj2000", "dec", "dec_j2000", "de", "dec(deg)", "dedeg")
_FLUX = ("flux_jy", "s1.4", "s1400", "s1_4", "flux", "total_flux", "int_flux", "sint", "fint", "flux_int",
         "total_flux_source", "s_int", "stotal", "s")
_NAME = ("name", "nvss", "first", "component_name", "source_name", "id", "source_id", "island_id")
_MAJ = ("major_arcsec", "majaxis", "maj", "dc_maj", "major", "deconv_maj")
_MIN = ("minor_arcsec", "minaxis", "min", "dc_min", "minor", "deconv_min")
_PA = ("pa_deg", "pa", "dc_pa", "deconv_pa")
_ALPHA = ("spectral_index", "alpha", "spind", "sp_index")


def _column(table, names, what, path, required=True):
    cols = {c.lower(): c for c in table.colnames}
    for n in names:
        if n in cols:
            return table[cols[n]]
    if required:
        raise BadInputError(path, f"no {what} column (looked for {', '.join(names)}; the file has "
                                  f"{', '.join(table.colnames)})")
    return None


def _to_unit(col, unit, default_unit):
    """Values of an astropy column in ``unit``: from the column's unit, else ``default_unit``."""
    import astropy.units as u

    values = np.asarray(col, dtype=float)
    src = getattr(col, "unit", None) or default_unit
    return (values * u.Unit(src)).to_value(unit)


def read_catalogue(path, *, format: str | None = None, flux_unit: str | None = None,
                   ref_freq_hz: float = 1.4e9, min_flux_jy: float = 0.0) -> list[SkySource]:
    """Read a survey catalogue file (NVSS/FIRST/VLASS/RACS-style) into SkySources.

    Parameters
    ----------
    path : str or Path
        Any table astropy reads: FITS, VOTable, CSV/ECSV, IPAC, or VizieR-style ASCII.
    format : str, optional
        astropy's format name when it cannot guess it from the file name.
    flux_unit : str, optional
        Unit of the flux column when the file does not record one. Default: 'Jy' for a column
        named like ``flux_jy``, otherwise 'mJy' (NVSS ``S1.4``, FIRST ``Fint``, VLASS/PyBDSF
        ``Total_flux`` are mJy).
    ref_freq_hz : float
        Frequency of the catalogue fluxes (1.4 GHz for NVSS/FIRST; 3.0e9 for VLASS, 0.8875e9 RACS-low).
    min_flux_jy : float
        Sources fainter than this at ``ref_freq_hz`` are left out.

    Returns
    -------
    list of SkySource
        Positions from RA/Dec columns in degrees (or sexagesimal strings, 'hh mm ss' / 'dd mm ss'),
        fluxes in Jy, sizes (deconvolved FWHM, arcsec) where the table has them.

    Raises
    ------
    BadInputError
        The file is unreadable or lacks a position or flux column: the message names the file.
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    path = Path(path)
    try:
        t = Table.read(path, format=format) if format else Table.read(path)
    except Exception as exc:  # astropy raises many kinds for a file it cannot read
        raise BadInputError(path, f"not a catalogue astropy can read: {exc}") from exc
    ra_c, dec_c = _column(t, _RA, "RA", path), _column(t, _DEC, "declination", path)
    if ra_c.dtype.kind in "US" or dec_c.dtype.kind in "US":
        sc = SkyCoord([str(r) for r in ra_c], [str(d) for d in dec_c], unit=(u.hourangle, u.deg))
        ra, dec = sc.ra.deg, sc.dec.deg
    else:
        ra, dec = _to_unit(ra_c, u.deg, "deg"), _to_unit(dec_c, u.deg, "deg")
    flux_c = _column(t, _FLUX, "flux", path)
    if flux_unit is not None:  # the caller's unit wins over a missing or wrong one in the file
        flux = np.asarray(flux_c, dtype=float) * u.Unit(flux_unit).to(u.Jy)
    else:
        flux = _to_unit(flux_c, u.Jy, "Jy" if flux_c.name.lower() == "flux_jy" else "mJy")
    name_c = _column(t, _NAME, "name", path, required=False)
    names = [str(n) for n in name_c] if name_c is not None else [f"src{i}" for i in range(len(t))]
    size = []
    for names_, unit in ((_MAJ, u.arcsec), (_MIN, u.arcsec), (_PA, u.deg)):
        c = _column(t, names_, "", path, required=False)
        size.append(np.zeros(len(t)) if c is None else
                    np.nan_to_num(_to_unit(c, unit, "arcsec" if unit is u.arcsec else "deg")))
    a_c = _column(t, _ALPHA, "", path, required=False)
    alpha = np.full(len(t), DEFAULT_SPECTRAL_INDEX) if a_c is None else \
        np.where(np.isfinite(np.asarray(a_c, float)), np.asarray(a_c, float), DEFAULT_SPECTRAL_INDEX)
    keep = np.isfinite(ra) & np.isfinite(dec) & np.isfinite(flux) & (flux >= min_flux_jy)
    return [SkySource(names[i], float(ra[i]), float(dec[i]), float(flux[i]), float(alpha[i]), float(ref_freq_hz),
                      float(size[0][i]), float(size[1][i]), float(size[2][i])) for i in np.flatnonzero(keep)]


def sources_near(sources, ra_deg: float, dec_deg: float, radius_deg: float, *, min_flux_jy: float = 0.0,
                 compact_arcsec: float | None = None) -> list[SkySource]:
    """The sources within ``radius_deg`` of (``ra_deg``, ``dec_deg``) (ICRS degrees), brightest first.

    ``compact_arcsec``: keep only sources whose deconvolved major axis is at most this (the point
    model's assumption), e.g. a fifth of the synthesized beam.
    """
    if not sources:
        return []
    ra = np.radians([s.ra_deg for s in sources])
    dec = np.radians([s.dec_deg for s in sources])
    ra0, dec0 = np.radians(ra_deg), np.radians(dec_deg)
    cos_d = np.sin(dec) * np.sin(dec0) + np.cos(dec) * np.cos(dec0) * np.cos(ra - ra0)
    near = np.degrees(np.arccos(np.clip(cos_d, -1, 1))) <= radius_deg
    out = [s for s, k in zip(sources, near) if k and s.flux_jy >= min_flux_jy
           and (compact_arcsec is None or s.major_arcsec <= compact_arcsec)]
    return sorted(out, key=lambda s: -s.flux_jy)
