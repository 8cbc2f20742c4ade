"""Cross-match QA of a source catalogue against a reference catalogue: flux scale, astrometry, completeness.

References (:func:`reference_sources`): ``"nvss"``, the NVSS subset shipped with dsacont (compact
sources > 52 mJy/beam at Dec +50..+61: right for the flux scale and astrometry, not a complete
sample); ``"vla"``, the VLA calibrator list; or a catalogue file (NVSS/FIRST/VLASS-style, or a
dsacont ``.sources.fits``), all read by :mod:`dsacont.calibration.skymodel` (its one catalogue
reader) into ``SkySource`` lists.

Each reference source inside the image's coverage (finite pixels) is matched to the nearest
catalogue source within ``match_arcsec`` (default half the restoring beam's major FWHM). Figures:

- flux ratio ``int_flux / S_ref(freq)`` (or ``peak_flux``) of the matches (the reference flux moved to the image
  frequency with its spectral index): median, robust scatter (1.4826 MAD), count;
- offsets catalogue - reference, ``dRA cos(Dec)`` and ``dDec`` (arcsec): medians and robust scatter;
- completeness: the fraction of reference sources brighter than ``flux_limit_jy`` in the coverage
  that were found (with a noise map, only those whose expected S/N there is at least the
  catalogue's detection threshold count).

The operators' gates (``docs``: "Their QA gates") are evaluated on these: flux ratio within
0.8-1.2 with at least 3 matches, and at least 60 % of reference sources >= 50 mJy recovered.

The mosaic's tile gates (:func:`tile_crossmatch_gates`, applied by the service's mosaic trigger
beside :func:`dsacont.imaging.qa.tile_gates`) keep a tile out of the mosaic when, over at least
:data:`TILE_MIN_MATCHES` matches, its median flux ratio is outside :data:`TILE_FLUX_BAND` or its
median offset exceeds :data:`TILE_MAX_OFFSET_BEAM` of the beam. Measured on the demo hour of the
real sky (``dsacont demo --realistic``: 12 tiles, 22-38 NVSS matches each): tile medians
0.923-0.992 (0.963 typical, robust scatter between tiles 0.014; per-source robust scatter
0.04-0.12, so a median of 10 matches is known to +-0.05 or better, 1.25 sigma / sqrt(n)), median
offsets <= 2.1" = 0.026 of the ~80" beam (per-source scatter 0.9-1.9", a median of 10 to +-0.75"
= 0.01 beam). The band (the operators' 0.8-1.2) is then >= 2.6 standard errors from the worst good
tile at 10 matches, 3.4 from a typical one, and ~5 at the demo's 25 matches; 0.1 beam (8") is 4x the
worst good tile's offset, ~8 standard errors, and what the issue asks of positions. On the synthetic
sky of ``dsacont demo`` (no NVSS sources in it) tiles have 0-1 chance matches: never judged.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

from dsacont.errors import BadInputError

#: the operators' gates: median flux ratio range with at least FLUX_GATE_MIN_MATCHES, completeness
FLUX_GATE = (0.8, 1.2)
FLUX_GATE_MIN_MATCHES = 3
COMPLETENESS_GATE = 0.6
DEFAULT_FLUX_LIMIT_JY = 0.05
#: the mosaic's tile gates (see the module docstring for how they were chosen)
TILE_FLUX_BAND = (0.8, 1.2)
TILE_MIN_MATCHES = 10
TILE_MAX_OFFSET_BEAM = 0.1


def reference_sources(reference="nvss", *, format: str | None = None, flux_unit: str | None = None,
                      ref_freq_hz: float = 1.4e9):
    """A reference catalogue as a list of :class:`dsacont.calibration.skymodel.SkySource`.

    Parameters
    ----------
    reference : str, path-like or list of SkySource
        ``"nvss"`` (the shipped NVSS subset), ``"vla"`` (the VLA calibrator list, 20 cm fluxes),
        a catalogue file (read by :func:`dsacont.calibration.skymodel.read_catalogue`), or sources.
    format, flux_unit, ref_freq_hz
        Passed to ``read_catalogue`` for a file.
    """
    from dsacont.calibration.skymodel import SkySource, nvss_catalogue, read_catalogue

    if isinstance(reference, (list, tuple)):
        return list(reference)
    if isinstance(reference, str) and reference.lower() == "nvss":
        return nvss_catalogue()
    if isinstance(reference, str) and reference.lower() in ("vla", "calibrators"):
        from dsacont.calibrators import load_catalogue

        return [SkySource(c.name, c.ra_deg, c.dec_deg, c.flux_jy, c.spectral_index) for c in load_catalogue()
                if math.isfinite(c.flux_jy)]
    return read_catalogue(reference, format=format, flux_unit=flux_unit, ref_freq_hz=ref_freq_hz)


def _reference_name(reference) -> str:
    if isinstance(reference, (list, tuple)):
        return f"{len(reference)} sources"
    return str(reference) if isinstance(reference, str) and reference.lower() in ("nvss", "vla", "calibrators") \
        else os.path.basename(os.fspath(reference))


def _robust_std(x) -> float:
    x = np.asarray(x, float)
    return float(1.4826 * np.median(np.abs(x - np.median(x)))) if x.size else float("nan")


def _catalogue_and_image(catalogue, image):
    from dsacont.sources.finder import read_sources

    if isinstance(catalogue, dict):
        image = image or catalogue.get("image")
        catalogue = catalogue["table"]
    elif isinstance(catalogue, (str, os.PathLike)):
        path = os.fspath(catalogue)
        catalogue = read_sources(path)
        if image is None and catalogue.meta.get("IMAGE"):
            guess = Path(path).with_name(str(catalogue.meta["IMAGE"]))
            image = str(guess) if guess.exists() else None
    return catalogue, image


def crossmatch(catalogue, reference="nvss", *, image=None, noise=None, match_arcsec: float | None = None,
               flux_limit_jy: float = DEFAULT_FLUX_LIMIT_JY, format: str | None = None,
               flux_unit: str | None = None, ref_freq_hz: float = 1.4e9, flux_column: str = "int_flux",
               return_matches: bool = False) -> dict:
    """Cross-match a catalogue with a reference: flux ratio, offsets and completeness, as a QA dict.

    Parameters
    ----------
    catalogue : path, astropy Table or dict
        A ``.sources.fits`` (its image is found beside it by the ``IMAGE`` card), a table with
        :func:`dsacont.sources.find_sources`'s columns, or ``find_sources``'s result.
    reference : str, path or list of SkySource
        See :func:`reference_sources`.
    image : path, optional
        The image the catalogue came from: its finite pixels are the coverage (default: the
        catalogue's own image; without one, a circle around the catalogue's sources).
    noise : path or float, optional
        The image's noise (see :func:`dsacont.sources.finder.noise_for_image`); default dsacont's.
    match_arcsec : float, optional
        Match radius, arcsec (default half the restoring beam's major FWHM, else 30").
    flux_limit_jy : float
        Completeness is measured over reference sources at least this bright (at the image frequency).
    format, flux_unit, ref_freq_hz
        How to read a reference catalogue file (``read_catalogue``).
    flux_column : {'int_flux', 'peak_flux'}
        The catalogue's flux to compare: integrated (default), or the peak, which for unresolved
        sources does not depend on the restoring beam in the header matching the image's.
    return_matches : bool
        Also return ``matches``, an astropy Table of the matched pairs.

    Returns
    -------
    dict (JSON-serialisable unless ``return_matches``)
        ``reference``, ``match_arcsec``, ``n_catalogue``, ``n_reference`` (in the coverage),
        ``n_matched``, ``flux_ratio_median``, ``flux_ratio_scatter``, ``ra_offset_arcsec``,
        ``dec_offset_arcsec`` (medians), ``ra_offset_scatter_arcsec``, ``dec_offset_scatter_arcsec``,
        ``beam_major_arcsec`` (the catalogue's restoring beam, NaN if unknown),
        ``flux_limit_jy``, ``n_reference_above_limit``, ``n_found_above_limit``, ``completeness``
        (NaN without reference sources above the limit), ``gates`` (``flux_scale``,
        ``completeness``: 'pass', 'fail' or 'n/a').
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord
    from astropy.table import Table

    from dsacont.io.fits import read_fits_image
    from dsacont.sources.finder import noise_for_image

    cat, image = _catalogue_and_image(catalogue, image)
    refs = reference_sources(reference, format=format, flux_unit=flux_unit, ref_freq_hz=ref_freq_hz)
    freq = float(cat.meta.get("FREQ", float("nan")))
    bmaj = cat.meta.get("BMAJ")
    if match_arcsec is None:
        match_arcsec = 0.5 * float(bmaj) * 3600.0 if bmaj else 30.0
    r_ra = np.array([s.ra_deg for s in refs], float)
    r_dec = np.array([s.dec_deg for s in refs], float)
    r_flux = np.array([float(s.flux_at(freq)) if math.isfinite(freq) else s.flux_jy for s in refs], float)
    r_name = np.array([s.name for s in refs], dtype=object)
    exp_snr = np.full(len(refs), np.inf)
    if image is not None:
        data, _, wcs = read_fits_image(image)
        x, y = wcs.world_to_pixel_values(r_ra, r_dec)
        x, y = np.asarray(x, float), np.asarray(y, float)
        ny, nx = data.shape
        ok = np.isfinite(x) & np.isfinite(y) & (x > -0.5) & (x < nx - 0.5) & (y > -0.5) & (y < ny - 0.5)
        xi, yi = np.round(x[ok]).astype(int), np.round(y[ok]).astype(int)
        ok[ok] = np.isfinite(data[yi, xi])
        nmap, _ = noise_for_image(image, noise)
        if nmap is not None:
            n_at = nmap[np.round(y[ok]).astype(int), np.round(x[ok]).astype(int)]
            ok[ok] = np.isfinite(n_at) & (n_at > 0)
            n_at = nmap[np.round(y[ok]).astype(int), np.round(x[ok]).astype(int)]
            exp_snr[ok] = r_flux[ok] / n_at
        in_field = ok
    elif len(cat):
        c0 = SkyCoord(np.median(cat["ra_deg"]) * u.deg, np.median(cat["dec_deg"]) * u.deg)
        radius = c0.separation(SkyCoord(np.asarray(cat["ra_deg"]) * u.deg, np.asarray(cat["dec_deg"]) * u.deg)).max()
        in_field = c0.separation(SkyCoord(r_ra * u.deg, r_dec * u.deg)) <= radius
    else:
        raise BadInputError(str(catalogue), "an empty catalogue without its image has no coverage to match in")
    r_ra, r_dec, r_flux, r_name, exp_snr = (a[in_field] for a in (r_ra, r_dec, r_flux, r_name, exp_snr))

    matched = np.zeros(len(r_ra), bool)
    idx = np.zeros(len(r_ra), int)
    if len(cat) and len(r_ra):
        ref_c = SkyCoord(r_ra * u.deg, r_dec * u.deg)
        cat_c = SkyCoord(np.asarray(cat["ra_deg"], float) * u.deg, np.asarray(cat["dec_deg"], float) * u.deg)
        idx, sep, _ = ref_c.match_to_catalog_sky(cat_c)
        matched = sep.arcsec <= match_arcsec
        # one reference per catalogue source: the nearest reference keeps it
        for j in np.unique(idx[matched]):
            claim = np.flatnonzero(matched & (idx == j))
            if claim.size > 1:
                keep = claim[np.argmin(sep.arcsec[claim])]
                matched[claim[claim != keep]] = False
    m = np.flatnonzero(matched)
    ci = idx[m]
    if flux_column not in ("int_flux", "peak_flux"):
        raise ValueError(f"flux_column {flux_column!r}: 'int_flux' or 'peak_flux'")
    c_flux = np.asarray(cat[flux_column], float)[ci] if len(m) else np.zeros(0)
    ratio = c_flux / r_flux[m]
    dra = ((np.asarray(cat["ra_deg"], float)[ci] - r_ra[m] + 180.0) % 360.0 - 180.0) * np.cos(np.radians(r_dec[m])) * 3600
    ddec = (np.asarray(cat["dec_deg"], float)[ci] - r_dec[m]) * 3600
    nsig = float(cat.meta.get("NSIGMA", 5.0))
    above = (r_flux >= flux_limit_jy) & (exp_snr >= nsig)
    n_above = int(above.sum())
    completeness = float((matched & above).sum() / n_above) if n_above else float("nan")
    med = float(np.median(ratio)) if len(m) else float("nan")
    gates = {
        "flux_scale": "n/a" if len(m) < FLUX_GATE_MIN_MATCHES else
        ("pass" if FLUX_GATE[0] <= med <= FLUX_GATE[1] else "fail"),
        "completeness": "n/a" if not n_above else ("pass" if completeness >= COMPLETENESS_GATE else "fail"),
    }
    out = {"reference": _reference_name(reference), "match_arcsec": float(match_arcsec), "flux_column": flux_column,
           "n_catalogue": len(cat),
           "n_reference": int(len(r_ra)), "n_matched": int(len(m)), "flux_ratio_median": med,
           "flux_ratio_scatter": _robust_std(ratio), "ra_offset_arcsec": float(np.median(dra)) if len(m) else float("nan"),
           "dec_offset_arcsec": float(np.median(ddec)) if len(m) else float("nan"),
           "ra_offset_scatter_arcsec": _robust_std(dra), "dec_offset_scatter_arcsec": _robust_std(ddec),
           "beam_major_arcsec": float(bmaj) * 3600.0 if bmaj else float("nan"), "flux_limit_jy": float(flux_limit_jy), "n_reference_above_limit": n_above,
           "n_found_above_limit": int((matched & above).sum()), "completeness": completeness, "gates": gates}
    if return_matches:
        t = Table()
        t["ref_name"] = r_name[m].astype(str)
        t["name"] = np.asarray(cat["name"])[ci]
        t["ref_flux_jy"], t[flux_column], t["ratio"] = r_flux[m], c_flux, ratio
        t["ra_offset_arcsec"], t["dec_offset_arcsec"] = dra, ddec
        out["matches"] = t
    return out


#: the cross-match figures a tile keeps in its image QA (``qa["crossmatch"]``) for the mosaic's gates
TILE_QA_KEYS = ("reference", "n_matched", "flux_ratio_median", "flux_ratio_scatter", "ra_offset_arcsec",
                "dec_offset_arcsec", "beam_major_arcsec")


def tile_crossmatch_gates(qa: dict | None, *, flux_band: tuple = TILE_FLUX_BAND, min_matches: int = TILE_MIN_MATCHES,
                          max_offset_beam: float = TILE_MAX_OFFSET_BEAM) -> list[str]:
    """Why a tile's cross-match keeps it out of a mosaic (empty: it may go in).

    Parameters
    ----------
    qa : dict or None
        :func:`crossmatch`'s result for the tile's catalogue (or its :data:`TILE_QA_KEYS`, as the
        pipeline stores them in the image's QA under ``crossmatch``). None or fewer than
        ``min_matches`` matches: not judged.
    flux_band : (float, float)
        The median flux ratio (catalogue / reference) must lie in [lo, hi].
    min_matches : int
        Judged only over at least this many matched reference sources.
    max_offset_beam : float
        The median offset (RA cos Dec, Dec combined; arcsec) must be at most this fraction of the
        restoring beam's major FWHM (not judged when the beam is unknown).

    Returns
    -------
    list of str, one sentence per failed gate.
    """
    if not qa:
        return []
    n = int(qa.get("n_matched") or 0)
    if n < min_matches:
        return []
    out = []
    ref = qa.get("reference") or "the reference"
    med = qa.get("flux_ratio_median")
    lo, hi = flux_band
    if med is None or not (math.isfinite(med) and lo <= med <= hi):
        out.append(f"flux ratio to {ref} {float(med if med is not None else 'nan'):.2f} over {n} sources "
                   f"(outside {lo:g}-{hi:g})")
    bmaj = qa.get("beam_major_arcsec")
    dra, ddec = qa.get("ra_offset_arcsec"), qa.get("dec_offset_arcsec")
    if bmaj is not None and math.isfinite(bmaj) and bmaj > 0 and dra is not None and ddec is not None:
        off = math.hypot(dra, ddec)
        if not (math.isfinite(off) and off <= max_offset_beam * bmaj):
            out.append(f"offset from {ref} {off:.1f}\" = {off / bmaj:.2f} beam over {n} sources "
                       f"(> {max_offset_beam:g} beam)")
    return out
