"""Applying calibration tables to a target group (CASA applycal), and checking the result.

:func:`apply_calibration` looks the tables up in the registry (or takes them as given), runs
applycal, and checks CORRECTED_DATA (:func:`check_corrected`); :func:`calibrated_flux_ratio`
measures how well the calibrated data reproduce a model.
"""
from __future__ import annotations

import logging
import time as _time
from pathlib import Path

import numpy as np

from dsacont.calibration.model import lmn, model_amplitudes, point_model
from dsacont.calibration.msinfo import MSInfo, read_ms_info
from dsacont.calibration.registry import Registry, to_mjd
from dsacont.calibration.tables import combined_spw, read_caltable
from dsacont.calibrators import get_calibrator
from dsacont.casa import casatasks
from dsacont.config import get_paths
from dsacont.errors import CalibrationUnavailable
from dsacont.io.ms import clear_state, iter_ddid, table

log = logging.getLogger(__name__)


def _spwmap(ms_info: MSInfo, caltable) -> tuple[list[int], list[int]]:
    """For each SPW of the MS, the caltable SPW to take solutions from; and the MS SPWs without any.

    The caltable SPW with the nearest centre frequency; all SPWs map to the combined one for a
    table solved with ``combine='spw'``. An MS SPW whose frequency the table does not cover
    (solved on a group that lacked that subband) is returned in the second list, mapped to the
    nearest SPW that has solutions: the caller flags its data.
    """
    comb = combined_spw(caltable)
    if comb is not None:
        return [comb] * len(ms_info.spw_freqs), []
    t = read_caltable(caltable)
    cal_centres = np.array([np.mean(f) for f in t["spw_freqs"]])
    have = np.unique(t["SPECTRAL_WINDOW_ID"])
    if have.size == 0:
        raise CalibrationUnavailable(f"{caltable}: the table has no solutions at all")
    out, unsolved = [], []
    for i, f in enumerate(ms_info.spw_freqs):
        cand = have[np.argsort(np.abs(cal_centres[have] - np.mean(f)))]
        best = int(cand[0])
        if abs(cal_centres[best] - np.mean(f)) > 0.5 * (f.max() - f.min() + abs(f[1] - f[0] if f.size > 1 else 0)):
            unsolved.append(i)
        out.append(best)
    return out, unsolved


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
    maps = [_spwmap(info, t) for t in tables]
    spwmaps = [m for m, _ in maps]
    unsolved = sorted({int(s) for _, u in maps for s in u})
    ct = casatasks()
    t0 = _time.perf_counter()
    if unsolved:
        # never block a group on a table with missing windows: flag those windows' data
        log.warning("%s: no solutions for SPW(s) %s in %s; flagging their data", ms, unsolved,
                    [Path(t).name for t, (_, u) in zip(tables, maps) if u])
        ct.flagdata(vis=ms, mode="manual", spw=",".join(str(s) for s in unsolved), flagbackup=False)
    ct.applycal(vis=ms, gaintable=tables, interp=interps, spwmap=spwmaps, calwt=[calwt] * len(tables),
                flagbackup=False, applymode="calflag")
    dt = _time.perf_counter() - t0
    clear_state(ms)  # CORRECTED_DATA is new: no bright-source flattening (dsacont.imaging.flatten) in it
    t1 = _time.perf_counter()
    check = check_corrected(ms, info)
    log.info("%s: applied %s in %.1f s (check %.1f s); %.1f %% flagged", ms, [Path(t).name for t in tables], dt,
             _time.perf_counter() - t1, 100 * check["flagged_fraction"])
    return {"ms": ms, "tables": tables, "ids": ids, "interp": interps, "spwmap": spwmaps,
            "spw_flagged_unsolved": unsolved, **check, "timings_s": {"applycal": dt, "check": _time.perf_counter() - t1}}


def _table_kind(path) -> str:
    with table(path) as tb:
        kw = tb.getkeywords()
    vis = str(kw.get("VisCal", ""))
    return vis[:1] if vis else Path(path).suffix.lstrip(".")[:1].upper()


def check_corrected(ms, info: MSInfo | None = None) -> dict:
    """Check CORRECTED_DATA exists and is finite wherever it is not flagged."""
    info = info or read_ms_info(ms)
    with table(ms) as tb:
        if "CORRECTED_DATA" not in tb.colnames():
            raise RuntimeError(f"{ms}: applycal wrote no CORRECTED_DATA column")
        nflag = ntot = nbad = 0
        for d, sub, s, n in iter_ddid(tb, range(len(info.ddid_spw))):
            c = sub.getcol("CORRECTED_DATA", s, n)
            f = sub.getcol("FLAG", s, n)
            nbad += int(np.count_nonzero(~np.isfinite(c) & ~f))
            nflag += int(f.sum())
            ntot += f.size
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
    info = info or read_ms_info(ms)
    cal_pred = None
    if calibrator is not None:
        cal = get_calibrator(calibrator) if isinstance(calibrator, str) else calibrator
        amps, _ = model_amplitudes(cal, info)
        lmn_f = np.array([lmn(np.radians(cal.ra_deg), np.radians(cal.dec_deg), r0, d0) for r0, d0 in info.field_dirs])
        cal_pred = (amps, lmn_f)
    per = {}
    with table(ms) as tb:
        for d, sub, s, n in iter_ddid(tb, range(len(info.ddid_spw))):
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
    ratios = {spw: complex(v[0] / v[1]) for spw, v in per.items() if v[1] > 0}
    tot = sum(per.values())
    r = complex(tot[0] / tot[1])
    return {"ratio": r, "amp_ratio": abs(r), "phase_deg": float(np.degrees(np.angle(r))),
            "ratio_spw": {k: abs(v) for k, v in ratios.items()},
            "max_spw_error": float(max(abs(abs(v) - 1) for v in ratios.values()))}
