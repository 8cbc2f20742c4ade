"""Truth written beside the simulated files: ``<out_dir>/truth/<YYYY-MM-DDTHH:MM:SS>.npz``, one per
group, named after the group's nominal start (the start of its first integration, truncated to
the second; the file names carry that time plus each node's clock jitter of 0-12 s).
"""
from __future__ import annotations

import glob
import json
import os
import re

import numpy as np

TRUTH_DIR = "truth"
_STAMP = re.compile(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)")


def write_group_truth(out_dir, g0, *, times_jd, freqs_asc, channel_width_hz, antennas, ant1, ant2, gains_t,
                      bandpass_asc, rfi_tf_mask, rfi_amp, sigma, sefd, dead_antenna, sources, dec_rad, az_el,
                      files, settings, extra=None) -> str:
    tdir = os.path.join(os.fspath(out_dir), TRUTH_DIR)
    os.makedirs(tdir, exist_ok=True)
    nt, na = len(times_jd), len(antennas)
    if gains_t is None:
        gains_t = np.ones((nt, na, 2), complex)
    if bandpass_asc is None:
        bandpass_asc = np.ones((na, len(freqs_asc), 2), complex)
    gains_t = np.array(gains_t)
    bandpass_asc = np.array(bandpass_asc)
    if dead_antenna is not None:
        i = int(np.nonzero(np.asarray(antennas) == int(dead_antenna))[0][0])
        gains_t[:, i, :] = 0.0
    nsrc = len(sources["name"])
    shapes = {f"source_{k}": np.asarray(sources.get(k, np.zeros(nsrc)), float)
              for k in ("major_arcsec", "minor_arcsec", "pa_deg")}
    stamp = g0.strftime("%Y-%m-%dT%H:%M:%S")
    final = os.path.join(tdir, f"{stamp}.npz")
    tmp = final[:-4] + ".tmp.npz"
    np.savez_compressed(
        tmp,
        group_start_jd=np.float64(g0.jd),
        group_start=np.str_(g0.isot),
        time_jd=np.asarray(times_jd, float),
        freq_hz=np.asarray(freqs_asc, float),
        channel_width_hz=np.float64(channel_width_hz),
        integration_time_s=np.float64(12.884902),
        antennas=np.asarray(antennas, np.int64),
        ant1=np.asarray(ant1, np.int64),
        ant2=np.asarray(ant2, np.int64),
        gains=gains_t.astype(np.complex128),
        bandpass=bandpass_asc.astype(np.complex128),
        rfi_tf_mask=np.asarray(rfi_tf_mask, bool),
        rfi_amplitude_jy=np.asarray(rfi_amp, np.float64),
        noise_sigma_jy=np.float64(sigma),
        sefd_jy=np.float64(sefd),
        dead_antenna=np.int64(-1 if dead_antenna is None else int(dead_antenna)),
        source_name=np.asarray(sources["name"], dtype="U16"),
        source_ra_deg=np.asarray(sources["ra_deg"], float),
        source_dec_deg=np.asarray(sources["dec_deg"], float),
        source_flux_jy=np.asarray(sources["flux_jy"], float),
        source_spectral_index=np.asarray(sources["spectral_index"], float),
        source_ref_freq_hz=np.float64(1.4e9),
        pointing_dec_rad=np.float64(dec_rad),
        pointing_az_rad=np.float64(az_el[0]),
        pointing_el_rad=np.float64(az_el[1]),
        files=np.asarray(files, dtype="U64"),
        settings=np.str_(json.dumps(settings)),
        **shapes,
        **{k: np.asarray(v) for k, v in (extra or {}).items()},
    )
    os.replace(tmp, final)
    return final


def _stamp_to_unix(stamp: str) -> float:
    from astropy.time import Time

    return float(Time(stamp, format="isot", scale="utc").unix)


def load_truth(out_dir, group_timestamp_or_path) -> dict:
    """The truth of one simulated group.

    Parameters
    ----------
    out_dir : str or Path
        The directory given to ``simulate`` (truth is in ``<out_dir>/truth/``).
    group_timestamp_or_path : str, astropy Time or path
        Either one of the group's subband file paths/names, or a timestamp (ISO string or Time)
        within 60 s of the group's start (e.g. the earliest file timestamp of the group).

    Returns
    -------
    dict with (Nt = 24 integrations, Na = active antennas, Nbls baselines in file order,
    Nf channels in ASCENDING frequency, Np = 2 polarisations XX, YY):

    ``time_jd`` (Nt,) JD UTC of integration centres; ``freq_hz`` (Nf,) ascending;
    ``channel_width_hz``, ``integration_time_s``; ``group_start`` ISO string, ``group_start_jd``;
    ``antennas`` (Na,) active antenna numbers (0-based, sorted); ``ant1``, ``ant2`` (Nbls,)
    antenna numbers, file baseline order (ant1 <= ant2, autocorrelations included);
    ``gains`` (Nt, Na, Np) complex: time part g of the antenna gain (ones if gains=False, zeros for
    the dead antenna); ``bandpass`` (Na, Nf, Np) complex: B, mean |B| = 1 and mean arg B = 0 per
    antenna/pol over all Nf channels (ones if gains=False). The data are
    ``V_obs(a1, a2, t, f) = g[t,a1] B[a1,f] conj(g[t,a2] B[a2,f]) * (V_sky + noise + RFI)``;
    ``rfi_mask`` (Nt, Nbls, Nf, Np) bool read-only broadcast view (RFI hits every baseline,
    autocorrelations included, and both pols); ``rfi_tf_mask`` (Nt, Nf) bool;
    ``rfi_amplitude_jy`` (Nt, Nf) |RFI| in Jy before gains (0 where no RFI);
    ``noise_sigma_jy``: cross-correlation noise per real and per imaginary part, before gains,
    = SEFD / sqrt(2 dnu tau) (in the raw files multiplied by |G_a1 G_a2|); autocorrelation noise
    is (SEFD + sky) / sqrt(dnu tau); ``sefd_jy``;
    ``dead_antenna`` int or None (its visibilities are exact zeros);
    ``sources``: dict of arrays name, ra_deg, dec_deg (ICRS), flux_jy at ``ref_freq_hz`` (1.4 GHz),
    spectral_index (S ~ nu^alpha): every source in this group's visibilities, 0834+555 first;
    ``pointing_dec_rad``, ``pointing_az_rad``, ``pointing_el_rad``: the HADEC(0, dec) direction;
    ``files``: the 16 file names sb00..sb15; ``settings``: preset, seed, rfi, noise, gains, field
    (and, unless every part is ideal: realism, antennas, sky_model, instrument, faults, gain_units).
    ``sources`` also holds major_arcsec, minor_arcsec, pa_deg (Gaussian FWHM and PA; 0 = point),
    and, when the simulation had variable sources, base_flux_jy (the steady flux; ``flux_jy`` is
    the flux in this group, see ``truth/variables.csv``).

    Realistic mode adds (see docs/SIMULATOR.md): ``gains_healthy`` (Nt, Na, Np) raw-unit gains
    without faults (``gains`` has the faults: wild/wrapping phases, 0 where a receptor is dead);
    ``phase_jump_antenna``, ``phase_jump_jd`` (K,); ``fault_dead_pol`` (Na, Np) bool,
    ``fault_dead_kind`` (Na, Np) 'zeros'/'noise'/''; ``fault_phase`` (Na,) 'wild'/'wrap'/'';
    ``fault_wrap_period_s`` (Na,); ``fault_delay_ns`` (Na,) (in ``bandpass``); ``fault_dies_at_jd``
    (Na,) (nan: never); ``receptor_dead`` (Nt, Na, Np) bool; ``rfi_kind`` (Nt, Nf) int8 bit map
    (1 line, 2 GPS L3, 4 satellite).
    """
    tdir = os.path.join(os.fspath(out_dir), TRUTH_DIR)
    cands = sorted(p for p in glob.glob(os.path.join(tdir, "*.npz")) if not p.endswith(".tmp.npz"))
    if not cands:
        raise FileNotFoundError(f"no simulator truth in {tdir}")
    key = group_timestamp_or_path
    chosen = None
    if not hasattr(key, "unix"):
        key = os.fspath(key)
        base = os.path.basename(key)
        if base.endswith(".hdf5"):
            for p in cands:
                with np.load(p) as z:
                    if base in set(z["files"].tolist()):
                        chosen = p
                        break
            if chosen is None:
                m = _STAMP.search(base)
                if not m:
                    raise FileNotFoundError(f"{key}: not a simulated subband file name")
                key = m.group(1)
    if chosen is None:
        if hasattr(key, "unix"):
            tu = float(key.unix)
        else:
            m = _STAMP.search(str(key).replace(" ", "T"))
            if not m:
                raise ValueError(f"cannot read a timestamp from {group_timestamp_or_path!r}")
            tu = _stamp_to_unix(m.group(1))
        diffs = [abs(_stamp_to_unix(_STAMP.search(os.path.basename(p)).group(1)) - tu) for p in cands]
        i = int(np.argmin(diffs))
        if diffs[i] > 60.0:
            raise FileNotFoundError(f"no simulated group within 60 s of {group_timestamp_or_path} in {tdir}")
        chosen = cands[i]
    with np.load(chosen) as z:
        d = {k: z[k] for k in z.files}
    out: dict = {}
    for k, v in d.items():
        out[k] = v.item() if v.ndim == 0 else v
    out["group_start"] = str(out["group_start"])
    out["settings"] = json.loads(str(out["settings"]))
    out["files"] = [str(f) for f in out["files"]]
    out["dead_antenna"] = None if int(out["dead_antenna"]) < 0 else int(out["dead_antenna"])
    out["sources"] = dict(name=d["source_name"], ra_deg=d["source_ra_deg"], dec_deg=d["source_dec_deg"],
                          flux_jy=d["source_flux_jy"], spectral_index=d["source_spectral_index"],
                          ref_freq_hz=float(d["source_ref_freq_hz"]))
    for k in ("major_arcsec", "minor_arcsec", "pa_deg", "base_flux_jy"):
        if f"source_{k}" in d:
            out["sources"][k] = d[f"source_{k}"]
    nt, nf = out["rfi_tf_mask"].shape
    nbls = out["ant1"].size
    out["rfi_mask"] = np.broadcast_to(out["rfi_tf_mask"][:, None, :, None], (nt, nbls, nf, 2))
    out["truth_path"] = chosen
    return out
