"""Bandpass (B) and complex gain (G) solves on a calibrator group.

    solve_calibration(ms, "0834+555")   flag autocorrelations and zeros, model the calibrator
                                        (:mod:`dsacont.calibration.model`), solve G0 (phase, per
                                        integration) -> B (solint inf, solnorm) -> G (amplitude+phase)

Two solvers of the same problem, chosen by ``method``:

- ``"fast"`` (default): :mod:`dsacont.calibration.fastsolve`: one read of DATA per SPW, the model
  predicted in memory (MODEL_DATA is not written), weighted StEFCal on the model-divided data
  averaged over time (B) or channels (G0, G), written as CASA tables. Agrees with CASA's solve
  to well within the simulator's truth tolerances (``benchmarks/calibrate.py`` measures both on
  one MS); ~10x faster at full size.
- ``"casa"``: CASA ``flagdata``, MODEL_DATA written, ``gaincal``/``bandpass``/``gaincal``.

- Antenna health first (:mod:`~dsacont.calibration.health`): dead receptors and antennas with a
  wild or wrapping phase are found in the data and flagged.
- Reference antenna: chosen automatically among the healthy antennas with (nearly) the fewest
  flags, the one closest to the array's centroid; CASA gets a ranked list to fall back on.
- After the solve, the QA gates of :mod:`~dsacont.calibration.gates` (reference antenna, SNR,
  bandpass phase scatter) and the flagged fraction reject a bad pair.
- ``G0``: phase-only, per integration, per SPW: removes the time-variable phase before the
  bandpass average (applied while solving B only; never registered).
- ``B``: ``bandtype='B'``, ``solint='inf'``, ``combine='scan'``, ``solnorm=True``, per SPW
  (subbands are never combined).
- ``G``: ``calmode='ap'`` per SPW with B applied; the amplitude follows the model, which sets
  the flux scale. ``solint`` default 'inf' (one per SPW per tile; 'int' possible).

Tables are written under ``paths.tmp`` and moved into ``paths.caltables`` atomically; with a
registry, each is registered in 'writing' state before the solve and marked valid (or rejected,
with the reason) afterwards. A G records the B it was solved on (``depends_on``), so applying
picks B and G that belong together.
"""
from __future__ import annotations

import logging
import os
import shutil
import time as _time
from pathlib import Path

import numpy as np

from dsacont.calibration.fastsolve import prepare_model, reference_and_normalise, solve_spws, write_tables
from dsacont.calibration.gates import table_gates
from dsacont.calibration.health import antenna_health, flag_unhealthy, require_healthy
from dsacont.calibration.model import SKY_MIN_FRACTION, select_calibrator, significant_sky, write_model
from dsacont.calibration.msinfo import MSInfo, read_ms_info
from dsacont.calibration.plots import plot_bandpass, plot_gains
from dsacont.calibration.registry import Registry
from dsacont.calibration.tables import caltable_metrics, complete_spws
from dsacont.calibrators import get_calibrator
from dsacont.casa import casatasks
from dsacont.config import get_paths
from dsacont.errors import BadInputError
from dsacont.io.atomic import move_into_place

log = logging.getLogger(__name__)

#: a solve is rejected when more than this fraction of its solutions is flagged
MAX_FLAGGED_SOLUTIONS = 0.5
#: the solver used unless told otherwise: 'fast' (fastsolve) or 'casa'
DEFAULT_METHOD = "fast"
METHODS = ("fast", "casa")

def flag_for_calibration(ms) -> dict:
    """Flag autocorrelations and exact zeros (FLAG column); returns flag fractions per antenna."""
    ct = casatasks()
    ct.flagdata(vis=str(ms), mode="manual", autocorr=True, flagbackup=False)
    ct.flagdata(vis=str(ms), mode="clip", clipzeros=True, flagbackup=False)
    summary = ct.flagdata(vis=str(ms), mode="summary")
    per_ant = {k: v["flagged"] / v["total"] for k, v in summary["antenna"].items() if v["total"] > 0}
    return {"total": summary["flagged"] / max(summary["total"], 1), "antenna": per_ant}


def choose_refant(info: MSInfo, antenna_flags: dict, n: int = 5, health=None) -> list[str]:
    """Rank antennas for reference: low flag fraction first, then closeness to the array centre (median position).

    Antennas whose flag fraction exceeds the best by more than 5 percentage points are ranked
    after all others. With ``health`` (:class:`~dsacont.calibration.health.AntennaHealth`), only
    antennas whose two receptors are healthy are candidates. Returns up to ``n`` antenna names
    (CASA takes them as a fall-back list).
    """
    names = [n_ for n_ in info.antenna_names if n_ in antenna_flags]
    if health is not None:
        healthy = set(health.healthy_antennas())
        names = [a for a in names if a in healthy]
    if not names:
        raise BadInputError(info.path, "no antenna has unflagged data" + (" and two healthy receptors" if health else ""))
    idx = {a: i for i, a in enumerate(info.antenna_names)}
    pos = info.antenna_positions[[idx[a] for a in names]]
    dist = np.linalg.norm(pos - np.median(pos, axis=0), axis=1)  # median: robust to outriggers
    best = min(antenna_flags[a] for a in names)
    key = [(antenna_flags[a] > best + 0.05, d, a) for a, d in zip(names, dist)]
    key.sort()
    return [a for bad, _, a in key if antenna_flags[a] < 0.99][:n]


def solve_calibration(ms_path, calibrator=None, *, paths=None, registry=None, refant=None,
                      gain_solint: str = "inf", minsnr: float = 3.0, beam: str = "time",
                      validity_h: dict | None = None, plots: bool = True, uvrange: str = "",
                      sky=None, fill_from: dict | None = None, health=True, method: str | None = None) -> dict:
    """Solve bandpass (B) and complex gains (G) on a calibrator MS and register them.

    The MS is modified: autocorrelations and zeros are flagged (and unhealthy antennas, see
    ``health``); the CASA method also writes MODEL_DATA.

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
        Field sources to add to the model (see :func:`write_model`); those fainter in the tile
        than ``SKY_MIN_FRACTION`` (0.25 %) of the calibrator are left out
        (:func:`~dsacont.calibration.model.significant_sky`; ``metrics["model"]``
        ``n_sky_left_out``).
    fill_from : dict, optional
        ``{"B": [paths], "G": [paths]}``: earlier valid tables of the same declination strip, best
        first, to fill the SPWs this solve has no solutions for (a calibrator group that lacked
        subbands); SPWs no table has are written as flagged solutions
        (:func:`~dsacont.calibration.tables.complete_spws`). Either way, what was done is in
        ``metrics[kind]["spw_fill"]``.
    health : bool or AntennaHealth
        True (default): judge every receptor from the data first
        (:func:`~dsacont.calibration.health.antenna_health`), flag the dead and bad ones, and
        reference the solve to a healthy antenna only (a given ``refant`` that is not healthy
        raises :class:`BadInputError` before anything is solved). An ``AntennaHealth``: use it.
        False: skip. The verdicts are in ``metrics["health"]``.
    method : {'fast', 'casa'}, optional
        The solver (default ``DEFAULT_METHOD``, 'fast'): :mod:`~dsacont.calibration.fastsolve`
        or CASA's tasks. Both write the same kinds of tables and go through the same gates; a
        ``uvrange`` (a CASA selection) makes the solve use CASA. The per-step wall times are in
        ``metrics["timings_s"]`` (fast: ``read``, ``flag``, ``predict``, ``accumulate``,
        ``stefcal``, ``write``; CASA: ``flag``, ``model``, ``prephase``, ``bandpass``,
        ``gaincal``; both: ``health``, ``total``).

    Returns
    -------
    dict with ``tables`` ({'B': path, 'G': path}), ``ids`` (registry ids), ``refant``,
    ``calibrator``, ``metrics`` ({'B': {...}, 'G': {...}, 'flags': ..., 'model': ..., 'timings_s': ...}),
    ``plots`` (list of PNG paths), ``status`` ('valid' or 'rejected'), ``registry_entries`` (one dict
    per table, B then G: the ``register_begin`` arguments, ``depends_on`` as the kind it depends
    on, and the ``status``, ``reason`` and ``metrics`` it is, or with ``registry=False`` would be,
    marked with).
    """
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

    n_sky_given = len(sky or [])
    sky = significant_sky(info, cal, sky)
    if n_sky_given > len(sky):
        log.info("%s: %d of %d field sources are >= %.2g of %s in the tile: modelling those", ms, len(sky),
                 n_sky_given, SKY_MIN_FRACTION, cal.name)
    t = _time.perf_counter()
    ant_health = None
    if health is not False:
        ant_health = health if hasattr(health, "records") else antenna_health(ms)
        if refant:
            require_healthy(refant.split(","), ant_health)
        health_meta = {**ant_health.summary(), "flagged": flag_unhealthy(ms, ant_health),
                       "unhealthy": ant_health.unhealthy()}
    timings["health"] = _time.perf_counter() - t
    method = method or DEFAULT_METHOD
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, not {method!r}")
    if method == "fast" and uvrange:
        log.warning("%s: uvrange %r is a CASA selection: solving with CASA", ms, uvrange)
        method = "casa"
    refant_str = None
    if method == "casa":
        t = _time.perf_counter()
        flags = flag_for_calibration(ms)
        timings["flag"] = _time.perf_counter() - t
        t = _time.perf_counter()
        model_meta = write_model(ms, cal, sky=sky, beam=beam, info=info)
        timings["model"] = _time.perf_counter() - t
        refants = refant.split(",") if refant else choose_refant(info, flags["antenna"], health=ant_health)
        refant_str = ",".join(refants)
        log.info("%s: reference antenna(s) %s", ms, refant_str)
    else:
        t = _time.perf_counter()
        prep = prepare_model(info, cal, sky=sky, beam=beam)
        model_meta = prep.meta
        timings["model"] = _time.perf_counter() - t

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
                                           valid_before_h=validity_h.get("B"), valid_after_h=validity_h.get("B"),
                                           dec_deg=model_meta["pointing_dec_deg"])
        ids["G"] = registry.register_begin("G", cal.name, solve_mjd, final["G"], source_ms=ms, depends_on=ids["B"],
                                           valid_before_h=validity_h.get("G"), valid_after_h=validity_h.get("G"),
                                           dec_deg=model_meta["pointing_dec_deg"])
    tmp = {k: work / f"{stem}.{k}" for k in ("G0", "B", "G")}
    model_meta["n_sky_left_out"] = n_sky_given - len(sky)
    metrics = {"model": model_meta, "calibrator": cal.name, "ms": ms, "solve_mjd": solve_mjd, "method": method}
    if ant_health is not None:
        metrics["health"] = health_meta
    try:
        if method == "casa":
            _solve_casa(ms, tmp, refant_str, gain_solint, minsnr, uvrange, timings)
        else:
            flags, refant_str = _solve_fast(ms, info, prep, tmp, refant, ant_health, gain_solint, minsnr, timings)
        metrics["flags"] = {"total": flags["total"]}
        metrics["refant"] = refant_str
        present = [i for i, a in enumerate(info.antenna_names) if flags["antenna"].get(a, 1.0) < 1.0]
        metrics["n_antennas"] = len(present)
        metrics["B"] = caltable_metrics(tmp["B"], present)
        metrics["G"] = caltable_metrics(tmp["G"], present)
        for k in ("B", "G"):  # windows without solutions: filled from earlier tables, or flagged
            fill = metrics[k]["spw_fill"] = complete_spws(tmp[k], len(info.spw_freqs),
                                                          (fill_from or {}).get(k, ()))
            if fill["filled"] or fill["flagged"]:
                log.warning("%s: the %s solve has no solutions for SPW(s) %s: filled from %s; flagged: %s", ms, k,
                            sorted([*fill["filled"], *fill["flagged"]]),
                            sorted(set(fill["filled"].values())) or "no earlier table", fill["flagged"] or "none")
        gate_reasons, metrics["gates"] = table_gates(tmp["B"], tmp["G"], health=ant_health,
                                                     antenna_names=info.antenna_names)
    except Exception as exc:
        if registry:
            for k in ("B", "G"):
                registry.reject(ids[k], f"solve failed: {exc}")
        shutil.rmtree(work, ignore_errors=True)
        raise
    bad = {k: metrics[k]["flagged_fraction"] for k in ("B", "G") if metrics[k]["flagged_fraction"] > MAX_FLAGGED_SOLUTIONS}
    for k in ("B", "G"):
        move_into_place(tmp[k], final[k])
    shutil.rmtree(work, ignore_errors=True)
    timings["total"] = _time.perf_counter() - t_all
    metrics["timings_s"] = timings
    status = "valid"
    why = ", ".join(f"{k}: {100 * v:.0f} % of solutions flagged" for k, v in bad.items()) if bad else None
    if gate_reasons:  # the QA gates (calibration/gates.py): reference antenna, SNR, phase scatter
        why = "; ".join([why, *gate_reasons] if why else gate_reasons)
        bad = bad or {"gates": gate_reasons}
        log.warning("%s: calibration rejected: %s", ms, why)
    reg_metrics = {k: {**metrics[k], "refant": refant_str, "model": model_meta} if bad else
                   {**metrics[k], "refant": refant_str, "beam_mid_error": model_meta["beam_mid_error"],
                    "n_sky_sources": model_meta.get("n_sky_sources", 0),
                    "n_sky_left_out": model_meta.get("n_sky_left_out", 0), "timings_s": timings} for k in ("B", "G")}
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
    entries = [{"key": k, "kind": k, "calibrator": cal.name, "solve_mjd": solve_mjd, "path": str(final[k]),
                "source_ms": ms, "valid_before_h": validity_h.get(k), "valid_after_h": validity_h.get(k),
                "dec_deg": model_meta["pointing_dec_deg"], "origin": "transit",
                "depends_on": "B" if k == "G" else None, "status": "rejected" if bad else "valid",
                "reason": why, "metrics": reg_metrics[k]} for k in ("B", "G")]
    pngs = []
    if plots:
        try:
            pngs = [plot_bandpass(final["B"]), plot_gains(final["G"])]
        except Exception as exc:  # a plot must never lose a solve
            log.warning("calibration plots failed: %s", exc)
    log.info("%s: B %.1f %% / G %.1f %% flagged solutions; %s solve %.1f s in all",
             ms, 100 * metrics["B"]["flagged_fraction"], 100 * metrics["G"]["flagged_fraction"], method,
             timings["total"])
    return {"tables": {k: str(v) for k, v in final.items()}, "ids": ids, "refant": refant_str,
            "calibrator": cal.name, "metrics": metrics, "plots": [str(p) for p in pngs], "status": status,
            "registry_entries": entries}


def _solve_casa(ms, tmp, refant_str, gain_solint, minsnr, uvrange, timings) -> None:
    """CASA's G0 -> B -> G into ``tmp`` (MODEL_DATA written and flags set before)."""
    ct = casatasks()
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


def _solve_fast(ms, info, prep, tmp, refant, ant_health, gain_solint, minsnr, timings) -> tuple[dict, str]:
    """:mod:`~dsacont.calibration.fastsolve` into ``tmp``; returns (flag fractions, refant string)."""
    t = _time.perf_counter()
    sol = solve_spws(ms, info, prep, minsnr=minsnr, gain_solint=gain_solint)
    timings["solve"] = _time.perf_counter() - t
    timings.update({("predict" if k == "model" else k): v for k, v in sol.timings.items()})
    flags = {"total": sol.flag_fraction, "antenna": sol.flag_fraction_antenna}
    refants = refant.split(",") if refant else choose_refant(info, flags["antenna"], health=ant_health)
    refant_str = ",".join(refants)
    log.info("%s: reference antenna(s) %s", ms, refant_str)
    missing = [a for a in refants if a not in info.antenna_names]
    if missing:
        raise BadInputError(ms, f"reference antenna(s) {', '.join(missing)} not in the ANTENNA table")
    t = _time.perf_counter()
    refs = reference_and_normalise(sol, [info.antenna_names.index(a) for a in refants])
    write_tables(ms, info, sol, refs, tmp["B"], tmp["G"])
    timings["write"] = _time.perf_counter() - t
    return flags, refant_str


def _require_table(path, what):
    if not Path(path).is_dir():
        raise RuntimeError(f"CASA wrote no {what} table ({path}); see the CASA log")
