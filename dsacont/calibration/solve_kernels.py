"""numba kernels of the fast calibration solve (arrays in, arrays out; wrapped by
:mod:`dsacont.calibration.fastsolve`).

Measurement-equation convention (CASA's, and the MS's): ``V_ij = g_i conj(g_j) M_ij`` for the row
with ANTENNA1 = i, ANTENNA2 = j. The data enter the solve only through three sums per antenna pair
(over the time or channel axis being averaged), with the known part of the gains ``k`` folded into
the model, ``M'_ij = k_i conj(k_j) M_ij``::

    A_ij  = sum w V_ij conj(M'_ij)      (complex; per baseline i-j, the other order is conj(A_ij))
    C_ij  = sum w |M'_ij|^2

which are exactly what the weighted least-squares problem ``min sum w |V - g_i conj(g_j) M'|^2``
needs (its normal equations use ``A`` and ``C`` only). ``A / C`` is the model-divided visibility
averaged with weight ``C``: what "phase to the calibrator and average" gives, with the drifting
beam (in ``M``) honoured. The errors follow CASA's solver (``VisCalSolver::getErrors``): the
chi-squared of the averaged visibilities, ``sum_{i<j} |A|^2 / C - 2 Re(conj(g_i conj(g_j)) A) +
|g_i g_j|^2 C``, over 2 (n_vis - n_ant) real degrees of freedom, so the SNRs (and the
``minsnr`` cut and the SNR gate) mean what they meant with CASA.
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(nogil=True, cache=True)
def _flag_autocorr_and_zeros(data, flag, a1, a2):
    """Flag autocorrelations and exact zeros in place (what ``flagdata`` autocorr + clipzeros do).

    data (npol, nchan, nrow) complex64; flag (npol, nchan, nrow) bool, modified; a1, a2 (nrow,)
    int. Returns the number of flags newly set.
    """
    npol, nchan, nrow = data.shape
    n = 0
    for r in range(nrow):
        auto = a1[r] == a2[r]
        for c in range(nchan):
            for p in range(npol):
                if flag[p, c, r]:
                    continue
                v = data[p, c, r]
                if auto or (v.real == 0.0 and v.imag == 0.0):
                    flag[p, c, r] = True
                    n += 1
    return n


@numba.njit(nogil=True, cache=True)
def _sum_over_time(data, model, flag, weight, blidx, tidx, a1, a2, k, nbl):
    """Per baseline, channel and polarisation: the sums over all rows (integrations) of one SPW.

    data, model (npol, nchan, nrow) complex64; flag (npol, nchan, nrow) bool; weight (npol, nrow)
    float32; blidx (nrow,) baseline index in [0, nbl) (-1: autocorrelation, skipped); tidx (nrow,)
    integration index into ``k``; a1, a2 (nrow,) antenna ids; k (ntime, nant, npol) complex128,
    the known gains per integration (ones for none; 0 for a flagged one, whose rows are left out).
    Returns ``A`` (nbl, nchan, npol) complex128 and ``C`` (nbl, nchan, npol) float64.
    """
    npol, nchan, nrow = data.shape
    A = np.zeros((nbl, nchan, npol), dtype=np.complex128)
    C = np.zeros((nbl, nchan, npol), dtype=np.float64)
    for r in range(nrow):
        b = blidx[r]
        if b < 0:
            continue
        i = a1[r]
        j = a2[r]
        t = tidx[r]
        for p in range(npol):
            w = weight[p, r]
            if not w > 0.0:
                continue
            kk = k[t, i, p] * np.conj(k[t, j, p])
            if kk.real == 0.0 and kk.imag == 0.0:  # a flagged known gain flags the row
                continue
            for c in range(nchan):
                if flag[p, c, r]:
                    continue
                m = model[p, c, r] * kk
                A[b, c, p] += w * (data[p, c, r] * np.conj(m))
                C[b, c, p] += w * (m.real * m.real + m.imag * m.imag)
    return A, C


@numba.njit(nogil=True, cache=True)
def _sum_over_channels(data, model, flag, weight, blidx, bidx, nbin, a1, a2, h, nbl):
    """Per solution interval, baseline and polarisation: the sums over channels and the rows of
    the interval.

    As :func:`_sum_over_time`, but the known gains are per channel, h (nchan, nant, npol)
    complex128 (the bandpass, or ones; 0 leaves the sample out), and the sums are per interval:
    bidx (nrow,) int in [0, nbin). Returns ``A`` (nbin, nbl, npol) complex128 and ``C`` float64
    of the same shape.
    """
    npol, nchan, nrow = data.shape
    A = np.zeros((nbin, nbl, npol), dtype=np.complex128)
    C = np.zeros((nbin, nbl, npol), dtype=np.float64)
    for r in range(nrow):
        b = blidx[r]
        t = bidx[r]
        if b < 0 or t < 0:
            continue
        i = a1[r]
        j = a2[r]
        for p in range(npol):
            w = weight[p, r]
            if not w > 0.0:
                continue
            xa = 0.0 + 0.0j
            ca = 0.0
            for c in range(nchan):
                if flag[p, c, r]:
                    continue
                hh = h[c, i, p] * np.conj(h[c, j, p])
                if hh.real == 0.0 and hh.imag == 0.0:  # a flagged known gain flags the sample
                    continue
                m = model[p, c, r] * hh
                xa += data[p, c, r] * np.conj(m)
                ca += m.real * m.real + m.imag * m.imag
            A[t, b, p] += w * xa
            C[t, b, p] += w * ca
    return A, C


@numba.njit(nogil=True, cache=True)
def _stefcal(A, C, bl_a1, bl_a2, nant, min_bl, maxiter, tol):
    """Weighted StEFCal (Salvini & Wijnholds 2014) on a batch of independent problems.

    A (nsol, nbl) complex128 and C (nsol, nbl) float64: the sums of the module docstring per
    baseline ``bl_a1[b] < bl_a2[b]`` (antenna ids < ``nant``) for each solution. An antenna takes
    part when it has at least ``min_bl`` partners with data (CASA's ``minblperant``), decided
    iteratively. Iterates ``g_i <- sum_j A_ij g_j / sum_j C_ij |g_j|^2`` (averaging every
    second step) until the relative change is below ``tol`` or ``maxiter`` steps.

    Returns
    -------
    g : (nsol, nant) complex128, 0 where not solved (phase not referenced)
    err : (nsol, nant) float64, CASA's parameter error sqrt(2 k2 / sum_j C_ij |g_j|^2), with
        k2 = chi^2 / (2 (n_vis - n_ant)) from the averaged visibilities (module docstring;
        measured against CASA 6.7's own PARAMERR on the same data: equal to ~3 %)
    ok : (nsol, nant) bool, solved
    niter : (nsol,) int64 iterations used
    """
    nsol, nbl = A.shape
    g = np.zeros((nsol, nant), dtype=np.complex128)
    err = np.zeros((nsol, nant), dtype=np.float64)
    ok = np.zeros((nsol, nant), dtype=np.bool_)
    niter = np.zeros(nsol, dtype=np.int64)
    use = np.zeros(nant, dtype=np.bool_)
    nb = np.zeros(nant, dtype=np.int64)
    g0 = np.zeros(nant, dtype=np.complex128)
    num = np.zeros(nant, dtype=np.complex128)
    den = np.zeros(nant, dtype=np.float64)
    for s in range(nsol):
        for i in range(nant):
            use[i] = True
        changed = True
        while changed:  # antennas with too few partners (among the antennas still in) drop out
            changed = False
            nb[:] = 0
            for b in range(nbl):
                i = bl_a1[b]
                j = bl_a2[b]
                if C[s, b] > 0.0 and use[i] and use[j]:
                    nb[i] += 1
                    nb[j] += 1
            for i in range(nant):
                if use[i] and nb[i] < min_bl:
                    use[i] = False
                    changed = True
        nuse = 0
        for i in range(nant):
            if use[i]:
                nuse += 1
        if nuse < 2:
            continue
        for i in range(nant):
            g0[i] = 1.0 if use[i] else 0.0
        for it in range(maxiter):
            num[:] = 0.0
            den[:] = 0.0
            for b in range(nbl):
                c = C[s, b]
                if not c > 0.0:
                    continue
                i = bl_a1[b]
                j = bl_a2[b]
                if not (use[i] and use[j]):
                    continue
                a = A[s, b]
                gi = g0[i]
                gj = g0[j]
                num[i] += a * gj
                num[j] += np.conj(a) * gi
                den[i] += c * (gj.real * gj.real + gj.imag * gj.imag)
                den[j] += c * (gi.real * gi.real + gi.imag * gi.imag)
            dn = 0.0
            nn = 0.0
            for i in range(nant):
                if not use[i]:
                    continue
                gn = num[i] / den[i] if den[i] > 0.0 else 0.0
                if it % 2 == 1:
                    gn = 0.5 * (gn + g0[i])
                d = gn - g0[i]
                dn += d.real * d.real + d.imag * d.imag
                nn += gn.real * gn.real + gn.imag * gn.imag
                g0[i] = gn
            niter[s] = it + 1
            if nn > 0.0 and dn <= tol * tol * nn and it > 0:
                break
        # chi-squared of the averaged visibilities; the Hessian diagonal at the solution
        x2 = 0.0
        nv = 0
        den[:] = 0.0
        for b in range(nbl):
            c = C[s, b]
            i = bl_a1[b]
            j = bl_a2[b]
            if not (c > 0.0 and use[i] and use[j]):
                continue
            a = A[s, b]
            gi = g0[i]
            gj = g0[j]
            gg = gi * np.conj(gj)
            x2 += (a.real * a.real + a.imag * a.imag) / c - 2.0 * (np.conj(gg) * a).real \
                + (gg.real * gg.real + gg.imag * gg.imag) * c
            nv += 1
            den[i] += c * (gj.real * gj.real + gj.imag * gj.imag)
            den[j] += c * (gi.real * gi.real + gi.imag * gi.imag)
        dof = nv - nuse
        k2 = max(x2, 0.0) / (2.0 * dof) if dof > 0 else 0.0
        for i in range(nant):
            if not use[i]:
                continue
            g[s, i] = g0[i]
            ok[s, i] = den[i] > 0.0 and (g0[i].real != 0.0 or g0[i].imag != 0.0)
            err[s, i] = np.sqrt(2.0 * k2 / den[i]) if den[i] > 0.0 else 0.0
    return g, err, ok, niter
