"""Quality gates on solved calibration tables, after the solve (``solve_calibration`` rejects a
table pair that fails any; the flagged-fraction gate, ``MAX_FLAGGED_SOLUTIONS``, is in solve.py).

    reasons, metrics = table_gates(b_table, g_table, health=health)

* **reference antenna**: CASA writes the antenna each solution is referenced to in ANTENNA2. Every
  unflagged solution must be referenced to an antenna whose two receptors were judged healthy
  (:mod:`~dsacont.calibration.health`); without a health verdict, to one whose own solutions are
  unflagged. A table referenced to a dead receptor holds noise phases for every antenna.
* **SNR**: the median SNR of the unflagged solutions of each table must reach ``MIN_SNR_MEDIAN``
  (CASA's ``minsnr`` flags single solutions; this catches a whole table near the noise).
* **bandpass phase scatter**: per antenna, polarisation and subband, the rms of the second
  difference of the bandpass phase across channels / sqrt(6) (the phase noise per channel; a
  delay's linear slope cancels). Its median over antennas must stay below
  ``MAX_BANDPASS_PHASE_SCATTER_DEG``.

All dimensionless (SNR, degrees): no flux, so the gates hold in raw correlator units as in Jy.
"""
from __future__ import annotations

import numpy as np

from dsacont.calibration.tables import read_caltable
from dsacont.io.ms import table

#: median SNR of a table's unflagged solutions below this rejects the table
MIN_SNR_MEDIAN = 10.0
#: median over antennas of the per-channel bandpass phase noise above this rejects the table, deg
MAX_BANDPASS_PHASE_SCATTER_DEG = 15.0


def _reference_antennas(path) -> np.ndarray:
    """ANTENNA2 (the reference antenna) of the unflagged rows of a caltable."""
    with table(path) as tb:
        ref = np.asarray(tb.getcol("ANTENNA2"))
        flag = np.asarray(tb.getcol("FLAG"))
    return np.unique(ref[~flag.all(axis=(0, 1))])


def bandpass_phase_scatter(path) -> dict:
    """Per-channel phase noise of a bandpass table, degrees: ``{antenna id: median over pols and
    SPWs}`` of sqrt(mean(second difference of phase)^2 / 6) over unflagged channel triples."""
    t = read_caltable(path)
    g, f = t["CPARAM"], t["FLAG"]
    out = {}
    for a in np.unique(t["ANTENNA1"]):
        vals = []
        for r in np.flatnonzero(t["ANTENNA1"] == a):
            for p in range(g.shape[0]):
                z, ok = g[p, :, r], ~f[p, :, r]
                d1 = z[1:] * np.conj(z[:-1])
                d2 = np.angle(d1[1:] * np.conj(d1[:-1]))
                okk = ok[2:] & ok[1:-1] & ok[:-2]
                if okk.sum() >= 2:
                    vals.append(np.degrees(np.sqrt(np.mean(d2[okk] ** 2) / 6.0)))
        if vals:
            out[int(a)] = float(np.median(vals))
    return out


def table_gates(b_table, g_table, *, health=None, antenna_names=None) -> tuple[list, dict]:
    """Check a solved B/G pair.

    Parameters
    ----------
    b_table, g_table : paths of the bandpass and gain tables
    health : AntennaHealth, optional
        Reference antennas must be among its healthy antennas.
    antenna_names : list of str, optional
        Names by antenna id, for the reasons (default: the tables' ANTENNA subtable).

    Returns
    -------
    reasons : list of str
        Empty when the pair passes; else one sentence per failed gate.
    metrics : dict
        ``refants`` (names), ``snr_median`` per table, ``bandpass_phase_scatter_deg`` (median) and
        ``bandpass_phase_scatter_worst`` ({name: deg}, the five worst antennas).
    """
    if antenna_names is None:
        with table(b_table, "ANTENNA") as tb:
            antenna_names = list(tb.getcol("NAME"))
    reasons = []
    metrics = {}
    refs = sorted({int(a) for p in (b_table, g_table) for a in _reference_antennas(p) if a >= 0})
    metrics["refants"] = [antenna_names[a] for a in refs]
    if health is not None:
        healthy = set(health.healthy_antennas())
        bad = [antenna_names[a] for a in refs if antenna_names[a] not in healthy]
        if bad:
            reasons.append(f"solutions referenced to unhealthy antenna(s) {', '.join(bad)}")
    else:
        for p in (b_table, g_table):
            t = read_caltable(p)
            for a in refs:
                sel = t["ANTENNA1"] == a
                if sel.any() and t["FLAG"][..., sel].mean() > 0.5:
                    reasons.append(f"{p}: reference antenna {antenna_names[a]} has most of its own solutions flagged")
    for kind, p in (("B", b_table), ("G", g_table)):
        t = read_caltable(p)
        snr = t["SNR"][~t["FLAG"]]
        med = float(np.median(snr)) if snr.size else 0.0
        metrics[f"snr_median_{kind}"] = med
        if med < MIN_SNR_MEDIAN:
            reasons.append(f"{kind}: median SNR {med:.1f} < {MIN_SNR_MEDIAN:g}")
    sc = bandpass_phase_scatter(b_table)
    med = float(np.median(list(sc.values()))) if sc else float("nan")
    metrics["bandpass_phase_scatter_deg"] = med
    metrics["bandpass_phase_scatter_worst"] = {antenna_names[a]: round(v, 2) for a, v in
                                              sorted(sc.items(), key=lambda kv: -kv[1])[:5]}
    if not np.isfinite(med) or med > MAX_BANDPASS_PHASE_SCATTER_DEG:
        reasons.append(f"B: median bandpass phase scatter {med:.1f} deg > {MAX_BANDPASS_PHASE_SCATTER_DEG:g} deg")
    return reasons, metrics
