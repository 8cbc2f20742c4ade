"""numba kernels of the conversion: small, pure, GIL-free (arrays in, arrays out).

Their wrappers: :mod:`dsacont.convert.phasing` (uvw, delta-w, the Dask rotation of a Dataset) and
:mod:`dsacont.convert.blocks` (one block of the main table: DATA, FLAG, WEIGHT, SIGMA).

Sign convention (``docs/ARCHITECTURE.md``): moving the phase centre multiplies by
``exp(-2j pi f (w_new - w_old) / c)``; the MS holds the complex conjugate. Phases are computed in
float64.
"""
from __future__ import annotations

import numba
import numpy as np

from dsacont.telescope import SPEED_OF_LIGHT

__all__ = ["baseline_uvw_kernel", "delta_w_kernel", "rotate_kernel", "rotate_block_kernel", "flag_weight_kernel"]


@numba.njit(nogil=True, cache=True)
def baseline_uvw_kernel(rot, antpos, ant1, ant2):
    """uvw (ntime, nbl, 3) float64 = rot[t] @ (antpos[ant2] - antpos[ant1]).

    rot (ntime, 3, 3) float64; antpos (nant, 3) float64 metres; ant1, ant2 (nbl,) int indices.
    """
    nt = rot.shape[0]
    nbl = ant1.shape[0]
    out = np.empty((nt, nbl, 3), dtype=np.float64)
    for t in range(nt):
        for b in range(nbl):
            i = ant1[b]
            j = ant2[b]
            bx = antpos[j, 0] - antpos[i, 0]
            by = antpos[j, 1] - antpos[i, 1]
            bz = antpos[j, 2] - antpos[i, 2]
            for k in range(3):
                out[t, b, k] = rot[t, k, 0] * bx + rot[t, k, 1] * by + rot[t, k, 2] * bz
    return out


@numba.njit(nogil=True, cache=True)
def delta_w_kernel(w_new_dir, w_old_dir, antpos, ant1, ant2):
    """dw (ntime, nbl) float64 = b . (w_new_dir[t] - w_old_dir[t]), metres.

    w_new_dir, w_old_dir (ntime, 3): unit vectors of the new/old phase centres in ECEF axes.
    """
    nt = w_new_dir.shape[0]
    nbl = ant1.shape[0]
    out = np.empty((nt, nbl), dtype=np.float64)
    for t in range(nt):
        dx = w_new_dir[t, 0] - w_old_dir[t, 0]
        dy = w_new_dir[t, 1] - w_old_dir[t, 1]
        dz = w_new_dir[t, 2] - w_old_dir[t, 2]
        for b in range(nbl):
            i = ant1[b]
            j = ant2[b]
            out[t, b] = (
                (antpos[j, 0] - antpos[i, 0]) * dx
                + (antpos[j, 1] - antpos[i, 1]) * dy
                + (antpos[j, 2] - antpos[i, 2]) * dz
            )
    return out


@numba.njit(nogil=True, cache=True)
def rotate_kernel(vis, dw, freq, conjugate):
    """Phase-rotate visibilities to a new phase centre.

    vis (ntime, nbl, nfreq, npol) complex64/128; dw (ntime, nbl) float64 metres (w_new - w_old);
    freq (nfreq,) float64 Hz; conjugate (bool). Returns vis * exp(-2j pi freq dw / c), complex
    conjugated if ``conjugate`` (the MS convention), same dtype, phases in float64.
    """
    sgn = -1.0 if conjugate else 1.0
    nt, nbl, nf, npol = vis.shape
    out = np.empty_like(vis)
    k = -2.0 * np.pi / SPEED_OF_LIGHT
    for t in range(nt):
        for b in range(nbl):
            d = k * dw[t, b]
            for f in range(nf):
                ph = d * freq[f]
                c = np.cos(ph)
                s = np.sin(ph)
                for p in range(npol):
                    v = vis[t, b, f, p]
                    re = v.real * c - v.imag * s
                    im = v.real * s + v.imag * c
                    out[t, b, f, p] = re + 1j * (sgn * im)
    return out


@numba.njit(nogil=True, cache=True)
def rotate_block_kernel(vis, dw, freq, flip, uniform, data_out):
    """DATA of one block: ``data_out <- conj(vis * exp(-2j pi freq dw / c))``, channels ascending.

    vis : (nt, nbl, nf, npol) complex64   visibilities, channels in file order
    dw : (nt, nbl) float64                w_new - w_old, metres
    freq : (nf,) float64                  channel frequencies, Hz, ascending (output order)
    flip : bool                           input channels descend (output channel f is input nf-1-f)
    uniform : bool                        ``freq`` is evenly spaced (phases by recurrence)
    data_out : (nt, nbl, nf, npol) complex64

    Phases are computed in float64 (with ``uniform``: the phasor of channel f is the phasor of
    channel 0 times the channel step's phasor f times, ~1e-15 rad of rounding over a subband;
    else sin/cos per channel); the rotation itself is done in float32, the data's precision
    (relative error ~1e-7). Reversed channels (``flip``) are ~2x slower than ascending ones:
    :meth:`dsacont.io.uvh5_backend.SubbandReader.read` can reverse them while gathering instead.
    """
    nt, nbl, nf, npol = vis.shape
    m = nf * npol
    k = -2.0 * np.pi / SPEED_OF_LIGHT
    df = freq[1] - freq[0] if nf > 1 else 0.0
    cr = np.empty(m, np.float32)
    ci = np.empty(m, np.float32)
    # one row (baseline of one integration) = m contiguous (channel, pol) items
    vr = vis.reshape(nt * nbl, m).view(np.float32)
    dr = data_out.reshape(nt * nbl, m).view(np.float32)
    for row in range(nt * nbl):
        t = row // nbl
        b = row - t * nbl
        d = k * dw[t, b]
        c = np.cos(d * freq[0])
        s = np.sin(d * freq[0])
        cs = np.cos(d * df)
        ss = np.sin(d * df)
        for f in range(nf):
            if f > 0:
                if uniform:
                    cn = c * cs - s * ss
                    s = c * ss + s * cs
                    c = cn
                else:
                    c = np.cos(d * freq[f])
                    s = np.sin(d * freq[f])
            for p in range(npol):
                cr[f * npol + p] = c
                ci[f * npol + p] = s
        vrow = vr[row]
        drow = dr[row]
        if flip:
            for f in range(nf):
                for p in range(npol):
                    j = f * npol + p
                    i = (nf - 1 - f) * npol + p
                    drow[2 * j] = vrow[2 * i] * cr[j] - vrow[2 * i + 1] * ci[j]
                    drow[2 * j + 1] = -(vrow[2 * i] * ci[j] + vrow[2 * i + 1] * cr[j])
        else:
            for j in range(m):
                x = vrow[2 * j]
                y = vrow[2 * j + 1]
                drow[2 * j] = x * cr[j] - y * ci[j]
                drow[2 * j + 1] = -(x * ci[j] + y * cr[j])
    return data_out


@numba.njit(nogil=True, cache=True)
def flag_weight_kernel(ns, fl, flip, flag_out, weight_out, sigma_out):
    """FLAG, WEIGHT and SIGMA of one block.

    ns : (nt, nbl, nf, npol) float32   nsamples, channels in file order
    fl : (nt, nbl, nf, npol) bool      the files' flags, same order
    flip : bool                        input channels descend
    flag_out : (nt, nbl, nf, npol) bool           <- fl | (ns == 0), channels ascending
    weight_out, sigma_out : (nt, nbl, npol) float32 <- channel-mean nsamples; 1/sqrt(weight) (0 if 0)
    """
    nt, nbl, nf, npol = ns.shape
    m = nf * npol
    n2 = ns.reshape(nt * nbl, m)
    fl2 = fl.reshape(nt * nbl, m).view(np.uint8)
    fo2 = flag_out.reshape(nt * nbl, m).view(np.uint8)
    for row in range(nt * nbl):
        t = row // nbl
        b = row - t * nbl
        nrow = n2[row]
        frow = fl2[row]
        orow = fo2[row]
        if flip:
            for f in range(nf):
                for p in range(npol):
                    i = (nf - 1 - f) * npol + p
                    orow[f * npol + p] = frow[i] | (nrow[i] == 0)
        else:
            for j in range(m):
                orow[j] = frow[j] | (nrow[j] == 0)
        for p in range(npol):
            acc = 0.0
            for f in range(nf):
                acc += nrow[f * npol + p]
            w = np.float32(acc / nf)
            weight_out[t, b, p] = w
            sigma_out[t, b, p] = np.float32(1.0) / np.sqrt(w) if w > 0 else np.float32(0.0)
    return flag_out
