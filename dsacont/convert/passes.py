"""The passes over a group's data that fill the MS: blocks read from a
:class:`~dsacont.convert.sources.BlockSource`, computed by
:func:`~dsacont.convert.blocks.compute_block`, written by the
:class:`~dsacont.convert.builder.MSBuilder`.

- :func:`time_pass`: blocks of (the Dataset's time chunk, one SPW). Locally each worker thread
  reads, computes and, once the skeleton is built, writes its block (tile files are written with
  ``pwrite``, one writer per column file at a time); blocks computed while the skeleton is still
  being built wait in memory (at most ``PREFETCH_BLOCKS``) and are written by the caller's thread.
  With a ``distributed`` client the workers compute and this process writes.
- :func:`fused_pass`: with RFI flagging, direct reads and direct writes: blocks of (all
  integrations, a baseline range, every SPW) cut as :func:`dsacont.flagging.flag_dataset` cuts
  them, so one read of the files gives the RFI flags (identical to ``flag_dataset``'s) and the MS;
  each block is written as partial tiles (a baseline range of one (time, spw) run is contiguous in
  the tile files).
"""
from __future__ import annotations

import logging
import threading
import time as _time
from collections import deque

import dask
import numpy as np
from tqdm.auto import tqdm

from dsacont import flagging
from dsacont.convert.blocks import compute_block
from dsacont.io.kernels import pack_bits_le
from dsacont.io.uvh5_backend import scratch_array

log = logging.getLogger(__name__)

__all__ = ["time_pass", "fused_pass", "PREFETCH_BLOCKS"]

# blocks computed ahead while the MS skeleton is being built (~35 MB each at full size)
PREFETCH_BLOCKS = 12


class _Seconds:
    """Seconds per step summed over threads."""

    def __init__(self, *keys):
        self.sums = dict.fromkeys(keys, 0.0)
        self._lock = threading.Lock()

    def add(self, key, dt):
        with self._lock:
            self.sums[key] += dt


def _thread_scratch(local) -> dict:
    scratch = getattr(local, "scratch", None)
    if scratch is None:
        scratch = local.scratch = {}
    return scratch


def time_pass(source, builder, plan, computer, overlay=None, *, progress: bool = True, prof: dict) -> int:
    """Every (time chunk, SPW) block of ``plan``: read, computed, ORed with ``overlay`` (a
    :class:`dsacont.convert.flags.FlagOverlay`, or None) and written. Adds ``blocks``,
    ``blocks_read_threads``, ``blocks_kernel_threads`` (seconds) to ``prof``; returns the bytes of
    visibilities written."""
    t_start = _time.perf_counter()
    edges = np.concatenate([[0], np.cumsum(source.time_chunks)]).astype(int)
    blocks = [(int(edges[k]), int(edges[k + 1]), si) for k in range(len(edges) - 1) for si in range(plan.nspw)]
    stats = _Seconds("read", "kernel")
    local = threading.local()

    def local_block(t0, t1, si):
        """Read, compute and (skeleton ready) write one block in a worker thread. Returns None when
        written, else (data, flags, weight, sigma) in fresh arrays."""
        f0, f1, _ = plan.spws[si]
        scratch = _thread_scratch(local)
        tr = _time.perf_counter()
        v, n, f, ns_value = source.read(t0, t1, si, scratch)
        tk = _time.perf_counter()
        stats.add("read", tk - tr)
        tiles = builder.ready_tiles()
        # channels are ascending from both sources (the reader reverses them while gathering)
        out = compute_block(v, n, f, plan.dw[t0:t1], plan.freq[f0:f1], False, scratch if tiles is not None else None,
                            nsamples=ns_value)
        stats.add("kernel", _time.perf_counter() - tk)
        if overlay is not None:
            overlay.apply(t0, t1, si, out[0], out[1])
        if tiles is None:
            return out
        builder.write_tiles(tiles, t0, t1, si, *out, scratch)
        return None

    if computer.client is None:
        jobs = ((b, computer.pool.submit(local_block, *b)) for b in blocks)
    else:  # distributed: the workers read and compute, this process writes
        jobs = (((t0, t1, si), computer.client.compute(dask.delayed(compute_block, pure=True)(
                    *source.dask_block(t0, t1, si), plan.dw[t0:t1], plan.freq[plan.spws[si][0]:plan.spws[si][1]], False)))
                for t0, t1, si in blocks)

    done, nbytes, next_log = 0, 0, 0.1
    main_scratch: dict = {}
    # a bar in a terminal or notebook (tqdm), nothing in a log file; the log keeps its 10 % lines
    bar = tqdm(total=len(blocks), desc=f"convert {plan.timestamp}", unit="block", leave=False,
               disable=None if progress else True)

    def collect(t0, t1, si, fut):
        """The result of one block, in this thread: written here unless the worker did."""
        nonlocal done, nbytes, next_log
        res = fut.result()
        if computer.client is not None and overlay is not None:
            overlay.apply(t0, t1, si, res[0], res[1])
        if res is not None:
            builder.write(t0, t1, si, *res, main_scratch)
        nbytes += (t1 - t0) * plan.nbl * plan.nchan * plan.npol * 8
        done += 1
        bar.update()
        if progress and done / len(blocks) >= next_log:
            log.info("%s: %3.0f%% (%d/%d blocks, %.1f s)", plan.timestamp, 100.0 * done / len(blocks), done,
                     len(blocks), _time.perf_counter() - t_start)
            next_log += 0.1

    def window():
        # while the skeleton is being built, blocks computed ahead wait in memory
        return computer.window if builder.skeleton_done else max(computer.window, PREFETCH_BLOCKS)

    pending: deque = deque()
    try:
        for job in jobs:
            pending.append(job)
            while len(pending) >= window() or (pending and pending[0][1].done()):
                (t0, t1, si), fut = pending.popleft()
                collect(t0, t1, si, fut)
        while pending:
            (t0, t1, si), fut = pending.popleft()
            collect(t0, t1, si, fut)
    finally:
        bar.close()
        for _, fut in pending:
            try:
                fut.cancel()
            except Exception:
                pass
        computer.shutdown()
    prof["blocks"] = _time.perf_counter() - t_start
    prof["blocks_read_threads"] = stats.sums["read"]
    prof["blocks_kernel_threads"] = stats.sums["kernel"]
    return nbytes


def fused_pass(source, tiles, plan, computer, strategy, *, progress: bool = True, prof: dict) -> np.ndarray:
    """One pass over the subband files in baseline blocks: read, RFI-flag, rotate, write.

    Blocks are the baseline ranges :func:`dsacont.flagging.flag_dataset` uses, each with all
    integrations and all channels in ascending order, and the same inputs (|vis| and the files'
    flags), so the RFI flags equal ``flag_dataset``'s. Each block is then rotated per SPW and
    written into ``tiles`` (:class:`dsacont.io.ms_build.TileFiles`). Adds ``fused_{read,flag,kernel,
    write}_threads`` (seconds) to ``prof``.

    Returns
    -------
    ndarray (time, baseline, frequency, pol) bool
        The files' flags | RFI, as ``flag_dataset`` would give them.
    """
    s = flagging._as_strategy(strategy)
    nbl = plan.nbl
    is_auto = plan.ant1 == plan.ant2
    static = np.asarray(s.static_channel_mask(plan.freq), dtype=bool)
    flags_all = np.empty((plan.ntime, nbl, plan.freq.size, plan.npol), dtype=bool)
    local = threading.local()
    stats = _Seconds("read", "flag", "kernel", "write")

    def one(b0, b1):
        sc = _thread_scratch(local)
        ta = _time.perf_counter()
        vis, ns, fl = source.read_baselines(b0, b1, sc)
        tb = _time.perf_counter()
        fall = flagging.flag_block(np.abs(vis), fl, is_auto[b0:b1], s, static)
        flags_all[:, b0:b1] = fall
        tc = _time.perf_counter()
        tw = 0.0
        for si, (f0, f1, _) in enumerate(plan.spws):
            data, flags, weight, sigma = compute_block(vis[:, :, f0:f1], ns[:, :, f0:f1], fall[:, :, f0:f1],
                                                       plan.dw[:, b0:b1], plan.freq[f0:f1], False, sc)
            tw0 = _time.perf_counter()
            bits = scratch_array(sc, "bits", (flags[0].size // 8,), np.uint8)
            for t in range(plan.ntime):
                pack_bits_le(flags[t].reshape(-1), bits)
                tiles.write(plan.first_row(t, si) + b0, DATA=data[t], FLAG=bits, WEIGHT=weight[t], SIGMA=sigma[t])
            tw += _time.perf_counter() - tw0
        td = _time.perf_counter() - tw
        te = _time.perf_counter()
        for k, dt in (("read", tb - ta), ("flag", tc - tb), ("kernel", td - tc), ("write", te - td)):
            stats.add(k, dt)
        return b1 - b0

    t0 = _time.perf_counter()
    done = 0
    futs = []
    window = max(1, computer.nthreads)  # ~0.3 GB per full-size block in flight
    bar = tqdm(total=nbl, desc=f"convert+flag {plan.timestamp}", unit="baseline", leave=False,
               disable=None if progress else True)
    try:
        for b0, b1 in flagging.baseline_blocks(nbl, s.block_baselines):
            futs.append(computer.pool.submit(one, b0, b1))
            while len(futs) >= window:
                n = futs.pop(0).result()
                done += n
                bar.update(n)
                if progress:
                    log.info("%s: flagged and wrote %d/%d baselines (%.1f s)", plan.timestamp, done, nbl,
                             _time.perf_counter() - t0)
        while futs:
            n = futs.pop(0).result()
            done += n
            bar.update(n)
    finally:
        bar.close()
        for f in futs:
            f.cancel()
        for f in futs:
            try:
                f.exception()  # wait: no thread may still write when the caller cleans up
            except BaseException:
                pass
    log.info("%s: RFI flags computed in the write pass (%.1f s, %.2f%% flagged)", plan.timestamp,
             _time.perf_counter() - t0, 100.0 * flags_all.mean())
    prof.update({f"fused_{k}_threads": v for k, v in stats.sums.items()})
    return flags_all
