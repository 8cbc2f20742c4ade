"""The channel-averaged copy of a Measurement Set that imaging reads (:func:`average_channels`).

WSClean cannot average channels as it reads, and the full band (768 x 244 kHz at full size) is
~3x more than the bandwidth smearing at the field edge needs (:mod:`dsacont.imaging.geometry`).
An MS in dsacont's row order is averaged here, one integration at a time, into a new MS built as
the converter builds one (:mod:`dsacont.io.ms_build`); any other MS goes through CASA's
mstransform, whose output this one matches (the tests compare the two).
"""
from __future__ import annotations

import logging
import os
import shutil

import numpy as np

from dsacont import __version__
from dsacont.io.ms import CORR_TYPE, MSInfo, _ct, column_reader, read_ms_info, table
from dsacont.io.ms_build import MainRows, MSLayout, MSWriter, build_skeleton, run_tile_rows

log = logging.getLogger(__name__)


def average_channels(src, dst, chanbin: int, *, datacolumn: str = "corrected") -> None:
    """Write ``dst``: ``src`` with every ``chanbin`` adjacent channels averaged.

    For imaging: a scratch copy whose DATA column holds ``src``'s ``datacolumn`` averaged with the
    flags (a flagged channel carries no weight; a bin flagged throughout stays flagged), WEIGHT
    times the unflagged channels per bin and SIGMA times 1 / sqrt(that), each averaged over the
    row's unflagged bins (``chanbin`` and 1 / sqrt(``chanbin``) without flags), as CASA's
    mstransform writes them, and SPECTRAL_WINDOW rewritten (centre frequencies, widths). ``src``
    is not modified.

    An MS in dsacont's row order (:class:`MainRows`: integration, window, baseline) is averaged
    here, an integration at a time, into a new MS built as the converter builds one
    (:func:`build_skeleton`, direct tile writes; :func:`dsacont.io.kernels.average_channel_bins`):
    on a full-size tile 12.7 s against mstransform's 29.3 s, whose output it matches (the tests
    compare the two). Any other MS goes through CASA's mstransform.

    Parameters
    ----------
    src, dst : str or os.PathLike
        The Measurement Set and the new one (must not exist).
    chanbin : int
        Channels per output channel; it divides each spectral window's channel count.
    datacolumn : {'corrected', 'data', 'model'}
        The column averaged into ``dst``'s DATA.

    Raises
    ------
    FileExistsError
        ``dst`` exists.
    RuntimeError
        CASA's error, with ``src`` named.
    """
    src, dst = str(src), str(dst)
    if os.path.exists(dst):
        raise FileExistsError(f"{dst} exists; average_channels writes a new MS")
    if _average_runwise(src, dst, int(chanbin), datacolumn):
        return
    mt = _ct().mstransformer()
    try:
        mt.config({"inputms": src, "outputms": dst, "datacolumn": datacolumn.lower(),
                   "chanaverage": True, "chanbin": int(chanbin)})
        mt.open()
        mt.run()
    except Exception as exc:
        raise RuntimeError(f"{src}: averaging {chanbin} channels into {dst} failed: {exc}") from exc
    finally:
        mt.done()


_STOKES_NAME = {v: k for k, v in CORR_TYPE.items()}


def _main_rows_of(tb, info: "MSInfo") -> MainRows | None:
    """The :class:`MainRows` of an open MS's main table, or None when its rows are not in
    dsacont's (integration, window, baseline) order with the same baselines in every run."""
    n = tb.nrows()
    times = np.asarray(tb.getcol("TIME"))
    ntime = len(np.unique(times))
    nspw = len(info.ddid_spw)
    if ntime == 0 or nspw == 0 or n % (ntime * nspw):
        return None
    nbl = n // (ntime * nspw)
    ddid = np.asarray(tb.getcol("DATA_DESC_ID")).reshape(ntime, nspw, nbl)
    t = times.reshape(ntime, nspw, nbl)
    a1 = np.asarray(tb.getcol("ANTENNA1")).reshape(ntime * nspw, nbl)
    a2 = np.asarray(tb.getcol("ANTENNA2")).reshape(ntime * nspw, nbl)
    if not (np.all(ddid == np.arange(nspw)[None, :, None]) and np.all(t == t[:, :1, :1])
            and np.all(np.diff(t[:, 0, 0]) > 0) and np.all(a1 == a1[:1]) and np.all(a2 == a2[:1])
            and len({int(np.asarray(f).size) for f in info.spw_freqs}) == 1):
        return None
    field = np.asarray(tb.getcol("FIELD_ID")).reshape(ntime, nspw * nbl)
    scan = np.asarray(tb.getcol("SCAN_NUMBER")).reshape(ntime, nspw * nbl)
    uvw = np.asarray(tb.getcol("UVW")).T.reshape(ntime, nspw, nbl, 3)
    if not (np.all(field == field[:, :1]) and np.all(scan == scan[:, :1]) and np.all(uvw == uvw[:, :1])):
        return None
    return MainRows(time=t[:, 0, 0].copy(), field_id=field[:, 0].astype(np.int32), scan=scan[:, 0].astype(np.int32),
                    nspw=nspw, ant1=a1[0].astype(np.int32), ant2=a2[0].astype(np.int32),
                    uvw=uvw[:, 0].copy(), interval=float(np.median(tb.getcol("INTERVAL"))))


def _average_runwise(src: str, dst: str, chanbin: int, datacolumn: str) -> bool:
    """:func:`average_channels` for an MS in dsacont's row order; False (nothing written) for any
    other MS."""
    from dsacont.io.kernels import average_channel_bins

    column = {"corrected": "CORRECTED_DATA", "data": "DATA", "model": "MODEL_DATA"}[datacolumn.lower()]
    info = read_ms_info(src)
    nchan = int(np.asarray(info.spw_freqs[0]).size)
    if chanbin < 1 or nchan % chanbin or len(info.corr_types) != 1 or column not in info.columns \
            or any(int(c) not in _STOKES_NAME for c in info.corr_types[0]):
        return False
    with table(src) as tb:
        rows = _main_rows_of(tb, info)
    if rows is None:
        log.info("%s: rows not in dsacont's order; averaging channels with CASA mstransform", src)
        return False
    with table(src, "ANTENNA") as t:
        dish = float(np.median(t.getcol("DISH_DIAMETER")))
    with table(src, "FIELD") as t:
        field_times = np.asarray(t.getcol("TIME"), float)
    with table(src, "OBSERVATION") as t:
        time_range = tuple(float(x) for x in np.asarray(t.getcell("TIME_RANGE", 0)).ravel()[:2])
    k = int(chanbin)
    freqs = np.stack([np.asarray(f, float).reshape(-1, k).mean(axis=1) for f in info.spw_freqs])
    # a bin spans its first channel's lower edge to its last one's upper edge (mstransform's rule;
    # the sum of the widths for contiguous channels)
    widths = np.stack([(np.asarray(f, float)[k - 1::k] + np.asarray(w, float)[k - 1::k] / 2)
                       - (np.asarray(f, float)[::k] - np.asarray(w, float)[::k] / 2)
                       for f, w in zip(info.spw_freqs, info.spw_widths)])
    npol = len(info.corr_types[0])
    nout = nchan // k
    layout = MSLayout(
        antenna_names=list(info.antenna_names), antenna_positions=np.asarray(info.antenna_positions, float),
        dish_diameter=dish, spw_freqs=freqs, spw_widths=widths, spw_names=list(info.spw_names),
        polarizations=[_STOKES_NAME[int(c)] for c in info.corr_types[0]], field_names=list(info.field_names),
        field_dirs=np.asarray(info.field_dirs, float), field_times=field_times, time_range=time_range,
        telescope_name=info.telescope_name or "OVRO_MMA", nrows=rows.nrows, interval=rows.interval,
        tile_rows=run_tile_rows(rows.nbl, npol, nout),
        history=[f"dsacont {__version__} average_channels: {src} {column}, {k} channels per channel, for imaging"])
    per_t = rows.nspw * rows.nbl
    try:
        tiles = build_skeleton(dst, layout, rows, direct=True)
    except BaseException:
        shutil.rmtree(dst, ignore_errors=True)
        raise
    writer = None if tiles is not None else MSWriter(dst)
    ok = False
    try:
        with table(src) as tb:
            read = {c: column_reader(tb, c) for c in (column, "FLAG", "WEIGHT", "SIGMA")}
            for t in range(len(rows.time)):
                r0 = rows.run_start(t, 0)
                data = read[column](r0, per_t).T  # (nrow, nchan, npol)
                flag = read["FLAG"](r0, per_t).T
                out, fout, nmean, smean = average_channel_bins(np.ascontiguousarray(data, np.complex64),
                                                               np.ascontiguousarray(flag, np.bool_), k)
                weight = np.ascontiguousarray(read["WEIGHT"](r0, per_t).T * nmean, np.float32)
                sigma = np.ascontiguousarray(read["SIGMA"](r0, per_t).T * smean, np.float32)
                if tiles is not None:
                    tiles.write(r0, DATA=out, FLAG=fout, WEIGHT=weight, SIGMA=sigma)
                else:
                    writer.put(r0, DATA=out, FLAG=fout, WEIGHT=weight, SIGMA=sigma)
        ok = True
    finally:
        if tiles is not None:
            tiles.close()
        if writer is not None:
            writer.close()
        if not ok:  # closed first: no half-written copy is left behind
            shutil.rmtree(dst, ignore_errors=True)
    return True


