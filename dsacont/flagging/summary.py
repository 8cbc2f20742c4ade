"""Flag statistics: the fraction flagged overall, per antenna, subband, time, channel and pol."""
from __future__ import annotations

import dask
import dask.array as da
import numpy as np


def _raw(x):
    """Return the array inside an xarray object (dask or numpy); other arrays unchanged."""
    return x.data if hasattr(x, "dims") and hasattr(x, "data") else x


def _flag_fractions(flags):
    """Compute the fractions flagged of a (Nt, Nb, Nf, Np) cube.

    Returns per baseline (Nb,), per time (Nt,), per channel (Nf,), per polarisation (Np,)
    float64 arrays, and overall (float).
    """
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
    """Flag summary from plain arrays.

    Parameters
    ----------
    flags : array_like of bool, shape (Nt, Nb, Nf, Np)
        numpy, dask or xarray (lazy is fine: only the reductions are computed).
    antenna1, antenna2 : array_like of int, shape (Nb,)
        0-based antenna numbers of each baseline.
    times : array_like of float, shape (Nt,)
        Julian Date (UTC) of each integration.
    freqs : array_like of float, shape (Nf,)
        Channel frequencies in Hz.
    subband : array_like of int, shape (Nf,), optional
        Subband index of each channel (default: all 0).
    polarizations : sequence of str, length Np, optional
        Names of the polarisations (default: their indices).
    antenna_names : sequence of str, optional
        Name of each antenna number (default: number + 1).

    Returns
    -------
    dict
        JSON-serialisable: ``overall``, ``cross``, ``auto`` (fractions in [0, 1]; None when
        there are no such baselines), ``n_visibilities``, ``per_antenna`` {name: fraction},
        ``per_subband`` {"NN": {fraction, freq_min_hz, freq_max_hz}}, ``per_time``
        [{time_jd, fraction}], ``per_channel`` [fraction], ``per_polarization`` {name: fraction}.
    """
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

    Parameters
    ----------
    flags : array_like of bool, shape (Nt, Nb, Nf, Np)
        (time, baseline, frequency, polarization); numpy, dask or xarray (lazy is fine: only
        the reductions are computed).
    ds : xarray.Dataset
        The group's Dataset; its coordinates antenna1, antenna2, time, frequency, subband,
        polarization and antenna_name are used when present.

    Returns
    -------
    dict
        As :func:`summarize`.
    """

    def get(name):
        return np.asarray(ds[name].values) if name in ds.coords or name in ds else None

    return summarize(
        flags, antenna1=get("antenna1"), antenna2=get("antenna2"), times=get("time"), freqs=get("frequency"),
        subband=get("subband"), polarizations=get("polarization"), antenna_names=get("antenna_name"),
    )
