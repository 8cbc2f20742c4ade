"""``simulate``: write DSA-110 correlator subband files with recorded truth.

See ``docs/SIMULATOR.md`` for what is modelled.  This package never imports the pipeline
(telescope, loader, phasing, calibrators, ...): positions, directions, uvw, phases, primary beam
and calibrator flux are computed here from the shipped data files, so the pipeline can be
scored against it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time as _time
from dataclasses import dataclass

import numpy as np

from . import corrupt, geometry, sky
from . import instrument as instr
from .kernels import apply_antenna_gains, predict_gaussian_sources, predict_point_sources
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


def real_active_antennas(preset: Preset, seed: int, dead_antenna: int | None = None) -> np.ndarray:
    """Sorted antenna numbers (0-based) for ``antennas="real"``: the 96 pads active in early 2026
    (``instr.INACTIVE_PADS`` excluded). A preset with fewer antennas (small) takes a seeded
    choice among the active pads within its ``max_radius_m``; a requested ``dead_antenna`` must be an
    active pad (it replaces the chosen pad nearest in number if the choice left it out)."""
    real = instr.real_active_pads()
    if dead_antenna is not None and int(dead_antenna) not in set(real.tolist()):
        raise ValueError(f"dead_antenna {dead_antenna} is not an active pad of the real array")
    if preset.n_antennas >= real.size:
        return real
    pads = real
    if preset.max_radius_m is not None:
        pads = pads[np.linalg.norm(geometry.antenna_positions()[pads], axis=1) <= preset.max_radius_m]
    rng = np.random.default_rng([seed, instr.TAG_REAL_ANTS, preset.n_antennas])
    ants = np.sort(rng.choice(pads, preset.n_antennas, replace=False))
    if dead_antenna is not None and int(dead_antenna) not in ants:
        ants[np.argmin(np.abs(ants - int(dead_antenna)))] = int(dead_antenna)
        ants = np.sort(ants)
    return ants


def baseline_order(ants: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(ant1, ant2) antenna numbers, ant1 <= ant2, autocorrelations included, ant1-major."""
    i, j = np.triu_indices(ants.size)
    return ants[i].astype(np.int64), ants[j].astype(np.int64)


def _format_stamp(t) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S")


def _sources_for_group(seed, dec_deg, times_jd, s0, field=True, real_sky=False):
    """Calibrator + field sources that come within FIELD_RADIUS_DEG of the pointing.

    ``real_sky``: the realistic sky (catalogue calibrators, Cas A, NVSS, faint power law), with
    Gaussian shapes (major_arcsec, minor_arcsec, pa_deg) in the returned dict.
    """
    if real_sky:
        return _real_sources_for_group(seed, dec_deg, times_jd, s0, field)
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


def _meridian_window(dec_deg, times_jd):
    from astropy.time import Time

    mid = times_jd[len(times_jd) // 2]
    last = Time(mid, format="jd", scale="utc").sidereal_time(
        "apparent", longitude=np.degrees(geometry.OVRO_LON_RAD)).deg
    half_span = (times_jd[-1] - times_jd[0]) * 360.98 / 2 + 1.0
    r = sky.FIELD_RADIUS_DEG
    dra = min(180.0, half_span + r / max(np.cos(np.radians(min(89.0, abs(dec_deg) + r))), 1e-3) + 1.0)
    return last, half_span, dra


def _real_sources_for_group(seed, dec_deg, times_jd, s0, field=True):
    """The realistic sky of one group: catalogue sources (0834+555 first, every VLA calibrator of the
    dec band, Cas A) always considered; with ``field`` also NVSS and the faint power law.  Kept when
    they come within FIELD_RADIUS_DEG of the pointing (BRIGHT_RADIUS_DEG for sources of at least
    BRIGHT_FLUX_JY: Cas A reaches the far sidelobes) and their peak apparent flux at the band bottom,
    centre or top reaches APPARENT_MIN_JY (three frequencies: a source near a beam null at 1.4 GHz,
    as Cas A is at transit, is still bright at the band edges)."""
    last, half_span, dra = _meridian_window(dec_deg, times_jd)
    cat = sky.catalogue_bright_sources(dec_deg)
    if field:
        fld = sky.real_field_sources(seed, dec_deg, last - dra, last + dra)
        cat = {k: np.concatenate([cat[k], fld[k]]) for k in cat}
    # per-source radius: FIELD_RADIUS_DEG, or BRIGHT_RADIUS_DEG for the sidelobe sources (Cas A)
    r = np.where(cat["flux_jy"] >= sky.BRIGHT_FLUX_JY, sky.BRIGHT_RADIUS_DEG, sky.FIELD_RADIUS_DEG)
    cosd = (np.sin(np.radians(cat["dec_deg"])) * np.sin(np.radians(dec_deg))
            + np.cos(np.radians(cat["dec_deg"])) * np.cos(np.radians(dec_deg)) * np.cos(np.radians(cat["ra_deg"] - last)))
    pre = np.degrees(np.arccos(np.clip(cosd, -1, 1))) <= r + half_span + 1.0
    pre[0] = True
    cat = {k: v[pre] for k, v in cat.items()}
    r = r[pre]
    vec = geometry.source_vectors(cat["ra_deg"], cat["dec_deg"], times_jd)
    cos_off = vec @ s0
    cmax = cos_off.max(axis=0)
    off = np.degrees(np.arccos(np.clip(cmax, -1, 1)))
    keep = off <= r
    fr = np.array([BAND_TOP_HZ - BAND_WIDTH_HZ, sky.REF_FREQ_HZ, BAND_TOP_HZ])
    peak = (cat["flux_jy"][:, None] * geometry.airy_beam(cmax, fr)).max(axis=1)
    keep &= peak >= sky.APPARENT_MIN_JY
    keep[0] = off[0] <= sky.FIELD_RADIUS_DEG
    srcs = {k: v[keep] for k, v in cat.items()}
    return srcs, vec[:, keep], cos_off[:, keep]


def gaussian_qcoef(uvw_m, major_arcsec, minor_arcsec, pa_deg) -> np.ndarray:
    """Taper coefficients (Nsrc, Nbls), s^2, of Gaussian sources for ``predict_gaussian_sources``;
    (u, v) are the phase centre's (east, north) baseline components in metres (the few-degree
    rotation between the phase centre's and the source's north is neglected)."""
    u, v = uvw_m[:, 0][None, :], uvw_m[:, 1][None, :]
    a = np.radians(np.asarray(major_arcsec) / 3600.0)[:, None]
    b = np.radians(np.asarray(minor_arcsec) / 3600.0)[:, None]
    pa = np.radians(np.asarray(pa_deg))[:, None]
    up = u * np.sin(pa) + v * np.cos(pa)
    vp = u * np.cos(pa) - v * np.sin(pa)
    return np.pi ** 2 / (4 * np.log(2)) * (a ** 2 * up ** 2 + b ** 2 * vp ** 2) / geometry.C_M_S ** 2


def _subband_task(sb, *, preset, freqs_desc, times_jd, ant_pos, ant1, ant2, ant1_idx, ant2_idx, auto, dsrc, cos_off, srcs,
                  gains_t, bp_desc, rfi_amp_desc, noise, sigma, seed, group_key, dead_idx, path, uvw,
                  dec_rad, fs_table, delays, gauss=None, qcoef=None, noise_receptors=None, gains_healthy=None):
    t0 = _time.perf_counter()
    nch = preset.chans_per_subband
    sl = slice(sb * nch, (sb + 1) * nch)
    f = freqs_desc[sl]
    spec = srcs["flux_jy"][None, :] * (f[:, None] / sky.REF_FREQ_HZ) ** srcs["spectral_index"][None, :]  # (Nch, Ns)
    beam = geometry.airy_beam(cos_off, f)  # (Nt, Ns, Nch)
    amp = beam * spec.T[None, :, :]
    df = float(f[1] - f[0]) if nch > 1 else 0.0
    if gauss is None:
        v = predict_point_sources(ant_pos, ant1_idx, ant2_idx, dsrc, np.ascontiguousarray(amp), float(f[0]), df)
    else:
        v = predict_point_sources(ant_pos, ant1_idx, ant2_idx, np.ascontiguousarray(dsrc[:, ~gauss]),
                                  np.ascontiguousarray(amp[:, ~gauss]), float(f[0]), df)
        if gauss.any():
            v += predict_gaussian_sources(ant_pos, ant1_idx, ant2_idx, np.ascontiguousarray(dsrc[:, gauss]),
                                          np.ascontiguousarray(amp[:, gauss]), float(f[0]), df, qcoef)
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
        if noise_receptors:
            _dead_noise(vis, noise_receptors, g, gains_healthy[:, :, None, :] * bp_desc[None, :, sl, :],
                        ant1_idx, ant2_idx, auto, sigma, dnu, seed, group_key, sb)
    if dead_idx is not None:
        bad = (ant1_idx == dead_idx) | (ant2_idx == dead_idx)
        vis[:, bad] = 0.0
    vis[:, auto] = vis[:, auto].real  # autos are real in the files
    write_subband(path, vis=vis, times_jd=times_jd, freqs_hz=f, channel_width_hz=dnu,
                  integration_time_s=INTEGRATION_S, ant1=ant1, ant2=ant2, uvw_m=uvw, dec_rad=dec_rad,
                  fs_table=fs_table, applied_delays_ns=delays)
    return path, _time.perf_counter() - t0


def _dead_noise(vis, receptors, g, g_healthy, ant1_idx, ant2_idx, auto, sigma, dnu, seed, group_key, sb):
    """In place: the baselines of each 'noise' receptor (antenna index, pol) carry uncorrelated noise
    at the normal raw level and no sky signal (cross: sigma |G_a,healthy| |G_other| per real/imag part;
    its autocorrelation: SEFD |G_a,healthy|^2 with radiometer noise)."""
    rng = np.random.default_rng([seed, instr.TAG_DEADNOISE, group_key, sb])
    for ai, p in receptors:
        for b in np.nonzero((ant1_idx == ai) | (ant2_idx == ai))[0]:
            if auto[b]:
                pw = SEFD_JY * np.abs(g_healthy[:, ai, :, p]) ** 2
                vis[:, b, :, p] = pw * (1 + rng.standard_normal(pw.shape) / np.sqrt(dnu * INTEGRATION_S))
                continue
            other = ant2_idx[b] if ant1_idx[b] == ai else ant1_idx[b]
            scale = sigma * np.abs(g_healthy[:, ai, :, p]) * np.abs(g[:, other, :, p])  # (Nt, Nch)
            vis[:, b, :, p] = scale * (rng.standard_normal(scale.shape) + 1j * rng.standard_normal(scale.shape))
    return vis


def _group_starts(t0, minutes: float):
    from astropy.time import TimeDelta

    n = int(np.ceil(minutes * 60.0 / GROUP_S - 1e-9))
    return [t0 + TimeDelta(k * GROUP_S, format="sec") for k in range(max(n, 0))]


REALISM = ("ideal", "realistic")


def _resolve_realism(realism, antennas, sky_model, instrument_model, faults):
    if realism not in REALISM:
        raise ValueError(f"realism must be one of {REALISM}, got {realism!r}")
    real = realism == "realistic"
    antennas = antennas or ("real" if real else "random")
    sky_model = sky_model or ("real" if real else "synthetic")
    instrument_model = instrument_model or ("realistic" if real else "ideal")
    faults = real if faults is None else bool(faults)
    for name, val, ok in (("antennas", antennas, ("real", "random")), ("sky_model", sky_model, ("real", "synthetic")),
                          ("instrument", instrument_model, ("realistic", "ideal"))):
        if val not in ok:
            raise ValueError(f"{name} must be one of {ok}, got {val!r}")
    return antennas, sky_model, instrument_model, faults


def simulate(out_dir, start, minutes, *, dec_deg=None, preset="small", seed=0, rfi=True, noise=True,
             gains=True, dead_antenna=None, field=True, realism="ideal", antennas=None, sky_model=None,
             instrument=None, faults=None, die_at=None, variables=None) -> list[str]:
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
        Seeds everything (sky, antennas, gains, bandpasses, RFI, noise, name jitter, faults).
    rfi, noise, gains : bool
        Switch RFI, thermal noise, and antenna gains + bandpasses on/off (gains=False also removes
        the raw-unit scale and the gain-borne faults: wild/wrapping phases, dead receptors, delays).
    dead_antenna : int, optional
        Antenna number (0-based, as ant_1_array) whose visibilities (all its baselines, including
        its autocorrelation) are written as exact zeros.
    field : bool
        Include the field sources (default); False: 0834+555 alone (ideal sky) or the catalogue
        sources only (real sky: VLA calibrators of the dec band and Cas A).
    realism : {'ideal', 'realistic'}
        'ideal' (default): the clean simulator (same bytes for a seed as before the realistic mode
        existed). 'realistic': the defaults of the next four options switch to the real array,
        the real sky, the realistic instrument and faults (see ``docs/SIMULATOR.md``).
    antennas : {'real', 'random'}, optional
        'real': the 96 pads active in early 2026 (small preset: a seeded choice of them within
        600 m); 'random': a seeded choice of the 117 pads. Default from ``realism``.
    sky_model : {'real', 'synthetic'}, optional
        'real': 0834+555, every VLA calibrator of the dec band (with spectral index), Cas A, the
        shipped NVSS sources (Gaussians where resolved) and a power law below 50 mJy;
        'synthetic': 0834+555 and a power-law population. Default from ``realism``.
    instrument : {'realistic', 'ideal'}, optional
        'realistic': raw correlator units (gain amplitudes ~0.07), gains with drifts, ionosphere-like
        wander and phase jumps, bandpass with subband-edge roll-off and dips, OVRO-like RFI
        (satellite bursts, GPS L3, narrow lines). Default from ``realism``.
    faults : bool, optional
        Dead polarisations (~1 antenna in 7), a wild and a wrapping phase, residual delays, an
        antenna dying at ``die_at``. Needs the realistic instrument. Default from ``realism``.
    die_at : str or astropy Time, optional
        When the dying antenna stops (with faults). Default: the middle of the first simulated
        group (so each call has it; give it explicitly to keep separate calls consistent).
    variables : dsacont.simulator.variables.Variability, optional
        Flaring and ESE-dipping field sources (default none: every source steady). A group holds
        each at its flux at the group's mid-time; the truth keeps both (``sources['flux_jy']``
        as simulated, ``sources['base_flux_jy']`` steady), and ``truth/variables.csv`` lists the
        variable sources and their events. Give the same ``Variability`` to every call of one
        campaign (e.g. one call per sidereal day).

    Returns
    -------
    list of str
        The written file paths, group by group, sb00..sb15 within a group.
    """
    import dask
    from astropy.time import TimeDelta

    from . import truth as truth_mod
    from .variables import vary_sources, write_variables_truth

    if preset not in PRESETS:
        raise ValueError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    antennas, sky_model, instrument_model, faults = _resolve_realism(realism, antennas, sky_model, instrument,
                                                                     faults)
    if faults and instrument_model != "realistic":
        raise ValueError("faults need instrument='realistic'")
    real_inst = instrument_model == "realistic"
    pr = PRESETS[preset]
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    t_start = _as_time(start)
    cal = sky.calibrator_model()
    dec_deg = float(cal["dec_deg"] if dec_deg is None else dec_deg)
    dec_rad = np.radians(dec_deg)
    s0 = geometry.hadec_vector(0.0, dec_rad)
    if antennas == "real":
        ants = real_active_antennas(pr, seed, dead_antenna)
    else:
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
    groups = _group_starts(t_start, minutes)
    fplan = None
    if faults and gains:
        die_jd = None
        if die_at is not None:
            die_jd = float(_as_time(die_at).jd)
        elif groups:
            die_jd = float((groups[0] + TimeDelta(GROUP_S / 2, format="sec")).jd)
        fplan = instr.fault_plan(seed, ants, die_jd)
    if not gains:
        bp_desc = None
    elif real_inst:
        bp_desc = instr.realistic_bandpasses(seed, ants, freqs_desc,
                                                  None if fplan is None else fplan["delay_ns"])
    else:
        bp_desc = corrupt.bandpasses(seed, ants, freqs_desc)
    rl = np.random.default_rng([seed, 83])
    delays = " ".join(str(int(d)) for d in rl.integers(0, 2000, 2 * geometry.N_PADS))
    fs_table = f"fringestopping_table_dec{dec_deg:.4f}deg_{N_INT}int.npz"
    az, el = geometry.pointing_altaz(dec_rad)
    written: list[str] = []
    var_rows: list[dict] = []
    log.info("simulating %d group(s) of preset %s (%d antennas, %d baselines, %d channels, realism %s) from %s",
             len(groups), pr.name, ants.size, ant1.size, freqs_desc.size, realism, t_start.isot)
    for g0 in groups:
        tg = _time.perf_counter()
        group_key = int(round(g0.unix))
        times_jd = g0.jd1 + (g0.jd2 + (np.arange(N_INT) + 0.5) * INTEGRATION_S / 86400.0)
        srcs, vec, cos_off = _sources_for_group(seed, dec_deg, times_jd, s0, field, real_sky=sky_model == "real")
        dsrc = np.ascontiguousarray(vec - s0[None, None, :])
        extra_task: dict = {}
        extra_truth: dict = {}
        if variables is not None:
            base = np.asarray(srcs["flux_jy"], float)
            # the VLA calibrators and Cas A of the real sky stay steady, as 0834+555 does
            fixed = sky.catalogue_bright_sources(dec_deg)["name"] if sky_model == "real" else [sky.CALIBRATOR]
            srcs, rows = vary_sources(variables, seed, srcs, float(np.mean(times_jd)) - 2400000.5,
                                      fixed=[str(n) for n in fixed])
            var_rows.append(rows)
            extra_truth.update(source_base_flux_jy=base)
        gains_healthy = None
        if not gains:
            gains_t = None
        elif real_inst:
            gains_healthy = instr.realistic_gains(seed, ants, times_jd)
            gains_t = gains_healthy if fplan is None else instr.apply_gain_faults(
                seed, ants, times_jd, gains_healthy, fplan)
        else:
            gains_t = corrupt.time_gains(seed, ants, times_jd)
        rfi_kind = None
        if rfi and real_inst:
            tf_mask, rfi_amp, rfi_kind = instr.realistic_rfi_plan(seed, group_key, N_INT, freqs_asc, sigma)
        elif rfi:
            tf_mask, rfi_amp = corrupt.rfi_plan(seed, group_key, N_INT, freqs_asc, sigma)
        else:
            tf_mask, rfi_amp = np.zeros((N_INT, freqs_asc.size), bool), np.zeros((N_INT, freqs_asc.size))
        if sky_model == "real":
            gauss = srcs["major_arcsec"] > 0
            extra_task.update(gauss=gauss, qcoef=np.ascontiguousarray(gaussian_qcoef(
                uvw, srcs["major_arcsec"][gauss], srcs["minor_arcsec"][gauss], srcs["pa_deg"][gauss])))
        if fplan is not None:
            nr = [(int(i), int(p)) for i, p in zip(*np.nonzero(fplan["dead_kind"] == "noise"))]
            extra_task.update(noise_receptors=nr, gains_healthy=gains_healthy)
            extra_truth.update(
                fault_dead_pol=fplan["dead_pol"], fault_dead_kind=fplan["dead_kind"],
                fault_phase=fplan["phase_fault"], fault_wrap_period_s=fplan["wrap_period_s"],
                fault_delay_ns=fplan["delay_ns"], fault_dies_at_jd=fplan["dies_at_jd"],
                receptor_dead=instr.receptor_dead(fplan, times_jd))
        if real_inst and gains:
            jumps = instr.jumps_between(seed, ants, times_jd[0] - 0.5 * INTEGRATION_S / 86400,
                                             times_jd[-1] + 0.5 * INTEGRATION_S / 86400)
            extra_truth.update(
                gains_healthy=gains_healthy,
                phase_jump_antenna=np.array([j[0] for j in jumps], np.int64),
                phase_jump_jd=np.array([j[1] for j in jumps], float))
        if rfi_kind is not None:
            extra_truth.update(rfi_kind=rfi_kind)
        rng = np.random.default_rng([seed, corrupt.TAG_NAMES, group_key])
        jitter = rng.uniform(0.0, NAME_JITTER_MAX_S, N_SUBBANDS)

        paths = [os.path.join(out_dir, f"{_format_stamp(g0 + TimeDelta(j, format='sec'))}_sb{sb:02d}.hdf5")
                 for sb, j in enumerate(jitter)]
        common = dict(preset=pr, freqs_desc=freqs_desc, times_jd=times_jd, ant_pos=ant_pos, ant1=ant1, ant2=ant2,
                      ant1_idx=ant1_idx, ant2_idx=ant2_idx, auto=auto, dsrc=dsrc, cos_off=cos_off, srcs=srcs,
                      gains_t=gains_t, bp_desc=bp_desc, rfi_amp_desc=rfi_amp[:, ::-1], noise=noise, sigma=sigma,
                      seed=seed, group_key=group_key, dead_idx=dead_idx, uvw=uvw, dec_rad=dec_rad,
                      fs_table=fs_table, delays=delays, **extra_task)
        tasks = [dask.delayed(_subband_task)(sb, path=p, **common) for sb, p in enumerate(paths)]
        results = dask.compute(*tasks, scheduler="threads", num_workers=min(2, os.cpu_count() or 1))
        settings = dict(preset=pr.name, seed=int(seed), rfi=bool(rfi), noise=bool(noise), gains=bool(gains),
                        field=bool(field))
        if realism != "ideal" or (antennas, sky_model, instrument_model, faults) != ("random", "synthetic", "ideal",
                                                                                       False):
            settings.update(realism=realism, antennas=antennas, sky_model=sky_model, instrument=instrument_model,
                            faults=bool(faults), gain_units="raw" if (real_inst and gains) else "Jy")
        if variables is not None:
            settings.update(variables=dataclasses.asdict(variables))
        truth_mod.write_group_truth(
            out_dir, g0, times_jd=times_jd, freqs_asc=freqs_asc, channel_width_hz=dnu, antennas=ants,
            ant1=ant1, ant2=ant2, gains_t=gains_t, bandpass_asc=None if bp_desc is None else bp_desc[:, ::-1],
            rfi_tf_mask=tf_mask, rfi_amp=rfi_amp, sigma=sigma, sefd=SEFD_JY, dead_antenna=dead_antenna,
            sources=srcs, dec_rad=dec_rad, az_el=(az, el), files=[os.path.basename(p) for p in paths],
            settings=settings, extra=extra_truth)
        written += [r[0] for r in results]
        log.info("group %s: %d sources, 16 files in %.1f s (subband task mean %.1f s)", g0.isot, srcs["name"].size,
                 _time.perf_counter() - tg, np.mean([r[1] for r in results]))
    if variables is not None:
        write_variables_truth(os.path.join(out_dir, truth_mod.TRUTH_DIR), var_rows)
    return written
