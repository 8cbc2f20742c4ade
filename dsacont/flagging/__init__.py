"""RFI flagging: numba kernels on (time, frequency) planes, a strategy, Dask and MS wrappers.

Layout (codex-africanus style): small pure ``@njit(nogil=True, cache=True)`` kernels that work on
one (time, frequency) plane of one baseline and polarisation, a numba *block driver*
(:func:`flag_block_kernel`) that runs them over every plane of a block of baselines, and the Dask
wrapper :func:`flag_dataset` that maps the block driver over baseline chunks of the lazy Dataset.
:func:`flag_ms` runs the same block driver on an existing Measurement Set and updates its FLAG
column.

The algorithm (defaults in ``dsacont/data/flag_strategy_default.toml``, see :class:`Strategy`):

1. *Pre-flags*: the input flags, non-finite samples (NaN/Inf), exact zeros, and an optional static
   channel mask (frequency ranges in Hz).
2. *Per-plane detection*, separately for cross-correlations and autocorrelations (autos carry
   ~SEFD, so they get their own statistics and thresholds). On the amplitude plane A(t, f):

   - a smooth background B(t, f) = s(f) * r(t): s is the per-channel median over time, smoothed
     in frequency with a running median (``freq_window`` channels; 1 = no smoothing, used for
     autos); r is the per-time median over frequency of A/s, smoothed in time with a running
     median (``time_window`` integrations). Running medians ignore narrow lines and short bursts,
     so RFI does not leak into the background. Flagged samples are excluded from every median.
   - the relative residual x = A/B - 1, and its robust sigma (1.4826 * MAD over unflagged
     samples); z = x / sigma.
   - SumThreshold (Offringa et al. 2010, MNRAS 405, 155) on z, positive excursions only (RFI adds
     power), in time and in frequency, for windows M = 1, 2, 4, ... with
     chi_M = chi_1 / rho**log2(M), rho = 1.5. Samples flagged earlier count as chi_M inside a
     window (as in the paper), so wide low-level RFI next to bright RFI is found.
   - ``iterations`` rounds: each round recomputes the background and sigma without the samples
     flagged so far.
3. *Across baselines* (the strong detector for RFI common to every baseline: broadband bursts,
   persistent narrowband channels). Within a block of baselines (a Dask chunk), per polarisation:

   a. time-variable RFI: each cross-correlation's z is recomputed against a per-channel
      background (``freq_window`` = 1: the bandpass is followed exactly, channel by channel,
      excluding the samples flagged in step 2) plus the masked box mean; S(t, f) = median over
      the block's cross-correlations of z (samples pre-flagged in step 1 excluded). S is
      re-centred and scaled robustly (median, MAD) and SumThreshold (windows up to
      ``combined_max_window``) runs on it. Its noise is ~1.25/sqrt(N_baselines) of one
      baseline's, so bursts far below the per-visibility noise are found.
   b. persistent RFI (present in every integration, which a per-channel background would
      absorb): per baseline the spectrum s(f) (median over time) against the median of its
      neighbouring channels (leave-one-out running median), scaled by its own robust scatter
      over channels; the median over baselines of that spectral excess goes through
      SumThreshold along frequency; a hit flags the channel at all times.

   A hit flags that (t, f, pol) on every baseline of the block, autos included (the autos'
   own per-channel background cannot see persistent lines). Blocks are baseline chunks of the
   Dataset (the Dask wrapper keeps ``block_baselines`` per chunk), so the statistic needs no
   reduction across chunks and the graph stays chunk-local. Windows wider than
   ``combined_max_window`` are not used: the median is so precise that residual sky structure
   common to all baselines (a bright calibrator drifting through the beam) limits it, not noise.
4. *Extension*: a time (channel) flagged on more than ``time_fraction`` (``channel_fraction``) of
   a plane's samples is flagged whole; optional dilation by ``dilate_time``/``dilate_freq``
   samples.

Flags are True = bad (MS/UVH5 convention). Frequencies are ascending (the Dataset contract).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import time as _time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numba
import numpy as np

log = logging.getLogger(__name__)

DEFAULT_STRATEGY_PATH = Path(__file__).resolve().parent.parent / "data" / "flag_strategy_default.toml"

# ---------------------------------------------------------------------------------------------
# kernels: one (time, frequency) plane, float32/float64 in, bool/float out
# ---------------------------------------------------------------------------------------------


@numba.njit(nogil=True, cache=True)
def flag_invalid(amp, flags):
    """Flags for non-finite (NaN/Inf) and exactly-zero amplitudes, OR-ed with ``flags``.

    amp: (Nt, Nf) float amplitudes |V|; flags: (Nt, Nf) bool. Returns a new (Nt, Nf) bool array.
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
    """Running median of a 1-D array over ``window`` samples (odd; NaN entries ignored).

    x: (N,) float. Returns (N,) float64; a position whose whole window is NaN gets NaN.
    The window is truncated at the edges (centred where possible). ``exclude_center`` leaves
    the sample itself out (a leave-one-out background: never exactly equal to the sample).
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
    of the window. x: (N,) float, NaN = missing. Returns (N,) float64 (NaN if no sample).
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
    for i in range(x.shape[0]):
        if not np.isfinite(x[i]):
            x[i] = fill
    return x


@numba.njit(nogil=True, cache=True)
def channel_medians(amp, flags):
    """Median over time of each channel's unflagged samples: (Nt, Nf) -> (Nf,) float64, NaN for a
    channel with none. The raw spectrum shared by :func:`background` and
    :func:`spectral_residual`."""
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
    amp: (Nt, Nf) float; flags: (Nt, Nf) bool. Returns (Nt, Nf) float64 (NaN-free; 1.0 where
    nothing is known).
    """
    return background_spec(amp, flags, channel_medians(amp, flags), freq_window, time_window)


@numba.njit(nogil=True, cache=True)
def background_spec(amp, flags, spec0, freq_window, time_window):
    """:func:`background` with the raw spectrum ``spec0`` (:func:`channel_medians`) given."""
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
    """Median and 1.4826 * median absolute deviation of the unflagged finite samples of a plane.

    x: (Nt, Nf) float; flags: (Nt, Nf) bool. Planes larger than ``max_samples`` are subsampled
    with a regular stride (plenty for a robust scale). Returns (median, sigma); (0, NaN) if none.
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
    """One window size along the last axis (frequency) of z; updates ``cur`` in place with the
    hits found using the flags as they were before this call."""
    nr, n = z.shape
    if m > n:
        return
    line = np.empty(n, dtype=np.bool_)
    for r in range(nr):
        for i in range(n):
            line[i] = cur[r, i]
        _sumthreshold_line(z[r], line, cur[r], m, thr)


@numba.njit(nogil=True, cache=True)
def _sumthreshold_cols(z, cur, m, thr):
    """One window size along the first axis (time) of z, all columns at once (contiguous rows);
    updates ``cur`` in place with the hits found using the flags as they were before the call."""
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
    """SumThreshold (Offringa et al. 2010) on a plane of residuals in sigma units.

    z: (Nt, Nf) float, residual / sigma (positive = excess power). flags: (Nt, Nf) bool, samples
    already flagged (they count as the window threshold, never as data). Windows M = 1, 2, 4, ...
    <= max_window with threshold chi_M = chi1 / rho**log2(M); for each M the time direction then
    the frequency direction. Returns the new flag plane (Nt, Nf) bool, including ``flags``.
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
def dilate(flags, n_time, n_freq):
    """Grow flags by ``n_time`` integrations and ``n_freq`` channels each side. (Nt, Nf) bool."""
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
    """Flag whole integrations (channels) whose flagged fraction exceeds ``time_fraction``
    (``channel_fraction``). Values >= 1 switch a rule off. (Nt, Nf) bool in, new array out."""
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
def masked_box_smooth(x, flags, half_t, half_f):
    """Mean of the unflagged samples of x in a (2 half_t + 1) x (2 half_f + 1) box around each
    sample (truncated at the edges), by running sums: O(1) per sample. x: (Nt, Nf) float;
    flags: (Nt, Nf) bool. Returns (Nt, Nf) float64; 0 where the box holds no unflagged sample."""
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
def zscore_plane(amp, flags, freq_window, time_window, smooth_t, smooth_f):
    """Relative residual in sigma units (see :func:`zscore_plane_spec`), spectrum computed here."""
    return zscore_plane_spec(amp, flags, channel_medians(amp, flags), freq_window, time_window, smooth_t,
                             smooth_f)


@numba.njit(nogil=True, cache=True)
def zscore_plane_spec(amp, flags, spec0, freq_window, time_window, smooth_t, smooth_f):
    """Relative residual in sigma units: z = (amp/B - 1 - smooth) / sigma.

    B from :func:`background` (separable running medians); ``smooth`` is the masked box mean
    (half-widths ``smooth_t`` integrations, ``smooth_f`` channels; 0 and 0 = none) of the
    relative residual, which removes the non-separable slow structure the sky leaves (fringe
    beating in time and frequency). amp: (Nt, Nf) float; flags: (Nt, Nf) bool (excluded from
    the background, the smoothing and the sigma). Returns (Nt, Nf) float32; NaN where amp is not
    finite or the plane has no usable samples.
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
    """Per-plane RFI detection (steps 1-2 of the module doc) on one baseline and polarisation.

    amp: (Nt, Nf) float amplitudes; flags: (Nt, Nf) bool pre-flags (input, static mask).
    Returns (new_flags (Nt, Nf) bool including ``flags`` and invalid samples,
    z (Nt, Nf) float32 residual in sigma units from the last round's background).
    """
    pre = flag_invalid(amp, flags)
    return flag_plane_spec(amp, pre, channel_medians(amp, pre), chi1, rho, max_window, freq_window, time_window,
                           smooth_t, smooth_f, iterations)


@numba.njit(nogil=True, cache=True)
def flag_plane_spec(amp, pre, spec0, chi1, rho, max_window, freq_window, time_window, smooth_t, smooth_f,
                    iterations):
    """:func:`flag_plane` for pre-flags ``pre`` that already include invalid samples, with the
    first round's raw spectrum ``spec0 = channel_medians(amp, pre)`` given (shared with the
    across-baseline detectors)."""
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
    """Median over baselines of z per (t, f): z (Nt, Nb, Nf) float32, use (Nb,) bool selects the
    baselines (cross-correlations), pre (Nt, Nb, Nf) bool excludes samples. Returns
    (S (Nt, Nf) float64, count (Nt, Nf) int64)."""
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
    """Across-baseline detector: SumThreshold on the robustly normalised median-over-baselines z.

    Returns (Nt, Nf) bool: (t, f) samples to flag on every baseline of the block. All False when
    fewer than ``min_baselines`` baselines are usable.
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
def spectral_residual(amp, flags, freq_window):
    """Persistent spectral excess of one plane (see :func:`spectral_residual_spec`)."""
    return spectral_residual_spec(channel_medians(amp, flags), freq_window)


@numba.njit(nogil=True, cache=True)
def spectral_residual_spec(spec, freq_window):
    """Persistent spectral excess of one plane, in robust sigma units over channels.

    spec: (Nf,) the raw spectrum s(f) (:func:`channel_medians`: median over time of the
    unflagged samples). q(f) = s(f) / m(f) - 1 with m the median of the other channels within
    ``freq_window // 2`` (leave-one-out running median), centred and scaled by its median and
    1.4826 MAD over channels (so bandpass ripple the running median does not follow counts as
    scatter, not as signal). Returns (Nf,) float64, NaN where a channel has no data.
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
    """Channels with persistent RFI common to the baselines: SumThreshold (frequency direction)
    on the median over baselines of :func:`spectral_residual`, scaled robustly over channels.

    q: (Nb, Nf) float (NaN = no data); use: (Nb,) bool. Returns (Nf,) bool.
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
    """Flag one block: amp (Nt, Nb, Nf, Np) float32 |V|; flags (Nt, Nb, Nf, Np) bool input flags;
    is_auto (Nb,) bool; static_chan (Nf,) bool channels always flagged. Thresholds: ``x_*`` for
    cross-correlations, ``a_*`` for autos, ``c_chi1`` for the across-baseline detector.
    Returns (Nt, Nb, Nf, Np) bool, the input flags OR-ed with the new ones.
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


# ---------------------------------------------------------------------------------------------
# strategy
# ---------------------------------------------------------------------------------------------


@dataclass
class Strategy:
    """Steps and thresholds of the flagger (see the module doc and the default strategy file).

    Thresholds are in robust sigma units of the relative residual |V|/B - 1. Load with
    :func:`load_strategy`; every field is optional in a user's file (missing = default).
    """

    flag_invalid: bool = True  # NaN/Inf/zeros (always on in the kernel; kept for the record)
    static_mask_hz: list = field(default_factory=list)  # [[lo_hz, hi_hz], ...] always flagged
    iterations: int = 1  # rounds of background / SumThreshold per plane
    rho: float = 1.5  # SumThreshold: chi_M = chi_1 / rho**log2(M)
    max_window: int = 32  # largest SumThreshold window (samples); windows 1, 2, 4, ... max_window
    cross_chi1: float = 7.0  # SumThreshold chi_1 on cross-correlations
    cross_freq_window: int = 15  # running median (channels) for the cross background
    cross_time_window: int = 5  # running median (integrations) for the cross background
    cross_smooth_time: int = 3  # half-width (integrations) of the masked box mean of the residual
    cross_smooth_freq: int = 5  # half-width (channels) of the masked box mean of the residual
    auto_chi1: float = 7.0  # SumThreshold chi_1 on autocorrelations
    auto_freq_window: int = 1  # autos: per-channel background (bandpass followed exactly)
    auto_time_window: int = 5
    auto_smooth_time: int = 3
    auto_smooth_freq: int = 5
    combine_baselines: bool = True  # the across-baseline detector
    combined_chi1: float = 7.0
    combined_max_window: int = 8  # largest SumThreshold window of the across-baseline detectors
    min_baselines: int = 8  # need at least this many cross-correlations in a block
    combine_polarizations: bool = False  # OR the across-baseline hits of all polarisations
    time_fraction: float = 0.6  # flag a whole integration above this flagged fraction (>=1: off)
    channel_fraction: float = 0.6  # flag a whole channel above this flagged fraction (>=1: off)
    dilate_time: int = 0  # grow flags by this many integrations
    dilate_freq: int = 0  # grow flags by this many channels
    block_baselines: int = 256  # baselines per Dask block (the across-baseline statistic's pool)

    def to_dict(self) -> dict:
        return asdict(self)

    def static_channel_mask(self, freqs_hz) -> np.ndarray:
        """(Nf,) bool: channels whose centre falls in one of ``static_mask_hz``'s [lo, hi]."""
        freqs = np.asarray(freqs_hz, dtype=np.float64)
        mask = np.zeros(freqs.shape, dtype=bool)
        for lo, hi in self.static_mask_hz:
            mask |= (freqs >= float(lo)) & (freqs <= float(hi))
        return mask


def _read_strategy_file(path: Path) -> dict:
    text = path.read_text()
    if path.suffix.lower() == ".toml":
        import tomllib

        data = tomllib.loads(text)
    else:
        data = json.loads(text)
    # accept either flat keys or sections ([cross] chi1 = ... -> cross_chi1)
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for k, v in value.items():
                flat[f"{key}_{k}" if key not in ("general", "strategy") else k] = v
        else:
            flat[key] = value
    return {_ALIASES.get(k, k): v for k, v in flat.items()}


_ALIASES = {
    "combined_enabled": "combine_baselines",
    "combined_polarizations": "combine_polarizations",
    "combined_min_baselines": "min_baselines",
}


def load_strategy(path=None) -> Strategy:
    """Load a strategy: the shipped default, overlaid with a user's TOML or JSON file if given.

    path: None for the default, or a .toml/.json file with any subset of :class:`Strategy`'s
    fields (flat, or grouped in sections ``[cross]``/``[auto]``/``[combined]`` meaning the
    ``cross_``/``auto_``/``combined_`` prefixed fields). Unknown keys raise
    :class:`dsacont.errors.BadInputError`.
    """
    from dsacont.errors import BadInputError

    names = {f.name for f in fields(Strategy)}
    values: dict = {}
    for p in [DEFAULT_STRATEGY_PATH] + ([Path(path)] if path is not None else []):
        try:
            flat = _read_strategy_file(p)
        except (OSError, ValueError) as exc:
            raise BadInputError(p, f"cannot read flagging strategy: {exc}") from exc
        unknown = sorted(set(flat) - names)
        if unknown:
            raise BadInputError(p, f"unknown flagging strategy keys {unknown}; known: {sorted(names)}")
        values.update(flat)
    return Strategy(**values)


def _as_strategy(strategy) -> Strategy:
    if strategy is None:
        return load_strategy()
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, dict):
        return replace(load_strategy(), **strategy)
    return load_strategy(strategy)


# ---------------------------------------------------------------------------------------------
# numpy entry point (one block) and the Dask wrapper
# ---------------------------------------------------------------------------------------------


def flag_block(amp, flags, is_auto, strategy=None, static_chan=None) -> np.ndarray:
    """Flag one block in memory. amp: (Nt, Nb, Nf, Np) |V| (float32; complex is converted);
    flags: same shape bool or None; is_auto: (Nb,) bool; static_chan: (Nf,) bool or None.
    Returns (Nt, Nb, Nf, Np) bool = flags | new flags."""
    s = _as_strategy(strategy)
    amp = np.asarray(amp)
    if np.iscomplexobj(amp):
        amp = np.abs(amp)
    amp = np.ascontiguousarray(amp, dtype=np.float32)
    if flags is None:
        flags = np.zeros(amp.shape, dtype=bool)
    flags = np.ascontiguousarray(flags, dtype=np.bool_)
    nt, nb, nf, npol = amp.shape
    if static_chan is None:
        static_chan = np.zeros(nf, dtype=np.bool_)
    return flag_block_kernel(
        amp, flags, np.ascontiguousarray(is_auto, dtype=np.bool_), np.ascontiguousarray(static_chan, dtype=np.bool_),
        float(s.cross_chi1), int(s.cross_freq_window), int(s.cross_time_window),
        int(s.cross_smooth_time), int(s.cross_smooth_freq),
        float(s.auto_chi1), int(s.auto_freq_window), int(s.auto_time_window),
        int(s.auto_smooth_time), int(s.auto_smooth_freq),
        float(s.rho), int(s.max_window), int(s.iterations),
        bool(s.combine_baselines), float(s.combined_chi1), int(s.min_baselines), int(s.combined_max_window),
        float(s.time_fraction), float(s.channel_fraction), int(s.dilate_time), int(s.dilate_freq),
        bool(s.combine_polarizations),
    )


def _block_fn(vis, flags, is_auto, static_chan, strategy):
    return flag_block(np.abs(vis), flags, is_auto[0, :, 0, 0], strategy, static_chan[0, 0, :, 0])


def flag_dataset(ds, strategy=None):
    """Lazy RFI flags for a Dataset from :func:`dsacont.io.uvh5.open_group`.

    ds: xarray.Dataset with ``vis`` (time, baseline, frequency, polarization) complex and
    ``flags`` (same dims) bool, coordinates ``antenna1``/``antenna2`` (baseline) and
    ``frequency`` (Hz, ascending). strategy: None (the default), a :class:`Strategy`, a dict of
    overrides, or a path to a TOML/JSON file.

    Returns an ``xarray.DataArray`` of bool, dask-backed, dims (time, baseline, frequency,
    polarization) like ``ds.vis``: ``ds.flags`` OR-ed with the new flags. The data are rechunked
    to (all times, ``block_baselines`` baselines, all frequencies, all polarisations) — the
    kernels need whole (time, frequency) planes, and the across-baseline detector pools the
    baselines of one block — and the block driver is mapped with ``dask.array.map_blocks``.
    Nothing is computed here.
    """
    import dask.array as da
    import xarray as xr

    s = _as_strategy(strategy)
    vis = ds["vis"].data
    if not isinstance(vis, da.Array):
        vis = da.from_array(np.asarray(vis), chunks=vis.shape)
    fl = ds["flags"].data if "flags" in ds else da.zeros(vis.shape, dtype=bool, chunks=vis.chunks)
    if not isinstance(fl, da.Array):
        fl = da.from_array(np.asarray(fl), chunks=vis.shape)
    nt, nb, nf, npol = vis.shape
    # blocks of >= block_baselines baselines; spread evenly so no block is tiny
    nblk = max(1, nb // max(1, int(s.block_baselines)))
    size = int(math.ceil(nb / nblk))
    chunks = (nt, size, nf, npol)
    vis = vis.rechunk(chunks)
    fl = fl.rechunk(chunks)
    a1 = np.asarray(ds["antenna1"].values)
    a2 = np.asarray(ds["antenna2"].values)
    is_auto = da.from_array((a1 == a2).reshape(1, nb, 1, 1), chunks=(1, size, 1, 1))
    freqs = np.asarray(ds["frequency"].values)
    static = da.from_array(s.static_channel_mask(freqs).reshape(1, 1, nf, 1), chunks=(1, 1, nf, 1))
    out = da.map_blocks(
        _block_fn, vis, fl, is_auto, static, strategy=s, dtype=bool, chunks=vis.chunks,
        name="dsacont-flag",
    )
    return xr.DataArray(
        out, dims=ds["vis"].dims, coords={k: v for k, v in ds["vis"].coords.items()}, name="flags"
    )


def flag_arrays(amp, flags, is_auto, strategy=None, static_chan=None, *, n_threads=1) -> np.ndarray:
    """Flag a whole in-memory cube block by block (``strategy.block_baselines`` baselines each).

    amp: (Nt, Nb, Nf, Np) float32 |V|; flags: same shape bool or None; is_auto: (Nb,) bool.
    ``n_threads`` > 1 runs blocks in threads (the kernels release the GIL).
    Returns (Nt, Nb, Nf, Np) bool.
    """
    s = _as_strategy(strategy)
    nt, nb, nf, npol = amp.shape
    if flags is None:
        flags = np.zeros(amp.shape, dtype=bool)
    nblk = max(1, nb // max(1, int(s.block_baselines)))
    edges = np.linspace(0, nb, nblk + 1).astype(int)
    out = np.empty(amp.shape, dtype=bool)

    def run(i):
        lo, hi = edges[i], edges[i + 1]
        out[:, lo:hi] = flag_block(amp[:, lo:hi], flags[:, lo:hi], is_auto[lo:hi], s, static_chan)
        return hi - lo

    t0 = _time.perf_counter()
    if n_threads > 1 and nblk > 1:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(n_threads) as pool:
            done = 0
            for n in pool.map(run, range(nblk)):
                done += n
                log.debug("flagged %d/%d baselines", done, nb)
    else:
        for i in range(nblk):
            run(i)
            log.debug("flagged %d/%d baselines", edges[i + 1], nb)
    log.info("flagged %d planes in %.1f s", nb * npol, _time.perf_counter() - t0)
    return out


# ---------------------------------------------------------------------------------------------
# summary and waterfall
# ---------------------------------------------------------------------------------------------


def _raw(x):
    """The array inside an xarray object (dask or numpy); other arrays unchanged."""
    return x.data if hasattr(x, "dims") and hasattr(x, "data") else x


def _flag_fractions(flags):
    """(per-baseline (Nb,), per-time (Nt,), per-channel (Nf,), per-pol (Np,), overall) fractions."""
    import dask
    import dask.array as da

    data = _raw(flags)
    if isinstance(data, da.Array):
        d = data.astype(np.float32)
        parts = dask.compute(d.mean(axis=(0, 2, 3)), d.mean(axis=(1, 2, 3)), d.mean(axis=(0, 1, 3)),
                             d.mean(axis=(0, 1, 2)))
    else:
        d = np.asarray(data)
        # count in one pass per axis set without a float copy of the whole cube
        n = d.shape
        pb = d.sum(axis=(0, 2, 3)) / (n[0] * n[2] * n[3])
        pt = d.sum(axis=(1, 2, 3)) / (n[1] * n[2] * n[3])
        pf = d.sum(axis=(0, 1, 3)) / (n[0] * n[1] * n[3])
        pp = d.sum(axis=(0, 1, 2)) / (n[0] * n[1] * n[2])
        parts = (pb, pt, pf, pp)
    pb, pt, pf, pp = (np.asarray(p, dtype=np.float64) for p in parts)
    return pb, pt, pf, pp, float(pb.mean()) if pb.size else 0.0


def summarize(flags, *, antenna1, antenna2, times, freqs, subband=None, polarizations=None,
              antenna_names=None) -> dict:
    """Flag summary from plain arrays (see :func:`flag_summary`)."""
    pb, pt, pf, pp, overall = _flag_fractions(flags)
    a1 = np.asarray(antenna1)
    a2 = np.asarray(antenna2)
    ants = np.unique(np.concatenate([a1, a2]))
    per_ant = {}
    for a in ants:
        sel = (a1 == a) | (a2 == a)
        name = str(antenna_names[a]) if antenna_names is not None and a < len(antenna_names) else str(int(a) + 1)
        per_ant[name] = float(pb[sel].mean())
    freqs = np.asarray(freqs, dtype=np.float64)
    if subband is None:
        subband = np.zeros(freqs.size, dtype=int)
    subband = np.asarray(subband)
    per_sb = {}
    for sb in np.unique(subband):
        sel = subband == sb
        per_sb[f"{int(sb):02d}"] = {
            "fraction": float(pf[sel].mean()),
            "freq_min_hz": float(freqs[sel].min()),
            "freq_max_hz": float(freqs[sel].max()),
        }
    auto = a1 == a2
    out = {
        "overall": overall,
        "cross": float(pb[~auto].mean()) if (~auto).any() else None,
        "auto": float(pb[auto].mean()) if auto.any() else None,
        "n_visibilities": int(np.prod(getattr(flags, "shape"))),
        "per_antenna": per_ant,
        "per_subband": per_sb,
        "per_time": [{"time_jd": float(t), "fraction": float(v)} for t, v in zip(np.asarray(times), pt)],
        "per_channel": [float(v) for v in pf],
        "per_polarization": {
            (str(polarizations[i]) if polarizations is not None else str(i)): float(v) for i, v in enumerate(pp)
        },
    }
    return out


def flag_summary(flags, ds) -> dict:
    """Fraction flagged overall, per antenna, per subband, per time, per channel and per pol.

    flags: (time, baseline, frequency, polarization) bool, numpy, dask or xarray (lazy is fine:
    only the reductions are computed). ds: the group's Dataset (coordinates antenna1, antenna2,
    time, frequency, subband, polarization, antenna_name are used when present).
    Returns a JSON-serialisable dict: ``overall``, ``cross``, ``auto`` (fractions in [0, 1]),
    ``per_antenna`` {name: fraction}, ``per_subband`` {"NN": {fraction, freq_min_hz, freq_max_hz}},
    ``per_time`` [{time_jd, fraction}], ``per_channel`` [fraction], ``per_polarization``.
    """
    def get(name):
        return np.asarray(ds[name].values) if name in ds.coords or name in ds else None

    return summarize(
        flags, antenna1=get("antenna1"), antenna2=get("antenna2"), times=get("time"), freqs=get("frequency"),
        subband=get("subband"), polarizations=get("polarization"), antenna_names=get("antenna_name"),
    )


def write_json_atomic(obj, path) -> Path:
    """Write ``obj`` as JSON to ``path`` through a temporary file and ``os.replace``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1))
    os.replace(tmp, path)
    return path


def plot_waterfall(ds_or_arrays, flags, png_path, baseline=None, polarization=0) -> Path:
    """Waterfall PNG: one baseline's amplitude (time x frequency) with its flags, and the
    fraction flagged over all baselines.

    ds_or_arrays: the Dataset, or a dict with ``vis`` (Nt, Nb, Nf, Np) complex (or ``amp``),
    ``frequency`` (Hz), and optionally ``antenna1``/``antenna2``. flags: (Nt, Nb, Nf, Np) bool
    (numpy/dask/xarray). baseline: index; default the cross-correlation with the median
    flagged fraction. Written atomically; returns the path.
    """
    # an object-oriented Figure: never touches pyplot's global backend (Jupyter's stays inline)
    from matplotlib.figure import Figure

    src = ds_or_arrays
    fl = _raw(flags)
    freqs = np.asarray(src["frequency"].values if hasattr(src["frequency"], "values") else src["frequency"])
    a1 = np.asarray(src["antenna1"].values if hasattr(src.get("antenna1", None), "values") else src.get("antenna1", []))
    a2 = np.asarray(src["antenna2"].values if hasattr(src.get("antenna2", None), "values") else src.get("antenna2", []))
    pb, pt, pf, pp, overall = _flag_fractions(fl)
    if baseline is None:
        cross = np.nonzero(a1 != a2)[0] if a1.size else np.arange(pb.size)
        if cross.size == 0:
            cross = np.arange(pb.size)
        order = cross[np.argsort(pb[cross])]
        baseline = int(order[len(order) // 2])
    if "amp" in src:
        amp = np.asarray(_raw(src["amp"])[:, baseline, :, polarization])
    else:
        v = src["vis"]
        v = _raw(v)[:, baseline, :, polarization]
        amp = np.abs(np.asarray(v.compute() if hasattr(v, "compute") else v))
    fplane = fl[:, baseline, :, polarization]
    fplane = np.asarray(fplane.compute() if hasattr(fplane, "compute") else fplane)
    import dask.array as da

    frac = fl[..., polarization].mean(axis=1) if not isinstance(fl, da.Array) else fl[..., polarization].mean(axis=1).compute()
    fmhz = freqs / 1e6
    ext = [fmhz[0], fmhz[-1], amp.shape[0] - 0.5, -0.5]
    fig = Figure(figsize=(10, 9), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    vmax = np.nanpercentile(amp[~fplane], 99) if (~fplane).any() else np.nanmax(amp)
    im = axes[0].imshow(amp, aspect="auto", extent=ext, vmin=0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=axes[0], label="|V| (data units)")
    lab = f"baseline {baseline}" + (f" ({a1[baseline] + 1}-{a2[baseline] + 1})" if a1.size else "")
    axes[0].set_title(f"amplitude, {lab}, pol {polarization}")
    axes[1].imshow(np.where(fplane, np.nan, amp), aspect="auto", extent=ext, vmin=0, vmax=vmax,
                   interpolation="nearest")
    axes[1].set_title(f"after flagging ({fplane.mean():.1%} flagged)")
    im2 = axes[2].imshow(frac, aspect="auto", extent=ext, vmin=0, vmax=1, cmap="magma", interpolation="nearest")
    fig.colorbar(im2, ax=axes[2], label="fraction flagged")
    axes[2].set_title(f"fraction of baselines flagged (overall {overall:.2%})")
    axes[2].set_xlabel("frequency (MHz)")
    for ax in axes:
        ax.set_ylabel("integration")
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = png_path.with_name(f".{png_path.stem}.tmp{os.getpid()}.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, png_path)
    return png_path


# ---------------------------------------------------------------------------------------------
# Measurement Set
# ---------------------------------------------------------------------------------------------

_ROW_BLOCK = 100_000


def _subtable_col(tb, path, col):
    tb.open(str(path))
    try:
        n = tb.nrows()
        try:
            vals = [tb.getcell(col, i) for i in range(n)]
        except RuntimeError:
            vals = []
    finally:
        tb.close()
    return vals


def _read_ms_layout(tb, ms_path):
    """Per data-description: spw id, channel frequencies (Hz), number of correlations."""
    ms_path = Path(ms_path)
    dd_spw = _subtable_col(tb, ms_path / "DATA_DESCRIPTION", "SPECTRAL_WINDOW_ID")
    dd_pol = _subtable_col(tb, ms_path / "DATA_DESCRIPTION", "POLARIZATION_ID")
    chan_freq = _subtable_col(tb, ms_path / "SPECTRAL_WINDOW", "CHAN_FREQ")
    corr = _subtable_col(tb, ms_path / "POLARIZATION", "CORR_TYPE")
    layout = {}
    for dd, (spw, pol) in enumerate(zip(dd_spw, dd_pol)):
        layout[dd] = {
            "spw": int(spw),
            "freq": np.asarray(chan_freq[int(spw)], dtype=np.float64).ravel(),
            "ncorr": int(np.asarray(corr[int(pol)]).size),
        }
    return layout


def _ms_groups(ddid, times, a1, a2, layout):
    """Group data descriptions that can be flagged as one frequency-concatenated cube: same
    (time, baseline) rows and same number of correlations. Returns lists of dd ids."""
    keys = {}
    for dd in np.unique(ddid):
        sel = ddid == dd
        sig = (layout[int(dd)]["ncorr"], int(sel.sum()), float(times[sel].sum()), int(a1[sel].sum()), int(a2[sel].sum()))
        keys.setdefault(sig, []).append(int(dd))
    return list(keys.values())


def flag_ms(ms_path, strategy=None, *, datacolumn="DATA", n_threads=1, summary_json=None, waterfall=None,
            dry_run=False) -> dict:
    """Flag RFI in an existing Measurement Set and update its FLAG column (one writer).

    ms_path: the MS directory. strategy: None/path/:class:`Strategy`/dict (see
    :func:`load_strategy`). datacolumn: the column to flag on (DATA, CORRECTED_DATA...).
    Data descriptions (spectral windows) with identical rows are concatenated along frequency
    (sorted ascending) and flagged as one band; others are flagged separately. The existing
    FLAG (and FLAG_ROW) count as pre-flags and are kept. Every new flag is computed before the
    first write; then FLAG is written in row blocks (and FLAG_ROW where a row is fully flagged).
    ``dry_run`` computes without writing. Optional ``summary_json`` and ``waterfall`` (PNG
    path, first band) are written atomically.

    Returns the summary dict of :func:`summarize` (for the first band, or a list under
    ``bands`` when there are several), plus ``ms``, ``strategy``, ``seconds`` and ``n_rows``.
    """
    from dsacont.casa import ensure_casa
    from dsacont.errors import BadInputError

    s = _as_strategy(strategy)
    ms_path = Path(ms_path)
    if not (ms_path / "table.dat").exists():
        raise BadInputError(ms_path, "not a Measurement Set (no table.dat)")
    ct = ensure_casa()
    t_start = _time.perf_counter()
    tb = ct.table()
    layout = _read_ms_layout(tb, ms_path)
    tb.open(str(ms_path), nomodify=dry_run)
    try:
        if datacolumn not in tb.colnames():
            raise BadInputError(ms_path, f"no column {datacolumn!r} (have {tb.colnames()})")
        nrow = tb.nrows()
        times = tb.getcol("TIME")
        a1 = tb.getcol("ANTENNA1").astype(np.int64)
        a2 = tb.getcol("ANTENNA2").astype(np.int64)
        ddid = tb.getcol("DATA_DESC_ID").astype(np.int64)
        flag_row = tb.getcol("FLAG_ROW").astype(bool)
        pending = []  # (dd, row indices, new flags (nrow_dd, nchan, ncorr)) computed before writing
        bands = []
        for group in _ms_groups(ddid, times, a1, a2, layout):
            rows0 = np.nonzero(ddid == group[0])[0]
            tvals, ti = np.unique(np.round(times[rows0], 3), return_inverse=True)
            bl_key = a1[rows0] * 100000 + a2[rows0]
            bvals, bi = np.unique(bl_key, return_inverse=True)
            nt, nb = tvals.size, bvals.size
            order = sorted(group, key=lambda d: layout[d]["freq"][0])
            freqs = np.concatenate([layout[d]["freq"] for d in order])
            fsort = np.argsort(freqs, kind="stable")
            freqs = freqs[fsort]
            ncorr = layout[order[0]]["ncorr"]
            nf = freqs.size
            log.info("%s: band of %d spw(s), %d times x %d baselines x %d channels x %d corr",
                     ms_path.name, len(order), nt, nb, nf, ncorr)
            amp = np.zeros((nt, nb, nf, ncorr), dtype=np.float32)
            pre = np.ones((nt, nb, nf, ncorr), dtype=bool)  # missing (time, baseline) stay flagged
            chan0 = 0
            rows_of = {}
            for d in order:
                rows = np.nonzero(ddid == d)[0]
                # rows of every dd in the group are in the same (time, baseline) order as rows0
                r_ti = ti if d == group[0] else np.unique(np.round(times[rows], 3), return_inverse=True)[1]
                r_bi = bi if d == group[0] else np.unique(a1[rows] * 100000 + a2[rows], return_inverse=True)[1]
                nch = layout[d]["freq"].size
                rows_of[d] = (rows, r_ti, r_bi, chan0, nch)
                sub = tb.query(f"DATA_DESC_ID=={d}") if len(layout) > 1 else tb
                try:
                    for lo in range(0, rows.size, _ROW_BLOCK):
                        n = min(_ROW_BLOCK, rows.size - lo)
                        data = sub.getcol(datacolumn, lo, n)  # (ncorr, nchan, n)
                        fl = sub.getcol("FLAG", lo, n)
                        seg = slice(lo, lo + n)
                        a = np.abs(data).transpose(2, 1, 0).astype(np.float32)
                        f = fl.transpose(2, 1, 0) | flag_row[rows[seg]][:, None, None]
                        amp[r_ti[seg], r_bi[seg], chan0:chan0 + nch, :] = a
                        pre[r_ti[seg], r_bi[seg], chan0:chan0 + nch, :] = f
                finally:
                    if sub is not tb:
                        sub.close()
                chan0 += nch
            # frequency order: put channels ascending for the kernels
            inv = np.argsort(fsort)
            amp = amp[:, :, fsort]
            pre = pre[:, :, fsort]
            ant1 = bvals // 100000
            ant2 = bvals % 100000
            newf = flag_arrays(amp, pre, ant1 == ant2, s, s.static_channel_mask(freqs), n_threads=n_threads)
            del amp
            summ = summarize(newf, antenna1=ant1, antenna2=ant2, times=tvals / 86400.0 + 2400000.5, freqs=freqs,
                             subband=np.repeat(np.arange(len(order)), [layout[d]["freq"].size for d in order])[fsort]
                             if len(order) > 1 else None)
            summ["new_fraction"] = float((newf & ~pre).mean())
            summ["spws"] = [layout[d]["spw"] for d in order]
            bands.append(summ)
            if waterfall is not None and len(bands) == 1:
                plot_waterfall({"amp": _amp_for_plot(tb, ms_path, rows_of, order, datacolumn, nt, nb, nf, ncorr, fsort, layout),
                                "frequency": freqs, "antenna1": ant1, "antenna2": ant2}, newf, waterfall)
            newf = newf[:, :, inv]  # back to the MS's channel order
            for d in order:
                rows, r_ti, r_bi, c0, nch = rows_of[d]
                pending.append((d, rows, newf[r_ti, r_bi, c0:c0 + nch, :]))
            del pre
        if not dry_run:
            log.info("%s: writing FLAG for %d rows", ms_path.name, nrow)
            for d, rows, fl in pending:
                sub = tb.query(f"DATA_DESC_ID=={d}") if len(layout) > 1 else tb
                try:
                    for lo in range(0, rows.size, _ROW_BLOCK):
                        n = min(_ROW_BLOCK, rows.size - lo)
                        block = fl[lo:lo + n]
                        sub.putcol("FLAG", np.ascontiguousarray(block.transpose(2, 1, 0)), lo, n)
                        full = block.reshape(n, -1).all(axis=1)
                        if full.any():
                            fr = sub.getcol("FLAG_ROW", lo, n).astype(bool) | full
                            sub.putcol("FLAG_ROW", fr, lo, n)
                finally:
                    if sub is not tb:
                        sub.close()
            tb.flush()
    finally:
        tb.close()
    out = dict(bands[0]) if len(bands) == 1 else {"bands": bands}
    out.update({"ms": str(ms_path), "strategy": s.to_dict(), "seconds": _time.perf_counter() - t_start,
                "n_rows": int(nrow), "datacolumn": datacolumn})
    if summary_json is not None:
        write_json_atomic(out, summary_json)
    return out


def _amp_for_plot(tb, ms_path, rows_of, order, datacolumn, nt, nb, nf, ncorr, fsort, layout):
    """Re-read amplitudes for the waterfall (only when a PNG is asked for)."""
    amp = np.zeros((nt, nb, nf, ncorr), dtype=np.float32)
    for d in order:
        rows, r_ti, r_bi, c0, nch = rows_of[d]
        sub = tb.query(f"DATA_DESC_ID=={d}") if len(layout) > 1 else tb
        try:
            data = sub.getcol(datacolumn)
        finally:
            if sub is not tb:
                sub.close()
        amp[r_ti, r_bi, c0:c0 + nch, :] = np.abs(data).transpose(2, 1, 0)
    return amp[:, :, fsort]


def cli(argv=None) -> int:
    """``dsacont flag MS [--strategy FILE] [--summary-json F] [--waterfall PNG]``."""
    p = argparse.ArgumentParser(prog="dsacont flag", description="Flag RFI in a Measurement Set (updates FLAG).")
    p.add_argument("ms", help="Measurement Set directory")
    p.add_argument("--strategy", help="TOML/JSON strategy file (default: the shipped DSA-110 strategy)")
    p.add_argument("--datacolumn", default="DATA")
    p.add_argument("--summary-json", help="write the flag summary here (JSON)")
    p.add_argument("--waterfall", help="write a waterfall PNG here")
    p.add_argument("--threads", type=int, default=1, help="threads for the kernels (default 1)")
    p.add_argument("--dry-run", action="store_true", help="compute and report, do not write FLAG")
    p.add_argument("--print-strategy", action="store_true", help="print the effective strategy and exit")
    a = p.parse_args(argv)
    if a.print_strategy:
        print(json.dumps(load_strategy(a.strategy).to_dict(), indent=1))
        return 0
    summ = flag_ms(a.ms, a.strategy, datacolumn=a.datacolumn, n_threads=a.threads, summary_json=a.summary_json,
                   waterfall=a.waterfall, dry_run=a.dry_run)
    bands = summ.get("bands", [summ])
    for i, b in enumerate(bands):
        print(f"band {i}: {b['overall']:.2%} flagged ({b['new_fraction']:.2%} new); cross {b['cross']:.2%}"
              + (f", auto {b['auto']:.2%}" if b["auto"] is not None else ""))
    print(f"{summ['seconds']:.1f} s")
    return 0
