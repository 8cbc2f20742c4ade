"""numba kernels of the file readers and writers: small, pure, GIL-free (arrays in, arrays out).

- :func:`gather_chunks`, :func:`gather_chunks_p1`: rebuild rows of a chunked HDF5 dataset from its
  raw chunk bytes (the UVH5 array backend, :class:`dsacont.io.uvh5_backend.SubbandReader`);
- :func:`rows_all_equal`: whether rows of such a dataset all hold one value (uniform nsamples/flags);
- :func:`pack_bits_le`: bools packed as casacore stores Bool (:class:`dsacont.io.ms_build.TileFiles`);
- :func:`average_channel_bins`: adjacent channels averaged with their flags (the imaging copy,
  :func:`dsacont.io.ms_average.average_channels`).
"""
from __future__ import annotations

import numba
import numpy as np

__all__ = ["gather_chunks", "gather_chunks_p1", "rows_all_equal", "pack_bits_le", "average_channel_bins"]


@numba.njit(nogil=True, cache=True)
def gather_chunks(src, grid, R, C, P, r0, r1, rev, out):
    """Copy rows ``r0 .. r1`` of a chunked (rows, chans, pols) dataset into ``out``
    (r1 - r0, chans, pols) from its raw chunks, in output order.

    src: 1-D array of the dataset's items (file bytes viewed as the dtype); grid: (row chunks,
    chan chunks, pol chunks) int64 item offset of each chunk in ``src``; R, C, P: the chunk shape
    (a chunk stores R*C*P items in C order; edge chunks are stored whole); rev: reverse the
    channel axis (file channel c goes to ``out[:, chans - 1 - c]``)."""
    nr, nf, npol = out.shape
    nck = grid.shape[1]
    npk = grid.shape[2]
    for r in range(r0, r1):
        rk = r // R
        rr = r - rk * R
        o = out[r - r0]
        for ck in range(nck):
            ch = min(C, nf - ck * C)
            for pk in range(npk):
                ph = min(P, npol - pk * P)
                base = grid[rk, ck, pk] + rr * C * P
                for c in range(ch):
                    oc = nf - 1 - (ck * C + c) if rev else ck * C + c
                    for p in range(ph):
                        o[oc, pk * P + p] = src[base + c * P + p]
    return out


@numba.njit(nogil=True, cache=True)
def gather_chunks_p1(src, grid, R, C, r0, r1, rev, out):
    """:func:`gather_chunks` for chunks of one polarisation (P = 1, what the correlator writes):
    the same result, ~2x faster (a contiguous run of C items per chunk and row)."""
    nr, nf, npol = out.shape
    nck = grid.shape[1]
    for r in range(r0, r1):
        rk = r // R
        rr = r - rk * R
        orow = r - r0
        for ck in range(nck):
            ch = min(C, nf - ck * C)
            for pk in range(npol):
                base = grid[rk, ck, pk] + rr * C
                if rev:
                    top = nf - 1 - ck * C
                    for c in range(ch):
                        out[orow, top - c, pk] = src[base + c]
                else:
                    for c in range(ch):
                        out[orow, ck * C + c, pk] = src[base + c]
    return out


@numba.njit(nogil=True, cache=True)
def rows_all_equal(src, grid, R, C, P, r0, r1, v):
    """True when every item of rows ``r0 .. r1`` of a chunked (rows, chans, pols) dataset equals
    ``v`` (compared as stored: pass bit patterns, e.g. uint32 for float32). ``src``/``grid``/
    ``R, C, P`` as in :func:`gather_chunks`, ``grid`` starting at row chunk ``r0 // R``; all
    ``C * P`` items of each row of a chunk are checked (edge chunks' padding too)."""
    rk0 = r0 // R
    run = C * P
    for rk in range(grid.shape[0]):
        top = (rk0 + rk) * R
        a = max(r0, top) - top
        b = min(r1, top + R) - top
        if b <= a:
            continue
        for ck in range(grid.shape[1]):
            for pk in range(grid.shape[2]):
                base = grid[rk, ck, pk]
                same = True
                for i in range(base + a * run, base + b * run):
                    same &= src[i] == v
                if not same:
                    return False
    return True


@numba.njit(nogil=True, cache=True)
def pack_bits_le(flags, out):
    """Pack a 1-D bool array (``size % 8 == 0``) into ``out`` (1-D uint8, ``size // 8``) as
    casacore stores Bool: 8 values per byte, least significant bit first."""
    f = flags
    n = out.size
    for i in range(n):
        b = 0
        base = 8 * i
        for k in range(8):
            if f[base + k]:
                b |= 1 << k
        out[i] = b
    return out


@numba.njit(nogil=True, cache=True)
def average_channel_bins(data, flag, k):
    """Average every ``k`` adjacent channels of MS rows, the flagged ones left out.

    data (nrow, nchan, npol) complex64 and flag (nrow, nchan, npol) bool, row-major as a
    casatools ``getcol`` gives them transposed; ``k`` divides ``nchan``. Returns ``out``
    (nrow, nchan // k, npol) complex64, the mean of the bin's unflagged samples (where every
    sample is flagged, the mean of them all, as CASA's mstransform writes it), ``fout`` (same
    shape) bool, True where every sample of the bin is flagged, ``nmean`` (nrow, npol) float64:
    the unflagged samples per bin averaged over the bins that have any (``k`` when none has), and
    ``smean`` (nrow, npol) float64: 1 / sqrt(unflagged samples) averaged the same way
    (1 / sqrt(k) when none): the row's WEIGHT is multiplied and its SIGMA by these, as CASA's
    mstransform does.
    """
    nrow, nchan, npol = data.shape
    nout = nchan // k
    out = np.zeros((nrow, nout, npol), dtype=np.complex64)
    fout = np.ones((nrow, nout, npol), dtype=np.bool_)
    nmean = np.full((nrow, npol), float(k))
    smean = np.full((nrow, npol), 1.0 / np.sqrt(k))
    for r in range(nrow):
        for p in range(npol):
            tot = 0
            stot = 0.0
            nbin = 0
            for b in range(nout):
                acc_re = 0.0
                acc_im = 0.0
                all_re = 0.0
                all_im = 0.0
                n = 0
                for c in range(b * k, b * k + k):
                    v = data[r, c, p]
                    all_re += v.real
                    all_im += v.imag
                    if not flag[r, c, p]:
                        acc_re += v.real
                        acc_im += v.imag
                        n += 1
                if n > 0:
                    out[r, b, p] = complex(acc_re / n, acc_im / n)
                    fout[r, b, p] = False
                    tot += n
                    stot += 1.0 / np.sqrt(n)
                    nbin += 1
                else:
                    out[r, b, p] = complex(all_re / k, all_im / k)
            if nbin > 0:
                nmean[r, p] = tot / nbin
                smean[r, p] = stot / nbin
    return out, fout, nmean, smean
