"""Flag an existing Measurement Set: read it with casatools, flag, write FLAG (one writer).

casatools comes through :func:`dsacont.casa.ensure_casa` (CASA set up offline first).
"""
from __future__ import annotations

import logging
import time as _time
from pathlib import Path

import numpy as np

from dsacont.errors import BadInputError
from dsacont.io.atomic import write_json_atomic
from dsacont.io.ms import read_ms_info, table

from .blocks import flag_arrays
from .plots import plot_waterfall
from .strategy import as_strategy
from .summary import summarize

log = logging.getLogger(__name__)

_ROW_BLOCK = 100_000  # rows per getcol/putcol call (bounds the memory of one read or write)


def _first_seen(keys):
    """Find the distinct values of ``keys`` in order of first appearance.

    keys: (N,) array. Returns the distinct values, shape (K,), and the index of each element of
    ``keys`` into them, shape (N,) int64.
    """
    vals, first, inv = np.unique(keys, return_index=True, return_inverse=True)
    order = np.argsort(first, kind="stable")
    rank = np.empty(order.size, dtype=np.int64)
    rank[order] = np.arange(order.size)
    return vals[order], rank[inv.ravel()]


def _index_in(vals, keys):
    """Index into ``vals`` (K,) (distinct, any order) of each of ``keys`` (N,); all must occur."""
    sorter = np.argsort(vals, kind="stable")
    return sorter[np.searchsorted(vals, keys, sorter=sorter)]


def _ms_groups(ddid, times, a1, a2, layout):
    """Group the data descriptions that can be flagged as one frequency-concatenated cube.

    Same (time, baseline) rows and same number of correlations; returns a list of lists of dd ids.

    ``ddid``, ``times`` (s), ``a1``, ``a2``: the main table's columns, shape (Nrow,); ``layout``
    from :meth:`dsacont.io.ms.MSInfo.ddid_layout`.
    """
    keys = {}
    for dd in np.unique(ddid):
        sel = ddid == dd
        sig = (layout[int(dd)]["ncorr"], int(sel.sum()), float(times[sel].sum()), int(a1[sel].sum()),
               int(a2[sel].sum()))
        keys.setdefault(sig, []).append(int(dd))
    return list(keys.values())


def flag_ms(ms_path, strategy=None, *, datacolumn="DATA", n_threads=1, summary_json=None, waterfall=None,
            dry_run=False) -> dict:
    """Flag RFI in an existing Measurement Set and update its FLAG column (one writer).

    Data descriptions (spectral windows) with identical rows are concatenated along frequency
    (sorted ascending) and flagged as one band; others are flagged separately. Baselines keep the
    MS's order and are cut into blocks by :func:`dsacont.flagging.blocks.baseline_blocks`, so an
    MS written by the conversion gets the flags the conversion itself computes. The existing FLAG
    (and FLAG_ROW) count as pre-flags and are kept. Every new flag is computed before the first
    write; then FLAG is written in row blocks (and FLAG_ROW where a row is fully flagged).

    Parameters
    ----------
    ms_path : str or Path
        The MS directory.
    strategy : None, Strategy, dict or path
        See :func:`dsacont.flagging.strategy.as_strategy`.
    datacolumn : str
        The column whose amplitudes are flagged (DATA, CORRECTED_DATA, ...).
    n_threads : int
        Threads running the baseline blocks.
    summary_json : str or Path, optional
        Write the returned summary here (atomically).
    waterfall : str or Path, optional
        Write a waterfall PNG of the first band here (atomically; re-reads the data column).
    dry_run : bool
        Compute and report; the MS is opened read-only and nothing is written.

    Returns
    -------
    dict
        The summary of :func:`dsacont.flagging.summary.summarize` for the band (or a list of them
        under ``bands`` when there are several), each with ``new_fraction`` (fraction of samples
        newly flagged) and ``spws``; plus ``ms``, ``strategy`` (dict), ``seconds`` (wall time),
        ``n_rows`` and ``datacolumn``.

    Raises
    ------
    dsacont.errors.BadInputError
        ``ms_path`` is not a Measurement Set, or has no column ``datacolumn``.
    """
    s = as_strategy(strategy)
    ms_path = Path(ms_path)
    if not (ms_path / "table.dat").exists():
        raise BadInputError(ms_path, "not a Measurement Set (no table.dat)")
    t_start = _time.perf_counter()
    layout = read_ms_info(ms_path).ddid_layout()
    with table(ms_path, readonly=dry_run) as tb:
        if datacolumn not in tb.colnames():
            raise BadInputError(ms_path, f"no column {datacolumn!r} (have {tb.colnames()})")
        nrow = tb.nrows()
        times = tb.getcol("TIME")
        a1 = tb.getcol("ANTENNA1").astype(np.int64)
        a2 = tb.getcol("ANTENNA2").astype(np.int64)
        ddid = tb.getcol("DATA_DESC_ID").astype(np.int64)
        flag_row = tb.getcol("FLAG_ROW").astype(bool)
        pending = []  # (dd, row indices, new flags (nrow_dd, nchan, ncorr)) computed before writing
        bands = []
        for group in _ms_groups(ddid, times, a1, a2, layout):
            rows0 = np.nonzero(ddid == group[0])[0]
            tvals, ti = np.unique(np.round(times[rows0], 3), return_inverse=True)
            # baselines in the MS's own order (first appearance), so the blocks hold the same
            # baselines as the conversion's (which writes them in the Dataset's order)
            bvals, bi = _first_seen(a1[rows0] * 100000 + a2[rows0])
            nt, nb = tvals.size, bvals.size
            order = sorted(group, key=lambda d: layout[d]["freq"][0])
            freqs = np.concatenate([layout[d]["freq"] for d in order])
            fsort = np.argsort(freqs, kind="stable")
            freqs = freqs[fsort]
            ncorr = layout[order[0]]["ncorr"]
            nf = freqs.size
            log.info("%s: band of %d spw(s), %d times x %d baselines x %d channels x %d corr",
                     ms_path.name, len(order), nt, nb, nf, ncorr)
            amp = np.zeros((nt, nb, nf, ncorr), dtype=np.float32)
            pre = np.ones((nt, nb, nf, ncorr), dtype=bool)  # missing (time, baseline) stay flagged
            chan0 = 0
            rows_of = {}
            for d in order:
                rows = np.nonzero(ddid == d)[0]
                # rows of every dd in the group are in the same (time, baseline) order as rows0
                r_ti = ti if d == group[0] else np.unique(np.round(times[rows], 3), return_inverse=True)[1]
                r_bi = bi if d == group[0] else _index_in(bvals, a1[rows] * 100000 + a2[rows])
                nch = layout[d]["freq"].size
                rows_of[d] = (rows, r_ti, r_bi, chan0, nch)
                sub = tb.query(f"DATA_DESC_ID=={d}") if len(layout) > 1 else tb
                try:
                    for lo in range(0, rows.size, _ROW_BLOCK):
                        n = min(_ROW_BLOCK, rows.size - lo)
                        data = sub.getcol(datacolumn, lo, n)  # (ncorr, nchan, n)
                        fl = sub.getcol("FLAG", lo, n)
                        seg = slice(lo, lo + n)
                        a = np.abs(data).transpose(2, 1, 0).astype(np.float32)
                        f = fl.transpose(2, 1, 0) | flag_row[rows[seg]][:, None, None]
                        amp[r_ti[seg], r_bi[seg], chan0:chan0 + nch, :] = a
                        pre[r_ti[seg], r_bi[seg], chan0:chan0 + nch, :] = f
                finally:
                    if sub is not tb:
                        sub.close()
                chan0 += nch
            # frequency order: put channels ascending for the kernels
            inv = np.argsort(fsort)
            amp = amp[:, :, fsort]
            pre = pre[:, :, fsort]
            ant1 = bvals // 100000
            ant2 = bvals % 100000
            newf = flag_arrays(amp, pre, ant1 == ant2, s, s.static_channel_mask(freqs), n_threads=n_threads)
            del amp
            summ = summarize(newf, antenna1=ant1, antenna2=ant2, times=tvals / 86400.0 + 2400000.5, freqs=freqs,
                             subband=np.repeat(np.arange(len(order)), [layout[d]["freq"].size for d in order])[fsort]
                             if len(order) > 1 else None)
            summ["new_fraction"] = float((newf & ~pre).mean())
            summ["spws"] = [layout[d]["spw"] for d in order]
            bands.append(summ)
            if waterfall is not None and len(bands) == 1:
                amp_plot = _amp_for_plot(tb, ms_path, rows_of, order, datacolumn, nt, nb, nf, ncorr, fsort, layout)
                plot_waterfall({"amp": amp_plot, "frequency": freqs, "antenna1": ant1, "antenna2": ant2}, newf,
                               waterfall)
            newf = newf[:, :, inv]  # back to the MS's channel order
            for d in order:
                rows, r_ti, r_bi, c0, nch = rows_of[d]
                pending.append((d, rows, newf[r_ti, r_bi, c0:c0 + nch, :]))
            del pre
        if not dry_run:
            log.info("%s: writing FLAG for %d rows", ms_path.name, nrow)
            for d, rows, fl in pending:
                sub = tb.query(f"DATA_DESC_ID=={d}") if len(layout) > 1 else tb
                try:
                    for lo in range(0, rows.size, _ROW_BLOCK):
                        n = min(_ROW_BLOCK, rows.size - lo)
                        block = fl[lo:lo + n]
                        sub.putcol("FLAG", np.ascontiguousarray(block.transpose(2, 1, 0)), lo, n)
                        full = block.reshape(n, -1).all(axis=1)
                        if full.any():
                            fr = sub.getcol("FLAG_ROW", lo, n).astype(bool) | full
                            sub.putcol("FLAG_ROW", fr, lo, n)
                finally:
                    if sub is not tb:
                        sub.close()
            tb.flush()
    out = dict(bands[0]) if len(bands) == 1 else {"bands": bands}
    out.update({"ms": str(ms_path), "strategy": s.to_dict(), "seconds": _time.perf_counter() - t_start,
                "n_rows": int(nrow), "datacolumn": datacolumn})
    if summary_json is not None:
        write_json_atomic(out, summary_json)
    return out


def _amp_for_plot(tb, ms_path, rows_of, order, datacolumn, nt, nb, nf, ncorr, fsort, layout):
    """Re-read |data column| of a band for the waterfall (only when a PNG is asked for).

    Returns a (Nt, Nb, Nf, Ncorr) float32 cube, channels ascending.
    """
    amp = np.zeros((nt, nb, nf, ncorr), dtype=np.float32)
    for d in order:
        rows, r_ti, r_bi, c0, nch = rows_of[d]
        sub = tb.query(f"DATA_DESC_ID=={d}") if len(layout) > 1 else tb
        try:
            data = sub.getcol(datacolumn)
        finally:
            if sub is not tb:
                sub.close()
        amp[r_ti, r_bi, c0:c0 + nch, :] = np.abs(data).transpose(2, 1, 0)
    return amp[:, :, fsort]
