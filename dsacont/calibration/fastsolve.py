"""The fast bandpass (B), gain (G) and field gain solves: one pass over the data, our own solver, CASA tables.

What :func:`~dsacont.calibration.solve.solve_calibration` runs with ``method="fast"`` (the
default): the same three solves as its CASA path (G0: phase per integration; B: per channel,
``solint inf``, referenced and ``solnorm``-ed as CASA does; G: amplitude and phase per SPW with B
applied), on the same data and model, written as real CASA calibration tables
(``calibrater.createcaltable`` + the table tool) that ``applycal``, the registry and the gates
read as they read CASA's own.

Per SPW, DATA, FLAG and WEIGHT are read once (one ``DATA_DESC_ID`` at a time) and the model
(the calibrator and any field sources through the drifting primary beam,
:mod:`~dsacont.calibration.model`) is predicted in memory, never written to MODEL_DATA. The data
then enter the solves only as weighted sums of ``V conj(M)``, ``|M|^2`` and ``|V|^2`` per antenna
pair (:mod:`~dsacont.calibration.solve_kernels`): the model-divided data averaged over time (B)
or over channels (G0, G), which is what phasing the calibrator group to the calibrator and
averaging it would give, with the time-dependent beam honoured row by row. Each average is
solved with weighted StEFCal (Salvini & Wijnholds 2014), the least-squares solution of
``V_ij = g_i conj(g_j) M_ij``, the same problem CASA's solver minimises.

Flags as CASA's path sets them: autocorrelations and exact zeros are flagged in FLAG (what
``flagdata`` autocorr + clipzeros did), antennas with fewer than ``MIN_BASELINES_PER_ANTENNA``
partners are not solved (CASA ``minblperant``), solutions below ``minsnr`` are flagged, and
data whose G0 or B solution is flagged take no part in the next solve. SNR (``|g| / PARAMERR``)
and PARAMERR are computed as CASA's solver computes them, from the chi-squared of the averaged
visibilities, so ``minsnr`` and the SNR gate mean the same with either solver.

The field gain correction (:func:`dsacont.calibration.field.solve_field_gains`' default method)
is solved the same way: :func:`field_sums` reads DATA once per SPW, applies the calibrator pair
in memory (:class:`~dsacont.calibration.apply.Corrector`), predicts the field model (its brightest
source and the rest apart) and sums per baseline; :func:`solve_field` is one StEFCal on those sums
(one gain per antenna and polarisation for the group), :meth:`FieldSums.ratios` the QA's model flux
ratios, and :func:`write_field_table` writes it as CASA writes a ``combine='spw'`` table.

Step by step::

    prep = prepare_model(ms, info, cal, sky=sky, beam=beam)     # lmn, flux x beam, metadata
    sol = solve_spws(ms, info, prep, minsnr=3, gain_solint="inf")   # read, flag, solve each SPW
    refants = ...                                               # from sol.flag_fraction_antenna
    write_tables(ms, info, sol, refants, b_path, g_path)        # reference, normalise, write
"""
from __future__ import annotations

import logging
import re
import time as _time
from dataclasses import dataclass, field

import numpy as np

from dsacont.calibration.model import lmn, model_amplitudes, pointing_dec, source_model, source_shape
from dsacont.calibration.msinfo import MSInfo
from dsacont.calibration.solve_kernels import _flag_autocorr_and_zeros, _stefcal, _sum_over_channels, _sum_over_time
from dsacont.casa import ensure_casa
from dsacont.errors import BadInputError
from dsacont.io.ms import ddid_runs, get_runs, put_runs, run_rows, table

log = logging.getLogger(__name__)

#: CASA's ``minblperant``: an antenna with fewer unflagged partners is not solved
MIN_BASELINES_PER_ANTENNA = 4
#: StEFCal: at most this many iterations, stopping at this relative change of the gains
MAX_ITER = 200
TOLERANCE = 1e-10


@dataclass
class ModelPrep:
    """The sky model of a solve, ready to predict any SPW: see :func:`prepare_model`.

    lmn_sf : (nsrc, nfield, 3) direction cosines of each source for each field's phase centre
    amps : list over SPWs of (nsrc, ntime, nchan) flux x primary beam, Jy
    meta : what :func:`~dsacont.calibration.model.write_model` returns for the same model
    shapes : per source None (point) or its Gaussian (major, minor, pa) in radians
    """

    lmn_sf: np.ndarray
    amps: list
    meta: dict
    shapes: list | None = None


def prepare_model(info: MSInfo, cal, *, sky=None, beam: str = "time") -> ModelPrep:
    """The calibrator (and ``sky`` sources) as :func:`~dsacont.calibration.model.write_model`
    models them (same fluxes, spectral indices, drifting beam, positions), without writing it.

    Parameters
    ----------
    info : MSInfo of the calibrator MS
    cal : Calibrator
    sky : list of SkySource, optional (field sources; one named like the calibrator is skipped)
    beam : {'time', 'mid', 'none'}
    """
    sources = [cal] + [s for s in (sky or []) if getattr(s, "name", None) != cal.name]
    prep = prepare_sky(info, sources, beam=beam)
    prep.meta = {"calibrator": cal.name, "flux_jy": float(cal.flux_jy), "spectral_index": float(cal.spectral_index),
                 "ra_deg": cal.ra_deg, "dec_deg": cal.dec_deg, "n_sky_sources": len(sources) - 1, **prep.meta,
                 "model_data_written": False}
    return prep


def prepare_sky(info: MSInfo, sources, *, beam: str = "time") -> ModelPrep:
    """Any list of sources (calibrators or :class:`~dsacont.calibration.skymodel.SkySource`) as
    :func:`~dsacont.calibration.model.write_model` models them, ready to predict; ``meta`` is the
    first source's beam description."""
    dec_p = pointing_dec(info)
    per_src = [model_amplitudes(s, info, beam=beam, pointing_dec_rad=dec_p) for s in sources]
    lmn_sf = np.array([[lmn(np.radians(s.ra_deg), np.radians(s.dec_deg), r0, d0) for r0, d0 in info.field_dirs]
                       for s in sources])
    amps = [np.stack([a[spw] for a, _ in per_src]) for spw in range(len(info.spw_freqs))]
    return ModelPrep(lmn_sf=lmn_sf, amps=amps, meta=dict(per_src[0][1]), shapes=[source_shape(s) for s in sources])


def solint_bins(times_s: np.ndarray, solint: str) -> np.ndarray:
    """Solution-interval index of each integration for a CASA-style ``solint``.

    'inf': one interval; 'int': one per integration; '<x>s', '<x>min', '<x>h' or a bare number
    of seconds: consecutive intervals of that length from the first integration. Returns
    (ntime,) int, 0-based and contiguous.
    """
    t = np.asarray(times_s, dtype=float)
    s = str(solint).strip().lower()
    if s == "inf":
        return np.zeros(t.size, dtype=int)
    if s == "int":
        return np.arange(t.size)
    m = re.fullmatch(r"([0-9.]+)\s*(s|sec|min|m|h)?", s)
    if not m:
        raise ValueError(f"solint {solint!r}: expected 'inf', 'int' or a time such as '60s' or '2min'")
    length = float(m.group(1)) * {None: 1.0, "s": 1.0, "sec": 1.0, "min": 60.0, "m": 60.0, "h": 3600.0}[m.group(2)]
    if length <= 0:
        raise ValueError(f"solint {solint!r} must be positive")
    raw = np.floor((t - t[0]) / length + 1e-9).astype(int)
    return np.unique(raw, return_inverse=True)[1]


@dataclass
class Solutions:
    """Unreferenced, unnormalised solutions of every SPW (what :func:`solve_spws` returns).

    Arrays are indexed by MS antenna id (all ANTENNA rows; absent antennas unsolved).

    b : (nspw, nchan, npol, nant) complex128;  b_err (float64), b_ok (bool) same shape
    g : (nspw, nbin, npol, nant) complex128;   g_err, g_ok same shape
    g_times : (nbin,) mean TIME of each gain interval, s; b_time : mean TIME, s
    flag_fraction_antenna : {antenna name: fraction of its correlations flagged}
    flag_fraction : fraction of all correlations flagged (after autocorrelations and zeros)
    field_id, scan : written to the tables' FIELD_ID and SCAN_NUMBER
    timings : seconds per step (read, flag, model, solve, summed over SPWs)
    """

    b: np.ndarray
    b_err: np.ndarray
    b_ok: np.ndarray
    g: np.ndarray
    g_err: np.ndarray
    g_ok: np.ndarray
    g_times: np.ndarray
    b_time: float
    flag_fraction_antenna: dict
    flag_fraction: float
    field_id: int = 0
    scan: int = 1
    timings: dict = field(default_factory=dict)
    new_flags: int = 0


def _majority(values, default: int) -> int:
    u, c = np.unique(np.asarray(values), return_counts=True)
    return int(u[np.argmax(c)]) if u.size else default


def _snr(g, err, ok):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(ok & (err > 0), np.abs(g) / np.where(err > 0, err, 1.0), 0.0)


@dataclass
class SpwChunk:
    """One DATA_DESCRIPTION (SPW) of an MS read whole (what :func:`_spw_chunks` yields).

    data, flag : (npol, nchan, nrow) complex64 / bool, Fortran order (the column as stored)
    a1, a2, tidx, fidx : (nrow,) int64 antennas, index into ``info.times_s``, field index
    weight : (npol, nrow) float32; uvw : (nrow, 3) m
    runs : [(first row, count)] of the SPW's contiguous row runs in the table
    field_id, scan : the majority FIELD_ID and SCAN_NUMBER of the whole MS
    """

    spw: int
    ddid: int
    data: np.ndarray
    flag: np.ndarray
    a1: np.ndarray
    a2: np.ndarray
    weight: np.ndarray
    uvw: np.ndarray
    tidx: np.ndarray
    fidx: np.ndarray
    runs: list
    field_id: int
    scan: int


def _spw_chunks(tb, ms, info: MSInfo, column: str, tm: dict):
    """Yield each SPW of the open main table ``tb`` as a :class:`SpwChunk` of ``column``.

    The small columns are read whole; ``column`` and FLAG by contiguous runs of one
    DATA_DESC_ID (:func:`dsacont.io.ms.ddid_runs`). Reading time is added to ``tm["read"]``.
    """
    nchan_max = max(len(f) for f in info.spw_freqs)
    npol = len(info.corr_types[0])
    ntime = len(info.times_s)
    if "WEIGHT_SPECTRUM" in tb.colnames():
        log.warning("%s: WEIGHT_SPECTRUM present; the fast solve uses WEIGHT (one weight per row)", ms)
    t0 = _time.perf_counter()
    runs_of = ddid_runs(tb)
    cols = {c: np.asarray(tb.getcol(c)) for c in ("ANTENNA1", "ANTENNA2", "TIME", "FIELD_ID", "SCAN_NUMBER")}
    weight_all = np.asarray(tb.getcol("WEIGHT"), dtype=np.float32)
    uvw_all = np.asarray(tb.getcol("UVW"))
    tm["read"] = tm.get("read", 0.0) + _time.perf_counter() - t0
    field_id = _majority(cols["FIELD_ID"], 0)
    scan = _majority(cols["SCAN_NUMBER"], 1)
    if np.unique(cols["FIELD_ID"]).size > 1:
        log.warning("%s: %d fields; the fast solve's solutions are labelled FIELD_ID %d", ms,
                    np.unique(cols["FIELD_ID"]).size, field_id)
    for d in range(len(info.ddid_spw)):
        runs = runs_of.get(d)
        if not runs:
            continue
        t0 = _time.perf_counter()
        rows = run_rows(runs)
        data = get_runs(tb, column, runs, (npol, nchan_max), np.complex64)
        flag = get_runs(tb, "FLAG", runs, (npol, nchan_max), bool)
        chunk = SpwChunk(spw=int(info.ddid_spw[d]), ddid=d, data=data, flag=flag,
                         a1=cols["ANTENNA1"][rows].astype(np.int64), a2=cols["ANTENNA2"][rows].astype(np.int64),
                         weight=np.ascontiguousarray(weight_all[:, rows]), uvw=np.ascontiguousarray(uvw_all[:, rows].T),
                         tidx=np.clip(np.searchsorted(info.times_s, cols["TIME"][rows]), 0, ntime - 1),
                         fidx=cols["FIELD_ID"][rows].astype(np.int64), runs=runs, field_id=field_id, scan=scan)
        tm["read"] += _time.perf_counter() - t0
        yield chunk
        del data, flag, chunk  # one SPW in memory at a time


def solve_spws(ms, info: MSInfo, prep: ModelPrep, *, minsnr: float = 3.0, gain_solint: str = "inf",
               min_bl: int = MIN_BASELINES_PER_ANTENNA, write_flags: bool = True) -> Solutions:
    """Read each SPW once, flag autocorrelations and zeros, and solve G0, B and G on it.

    Parameters
    ----------
    ms : path of the calibrator MS (FLAG is updated when ``write_flags``)
    info : its MSInfo
    prep : :func:`prepare_model`
    minsnr : solutions below this SNR are flagged (G0, B and G alike, as CASA's ``minsnr``)
    gain_solint : the G solution interval (:func:`solint_bins`)
    min_bl : minimum partners per antenna (CASA ``minblperant``)
    write_flags : write the autocorrelation/zero flags into FLAG (as ``flagdata`` did)

    Returns
    -------
    Solutions
    """
    ms = str(ms)
    nant = len(info.antenna_names)
    nspw = len(info.spw_freqs)
    ntime = len(info.times_s)
    nchan_max = max(len(f) for f in info.spw_freqs)
    if len({len(f) for f in info.spw_freqs}) != 1:
        raise BadInputError(ms, "the fast solve needs the same number of channels in every SPW")
    npol = len(info.corr_types[0])
    bins = solint_bins(info.times_s, gain_solint)
    nbin = int(bins.max()) + 1
    g_times = np.array([info.times_s[bins == b].mean() for b in range(nbin)])
    shape_b = (nspw, nchan_max, npol, nant)
    shape_g = (nspw, nbin, npol, nant)
    out = Solutions(b=np.ones(shape_b, complex), b_err=np.zeros(shape_b), b_ok=np.zeros(shape_b, bool),
                    g=np.ones(shape_g, complex), g_err=np.zeros(shape_g), g_ok=np.zeros(shape_g, bool),
                    g_times=g_times, b_time=float(info.times_s.mean()), flag_fraction_antenna={},
                    flag_fraction=0.0)
    tm = {"read": 0.0, "flag": 0.0, "model": 0.0, "accumulate": 0.0, "stefcal": 0.0}
    flagged_ant = np.zeros(nant)
    total_ant = np.zeros(nant)
    n_flagged = n_cells = 0.0
    with table(ms, readonly=not write_flags) as tb:
        for chunk in _spw_chunks(tb, ms, info, "DATA", tm):
            spw, data, flag, a1, a2 = chunk.spw, chunk.data, chunk.flag, chunk.a1, chunk.a2
            out.field_id, out.scan = chunk.field_id, chunk.scan
            t0 = _time.perf_counter()
            n_new = int(_flag_autocorr_and_zeros(data, flag, a1, a2))
            out.new_flags += n_new
            if n_new and write_flags:
                put_runs(tb, "FLAG", flag, chunk.runs)
            per_row = flag.sum(axis=(0, 1)).astype(float)
            cells = float(flag.shape[0] * flag.shape[1])
            n_flagged += per_row.sum()
            n_cells += cells * per_row.size
            flagged_ant += np.bincount(a1, per_row, nant)
            total_ant += np.bincount(a1, minlength=nant) * cells
            cross = a1 != a2
            flagged_ant += np.bincount(a2[cross], per_row[cross], nant)
            total_ant += np.bincount(a2[cross], minlength=nant) * cells
            tm["flag"] += _time.perf_counter() - t0
            t0 = _time.perf_counter()
            model = source_model(chunk.uvw, info.spw_freqs[spw], chunk.tidx, chunk.fidx, prep.lmn_sf, prep.amps[spw],
                                 prep.shapes, npol=npol)
            tm["model"] += _time.perf_counter() - t0
            _solve_one_spw(out, spw, data, model, flag, chunk.weight, a1, a2, chunk.tidx, bins[chunk.tidx], nbin,
                           ntime, nant, minsnr, min_bl, tm)
            del data, model, flag, chunk
    out.flag_fraction_antenna = {info.antenna_names[a]: float(flagged_ant[a] / total_ant[a])
                                 for a in range(nant) if total_ant[a] > 0}
    out.flag_fraction = float(n_flagged / max(n_cells, 1.0))
    out.timings = tm
    return out


def _solve_one_spw(out: Solutions, spw, data, model, flag, weight, a1, a2, tidx, bidx, nbin, ntime, nant,
                   minsnr, min_bl, tm):
    """G0 (phase per integration) -> B (per channel, G0 applied) -> G (per interval, B applied)."""
    npol, nchan, _ = data.shape
    code = a1 * nant + a2
    cross = a1 != a2
    pairs, inv = np.unique(code[cross], return_inverse=True)
    blidx = np.full(a1.size, -1, dtype=np.int64)
    blidx[cross] = inv
    nbl = pairs.size
    bl_a1, bl_a2 = (pairs // nant).astype(np.int64), (pairs % nant).astype(np.int64)

    def stefcal(A, C):  # (..., nbl) -> solutions (nsol, nant)
        t0 = _time.perf_counter()
        g, e, ok, _ = _stefcal(np.ascontiguousarray(A.reshape(-1, nbl)), np.ascontiguousarray(C.reshape(-1, nbl)),
                               bl_a1, bl_a2, nant, min_bl, MAX_ITER, TOLERANCE)
        tm["stefcal"] += _time.perf_counter() - t0
        return g, e, ok & (_snr(g, e, ok) >= minsnr)

    t0 = _time.perf_counter()
    ones_h = np.ones((nchan, nant, npol), dtype=np.complex128)
    A, C = _sum_over_channels(data, model, flag, weight, blidx, tidx, ntime, a1, a2, ones_h, nbl)  # (ntime, nbl, npol)
    tm["accumulate"] += _time.perf_counter() - t0
    g0, _, ok0 = stefcal(A.transpose(0, 2, 1), C.transpose(0, 2, 1))  # (ntime * npol, nant)
    # phase-only: unit phasors; unsolved -> 0, which leaves those data out of the B sums
    k = np.where(ok0, g0 / np.where(ok0, np.abs(g0), 1.0), 0.0).reshape(ntime, npol, nant).transpose(0, 2, 1)
    t0 = _time.perf_counter()
    A, C = _sum_over_time(data, model, flag, weight, blidx, tidx, a1, a2, np.ascontiguousarray(k), nbl)
    tm["accumulate"] += _time.perf_counter() - t0
    b, eb, okb = stefcal(A.transpose(1, 2, 0), C.transpose(1, 2, 0))  # (nchan * npol, nant)
    b = b.reshape(nchan, npol, nant)
    okb = okb.reshape(nchan, npol, nant)
    out.b[spw, :nchan] = np.where(okb, b, 1.0)
    out.b_err[spw, :nchan] = eb.reshape(nchan, npol, nant)
    out.b_ok[spw, :nchan] = okb
    # G with B applied (a flagged B channel flags those data), per solution interval
    h = np.ascontiguousarray(np.where(okb, b, 0.0).transpose(0, 2, 1))  # (nchan, nant, npol)
    t0 = _time.perf_counter()
    A, C = _sum_over_channels(data, model, flag, weight, blidx, bidx, nbin, a1, a2, h, nbl)
    tm["accumulate"] += _time.perf_counter() - t0
    g, eg, okg = stefcal(A.transpose(0, 2, 1), C.transpose(0, 2, 1))  # (nbin * npol, nant)
    out.g[spw] = np.where(okg, g, 1.0).reshape(nbin, npol, nant)
    out.g_err[spw] = eg.reshape(nbin, npol, nant)
    out.g_ok[spw] = okg.reshape(nbin, npol, nant)


def _reference_phases(x, ok, refs) -> int:
    """Rotate the solutions ``x`` (nslot, npol, nant), in place, so that in each slot (channel or
    time) and polarisation the first of ``refs`` with a solution (``ok``) has phase 0; returns the
    reference used most often, -1 if none had a solution anywhere."""
    used = []
    for k in range(x.shape[0]):
        for p in range(x.shape[1]):
            r = next((r for r in refs if ok[k, p, r]), None)
            if r is None:
                continue
            z = x[k, p, r]
            x[k, p] *= np.conj(z) / abs(z)
            used.append(r)
    return int(np.bincount(used).argmax()) if used else -1


def reference_and_normalise(sol: Solutions, refant_ids) -> dict:
    """CASA's conventions, in place: B referenced per channel to the first antenna of
    ``refant_ids`` solved there (phase 0), then ``solnorm``: per SPW, antenna and polarisation,
    B divided by sqrt(mean |B|^2) and by the phase of the sum of its unit phasors over unflagged
    channels (CASA's ``BJones::normalize``); G multiplied by the same factor (so G x B is
    unchanged) and referenced per interval to the first solved reference antenna.

    Returns ``{"B": (nspw,) reference antenna id per SPW (majority over channels), "G": ...}``
    (-1 where nothing was solved).
    """
    refs = [int(r) for r in refant_ids]
    nspw = sol.b.shape[0]
    ref_b = np.full(nspw, -1)
    ref_g = np.full(nspw, -1)
    for s in range(nspw):
        ref_b[s] = _reference_phases(sol.b[s], sol.b_ok[s], refs)
        ok = sol.b_ok[s]  # (nchan, npol, nant)
        b = sol.b[s]
        amp = np.abs(b)
        unit = np.where(ok, b / np.where(amp > 0, amp, 1.0), 0.0).sum(axis=0)  # (npol, nant)
        pw = np.sqrt(np.where(ok, amp ** 2, 0.0).sum(axis=0) / np.maximum(ok.sum(axis=0), 1))
        factor = np.where((ok.sum(axis=0) > 1) & (np.abs(unit) > 0) & (pw > 0),
                          pw * unit / np.where(np.abs(unit) > 0, np.abs(unit), 1.0), 1.0)
        sol.b[s] = np.where(ok, b / factor[None], 1.0)
        sol.b_err[s] = sol.b_err[s] / np.abs(factor)[None]
        sol.g[s] = np.where(sol.g_ok[s], sol.g[s] * factor[None], 1.0)
        sol.g_err[s] = sol.g_err[s] * np.abs(factor)[None]
        ref_g[s] = _reference_phases(sol.g[s], sol.g_ok[s], refs)
    return {"B": ref_b, "G": ref_g}


def write_tables(ms, info: MSInfo, sol: Solutions, refs: dict, b_path, g_path) -> None:
    """Write ``sol`` as CASA 'B Jones' and 'G Jones' tables (created by casatools
    ``calibrater.createcaltable`` from ``ms``: its ANTENNA, FIELD, SPECTRAL_WINDOW and
    OBSERVATION subtables), one row per SPW and antenna (and gain interval), every ANTENNA row
    present (unsolved ones flagged), as CASA writes them. The G table's channel frequency is
    each SPW's mean frequency, as CASA's solve sets it.
    """
    ct = ensure_casa()
    cb = ct.calibrater()
    try:
        cb.open(str(ms), False, False, False)  # compress, addcorr, addmodel: touch nothing in the MS
        if not cb.createcaltable(str(b_path), "Complex", "B Jones", False):
            raise RuntimeError(f"casatools could not create the bandpass table {b_path}")
        if not cb.createcaltable(str(g_path), "Complex", "G Jones", True):
            raise RuntimeError(f"casatools could not create the gain table {g_path}")
    finally:
        cb.close()
        cb.done()
    nspw, nchan, npol, nant = sol.b.shape
    nbin = sol.g.shape[1]
    spw_ids = np.repeat(np.arange(nspw), nant)
    ants = np.tile(np.arange(nant), nspw)
    # (npol, nchan, nrow) with rows SPW-major, antenna fastest
    b_par = sol.b.transpose(2, 1, 0, 3).reshape(npol, nchan, nspw * nant)
    b_ok = sol.b_ok.transpose(2, 1, 0, 3).reshape(npol, nchan, nspw * nant)
    b_err = sol.b_err.transpose(2, 1, 0, 3).reshape(npol, nchan, nspw * nant)
    _fill(b_path, time=np.full(nspw * nant, sol.b_time), spw=spw_ids, ant1=ants,
          ant2=np.repeat(refs["B"], nant), par=b_par, ok=b_ok, err=b_err, field_id=sol.field_id, scan=sol.scan)
    # G: rows SPW-major, then interval, antenna fastest
    g_par = sol.g.transpose(2, 0, 1, 3).reshape(npol, 1, nspw * nbin * nant)
    g_ok = sol.g_ok.transpose(2, 0, 1, 3).reshape(npol, 1, nspw * nbin * nant)
    g_err = sol.g_err.transpose(2, 0, 1, 3).reshape(npol, 1, nspw * nbin * nant)
    _fill(g_path, time=np.tile(np.repeat(sol.g_times, nant), nspw), spw=np.repeat(np.arange(nspw), nbin * nant),
          ant1=np.tile(np.arange(nant), nspw * nbin), ant2=np.repeat(refs["G"], nbin * nant), par=g_par, ok=g_ok,
          err=g_err, field_id=sol.field_id, scan=sol.scan)
    with table(g_path, "SPECTRAL_WINDOW", readonly=False) as tb:
        for s in range(min(nspw, tb.nrows())):
            tb.putcell("CHAN_FREQ", s, np.array([float(np.mean(info.spw_freqs[s]))]))


def _fill(path, *, time, spw, ant1, ant2, par, ok, err, field_id, scan):
    n = int(time.size)
    snr = _snr(par, err, ok).astype(np.float32)
    with table(path, readonly=False) as tb:
        tb.addrows(n)
        tb.putcol("TIME", np.asarray(time, dtype=np.float64))
        tb.putcol("FIELD_ID", np.full(n, int(field_id), dtype=np.int32))
        tb.putcol("SPECTRAL_WINDOW_ID", np.asarray(spw, dtype=np.int32))
        tb.putcol("ANTENNA1", np.asarray(ant1, dtype=np.int32))
        tb.putcol("ANTENNA2", np.asarray(ant2, dtype=np.int32))
        tb.putcol("INTERVAL", np.zeros(n))
        tb.putcol("SCAN_NUMBER", np.full(n, int(scan), dtype=np.int32))
        tb.putcol("OBSERVATION_ID", np.zeros(n, dtype=np.int32))
        tb.putcol("CPARAM", np.where(ok, par, 1.0).astype(np.complex64))
        tb.putcol("PARAMERR", np.where(ok, err, 0.0).astype(np.float32))
        tb.putcol("FLAG", ~np.asarray(ok, dtype=bool))
        tb.putcol("SNR", snr)


def compare_tables(b_a, g_a, b_b, g_b) -> dict:
    """How far two B/G table pairs of one MS (e.g. the fast and the CASA solve) are apart.

    Per antenna, over polarisations and channels (B, and the product G x B) or SPWs and
    intervals (G), where both are unflagged: the largest ``|amp_a / amp_b - 1|`` (per cent) and
    ``|phase_a - phase_b|`` (degrees), after referencing both to the same antenna (the one with
    the most solutions unflagged in both, per channel), then the max and median of those over
    antennas. Also the fraction of solutions flagged in one table and not in the other.
    """
    import warnings

    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # NaN (flagged) slices
        return _compare_tables(b_a, g_a, b_b, g_b)


def _compare_tables(b_a, g_a, b_b, g_b) -> dict:
    from dsacont.calibration.tables import read_caltable

    ta = {"B": read_caltable(b_a), "G": read_caltable(g_a)}
    tb = {"B": read_caltable(b_b), "G": read_caltable(g_b)}

    def cube(t):  # (nspw, ntime, npol, nchan, nant) with NaN where flagged
        spw, ant, tim = t["SPECTRAL_WINDOW_ID"], t["ANTENNA1"], t["TIME"]
        nspw, nant = int(spw.max()) + 1, int(ant.max()) + 1
        ti = np.zeros(spw.size, dtype=int)  # interval index within each SPW (CASA's times differ by SPW)
        for s in range(nspw):
            sel = spw == s
            ti[sel] = np.unique(np.round(tim[sel], 1), return_inverse=True)[1]
        npol, nchan = t["CPARAM"].shape[:2]
        out = np.full((nspw, int(ti.max()) + 1, npol, nchan, nant), np.nan + 0j)
        out[spw, ti, :, :, ant] = np.where(t["FLAG"], np.nan, t["CPARAM"]).transpose(2, 0, 1)
        return out

    def stats(za, zb):  # (..., nant) -> per antenna max over the rest
        r = za / zb
        both = np.isfinite(r)
        ref = int(np.argmax(both.reshape(-1, both.shape[-1]).sum(axis=0)))
        rr = r[..., ref:ref + 1]
        r = r / (rr / np.abs(rr))
        amp = np.abs(np.abs(r) - 1) * 100
        ph = np.abs(np.degrees(np.angle(r)))
        a_ant = np.nanmax(amp.reshape(-1, amp.shape[-1]), axis=0)
        p_ant = np.nanmax(ph.reshape(-1, ph.shape[-1]), axis=0)
        a_ant, p_ant = a_ant[np.isfinite(a_ant)], p_ant[np.isfinite(p_ant)]
        return {"amp_pct_max": float(a_ant.max()) if a_ant.size else float("nan"),
                "amp_pct_median": float(np.median(a_ant)) if a_ant.size else float("nan"),
                "phase_deg_max": float(p_ant.max()) if p_ant.size else float("nan"),
                "phase_deg_median": float(np.median(p_ant)) if p_ant.size else float("nan"),
                "n_antennas": int(a_ant.size)}

    ca, cb_ = {k: cube(v) for k, v in ta.items()}, {k: cube(v) for k, v in tb.items()}
    out = {}
    for k in ("B", "G"):
        a, b = ca[k], cb_[k]
        if a.shape != b.shape:
            raise ValueError(f"{b_a if k == 'B' else g_a}: {k} solutions shaped {a.shape}, the other {b.shape}")
        out[k] = stats(a, b)
        fa, fb = ~np.isfinite(a), ~np.isfinite(b)
        out[k]["flag_disagreement"] = float(np.mean(fa != fb))
    # G x B: the G of each SPW (time-averaged) times B per channel
    pa = ca["B"][:, 0] * np.nanmean(ca["G"], axis=1)[:, :, :1, :]  # (nspw, npol, nchan, nant)
    pb = cb_["B"][:, 0] * np.nanmean(cb_["G"], axis=1)[:, :, :1, :]
    out["GxB"] = stats(pa, pb)
    return out


# --- the field gain correction (dsacont.calibration.field, method "fast") -------------------------

@dataclass
class FieldSums:
    """A group's calibrated data against a field model, summed per baseline and polarisation.

    The model is split into its first (brightest) source ``M_b`` and the rest ``M_h``; over the
    group's rows, channels and SPWs, unflagged cross-correlations, each weighted by WEIGHT:

    cb, ch : (npol, nbl) complex128, ``sum w C conj(M_b)`` and ``sum w C conj(M_h)``
    bb, hh : (npol, nbl) float64, ``sum w |M_b|^2`` and ``sum w |M_h|^2``
    bh : (npol, nbl) float64, ``Re sum w M_b conj(M_h)``
    bl_a1, bl_a2 : (nbl,) int64 antenna ids of each baseline (MS ANTENNA rows)
    nant : number of ANTENNA rows; field_id, scan : the MS's majority FIELD_ID and SCAN_NUMBER
    timings : seconds per step (read, apply, model, accumulate)

    Everything the field solve needs follows from these: the whole model's sums (``cb + ch``,
    ``bb + hh + 2 bh``) give the gains (one per antenna and polarisation for the group, the
    gains being constant over it), and, with any gains divided out per baseline, the model flux
    ratio and the held-out ratio of the fainter sources (:meth:`ratios`).
    """

    cb: np.ndarray
    ch: np.ndarray
    bb: np.ndarray
    hh: np.ndarray
    bh: np.ndarray
    bl_a1: np.ndarray
    bl_a2: np.ndarray
    nant: int
    field_id: int = 0
    scan: int = 1
    timings: dict = field(default_factory=dict)

    def ratios(self, g=None, ok=None) -> tuple[float, float]:
        """``(model flux ratio, held-out ratio)`` of the data with the gains ``g`` (npol, nant)
        divided out (baselines with an antenna not ``ok`` left out, as applycal flags them);
        ``g`` None: the data as they are.

        The model flux ratio is ``Re sum C M* / sum |M|^2``; the held-out ratio is ``b`` of the
        least-squares fit ``C = a M_b + b M_h`` (real ``a``, ``b``): NaN when degenerate.
        """
        cb, ch, bb, hh, bh = self.cb, self.ch, self.bb, self.hh, self.bh
        if g is not None:
            gg = g[:, self.bl_a1] * np.conj(g[:, self.bl_a2])
            use = ok[:, self.bl_a1] & ok[:, self.bl_a2] & (np.abs(gg) > 0)
            inv = np.where(use, 1.0 / np.where(use, gg, 1.0), 0.0)
            cb, ch = cb * inv, ch * inv
            bb, hh, bh = (np.where(use, x, 0.0) for x in (bb, hh, bh))
        c_b, c_h = float(np.real(cb).sum()), float(np.real(ch).sum())
        bb, hh, bh = float(bb.sum()), float(hh.sum()), float(bh.sum())
        mm = bb + hh + 2.0 * bh
        ratio = (c_b + c_h) / mm if mm > 0 else float("nan")
        det = bb * hh - bh * bh
        held = (bb * c_h - bh * c_b) / det if det > 1e-12 * bb * hh and det > 0 else float("nan")
        return ratio, held


def field_channel_step(nchan: int, *, min_channels: int = 12, max_step: int = 4) -> int:
    """Every how many channels the field solve sums: the largest step up to ``max_step`` that
    leaves at least ``min_channels`` channels per SPW (1 on the small preset's 8 channels, 4 at
    the real size's 48).

    The correction is one gain per antenna and polarisation for the whole band, so it needs SNR,
    not every channel: a step of k costs sqrt(k) in SNR (median SNR ~1300 over 12 channels per SPW
    on a full-size field group 13 minutes from the transit, ``benchmarks/field_solve.py``) and
    saves (k-1)/k of the model prediction, the solve's largest cost (116 sources x 48 channels:
    30 s per full-size group).
    """
    return max(1, min(int(max_step), int(nchan) // int(min_channels)))


#: below this median solution SNR a field solve that summed every k-th channel sums them all
#: (SNR grows as sqrt(k)): a faint field keeps its correction instead of failing the SNR gate
STEP_MIN_SNR = 20.0


def median_snr(g, err, ok) -> float:
    """Median SNR (|g| / its error) of the solved gains (0 when none is)."""
    snr = _snr(g, err, ok)[ok]
    return float(np.median(snr)) if snr.size else 0.0


def field_sums(ms, info: MSInfo, prep: ModelPrep, column: str = "DATA", correct=None,
               channel_step: int = 1) -> FieldSums:
    """Read ``column`` of each SPW once, calibrate it in memory (``correct``, a
    :class:`~dsacont.calibration.apply.Corrector` of the tables to apply first; None: the column as
    it is), predict the model (``prep``: its first source, then the rest) in memory and sum both
    against the data per baseline (:class:`FieldSums`), over every ``channel_step``-th channel
    (:func:`field_channel_step`). Nothing is written to the MS."""
    ms = str(ms)
    nant = len(info.antenna_names)
    npol = len(info.corr_types[0])
    nbl = nant * nant
    tm = {"read": 0.0, "apply": 0.0, "model": 0.0, "accumulate": 0.0}
    sums = {k: np.zeros((npol, nbl), dtype=complex) for k in ("cb", "ch", "mb")}
    sq = {k: np.zeros((npol, nbl)) for k in ("bb", "hh")}
    field_id, scan = 0, 1
    with table(ms) as tb:
        for chunk in _spw_chunks(tb, ms, info, column, tm):
            field_id, scan = chunk.field_id, chunk.scan
            if correct is not None:
                t0 = _time.perf_counter()
                chunk.data, chunk.flag = correct(chunk.ddid, chunk.data, chunk.flag, chunk.tidx, chunk.a1, chunk.a2)
                tm["apply"] += _time.perf_counter() - t0
            k = max(1, int(channel_step))
            freqs = np.asarray(info.spw_freqs[chunk.spw])[::k]
            amps = prep.amps[chunk.spw][:, :, ::k]
            data, flag = chunk.data[:, ::k, :], chunk.flag[:, ::k, :]
            t0 = _time.perf_counter()
            mb = source_model(chunk.uvw, freqs, chunk.tidx, chunk.fidx, prep.lmn_sf[:1], amps[:1], prep.shapes[:1],
                              npol=npol)
            mh = (source_model(chunk.uvw, freqs, chunk.tidx, chunk.fidx, prep.lmn_sf[1:], amps[1:], prep.shapes[1:],
                               npol=npol) if len(prep.shapes) > 1 else np.zeros_like(mb))
            tm["model"] += _time.perf_counter() - t0
            t0 = _time.perf_counter()
            nchan = data.shape[1]
            blidx = np.where(chunk.a1 != chunk.a2, chunk.a1 * nant + chunk.a2, -1)
            one_bin = np.zeros(blidx.size, dtype=np.int64)
            ones_h = np.ones((nchan, nant, npol), dtype=np.complex128)
            for key, sqkey, x, m in (("cb", "bb", data, mb), ("ch", "hh", data, mh), ("mb", None, mb, mh)):
                A, C = _sum_over_channels(x, m, flag, chunk.weight, blidx, one_bin, 1, chunk.a1, chunk.a2,
                                          ones_h, nbl)
                sums[key] += A[0].T
                if sqkey:
                    sq[sqkey] += C[0].T
            tm["accumulate"] += _time.perf_counter() - t0
            del mb, mh, data, flag
    keep = np.flatnonzero((sq["bb"] + sq["hh"]).sum(axis=0) > 0)
    return FieldSums(cb=sums["cb"][:, keep], ch=sums["ch"][:, keep], bb=sq["bb"][:, keep], hh=sq["hh"][:, keep],
                     bh=np.real(sums["mb"][:, keep]), bl_a1=(keep // nant).astype(np.int64),
                     bl_a2=(keep % nant).astype(np.int64), nant=nant, field_id=field_id, scan=scan, timings=tm)


def solve_field(sums: FieldSums, refant_ids, *, minsnr: float = 3.0, min_bl: int = MIN_BASELINES_PER_ANTENNA):
    """One amplitude-and-phase gain per antenna and polarisation for the whole group (CASA
    ``gaincal`` ``solint='inf'``, ``combine='scan,field,spw'``, ``calmode='ap'``), by StEFCal on
    the summed model-divided data; then ``solnorm``: the amplitudes divided by their mean over
    the solved antennas and both polarisations (the flux scale stays the calibrator's), and the
    phases referred, per polarisation, to the first of ``refant_ids`` that has a solution.

    Returns ``(g, err, ok)``, each (npol, nant): complex gains, PARAMERR (as CASA's, from the
    chi-squared of the averaged visibilities) and whether solved with SNR >= ``minsnr``.
    """
    A = np.ascontiguousarray(sums.cb + sums.ch)
    C = np.ascontiguousarray(sums.bb + sums.hh + 2.0 * sums.bh)
    g, err, ok, _ = _stefcal(A, C, sums.bl_a1, sums.bl_a2, sums.nant, min_bl, MAX_ITER, TOLERANCE)
    ok = ok & (_snr(g, err, ok) >= minsnr)
    if ok.any():
        norm = float(np.mean(np.abs(g[ok])))
        g, err = g / norm, err / norm
    _reference_phases(g[None], ok[None], [int(r) for r in refant_ids])
    return np.where(ok, g, 1.0), np.where(ok, err, 0.0), ok


def write_field_table(ms, g, err, ok, path, *, time_s: float, field_id: int = 0, scan: int = 1,
                      refant: int = -1, freq_hz: float | None = None) -> None:
    """Write the field correction ``g`` (npol, nant) as a CASA 'G Jones' table solved with
    ``combine='spw'``: one row per antenna labelled SPW 0, the other SPWs' rows of its
    SPECTRAL_WINDOW subtable flagged (as CASA writes a combined solution;
    :func:`~dsacont.calibration.tables.combined_spw` reads it back)."""
    ct = ensure_casa()
    cb = ct.calibrater()
    try:
        cb.open(str(ms), False, False, False)
        if not cb.createcaltable(str(path), "Complex", "G Jones", True):
            raise RuntimeError(f"casatools could not create the gain table {path}")
    finally:
        cb.close()
        cb.done()
    npol, nant = g.shape
    _fill(path, time=np.full(nant, float(time_s)), spw=np.zeros(nant, dtype=int), ant1=np.arange(nant),
          ant2=np.full(nant, int(refant)), par=g[:, None, :], ok=ok[:, None, :], err=err[:, None, :],
          field_id=field_id, scan=scan)
    with table(path, "SPECTRAL_WINDOW", readonly=False) as tb:
        flag_row = np.ones(tb.nrows(), dtype=bool)
        flag_row[0] = False
        tb.putcol("FLAG_ROW", flag_row)
        if freq_hz is not None:
            tb.putcell("CHAN_FREQ", 0, np.array([float(freq_hz)]))
