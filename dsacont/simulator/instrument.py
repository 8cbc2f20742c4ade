"""The realistic instrument: the real active array, raw correlator units, gains with a realistic
time structure, a bandpass with subband-edge roll-off and dips, OVRO-like RFI, and receptor
faults (used when ``simulate(..., realism="realistic")``; the ideal models are in ``corrupt``).

Modelled on what the DSA-110 operators measured on real data (see ``docs/SIMULATOR.md``).
Every draw is seeded by the user's seed, a fixed tag and the thing it belongs to (antenna,
polarisation, day, group start), and every time-dependent quantity is a function of ABSOLUTE
time, so groups simulated in separate calls (consecutive or hours apart) agree.

Gains, ``g[t, a, p]`` (raw correlator units: ``V_raw = g1 B1 conj(g2 B2) V_Jy``)
-------------------------------------------------------------------------------
* amplitude ``A0 * (1 + sum_k a_k sin(2 pi t / P_k + psi_k))``: ``A0 = 0.07 * lognormal(0, 0.15)``
  (clipped 0.04..0.12) per antenna/pol; three terms with ``a_k ~ U(1, 3) %`` and
  ``P_k ~ U(2, 12) h`` (amplitude drifts of a few percent per hour);
* phase ``phi0`` (uniform) + slow instrumental drift (two sinusoids of 15-40 deg, periods 4-24 h)
  + ionosphere-like wander (16 sinusoids with periods log-spaced 3-120 min, amplitudes
  ~ sqrt(period), about 8 deg rms in all) + electronics-reset jumps (per antenna a Poisson process
  of ``JUMP_RATE_PER_DAY``; at each jump the antenna's phase offset, both pols, is redrawn
  uniformly in (-180, 180) deg);
* faults: ``wild`` phase (a fresh uniform phase each integration), ``wrap`` (a phase ramp of one
  turn per 2-10 min), zeros for a dead receptor, zeros after an antenna's death time.

Bandpass, ``B[a, f, p]``
------------------------
The ideal smooth bandpass (``corrupt.bandpasses``) times a roll-off at every subband edge (a dip
of 3-8 % with a 0.4 MHz scale on each side of every edge) times Gaussian dips of 8-27 % (FWHM
1.5-3 MHz) at 1350, 1395, 1405, 1422 and 1475 MHz (depth common to all antennas to +-10 %), times
a residual delay ``exp(2 pi i tau (f - 1405 MHz))`` of 2-6 ns on the antennas listed in
the fault plan.
"""
from __future__ import annotations

import numpy as np

from . import corrupt

INACTIVE_PADS = (10, 21, 22, 23, *range(52, 68), 117)  # DSA-NNN names (1-based), early 2026
GAIN_AMPLITUDE = 0.07
JUMP_RATE_PER_DAY = 0.5
DIP_FREQS_HZ = (1350e6, 1395e6, 1405e6, 1422e6, 1475e6)
GPS_L3_HZ = 1381.05e6
SUBBAND_WIDTH_HZ = 187.5e6 / 16
BAND_TOP_HZ = 1498.75e6
INTEGRATION_S = 12.884902

TAG_RGAIN, TAG_JUMP, TAG_WILD, TAG_RBP, TAG_FAULTS, TAG_RRFI, TAG_DEADNOISE, TAG_REAL_ANTS = (
    101, 103, 107, 109, 113, 127, 131, 137)


def real_active_pads() -> np.ndarray:
    """0-based numbers of the 96 pads active in early 2026 (all 117 minus ``INACTIVE_PADS``)."""
    return np.setdiff1d(np.arange(117), np.array(INACTIVE_PADS) - 1)


def _t_days(times_jd) -> np.ndarray:
    return np.asarray(times_jd, dtype=float) - corrupt.T_REF_JD


def _jump_times(seed: int, ant: int, day: int) -> np.ndarray:
    rng = np.random.default_rng([seed, TAG_JUMP, int(ant), int(day) + 100_000])
    return np.sort(day + rng.random(rng.poisson(JUMP_RATE_PER_DAY)))


def jump_offsets(seed: int, ant: int, t_days: np.ndarray, lookback_days: int = 60) -> np.ndarray:
    """Phase offsets (rad) of an antenna's electronics resets at times ``t_days`` (days since
    ``T_REF_JD``), shape (Nt, 2): the offset drawn for the latest jump at or before t (0 before any
    jump in the preceding ``lookback_days``)."""
    out = np.zeros((t_days.size, 2))
    for i, t in enumerate(t_days):
        day = int(np.floor(t))
        for d in range(day, day - lookback_days, -1):
            jt = _jump_times(seed, ant, d)
            jt = jt[jt <= t]
            if jt.size:
                key = int(round(jt[-1] * 86400.0 * 1000))
                out[i] = np.random.default_rng([seed, TAG_JUMP, int(ant), key % (2**62)]).uniform(-np.pi, np.pi, 2)
                break
    return out


def jumps_between(seed: int, antennas, jd0: float, jd1: float) -> list[tuple[int, float]]:
    """[(antenna number, JD)] of the phase jumps in [jd0, jd1)."""
    t0, t1 = jd0 - corrupt.T_REF_JD, jd1 - corrupt.T_REF_JD
    out = []
    for a in antennas:
        for d in range(int(np.floor(t0)), int(np.floor(t1)) + 1):
            for jt in _jump_times(seed, int(a), d):
                if t0 <= jt < t1:
                    out.append((int(a), float(jt + corrupt.T_REF_JD)))
    return out


def realistic_gains(seed: int, antennas, times_jd, faults: dict | None = None) -> np.ndarray:
    """Complex raw-unit gains, shape (Ntimes, Nants, 2) (see the module docstring).

    ``faults`` (from ``fault_plan``) adds wild/wrapping phases and zeros for dead receptors and
    dead antennas; None: healthy gains only.
    """
    t = _t_days(times_jd)
    th = t * 24.0  # hours
    out = np.empty((t.size, len(antennas), 2), dtype=np.complex128)
    per_iono_h = np.geomspace(3.0, 120.0, 16) / 60.0
    for i, ant in enumerate(antennas):
        jumps = jump_offsets(seed, int(ant), t)
        for p in range(2):
            rng = np.random.default_rng([seed, TAG_RGAIN, int(ant), p])
            a0 = GAIN_AMPLITUDE * np.clip(np.exp(rng.normal(0.0, 0.15)), 0.04 / 0.07, 0.12 / 0.07)
            amp = np.ones_like(th)
            for _ in range(3):
                amp += rng.uniform(0.01, 0.03) * np.sin(2 * np.pi * th / rng.uniform(2, 12) + rng.uniform(0, 2 * np.pi))
            ph = np.full_like(th, rng.uniform(-np.pi, np.pi))
            for _ in range(2):
                ph += np.radians(rng.uniform(15, 40)) * np.sin(2 * np.pi * th / rng.uniform(4, 24)
                                                               + rng.uniform(0, 2 * np.pi))
            ia = np.sqrt(per_iono_h / per_iono_h.sum()) * np.radians(8.0) * np.sqrt(2.0)
            for a_k, p_k in zip(ia, per_iono_h):
                ph += a_k * rng.uniform(0.5, 1.5) * np.sin(2 * np.pi * th / (p_k * rng.uniform(0.8, 1.25))
                                                           + rng.uniform(0, 2 * np.pi))
            ph += jumps[:, p]
            out[:, i, p] = a0 * amp * np.exp(1j * ph)
    if faults is not None:
        out = apply_gain_faults(seed, antennas, times_jd, out, faults)
    return out


def apply_gain_faults(seed, antennas, times_jd, gains, faults) -> np.ndarray:
    """Wild/wrapping phases and dead receptors/antennas applied to healthy gains (Nt, Na, 2)."""
    g = np.array(gains)
    t = _t_days(times_jd)
    for i, ant in enumerate(antennas):
        kind = faults["phase_fault"][i]
        if kind == "wild":
            for k, tk in enumerate(t):
                key = int(round(tk * 86400.0))
                g[k, i, :] *= np.exp(1j * np.random.default_rng([seed, TAG_WILD, int(ant), key]).uniform(-np.pi, np.pi, 2))
        elif kind == "wrap":
            g[:, i, :] *= np.exp(2j * np.pi * (t * 86400.0 / faults["wrap_period_s"][i]))[:, None]
    return g * ~receptor_dead(faults, times_jd)


def receptor_dead(faults: dict, times_jd) -> np.ndarray:
    """Receptors giving no sky signal, bool (Nt, Na, 2), at each time (dead pol or dead antenna)."""
    tj = np.asarray(times_jd, dtype=float)
    dead = np.broadcast_to(faults["dead_pol"][None, :, :], (tj.size,) + faults["dead_pol"].shape).copy()
    dies = faults["dies_at_jd"]
    gone = np.isfinite(dies)[None, :] & (tj[:, None] >= np.where(np.isfinite(dies), dies, np.inf)[None, :])
    dead |= gone[:, :, None]
    return dead


def fault_plan(seed: int, antennas, die_at_jd: float | None) -> dict:
    """Which receptors are faulty, fixed for the seed and antenna set (a real fault persists).

    Returns dict (arrays over the given antennas, Na; pols XX=0, YY=1):
    ``dead_pol`` (Na, 2) bool: ~1 in 7 antennas with one dead polarisation;
    ``dead_kind`` (Na, 2) str: 'zeros' (exact zeros) or 'noise' (uncorrelated noise of the normal
    raw level, no sky signal), '' when healthy;
    ``phase_fault`` (Na,) str: 'wild' or 'wrap' on 2 antennas (one of each), '' otherwise;
    ``wrap_period_s`` (Na,) s per turn of a wrapping phase (nan otherwise);
    ``delay_ns`` (Na,) residual delay (0 on healthy antennas; 2-6 ns in magnitude on ~1 in 8);
    ``dies_at_jd`` (Na,) the time an antenna stops (all its data zeros from then on; nan = never):
    one antenna dies at ``die_at_jd`` (None: none dies).
    """
    ants = np.asarray(antennas)
    na = ants.size
    rng = np.random.default_rng([seed, TAG_FAULTS, na, int(ants.sum())])
    order = rng.permutation(na)
    n_dead = max(1, int(round(na / 7)))
    dead_pol = np.zeros((na, 2), bool)
    dead_kind = np.full((na, 2), "", dtype="U5")
    for i in order[:n_dead]:
        p = int(rng.integers(0, 2))
        dead_pol[i, p] = True
        dead_kind[i, p] = "zeros" if rng.random() < 0.5 else "noise"
    rest = order[n_dead:]
    phase_fault = np.full(na, "", dtype="U4")
    wrap_period = np.full(na, np.nan)
    phase_fault[rest[0]] = "wild"
    phase_fault[rest[1]] = "wrap"
    wrap_period[rest[1]] = rng.uniform(120, 600) * rng.choice([-1, 1])
    delay = np.zeros(na)
    n_del = max(1, int(round(na / 8)))
    for i in rest[2:2 + n_del]:
        delay[i] = rng.uniform(2.0, 6.0) * rng.choice([-1, 1])
    dies = np.full(na, np.nan)
    if die_at_jd is not None:
        dies[rest[2 + n_del]] = float(die_at_jd)
    return dict(dead_pol=dead_pol, dead_kind=dead_kind, phase_fault=phase_fault, wrap_period_s=wrap_period,
                delay_ns=delay, dies_at_jd=dies)


def subband_edges_hz() -> np.ndarray:
    """The 17 subband boundaries (Hz), descending from the band top."""
    return BAND_TOP_HZ - np.arange(17) * SUBBAND_WIDTH_HZ


def realistic_bandpasses(seed: int, antennas, freq_hz, delay_ns=None) -> np.ndarray:
    """Complex bandpasses (Nants, Nfreq, 2) in the frequency order given: the smooth ideal
    bandpass times subband-edge roll-off, the named dips and residual delays (``delay_ns`` (Na,))."""
    f = np.asarray(freq_hz, dtype=float)
    out = corrupt.bandpasses(seed, antennas, f)
    rc = np.random.default_rng([seed, TAG_RBP])
    edge_depth = rc.uniform(0.03, 0.08, 17)
    dip_depth = rc.uniform(0.08, 0.27, len(DIP_FREQS_HZ))
    dip_fwhm = rc.uniform(1.5e6, 3.0e6, len(DIP_FREQS_HZ))
    dist = np.abs(f[:, None] - subband_edges_hz()[None, :])  # (Nf, 17)
    for i, ant in enumerate(antennas):
        ra = np.random.default_rng([seed, TAG_RBP, int(ant)])
        for p in range(2):
            shape = np.ones_like(f)
            shape *= np.prod(1.0 - edge_depth[None, :] * ra.uniform(0.9, 1.1, 17)[None, :] * np.exp(-dist / 0.4e6), axis=1)
            for fc, d, w in zip(DIP_FREQS_HZ, dip_depth, dip_fwhm):
                shape *= 1.0 - d * ra.uniform(0.9, 1.1) * np.exp(-4 * np.log(2) * ((f - fc) / w) ** 2)
            out[i, :, p] *= shape
            if delay_ns is not None and delay_ns[i] != 0.0:
                out[i, :, p] *= np.exp(2j * np.pi * delay_ns[i] * 1e-9 * (f - corrupt.BAND_CENTER_HZ))
    return out


def realistic_rfi_plan(seed: int, group_key: int, ntimes: int, freq_asc_hz, sigma_jy: float):
    """OVRO-like RFI for one group: (tf_mask, amplitude, kinds), shapes (Ntimes, Nfreq ascending).

    * persistent narrow lines: ``max(2, Nfreq // 100)`` channels fixed for the seed, present in
      every integration (amplitude ``sigma * lognormal(median 40, 0.6)``, slowly modulated);
    * GPS L3 at 1381.05 MHz: the channels within 1 MHz of it (at least the nearest), on in each
      integration with probability 0.3, ``sigma * lognormal(median 20, 0.5)``;
    * satellite bursts: Poisson(0.6) per group, each 1-2 integrations over a contiguous 20-90 MHz
      stretch of the band, ``sigma * lognormal(median 30, 0.6)`` with a +-30 % spectral ripple.
    All amplitudes are clipped below at 10 sigma (Jy before gains). ``kinds`` is an int8 map:
    1 line, 2 GPS L3, 4 satellite (bitwise or where they overlap).
    """
    f = np.asarray(freq_asc_hz, dtype=float)
    nf = f.size
    amp = np.zeros((ntimes, nf))
    kinds = np.zeros((ntimes, nf), np.int8)
    rl = np.random.default_rng([seed, TAG_RRFI])
    nlines = max(2, nf // 100)
    chans = np.unique(np.argmin(np.abs(f[None, :] - rl.uniform(f.min(), f.max(), nlines)[:, None]), axis=1))
    rg = np.random.default_rng([seed, TAG_RRFI, group_key])
    tt = np.arange(ntimes) * INTEGRATION_S
    floor = 10 * sigma_jy
    for c in chans:
        a0 = sigma_jy * 40.0 * np.exp(rg.normal(0, 0.6))
        m = 0.65 + 0.35 * np.sin(2 * np.pi * tt / rg.uniform(120, 600) + rg.uniform(0, 2 * np.pi))
        amp[:, c] = np.maximum(amp[:, c], np.maximum(a0 * m, floor))
        kinds[:, c] |= 1
    gps = np.abs(f - GPS_L3_HZ) <= 1.0e6
    if f.min() <= GPS_L3_HZ <= f.max() and not gps.any():
        gps[np.argmin(np.abs(f - GPS_L3_HZ))] = True
    on = rg.random(ntimes) < 0.3
    for t in np.nonzero(on)[0]:
        a = sigma_jy * 20.0 * np.exp(rg.normal(0, 0.5))
        amp[t, gps] = np.maximum(amp[t, gps], max(a, floor))
        kinds[t, gps] |= 2
    for _ in range(rg.poisson(0.6)):
        t0 = int(rg.integers(0, ntimes))
        length = int(rg.integers(1, 3))
        width = rg.uniform(20e6, 90e6)
        lo = rg.uniform(f.min() - width / 2, f.max() - width / 2)
        sel = (f >= lo) & (f <= lo + width)
        b0 = sigma_jy * 30.0 * np.exp(rg.normal(0, 0.6))
        spec = 1.0 + 0.3 * np.sin(2 * np.pi * rg.uniform(1, 4) * (f - lo) / width + rg.uniform(0, 6.3))
        for t in range(t0, min(ntimes, t0 + length)):
            amp[t, sel] = np.maximum(amp[t, sel], np.maximum(b0 * spec[sel], floor))
            kinds[t, sel] |= 4
    return amp > 0, amp, kinds
