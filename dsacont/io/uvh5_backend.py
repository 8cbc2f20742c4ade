"""The array backend of :func:`dsacont.io.uvh5.open_group`: reads a subband file's
``Data/{visdata,nsamples,flags}`` by their HDF5 chunk tables.

The correlator writes chunked, unfiltered datasets. Their chunk table is read once
(:func:`dsacont.io.h5index.chunk_index`); a read of some integrations then maps the byte range
holding their chunks (a short-lived ``mmap`` for ``MMAP_MIN_BYTES`` and up, else one ``preadv``
into a buffer) and scatters the chunks into the output with a numba gather
(:mod:`dsacont.io.kernels`), putting the channels in ascending frequency on the way. No h5py call
per chunk and the GIL released throughout, so subbands are read in parallel threads. Any other
layout (filters, big-endian, contiguous storage, unallocated chunks, chunks past the end of the
file) is read with h5py, so what a read returns never depends on the path it took.

The same reader serves the lazy Dataset (one read per dask chunk) and the converter's direct block
reads (:mod:`dsacont.convert`), which also use :meth:`SubbandReader.uniform` (skip reading
nsamples and flags when they hold one value) and :meth:`SubbandReader.read_baselines`
(baseline ranges of every integration, for the conversion's fused RFI-flagging pass).
"""
from __future__ import annotations

import mmap
import os
import threading

import h5py
import numpy as np

from dsacont.errors import BadInputError
from dsacont.io import h5index, kernels

__all__ = ["SubbandReader", "scratch_array", "MMAP_MIN_BYTES"]

# reads of at least this many bytes go through a short-lived mmap instead of a copy
MMAP_MIN_BYTES = 1 << 20


def scratch_array(store, key, shape, dtype):
    """An uninitialised array from ``store`` (reused when shape and dtype match), or new."""
    if store is None:
        return np.empty(shape, dtype)
    a = store.get(key)
    if a is None or a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
        a = store[key] = np.empty(shape, dtype)
    return a


class SubbandReader:
    """Reads ``Data/{visdata,nsamples,flags}`` of one subband file by integrations.

    Parameters
    ----------
    path : str or os.PathLike
        The UVH5 subband file.
    nbls : int
        Baselines per integration (rows of the file = integrations x ``nbls``, time-major).

    Attributes
    ----------
    shape : tuple
        Shape of ``Data/visdata`` as stored: (Nblts, 1, Nfreqs, Npols) or (Nblts, Nfreqs, Npols).
    nf, npol : int
        Channels and polarisations.
    flip : bool
        The file's channels descend in frequency (the correlator's order); reads with
        ``ascending=True`` return them ascending.
    tables : dict
        Per dataset name, its chunk table for direct reads, or None (read with h5py).

    Notes
    -----
    Thread-safe: reads share nothing but the file descriptor (``mmap``/``preadv`` at offsets).
    Pickles as its path (the chunk tables are read again where it is unpickled), so it travels
    to Dask workers inside the lazy Dataset's graph.

    Raises
    ------
    dsacont.errors.BadInputError
        The file cannot be opened as HDF5 or lacks the UVH5 datasets.
    """

    NAMES = ("visdata", "nsamples", "flags")

    def __init__(self, path, nbls):
        self.path = str(path)
        self.nbls = int(nbls)
        self.tables = {}
        self.fd = None
        self._lock = threading.Lock()
        try:
            with h5py.File(self.path, "r") as f:
                fr = np.asarray(f["Header/freq_array"][()], float).reshape(-1)
                self.flip = bool(fr.size > 1 and fr[0] > fr[-1])
                size = os.path.getsize(self.path)
                for name in self.NAMES:
                    d = f["Data"][name]
                    self.shape = d.shape
                    self.tables[name] = self._table(d, size)
        except KeyError as exc:
            raise BadInputError(self.path, f"not a UVH5 subband file: missing {exc.args[0]}") from exc
        except OSError as exc:
            raise BadInputError(self.path, f"cannot be read as HDF5 ({exc})") from exc
        self.nf, self.npol = int(self.shape[-2]), int(self.shape[-1])

    def __getstate__(self):
        return {"path": self.path, "nbls": self.nbls}

    def __setstate__(self, state):
        self.__init__(state["path"], state["nbls"])

    @staticmethod
    def _table(d, file_size=None):
        """The chunk table of h5py dataset ``d`` for direct reads (dict: ``dtype``, ``chunk``
        (rows, chans, pols) shape, ``nbytes`` per chunk, ``grid`` (row chunks, chan chunks, pol
        chunks) byte offset of each chunk), or None when ``d`` must be read with h5py. Chunks
        reaching past ``file_size`` (a truncated file) make it None: h5py then names the error
        (a mapping past the end of a file would kill the process with SIGBUS)."""
        try:
            if d.chunks is None or d.compression is not None or d.id.get_create_plist().get_nfilters():
                return None
            dt = d.dtype
            if dt.byteorder == ">" or dt.kind not in "cfb":
                return None
            if dt.kind == "b" and dt.itemsize != 1:
                return None
            shape, ch = d.shape, d.chunks
            if len(shape) == 4:
                if shape[1] != 1:
                    return None
                ch = (ch[0], ch[2], ch[3])
            elif len(shape) != 3:
                return None
            co, offs, sizes, masks = h5index.chunk_index(d)
        except (AttributeError, TypeError, ValueError, OSError):
            return None
        if not offs.size:
            return None
        nbytes = int(np.prod(d.chunks)) * dt.itemsize
        if np.any(sizes != nbytes) or np.any(masks != 0) or co.ndim != 2:
            return None
        if co.shape[1] == 4:
            co = co[:, [0, 2, 3]]
        if np.any((offs - offs.min()) % dt.itemsize):
            return None
        # every chunk of the regular grid must be allocated (no fill-value chunks)
        nrows, nf, npol = shape[0], shape[-2], shape[-1]
        gshape = (-(-nrows // ch[0]), -(-nf // ch[1]), -(-npol // ch[2]))
        if offs.size != int(np.prod(gshape)) or np.any(co % np.array(ch)):
            return None
        grid = np.full(gshape, -1, np.int64)
        grid[co[:, 0] // ch[0], co[:, 1] // ch[1], co[:, 2] // ch[2]] = offs
        if np.any(grid < 0):
            return None
        if file_size is not None and int(offs.max()) + nbytes > file_size:
            return None
        return dict(dtype=dt, chunk=ch, nbytes=nbytes, grid=grid)

    @staticmethod
    def _span(tab, r0, r1):
        """Where rows r0..r1 of a directly read dataset are: file bytes [lo, hi) holding their
        chunks, those chunks' grid as item offsets from ``lo``, and r0, r1 counted from the first
        row of the first chunk. Returns (lo, hi, grid, a, b)."""
        R = tab["chunk"][0]
        g = tab["grid"][r0 // R: -(-r1 // R)]
        lo, hi = int(g.min()), int(g.max()) + tab["nbytes"]
        top = (r0 // R) * R
        return lo, hi, np.ascontiguousarray((g - lo) // tab["dtype"].itemsize), r0 - top, r1 - top

    def _mapped(self, lo: int, hi: int, kind):
        """File bytes [lo, hi) as a read-only array of ``kind`` over its own mapping, or None
        when the file cannot be mapped (the caller then reads with preadv).

        The mapping is never closed by hand: it is unmapped when the array and its last view go
        (at the caller's return). Closing it explicitly raised BufferError whenever a view was
        still alive for a moment (a traceback frame, a compiler's argument cache), failing a
        read whose data had already been copied out."""
        try:
            pa = lo - lo % mmap.ALLOCATIONGRANULARITY
            m = mmap.mmap(self._fd(), hi - pa, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=pa)
        except (OSError, ValueError, AttributeError):
            return None
        return np.frombuffer(m, dtype=kind, count=(hi - lo) // np.dtype(kind).itemsize, offset=lo - pa)

    def _fd(self):
        fd = getattr(self, "fd", None)
        if fd is None:
            with self._lock:
                if getattr(self, "fd", None) is None:
                    self.fd = os.open(self.path, os.O_RDONLY)
                fd = self.fd
        return fd

    def close(self):
        """Close the file descriptor (reads after this open it again)."""
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def read_baselines(self, name, b0, b1, ntime, scratch=None, ascending=False):
        """(ntime, b1 - b0, nf, npol): baselines b0..b1 of every integration, file channel order,
        or ascending frequency with ``ascending`` (one read of each integration's row range)."""
        out = scratch_array(scratch, ("bl", name), (ntime, b1 - b0, self.nf, self.npol), self.dtype(name))
        tab = self.tables[name]
        if tab is not None:
            # one mapping of the whole dataset, one gather per integration (only the pages of
            # the rows gathered are touched)
            R, C, P = tab["chunk"]
            lo = int(tab["grid"].min())
            hi = int(tab["grid"].max()) + tab["nbytes"]
            isz = tab["dtype"].itemsize
            kind = np.uint8 if tab["dtype"].kind == "b" else tab["dtype"]
            grid = tab.get("grid_rel")
            if grid is None:
                grid = tab["grid_rel"] = np.ascontiguousarray((tab["grid"] - lo) // isz)
            src = self._mapped(lo, hi, kind)
            if src is not None:
                dst = out.view(np.uint8) if tab["dtype"].kind == "b" else out
                for t in range(ntime):
                    self._gather(src, grid, R, C, P, t * self.nbls + b0, t * self.nbls + b1,
                                 ascending and self.flip, dst[t])
                return out
        sub = {} if scratch is None else scratch.setdefault(("blsub", name), {})
        for t in range(ntime):
            out[t] = self._read_rows(name, t * self.nbls + b0, t * self.nbls + b1, sub, ascending)
        return out

    def dtype(self, name):
        """numpy dtype of ``Data/<name>``."""
        tab = self.tables[name]
        if tab is not None:
            return tab["dtype"]
        with h5py.File(self.path, "r") as f:
            return f["Data"][name].dtype

    def uniform(self, name, t0, t1):
        """The value every item of ``Data/<name>`` holds in integrations t0..t1 (numpy scalar of
        its dtype), or None: values differ, or the dataset is not read directly. One pass over
        the mapped rows (~20x cheaper than gathering them), stopping at the first difference."""
        tab = self.tables[name]
        isz = tab["dtype"].itemsize if tab is not None else 0
        bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(isz)
        if bits is None:
            return None
        R, C, P = tab["chunk"]
        r0, r1 = t0 * self.nbls, t1 * self.nbls
        lo, hi, grid, a, _ = self._span(tab, r0, r1)
        src = self._mapped(lo, hi, bits)
        if src is None:
            return None
        first = src[grid[0, 0, 0] + a * C * P]
        same = kernels.rows_all_equal(src, grid, R, C, P, r0, r1, first)
        value = np.array(first, bits).view(np.uint8 if tab["dtype"].kind == "b" else tab["dtype"])[()]
        return value if same else None

    def read(self, name, t0, t1, scratch=None, ascending=False):
        """(t1 - t0, nbls, nf, npol) array of integrations t0..t1, file channel order, or
        ascending frequency with ``ascending`` (reversed while gathering, at no extra cost).

        ``scratch``: a dict this reader may keep buffers in and reuse between calls of one
        thread (fresh memory costs page faults, slow on small VMs); the returned array
        is then one of them, valid until the next call with the same name."""
        out = self._read_rows(name, t0 * self.nbls, t1 * self.nbls, scratch, ascending)
        return out.reshape(t1 - t0, self.nbls, self.nf, self.npol)

    def _read_rows(self, name, r0, r1, scratch=None, ascending=False):
        """(r1 - r0, nf, npol) rows r0..r1 of Data/<name>, file channel order (ascending
        frequency with ``ascending``)."""
        rev = bool(ascending and self.flip)
        tab = self.tables[name]
        if tab is None:
            try:
                with h5py.File(self.path, "r") as f:
                    d = f["Data"][name]
                    raw = d[r0:r1, 0, :, :] if len(d.shape) == 4 else d[r0:r1, :, :]
            except OSError as exc:
                raise BadInputError(self.path, f"reading Data/{name} failed ({exc})") from exc
            return np.ascontiguousarray(raw[:, ::-1] if rev else raw)
        R, C, P = tab["chunk"]
        lo, hi, grid, a, b = self._span(tab, r0, r1)
        isz = tab["dtype"].itemsize
        out = scratch_array(scratch, ("out", name), (r1 - r0, self.nf, self.npol), tab["dtype"])
        dst = out.view(np.uint8) if tab["dtype"].kind == "b" else out
        kind = np.uint8 if tab["dtype"].kind == "b" else tab["dtype"]
        if hi - lo >= MMAP_MIN_BYTES:
            # large reads: straight from the page cache through a short-lived mapping (no copy)
            src = self._mapped(lo, hi, kind)
            if src is not None:
                self._gather(src, grid, R, C, P, a, b, rev, dst)
                return out
        buf = scratch_array(scratch, ("buf", name), ((hi - lo) // isz,), tab["dtype"])
        raw = memoryview(buf.view(np.uint8))
        got = 0
        while got < len(raw):
            n = os.preadv(self._fd(), [raw[got:]], lo + got)
            if not n:
                raise BadInputError(self.path, f"Data/{name}: file ends inside a chunk")
            got += n
        self._gather(buf.view(np.uint8) if tab["dtype"].kind == "b" else buf, grid, R, C, P, a, b, rev, dst)
        return out

    @staticmethod
    def _gather(src, grid, R, C, P, a, b, rev, dst):
        if P == 1:
            kernels.gather_chunks_p1(src, grid, R, C, a, b, bool(rev), dst)
        else:
            kernels.gather_chunks(src, grid, R, C, P, a, b, bool(rev), dst)
