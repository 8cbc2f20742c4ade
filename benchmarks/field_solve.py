r"""Benchmark: the field gain solve, fast against CASA, on one full-size group away from the calibrator.

Run under the shared lock (heavy)::

    flock /tmp/dsacont-heavy.lock env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        nice -n 5 python benchmarks/field_solve.py /tmp/e2e-full/archive --work /tmp/fieldbench

The archive is a directory of simulated groups with their truth (``dsacont simulate`` or
``benchmarks/e2e.py --keep``'s). Steps, each timed (wall and CPU seconds of this process; CASA runs
in-process):

1. the calibrator group (``--cal-group``, default the one holding the 0834+555 transit):
   ``convert_group`` with the pipeline's flagger, then ``solve_calibration`` (the fast B/G solve);
2. the field group (``--group``, default the group 13 minutes after the transit): converted the
   same way;
3. for each of ``--methods`` (default ``fast,casa``), on its own copy of that MS:
   ``solve_field_gains(method=...)`` against a stand-in for a survey catalogue, the truth's
   sources brighter than ``--sky-jy`` (default 5 mJy) apparent, the pair [B, G] transferred from
   the calibrator group; wall, CPU, the solve's own timings, its QA (model flux ratio before and
   after, held-out ratio, SNR, amplitude scatter) and its status.

Then the two corrections are compared with each other (per antenna and polarisation, referenced
to the same antenna: amplitude in per cent, phase in degrees) and each chain with the simulator's
truth: per antenna the band- and time-averaged gain of G x F (and of G alone: the gains as
transferred) against the truth's time gain over the group, referenced to the reference antenna,
amplitudes normalised by their median (the flux scale is the calibrator's either way).

Peer: CASA gaincal (the pipeline's field solver until this one), measured here in the same run.
Prints one JSON document (last on stdout; ``--out`` writes it to a file too).
"""
from __future__ import annotations

import argparse
import json
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

TRANSIT = "2025-10-29T13:55:26"


def _rss_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


class _Clock:
    def __init__(self):
        self.w, self.c = time.perf_counter(), time.process_time()

    def read(self) -> dict:
        return {"wall_s": round(time.perf_counter() - self.w, 2), "cpu_s": round(time.process_time() - self.c, 2)}


def _group(groups, start):
    """The complete group whose time span holds ``start`` (ISO), else the nearest by start."""
    from astropy.time import Time

    t = Time(start).mjd
    return min(groups, key=lambda g: abs(Time(g.timestamp).mjd + 150 / 86400 - t))


def _correction(path):
    """(npol, nant) complex of a combined-SPW G table, NaN where flagged."""
    import numpy as np

    from dsacont.calibration.tables import read_caltable

    t = read_caltable(path)
    out = np.full((t["CPARAM"].shape[0], int(t["ANTENNA1"].max()) + 1), np.nan + 0j)
    out[:, t["ANTENNA1"]] = np.where(t["FLAG"][:, 0, :], np.nan, t["CPARAM"][:, 0, :])
    return out


def _stats(r, ref):
    """Per antenna (worst polarisation), the amplitude (% from the median) and phase (deg) of the
    ratios ``r`` (npol, nant) after referencing to antenna ``ref``; max and median over antennas."""
    import numpy as np

    r = r / (r[:, ref:ref + 1] / np.abs(r[:, ref:ref + 1]))
    amp = np.abs(np.abs(r) / np.nanmedian(np.abs(r)) - 1) * 100
    ph = np.abs(np.degrees(np.angle(r)))
    a_ant, p_ant = np.nanmax(amp, axis=0), np.nanmax(ph, axis=0)
    ok = np.isfinite(a_ant) & np.isfinite(p_ant)
    return {"amp_pct_max": round(float(a_ant[ok].max()), 3), "amp_pct_median": round(float(np.median(a_ant[ok])), 3),
            "phase_deg_max": round(float(p_ant[ok].max()), 3), "phase_deg_median": round(float(np.median(p_ant[ok])), 3),
            "n_antennas": int(ok.sum())}


def _truth_errors(info, g_path, f_path, truth, ref_name):
    """The chain's time gain against the truth's, per antenna (see the module docstring)."""
    import numpy as np

    from dsacont.calibration.tables import read_caltable

    G = read_caltable(g_path)
    nant = len(info.antenna_names)
    g = np.full((2, nant), np.nan + 0j)
    for a in range(nant):
        rows = G["ANTENNA1"] == a
        vals = np.where(G["FLAG"][:, 0, rows], np.nan, G["CPARAM"][:, 0, rows])
        if vals.size:
            g[:, a] = np.nanmean(vals, axis=1)
    gt = np.full((2, nant), np.nan + 0j)
    for i, a in enumerate(truth["antennas"]):
        gt[:, info.antenna_names.index(str(int(a) + 1))] = truth["gains"][:, i, :].mean(axis=0)
    ref = info.antenna_names.index(ref_name)
    with np.errstate(invalid="ignore", divide="ignore"):  # antennas not in the data: NaN
        out = {"transferred": _stats(np.conj(g) / gt, ref)}
        if f_path:
            out["with_field_correction"] = _stats(np.conj(g * _correction(f_path)) / gt, ref)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("archive", nargs="?", default="/tmp/e2e-full/archive", help="directory of simulated groups")
    p.add_argument("--cal-group", default=TRANSIT, help="a time inside the calibrator group (default the transit)")
    p.add_argument("--group", default="2025-10-29T14:08:26", help="a time inside the field group")
    p.add_argument("--work", default="/tmp/fieldbench", help="scratch directory (deleted first)")
    p.add_argument("--methods", default="fast,casa", help="field solvers to run, in order")
    p.add_argument("--sky-jy", type=float, default=0.005, help="truth sources above this apparent flux form the model")
    p.add_argument("--channel-step", type=int, help="the fast solve's channel step (default its own choice)")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--out", help="also write the JSON here")
    a = p.parse_args(argv)

    import numpy as np

    from dsacont import calibration as C
    from dsacont import load_truth
    from dsacont.calibration.field import solve_field_gains
    from dsacont.calibration.skymodel import SkySource
    from dsacont.config import get_paths
    from dsacont.convert import convert_group
    from dsacont.io.groups import find_groups
    from dsacont.telescope import airy_beam

    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    groups = [g for g in find_groups(a.archive) if g.complete]
    cal_g, field_g = _group(groups, a.cal_group), _group(groups, a.group)
    out = {"cal_group": cal_g.timestamp, "group": field_g.timestamp, "timings": {}}
    paths = get_paths(root=work / "root")

    clock = _Clock()
    cal_ms = convert_group(cal_g.paths, work / "cal.ms", flag=True, paths=paths, progress=False)
    out["timings"]["convert_calibrator"] = clock.read()
    clock = _Clock()
    solved = C.solve_calibration(str(cal_ms), "0834+555", paths=paths, registry=False)
    out["timings"]["solve_calibrator"] = clock.read()
    tables = solved["tables"]
    refant = solved["refant"]
    clock = _Clock()
    ms0 = convert_group(field_g.paths, work / "field.ms", flag=True, paths=paths, progress=False)
    out["timings"]["convert_field"] = clock.read()
    shutil.rmtree(cal_ms, ignore_errors=True)

    info = C.read_ms_info(str(ms0))
    truth = load_truth(a.archive, field_g.paths[0])
    src = truth["sources"]
    dec_p = C.pointing_dec(info)
    sky = []
    for s in C.sky_from_arrays(src["name"], src["ra_deg"], src["dec_deg"], src["flux_jy"], src["spectral_index"]):
        off = C.beam_offsets(np.radians(s.ra_deg), np.radians(s.dec_deg), dec_p, [info.mid_mjd])[0]
        if s.flux_jy * airy_beam(off, 1.4e9) >= a.sky_jy:
            sky.append(SkySource(s.name, s.ra_deg, s.dec_deg, s.flux_jy, s.spectral_index))
    out["sky"] = {"n_sources": len(sky), "min_apparent_jy": a.sky_jy}
    ref_name = refant.split(",")[0]
    out["truth_transferred"] = _truth_errors(info, tables["G"], None, truth, ref_name)["transferred"]
    res = {}
    for method in [m.strip() for m in a.methods.split(",") if m.strip()]:
        ms = work / f"{method}.ms"
        shutil.copytree(ms0, ms)
        clock = _Clock()
        r = solve_field_gains(str(ms), [tables["B"], tables["G"]], paths=get_paths(root=work / method), sky=sky,
                              refant=refant, method=method, channel_step=a.channel_step)
        res[method] = r
        out[method] = {**clock.read(), "status": r["status"], "reason": r["reason"], "steps_s": r["timings_s"],
                       "qa": {k: r["qa"].get(k) for k in ("channel_step", "model_flux_ratio_before", "model_flux_ratio_after",
                                                         "held_out_ratio", "snr_median", "amp_scatter", "amp_median",
                                                         "phase_rms_deg", "flagged_fraction")},
                       "applied_flagged_fraction": r["applied"].get("flagged_fraction"),
                       "truth": _truth_errors(info, tables["G"], r["path"], truth, ref_name).get("with_field_correction")}
        shutil.rmtree(ms, ignore_errors=True)
        print(json.dumps({method: out[method]}), flush=True)
    if "fast" in res and "casa" in res and res["fast"]["path"] and res["casa"]["path"]:
        ref = info.antenna_names.index(ref_name)
        out["fast_vs_casa"] = _stats(_correction(res["fast"]["path"]) / _correction(res["casa"]["path"]), ref)
        out["wall_ratio_casa_over_fast"] = round(out["casa"]["wall_s"] / out["fast"]["wall_s"], 2)
    out["peak_rss_mb"] = _rss_mb()
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(out, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
