r"""Benchmark: the fast B/G solve against CASA's on one full-size calibrator group, same MS, same run.

Run under the shared lock (heavy)::

    flock /tmp/dsacont-heavy.lock env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        nice -n 5 python benchmarks/calibrate.py /tmp/shared-full --work /tmp/cal/bench

Steps (each timed, wall and CPU seconds of this process; CASA runs in-process): convert the group
with ``convert_group`` (unless ``--ms`` gives an MS, which is copied, never modified; ``--flag``
runs the pipeline's RFI flagger during conversion, otherwise the simulator's truth RFI mask is
ORed into FLAG when the truth is there). Then, for each of ``--methods`` (default ``fast,casa``)
on its own copy of that MS: ``solve_calibration(method=...)`` (antenna health, flags, model, the
solves; per-stage wall times from its metrics), ``apply_calibration`` (applycal + the
CORRECTED_DATA check) and the calibrated/catalogue flux ratio of the calibrator. With the
simulator truth next to the files, each method's G x B is compared with the truth (per antenna:
band-averaged gain amplitude error in per cent and phase error in degrees, max and median over
antennas; per-channel rms; bandpass shape), and the two methods' tables with each other
(``calibration.fastsolve.compare_tables``: per antenna the largest amplitude (%) and phase (deg)
difference of B, G and G x B, max and median over antennas).

Peer: CASA's solve (the pipeline's solver until the fast one), measured here in the same run.
Quoted, not measured: the old pipeline's bandpass ~31 s and gains ~10 s on a 40-thread Xeon.
This machine: 2 shared cores. Prints one JSON document (last on stdout; ``--out`` writes it to a
file too).

Measured 2026-11-29 on one full-size transit group (seed 1, calibrator-only model, load 5-9):
fast 35.3 s wall / 21.0 s CPU (health 14.3, read 12.8, accumulate 3.3, predict 1.6, StEFCal 0.9,
tables 0.5), CASA 454 s / 278 s (flagdata 21, MODEL_DATA 15, G0 43, bandpass 250, gaincal 114):
12.9x wall, 13.2x CPU. With DATA read by contiguous runs (commit 31fc343; same solutions to the
last digit), ``--methods fast`` on the same MS, load 2-3: 16.0 s wall / 15.9 s CPU (health 9.9,
read 1.6, predict 1.0, accumulate 1.6, StEFCal 0.5, model 0.7), peak RSS 1.08 GB. Fast vs CASA per antenna, max over antennas: B 0.005 % / 0.003 deg, G
0.025 % / 0.016 deg, G x B 0.026 % / 0.017 deg, the same solutions flagged, SNR medians equal
(B 104.1 / 104.0, G 235.6 / 235.7). Against the truth: fast 0.448 % / 0.623 deg max, 0.131 % /
0.154 deg median per antenna; CASA 0.451 % / 0.622 deg, 0.132 % / 0.153 deg.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

PEER = {"old_pipeline_bandpass_s": 31.0, "old_pipeline_gains_s": 10.0, "old_pipeline_threads": 40}


class Timer:
    def __init__(self):
        self.out = {}

    def __call__(self, name):
        timer = self

        class _T:
            def __enter__(self):
                self.w, self.c = time.perf_counter(), time.process_time()

            def __exit__(self, *exc):
                timer.out[name] = {"wall_s": round(time.perf_counter() - self.w, 2),
                                   "cpu_s": round(time.process_time() - self.c, 2)}

        return _T()


def _truth_rfi_flags(ms, truth):
    from dsacont import calibration as C
    from dsacont.casa import ensure_casa

    info = C.read_ms_info(ms)
    offsets = [0]
    for f in info.spw_freqs:
        offsets.append(offsets[-1] + len(f))
    t_ms = (truth["time_jd"] - 2400000.5) * 86400.0
    tb = ensure_casa().table()
    tb.open(str(ms), nomodify=False)
    try:
        for d in range(len(info.ddid_spw)):
            sub = tb.query(f"DATA_DESC_ID=={d}")
            spw = int(info.ddid_spw[d])
            import numpy as np

            ti = np.argmin(np.abs(sub.getcol("TIME")[:, None] - t_ms[None, :]), axis=1)
            m = truth["rfi_tf_mask"][:, offsets[spw]:offsets[spw + 1]][ti]
            fl = sub.getcol("FLAG")
            fl |= m.T[None, :, :]
            sub.putcol("FLAG", fl)
            sub.close()
    finally:
        tb.close()
        tb.done()


def _truth_compare(ms, tables, truth, refant):
    import numpy as np

    from dsacont import calibration as C

    info = C.read_ms_info(ms)
    B, G = C.read_caltable(tables["B"]), C.read_caltable(tables["G"])
    ants = list(truth["antennas"])
    spw_of = np.concatenate([np.full(len(f), i) for i, f in enumerate(info.spw_freqs)])
    nf = spw_of.size
    gs = np.full((len(ants), nf, 2), np.nan + 0j)
    for i, a in enumerate(ants):
        row = info.antenna_names.index(str(a + 1))
        for s in range(spw_of.max() + 1):
            rb = np.flatnonzero((B["ANTENNA1"] == row) & (B["SPECTRAL_WINDOW_ID"] == s))
            rg = np.flatnonzero((G["ANTENNA1"] == row) & (G["SPECTRAL_WINDOW_ID"] == s))
            sel = spw_of == s
            b = np.where(B["FLAG"][:, :, rb[0]], np.nan, B["CPARAM"][:, :, rb[0]]).T  # (nchan, npol)
            g = np.nanmean(np.where(G["FLAG"][:, 0, rg], np.nan, G["CPARAM"][:, 0, rg]), axis=1)
            gs[i, sel] = np.conj(b * g[None, :])
    gt = truth["gains"].mean(axis=0)[:, None, :] * truth["bandpass"]
    iref = ants.index(int(refant) - 1)
    r = gs / gt
    r = r / (r[iref] / np.abs(r[iref]))[None]
    rb = np.nanmean(r, axis=1)
    shp = []
    for s in range(spw_of.max() + 1):
        sel = spw_of == s
        a_ = np.abs(gs[:, sel]) / np.nanmean(np.abs(gs[:, sel]), axis=1, keepdims=True)
        b_ = np.abs(gt[:, sel]) / np.nanmean(np.abs(gt[:, sel]), axis=1, keepdims=True)
        shp.append(a_ / b_ - 1)
    shp = np.concatenate(shp, axis=1)
    amp_ant = np.nanmax(np.abs(np.abs(rb) - 1), axis=1) * 100  # per antenna, worst pol, %
    ph_ant = np.nanmax(np.abs(np.degrees(np.angle(rb))), axis=1)
    return {
        "antenna_gain_amp_err_pct": {"max": float(np.nanmax(amp_ant)), "median": float(np.nanmedian(amp_ant))},
        "antenna_gain_phase_err_deg": {"max": float(np.nanmax(ph_ant)), "median": float(np.nanmedian(ph_ant))},
        "antenna_gain_amp_err_max": float(np.nanmax(np.abs(np.abs(rb) - 1))),
        "antenna_gain_phase_err_max_deg": float(np.nanmax(np.abs(np.degrees(np.angle(rb))))),
        "channel_gain_amp_err_rms": float(np.sqrt(np.nanmean((np.abs(r) - 1) ** 2))),
        "channel_gain_phase_err_rms_deg": float(np.sqrt(np.nanmean(np.degrees(np.angle(r)) ** 2))),
        "bandpass_shape_err_rms": float(np.sqrt(np.nanmean(shp ** 2))),
        "bandpass_shape_err_max": float(np.nanmax(np.abs(shp))),
    }


def _rss_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("group_dir", nargs="?", default="/tmp/shared-full", help="directory with one 16-file group")
    p.add_argument("--ms", help="use a copy of this (already converted, calibrator) MS instead of converting")
    p.add_argument("--work", default="/tmp/cal/bench", help="scratch directory (deleted first)")
    p.add_argument("--methods", default="fast,casa", help="solvers to run, in order (default: fast,casa)")
    p.add_argument("--flag", action="store_true", help="run the pipeline's RFI flagger during conversion")
    p.add_argument("--no-apply", action="store_true", help="skip applycal and the flux check")
    p.add_argument("--keep", action="store_true", help="keep the scratch directory")
    p.add_argument("--out", help="also write the JSON here (CASA's C++ messages go to stdout too)")
    p.add_argument("--sky-from-truth", type=float, metavar="JY",
                   help="add the truth's field sources brighter than JY in the beam to the model "
                        "(a stand-in for a survey catalogue)")
    a = p.parse_args(argv)

    import numpy as np

    from dsacont import calibration as C
    from dsacont.calibration.fastsolve import compare_tables
    from dsacont.config import get_paths

    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    work = Path(a.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    T = Timer()
    truth = None
    files = sorted(glob.glob(os.path.join(a.group_dir, "*_sb??.hdf5")))
    try:
        from dsacont import load_truth

        truth = load_truth(a.group_dir, files[0]) if files else None
    except Exception:  # noqa: BLE001 - no truth: no comparison
        truth = None
    src = work / "source.ms"
    if a.ms:
        with T("copy_input_ms"):
            shutil.copytree(a.ms, src)
    else:
        from dsacont.convert import convert_group

        with T("convert"):
            convert_group(files, src, flag=a.flag, paths=get_paths(root=work / "convert"), progress=False)
        if truth is not None and not a.flag:
            with T("truth_rfi_flags"):
                _truth_rfi_flags(str(src), truth)
    info = C.read_ms_info(str(src))
    sky = None
    if a.sky_from_truth and truth is not None:
        from dsacont.telescope import airy_beam

        dec_p = C.pointing_dec(info)
        s_ = truth["sources"]
        sky = [s for s in C.sky_from_arrays(s_["name"], s_["ra_deg"], s_["dec_deg"], s_["flux_jy"],
                                            s_["spectral_index"])
               if s.name != "0834+555" and s.flux_jy * airy_beam(C.beam_offsets(
                   np.radians(s.ra_deg), np.radians(s.dec_deg), dec_p, [info.mid_mjd])[0], 1.4e9) > a.sky_from_truth]
    out = {
        "ms": str(src) if not a.ms else a.ms,
        "nrows": info.nrows,
        "nspw": len(info.spw_freqs),
        "nchan": int(sum(len(f) for f in info.spw_freqs)),
        "n_sky_sources": len(sky or []),
        "steps": T.out,
        "methods": {},
    }
    tables = {}
    for i, method in enumerate(methods):
        ms = work / f"{method}.ms"
        if i == len(methods) - 1:
            src.rename(ms)
        else:
            with T(f"copy_ms_{method}"):
                shutil.copytree(src, ms)
        paths = get_paths(root=work / f"root_{method}")
        with T(f"solve_{method}"):
            res = C.solve_calibration(str(ms), "0834+555", paths=paths, plots=False, sky=sky, method=method)
        rss_solve = _rss_mb()
        m = res["metrics"]
        r = {
            "solve": T.out[f"solve_{method}"],
            "solve_stages_wall_s": {k: round(v, 2) for k, v in m["timings_s"].items()},
            "peak_rss_mb_after_solve": rss_solve,
            "n_antennas": m["n_antennas"],
            "flagged_solutions": {k: m[k]["flagged_fraction"] for k in ("B", "G")},
            "snr_median": {k: m[k]["snr_median"] for k in ("B", "G")},
            "flagged_data_fraction": m["flags"]["total"],
            "refant": res["refant"],
            "status": res["status"],
            "gates": {k: v for k, v in m["gates"].items() if k != "bandpass_phase_scatter_worst"},
        }
        if not a.no_apply:
            with T(f"apply_{method}"):
                app = C.apply_calibration(str(ms), paths=paths)
            with T(f"flux_check_{method}"):
                fr = C.calibrated_flux_ratio(str(ms), info, calibrator="0834+555")
            r["apply"] = T.out[f"apply_{method}"]
            r["apply_wall_s"] = {k: round(v, 2) for k, v in app["timings_s"].items()}
            r["calibrated_over_calibrator_model"] = {"amp": fr["amp_ratio"], "phase_deg": fr["phase_deg"],
                                                     "worst_spw_err": fr["max_spw_error"]}
        if truth is not None:
            r["truth"] = _truth_compare(str(ms), res["tables"], truth, res["refant"].split(",")[0])
        out["methods"][method] = r
        tables[method] = res["tables"]
        print(json.dumps({method: r}), file=sys.stderr, flush=True)  # progress, in case a later step fails
    if "fast" in tables and "casa" in tables:
        out["fast_vs_casa"] = compare_tables(tables["fast"]["B"], tables["fast"]["G"], tables["casa"]["B"],
                                             tables["casa"]["G"])
        f, c = out["methods"]["fast"]["solve"], out["methods"]["casa"]["solve"]
        out["speedup"] = {"wall": round(c["wall_s"] / f["wall_s"], 2), "cpu": round(c["cpu_s"] / max(f["cpu_s"], 1e-9), 2)}
    out.update({
        "peak_rss_mb": _rss_mb(),
        "peer_quoted": PEER,
        "threads": {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS")},
        "cpus": os.cpu_count(),
        "loadavg_end": os.getloadavg(),
    })
    print(json.dumps(out, indent=2))
    if a.out:
        Path(a.out).write_text(json.dumps(out, indent=2) + "\n")
    if not a.keep:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
