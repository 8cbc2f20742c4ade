"""Instrumental corruptions: antenna gains, bandpasses, thermal noise, RFI.

Every random draw comes from ``numpy.random.default_rng`` seeded by the user's seed plus a
fixed tag and the thing it belongs to (antenna, group start, subband), so results do not depend
on how a time range is split into ``simulate`` calls or on the order of evaluation.

Gain / bandpass split (what the calibration tests score against)
-----------------------------------------------------------------
The complex gain of antenna a, polarisation p, at time t and frequency f is
``G = g[t, a, p] * B[a, f, p]`` and ``V_obs(a1, a2) = G_a1 * conj(G_a2) * (V_sky + noise + RFI)``.

* ``g`` (time part): amplitude ``A0 * (1 + 0.02 sin(2 pi (t - T_REF)/P_a + psi_a))`` with
  ``A0 ~ N(1, 0.05)`` (clipped to 0.85..1.15), phase ``phi0 + 15 deg * sin(2 pi (t - T_REF)/P_p + psi_p)``
  with ``phi0 ~ U(-180, 180) deg``, periods P ~ U(8, 16) hours: smooth, at most ~1 deg and ~0.1 %
  change within one 5-minute group.
* ``B`` (bandpass): ``|B|`` = 1 + slope + 3 cosine ripples (5-30 cycles per band, 1-4 %),
  phase = residual delay (~N(0, 0.3) ns) + a 2-4 deg ripple; normalised per antenna and
  polarisation so that mean(|B|) = 1 and mean(arg B) = 0 over the simulated channels.
"""
from __future__ import annotations

import numpy as np

T_REF_JD = 2460000.5  # fixed epoch of the gain drifts: gains are a function of absolute time
BAND_CENTER_HZ = 1405.0e6
BAND_HALF_WIDTH_HZ = 93.75e6

TAG_GAIN, TAG_BANDPASS, TAG_RFI_LINES, TAG_RFI_GROUP, TAG_NOISE, TAG_NAMES, TAG_ANTS = 17, 29, 41, 43, 53, 61, 71


def time_gains(seed: int, antennas, times_jd) -> np.ndarray:
    """Time-variable complex gains, shape (Ntimes, Nants, 2), antennas in the given order."""
    t = np.asarray(times_jd, dtype=float) - T_REF_JD
    out = np.empty((t.size, len(antennas), 2), dtype=np.complex128)
    for i, ant in enumerate(antennas):
        rng = np.random.default_rng([seed, TAG_GAIN, int(ant)])
        for p in range(2):
            a0 = np.clip(rng.normal(1.0, 0.05), 0.85, 1.15)
            pa, psa = rng.uniform(8, 16) / 24.0, rng.uniform(0, 2 * np.pi)
            phi0 = rng.uniform(-np.pi, np.pi)
            pp, psp = rng.uniform(8, 16) / 24.0, rng.uniform(0, 2 * np.pi)
            amp = a0 * (1.0 + 0.02 * np.sin(2 * np.pi * t / pa + psa))
            ph = phi0 + np.radians(15.0) * np.sin(2 * np.pi * t / pp + psp)
            out[:, i, p] = amp * np.exp(1j * ph)
    return out


def bandpasses(seed: int, antennas, freq_hz) -> np.ndarray:
    """Complex bandpasses, shape (Nants, Nfreq, 2), frequencies in the order given.

    Normalised over the given channels: mean |B| = 1, mean arg(B) = 0 per antenna/pol.
    """
    f = np.asarray(freq_hz, dtype=float)
    x = (f - BAND_CENTER_HZ) / BAND_HALF_WIDTH_HZ
    out = np.empty((len(antennas), f.size, 2), dtype=np.complex128)
    for i, ant in enumerate(antennas):
        rng = np.random.default_rng([seed, TAG_BANDPASS, int(ant)])
        for p in range(2):
            amp = 1.0 + rng.normal(0, 0.05) * x
            for _ in range(3):
                amp += rng.uniform(0.01, 0.04) * np.cos(np.pi * rng.uniform(5, 30) * x + rng.uniform(0, 2 * np.pi))
            tau = rng.normal(0, 0.3e-9)
            ph = 2 * np.pi * tau * (f - BAND_CENTER_HZ)
            ph += np.radians(rng.uniform(2, 4)) * np.sin(np.pi * rng.uniform(3, 10) * x + rng.uniform(0, 2 * np.pi))
            amp /= amp.mean()
            ph -= ph.mean()
            out[i, :, p] = amp * np.exp(1j * ph)
    return out


def noise_sigma(sefd_jy: float, chan_width_hz: float, tint_s: float) -> float:
    """Cross-correlation noise per real and per imaginary part (Jy): SEFD / sqrt(2 dnu tau)."""
    return sefd_jy / np.sqrt(2.0 * chan_width_hz * tint_s)


def rfi_plan(seed: int, group_key: int, ntimes: int, freq_asc_hz, sigma_jy: float):
    """RFI for one group, as (tf_mask, amplitude), both shape (Ntimes, Nfreq ascending).

    * Narrowband lines: ``max(2, Nfreq // 150)`` channels fixed for the seed (the same
      transmitters every group), present in every integration on every baseline and both pols,
      amplitude ``A0 * m(t)`` with ``A0 = sigma * lognormal(median 40, sigma_ln 0.6)`` and a smooth
      modulation m(t) in [0.3, 1.0] (period 2-10 min), clipped below at 10 sigma.
    * Broadband bursts: 1-2 bursts of 1-2 integrations each, all channels, every baseline and
      both pols, amplitude ``sigma * lognormal(median 25, 0.5)`` with a +-20 % spectral ripple,
      clipped below at 10 sigma.
    ``amplitude`` is |RFI| in Jy before gains (0 where tf_mask is False); where a line meets a
    burst the larger amplitude is used. ``sigma`` is the cross noise per real/imag part.
    """
    f = np.asarray(freq_asc_hz, dtype=float)
    nf = f.size
    amp = np.zeros((ntimes, nf))
    # lines: positions from the seed only
    rl = np.random.default_rng([seed, TAG_RFI_LINES])
    nlines = max(2, nf // 150)
    line_f = rl.uniform(f.min(), f.max(), nlines)
    chans = np.unique(np.argmin(np.abs(f[None, :] - line_f[:, None]), axis=1))
    rg = np.random.default_rng([seed, TAG_RFI_GROUP, group_key])
    tt = np.arange(ntimes) * 12.884902
    for c in chans:
        a0 = sigma_jy * 40.0 * np.exp(rg.normal(0, 0.6))
        per = rg.uniform(120, 600)
        m = 0.65 + 0.35 * np.sin(2 * np.pi * tt / per + rg.uniform(0, 2 * np.pi))
        amp[:, c] = np.maximum(a0 * m, 10 * sigma_jy)
    nb = rg.integers(1, 3)
    for _ in range(nb):
        t0 = rg.integers(0, ntimes)
        length = rg.integers(1, 3)
        b0 = sigma_jy * 25.0 * np.exp(rg.normal(0, 0.5))
        spec = 1.0 + 0.2 * np.sin(2 * np.pi * rg.uniform(1, 4) * (f - f.min()) / (np.ptp(f) + 1.0) + rg.uniform(0, 6.3))
        for t in range(t0, min(ntimes, t0 + length)):
            amp[t] = np.maximum(amp[t], np.maximum(b0 * spec, 10 * sigma_jy))
    return amp > 0, amp
