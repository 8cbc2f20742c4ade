"""Benchmark: antenna health from the data against the realistic simulator's truth. Prints JSON.

    python benchmarks/antenna_health.py [--seeds 1-8] [--preset small] [--offsets-min 0,-60] [--out DIR]

For each seed and each group start (minutes from 0834+555's transit: 0 = the calibrator group,
-60 = a field an hour earlier, no bright source), simulate one realistic group, convert it
(no RFI flags) and run ``antenna_health``; score each receptor against the truth: a fault is a dead
receptor (``fault_dead_pol``), a receptor of a ``wild``/``wrap`` antenna, or a receptor of the
antenna that dies mid-group; a receptor is found when its state is not ``ok``. Counts true and
false positives and misses per kind, and the time per group.

Peer (same MS): CASA ``flagdata mode='clip' clipzeros=True``, what the pipeline relied on before
(``flag_for_calibration``): a receptor counts as found when all its cross-correlation samples
end up flagged.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

TRANSIT = "2025-10-29T13:54:51"  # group start putting 0834+555's transit mid-group (tests' GROUP_START)


def _truth_faults(truth):
    ants = np.asarray(truth["antennas"])
    out = {}
    for i, a in enumerate(ants):
        for p in range(2):
            if truth["fault_dead_pol"][i, p]:
                out[(int(a), p)] = f"dead_{truth['fault_dead_kind'][i, p]}"
            elif truth["fault_phase"][i]:
                out[(int(a), p)] = f"phase_{truth['fault_phase'][i]}"
            elif np.isfinite(truth["fault_dies_at_jd"][i]):
                out[(int(a), p)] = "dies"
    return ants, out


def _peer_clipzeros(ms):
    """Receptors all of whose cross-correlation samples CASA's clipzeros flags."""
    from dsacont.casa import casatasks
    from dsacont.io.ms import read_ms_info, table

    casatasks().flagdata(vis=str(ms), mode="clip", clipzeros=True, flagbackup=False)
    info = read_ms_info(ms)
    corr = [int(c) for c in info.corr_types[0]]
    with table(ms) as tb:
        a1, a2, fl = tb.getcol("ANTENNA1"), tb.getcol("ANTENNA2"), tb.getcol("FLAG")
    found = set()
    cross = a1 != a2
    for c, ct in enumerate(corr):
        p = {9: 0, 12: 1}.get(ct)
        if p is None:
            continue
        allf = fl[c].all(axis=0)
        for a in np.unique(np.concatenate([a1, a2])):
            sel = cross & ((a1 == a) | (a2 == a))
            if sel.any() and allf[sel].all():
                found.add((int(a), p))
    return found


def _score(found: set, faults: dict, present: set) -> dict:
    kinds = sorted(set(faults.values()))
    per_kind = {k: {"n": sum(v == k for v in faults.values()),
                    "found": sum(v == k and key in found for key, v in faults.items())} for k in kinds}
    healthy = present - set(faults)
    return {"faults": len(faults), "true_positives": len(found & set(faults)), "missed": len(set(faults) - found),
            "false_positives": len(found & healthy), "healthy": len(healthy), "per_kind": per_kind}


def _margins(h, faults: dict, present: set) -> dict:
    """The statistics of the healthy receptors nearest their thresholds, and of the faults
    farthest from them (nan where not measured)."""
    def pick(arr, keys, fn):
        v = np.array([arr[k] for k in keys], float)
        v = v[np.isfinite(v)]
        return round(float(fn(v)), 3) if v.size else None

    healthy = sorted(present - set(faults))
    kind = lambda k: sorted(key for key, v in faults.items() if v == k)  # noqa: E731
    return {"healthy_snr_ratio_min": pick(h.snr_ratio, healthy, np.min),
            "dead_noise_snr_ratio_max": pick(h.snr_ratio, kind("dead_noise"), np.max),
            "healthy_coherence_ratio_min": pick(h.coherence_ratio, healthy, np.min),
            "wild_coherence_ratio_max": pick(h.coherence_ratio, kind("phase_wild"), np.max),
            "healthy_abs_rate_deg_min_max": pick(np.abs(h.phase_rate_deg_min), healthy, np.max),
            "wrap_abs_rate_deg_min_min": pick(np.abs(h.phase_rate_deg_min), kind("phase_wrap"), np.min)}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--seeds", default="1-8", help="seeds, e.g. 1-8 or 3,5 (default 1-8)")
    p.add_argument("--preset", default="small", help="simulator preset (default small)")
    p.add_argument("--offsets-min", default="0,-60",
                   help="group starts in minutes from the calibrator group (default 0,-60)")
    p.add_argument("--out", help="work directory (default a temporary one, deleted)")
    a = p.parse_args(argv)
    import astropy.units as u
    from astropy.time import Time

    from dsacont import load_truth, simulate
    from dsacont.calibration.health import antenna_health
    from dsacont.config import get_paths
    from dsacont.convert import convert_group

    lo_hi = a.seeds.split("-")
    seeds = list(range(int(lo_hi[0]), int(lo_hi[1]) + 1)) if len(lo_hi) == 2 else [int(s) for s in a.seeds.split(",")]
    offsets = [float(x) for x in a.offsets_min.split(",")]
    work = Path(a.out or tempfile.mkdtemp(prefix="bench_health_"))
    groups, totals = [], {}
    for off in offsets:
        start = (Time(TRANSIT) + off * u.min).isot[:19]
        for seed in seeds:
            d = work / f"s{seed}_{off:+.0f}"
            shutil.rmtree(d, ignore_errors=True)
            files = sorted(simulate(d, start, 5, preset=a.preset, seed=seed, realism="realistic"),
                           key=lambda f: f[-7:-5])
            ms = convert_group(files, d / "g.ms", flag=False, paths=get_paths(root=d / "root"), progress=False)
            truth = load_truth(d, start)
            ants, faults = _truth_faults(truth)
            present = {(int(x), q) for x in ants for q in range(2)}
            t = time.perf_counter()
            h = antenna_health(ms)
            dt = time.perf_counter() - t
            found = {(int(x), q) for x in ants for q in range(2) if h.state[x, q] != "ok"}
            ours = _score(found, faults, present)
            peer = _score(_peer_clipzeros(ms), faults, present)
            groups.append({"seed": seed, "offset_min": off, "start": start, "health_s": round(dt, 2),
                           "array_snr": round(float(h.array_snr), 2), "notes": h.notes, "ours": ours,
                           "peer_clipzeros": peer, "margins": _margins(h, faults, present)})
            for who, s in (("ours", ours), ("peer_clipzeros", peer)):
                tot = totals.setdefault(f"{off:+.0f}", {}).setdefault(who, {"faults": 0, "true_positives": 0,
                                                                            "missed": 0, "false_positives": 0,
                                                                            "healthy": 0, "per_kind": {}})
                for k in ("faults", "true_positives", "missed", "false_positives", "healthy"):
                    tot[k] += s[k]
                for k, v in s["per_kind"].items():
                    pk = tot["per_kind"].setdefault(k, {"n": 0, "found": 0})
                    pk["n"] += v["n"]
                    pk["found"] += v["found"]
            print(f"seed {seed} offset {off:+.0f} min: ours {ours['true_positives']}/{ours['faults']} found, "
                  f"{ours['false_positives']} false; clipzeros {peer['true_positives']}/{peer['faults']}, "
                  f"{peer['false_positives']} false; {dt:.1f} s", file=sys.stderr)
            shutil.rmtree(d, ignore_errors=True)
    if not a.out:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps({"preset": a.preset, "seeds": seeds, "offsets_min": offsets, "totals_by_offset_min": totals,
                      "groups": groups}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
