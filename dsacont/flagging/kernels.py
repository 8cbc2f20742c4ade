"""The numba kernels of the RFI flagger: small, pure functions on numpy arrays.

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

# ---------------------------------------------------------------------------------------------
# kernels: one (time, frequency) plane, float32/float64 in, bool/float out
# ---------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def flag_invalid(amp, flags):
    """Flag non-finite (NaN/Inf) and exactly-zero amplitudes.

    Parameters
    ----------
    amp : numpy.ndarray of float, shape (Nt, Nf)
        Amplitudes |V| (data units).
    flags : numpy.ndarray of bool, shape (Nt, Nf)
        Flags so far (not modified).

    Returns
    -------
    numpy.ndarray of bool, shape (Nt, Nf)
        ``flags`` OR-ed with the invalid samples (a new array).
    """
    nt, nf = amp.shape
    out = flags.copy()
    for t in range(nt):
        for f in range(nf):
            a = amp[t, f]
            if not np.isfinite(a) or a == 0.0:
                out[t, f] = True
    return out


@numba.njit(nogil=True, cache=True)
def _select_inplace(buf, lo, hi, k):
    """k-th smallest of buf[lo:hi] (in-place quickselect); returns the value.

    Branchless partitions (a Lomuto pass ``< pivot``, then ``== pivot`` on the right part), so
    random data cost no branch mispredictions and ties cannot degrade it. On return every element
    left of ``k`` is <= the value (the median's lower middle relies on it).
    """
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
        j = lo
        for i in range(lo, hi):
            v = buf[i]
            buf[i] = buf[j]
            buf[j] = v
            j += v < pivot
        if k < j:
            hi = j
            continue
        m = j
        for i in range(j, hi):
            v = buf[i]
            buf[i] = buf[m]
            buf[m] = v
            m += v <= pivot
        if k < m:
            return pivot
        lo = m
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
        v = buf[i]
        lower = v if v > lower else lower
    return 0.5 * (lower + upper)


@numba.njit(nogil=True, cache=True)
def _sorted_insert(s, n, v):
    """Insert v into the ascending s[:n] (room for one more); returns n + 1."""
    j = n - 1
    while j >= 0 and s[j] > v:
        s[j + 1] = s[j]
        j -= 1
    s[j + 1] = v
    return n + 1


@numba.njit(nogil=True, cache=True)
def _sorted_find(s, n, v):
    """Index of a value equal to v in the ascending s[:n] (binary search; v must be present)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi) // 2
        if s[mid] < v:
            lo = mid + 1
        else:
            hi = mid
    return lo


@numba.njit(nogil=True, cache=True)
def _sorted_remove(s, n, v):
    """Remove one value equal to v from the ascending s[:n]; returns n - 1."""
    for j in range(_sorted_find(s, n, v), n - 1):
        s[j] = s[j + 1]
    return n - 1


@numba.njit(nogil=True, cache=True)
def _sorted_median(s, n, skip):
    """Median of the ascending s[:n] without its element ``skip`` (-1: none); NaN when empty.

    The same value as :func:`_median_buf` of those elements (order statistics do not depend on
    the algorithm): the upper middle, or the mean of the two middles for an even count.
    """
    m = n if skip < 0 else n - 1
    if m <= 0:
        return np.nan
    h = m // 2
    upper = s[h] if (skip < 0 or h < skip) else s[h + 1]
    if m % 2 == 1:
        return upper
    lower = s[h - 1] if (skip < 0 or h - 1 < skip) else s[h]
    return 0.5 * (lower + upper)


@numba.njit(nogil=True, cache=True)
def running_median(x, window, exclude_center=False):
    """Compute the running median of a 1-D series over ``window`` samples, NaN entries ignored.

    A sorted window slides along the series (one insertion and one removal per sample), so each
    median costs O(window) moves, not a selection.

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
    srt = np.empty(2 * half + 2, dtype=np.float64)
    cnt = 0
    lo_cur = 0
    hi_cur = 0
    for i in range(n):
        lo = max(0, i - half)
        hi = min(n, i + half + 1)
        while hi_cur < hi:
            v = x[hi_cur]
            if np.isfinite(v):
                cnt = _sorted_insert(srt, cnt, v)
            hi_cur += 1
        while lo_cur < lo:
            v = x[lo_cur]
            if np.isfinite(v):
                cnt = _sorted_remove(srt, cnt, v)
            lo_cur += 1
        skip = -1
        if exclude_center and np.isfinite(x[i]):
            skip = _sorted_find(srt, cnt, x[i])
        out[i] = _sorted_median(srt, cnt, skip)
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
def _fill_nan(x, fill):
    """Replace the non-finite entries of ``x`` (N,) by ``fill``, in place; returns ``x``."""
    for i in range(x.shape[0]):
        if not np.isfinite(x[i]):
            x[i] = fill
    return x


@numba.njit(nogil=True, cache=True)
def _merge_network(n):
    """Comparators (i, j), i < j, of Batcher's odd-even merge sort for ``n`` elements, as (M, 2) int64.

    Built for the next power of two and without the comparators that touch an index >= n: those
    positions only ever hold +inf padding, which no comparator moves.
    """
    p = 1
    while p < n:
        p *= 2
    pairs = np.empty((max(1, p * p), 2), dtype=np.int64)
    m = 0
    k = 1
    while k < p:
        j = k
        while j >= 1:
            for i in range(j % k, p - j, 2 * j):
                for q in range(min(j, p - i - j)):
                    a = i + q
                    b = i + q + j
                    if a // (2 * k) == b // (2 * k) and b < n:
                        pairs[m, 0] = a
                        pairs[m, 1] = b
                        m += 1
            j //= 2
        k *= 2
    return pairs[:m]


@numba.njit(nogil=True, cache=True)
def channel_medians(amp, flags):
    """Median over time of each channel's unflagged samples: the raw spectrum s(f).

    Shared by :func:`background_spec`, :func:`flag_plane_spec` and
    :func:`spectral_residual_spec`. All channels are sorted at once along time by a sorting
    network (flagged samples as +inf, so they sort last), each comparator one pass over the
    channels; a plane with an unflagged non-finite sample takes a per-channel selection instead.
    Either way the value is the median of the unflagged samples.

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
    spec = np.empty(nf, dtype=np.float64)
    srt = np.empty((nt, nf), dtype=np.float64)
    cnt = np.zeros(nf, dtype=np.int64)
    finite = True
    for t in range(nt):
        for f in range(nf):
            v = np.float64(amp[t, f])
            fl = flags[t, f]
            finite = finite and (fl or np.isfinite(v))
            srt[t, f] = np.inf if fl else v
            cnt[f] += not fl
    if finite:
        net = _merge_network(nt)
        for q in range(net.shape[0]):
            i = net[q, 0]
            j = net[q, 1]
            for f in range(nf):
                a = srt[i, f]
                b = srt[j, f]
                srt[i, f] = a if a < b else b
                srt[j, f] = b if a < b else a
        for f in range(nf):
            k = cnt[f]
            if k == 0:
                spec[f] = np.nan
            elif k % 2 == 1:
                spec[f] = srt[k // 2, f]
            else:
                spec[f] = 0.5 * (srt[k // 2 - 1, f] + srt[k // 2, f])
        return spec
    buf = np.empty(max(nt, 1), dtype=np.float64)
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
    spec, rt = background_factors(amp, flags, spec0, freq_window, time_window)
    nt, nf = amp.shape
    out = np.empty((nt, nf), dtype=np.float64)
    for t in range(nt):
        for f in range(nf):
            out[t, f] = spec[f] * rt[t]
    return out


@numba.njit(nogil=True, cache=True)
def background_factors(amp, flags, spec0, freq_window, time_window):
    """The two factors of :func:`background_spec`: B(t, f) = spec[f] * rt[t].

    Parameters
    ----------
    amp, flags, spec0, freq_window, time_window
        As :func:`background_spec`.

    Returns
    -------
    spec : numpy.ndarray of float64, shape (Nf,)
        The smoothed spectrum s(f), unknown channels filled (positive, finite).
    rt : numpy.ndarray of float64, shape (Nt,)
        The temporal factor r(t) (1.0 where unknown).
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
    return spec, rt


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
    t = 0
    f = 0
    for _ in range(0, n, stride):
        # (t, f) of the flat index, advanced without a division per sample
        v = x[t, f]
        if not flags[t, f] and np.isfinite(v):
            buf[k] = v
            k += 1
        f += stride
        while f >= nf:
            f -= nf
            t += 1
    if k == 0:
        return 0.0, np.nan
    med = _median_buf(buf, k)
    for i in range(k):
        buf[i] = abs(buf[i] - med)
    return med, 1.4826 * _median_buf(buf, k)


@numba.njit(nogil=True, cache=True)
def _sumthreshold_line(x, fin, fout, m, thr):
    """One SumThreshold window size along one line.

    x: (N,) values in sigma units; fin: (N,) flags from earlier windows (count as ``thr``);
    fout: (N,) bool, set True (never cleared) for every sample of a window whose sum exceeds
    m * thr. Positive excursions only.
    """
    n = x.shape[0]
    if m > n:
        return
    limit = m * thr
    s = 0.0
    for i in range(m):
        s += thr if fin[i] else x[i]
    last = -1  # last index already marked
    for start in range(n - m + 1):
        if start > 0:
            i_out = start - 1
            i_in = start + m - 1
            s -= thr if fin[i_out] else x[i_out]
            s += thr if fin[i_in] else x[i_in]
        if s > limit:
            first = max(start, last + 1)
            for j in range(first, start + m):
                fout[j] = True
            last = start + m - 1


@numba.njit(nogil=True, cache=True)
def _sumthreshold_rows(z, cur, m, thr):
    """Run one SumThreshold window size along the last axis (frequency) of z.

    z: (Nr, N) float; ``cur`` (Nr, N) bool is updated in place with the hits found using the
    flags as they were before this call. All rows advance together (one running sum each), so
    the additions of different rows overlap instead of waiting on one another; each row's sum
    takes the same steps as :func:`_sumthreshold_line`.
    """
    nr, n = z.shape
    if m > n:
        return
    fin = cur.copy()
    limit = m * thr
    s = np.zeros(nr, dtype=np.float64)
    last = np.full(nr, -1, dtype=np.int64)
    for r in range(nr):
        acc = 0.0
        for i in range(m):
            acc += thr if fin[r, i] else z[r, i]
        s[r] = acc
    for start in range(n - m + 1):
        if start > 0:
            i_out = start - 1
            i_in = start + m - 1
            for r in range(nr):
                acc = s[r]
                acc -= thr if fin[r, i_out] else z[r, i_out]
                acc += thr if fin[r, i_in] else z[r, i_in]
                s[r] = acc
        for r in range(nr):
            if s[r] > limit:
                for j in range(max(start, last[r] + 1), start + m):
                    cur[r, j] = True
                last[r] = start + m - 1


@numba.njit(nogil=True, cache=True)
def _sumthreshold_cols(z, cur, m, thr):
    """Run one SumThreshold window size along the first axis (time) of z, all columns at once.

    z: (Nt, Nf) float (contiguous rows); ``cur`` (Nt, Nf) bool is updated in place with the hits
    found using the flags as they were before the call.
    """
    nt, nf = z.shape
    if m > nt:
        return
    fin = cur.copy()
    limit = m * thr
    s = np.zeros(nf, dtype=np.float64)
    last = np.full(nf, -1, dtype=np.int64)
    for t in range(m):
        for f in range(nf):
            s[f] += thr if fin[t, f] else z[t, f]
    for start in range(nt - m + 1):
        if start > 0:
            to = start - 1
            ti = start + m - 1
            for f in range(nf):
                s[f] += (thr if fin[ti, f] else z[ti, f]) - (thr if fin[to, f] else z[to, f])
        for f in range(nf):
            if s[f] > limit:
                for t in range(max(start, last[f] + 1), start + m):
                    cur[t, f] = True
                last[f] = start + m - 1


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
        # a window of one is the same test in both directions: after the time pass it finds nothing
        if freq_direction and not (m == 1 and time_direction and z.shape[0] >= 1):
            _sumthreshold_rows(z, cur, m, thr)
        m *= 2
    return cur


@numba.njit(nogil=True, cache=True)
def dilate(flags, n_time, n_freq):
    """Grow flags by ``n_time`` integrations and ``n_freq`` channels each side.

    Parameters
    ----------
    flags : numpy.ndarray of bool, shape (Nt, Nf)
    n_time, n_freq : int
        Samples to add each side along time / frequency (0 = none).

    Returns
    -------
    numpy.ndarray of bool, shape (Nt, Nf)
        A new array.
    """
    nt, nf = flags.shape
    out = flags.copy()
    if n_time <= 0 and n_freq <= 0:
        return out
    for t in range(nt):
        for f in range(nf):
            if flags[t, f]:
                for tt in range(max(0, t - n_time), min(nt, t + n_time + 1)):
                    out[tt, f] = True
                for ff in range(max(0, f - n_freq), min(nf, f + n_freq + 1)):
                    out[t, ff] = True
    return out


@numba.njit(nogil=True, cache=True)
def extend_fraction(flags, time_fraction, channel_fraction):
    """Flag whole integrations (channels) whose flagged fraction exceeds a limit.

    Parameters
    ----------
    flags : numpy.ndarray of bool, shape (Nt, Nf)
    time_fraction : float
        Flag an integration with more than this fraction of its channels flagged; >= 1: off.
    channel_fraction : float
        Flag a channel with more than this fraction of its integrations flagged; >= 1: off.

    Returns
    -------
    numpy.ndarray of bool, shape (Nt, Nf)
        A new array (both rules judge the input flags).
    """
    nt, nf = flags.shape
    out = flags.copy()
    if time_fraction < 1.0:
        for t in range(nt):
            c = 0
            for f in range(nf):
                c += flags[t, f]
            if c > time_fraction * nf:
                out[t, :] = True
    if channel_fraction < 1.0:
        for f in range(nf):
            c = 0
            for t in range(nt):
                c += flags[t, f]
            if c > channel_fraction * nt:
                out[:, f] = True
    return out


@numba.njit(nogil=True, cache=True)
def _box_sums(x, flags, half_t, half_f):
    """Prefix sums over time of the frequency-box sums of the unflagged finite x, and their counts.

    Returns (cs, cw), each (Nt + 1, Nf) float64: cs[t, f] = sum over t' < t of the sum of the
    usable x[t', f - half_f .. f + half_f]; cw the same for the number of usable samples.
    """
    nt, nf = x.shape
    cs = np.zeros((nt + 1, nf), dtype=np.float64)
    cw = np.zeros((nt + 1, nf), dtype=np.float64)
    rs = np.zeros(nf + 1)
    rw = np.zeros(nf + 1)
    for t in range(nt):
        for f in range(nf):
            ok = (not flags[t, f]) and np.isfinite(x[t, f])
            rs[f + 1] = rs[f] + (x[t, f] if ok else 0.0)
            rw[f + 1] = rw[f] + (1.0 if ok else 0.0)
        for f in range(nf):
            lo = max(0, f - half_f)
            hi = min(nf, f + half_f + 1)
            cs[t + 1, f] = cs[t, f] + (rs[hi] - rs[lo])
            cw[t + 1, f] = cw[t, f] + (rw[hi] - rw[lo])
    return cs, cw


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
    cs, cw = _box_sums(x, flags, half_t, half_f)
    out = np.zeros((nt, nf), dtype=np.float64)
    for t in range(nt):
        lo = max(0, t - half_t)
        hi = min(nt, t + half_t + 1)
        for f in range(nf):
            w = cw[hi, f] - cw[lo, f]
            if w > 0:
                out[t, f] = (cs[hi, f] - cs[lo, f]) / w
    return out


@numba.njit(nogil=True, cache=True)
def _subtract_box_mean(x, flags, half_t, half_f):
    """x -= :func:`masked_box_smooth` (x, flags, half_t, half_f), in place, without the (Nt, Nf) mean."""
    nt, nf = x.shape
    cs, cw = _box_sums(x, flags, half_t, half_f)
    for t in range(nt):
        lo = max(0, t - half_t)
        hi = min(nt, t + half_t + 1)
        for f in range(nf):
            w = cw[hi, f] - cw[lo, f]
            if w > 0:
                x[t, f] -= (cs[hi, f] - cs[lo, f]) / w


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
    spec, rt = background_factors(amp, flags, spec0, freq_window, time_window)
    x = np.empty((nt, nf), dtype=np.float64)
    for t in range(nt):
        r = rt[t]
        for f in range(nf):
            x[t, f] = amp[t, f] / (spec[f] * r) - 1.0
    if smooth_t > 0 or smooth_f > 0:
        _subtract_box_mean(x, flags, smooth_t, smooth_f)
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

    The values are gathered in tiles of 16 channels (each baseline's 64-byte line read once), so
    every median reads one contiguous run of values.

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
    tw = 16  # channels per tile: one 64-byte line of float32 per baseline is read once
    tile = np.empty((tw, max(nb, 1)), dtype=np.float64)
    k = np.zeros(tw, dtype=np.int64)
    for t in range(nt):
        for f0 in range(0, nf, tw):
            w = min(tw, nf - f0)
            k[:] = 0
            for b in range(nb):
                if not use[b]:
                    continue
                for j in range(w):
                    if not pre[t, b, f0 + j]:
                        v = z[t, b, f0 + j]
                        if np.isfinite(v):
                            tile[j, k[j]] = v
                            k[j] += 1
            for j in range(w):
                cnt[t, f0 + j] = k[j]
                if k[j] > 0:
                    s[t, f0 + j] = _median_buf(tile[j], k[j])
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
            # the plane as float64, and its pre-flags: input flags, static channels, invalid samples
            # (flag_invalid's test, fused into the copy)
            a = np.empty((nt, nf), dtype=np.float64)
            pre = np.empty((nt, nf), dtype=np.bool_)
            for t in range(nt):
                for f in range(nf):
                    v = np.float64(amp[t, b, f, p])
                    a[t, f] = v
                    pre[t, f] = flags[t, b, f, p] or static_chan[f] or (not np.isfinite(v)) or v == 0.0
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


