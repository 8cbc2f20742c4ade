"""Field gain corrections: the gains solved on any group against a sky model, around the clock.

Bright calibrators transit a declination strip only a few times a day, and the antenna phases
wander by tens of degrees in an hour. So every group without a calibrator transit gets its own
gain correction, solved on the field itself (the DSA-110 team's "epoch gaincal", here once per
5-minute group)::

    solve_field_gains(ms, base_tables)
      1. sky model of the field (:func:`field_sky`: the shipped NVSS subset, or a catalogue file
         the user names, through the drifting primary beam) -> MODEL_DATA
      2. apply the calibrator pair [B, G] (the bandpass and the last calibrator gains, transferred)
         and measure how much of the model's flux the data hold (:func:`model_flux_ratio`)
      3. CASA gaincal on top of [B, G]: ``calmode='ap'``, ``solnorm=True`` (the amplitudes are
         normalised to a mean of 1, so the flux scale stays the calibrator's),
         ``combine='scan,field,spw'`` (one solution per antenna and polarisation for the group: the
         wander is achromatic across the 187.5 MHz band and the SNR is 4x that of a per-SPW solve)
      4. apply [B, G, F] and measure the model flux ratio again
      5. QA gate: flagged solutions, median SNR, the spread of the amplitudes over antennas, the
         model flux ratio before and after, and the
         flux ratio of the model's fainter sources fitted jointly with its brightest
         (:func:`held_out_ratio`; antenna phases can move one point source anywhere, not many at
         once: a model that is not the sky is caught there); a
         rejected solve leaves the pair applied (the gains transferred) and says why.

Two methods solve it (``method``): 'fast' (the default) computes steps 1-5 from one read of
DATA, with the pair applied and the model predicted in memory (the sums of
:func:`dsacont.calibration.fastsolve.field_sums`, our StEFCal, over every 4th channel at
the real size), and writes CORRECTED_DATA once;
'casa' runs them on the MS as listed (MODEL_DATA, gaincal, an apply before and after).

The reference antenna is the calibrator solve's (from the G table's metrics), so the phases stay
referred to the same antenna all day.
"""
from __future__ import annotations

import logging
import os
import shutil
import time as _time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from dsacont import calibrators
from dsacont.calibration.apply import Corrector, apply_calibration
from dsacont.calibration.fastsolve import (
    STEP_MIN_SNR,
    field_channel_step,
    field_sums,
    median_snr,
    prepare_sky,
    solve_field,
    write_field_table,
)
from dsacont.calibration.model import beam_offsets, pointing_dec, sidelobe_sources, write_model
from dsacont.calibration.msinfo import MSInfo, read_ms_info
from dsacont.calibration.skymodel import SkySource, nvss_catalogue, read_catalogue, sources_near
from dsacont.calibration.tables import caltable_metrics, read_caltable
from dsacont.casa import casatasks
from dsacont.config import get_paths
from dsacont.io.atomic import move_into_place
from dsacont.io.ms import iter_ddid, table
from dsacont.telescope import airy_beam

log = logging.getLogger(__name__)

#: half-width (hours) of a field gain table's validity: the group it was solved on
FIELD_VALIDITY_H = 0.05
#: field sources brighter than this in the beam (apparent Jy at 1.4 GHz) enter the model
MIN_APPARENT_JY = 0.005
#: sources within this radius (deg) of the pointing: the Airy first null at 1.28 GHz is 3.6 deg
MODEL_RADIUS_DEG = 3.6


@dataclass(frozen=True)
class FieldQA:
    """The field solve's QA gate (a solve failing any is rejected and the gains are transferred).

    Attributes
    ----------
    max_flagged : float
        Largest fraction of flagged solutions (antennas present in the data).
    min_snr : float
        Smallest median solution SNR.
    min_model_flux_ratio : float
        Smallest model flux ratio after the correction (data / model, coherent).
    max_model_flux_ratio : float
        Largest: data holding far more than the model's flux (a tile whose model misses a bright
        source, or gains run away) is not a correction to trust either.
    max_ratio_loss : float
        The ratio after may not be lower than before by more than this.
    min_model_jy : float
        Smallest total apparent model flux (Jy) worth solving against.
    min_held_out_ratio : float
        Smallest flux ratio of the model's fainter sources (fitted jointly with its brightest,
        :func:`held_out_ratio`), after the correction. Antenna phases can make the data match any
        single point source (they move it), so a correction is trusted only when the fainter
        sources, which it cannot all move at once, are recovered too. 0.75: corrections accepted
        on the true sky read 0.79-1.10 (the demo and the around-the-clock benchmark); a solve
        against NVSS on a sky without NVSS sources read up to 0.60, the gains pulling the data
        part of the way to any model.
    min_held_out_sources : int
        Fewest sources besides the brightest for that check (fewer: rejected, unverifiable).
    max_held_out_ratio : float
        Largest held-out ratio (measured: 2.5 and 5.3 on two groups 2.5 h after the transit whose
        tiles then came out at 10x and 7.5x the radiometer noise, with the ratio after at 1.6 and
        3.2; accepted groups read 0.79-1.10).
    max_amp_scatter : float
        Largest robust fractional spread of the correction's amplitudes over antennas and
        polarisations (``amp_scatter`` of :func:`dsacont.calibration.tables.caltable_metrics`).
        ``solnorm`` keeps their mean at 1, so a correction that absorbed an unmodelled source shows
        in the spread, not the median: measured 0.21 (median 0.86) for a solve against the field
        alone at Cas A's transit, 0.017 with Cas A in the model (the ideal array, whose transferred
        gains are right); the realistic array's accepted corrections 1-6 h from the transit read
        0.029-0.051 (``tests/service/test_around_the_clock.py``).
    """

    max_flagged: float = 0.3
    min_snr: float = 5.0
    min_model_flux_ratio: float = 0.7
    max_ratio_loss: float = 0.02
    min_model_jy: float = 0.1
    min_held_out_ratio: float = 0.75
    min_held_out_sources: int = 3
    max_model_flux_ratio: float = 1.3
    max_held_out_ratio: float = 1.5
    max_amp_scatter: float = 0.10


def field_sky(info: MSInfo, *, catalogue=None, radius_deg: float = MODEL_RADIUS_DEG,
              min_apparent_jy: float = MIN_APPARENT_JY, compact_arcsec: float | None = 30.0,
              name: str | None = None, add_calibrators: bool = True, sidelobe: bool = True):
    """The sky model of a group's field (points, and Cas A where it matters), and a description of it.

    Parameters
    ----------
    info : MSInfo of the group
    catalogue : path or list of SkySource, optional
        A catalogue file (NVSS/FIRST/VLASS-style, :func:`read_catalogue`) or sources; default
        the shipped NVSS subset (:func:`nvss_catalogue`). VLA calibrators not in it are added.
    radius_deg : float
        Sources within this radius of the pointing centre.
    min_apparent_jy : float
        Keep sources whose 1.4 GHz flux times the primary beam at the group's mid-time is at least
        this (Jy).
    compact_arcsec : float or None
        Keep sources with a deconvolved major axis up to this (arcsec): the model is of points.
    name : str, optional
        What the model is called in the description (default: the catalogue's file name, or
        'NVSS (shipped subset)', or 'user sources').
    add_calibrators : bool
        Add the VLA calibrators the catalogue lacks (right for a survey catalogue; wrong for a
        model of what the telescope itself saw, where a calibrator absent is absent).
    sidelobe : bool
        Put the bright sources in the beam's sidelobes (Cas A, :func:`sidelobe_sources`) first in
        the model, as Gaussians through the drifting beam: tens of Jy near Cas A's transit, more
        than the whole field, which a solve against the field alone would fold into the gains.

    Returns
    -------
    (list of SkySource, dict)
        The sidelobe sources, then the field's compact sources as points, brightest apparent
        first; ``{"name", "n_sources", "apparent_jy"}`` and, with sidelobe sources, ``"sidelobe"``
        (name, mean and peak apparent flux, closest distance).
    """
    if catalogue is None:
        sources, name = nvss_catalogue(), name or "NVSS (shipped subset)"
    elif isinstance(catalogue, (str, os.PathLike)):
        sources, name = read_catalogue(catalogue), name or str(catalogue)
    else:
        sources, name = list(catalogue), name or "user sources"
    ra0, dec0 = info.field_dirs[len(info.field_dirs) // 2]
    near = sources_near(sources, float(np.degrees(ra0)), float(np.degrees(dec0)), radius_deg,
                        compact_arcsec=compact_arcsec)
    cals = [c for c in calibrators.load_catalogue() if np.isfinite(c.flux_jy)] if add_calibrators else []
    cal_near = [] if not cals else sources_near([SkySource(c.name, c.ra_deg, c.dec_deg, c.flux_jy, c.spectral_index) for c in cals],
                            float(np.degrees(ra0)), float(np.degrees(dec0)), radius_deg)
    for c in cal_near:  # a calibrator the catalogue lacks (NVSS's compact subset may leave it out)
        if not any(_sep_arcsec(c, s) < 30.0 for s in near):
            near.append(c)
    if not near:
        return [], {"name": name, "n_sources": 0, "apparent_jy": 0.0}
    dec_app = pointing_dec(info)
    off = np.array([beam_offsets(np.radians(s.ra_deg), np.radians(s.dec_deg), dec_app, [info.mid_mjd])[0]
                    for s in near])
    apparent = np.array([s.flux_jy for s in near]) * airy_beam(off, 1.4e9)
    order = np.argsort(-apparent)
    # compact sources are modelled as points (the catalogue's deconvolved sizes select them)
    keep = [replace(near[i], major_arcsec=0.0, minor_arcsec=0.0) if isinstance(near[i], SkySource) else near[i]
            for i in order if apparent[i] >= min_apparent_jy]
    meta = {"name": name, "n_sources": len(keep),
            "apparent_jy": round(float(apparent[apparent >= min_apparent_jy].sum()), 4)}
    side = sidelobe_sources(info, pointing_dec_rad=dec_app) if sidelobe and keep else []
    if side:
        keep = [SkySource(d["source"].name, d["source"].ra_deg, d["source"].dec_deg, d["source"].flux_jy,
                          d["source"].spectral_index, major_arcsec=d["source"].major_arcsec,
                          minor_arcsec=d["source"].minor_arcsec, pa_deg=d["source"].pa_deg) for d in side] + keep
        meta["n_sources"] = len(keep)
        meta["sidelobe"] = [{"name": d["source"].name, "mean_apparent_jy": round(d["mean_apparent_jy"], 3),
                             "peak_apparent_jy": round(d["peak_apparent_jy"], 3),
                             "closest_deg": round(d["closest_deg"], 3)} for d in side]
        meta["apparent_jy"] = round(meta["apparent_jy"] + sum(d["mean_apparent_jy"] for d in side), 4)
    return keep, meta


def _sep_arcsec(a, b) -> float:
    ra1, d1, ra2, d2 = np.radians([a.ra_deg, a.dec_deg, b.ra_deg, b.dec_deg])
    c = np.sin(d1) * np.sin(d2) + np.cos(d1) * np.cos(d2) * np.cos(ra1 - ra2)
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))) * 3600.0)


def model_sums(ms, info: MSInfo | None = None, column: str = "CORRECTED_DATA") -> tuple[float, float]:
    """``(Re sum(C M*), sum(|M|^2))`` of the data column ``C`` and MODEL_DATA ``M``.

    Over the unflagged cross-correlations of both polarisations (Jy^2).
    """
    info = info or read_ms_info(ms)
    num = den = 0.0
    with table(ms) as tb:
        for _d, sub, s, n in iter_ddid(tb, range(len(info.ddid_spw))):
            cross = np.asarray(sub.getcol("ANTENNA1", s, n)) != np.asarray(sub.getcol("ANTENNA2", s, n))
            c = np.asarray(sub.getcol(column, s, n))[..., cross]
            m = np.asarray(sub.getcol("MODEL_DATA", s, n))[..., cross]
            good = ~np.asarray(sub.getcol("FLAG", s, n))[..., cross]
            num += float(np.sum(np.real(c * np.conj(m))[good]))
            den += float(np.sum((np.abs(m) ** 2)[good]))
    return num, den


def model_flux_ratio(ms, info: MSInfo | None = None, column: str = "CORRECTED_DATA") -> float:
    """How much of the model's flux the calibrated data hold: ``Re sum(C M*) / sum(|M|^2)``.

    Over the unflagged cross-correlations of both polarisations; 1 for perfectly calibrated data
    of a sky equal to the model, less when phase errors decorrelate it, and the amplitude scale
    error otherwise.
    """
    num, den = model_sums(ms, info, column)
    return num / den if den > 0 else float("nan")


def held_out_ratio(ms, sky, info: MSInfo | None = None, column: str = "CORRECTED_DATA",
                   full_sums: tuple[float, float] | None = None) -> float:
    """The flux ratio of the model's fainter sources, fitted jointly with its brightest one.

    The data ``C`` are fitted as ``a M_b + b M_h`` (real ``a``, ``b``; least squares over the
    unflagged cross-correlations), where ``M_b`` is the model of the brightest source (``sky[0]``)
    and ``M_h`` that of the others; returns ``b``. A single projection of ``C`` on ``M_h`` is
    not enough: with one source ten times brighter than the rest, its visibilities leak into the
    projection of a 5-minute snapshot (measured: 0.16 on data of exactly the model's sky).
    ``Re sum(M_b M_h*)`` follows from the sums of the full model: ``(|M|^2 - |M_b|^2 - |M_h|^2) / 2``.
    MODEL_DATA ends holding ``M_b``. ``full_sums``: :func:`model_sums` of the whole model, when
    the caller has them already (MODEL_DATA holding ``sky``); else they are computed here.
    """
    if full_sums is None:
        write_model(ms, None, sky=list(sky), info=info)
        full_sums = model_sums(ms, info, column)
    c_m, mm = full_sums
    write_model(ms, None, sky=list(sky[1:]), info=info)
    c_h, hh = model_sums(ms, info, column)
    write_model(ms, None, sky=list(sky[:1]), info=info)
    c_b, bb = model_sums(ms, info, column)
    bh = 0.5 * (mm - bb - hh)
    det = bb * hh - bh * bh
    if not det > 1e-12 * bb * hh:
        return float("nan")
    return float((bb * c_h - bh * c_b) / det)


def solve_field_gains(ms, base_tables, *, paths=None, refant: str | None = None, catalogue=None,
                      sky=None, sky_name: str | None = None, add_calibrators: bool = True, qa: FieldQA | None = None, minsnr: float = 3.0,
                      combine: str = "scan,field,spw", validity_h: float = FIELD_VALIDITY_H,
                      interp: str = "linear", method: str | None = None, channel_step: int | None = None,
                      step_min_snr: float = STEP_MIN_SNR) -> dict:
    """Solve, check and apply a field gain correction on ``ms`` on top of ``base_tables``.

    Parameters
    ----------
    ms : path of the group's Measurement Set (CORRECTED_DATA is written; MODEL_DATA too by the
        CASA method)
    base_tables : [B, G] caltable paths (the calibrator pair, transferred)
    paths : dsacont.config.Paths, optional
        The table goes to ``paths.caltables`` (temporaries in ``paths.tmp``).
    refant : str, optional
        Reference antenna(s), comma separated (default: CASA's choice; the fast method: the
        best-connected solved antenna).
    catalogue : path or list of SkySource, optional
        Sky model source (see :func:`field_sky`); ``sky`` gives the sources directly.
    sky_name : str, optional
        The model's name in the QA and provenance (:func:`field_sky`'s ``name``).
    add_calibrators : bool
        :func:`field_sky`'s: add the VLA calibrators the catalogue lacks.
    qa : FieldQA, optional
    minsnr : float
        Solutions below this SNR are flagged.
    combine : str
        gaincal ``combine`` (the CASA method; the fast method always solves one gain per antenna
        and polarisation for the group, ``'scan,field,spw'``).
    validity_h : float
        Half-width (hours) of the table's validity window.
    method : {'fast', 'casa'}, optional
        ``'fast'`` (default, ``DEFAULT_METHOD``): DATA read once per SPW, the pair applied to it
        in memory, and summed per baseline against the model predicted in memory
        (:func:`dsacont.calibration.fastsolve.field_sums`); the gains, the model flux ratios and
        the held-out ratio all follow from those sums, and CORRECTED_DATA is written once, with
        the three tables or the pair. ``'casa'``: MODEL_DATA written, CASA ``gaincal``, the
        ratios measured on the MS after each apply (the reference the fast method is checked
        against, ``benchmarks/field_solve.py``).
    channel_step : int, optional
        The fast method sums every ``channel_step``-th channel (default
        :func:`dsacont.calibration.fastsolve.field_channel_step`: 4 at the real size, 1 on the
        small preset).
    step_min_snr : float
        When the gains solved on every ``channel_step``-th channel have a median SNR below this,
        the fast method sums every channel and solves again (``qa['channel_step_tried']``).

    Returns
    -------
    dict
        ``status`` ('valid' or 'rejected'), ``reason``, ``path`` (the table, also kept when
        rejected, for inspection), ``qa`` (metrics and the model flux ratio before and after),
        ``applied`` (apply_calibration's result for the tables now in CORRECTED_DATA: the three
        when valid, the pair when rejected), ``sky`` (the model's description), ``timings_s``, and
        ``entry``: the registry entry (kind 'G', origin 'field'; ``depends_on`` to be set by the
        caller to the base gain table).
    """
    method = method or DEFAULT_METHOD
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    ms = str(Path(ms).absolute())
    paths = (paths or get_paths()).ensure("caltables", "tmp")
    qa = qa or FieldQA()
    timings = {}
    info = read_ms_info(ms)
    t = _time.perf_counter()
    if sky is None:
        sky, sky_meta = field_sky(info, catalogue=catalogue, name=sky_name, add_calibrators=add_calibrators)
    else:
        sky_meta = {"name": "given", "n_sources": len(sky), "apparent_jy": None}
    stem = Path(ms).name.removesuffix(".ms")
    final = Path(paths.caltables) / f"{stem}_field.G"
    entry = {"key": "F", "kind": "G", "calibrator": None, "solve_mjd": info.mid_mjd, "path": str(final),
             "source_ms": ms, "valid_before_h": validity_h, "valid_after_h": validity_h, "origin": "field",
             "dec_deg": float(np.degrees(pointing_dec(info))), "method": method}
    out = {"status": "rejected", "reason": None, "path": None, "sky": sky_meta, "entry": entry}
    if not sky or (sky_meta["apparent_jy"] is not None and sky_meta["apparent_jy"] < qa.min_model_jy):
        out["reason"] = f"sky model too faint ({sky_meta['apparent_jy']} Jy apparent in {sky_meta['n_sources']} sources)"
        out["applied"] = apply_calibration(ms, tables=base_tables, interp=interp)
        out["qa"] = {}
        entry.update(status="rejected", reason=out["reason"], metrics={"sky": sky_meta})
        return out
    # the held-out check fits the model's first source jointly with the rest
    ordered = sorted(sky, key=lambda src: -src.flux_jy) if sky_meta["name"] == "given" else list(sky)
    work = Path(paths.tmp) / f"{stem}.field.{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    tmp = work / final.name
    metrics: dict = {"sky": sky_meta, "method": method}
    run = _run_fast if method == "fast" else _run_casa
    reasons, applied, restore = run(ms, info, ordered, base_tables, tmp, refant, minsnr, combine, interp, qa,
                                    metrics, timings, t, (channel_step, step_min_snr))
    metrics["qa_gate"] = asdict(qa)
    metrics["timings_s"] = {k: round(v, 2) for k, v in timings.items()}
    if tmp.is_dir():
        move_into_place(tmp, final)
        out["path"] = str(final)
    shutil.rmtree(work, ignore_errors=True)
    if reasons:
        out["reason"] = "; ".join(reasons)
        log.warning("%s: field gain solve rejected (%s); the calibrator gains are transferred", ms, out["reason"])
        if restore:
            casatasks().flagmanager(vis=ms, mode="restore", versionname=_FLAG_VERSION)
        out["applied"] = apply_calibration(ms, tables=base_tables, interp=interp)
        entry.update(status="rejected", reason=out["reason"], metrics=metrics)
    else:
        out["status"] = "valid"
        applied["tables"] = [*base_tables, str(final)]
        out["applied"] = applied
        entry.update(status="valid", reason=None, metrics=metrics)
        log.info("%s: field gains (%s, %s, %d sources, %.2f Jy apparent): model flux ratio %.3f -> %.3f "
                 "(its fainter sources, fitted with the brightest: %.3f), median SNR %.0f, phase rms %.0f deg", ms,
                 method, sky_meta["name"], sky_meta["n_sources"], sky_meta["apparent_jy"] or float("nan"),
                 metrics["model_flux_ratio_before"], metrics["model_flux_ratio_after"], metrics["held_out_ratio"],
                 metrics["snr_median"], metrics["phase_rms_deg"])
    if restore is not None:
        casatasks().flagmanager(vis=ms, mode="delete", versionname=_FLAG_VERSION)
        if not _other_versions(ms):
            shutil.rmtree(ms + ".flagversions", ignore_errors=True)
    out["qa"] = metrics
    out["timings_s"] = metrics["timings_s"]
    if not out["path"]:
        entry["path"] = str(final)
    return out


#: the field solve's method unless told: 'fast' (``benchmarks/field_solve.py`` measures both)
DEFAULT_METHOD = "fast"
METHODS = ("fast", "casa")


def _table_gate(tmp, base_tables, qa: FieldQA, metrics: dict) -> list[str]:
    """The table's part of the gate: flagged solutions, SNR, amplitude spread (metrics updated)."""
    if not tmp.is_dir():
        return ["the solve wrote no table"]
    reasons = []
    present = _present_antennas(base_tables[-1])
    metrics.update(caltable_metrics(tmp, present))
    metrics["phase_rms_deg"] = _phase_rms(tmp, present)
    if metrics["flagged_fraction"] > qa.max_flagged:
        reasons.append(f"{100 * metrics['flagged_fraction']:.0f} % of solutions flagged (> {100 * qa.max_flagged:.0f} %)")
    if metrics["snr_median"] < qa.min_snr:
        reasons.append(f"median SNR {metrics['snr_median']:.1f} < {qa.min_snr}")
    if metrics["amp_scatter"] > qa.max_amp_scatter:
        reasons.append(f"amplitude scatter {metrics['amp_scatter']:.3f} over antennas > {qa.max_amp_scatter} "
                       f"(median {metrics['amp_median']:.3f}): the correction absorbed something the model lacks")
    return reasons


def _ratio_gate(before: float, after: float, held: float, n_held: int, qa: FieldQA, metrics: dict) -> list[str]:
    """The model's part of the gate: the flux ratio after (and its change), the held-out ratio."""
    reasons = []
    metrics["model_flux_ratio_after"] = round(after, 4)
    if not after >= qa.min_model_flux_ratio:
        reasons.append(f"model flux ratio {after:.3f} after the solve < {qa.min_model_flux_ratio}")
    elif after > qa.max_model_flux_ratio:
        reasons.append(f"model flux ratio {after:.3f} after the solve > {qa.max_model_flux_ratio}: the data hold "
                       "far more than the model")
    if after < before - qa.max_ratio_loss:
        reasons.append(f"model flux ratio fell from {before:.3f} to {after:.3f}")
    if n_held < qa.min_held_out_sources:
        reasons.append(f"only {n_held} model source(s) besides the brightest: the solve cannot be verified")
        return reasons
    metrics["held_out_ratio"] = round(held, 4)
    metrics["held_out_sources"] = n_held
    if held > qa.max_held_out_ratio:
        reasons.append(f"the model's {n_held} fainter sources read {held:.2f}x their "
                       f"flux (> {qa.max_held_out_ratio}): the model is not this sky")
    elif not held >= qa.min_held_out_ratio:
        reasons.append(f"the model's {n_held} fainter sources are not recovered (ratio "
                       f"{held:.3f} < {qa.min_held_out_ratio}): the model is not this sky")
    return reasons


def _run_fast(ms, info, sky, base_tables, tmp, refant, minsnr, combine, interp, qa, metrics, timings, t, step_rule):
    """The fast method: the pair applied in memory (:class:`~dsacont.calibration.apply.Corrector`),
    the data read once, the ratios from the sums; the MS is written once, by the caller's apply of
    the pair when rejected, here when accepted. Returns (reasons, what is applied (None when
    rejected), None: no flag version to restore). ``step_rule``: (channel_step, step_min_snr) of
    :func:`solve_field_gains`."""
    prep = prepare_sky(info, sky)
    timings["model"] = _time.perf_counter() - t
    t = _time.perf_counter()
    channel_step, step_min_snr = step_rule
    step = channel_step or field_channel_step(min(len(f) for f in info.spw_freqs))
    correct = Corrector(info, base_tables, interp=interp)
    names = [a.strip() for a in (refant or "").split(",") if a.strip()]
    given = [info.antenna_names.index(a) for a in names if a in info.antenna_names]
    while True:
        metrics["channel_step"] = step
        sums = field_sums(ms, info, prep, column="DATA", correct=correct, channel_step=step)
        timings["sums"] = timings.get("sums", 0.0) + _time.perf_counter() - t
        for k, v in sums.timings.items():  # summed over both passes when the every-channel one follows
            timings[f"sums_{k}"] = timings.get(f"sums_{k}", 0.0) + v
        refs = given or _best_connected(sums)
        t = _time.perf_counter()
        g, err, ok = solve_field(sums, refs, minsnr=minsnr)
        snr = median_snr(g, err, ok)
        if step == 1 or snr >= step_min_snr:
            break
        log.info("%s: field solve on every %d-th channel has median SNR %.1f < %.0f: summing every channel",
                 ms, step, snr, step_min_snr)
        metrics["channel_step_tried"], step = step, 1
        t = _time.perf_counter()
    before, _ = sums.ratios()
    metrics["model_flux_ratio_before"] = round(before, 4)
    ref = next((r for r in refs if ok[:, r].any()), -1)
    write_field_table(ms, g, err, ok, tmp, time_s=float(np.mean(info.times_s)), field_id=sums.field_id,
                      scan=sums.scan, refant=ref, freq_hz=float(np.mean(np.concatenate(info.spw_freqs))))
    timings["gaincal"] = _time.perf_counter() - t
    reasons = _table_gate(tmp, base_tables, qa, metrics)
    if not reasons:
        after, held = sums.ratios(g, ok)
        reasons = _ratio_gate(before, after, held, len(sky) - 1, qa, metrics)
    if reasons:
        return reasons, None, None  # the caller applies the pair
    t = _time.perf_counter()
    applied = apply_calibration(ms, tables=[*base_tables, str(tmp)], interp=interp)
    timings["apply"] = _time.perf_counter() - t
    return reasons, applied, None


def _best_connected(sums) -> list[int]:
    """Antenna ids by the model power on their baselines, most first (the reference's candidates)."""
    power = np.bincount(sums.bl_a1, (sums.bb + sums.hh).sum(axis=0), sums.nant) \
        + np.bincount(sums.bl_a2, (sums.bb + sums.hh).sum(axis=0), sums.nant)
    return [int(a) for a in np.argsort(-power)[:5]]


def _run_casa(ms, info, sky, base_tables, tmp, refant, minsnr, combine, interp, qa, metrics, timings, t, step_rule):
    """The CASA method: returns (reasons, what is applied (None when rejected), whether a flag
    version was saved (and must be restored when rejected))."""
    write_model(ms, None, sky=sky, info=info)
    timings["model"] = _time.perf_counter() - t
    t = _time.perf_counter()
    apply_calibration(ms, tables=base_tables, interp=interp)
    before = model_flux_ratio(ms, info)
    metrics["model_flux_ratio_before"] = round(before, 4)
    timings["before"] = _time.perf_counter() - t
    base_interp = [("nearest" if Path(p).suffix == ".B" else interp) for p in base_tables]
    t = _time.perf_counter()
    casatasks().gaincal(vis=ms, caltable=str(tmp), solint="inf", combine=combine, refant=refant or "",
                        calmode="ap", solnorm=True, gaintype="G", minsnr=minsnr,
                        gaintable=[str(p) for p in base_tables], interp=base_interp)
    timings["gaincal"] = _time.perf_counter() - t
    reasons = _table_gate(tmp, base_tables, qa, metrics)
    if reasons:
        return reasons, None, None
    t = _time.perf_counter()
    # applycal flags the data of flagged solutions: keep the flags as they are, in case the
    # correction is rejected (it must leave no trace)
    casatasks().flagmanager(vis=ms, mode="save", versionname=_FLAG_VERSION, merge="replace")
    applied = apply_calibration(ms, tables=[*base_tables, str(tmp)], interp=interp)
    full_sums = model_sums(ms, info)  # MODEL_DATA holds the whole model (written before the solve)
    after = full_sums[0] / full_sums[1] if full_sums[1] > 0 else float("nan")
    timings["after"] = _time.perf_counter() - t
    held = held_out_ratio(ms, sky, info, full_sums=full_sums) if len(sky) - 1 >= qa.min_held_out_sources \
        else float("nan")
    reasons = _ratio_gate(before, after, held, len(sky) - 1, qa, metrics)
    return reasons, (None if reasons else applied), True


_FLAG_VERSION = "dsacont_before_field_gains"


def _other_versions(ms) -> bool:
    """Whether the MS has flag versions other than dsacont's temporary one."""
    listing = Path(ms + ".flagversions") / "FLAG_VERSION_LIST"
    return listing.exists() and any(line.strip() and not line.startswith(_FLAG_VERSION)
                                    for line in listing.read_text().splitlines())


def _present_antennas(gain_table) -> list[int]:
    """Antenna indices with at least one good solution in ``gain_table`` (those in the data)."""
    t = read_caltable(gain_table)
    good = ~t["FLAG"].reshape(-1, t["FLAG"].shape[-1]).all(axis=0)
    return sorted({int(a) for a in t["ANTENNA1"][good]})


def _phase_rms(path, antennas) -> float:
    """RMS (deg) of the good solutions' phases over the given antennas: how much was corrected."""
    t = read_caltable(path)
    keep = np.isin(t["ANTENNA1"], antennas)
    ph = np.angle(t["CPARAM"][..., keep])[~t["FLAG"][..., keep]]
    return float(np.degrees(np.sqrt(np.mean(ph ** 2)))) if ph.size else float("nan")
