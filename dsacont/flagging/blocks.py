"""Flagging in baseline blocks: the block cut, one block in memory, a whole cube, a lazy Dataset.

The kernels need whole (time, frequency) planes, and the across-baseline detectors pool the
cross-correlations of one block, so a block is (all times, a range of baselines, all channels, all
polarisations) and the flags depend on where the blocks are cut. :func:`baseline_blocks` is the
only place the cut is made; every path uses it (:func:`flag_arrays` for ``dsacont flag MS``,
:func:`flag_dataset` for the lazy Dataset, and the conversion's fused read-flag-write pass in
:mod:`dsacont.convert`), so the same visibilities get the same flags on every path.
"""
from __future__ import annotations

import logging
import math
import time as _time
from concurrent.futures import ThreadPoolExecutor

import dask.array as da
import numpy as np
import xarray as xr

from .kernels import flag_block_kernel
from .strategy import as_strategy

log = logging.getLogger(__name__)


def baseline_blocks(n_baselines: int, block_baselines: int) -> list[tuple[int, int]]:
    """Cut ``n_baselines`` baselines into blocks of about ``block_baselines`` each.

    ``nblk = max(1, n_baselines // block_baselines)`` blocks are wanted (so a block holds at
    least ``block_baselines`` baselines, the across-baseline detectors' pool); every block but
    the last has ``ceil(n_baselines / nblk)`` baselines, the last the remainder.

    Parameters
    ----------
    n_baselines : int
        Number of baselines (autocorrelations included), in the data's baseline order.
    block_baselines : int
        Wanted baselines per block (:attr:`Strategy.block_baselines`); values < 1 count as 1.

    Returns
    -------
    list of (int, int)
        ``(start, stop)`` baseline index ranges, contiguous, covering ``0..n_baselines``.
    """
    n_baselines = int(n_baselines)
    if n_baselines <= 0:
        return []
    nblk = max(1, n_baselines // max(1, int(block_baselines)))
    size = int(math.ceil(n_baselines / nblk))
    return [(b0, min(b0 + size, n_baselines)) for b0 in range(0, n_baselines, size)]


def flag_block(amp, flags, is_auto, strategy=None, static_chan=None) -> np.ndarray:
    """Flag one block of baselines in memory.

    Parameters
    ----------
    amp : array_like, shape (Nt, Nb, Nf, Np)
        Amplitudes |V| in data units (float32; complex visibilities are converted to |V|).
        Frequencies ascending.
    flags : array_like of bool, shape (Nt, Nb, Nf, Np), or None
        Input flags (True = bad); None: none.
    is_auto : array_like of bool, shape (Nb,)
        True for autocorrelations.
    strategy : None, Strategy, dict or path
        See :func:`dsacont.flagging.strategy.as_strategy`.
    static_chan : array_like of bool, shape (Nf,), or None
        Channels always flagged (:meth:`Strategy.static_channel_mask`).

    Returns
    -------
    numpy.ndarray of bool, shape (Nt, Nb, Nf, Np)
        ``flags`` OR-ed with the new flags.
    """
    s = as_strategy(strategy)
    amp = np.asarray(amp)
    if np.iscomplexobj(amp):
        amp = np.abs(amp)
    amp = np.ascontiguousarray(amp, dtype=np.float32)
    if flags is None:
        flags = np.zeros(amp.shape, dtype=bool)
    flags = np.ascontiguousarray(flags, dtype=np.bool_)
    nf = amp.shape[2]
    if static_chan is None:
        static_chan = np.zeros(nf, dtype=np.bool_)
    return flag_block_kernel(
        amp, flags, np.ascontiguousarray(is_auto, dtype=np.bool_), np.ascontiguousarray(static_chan, dtype=np.bool_),
        *kernel_args(s),
    )


def kernel_args(s) -> tuple:
    """The strategy's thresholds and windows, typed and in the order :func:`flag_block_kernel` takes
    them after its four arrays (also what the reference kernels of ``tests/flagging`` take)."""
    return (float(s.cross_chi1), int(s.cross_freq_window), int(s.cross_time_window),
            int(s.cross_smooth_time), int(s.cross_smooth_freq),
            float(s.auto_chi1), int(s.auto_freq_window), int(s.auto_time_window),
            int(s.auto_smooth_time), int(s.auto_smooth_freq),
            float(s.rho), int(s.max_window), int(s.iterations),
            bool(s.combine_baselines), float(s.combined_chi1), int(s.min_baselines), int(s.combined_max_window),
            float(s.time_fraction), float(s.channel_fraction), int(s.dilate_time), int(s.dilate_freq),
            bool(s.combine_polarizations))


def flag_arrays(amp, flags, is_auto, strategy=None, static_chan=None, *, n_threads=1) -> np.ndarray:
    """Flag a whole in-memory cube, block by block (:func:`baseline_blocks`).

    Parameters
    ----------
    amp : numpy.ndarray, shape (Nt, Nb, Nf, Np)
        Amplitudes |V| (float32), frequencies ascending.
    flags : numpy.ndarray of bool, shape (Nt, Nb, Nf, Np), or None
        Input flags.
    is_auto : numpy.ndarray of bool, shape (Nb,)
        True for autocorrelations.
    strategy : None, Strategy, dict or path
        See :func:`dsacont.flagging.strategy.as_strategy`; its ``block_baselines`` sets the cut.
    static_chan : numpy.ndarray of bool, shape (Nf,), or None
        Channels always flagged.
    n_threads : int
        Blocks run in this many threads (the kernels release the GIL).

    Returns
    -------
    numpy.ndarray of bool, shape (Nt, Nb, Nf, Np)
        ``flags`` OR-ed with the new flags.
    """
    s = as_strategy(strategy)
    nb, npol = amp.shape[1], amp.shape[3]
    if flags is None:
        flags = np.zeros(amp.shape, dtype=bool)
    blocks = baseline_blocks(nb, s.block_baselines)
    out = np.empty(amp.shape, dtype=bool)

    def run(block):
        lo, hi = block
        out[:, lo:hi] = flag_block(amp[:, lo:hi], flags[:, lo:hi], is_auto[lo:hi], s, static_chan)
        return hi - lo

    t0 = _time.perf_counter()
    done = 0
    if n_threads > 1 and len(blocks) > 1:
        with ThreadPoolExecutor(n_threads) as pool:
            for n in pool.map(run, blocks):
                done += n
                log.debug("flagged %d/%d baselines", done, nb)
    else:
        for block in blocks:
            done += run(block)
            log.debug("flagged %d/%d baselines", done, nb)
    log.info("flagged %d planes in %.1f s", nb * npol, _time.perf_counter() - t0)
    return out


def _block_fn(vis, flags, is_auto, static_chan, strategy):
    """``map_blocks`` body: one block of :func:`flag_dataset` (the small inputs come 4-D)."""
    return flag_block(np.abs(vis), flags, is_auto[0, :, 0, 0], strategy, static_chan[0, 0, :, 0])


def flag_dataset(ds, strategy=None):
    """Lazy RFI flags for a Dataset from :func:`dsacont.io.uvh5.open_group`.

    The data are rechunked to (all times, the baseline blocks of :func:`baseline_blocks`, all
    frequencies, all polarisations) and :func:`flag_block` is mapped over the blocks with
    ``dask.array.map_blocks``. Nothing is computed here.

    Parameters
    ----------
    ds : xarray.Dataset
        With ``vis`` (time, baseline, frequency, polarization) complex and optionally ``flags``
        (same dims) bool, coordinates ``antenna1``/``antenna2`` (baseline) and ``frequency``
        (Hz, ascending).
    strategy : None, Strategy, dict or path
        See :func:`dsacont.flagging.strategy.as_strategy`.

    Returns
    -------
    xarray.DataArray of bool, dask-backed, dims (time, baseline, frequency, polarization)
        ``ds.flags`` OR-ed with the new flags, with ``ds.vis``'s coordinates.
    """
    s = as_strategy(strategy)
    vis = ds["vis"].data
    if not isinstance(vis, da.Array):
        vis = da.from_array(np.asarray(vis), chunks=vis.shape)
    fl = ds["flags"].data if "flags" in ds else da.zeros(vis.shape, dtype=bool, chunks=vis.chunks)
    if not isinstance(fl, da.Array):
        fl = da.from_array(np.asarray(fl), chunks=vis.shape)
    nt, nb, nf, npol = vis.shape
    bchunks = tuple(b1 - b0 for b0, b1 in baseline_blocks(nb, s.block_baselines))
    chunks = ((nt,), bchunks, (nf,), (npol,))
    vis = vis.rechunk(chunks)
    fl = fl.rechunk(chunks)
    a1 = np.asarray(ds["antenna1"].values)
    a2 = np.asarray(ds["antenna2"].values)
    is_auto = da.from_array((a1 == a2).reshape(1, nb, 1, 1), chunks=((1,), bchunks, (1,), (1,)))
    freqs = np.asarray(ds["frequency"].values)
    static = da.from_array(s.static_channel_mask(freqs).reshape(1, 1, nf, 1), chunks=(1, 1, nf, 1))
    out = da.map_blocks(
        _block_fn, vis, fl, is_auto, static, strategy=s, dtype=bool, chunks=vis.chunks,
        name="dsacont-flag",
    )
    return xr.DataArray(
        out, dims=ds["vis"].dims, coords={k: v for k, v in ds["vis"].coords.items()}, name="flags"
    )
