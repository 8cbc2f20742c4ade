"""Applying calibration tables to a target group, and checking the result.

:func:`apply_calibration` looks the tables up in the registry (or takes them as given), applies
them with CASA applycal (``engine="casa"``) or with dsacont's own numba apply
(``engine="dsacont"``: the same interpolation, :mod:`dsacont.calibration.apply_kernels`), and
checks CORRECTED_DATA (:func:`check_corrected`); :func:`calibrated_flux_ratio` measures how well
the calibrated data reproduce a model.
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
from dsacont.io.ms import (
    clear_state,
    ddid_runs,
    ensure_column,
    get_runs,
    iter_ddid,
    put_runs,
    run_rows,
    table,
    tile_file,
)
from dsacont.io.ms_build import TileFiles

from .apply_kernels import apply_jones, fill_flagged_channels, interp_gains_linear

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


ENGINES = ("casa", "dsacont")
# the engine apply_calibration uses unless told: dsacont's, 7.8 s against applycal's 11.2 s plus
# a 1.8 s check on a full-size group, the same FLAG and CORRECTED_DATA to 2e-5 (benchmarks/apply.py,
# benchmarks/README.md); CASA applycal for tables it does not handle, and on request
DEFAULT_ENGINE = "dsacont"


def apply_calibration(ms, tables=None, registry=None, time=None, *, interp: str = "linear", paths=None,
                      calwt: bool = False, engine: str | None = None) -> dict:
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
    engine : {'casa', 'dsacont'}, optional
        Default :data:`DEFAULT_ENGINE`. 'casa': CASA applycal. 'dsacont': the numba apply of
        :mod:`dsacont.calibration.apply_kernels` (G linear in amplitude and phase in time, B
        nearest in time, the same SPW map, ``applymode='calflag'``), reading DATA and writing
        CORRECTED_DATA and FLAG through :func:`dsacont.io.ms.table`; it handles B and G tables
        with ``calwt=False`` and falls back to applycal (with a log line) for anything else.

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
    kinds = [_table_kind(t) for t in tables]
    interps = ["nearest" if k == "B" else interp for k in kinds]
    maps = [_spwmap(info, t) for t in tables]
    spwmaps = [m for m, _ in maps]
    unsolved = sorted({int(s) for _, u in maps for s in u})
    engine = DEFAULT_ENGINE if engine is None else engine
    if engine not in ENGINES:
        raise ValueError(f"apply engine {engine!r} for {ms}: expected one of {ENGINES}")
    if engine == "dsacont" and (calwt or any(k not in ("B", "G") for k in kinds)):
        log.warning("%s: dsacont's apply handles B and G tables without calwt (got %s, calwt=%s); using applycal",
                    ms, kinds, calwt)
        engine = "casa"
    if unsolved:
        # never block a group on a table with missing windows: flag those windows' data
        log.warning("%s: no solutions for SPW(s) %s in %s; flagging their data", ms, unsolved,
                    [Path(t).name for t, (_, u) in zip(tables, maps) if u])
    t0 = _time.perf_counter()
    check = None
    if engine == "dsacont":
        check = _apply_own(ms, info, tables, interps, spwmaps, unsolved)
    else:
        ct = casatasks()
        if unsolved:
            ct.flagdata(vis=ms, mode="manual", spw=",".join(str(s) for s in unsolved), flagbackup=False)
        ct.applycal(vis=ms, gaintable=tables, interp=interps, spwmap=spwmaps, calwt=[calwt] * len(tables),
                    flagbackup=False, applymode="calflag")
    dt = _time.perf_counter() - t0
    clear_state(ms)  # CORRECTED_DATA is new: no bright-source flattening (dsacont.imaging.flatten) in it
    t1 = _time.perf_counter()
    check = check or check_corrected(ms, info)
    log.info("%s: applied %s in %.1f s (check %.1f s); %.1f %% flagged", ms, [Path(t).name for t in tables], dt,
             _time.perf_counter() - t1, 100 * check["flagged_fraction"])
    return {"ms": ms, "tables": tables, "ids": ids, "interp": interps, "spwmap": spwmaps, "engine": engine,
            "spw_flagged_unsolved": unsolved, **check, "timings_s": {"applycal": dt, "check": _time.perf_counter() - t1}}


# receptors (0 = X/R, 1 = Y/L) of each correlation, by Stokes code (CORR_TYPE)
_CORR_RECEPTORS = {5: (0, 0), 6: (0, 1), 7: (1, 0), 8: (1, 1), 9: (0, 0), 10: (0, 1), 11: (1, 0), 12: (1, 1)}


def _table_term(t: dict, cal_spw: int, interp: str, times, freqs, nant: int):
    """One table's term for one MS SPW: (Nt, Na, Nf, 2) complex128 and its flags.

    ``t``: :func:`read_caltable`; ``cal_spw``: the table SPW the MS SPW maps to; ``interp``:
    'linear' (amplitude and phase linear in time, held outside the solutions) or 'nearest'
    (the solution nearest in time); each MS channel takes the table channel nearest in frequency
    (the same channel when the SPWs match; one channel for a G table), flagged channels bridged
    as applycal's linear frequency interpolation does (:func:`fill_flagged_channels`). Antennas
    or SPWs without a row are flagged.
    """
    nt, nf = len(times), len(freqs)
    rows = np.nonzero(np.asarray(t["SPECTRAL_WINDOW_ID"]) == cal_spw)[0]
    term = np.ones((nt, nant, nf, 2), dtype=np.complex128)
    tflag = np.ones((nt, nant, nf, 2), dtype=bool)
    if rows.size == 0:
        return term, tflag
    cp = np.asarray(t["CPARAM"])[:, :, rows]  # (npol, nchan_tab, nrow)
    cf = np.asarray(t["FLAG"])[:, :, rows]
    npol, nct = cp.shape[0], cp.shape[1]
    rt = np.asarray(t["TIME"])[rows]
    ants = np.asarray(t["ANTENNA1"])[rows]
    ut = np.unique(rt)
    sol = np.ones((len(ut), nant, 2, nct), dtype=np.complex128)
    sflag = np.ones((len(ut), nant, 2, nct), dtype=bool)
    si = np.searchsorted(ut, rt)
    keep = ants < nant
    for r in range(2):
        p = min(r, npol - 1)  # a one-receptor table applies to both
        sol[si[keep], ants[keep], r, :] = cp[p][:, keep].T
        sflag[si[keep], ants[keep], r, :] = cf[p][:, keep].T
    tab_freqs = np.asarray(t["spw_freqs"][cal_spw]).ravel() if cal_spw < len(t["spw_freqs"]) else np.zeros(nct)
    if nct == 1 or tab_freqs.size != nct:
        cmap = np.zeros(nf, dtype=int)
    else:
        cmap = np.abs(tab_freqs[None, :] - np.asarray(freqs)[:, None]).argmin(axis=1)
        # applycal interpolates channelised solutions linearly in frequency: flagged channels
        # are bridged, not flagged
        sol, sflag = fill_flagged_channels(tab_freqs.astype(np.float64), sol, sflag)
    if interp.startswith("linear"):
        per_chan = [interp_gains_linear(ut, np.ascontiguousarray(sol[..., c]), np.ascontiguousarray(sflag[..., c]),
                                        np.asarray(times, dtype=np.float64)) for c in range(nct)]
        g = np.stack([pc[0] for pc in per_chan], axis=-1)  # (nt, nant, 2, nct)
        gf = np.stack([pc[1] for pc in per_chan], axis=-1)
    else:
        ti = np.abs(np.asarray(times)[:, None] - ut[None, :]).argmin(axis=1)
        g, gf = sol[ti], sflag[ti]
    term = np.ascontiguousarray(np.moveaxis(g[..., cmap], -1, 2))  # (nt, nant, nf, 2)
    tflag = np.ascontiguousarray(np.moveaxis(gf[..., cmap], -1, 2))
    return term, tflag


class Corrector:
    """Calibration tables applied in memory: ``DATA / (J_i conj(J_j))`` and the solutions' flags.

    J is the product of every table's term (:func:`_table_term`) per MS SPW, built once per SPW
    (the last one kept); the SPWs the tables do not cover are flagged whole. What dsacont's apply
    writes to CORRECTED_DATA (:func:`_apply_own`) and what the fast field solve sums without
    writing (:func:`dsacont.calibration.fastsolve.field_sums`).

    Parameters
    ----------
    info : MSInfo of the MS
    tables : caltable paths in apply order
    interps, spwmaps, unsolved : as :func:`apply_calibration` resolves them; None: 'nearest' for
        B tables and ``interp`` for the others, the nearest-frequency SPW map
    """

    def __init__(self, info: MSInfo, tables, *, interp: str = "linear", interps=None, spwmaps=None, unsolved=None):
        tables = [str(t) for t in tables]
        if interps is None:
            interps = ["nearest" if _table_kind(t) == "B" else interp for t in tables]
        if spwmaps is None or unsolved is None:
            maps = [_spwmap(info, t) for t in tables]
            spwmaps = [m for m, _ in maps]
            unsolved = sorted({int(s) for _, u in maps for s in u})
        self.info, self.interps, self.spwmaps, self.unsolved = info, interps, spwmaps, set(unsolved)
        self.cal = [read_caltable(t) for t in tables]
        self._cache: dict = {}

    def jones(self, spw: int):
        """(Nt, Na, Nf, 2) complex128 Jones of ``spw`` and its flags."""
        if spw not in self._cache:
            info = self.info
            times = np.asarray(info.times_s, dtype=np.float64)
            nant = len(info.antenna_names)
            freqs = info.spw_freqs[spw]
            jones = np.ones((len(times), nant, len(freqs), 2), dtype=np.complex128)
            jflag = np.zeros(jones.shape, dtype=bool)
            for t, how, smap in zip(self.cal, self.interps, self.spwmaps):
                term, tf = _table_term(t, int(smap[spw]), how, times, freqs, nant)
                jones *= term
                jflag |= tf
            if spw in self.unsolved:
                jflag[:] = True
            self._cache.clear()  # one SPW at a time (ddids of one SPW come together)
            self._cache[spw] = (jones, jflag)
        return self._cache[spw]

    def time_index(self, row_times) -> np.ndarray:
        """Index into ``info.times_s`` of the integration nearest each row's TIME."""
        times = np.asarray(self.info.times_s, dtype=np.float64)
        tt = np.asarray(row_times, dtype=np.float64)
        tidx = np.clip(np.searchsorted(times, tt), 0, len(times) - 1)
        prev = np.clip(tidx - 1, 0, len(times) - 1)
        return np.where(np.abs(times[prev] - tt) < np.abs(times[tidx] - tt), prev, tidx).astype(np.int64)

    def __call__(self, ddid: int, data, flag, tidx, ant1, ant2):
        """Correct the rows of one DATA_DESCRIPTION: data and flag (ncorr, nchan, nrow), tidx
        (:meth:`time_index`), antennas (nrow,). Returns (corrected complex64, flags), new arrays."""
        spw = int(self.info.ddid_spw[ddid])
        jones, jflag = self.jones(spw)
        codes = np.asarray(self.info.corr_types[int(self.info.ddid_pol[ddid])]).ravel()
        corr_rec = np.array([_CORR_RECEPTORS.get(int(c), (0, 0)) for c in codes], dtype=np.int64)
        return apply_jones(data, flag, np.asarray(tidx, dtype=np.int64), np.asarray(ant1, dtype=np.int64),
                           np.asarray(ant2, dtype=np.int64), corr_rec, jones, jflag)


def _apply_own(ms, info: MSInfo, tables, interps, spwmaps, unsolved) -> dict:
    """dsacont's apply: CORRECTED_DATA = DATA / (J_i conj(J_j)), FLAG |= the solutions' flags
    (:class:`Corrector`), one DATA_DESCRIPTION at a time, its rows read and written as contiguous
    runs (:func:`dsacont.io.ms.ddid_runs`). The check of :func:`check_corrected` is made on the
    way (the corrected data are in memory), so nothing is read twice; returns its dict.

    CORRECTED_DATA is written straight into its tiles (:meth:`dsacont.io.ms_build.TileFiles.of_column`)
    when its layout allows (the column :func:`dsacont.io.ms.ensure_column` adds: casacore
    allocates every tile when it adds it), the table open read-only meanwhile; FLAG, when a
    solution flagged data, through casatools afterwards. Otherwise both through casatools.
    """
    ensure_column(ms, "CORRECTED_DATA")
    correct = Corrector(info, tables, interps=interps, spwmaps=spwmaps, unsolved=unsolved)
    new_flags = []

    def written(tb, tiles):  # (CORRECTED_DATA, FLAG) of each DATA_DESCRIPTION, as written
        runs_of = ddid_runs(tb)
        cols = {c: np.asarray(tb.getcol(c)) for c in ("TIME", "ANTENNA1", "ANTENNA2")}
        for d in range(len(info.ddid_spw)):
            runs = runs_of.get(d)
            if not runs:
                continue
            rows = run_rows(runs)
            flag_in = get_runs(tb, "FLAG", runs, _cell_shape(info, d), bool)
            corrected, flags = correct(d, get_runs(tb, "DATA", runs, _cell_shape(info, d), np.complex64), flag_in,
                                       correct.time_index(cols["TIME"][rows]), cols["ANTENNA1"][rows],
                                       cols["ANTENNA2"][rows])
            changed = not np.array_equal(flags, flag_in)  # FLAG is rewritten only where a solution flagged data
            if tiles is None:
                put_runs(tb, "CORRECTED_DATA", corrected, runs)
                if changed:
                    put_runs(tb, "FLAG", flags, runs)
            else:
                off = 0
                for a, n in runs:
                    tiles.write(a, CORRECTED_DATA=corrected[..., off:off + n].T)
                    off += n
                if changed:
                    new_flags.append((flags, runs))
            yield corrected, flags

    with table(ms) as tb:
        tf = tile_file(tb, "CORRECTED_DATA")
        tiles = TileFiles.of_column(tf, "CORRECTED_DATA") \
            if tf is not None and np.dtype(tf["dtype"]) == np.complex64 else None
        if tiles is not None:
            try:
                tally = _tally_corrected(ms, written(tb, tiles))
            finally:
                tiles.close()
    if tiles is None:
        with table(ms, readonly=False) as tb:
            return _tally_corrected(ms, written(tb, None))
    if new_flags:
        with table(ms, readonly=False) as tb:
            for flags, runs in new_flags:
                put_runs(tb, "FLAG", flags, runs)
    return tally


def _cell_shape(info: MSInfo, ddid: int) -> tuple[int, int]:
    """(ncorr, nchan) of a DATA_DESCRIPTION's cells."""
    return len(info.corr_types[int(info.ddid_pol[ddid])]), len(info.spw_freqs[int(info.ddid_spw[ddid])])


def _tally_corrected(ms, chunks) -> dict:
    """:func:`check_corrected`'s verdict on ``(corrected, flags)`` chunks: raises if any unflagged
    value is not finite; else the flagged fraction and the number of samples checked."""
    nflag = ntot = nbad = 0
    for c, f in chunks:
        nbad += int(np.count_nonzero(~np.isfinite(c) & ~f))
        nflag += int(f.sum())
        ntot += f.size
    if nbad:
        raise RuntimeError(f"{ms}: CORRECTED_DATA has {nbad} non-finite unflagged values")
    return {"flagged_fraction": nflag / max(ntot, 1), "n_checked": ntot}


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
        return _tally_corrected(ms, ((get_runs(tb, "CORRECTED_DATA", runs, _cell_shape(info, d), np.complex64),
                                      get_runs(tb, "FLAG", runs, _cell_shape(info, d), bool))
                                     for d, runs in ddid_runs(tb).items()))


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
