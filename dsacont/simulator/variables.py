"""Variable sources: flares and ESE-like dips on the simulated sky, with recorded truth.

The same law serves the visibility simulator (``simulate(..., variables=Variability(...))``) and
the image-plane one (:func:`dsacont.simulator.images.variable_light_curves`):

- a **flare** is a fast rise and an exponential decay, ``S(t) = S0 (1 + a e^{-(t - t0) / tau})``
  for ``t >= t0`` (``S0`` before);
- an **ESE-like dip** (extreme scattering event) is symmetric, ``S(t) = S0 (1 - d e^{-(t - t0)^2 /
  2 w^2})``.

In the visibility simulator the variable sources are chosen among the field sources of the
synthetic or real sky by a hash of (seed, source name): which ones vary, how and when does not
depend on which groups a ``simulate`` call writes, so a campaign simulated one day per call (the
same LST on successive sidereal days) sees one set of light curves. The flux of a variable source
in a group is its light curve at the group's mid-time (a group is 5 minutes; the events last days).
The calibrators (0834+555; in the real sky every VLA calibrator and Cas A) never vary. Each call writes the variable sources it put in its groups to
``<out_dir>/truth/variables.csv`` (merged with what earlier calls wrote there): name, position,
kind, base flux (1.4 GHz), t0 (MJD), amplitude (a or d), width (tau or w, days).

Like the rest of the simulator this imports nothing of the pipeline.
"""
from __future__ import annotations

import csv
import os
import zlib
from dataclasses import dataclass

import numpy as np

TAG_VARIABLES = 97
VARIABLES_CSV = "variables.csv"
_COLUMNS = ("name", "ra_deg", "dec_deg", "kind", "base_flux_jy", "t0_mjd", "amplitude", "width_days")


def light_curve(base_flux_jy, kind, t0_mjd, amplitude, width_days, mjd):
    """True flux of sources at epochs, for the flare and dip laws above.

    Parameters
    ----------
    base_flux_jy : float or array (N,)
        ``S0``, Jy.
    kind : str or array of str (N,)
        'flare', 'dip', or anything else for a steady source.
    t0_mjd, amplitude, width_days : float or array (N,)
        The event's time (MJD), amplitude (flare ``a``, dip depth ``d``) and width (flare decay
        ``tau``, dip Gaussian sigma ``w``, days). Ignored for steady sources.
    mjd : float or array (T,)
        Epochs, MJD.

    Returns
    -------
    numpy.ndarray, shape (N, T), Jy
    """
    s0 = np.atleast_1d(np.asarray(base_flux_jy, float))
    n = s0.size
    kind = np.broadcast_to(np.asarray(kind), (n,))
    t0 = np.broadcast_to(np.asarray(t0_mjd, float), (n,))[:, None]
    amp = np.broadcast_to(np.asarray(amplitude, float), (n,))[:, None]
    width = np.broadcast_to(np.asarray(width_days, float), (n,))[:, None]
    t = np.atleast_1d(np.asarray(mjd, float))[None, :]
    factor = np.ones((n, t.shape[1]))
    flare = kind == "flare"
    if flare.any():
        dt = t - t0[flare]
        factor[flare] = 1.0 + np.where(dt >= 0, amp[flare] * np.exp(-np.clip(dt, 0, None) / width[flare]), 0.0)
    dip = kind == "dip"
    if dip.any():
        factor[dip] = 1.0 - amp[dip] * np.exp(-0.5 * ((t - t0[dip]) / width[dip]) ** 2)
    return s0[:, None] * factor


@dataclass(frozen=True)
class Variability:
    """Which field sources vary, and how, in a simulated campaign.

    Parameters
    ----------
    start_mjd, end_mjd : float
        The campaign (MJD). Flares start between 20 % and 70 % of it; a dip's centre lies at
        least 2 w inside it. Give the same values to every ``simulate`` call of one campaign.
    fraction : float
        Fraction of the eligible field sources that vary, half flaring and half dipping.
    min_flux_jy : float
        Only field sources at least this bright (1.4 GHz) may vary.
    flare_amp, flare_decay_days, dip_depth, dip_sigma_days : (low, high)
        Uniform ranges of the flare amplitude ``a`` and decay ``tau`` (days), the dip depth ``d``
        and Gaussian sigma ``w`` (days).
    """

    start_mjd: float
    end_mjd: float
    fraction: float = 0.1
    min_flux_jy: float = 0.02
    flare_amp: tuple = (0.5, 3.0)
    flare_decay_days: tuple = (1.0, 3.0)
    dip_depth: tuple = (0.3, 0.6)
    dip_sigma_days: tuple = (1.5, 3.0)

    def params(self, seed: int, names, base_flux_jy) -> dict:
        """Each source's kind and event, decided by a hash of (seed, name): arrays (N,) ``kind``
        ('steady', 'flare', 'dip'), ``t0_mjd``, ``amplitude``, ``width_days`` (NaN if steady)."""
        n = len(names)
        kind = np.full(n, "steady", dtype="U6")
        t0, amp, width = np.full(n, np.nan), np.full(n, np.nan), np.full(n, np.nan)
        lo, hi = float(self.start_mjd), float(self.end_mjd)
        for i, (name, s0) in enumerate(zip(names, np.asarray(base_flux_jy, float))):
            if not s0 >= self.min_flux_jy:
                continue
            rng = np.random.default_rng([int(seed), TAG_VARIABLES, zlib.crc32(str(name).encode())])
            u = rng.uniform()
            if u >= self.fraction:
                continue
            if u < 0.5 * self.fraction:
                kind[i] = "flare"
                t0[i] = rng.uniform(lo + 0.2 * (hi - lo), lo + 0.7 * (hi - lo))
                amp[i], width[i] = rng.uniform(*self.flare_amp), rng.uniform(*self.flare_decay_days)
            else:
                kind[i] = "dip"
                width[i], amp[i] = rng.uniform(*self.dip_sigma_days), rng.uniform(*self.dip_depth)
                a, b = lo + 2 * width[i], hi - 2 * width[i]
                t0[i] = rng.uniform(a, b) if b > a else 0.5 * (lo + hi)
        return {"kind": kind, "t0_mjd": t0, "amplitude": amp, "width_days": width}


def vary_sources(spec: Variability, seed: int, srcs: dict, mjd: float, *, fixed=("0834+555",)) -> tuple[dict, dict]:
    """The group's sources with the variable ones at their flux at ``mjd``.

    Parameters
    ----------
    spec : Variability
    seed : int
        The simulator's seed.
    srcs : dict of arrays (N,)
        ``name``, ``ra_deg``, ``dec_deg``, ``flux_jy`` (the steady 1.4 GHz flux, Jy), ...
    mjd : float
        The group's mid-time.
    fixed : sequence of str
        Names that never vary (the calibrators).

    Returns
    -------
    (dict, dict)
        ``srcs`` with ``flux_jy`` replaced (a copy), and the variable sources' truth rows
        (columns of ``variables.csv``, arrays).
    """
    base = np.asarray(srcs["flux_jy"], float)
    p = spec.params(seed, srcs["name"], base)
    p["kind"][np.isin(np.asarray(srcs["name"]).astype(str), [str(n) for n in fixed])] = "steady"
    out = dict(srcs)
    out["flux_jy"] = light_curve(base, p["kind"], p["t0_mjd"], p["amplitude"], p["width_days"], mjd)[:, 0]
    var = p["kind"] != "steady"
    rows = {"name": np.asarray(srcs["name"])[var].astype(str), "ra_deg": np.asarray(srcs["ra_deg"])[var],
            "dec_deg": np.asarray(srcs["dec_deg"])[var], "kind": p["kind"][var], "base_flux_jy": base[var],
            "t0_mjd": p["t0_mjd"][var], "amplitude": p["amplitude"][var], "width_days": p["width_days"][var]}
    return out, rows


def write_variables_truth(truth_dir, rows: list[dict]) -> str | None:
    """Merge the variable sources of ``rows`` (dicts of arrays, :func:`vary_sources`'s second
    value) into ``<truth_dir>/variables.csv``, one row per name; returns its path (None if none)."""
    path = os.path.join(os.fspath(truth_dir), VARIABLES_CSV)
    table = {r["name"]: r for r in read_variables_truth(truth_dir)} if os.path.exists(path) else {}
    for block in rows:
        for i, name in enumerate(block["name"]):
            table[str(name)] = {k: block[k][i] for k in _COLUMNS}
    if not table:
        return None
    os.makedirs(os.fspath(truth_dir), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", newline="") as fh:
        wr = csv.writer(fh)
        wr.writerow(_COLUMNS)
        for name in sorted(table):
            wr.writerow([table[name][k] for k in _COLUMNS])
    os.replace(tmp, path)
    return path


def read_variables_truth(truth_dir) -> list[dict]:
    """The rows of ``<truth_dir>/variables.csv`` (floats where numeric); [] if absent."""
    path = os.path.join(os.fspath(truth_dir), VARIABLES_CSV)
    if not os.path.exists(path):
        return []
    with open(path, newline="") as fh:
        return [{k: (v if k in ("name", "kind") else float(v)) for k, v in row.items()} for row in csv.DictReader(fh)]
