"""Block sources: where the (visibilities, nsamples, flags) of one block come from, and where
blocks are computed.

A block is (a range of integrations, all baselines, one SPW) in the time pass, or (all
integrations, a range of baselines, every SPW) in the fused flagging pass. Two sources:

- **direct**: the subband files themselves, read by their HDF5 chunk tables
  (:class:`dsacont.io.uvh5_backend.SubbandReader`) in worker threads, GIL released; taken when the
  Dataset's data are still exactly the files' (:func:`dsacont.io.uvh5.group_files`). Integrations
  whose nsamples hold one value and whose flags are all clear (the correlator's usual case) are
  recognised from the mapped bytes, and only the visibilities are gathered.
- **dask**: the Dataset's own dask arrays (a selected or transformed Dataset, ``direct_read=False``,
  or a ``distributed`` client, whose workers compute the blocks).

:class:`Computer` says where blocks run: a local thread pool, or the ``distributed`` client when it
is dask's current scheduler.
"""
from __future__ import annotations

import os
import threading
from concurrent.futures import ThreadPoolExecutor

import dask
import dask.array as da
import numpy as np

from dsacont.errors import BadInputError
from dsacont.io.uvh5 import group_files
from dsacont.io.uvh5_backend import SubbandReader, scratch_array

__all__ = ["Computer", "BlockSource"]


def _client_or_none():
    """The distributed Client when it is dask's current scheduler, else None."""
    try:  # distributed is optional (and slow to import): only when a client may exist
        from distributed import default_client
    except ImportError:  # pragma: no cover
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    sched = dask.base.get_scheduler()
    if sched is None or getattr(sched, "__self__", None) is client:
        return client
    return None


class Computer:
    """Where blocks are computed: the distributed client (when it is dask's current scheduler) or
    a local thread pool of ``dask.config['num_workers']`` (default: every CPU) threads.

    Attributes
    ----------
    client : distributed.Client or None
    pool : concurrent.futures.ThreadPoolExecutor or None
        The local threads (None with a client).
    nthreads : int
        Threads computing blocks (the client's workers' threads in all).
    window : int
        Blocks in flight at a time (default ``nthreads + 1``).
    """

    def __init__(self, window: int | None = None):
        self.client = _client_or_none()
        if self.client is not None:
            nthreads = sum(self.client.nthreads().values()) or 1
            self.pool = None
        else:
            nthreads = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
            self.pool = ThreadPoolExecutor(max_workers=nthreads, thread_name_prefix="dsacont-convert")
        self.nthreads = nthreads
        self.window = int(window or nthreads + 1)

    def compute_now(self, coll):
        """Compute one dask collection with every worker/thread (outside the window)."""
        if self.client is not None:
            return self.client.compute(coll).result()
        return coll.compute(scheduler="threads", num_workers=self.nthreads)

    def shutdown(self):
        """Stop the local threads (waiting for running blocks; queued ones are cancelled)."""
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)


class BlockSource:
    """The input of the blocks of one conversion.

    Parameters
    ----------
    ds : xarray.Dataset
        The reader's Dataset.
    plan : dsacont.convert.plan.ConversionPlan
    direct_read : bool
        Read the subband files directly when the Dataset's data are still theirs.

    Attributes
    ----------
    files : list of (str or None), one per SPW, or None
        The subband file of each SPW (None: a missing subband, zeros flagged) when reading
        directly; None: every block comes from the dask arrays.
    vis, nsamples, flags : dask arrays (time, baseline, frequency, polarization)
        The Dataset's arrays, chunked (the Dataset's time chunks, all baselines, one SPW, all
        polarisations).
    """

    def __init__(self, ds, plan, direct_read: bool = True):
        self.plan = plan
        vis, nsamp, fl = ds["vis"].data, ds["nsamples"].data, ds["flags"].data
        if not isinstance(vis, da.Array):
            vis, nsamp, fl = (da.from_array(np.asarray(x)) for x in (vis, nsamp, fl))
        target = (vis.chunks[0], (plan.nbl,), (plan.nchan,) * plan.nspw, (plan.npol,))
        self.vis, self.nsamples, self.flags = (x.rechunk(target) if x.chunks != target else x for x in (vis, nsamp, fl))
        by_subband = group_files(ds) if direct_read else None
        files = [by_subband[sb] for _, _, sb in plan.spws] if by_subband is not None else None
        self.files = files if files is not None and any(files) else None
        self._readers: dict = {}
        self._lock = threading.Lock()

    @property
    def direct(self) -> bool:
        """Blocks are read from the files (else from the dask arrays)."""
        return self.files is not None

    @property
    def time_chunks(self) -> tuple:
        """Integrations per time block (the Dataset's time chunks)."""
        return self.vis.chunks[0]

    def reader(self, si: int) -> SubbandReader:
        """The reader of SPW ``si``'s file (made once, checked against the group's shape)."""
        with self._lock:
            r = self._readers.get(si)
            if r is None:
                p = self.plan
                r = self._readers[si] = SubbandReader(self.files[si], p.nbl)
                if r.shape[0] != p.ntime * p.nbl or (r.nf, r.npol) != (p.nchan, p.npol):
                    raise BadInputError(self.files[si], f"Data/visdata has shape {r.shape}, the group "
                                                        f"{(p.ntime * p.nbl, p.nchan, p.npol)}")
        return r

    def read(self, t0: int, t1: int, si: int, scratch: dict):
        """Integrations ``t0 .. t1`` of SPW ``si``, channels ascending.

        Returns
        -------
        vis : ndarray (t1 - t0, nbl, nchan, npol) complex64
        nsamples : ndarray float32 of that shape, or None when uniform
        flags : ndarray bool of that shape, or None when uniform
        uniform_nsamples : numpy scalar or None
            When not None, every nsamples of the block holds this value and no flag is set (the
            two arrays were not read).
        """
        if self.files is not None and self.files[si] is not None:
            r = self.reader(si)
            # the correlator's usual block: no flag set, one nsamples value; then only the
            # visibilities are gathered (channels reversed on the way: the kernel is ~2x slower on
            # reversed input)
            flag_value = r.uniform("flags", t0, t1)
            ns_value = r.uniform("nsamples", t0, t1) if flag_value is not None and not flag_value else None
            v = r.read("visdata", t0, t1, scratch, ascending=True)
            if ns_value is None:
                n, f = (r.read(name, t0, t1, scratch, ascending=True) for name in ("nsamples", "flags"))
            else:
                n = f = None
            return v, n, f, ns_value
        v, n, f = dask.compute(*self.dask_block(t0, t1, si), scheduler="sync")
        return v, n, f, None

    def dask_block(self, t0: int, t1: int, si: int):
        """(vis, nsamples, flags) of a block as dask arrays (for distributed workers)."""
        f0, f1, _ = self.plan.spws[si]
        return tuple(x[t0:t1, :, f0:f1, :] for x in (self.vis, self.nsamples, self.flags))

    def read_baselines(self, b0: int, b1: int, scratch: dict):
        """Baselines ``b0 .. b1`` of every integration and every SPW, channels ascending (the fused
        flagging pass; direct reads only).

        Returns
        -------
        vis, nsamples, flags : ndarray (ntime, b1 - b0, nfreq, npol)
            complex64, float32, bool; a missing subband is zeros, flagged (as the reader fills it).
        """
        p = self.plan
        shape = (p.ntime, b1 - b0, p.freq.size, p.npol)
        vis = scratch_array(scratch, "vis", shape, np.complex64)
        ns = scratch_array(scratch, "ns", shape, np.float32)
        fl = scratch_array(scratch, "fl", shape, np.bool_)
        for si, (f0, f1, _) in enumerate(p.spws):
            if self.files[si] is None:
                vis[:, :, f0:f1] = 0
                ns[:, :, f0:f1] = 0
                fl[:, :, f0:f1] = True
                continue
            r = self.reader(si)
            for name, dst in (("visdata", vis), ("nsamples", ns), ("flags", fl)):
                dst[:, :, f0:f1] = r.read_baselines(name, b0, b1, p.ntime, scratch, ascending=True)
        return vis, ns, fl

    def close(self):
        """Close the readers' files."""
        for r in self._readers.values():
            r.close()
