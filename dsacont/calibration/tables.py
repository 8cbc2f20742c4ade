"""Calibration tables read back: solutions, flags and SNR per antenna and SPW, and quality metrics."""
from __future__ import annotations

import numpy as np

from dsacont.io.ms import table


def read_caltable(path) -> dict:
    """Solutions of a caltable: arrays indexed [row] with CPARAM (npol, nchan, nrow)."""
    with table(path) as tb:
        out = {c: np.asarray(tb.getcol(c)) for c in ("TIME", "ANTENNA1", "SPECTRAL_WINDOW_ID", "CPARAM", "FLAG", "SNR")}
    with table(path, "SPECTRAL_WINDOW") as tb:
        f = tb.getvarcol("CHAN_FREQ")
        out["spw_freqs"] = [np.asarray(f[f"r{i + 1}"]).ravel() for i in range(len(f))]
    return out


def caltable_metrics(path, antennas=None) -> dict:
    """Quality metrics of a caltable: flagged fraction (overall, per SPW, per antenna), SNR.

    ``antennas``: antenna indices (MS ANTENNA rows) to count; default all rows of the table.
    Antennas absent from the data (an ANTENNA table lists all 117 pads) must be left out,
    otherwise their flagged solutions count as failures.
    """
    t = read_caltable(path)
    if antennas is not None:
        keep = np.isin(t["ANTENNA1"], np.asarray(list(antennas), dtype=int))
        t = {k: (v[..., keep] if isinstance(v, np.ndarray) and v.shape[-1] == keep.size else v) for k, v in t.items()}
    flag = t["FLAG"]
    good = ~flag
    snr = t["SNR"][good]
    amp = np.abs(t["CPARAM"])[good]
    per_spw = {int(s): float(flag[..., t["SPECTRAL_WINDOW_ID"] == s].mean()) for s in np.unique(t["SPECTRAL_WINDOW_ID"])}
    per_ant = {int(a): float(flag[..., t["ANTENNA1"] == a].mean()) for a in np.unique(t["ANTENNA1"])}
    return {
        "n_solutions": int(flag.size),
        "flagged_fraction": float(flag.mean()),
        "flagged_fraction_spw": per_spw,
        "flagged_fraction_antenna": per_ant,
        "snr_median": float(np.median(snr)) if snr.size else 0.0,
        "snr_p05": float(np.percentile(snr, 5)) if snr.size else 0.0,
        "amp_median": float(np.median(amp)) if amp.size else 0.0,
        "n_times": int(np.unique(t["TIME"]).size),
    }
