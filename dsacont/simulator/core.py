"""``simulate``: write DSA-110 correlator subband files with recorded truth.

See ``docs/SIMULATOR.md`` for what is modelled.  This package never imports the pipeline
(telescope, loader, phasing, calibrators, ...): positions, directions, uvw, phases, primary beam
and calibrator flux are computed here from the shipped data files, so the pipeline can be
scored against it.
"""
from __future__ import annotations

import logging
import os
import time as _time
from dataclasses import dataclass

import numpy as np

from . import corrupt, geometry, sky
from .kernels import apply_antenna_gains, predict_point_sources
from .writer import write_subband

log = logging.getLogger(__name__)

INTEGRATION_S = 12.884902
N_INT = 24
GROUP_S = N_INT * INTEGRATION_S  # 309.237648 s
N_SUBBANDS = 16
BAND_TOP_HZ = 1498.75e6
BAND_WIDTH_HZ = 187.5e6
SEFD_JY = 6000.0
NAME_JITTER_MAX_S = 12.0


@dataclass(frozen=True)
class Preset:
    name: str
    n_antennas: int
    chans_per_subband: int
    max_radius_m: float | None = None  # choose antennas among pads this close to the array centre

    @property
    def channel_width_hz(self) -> float:
        return BAND_WIDTH_HZ / (N_SUBBANDS * self.chans_per_subband)


PRESETS = {
    "full": Preset("full", 96, 48),   # the real size: 4656 baselines, 768 x 244.140625 kHz
    # 1176 baselines, 128 x 1.46484375 MHz; antennas drawn from the 104 pads within 600 m of the
    # centre (baselines <= 837 m, ~1 arcmin beam), so a 3.5 deg tile images at ~1k^2 pixels
    "small": Preset("small", 48, 8, max_radius_m=600.0),
}


def _as_time(t):
    from astropy.time import Time

    if isinstance(t, Time):
        return Time(t, scale="utc")
    return Time(str(t).replace(" ", "T"), format="isot", scale="utc")


def frequencies(preset: Preset) -> np.ndarray:
    """All channel centres in FILE order (descending), Hz, shape (16 * Nchan,); subband s holds
    entries [s*Nchan, (s+1)*Nchan)."""
    n = N_SUBBANDS * preset.chans_per_subband
    return BAND_TOP_HZ - (np.arange(n) + 0.5) * preset.channel_width_hz


def active_antennas(preset: Preset, seed: int, dead_antenna: int | None = None) -> np.ndarray:
    """Sorted antenna numbers (0-based) present in the files (seeded choice of the 117 pads).

    A requested ``dead_antenna`` that the seeded choice left out replaces the active antenna
    nearest to it in number, so the count stays the preset's.
    """
    rng = np.random.default_rng([seed, corrupt.TAG_ANTS, preset.n_antennas])
    pads = np.arange(geometry.N_PADS)
    if preset.max_radius_m is not None:
        rel = geometry.antenna_positions()  # relative to the array centre
        pads = pads[np.linalg.norm(rel, axis=1) <= preset.max_radius_m]
    ants = np.sort(rng.choice(pads, preset.n_antennas, replace=False))
    if dead_antenna is not None:
        dead_antenna = int(dead_antenna)
        if not 0 <= dead_antenna < geometry.N_PADS:
            raise ValueError(f"dead_antenna must be an antenna number 0..116, got {dead_antenna}")
        if dead_antenna not in ants:
            ants[np.argmin(np.abs(ants - dead_antenna))] = dead_antenna
            ants = np.sort(ants)
    return ants


def baseline_order(ants: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ant1, ant2) antenna numbers, ant1 <= ant2, autocorrelations included, ant1-major."""
    i, j = np.triu_indices(ants.size)
    return ants[i].astype(np.int64), ants[j].astype(np.int64)


def _format_stamp(t) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def _sources_for_group(seed, dec_deg, times_jd, s0, field=True):
    """Calibrator + field sources that come within FIELD_RADIUS_DEG of the pointing."""
    cal = sky.calibrator_model()
    mid = times_jd[len(times_jd) // 2]
    # RA of the meridian at mid-time: direction s0 has HA 0, so RA_app = LAST; RA(ICRS) close enough
    from astropy.time import Time

    last = Time(mid, format="jd", scale="utc").sidereal_time("apparent", longitude=np.degrees(geometry.OVRO_LON_RAD)).deg
    half_span = (times_jd[-1] - times_jd[0]) * 360.98 / 2 + 1.0
    r = sky.FIELD_RADIUS_DEG
    dra = min(180.0, half_span + r / max(np.cos(np.radians(min(89.0, abs(dec_deg) + r))), 1e-3) + 1.0)
    fld = sky.field_sources(seed, dec_deg, last - dra, last + dra)
    if not field:
        fld = {k: v[:0] for k, v in fld.items()}
    names = np.concatenate([[cal["name"]], fld["name"]]).astype("U16")
    ra = np.concatenate([[cal["ra_deg"]], fld["ra_deg"]])
    dec = np.concatenate([[cal["dec_deg"]], fld["dec_deg"]])
    flux = np.concatenate([[cal["flux_jy"]], fld["flux_jy"]])
    alpha = np.concatenate([[cal["spectral_index"]], fld["spectral_index"]])
    # cheap preselection on a great-circle distance from the pointing's mean RA/Dec
    cosd = (np.sin(np.radians(dec)) * np.sin(np.radians(dec_deg))
            + np.cos(np.radians(dec)) * np.cos(np.radians(dec_deg)) * np.cos(np.radians(ra - last)))
    pre = np.degrees(np.arccos(np.clip(cosd, -1, 1))) <= r + half_span + 1.0
    names, ra, dec, flux, alpha = names[pre], ra[pre], dec[pre], flux[pre], alpha[pre]
    vec = geometry.source_vectors(ra, dec, times_jd)  # (Nt, Ns, 3)
    cos_off = vec @ s0  # (Nt, Ns)
    keep = np.degrees(np.arccos(np.clip(cos_off.max(axis=0), -1, 1))) <= r
    # drop sources whose peak apparent flux at the band centre stays below APPARENT_MIN_JY
    peak = flux * geometry.airy_beam(cos_off.max(axis=0), np.array([sky.REF_FREQ_HZ]))[:, 0]
    keep &= peak >= sky.APPARENT_MIN_JY
    keep[0] = keep[0] or np.degrees(np.arccos(np.clip(cos_off[:, 0].max(), -1, 1))) <= r  # calibrator
    srcs = dict(name=names[keep], ra_deg=ra[keep], dec_deg=dec[keep], flux_jy=flux[keep],
                spectral_index=alpha[keep])
    return srcs, vec[:, keep], cos_off[:, keep]


def _subband_task(sb, *, preset, freqs_desc, times_jd, ant_pos, ant1, ant2, ant1_idx, ant2_idx, auto, dsrc, cos_off, srcs,
                  gains_t, bp_desc, rfi_amp_desc, noise, sigma, seed, group_key, dead_idx, path, uvw,
                  dec_rad, fs_table, delays):
    t0 = _time.perf_counter()
    nch = preset.chans_per_subband
    sl = slice(sb * nch, (sb + 1) * nch)
    f = freqs_desc[sl]
    spec = srcs["flux_jy"][None, :] * (f[:, None] / sky.REF_FREQ_HZ) ** srcs["spectral_index"][None, :]  # (Nch, Ns)
    beam = geometry.airy_beam(cos_off, f)  # (Nt, Ns, Nch)
    amp = beam * spec.T[None, :, :]
    v = predict_point_sources(ant_pos, ant1_idx, ant2_idx, dsrc, np.ascontiguousarray(amp), float(f[0]), float(f[1] - f[0]) if nch > 1 else 0.0)
    nt, nbls = v.shape[:2]
    vis = np.empty((nt, nbls, nch, 2), dtype=np.complex128)
    vis[..., 0] = v
    vis[..., 1] = v
    del v
    # autocorrelations: system power + sky, real
    vis[:, auto] = vis[:, auto].real + SEFD_JY
    rng = np.random.default_rng([seed, corrupt.TAG_NOISE, group_key, sb])
    dnu = preset.channel_width_hz
    if noise:
        cross = ~auto
        nc = int(cross.sum())
        vis[:, cross] += sigma * (rng.standard_normal((nt, nc, nch, 2)) + 1j * rng.standard_normal((nt, nc, nch, 2)))
        pa = vis[:, auto].real
        vis[:, auto] = pa + pa / np.sqrt(dnu * INTEGRATION_S) * rng.standard_normal(pa.shape)
    ra = rfi_amp_desc[:, sl]  # (Nt, Nch)
    if ra.any():
        tt, cc = np.nonzero(ra)
        a = ra[tt, cc]  # (K,)
        phases = np.exp(2j * np.pi * rng.random((tt.size, nbls, 2)))
        phases[:, auto] = 1.0  # autos see RFI power
        vis[tt, :, cc, :] += a[:, None, None] * phases
    if gains_t is not None:
        g = gains_t[:, :, None, :] * bp_desc[None, :, sl, :]  # (Nt, Nant, Nch, 2)
        apply_antenna_gains(vis, ant1_idx, ant2_idx, np.ascontiguousarray(g))
    if dead_idx is not None:
        bad = (ant1_idx == dead_idx) | (ant2_idx == dead_idx)
        vis[:, bad] = 0.0
    vis[:, auto] = vis[:, auto].real  # autos are real in the files
    write_subband(path, vis=vis, times_jd=times_jd, freqs_hz=f, channel_width_hz=dnu,
                  integration_time_s=INTEGRATION_S, ant1=ant1, ant2=ant2, uvw_m=uvw, dec_rad=dec_rad,
                  fs_table=fs_table, applied_delays_ns=delays)
    return path, _time.perf_counter() - t0


def _group_starts(t0, minutes: float):
    from astropy.time import TimeDelta

    n = int(np.ceil(minutes * 60.0 / GROUP_S - 1e-9))
    return [t0 + TimeDelta(k * GROUP_S, format="sec") for k in range(max(n, 0))]


def simulate(out_dir, start, minutes, *, dec_deg=None, preset="small", seed=0, rfi=True, noise=True,
             gains=True, dead_antenna=None, field=True) -> list[str]:
    """Write DSA-110 correlator subband files (16 per ~5-minute group) and their truth.

    Parameters
    ----------
    out_dir : str or Path
        Directory for the files (created). Truth goes to ``<out_dir>/truth/``.
    start : str (ISO, UTC) or astropy Time
        Start of the first group. Groups of 24 x 12.884902 s = 309.237648 s follow back to back
        while a group's start is before ``start + minutes``.
    minutes : float
        Length of the window in minutes.
    dec_deg : float, optional
        Pointing (and fringe-stop) declination in degrees; default 0834+555's (55.5725).
    preset : {'small', 'full'}
        'full': 96 of 117 antennas, 48 channels per subband (real size, ~140 MB per file).
        'small': 48 antennas, 8 channels of 1.46484375 MHz per subband (same 187.5 MHz band).
    seed : int
        Seeds everything (sky, antennas, gains, bandpasses, RFI, noise, name jitter).
    rfi, noise, gains : bool
        Switch RFI, thermal noise, and antenna gains + bandpasses on/off.
    dead_antenna : int, optional
        Antenna number (0-based, as ant_1_array) whose visibilities (all its baselines, including
        its autocorrelation) are written as exact zeros.
    field : bool
        Include the field-source population (default); False: 0834+555 alone (for clean tests).

    Returns
    -------
    list of str
        The written file paths, group by group, sb00..sb15 within a group.
    """
    import dask

    from . import truth as truth_mod

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    pr = PRESETS[preset]
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    t_start = _as_time(start)
    cal = sky.calibrator_model()
    dec_deg = float(cal["dec_deg"] if dec_deg is None else dec_deg)
    dec_rad = np.radians(dec_deg)
    s0 = geometry.hadec_vector(0.0, dec_rad)
    ants = active_antennas(pr, seed, dead_antenna)
    ant1, ant2 = baseline_order(ants)
    idx = {int(a): i for i, a in enumerate(ants)}
    ant1_idx = np.array([idx[int(a)] for a in ant1], dtype=np.int64)
    ant2_idx = np.array([idx[int(a)] for a in ant2], dtype=np.int64)
    auto = ant1 == ant2
    bl = geometry.baselines(ant1, ant2)
    ant_pos = np.ascontiguousarray(geometry.antenna_positions()[ants])
    uvw = bl @ geometry.uvw_basis(dec_rad).T  # (Nbls, 3), constant: fixed HADEC direction
    freqs_desc = frequencies(pr)
    freqs_asc = freqs_desc[::-1]
    dnu = pr.channel_width_hz
    sigma = corrupt.noise_sigma(SEFD_JY, dnu, INTEGRATION_S)
    dead_idx = idx[int(dead_antenna)] if dead_antenna is not None else None
    bp_desc = corrupt.bandpasses(seed, ants, freqs_desc) if gains else None
    rl = np.random.default_rng([seed, 83])
    delays = " ".join(str(int(d)) for d in rl.integers(0, 2000, 2 * geometry.N_PADS))
    fs_table = f"fringestopping_table_dec{dec_deg:.4f}deg_{N_INT}int.npz"
    az, el = geometry.pointing_altaz(dec_rad)
    written: list[str] = []
    groups = _group_starts(t_start, minutes)
    log.info("simulating %d group(s) of preset %s (%d antennas, %d baselines, %d channels) from %s",
             len(groups), pr.name, ants.size, ant1.size, freqs_desc.size, t_start.isot)
    for g0 in groups:
        tg = _time.perf_counter()
        group_key = int(round(g0.unix))
        times_jd = g0.jd1 + (g0.jd2 + (np.arange(N_INT) + 0.5) * INTEGRATION_S / 86400.0)
        srcs, vec, cos_off = _sources_for_group(seed, dec_deg, times_jd, s0, field)
        dsrc = np.ascontiguousarray(vec - s0[None, None, :])
        gains_t = corrupt.time_gains(seed, ants, times_jd) if gains else None
        if rfi:
            tf_mask, rfi_amp = corrupt.rfi_plan(seed, group_key, N_INT, freqs_asc, sigma)
        else:
            tf_mask, rfi_amp = np.zeros((N_INT, freqs_asc.size), bool), np.zeros((N_INT, freqs_asc.size))
        rng = np.random.default_rng([seed, corrupt.TAG_NAMES, group_key])
        jitter = rng.uniform(0.0, NAME_JITTER_MAX_S, N_SUBBANDS)
        from astropy.time import TimeDelta

        paths = [os.path.join(out_dir, f"{_format_stamp(g0 + TimeDelta(j, format='sec'))}_sb{sb:02d}.hdf5")
                 for sb, j in enumerate(jitter)]
        common = dict(preset=pr, freqs_desc=freqs_desc, times_jd=times_jd, ant_pos=ant_pos, ant1=ant1, ant2=ant2,
                      ant1_idx=ant1_idx, ant2_idx=ant2_idx, auto=auto, dsrc=dsrc, cos_off=cos_off, srcs=srcs,
                      gains_t=gains_t, bp_desc=bp_desc, rfi_amp_desc=rfi_amp[:, ::-1], noise=noise, sigma=sigma,
                      seed=seed, group_key=group_key, dead_idx=dead_idx, uvw=uvw, dec_rad=dec_rad,
                      fs_table=fs_table, delays=delays)
        tasks = [dask.delayed(_subband_task)(sb, path=p, **common) for sb, p in enumerate(paths)]
        results = dask.compute(*tasks, scheduler="threads", num_workers=min(2, os.cpu_count() or 1))
        truth_mod.write_group_truth(
            out_dir, g0, times_jd=times_jd, freqs_asc=freqs_asc, channel_width_hz=dnu, antennas=ants,
            ant1=ant1, ant2=ant2, gains_t=gains_t, bandpass_asc=None if bp_desc is None else bp_desc[:, ::-1],
            rfi_tf_mask=tf_mask, rfi_amp=rfi_amp, sigma=sigma, sefd=SEFD_JY, dead_antenna=dead_antenna,
            sources=srcs, dec_rad=dec_rad, az_el=(az, el), files=[os.path.basename(p) for p in paths],
            settings=dict(preset=pr.name, seed=int(seed), rfi=bool(rfi), noise=bool(noise), gains=bool(gains),
                          field=bool(field)))
        written += [r[0] for r in results]
        log.info("group %s: %d sources, 16 files in %.1f s (subband task mean %.1f s)", g0.isot, srcs["name"].size,
                 _time.perf_counter() - tg, np.mean([r[1] for r in results]))
    return written
