"""The flagger's kernels as they were before the speed-up (commit 4a131e7), kept verbatim as the reference.

Only the kernels the speed-up changed, and those that call them, are copied here; the ones it left
as they were (with all they call) are imported from :mod:`dsacont.flagging.kernels`.

``tests/flagging/test_reference.py`` checks that :mod:`dsacont.flagging.kernels` gives the same
flags as these on simulated data, and ``benchmarks/flag.py`` times both in the same run. Not used
by the library.

Every kernel is ``@numba.njit(nogil=True, cache=True)``: arrays in, arrays out, no Python objects,
the GIL released (so blocks run in parallel threads). The per-plane kernels work on one
(time, frequency) plane of one baseline and polarisation, shape (Nt, Nf); :func:`flag_block_kernel`
runs them over every plane of a block of baselines, shape (Nt, Nb, Nf, Np), and adds the
across-baseline detectors. The algorithm is described in :mod:`dsacont.flagging`; the wrappers that
map these kernels over a Dataset, an in-memory cube or a Measurement Set are in
:mod:`dsacont.flagging.blocks` and :mod:`dsacont.flagging.ms`.

Conventions: amplitudes |V| in data units (float32 or float64), flags bool with True = bad,
thresholds in robust sigma units, frequencies ascending.
"""
from __future__ import annotations

import math

import numba
import numpy as np

# the kernels the speed-up left as they were, and everything they call: the library's own
from dsacont.flagging.kernels import (  # noqa: F401
    _fill_nan,
    _sumthreshold_cols,
    _sumthreshold_line,
    dilate,
    extend_fraction,
    flag_invalid,
)

# ---------------------------------------------------------------------------------------------
# kernels: one (time, frequency) plane, float32/float64 in, bool/float out
# ---------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def _select_inplace(buf, lo, hi, k):
    """k-th smallest of buf[lo:hi] (in-place quickselect, Hoare partition); returns the value."""
    while hi - lo > 16:
        mid = (lo + hi - 1) // 2
        # median of three as pivot
        a, b, c = buf[lo], buf[mid], buf[hi - 1]
        if a > b:
            a, b = b, a
        if b > c:
            b = c
            if a > b:
                b = a
        pivot = b
        i, j = lo, hi - 1
        while i <= j:
            while buf[i] < pivot:
                i += 1
            while buf[j] > pivot:
                j -= 1
            if i <= j:
                buf[i], buf[j] = buf[j], buf[i]
                i += 1
                j -= 1
        if k <= j:
            hi = j + 1
        elif k >= i:
            lo = i
        else:
            return buf[k]
    # insertion sort of the short remainder
    for i in range(lo + 1, hi):
        v = buf[i]
        j = i - 1
        while j >= lo and buf[j] > v:
            buf[j + 1] = buf[j]
            j -= 1
        buf[j + 1] = v
    return buf[k]


@numba.njit(nogil=True, cache=True)
def _median_buf(buf, n):
    """Median of buf[:n] (reorders buf in place); NaN when n == 0. No allocation."""
    if n == 0:
        return np.nan
    h = n // 2
    upper = _select_inplace(buf, 0, n, h)
    if n % 2 == 1:
        return upper
    # the lower middle is the largest of buf[:h] after the selection
    lower = buf[0]
    for i in range(1, h):
        if buf[i] > lower:
            lower = buf[i]
    return 0.5 * (lower + upper)


@numba.njit(nogil=True, cache=True)
def running_median(x, window, exclude_center=False):
    """Compute the running median of a 1-D series over ``window`` samples, NaN entries ignored.

    Parameters
    ----------
    x : numpy.ndarray of float, shape (N,)
        The series (NaN = missing).
    window : int
        Window length in samples (odd); truncated at the edges (centred where possible).
    exclude_center : bool
        Leave the sample itself out (a leave-one-out background: never exactly equal to it).

    Returns
    -------
    numpy.ndarray of float64, shape (N,)
        NaN where the whole window is NaN.
    """
    n = x.shape[0]
    out = np.empty(n, dtype=np.float64)
    half = window // 2
    buf = np.empty(window, dtype=np.float64)
    for i in range(n):
        lo = max(0, i - half)
        hi = min(n, i + half + 1)
        k = 0
        for j in range(lo, hi):
            v = x[j]
            if exclude_center and j == i:
                continue
            if np.isfinite(v):
                buf[k] = v
                k += 1
        out[i] = _median_buf(buf, k)
    return out


@numba.njit(nogil=True, cache=True)
def running_trend(x, window):
    """Local robust straight-line fit of a 1-D series, evaluated at each sample.

    For each i, the finite samples within ``window // 2`` of i give a Theil-Sen line (median of
    pairwise slopes, then median intercept), evaluated at i. Unlike a running median it follows
    a linear trend across gaps (flagged bursts) and at the ends, and ignores outliers up to ~29 %
    of the window.

    Parameters
    ----------
    x : numpy.ndarray of float, shape (N,)
        The series (NaN = missing).
    window : int
        Window length in samples.

    Returns
    -------
    numpy.ndarray of float64, shape (N,)
        NaN where the window holds no finite sample.
    """
    n = x.shape[0]
    half = window // 2
    out = np.empty(n, dtype=np.float64)
    slopes = np.empty(window * window, dtype=np.float64)
    vals = np.empty(window, dtype=np.float64)
    idx = np.empty(window, dtype=np.int64)
    for i in range(n):
        k = 0
        for j in range(max(0, i - half), min(n, i + half + 1)):
            if np.isfinite(x[j]):
                idx[k] = j
                vals[k] = x[j]
                k += 1
        if k == 0:
            out[i] = np.nan
            continue
        if k < 3:
            out[i] = _median_buf(vals, k)
            continue
        m = 0
        for a in range(k):
            for b in range(a + 1, k):
                slopes[m] = (vals[b] - vals[a]) / (idx[b] - idx[a])
                m += 1
        slope = _median_buf(slopes, m)
        for a in range(k):
            vals[a] = vals[a] - slope * (idx[a] - i)
        out[i] = _median_buf(vals, k)
    return out


@numba.njit(nogil=True, cache=True)
def channel_medians(amp, flags):
    """Median over time of each channel's unflagged samples: the raw spectrum s(f).

    Shared by :func:`background_spec`, :func:`flag_plane_spec` and
    :func:`spectral_residual_spec`.

    Parameters
    ----------
    amp : numpy.ndarray of float, shape (Nt, Nf)
        Amplitudes |V|.
    flags : numpy.ndarray of bool, shape (Nt, Nf)
        Samples to leave out.

    Returns
    -------
    numpy.ndarray of float64, shape (Nf,)
        NaN for a channel with no unflagged sample.
    """
    nt, nf = amp.shape
    buf = np.empty(nt, dtype=np.float64)
    spec = np.empty(nf, dtype=np.float64)
    for f in range(nf):
        k = 0
        for t in range(nt):
            if not flags[t, f]:
                buf[k] = amp[t, f]
                k += 1
        spec[f] = _median_buf(buf, k)
    return spec


@numba.njit(nogil=True, cache=True)
def background(amp, flags, freq_window, time_window):
    """Smooth background B(t, f) = s(f) * r(t) of an amplitude plane, ignoring flagged samples.

    s(f): median over time of each channel, then a running median over ``freq_window`` channels
    (1 = none). r(t): median over frequency of amp/s, then a local robust line fit over
    ``time_window`` integrations (:func:`running_trend`: follows the drift of a source through
    the beam across flagged bursts) after dropping values > 5 sigma off a running median.

    Parameters
    ----------
    amp : numpy.ndarray of float, shape (Nt, Nf)
        Amplitudes |V|.
    flags : numpy.ndarray of bool, shape (Nt, Nf)
        Samples left out of every median.
    freq_window : int
        Running-median window along frequency (channels); 1 = per channel.
    time_window : int
        Window along time (integrations); 1 = no smoothing.

    Returns
    -------
    numpy.ndarray of float64, shape (Nt, Nf)
        NaN-free; 1.0 where nothing is known.
    """
    return background_spec(amp, flags, channel_medians(amp, flags), freq_window, time_window)


@numba.njit(nogil=True, cache=True)
def background_spec(amp, flags, spec0, freq_window, time_window):
    """:func:`background` with the raw spectrum given.

    Parameters
    ----------
    amp, flags, freq_window, time_window
        As :func:`background`.
    spec0 : numpy.ndarray of float64, shape (Nf,)
        ``channel_medians(amp, flags)`` (or a copy with channels set to NaN = unknown).

    Returns
    -------
    numpy.ndarray of float64, shape (Nt, Nf)
    """
    nt, nf = amp.shape
    buf = np.empty(max(nt, nf), dtype=np.float64)
    spec = spec0.copy()
    if freq_window > 1:
        spec = running_median(spec, freq_window)
    # fill unknown channels with the overall median of the known ones
    k = 0
    for f in range(nf):
        if np.isfinite(spec[f]) and spec[f] > 0:
            buf[k] = spec[f]
            k += 1
    fill = _median_buf(buf, k)
    if not np.isfinite(fill):
        fill = 1.0
    for f in range(nf):
        if not (np.isfinite(spec[f]) and spec[f] > 0):
            spec[f] = fill
    rt = np.empty(nt, dtype=np.float64)
    for t in range(nt):
        k = 0
        for f in range(nf):
            if not flags[t, f]:
                buf[k] = amp[t, f] / spec[f]
                k += 1
        rt[t] = _median_buf(buf, k)
    if time_window > 1:
        # outliers (bursts not yet flagged) off first, then a local robust line
        rm = running_median(rt, time_window)
        dev = np.empty((1, nt), dtype=np.float64)
        nod = np.zeros((1, nt), dtype=np.bool_)
        for t in range(nt):
            dev[0, t] = rt[t] - rm[t]
            nod[0, t] = not np.isfinite(dev[0, t])
        _, sd = robust_sigma(dev, nod)
        if np.isfinite(sd):
            for t in range(nt):
                if not nod[0, t] and abs(dev[0, t]) > 5.0 * sd:
                    rt[t] = np.nan
        rt = running_trend(rt, time_window)
    _fill_nan(rt, 1.0)
    out = np.empty((nt, nf), dtype=np.float64)
    for t in range(nt):
        for f in range(nf):
            out[t, f] = spec[f] * rt[t]
    return out


@numba.njit(nogil=True, cache=True)
def robust_sigma(x, flags, max_samples=8192):
    """Median and 1.4826 x median absolute deviation of the unflagged finite samples.

    Parameters
    ----------
    x : numpy.ndarray of float, shape (Nt, Nf)
        Values (any unit).
    flags : numpy.ndarray of bool, shape (Nt, Nf)
        Samples to leave out.
    max_samples : int
        Planes with more samples are subsampled with a regular stride (plenty for a robust scale).

    Returns
    -------
    (float, float)
        (median, sigma) in the unit of ``x``; (0.0, NaN) when no sample is usable.
    """
    nt, nf = x.shape
    n = nt * nf
    stride = max(1, n // max_samples)
    buf = np.empty(n // stride + 1, dtype=np.float64)
    k = 0
    for i in range(0, n, stride):
        t = i // nf
        f = i - t * nf
        v = x[t, f]
        if not flags[t, f] and np.isfinite(v):
            buf[k] = v
            k += 1
    if k == 0:
        return 0.0, np.nan
    med = _median_buf(buf, k)
    for i in range(k):
        buf[i] = abs(buf[i] - med)
    return med, 1.4826 * _median_buf(buf, k)


@numba.njit(nogil=True, cache=True)
def _sumthreshold_rows(z, cur, m, thr):
    """Run one SumThreshold window size along the last axis (frequency) of z.

    z: (Nr, N) float; ``cur`` (Nr, N) bool is updated in place with the hits found using the
    flags as they were before this call.
    """
    nr, n = z.shape
    if m > n:
        return
    line = np.empty(n, dtype=np.bool_)
    for r in range(nr):
        for i in range(n):
            line[i] = cur[r, i]
        _sumthreshold_line(z[r], line, cur[r], m, thr)


@numba.njit(nogil=True, cache=True)
def sumthreshold(z, flags, chi1, rho, max_window, time_direction, freq_direction):
    """SumThreshold (Offringa et al. 2010, MNRAS 405, 155) on a plane of residuals.

    Windows M = 1, 2, 4, ... <= ``max_window`` with threshold chi_M = chi1 / rho**log2(M); for each
    M the time direction, then the frequency direction. Samples already flagged count as chi_M
    inside a window, never as data. Positive excursions only (RFI adds power).

    Parameters
    ----------
    z : numpy.ndarray of float, shape (Nt, Nf)
        Residual in sigma units (positive = excess power).
    flags : numpy.ndarray of bool, shape (Nt, Nf)
        Samples already flagged.
    chi1 : float
        Threshold of a single sample (sigma).
    rho : float
        Threshold decay per doubling of the window.
    max_window : int
        Largest window (samples).
    time_direction, freq_direction : bool
        Run windows along time (integrations) / along frequency (channels).

    Returns
    -------
    numpy.ndarray of bool, shape (Nt, Nf)
        The new flags, including ``flags``.
    """
    cur = flags.copy()
    m = 1
    while m <= max_window:
        thr = chi1 / rho ** (math.log(m) / math.log(2.0))
        if time_direction:
            _sumthreshold_cols(z, cur, m, thr)
        if freq_direction:
            _sumthreshold_rows(z, cur, m, thr)
        m *= 2
    return cur


@numba.njit(nogil=True, cache=True)
def masked_box_smooth(x, flags, half_t, half_f):
    """Mean of the unflagged samples in a box around each sample, by running sums (O(1) each).

    Parameters
    ----------
    x : numpy.ndarray of float, shape (Nt, Nf)
    flags : numpy.ndarray of bool, shape (Nt, Nf)
        Samples left out (non-finite ones are left out too).
    half_t, half_f : int
        Half-widths of the (2 half_t + 1) x (2 half_f + 1) box, in integrations and channels;
        truncated at the edges.

    Returns
    -------
    numpy.ndarray of float64, shape (Nt, Nf)
        0 where the box holds no unflagged sample.
    """
    nt, nf = x.shape
    # pass 1: along frequency
    sf = np.zeros((nt, nf), dtype=np.float64)
    wf = np.zeros((nt, nf), dtype=np.float64)
    for t in range(nt):
        cs = np.zeros(nf + 1)
        cw = np.zeros(nf + 1)
        for f in range(nf):
            ok = (not flags[t, f]) and np.isfinite(x[t, f])
            cs[f + 1] = cs[f] + (x[t, f] if ok else 0.0)
            cw[f + 1] = cw[f] + (1.0 if ok else 0.0)
        for f in range(nf):
            lo = max(0, f - half_f)
            hi = min(nf, f + half_f + 1)
            sf[t, f] = cs[hi] - cs[lo]
            wf[t, f] = cw[hi] - cw[lo]
    # pass 2: along time
    out = np.zeros((nt, nf), dtype=np.float64)
    cs = np.zeros(nt + 1)
    cw = np.zeros(nt + 1)
    for f in range(nf):
        for t in range(nt):
            cs[t + 1] = cs[t] + sf[t, f]
            cw[t + 1] = cw[t] + wf[t, f]
        for t in range(nt):
            lo = max(0, t - half_t)
            hi = min(nt, t + half_t + 1)
            w = cw[hi] - cw[lo]
            if w > 0:
                out[t, f] = (cs[hi] - cs[lo]) / w
    return out


@numba.njit(nogil=True, cache=True)
def zscore_plane_spec(amp, flags, spec0, freq_window, time_window, smooth_t, smooth_f):
    """Relative residual in sigma units: z = (amp/B - 1 - smooth) / sigma.

    B from :func:`background_spec`; ``smooth`` is the masked box mean (:func:`masked_box_smooth`)
    of the relative residual, which removes the non-separable slow structure the sky leaves
    (fringe beating in time and frequency); sigma is :func:`robust_sigma` of what remains.

    Parameters
    ----------
    amp : numpy.ndarray of float, shape (Nt, Nf)
        Amplitudes |V|.
    flags : numpy.ndarray of bool, shape (Nt, Nf)
        Samples excluded from the background, the smoothing and the sigma.
    spec0 : numpy.ndarray of float64, shape (Nf,)
        The raw spectrum (:func:`channel_medians`); NaN channels are filled.
    freq_window, time_window : int
        Background windows (channels, integrations), as :func:`background`.
    smooth_t, smooth_f : int
        Half-widths of the box (integrations, channels); 0 and 0 = no smoothing.

    Returns
    -------
    numpy.ndarray of float32, shape (Nt, Nf)
        NaN where amp is not finite, or everywhere when the plane has no usable samples.
    """
    nt, nf = amp.shape
    bg = background_spec(amp, flags, spec0, freq_window, time_window)
    x = np.empty((nt, nf), dtype=np.float64)
    for t in range(nt):
        for f in range(nf):
            x[t, f] = amp[t, f] / bg[t, f] - 1.0
    if smooth_t > 0 or smooth_f > 0:
        sm = masked_box_smooth(x, flags, smooth_t, smooth_f)
        for t in range(nt):
            for f in range(nf):
                x[t, f] -= sm[t, f]
    _, sig = robust_sigma(x, flags)
    z = np.empty((nt, nf), dtype=np.float32)
    if not (np.isfinite(sig) and sig > 0):
        z[:] = np.nan
        return z
    for t in range(nt):
        for f in range(nf):
            z[t, f] = x[t, f] / sig
    return z


@numba.njit(nogil=True, cache=True)
def flag_plane(amp, flags, chi1, rho, max_window, freq_window, time_window, smooth_t, smooth_f, iterations):
    """Per-plane RFI detection (steps 1-2 of :mod:`dsacont.flagging`) on one baseline and pol.

    Parameters
    ----------
    amp : numpy.ndarray of float, shape (Nt, Nf)
        Amplitudes |V|.
    flags : numpy.ndarray of bool, shape (Nt, Nf)
        Pre-flags (input flags, static mask).
    chi1, rho, max_window
        SumThreshold parameters, as :func:`sumthreshold`.
    freq_window, time_window, smooth_t, smooth_f
        Background and smoothing, as :func:`zscore_plane_spec`.
    iterations : int
        Rounds of background and SumThreshold, each without the samples flagged so far.

    Returns
    -------
    flags : numpy.ndarray of bool, shape (Nt, Nf)
        The new flags, including ``flags`` and the invalid samples.
    z : numpy.ndarray of float32, shape (Nt, Nf)
        Residual in sigma units against the last round's background.
    """
    pre = flag_invalid(amp, flags)
    return flag_plane_spec(amp, pre, channel_medians(amp, pre), chi1, rho, max_window, freq_window, time_window,
                           smooth_t, smooth_f, iterations)


@numba.njit(nogil=True, cache=True)
def flag_plane_spec(amp, pre, spec0, chi1, rho, max_window, freq_window, time_window, smooth_t, smooth_f,
                    iterations):
    """:func:`flag_plane` with the invalid samples already in ``pre`` and the spectrum given.

    Parameters
    ----------
    amp : numpy.ndarray of float, shape (Nt, Nf)
    pre : numpy.ndarray of bool, shape (Nt, Nf)
        Pre-flags including the invalid samples (:func:`flag_invalid`).
    spec0 : numpy.ndarray of float64, shape (Nf,)
        ``channel_medians(amp, pre)``, the first round's raw spectrum (shared with the
        across-baseline detectors).
    chi1, rho, max_window, freq_window, time_window, smooth_t, smooth_f, iterations
        As :func:`flag_plane`.

    Returns
    -------
    (numpy.ndarray of bool, numpy.ndarray of float32), each shape (Nt, Nf)
        As :func:`flag_plane`.
    """
    cur = pre.copy()
    z = np.zeros(amp.shape, dtype=np.float32)
    for i in range(iterations):
        sp = spec0 if i == 0 else channel_medians(amp, cur)
        z = zscore_plane_spec(amp, cur, sp, freq_window, time_window, smooth_t, smooth_f)
        cur = sumthreshold(z, pre | cur, chi1, rho, max_window, True, True)
    return cur, z


# ---------------------------------------------------------------------------------------------
# block driver: all planes of a block of baselines (time, baseline, frequency, polarization)
# ---------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def combined_statistic(z, use, pre):
    """Median over baselines of z at each (t, f).

    Parameters
    ----------
    z : numpy.ndarray of float32, shape (Nt, Nb, Nf)
        Residuals in sigma units (NaN = none).
    use : numpy.ndarray of bool, shape (Nb,)
        Baselines that take part (the cross-correlations).
    pre : numpy.ndarray of bool, shape (Nt, Nb, Nf)
        Samples left out.

    Returns
    -------
    S : numpy.ndarray of float64, shape (Nt, Nf)
        The median (NaN where no baseline contributes).
    count : numpy.ndarray of int64, shape (Nt, Nf)
        Baselines that contributed.
    """
    nt, nb, nf = z.shape
    s = np.full((nt, nf), np.nan)
    cnt = np.zeros((nt, nf), dtype=np.int64)
    buf = np.empty(nb, dtype=np.float64)
    for t in range(nt):
        for f in range(nf):
            k = 0
            for b in range(nb):
                if use[b] and not pre[t, b, f]:
                    v = z[t, b, f]
                    if np.isfinite(v):
                        buf[k] = v
                        k += 1
            cnt[t, f] = k
            if k > 0:
                s[t, f] = _median_buf(buf, k)
    return s, cnt


@numba.njit(nogil=True, cache=True)
def flag_combined(z, use, pre, min_baselines, chi1, rho, max_window):
    """Across-baseline detector: SumThreshold on the robustly normalised median over baselines.

    Parameters
    ----------
    z, use, pre
        As :func:`combined_statistic`.
    min_baselines : int
        Fewer usable cross-correlations in the block (or at a sample): no detection there.
    chi1, rho, max_window
        SumThreshold parameters, as :func:`sumthreshold`.

    Returns
    -------
    numpy.ndarray of bool, shape (Nt, Nf)
        (t, f) samples to flag on every baseline of the block.
    """
    nt, nb, nf = z.shape
    out = np.zeros((nt, nf), dtype=np.bool_)
    nuse = 0
    for b in range(nb):
        nuse += use[b]
    if nuse < min_baselines:
        return out
    s, cnt = combined_statistic(z, use, pre)
    bad = np.zeros((nt, nf), dtype=np.bool_)
    for t in range(nt):
        for f in range(nf):
            bad[t, f] = cnt[t, f] < min_baselines or not np.isfinite(s[t, f])
    med, sig = robust_sigma(s, bad)
    if not (np.isfinite(sig) and sig > 0):
        return out
    sz = np.empty((nt, nf), dtype=np.float64)
    for t in range(nt):
        for f in range(nf):
            sz[t, f] = (s[t, f] - med) / sig if not bad[t, f] else 0.0
    # samples with no usable baseline are not "already flagged" here: they carry no evidence
    hit = sumthreshold(sz, out, chi1, rho, max_window, True, True)
    return hit


@numba.njit(nogil=True, cache=True)
def spectral_residual_spec(spec, freq_window):
    """Measure the persistent spectral excess of one plane, in robust sigma units over channels.

    q(f) = s(f) / m(f) - 1 with m the median of the other channels within ``freq_window // 2``
    (leave-one-out running median), centred and scaled by its median and 1.4826 MAD over
    channels (so bandpass ripple the running median does not follow counts as scatter, not as
    signal).

    Parameters
    ----------
    spec : numpy.ndarray of float64, shape (Nf,)
        The raw spectrum s(f) (:func:`channel_medians`).
    freq_window : int
        Running-median window (channels; at least 3 is used).

    Returns
    -------
    numpy.ndarray of float64, shape (Nf,)
        NaN where a channel has no data.
    """
    nf = spec.shape[0]
    sm = running_median(spec, max(freq_window, 3), True)
    q = np.empty((1, nf), dtype=np.float64)
    bad = np.zeros((1, nf), dtype=np.bool_)
    for f in range(nf):
        if np.isfinite(spec[f]) and np.isfinite(sm[f]) and sm[f] > 0:
            q[0, f] = spec[f] / sm[f] - 1.0
        else:
            q[0, f] = np.nan
            bad[0, f] = True
    med, sig = robust_sigma(q, bad)
    out = np.full(nf, np.nan)
    if np.isfinite(sig) and sig > 0:
        for f in range(nf):
            if not bad[0, f]:
                out[f] = (q[0, f] - med) / sig
    return out


@numba.njit(nogil=True, cache=True)
def flag_spectral(q, use, min_baselines, chi1, rho, max_window):
    """Channels with persistent RFI common to the baselines.

    SumThreshold (frequency direction) on the median over baselines of
    :func:`spectral_residual_spec`, scaled robustly over channels.

    Parameters
    ----------
    q : numpy.ndarray of float64, shape (Nb, Nf)
        Spectral excess of each baseline (NaN = no data).
    use : numpy.ndarray of bool, shape (Nb,)
        Baselines that take part (the cross-correlations).
    min_baselines : int
        Channels with fewer usable baselines are not judged.
    chi1, rho, max_window
        SumThreshold parameters, as :func:`sumthreshold`.

    Returns
    -------
    numpy.ndarray of bool, shape (Nf,)
        Channels to flag at all times on every baseline of the block.
    """
    nb, nf = q.shape
    out = np.zeros((1, nf), dtype=np.bool_)
    buf = np.empty(nb, dtype=np.float64)
    sp = np.empty((1, nf), dtype=np.float64)
    bad = np.zeros((1, nf), dtype=np.bool_)
    for f in range(nf):
        k = 0
        for b in range(nb):
            if use[b] and np.isfinite(q[b, f]):
                buf[k] = q[b, f]
                k += 1
        if k >= min_baselines:
            sp[0, f] = _median_buf(buf, k)
        else:
            sp[0, f] = 0.0
            bad[0, f] = True
    med, sig = robust_sigma(sp, bad)
    if not (np.isfinite(sig) and sig > 0):
        return out[0]
    for f in range(nf):
        sp[0, f] = (sp[0, f] - med) / sig if not bad[0, f] else 0.0
    return sumthreshold(sp, out, chi1, rho, max_window, False, True)[0]


@numba.njit(nogil=True, cache=True)
def flag_block_kernel(
    amp, flags, is_auto, static_chan,
    x_chi1, x_freq_window, x_time_window, x_smooth_t, x_smooth_f,
    a_chi1, a_freq_window, a_time_window, a_smooth_t, a_smooth_f,
    rho, max_window, iterations,
    combine, c_chi1, min_baselines, c_max_window,
    time_fraction, channel_fraction, dilate_time, dilate_freq, combine_pols,
):
    """Flag one block of baselines: per-plane detection, across-baseline detectors, extension.

    Parameters
    ----------
    amp : numpy.ndarray of float32, shape (Nt, Nb, Nf, Np)
        Amplitudes |V|, frequencies ascending.
    flags : numpy.ndarray of bool, shape (Nt, Nb, Nf, Np)
        Input flags.
    is_auto : numpy.ndarray of bool, shape (Nb,)
        True for autocorrelations.
    static_chan : numpy.ndarray of bool, shape (Nf,)
        Channels always flagged.
    x_chi1, x_freq_window, x_time_window, x_smooth_t, x_smooth_f
        Cross-correlations: SumThreshold chi_1 (sigma), background windows (channels,
        integrations), smoothing half-widths (integrations, channels).
    a_chi1, a_freq_window, a_time_window, a_smooth_t, a_smooth_f
        The same for autocorrelations.
    rho, max_window, iterations
        SumThreshold decay and largest window (samples); rounds per plane.
    combine : bool
        Run the across-baseline detectors.
    c_chi1, min_baselines, c_max_window
        Their chi_1 (sigma), minimum cross-correlations, largest window (samples).
    time_fraction, channel_fraction : float
        Extension to whole integrations / channels (>= 1: off).
    dilate_time, dilate_freq : int
        Dilation (integrations, channels).
    combine_pols : bool
        OR the across-baseline hits of all polarisations.

    Returns
    -------
    numpy.ndarray of bool, shape (Nt, Nb, Nf, Np)
        The input flags OR-ed with the new ones.
    """
    nt, nb, nf, npol = amp.shape
    out = np.empty((nt, nb, nf, npol), dtype=np.bool_)
    comb = np.zeros((nt, nf, npol), dtype=np.bool_)
    use = ~is_auto
    for p in range(npol):
        zv = np.full((nt, nb, nf), np.nan, dtype=np.float32)
        qs = np.full((nb, nf), np.nan)
        prec = np.empty((nt, nb, nf), dtype=np.bool_)
        for b in range(nb):
            a = amp[:, b, :, p].astype(np.float64)
            pre = flags[:, b, :, p].copy()
            for f in range(nf):
                if static_chan[f]:
                    pre[:, f] = True
            pre = flag_invalid(a, pre)
            spec = channel_medians(a, pre)  # shared by the three uses below
            if is_auto[b]:
                cur, z = flag_plane_spec(a, pre, spec, a_chi1, rho, max_window, a_freq_window, a_time_window,
                                         a_smooth_t, a_smooth_f, iterations)
            else:
                cur, z = flag_plane_spec(a, pre, spec, x_chi1, rho, max_window, x_freq_window, x_time_window,
                                         x_smooth_t, x_smooth_f, iterations)
                if combine:
                    # time-variable part: per-channel background (bandpass followed exactly)
                    # (channels mostly flagged by step 2 are unknown: no background from them)
                    spec_v = spec.copy()
                    for f in range(nf):
                        c = 0
                        for t in range(nt):
                            c += cur[t, f]
                        if 2 * c > nt:
                            spec_v[f] = np.nan
                    zv[:, b, :] = zscore_plane_spec(a, cur, spec_v, 1, x_time_window, x_smooth_t, x_smooth_f)
                    # persistent part: spectral excess over a running median
                    qs[b, :] = spectral_residual_spec(spec, x_freq_window)
            out[:, b, :, p] = cur
            prec[:, b, :] = pre
        if combine:
            comb[:, :, p] = flag_combined(zv, use, prec, min_baselines, c_chi1, rho, c_max_window)
            chans = flag_spectral(qs, use, min_baselines, c_chi1, rho, c_max_window)
            for f in range(nf):
                if chans[f]:
                    comb[:, f, p] = True
    if combine and combine_pols:
        for t in range(nt):
            for f in range(nf):
                any_p = False
                for p in range(npol):
                    any_p = any_p or comb[t, f, p]
                for p in range(npol):
                    comb[t, f, p] = any_p
    for p in range(npol):
        for b in range(nb):
            pl = out[:, b, :, p] | comb[:, :, p]
            pl = extend_fraction(pl, time_fraction, channel_fraction)
            pl = dilate(pl, dilate_time, dilate_freq)
            out[:, b, :, p] = pl
    return out


