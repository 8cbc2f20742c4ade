"""Flatten the drifting-beam modulation of bright sources before imaging one tile.

Why
---
DSA-110 does not track: during a 5-minute tile the sky drifts ~1.25 deg x cos(dec) through a
primary beam parked on the meridian, so a source's apparent flux ``S A(t, f) s(f)`` changes from
integration to integration (by up to ~30 % for 0834+555 0.7 deg off centre) and across the band
(the Airy beam is chromatic). tclean's model is one fixed point per component (MFS, one Taylor
term, no time-variable beam with the standard gridder), so for an 8.8 Jy calibrator these
changes leave deconvolution errors that dominate the tile's noise: measured on the small-preset
demo, Stokes-I residual RMS 2.6-5.4x the radiometer equation on the tiles around the transit,
while the thermal (Stokes-Q) noise is ~1.05x.

What
----
For each bright *known* source (a catalogue calibrator with a well-known position), the data
column being imaged gets

    C  <-  C - f S [A(t, f) s(f) - <A s>]

where ``A(t, f)`` is the Airy power beam at the source, recomputed per integration for the
drifting pointing (as the calibration model does), ``s(f) = (f / 1.4 GHz)^alpha`` the catalogue
spectrum, ``<A s>`` the mean of ``A s`` over the tile's integrations and channels, and ``f`` a
flux scale fitted to the data (least squares, cross-correlations, unflagged) so that an
inaccurate catalogue flux does not matter. What is left of the source in the data is a
*constant* point source of flux ``f S <A s>``: exactly what tclean deconvolves perfectly. The
source is not removed: its flux and position in the image are still measured from the data (the
fit scales only the modulation). Sources in the beam's sidelobes outside the image are
flattened too (their sidelobes cannot be cleaned away).

The brightest sources of the sky (Cas A, Cyg A: :func:`dsacont.calibration.model.sidelobe_sources`)
are *subtracted* whole (``<A s>`` taken as 0, mode 'subtract'), as Gaussians of their size: Cas A
passes 3.4 deg from the pointing at Dec +55.6 (apparent places), just past the beam's first null at 1.4 GHz, and its
1-40 Jy there change by orders of magnitude across the band and within a tile. It lies outside
the tile, where a constant left in the data could not be deconvolved either; its flux scale is
fitted like the calibrators' (one scale per source over the tile). So is every flattened source
that lies outside the image being made (``image_box``): 18-28 min from the transit 0834+555 sits
2.8-4.3 deg from the tile centre, beyond the 2.5 deg half-width of a full-size tile, and the
77-164 mJy constant left there had nothing to clean its sidelobes. On the full-size hour's
tiles with such a source (re-imaged from the same MSs) the main-lobe residual went from 1.114,
1.087 and 1.067x the radiometer equation to 1.093, 1.050 and 1.040x.

Bookkeeping
-----------
The operation is done in place (one pass to fit, one to write) and recorded in the main table
keyword ``DSACONT_FLATTEN`` (JSON: state, column, sources with the fitted scale and constant).
:func:`unflatten` adds the same model back (a pure function of the recorded parameters and the
MS geometry), so :func:`dsacont.imaging.image_ms` flattens, images, and restores: afterwards
the column holds the calibrated data again. An interrupted write leaves ``state`` 'applying' or
'restoring': :func:`flatten_state` then raises :class:`FlattenInterrupted`, and re-applying the
calibration (``dsacont applycal``, which rewrites CORRECTED_DATA and clears the keyword) repairs
the MS; the pipeline does that by itself.
"""
from __future__ import annotations

import logging
import time as _time

import numpy as np

from dsacont import calibration as C
from dsacont.calibration.model import closest_approach_rad
from dsacont.calibrators import get_calibrator, load_catalogue
from dsacont.io.ms import KEYWORD_FLATTEN as KEYWORD
from dsacont.io.ms import FlattenInterrupted, clear_state, flatten_state, iter_ddid, set_flatten_state, table  # noqa: F401
from dsacont.telescope import airy_beam, angular_separation

log = logging.getLogger(__name__)

# catalogue sources whose apparent flux (flux x beam, 1.4 GHz, best point of the tile) reaches this
DEFAULT_MIN_APPARENT_JY = 0.1
# ... and whose distance from the pointing reaches at most this (first sidelobe of the 4.65 m dish)
DEFAULT_MAX_OFFSET_DEG = 5.0
# a fitted flux scale outside this range means the source is not where the catalogue says (or the
# data are not calibrated): the catalogue flux is used instead, with a warning
FIT_RANGE = (0.5, 2.0)
# a fitted scale below this (in absolute value) means the source is absent from the data
ABSENT_BELOW = 0.1


def bright_sources(info, *, min_apparent_jy: float = DEFAULT_MIN_APPARENT_JY,
                   max_offset_deg: float = DEFAULT_MAX_OFFSET_DEG, pointing_dec_rad: float | None = None) -> list:
    """Catalogue calibrators bright enough in this tile to be worth flattening.

    Parameters
    ----------
    info : :class:`dsacont.calibration.MSInfo`
    min_apparent_jy : keep sources whose largest apparent flux over the tile (catalogue flux at
        1.4 GHz x Airy beam at the closest approach to the drifting pointing) reaches this, Jy.
    max_offset_deg : and whose closest approach is within this angle of the pointing, degrees.
    pointing_dec_rad : apparent pointing declination (default: recovered from the phase centre).

    Returns a list of :class:`dsacont.calibrators.Calibrator`, brightest (apparent) first.
    """
    cals = [c for c in load_catalogue() if np.isfinite(c.flux_jy)]
    return bright_among(info, cals, min_apparent_jy=min_apparent_jy, max_offset_deg=max_offset_deg,
                        pointing_dec_rad=pointing_dec_rad)


def bright_among(info, sources, *, min_apparent_jy: float = DEFAULT_MIN_APPARENT_JY,
                 max_offset_deg: float = DEFAULT_MAX_OFFSET_DEG, pointing_dec_rad: float | None = None) -> list:
    """The ``sources`` (objects with ``ra_deg``, ``dec_deg``, ``flux_jy`` at 1.4 GHz) bright enough
    in this tile to be worth flattening, by :func:`bright_sources`' rule; brightest (apparent)
    first. E.g. the sources of dsacont's own model of the strip, which on a synthetic or real sky
    hold sources as bright as a calibrator that no calibrator list names."""
    if pointing_dec_rad is None:
        pointing_dec_rad = C.pointing_dec(info)
    dec0 = np.degrees(pointing_dec_rad)
    out = []
    for src in sources:
        if not src.flux_jy >= min_apparent_jy or abs(src.dec_deg - dec0) > max_offset_deg + 1.0:
            continue
        closest = closest_approach_rad(src, info, pointing_dec_rad)
        if np.degrees(closest) > max_offset_deg:
            continue
        apparent = float(src.flux_jy * airy_beam(closest, 1.4e9))
        if apparent >= min_apparent_jy:
            out.append((apparent, src))
    out.sort(key=lambda x: -x[0])
    return [c for _, c in out]


def bright_in_tile(image_path, pb_path, flattened=(), *, min_apparent_jy: float = DEFAULT_MIN_APPARENT_JY,
                   pb_min: float = 0.1, exclude_beams: float = 2.0) -> list:
    """The tile's own bright sources that no flattening list named: peaks of its restored image.

    A source the strip model does not hold yet (the strip's first day, at the edge of what has
    been imaged) is not flattened, and its drifting-beam modulation leaves sidelobes at ~1 % of
    it. This finds such sources on the tile just made, for a second imaging pass.

    Parameters
    ----------
    image_path, pb_path : str
        The tile's restored (flat-noise, apparent) image and its primary beam, FITS.
    flattened : iterable of dict or objects with ``ra_deg``, ``dec_deg``
        Sources already flattened (e.g. the tile's ``qa["flattened"]``).
    min_apparent_jy : float
        Peaks of the image (apparent flux, Jy/beam) from this up.
    pb_min : float
        Only where the primary beam is at least this.
    exclude_beams : float
        A peak within this many beam major axes of a flattened source is that source (or its
        sidelobe), not a new one.

    Returns
    -------
    list of :class:`dsacont.calibration.SkySource`, brightest first: position of the peak, flux
    the peak over the primary beam (Jy; the flattening fits its own scale).
    """
    from dsacont.imaging.qa import find_sources
    from dsacont.io.fits import beam_from_header, read_fits_image

    img, hdr, wcs = read_fits_image(image_path)
    pb = read_fits_image(pb_path)[0]
    beam = beam_from_header(hdr)
    cell = abs(float(hdr["CDELT2"])) * 3600.0
    peaks = find_sources(img, wcs, min_apparent_jy, nsigma=1.0, beam_px=beam["bmaj_arcsec"] / cell, pb=pb,
                         pb_min=pb_min)
    tol = exclude_beams * beam["bmaj_arcsec"]
    found = [C.SkySource(f"J{p['ra_deg']:.4f}{p['dec_deg']:+.4f}", float(p["ra_deg"]), float(p["dec_deg"]),
                         float(p["flux"])) for p in peaks]
    return [s for s in found if not any(_same_place(s, f, tol) for f in flattened)]


#: samples per block of the flux fit's normal equations (float64: ns x 2 MB per source)
_GRAM_BLOCK = 1 << 18


def _same_place(a, b, tol_arcsec: float = 30.0) -> bool:
    """Whether two sources (objects or dicts with ``ra_deg``, ``dec_deg``) are within ``tol_arcsec``."""
    def radec(src):
        return (src["ra_deg"], src["dec_deg"]) if isinstance(src, dict) else (src.ra_deg, src.dec_deg)

    sep = angular_separation(*np.radians([*radec(a), *radec(b)]))
    return float(np.degrees(sep)) * 3600.0 < tol_arcsec


def _models(info, sources, pointing_dec_rad, subtract=()):
    """Per source: beam x spectrum amplitudes per SPW (Ntimes, Nchan) in Jy, the constant left in
    the data (their mean over the tile; 0 for the names in ``subtract``), and the direction cosines
    per field."""
    amps, consts = [], []
    for s in sources:
        a, _ = C.model_amplitudes(s, info, beam="time", pointing_dec_rad=pointing_dec_rad)
        amps.append(a)
        consts.append(0.0 if s.name in subtract else float(np.mean(np.concatenate([x.ravel() for x in a]))))
    lmn_sf = np.array([[C.lmn(np.radians(s.ra_deg), np.radians(s.dec_deg), r0, d0) for r0, d0 in info.field_dirs]
                       for s in sources])
    return amps, consts, lmn_sf


def _chunks(tb, info):
    for d, sub, s, n in iter_ddid(tb, range(len(info.ddid_spw))):
        spw = int(info.ddid_spw[d])
        uvw = np.asarray(sub.getcol("UVW", s, n)).T
        tidx = np.searchsorted(info.times_s, sub.getcol("TIME", s, n))
        fidx = np.asarray(sub.getcol("FIELD_ID", s, n))
        yield spw, sub, s, n, uvw, tidx, fidx


def _predict(info, spw, uvw, tidx, fidx, lmn_sf, amp_list, npol, shapes):
    return C.source_model(uvw, info.spw_freqs[spw], tidx, fidx, lmn_sf, np.stack([a[spw] for a in amp_list]),
                          shapes, npol=npol)


def outside_image(sources, image_box) -> set:
    """Names of the ``sources`` outside the square image ``image_box`` = (ra0, dec0, half_width),
    radians: the image centre and half its side, ``imsize x cell / 2`` (a SIN image's pixels are
    steps of the direction cosines: l or m beyond it)."""
    if image_box is None:
        return set()
    ra0, dec0, half = image_box
    out = set()
    for s in sources:
        l, m, n = C.lmn(np.radians(s.ra_deg), np.radians(s.dec_deg), ra0, dec0)
        if n <= 0 or max(abs(l), abs(m)) > half:
            out.add(s.name)
    return out


def flatten_sources(ms, sources="auto", *, column: str = "CORRECTED_DATA", fit: bool = True,
                    min_apparent_jy: float = DEFAULT_MIN_APPARENT_JY,
                    max_offset_deg: float = DEFAULT_MAX_OFFSET_DEG, info=None, image_box=None) -> dict:
    """Flatten bright sources' beam modulation in ``column`` of ``ms`` (in place, recorded).

    Parameters
    ----------
    ms : path of a calibrated Measurement Set (one tile)
    sources : 'auto' (:func:`bright_sources`, then the bright sidelobe sources of
        :func:`dsacont.calibration.model.sidelobe_sources`, subtracted whole), 'calibrators' (the
        first alone), or a list of calibrator names / objects with ``name, ra_deg, dec_deg,
        flux_at(freq_hz)`` (e.g. :class:`dsacont.calibration.SkySource`; flattened); a list
        holding 'auto' means 'auto' and the others (those within 30" of one 'auto' chose, or of
        one before them in the list, left out), e.g. the strip model's bright sources (:func:`bright_among`).
    column : the data column tclean will image ('CORRECTED_DATA' or 'DATA').
    fit : fit a flux scale per source (least squares of the source's model against the data,
        cross-correlations, unflagged rows and channels); otherwise the catalogue flux is used.
    image_box : (ra0, dec0, half_width), radians, optional
        The image the data are flattened for (centre, half its side): a source outside it is
        subtracted whole (:func:`outside_image`; nothing would deconvolve a constant left there).

    Returns
    -------
    dict: ``sources`` (name, ra_deg, dec_deg, catalogue ``flux_jy`` at 1.4 GHz, fitted ``scale``,
    ``mean_apparent_jy`` = scale x <A s> x S, the constant left in the data, ``mode``: 'flatten'
    or 'subtract'), ``column``,
    ``seconds``, and ``skipped``: sources whose fitted scale is outside ``FIT_RANGE`` (not in the
    data as catalogued: variable, resolved, or missing from a simulated sky), which are left alone.
    Nothing is written when no source qualifies (``sources`` empty).
    An earlier flattening recorded on the MS is undone first.
    """
    ms = str(ms)
    t0 = _time.perf_counter()
    info = info or C.read_ms_info(ms)
    if flatten_state(ms) is not None:
        unflatten(ms, info=info)
    pdec = C.pointing_dec(info)
    subtract = set()
    also = []
    if isinstance(sources, (list, tuple)) and "auto" in sources:  # 'auto' and these sources
        also = [get_calibrator(s) if isinstance(s, str) else s for s in sources if not (isinstance(s, str) and s == "auto")]
        sources = "auto"
    if isinstance(sources, str) and sources in ("auto", "calibrators"):
        side = [d["source"] for d in C.sidelobe_sources(info, pointing_dec_rad=pdec)] if sources == "auto" else []
        subtract = {s.name for s in side}
        sources = bright_sources(info, min_apparent_jy=min_apparent_jy, max_offset_deg=max_offset_deg,
                                 pointing_dec_rad=pdec) + side
        for a in also:  # in order: one within 30" of a source before it is the same source
            if not any(_same_place(a, s) for s in sources):
                sources.append(a)
    sources = [get_calibrator(s) if isinstance(s, str) else s for s in (sources or [])]
    result = {"column": column, "sources": [], "seconds": 0.0}
    if not sources:
        return result
    subtract |= outside_image(sources, image_box)
    amps, consts, lmn_sf = _models(info, sources, pdec, subtract)
    shapes = [C.source_shape(s) for s in sources]
    ns = len(sources)
    with table(ms, readonly=False) as tb:
        if column not in tb.colnames():
            raise RuntimeError(f"{ms} has no {column} column to flatten (apply the calibration first)")
        npol = int(tb.getcell(column, 0).shape[0])
        scale = np.ones(ns)
        if fit:
            # normal equations of D ~ sum_k x_k M_k over unflagged cross-correlations (joint, so
            # two sources in the same field do not bias each other)
            ata = np.zeros((ns, ns))
            atb = np.zeros(ns)
            for spw, sub, s, n, uvw, tidx, fidx in _chunks(tb, info):
                a1, a2 = sub.getcol("ANTENNA1", s, n), sub.getcol("ANTENNA2", s, n)
                data = np.ascontiguousarray(sub.getcol(column, s, n), dtype=np.complex64)
                bad = sub.getcol("FLAG", s, n) | (a1 == a2)[None, None, :]
                # each source's model with flagged samples zeroed, as real (re, im) pairs: Re<M_i, M_j>
                # and Re<M_i, D> are then matrix products, done in float64 a block at a time (float32
                # sums over a chunk's millions of samples moved the scales by ~5e-5)
                models = np.empty((ns, *data.shape), dtype=np.complex64)
                for k in range(ns):
                    models[k] = _predict(info, spw, uvw, tidx, fidx, lmn_sf[k:k + 1], [amps[k]], npol, shapes[k:k + 1])
                    models[k][bad] = 0
                real = models.reshape(ns, -1).view(np.float32)
                dreal = data.reshape(-1).view(np.float32)
                for b0 in range(0, real.shape[1], _GRAM_BLOCK):
                    blk = real[:, b0:b0 + _GRAM_BLOCK].astype(np.float64)
                    ata += blk @ blk.T
                    atb += blk @ dreal[b0:b0 + _GRAM_BLOCK].astype(np.float64)
                del models, real
            with np.errstate(all="ignore"):
                x = np.linalg.lstsq(ata, atb, rcond=None)[0] if np.all(np.diag(ata) > 0) else np.ones(ns)
            keep = []
            for k, src in enumerate(sources):
                if np.isfinite(x[k]) and FIT_RANGE[0] <= x[k] <= FIT_RANGE[1]:
                    scale[k] = x[k]
                    keep.append(k)
                else:
                    # absent (|fit| < ABSENT_BELOW: variable, resolved out, or not in the sky at all) is
                    # recorded in the tile's QA; a source present at a wrong flux says more (a
                    # calibration or catalogue problem) and is a warning
                    level = logging.INFO if abs(x[k]) < ABSENT_BELOW else logging.WARNING
                    log.log(level, "%s: %s is not in the data as catalogued (fitted flux %.3g x the catalogue's); "
                            "not flattened", ms, src.name, x[k])
                    result.setdefault("skipped", []).append({"name": src.name, "scale": float(x[k])})
            if not keep:
                return result
            sources = [sources[k] for k in keep]
            amps = [amps[k] for k in keep]
            consts = [consts[k] for k in keep]
            lmn_sf = lmn_sf[keep]
            shapes = [shapes[k] for k in keep]
            scale = scale[keep]
            ns = len(sources)
        amp_flat = [[scale[k] * (a - consts[k]) for a in amps[k]] for k in range(ns)]
        record = {
            "state": "applying", "column": column, "pointing_dec_rad": float(pdec),
            "sources": [{"name": src.name, "ra_deg": float(src.ra_deg), "dec_deg": float(src.dec_deg),
                         "flux_jy": float(src.flux_at(1.4e9)),
                         "spectral_index": float(getattr(src, "spectral_index", 0.0)),
                         "major_arcsec": float(getattr(src, "major_arcsec", 0.0)),
                         "minor_arcsec": float(getattr(src, "minor_arcsec", 0.0)),
                         "pa_deg": float(getattr(src, "pa_deg", 0.0)),
                         "mode": "subtract" if src.name in subtract else "flatten",
                         "scale": float(scale[k]), "mean_amp_jy": float(consts[k]),
                         "mean_apparent_jy": float(scale[k] * consts[k])} for k, src in enumerate(sources)],
        }
        set_flatten_state(tb, record)
        for spw, sub, s, n, uvw, tidx, fidx in _chunks(tb, info):
            m = _predict(info, spw, uvw, tidx, fidx, lmn_sf, amp_flat, npol, shapes)
            sub.putcol(column, sub.getcol(column, s, n) - m, s, n)
        record["state"] = "applied"
        set_flatten_state(tb, record)
    dt = _time.perf_counter() - t0
    log.info("%s: flattened %s in %s (%.1f s)", ms,
             ", ".join(f"{r['name']} ({'subtracted, ' if r['mode'] == 'subtract' else ''}scale {r['scale']:.3f}, "
                       f"{r['mean_apparent_jy']:.3g} Jy apparent)"
                       for r in record["sources"]), column, dt)
    return {**result, "sources": record["sources"], "seconds": dt}


def unflatten(ms, *, info=None) -> dict | None:
    """Undo the flattening recorded on ``ms`` (adds the recorded model back); None if there is none.

    ``info``: its :class:`dsacont.calibration.MSInfo` if the caller has it (read otherwise)."""
    ms = str(ms)
    state = flatten_state(ms)
    if state is None:
        return None
    t0 = _time.perf_counter()
    info = info or C.read_ms_info(ms)
    srcs = [C.SkySource(r["name"], r["ra_deg"], r["dec_deg"], r["flux_jy"], r["spectral_index"],
                        major_arcsec=r.get("major_arcsec", 0.0), minor_arcsec=r.get("minor_arcsec", 0.0),
                        pa_deg=r.get("pa_deg", 0.0)) for r in state["sources"]]
    amps, _, lmn_sf = _models(info, srcs, state["pointing_dec_rad"])
    shapes = [C.source_shape(s) for s in srcs]
    amp_flat = [[r["scale"] * (a - r["mean_amp_jy"]) for a in amps[k]] for k, r in enumerate(state["sources"])]
    column = state["column"]
    with table(ms, readonly=False) as tb:
        npol = int(tb.getcell(column, 0).shape[0])
        set_flatten_state(tb, dict(state, state="restoring"))
        for spw, sub, s, n, uvw, tidx, fidx in _chunks(tb, info):
            m = _predict(info, spw, uvw, tidx, fidx, lmn_sf, amp_flat, npol, shapes)
            sub.putcol(column, sub.getcol(column, s, n) + m, s, n)
        tb.removekeyword(KEYWORD)
        tb.flush()
    log.info("%s: flattening of %d source(s) undone in %s (%.1f s)", ms, len(srcs), column,
             _time.perf_counter() - t0)
    return state
