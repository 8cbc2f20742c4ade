"""The numba kernels of dsacont's own apply: gain interpolation in time and the division by the gains.

Small and pure (``@numba.njit(nogil=True, cache=True)``, arrays in, arrays out); the wrapper that
reads the caltables and the Measurement Set and writes CORRECTED_DATA is
:func:`dsacont.calibration.apply.apply_calibration` (``engine="dsacont"``).

Conventions: solutions are per (solution time, antenna, receptor) for a gain table (G) and per
(antenna, channel, receptor) for a bandpass (B), complex; True flags = bad. Data are in the
casatools layout (correlation, channel, row).
"""
from __future__ import annotations

import math

import numba
import numpy as np

# solution and data times closer than this are the same time (s): a solution's TIME is the mean
# of its integrations' times, equal to one of them up to rounding
TIME_TOL_S = 1e-3


@numba.njit(nogil=True, cache=True)
def _interp_amp_phase(g0, g1, w):
    """``g0`` to ``g1`` at fraction ``w``: amplitude linear, phase linear the shorter way round."""
    p0 = math.atan2(g0.imag, g0.real)
    dp = math.atan2(g1.imag, g1.real) - p0
    if dp > math.pi:
        dp -= 2 * math.pi
    elif dp < -math.pi:
        dp += 2 * math.pi
    amp = abs(g0) + w * (abs(g1) - abs(g0))
    ph = p0 + w * dp
    return amp * complex(math.cos(ph), math.sin(ph))


@numba.njit(nogil=True, cache=True)
def interp_gains_linear(sol_times, sol, sol_flag, times):
    """Gains at ``times``: amplitude and phase linear in time between the bracketing solutions.

    As CASA applycal's ``interp='linear'`` for a G table (checked against it in
    tests/calibration/test_apply.py): for each antenna and receptor, a time between solutions k
    and k + 1 (k the last solution at or before it) gets the amplitude and the phase (the
    shorter way round) interpolated separately, and is flagged if either of the two is flagged
    (flagged solutions are not bridged); before the first or after the last solution, that
    solution is held, with its flag.

    Parameters
    ----------
    sol_times : numpy.ndarray of float64, shape (Ns,)
        Solution times (MS seconds), ascending.
    sol : numpy.ndarray of complex, shape (Ns, Na, Nr)
        Solutions.
    sol_flag : numpy.ndarray of bool, shape (Ns, Na, Nr)
        Their flags.
    times : numpy.ndarray of float64, shape (Nt,)
        Times wanted (MS seconds).

    Returns
    -------
    gains : numpy.ndarray of complex128, shape (Nt, Na, Nr)
        1 where flagged.
    flags : numpy.ndarray of bool, shape (Nt, Na, Nr)
    """
    ns, na, nr = sol.shape
    nt = times.shape[0]
    out = np.ones((nt, na, nr), dtype=np.complex128)
    oflag = np.ones((nt, na, nr), dtype=np.bool_)
    if ns == 0:
        return out, oflag
    for t in range(nt):
        x = times[t]
        # the bracketing solutions k0 <= k1 and the weight of k1
        if ns == 1 or x <= sol_times[0] + TIME_TOL_S:
            k0, k1, w = 0, 0, 0.0
        elif x >= sol_times[ns - 1] - TIME_TOL_S:
            k0, k1, w = ns - 1, ns - 1, 0.0
        else:
            k0 = 0
            while k0 + 1 < ns - 1 and sol_times[k0 + 1] <= x + TIME_TOL_S:
                k0 += 1
            k1 = k0 + 1
            w = max(0.0, (x - sol_times[k0]) / (sol_times[k1] - sol_times[k0]))
        for a in range(na):
            for r in range(nr):
                if sol_flag[k0, a, r] or sol_flag[k1, a, r]:
                    continue
                oflag[t, a, r] = False
                g0 = np.complex128(sol[k0, a, r])
                if k1 == k0 or w == 0.0:
                    out[t, a, r] = g0
                    continue
                out[t, a, r] = _interp_amp_phase(g0, np.complex128(sol[k1, a, r]), w)
    return out, oflag


@numba.njit(nogil=True, cache=True)
def apply_jones(data, flag, tidx, ant1, ant2, corr_rec, jones, jflag):
    """Divide visibilities by the antenna terms: V_ij(f) / (J_i(f) conj(J_j(f))), per correlation.

    Parameters
    ----------
    data : numpy.ndarray of complex64, shape (Nc, Nf, Nrow)
        DATA (casatools layout).
    flag : numpy.ndarray of bool, shape (Nc, Nf, Nrow)
        FLAG.
    tidx : numpy.ndarray of int64, shape (Nrow,)
        Each row's index into ``jones``' time axis.
    ant1, ant2 : numpy.ndarray of int, shape (Nrow,)
        Antennas of each row.
    corr_rec : numpy.ndarray of int64, shape (Nc, 2)
        Receptors (0 = X, 1 = Y) of each correlation: XX -> (0, 0), YY -> (1, 1).
    jones : numpy.ndarray of complex128, shape (Nt, Na, Nf, Nr)
        The product of every table's term (gain x bandpass) per time, antenna, channel, receptor.
    jflag : numpy.ndarray of bool, shape (Nt, Na, Nf, Nr)
        True where any table's solution is flagged.

    Returns
    -------
    corrected : numpy.ndarray of complex64, shape (Nc, Nf, Nrow), Fortran order
        The calibrated visibilities (DATA where a solution is flagged).
    flags : numpy.ndarray of bool, shape (Nc, Nf, Nrow), Fortran order
        FLAG OR-ed with the flags of the solutions used (``applymode='calflag'``).
    """
    nc, nf, nrow = data.shape
    # correlation fastest, as casatools' getcol returns them (Fortran order)
    out_t = np.empty((nrow, nf, nc), dtype=np.complex64)
    oflag_t = np.empty((nrow, nf, nc), dtype=np.bool_)
    for row in range(nrow):
        t = tidx[row]
        i = ant1[row]
        j = ant2[row]
        for f in range(nf):
            for c in range(nc):
                ri = corr_rec[c, 0]
                rj = corr_rec[c, 1]
                bad = jflag[t, i, f, ri] or jflag[t, j, f, rj]
                v = data[c, f, row]
                if bad:
                    out_t[row, f, c] = v
                else:
                    out_t[row, f, c] = v / (jones[t, i, f, ri] * np.conj(jones[t, j, f, rj]))
                oflag_t[row, f, c] = flag[c, f, row] or bad
    return out_t.T, oflag_t.T


@numba.njit(nogil=True, cache=True)
def fill_flagged_channels(freqs, sol, sol_flag):
    """Bridge flagged channels of channelised solutions, as applycal's linear frequency interpolation.

    For each solution time, antenna and receptor, a flagged channel takes the amplitude and the
    phase (the shorter way round) interpolated linearly in frequency between the nearest
    unflagged channels on either side, or the nearest unflagged channel's value beyond the last
    one; it is then unflagged. A series with no unflagged channel stays flagged.

    Parameters
    ----------
    freqs : numpy.ndarray of float64, shape (Nc,)
        Channel frequencies (Hz), monotonic.
    sol : numpy.ndarray of complex, shape (Ns, Na, Nr, Nc)
    sol_flag : numpy.ndarray of bool, shape (Ns, Na, Nr, Nc)

    Returns
    -------
    (numpy.ndarray of complex128, numpy.ndarray of bool), shapes as the inputs
    """
    ns, na, nr, nc = sol.shape
    out = sol.astype(np.complex128)
    oflag = sol_flag.copy()
    for s in range(ns):
        for a in range(na):
            for r in range(nr):
                prev = -1
                for c in range(nc + 1):
                    if c < nc and sol_flag[s, a, r, c]:
                        continue
                    # channels prev+1 .. c-1 are flagged; prev and c (if < nc) are not
                    for q in range(prev + 1, c):
                        if prev < 0 and c >= nc:
                            break
                        if prev < 0:
                            out[s, a, r, q] = out[s, a, r, c]
                        elif c >= nc:
                            out[s, a, r, q] = out[s, a, r, prev]
                        else:
                            w = (freqs[q] - freqs[prev]) / (freqs[c] - freqs[prev])
                            out[s, a, r, q] = _interp_amp_phase(out[s, a, r, prev], out[s, a, r, c], w)
                        oflag[s, a, r, q] = False
                    prev = c
    return out, oflag
