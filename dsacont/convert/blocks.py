"""One block of the main table, from visibilities, nsamples and flags: the numpy wrapper of the
block kernels (:func:`dsacont.convert.kernels.rotate_block_kernel`,
:func:`dsacont.convert.kernels.flag_weight_kernel`). A block is (a time range, all or some
baselines, one subband); the block sources (:mod:`dsacont.convert.sources`) feed it.
"""
from __future__ import annotations

import numpy as np

from dsacont.convert.kernels import flag_weight_kernel, rotate_block_kernel
from dsacont.io.uvh5_backend import scratch_array
from dsacont.telescope import SPEED_OF_LIGHT

__all__ = ["compute_block"]


def _is_uniform(freq, dw_max) -> bool:
    """Channels evenly spaced to better than 1e-9 rad of phase at the largest |dw|."""
    f = np.asarray(freq, float)
    if f.size < 3:
        return True
    lin = f[0] + np.arange(f.size) * (f[1] - f[0])
    return bool(np.max(np.abs(f - lin)) * 2 * np.pi / SPEED_OF_LIGHT * max(dw_max, 1e-3) < 1e-9)


def compute_block(vis, ns, fl, dw, freq, flip=False, scratch=None, nsamples=None):
    """One block of the main table (MS convention: DATA conjugated, channels ascending).

    Parameters
    ----------
    vis : array (nt, nbl, nf, npol) complex64
        Visibilities (Dataset convention), channels in input order.
    ns : array (nt, nbl, nf, npol) float32, or None with ``nsamples``
        nsamples.
    fl : array (nt, nbl, nf, npol) bool, or None with ``nsamples``
        The files' flags (or any flags to carry into FLAG).
    dw : array (nt, nbl) float64
        w_new - w_old, metres.
    freq : array (nf,) float64
        Channel frequencies, Hz, ascending (output order).
    flip : bool
        The input channels descend (output channel f is input nf - 1 - f).
    scratch : dict, optional
        Reusable output buffers of one thread (:func:`dsacont.io.uvh5_backend.scratch_array`); the
        returned arrays are then those buffers, valid until the next call with this dict.
    nsamples : float, optional
        Every nsamples of the block equals this value and no flag of the files is set (``ns`` and
        ``fl`` are then not read: the correlator's usual case); FLAG is then ``nsamples == 0``
        everywhere and WEIGHT ``nsamples``.

    Returns
    -------
    data : ndarray (nt, nbl, nf, npol) complex64
        ``conj(vis * exp(-2j pi freq dw / c))`` (:func:`dsacont.convert.kernels.rotate_block_kernel`).
    flags : ndarray (nt, nbl, nf, npol) bool
        ``fl | (ns == 0)``.
    weight, sigma : ndarray (nt, nbl, npol) float32
        Channel-mean nsamples; ``1 / sqrt(weight)`` (0 where the weight is 0).
    """
    vis = np.ascontiguousarray(vis, dtype=np.complex64)
    dw = np.ascontiguousarray(dw, dtype=np.float64)
    freq = np.ascontiguousarray(freq, dtype=np.float64)
    nt, nbl, nf, npol = vis.shape
    data = scratch_array(scratch, "data", vis.shape, np.complex64)
    flags = scratch_array(scratch, "flags", vis.shape, np.bool_)
    weight = scratch_array(scratch, "weight", (nt, nbl, npol), np.float32)
    sigma = scratch_array(scratch, "sigma", (nt, nbl, npol), np.float32)
    uniform = _is_uniform(freq, float(np.max(np.abs(dw))) if dw.size else 0.0)
    rotate_block_kernel(vis, dw, freq, bool(flip), uniform, data)
    if nsamples is None:
        flag_weight_kernel(np.ascontiguousarray(ns, dtype=np.float32), np.ascontiguousarray(fl, dtype=np.bool_),
                           bool(flip), flags, weight, sigma)
    else:
        w = np.float32(nsamples)
        flags.fill(w == 0)
        weight.fill(w)
        sigma.fill(np.float32(1.0) / np.sqrt(w) if w > 0 else np.float32(0.0))
    return data, flags, weight, sigma
