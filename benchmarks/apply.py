"""Apply benchmark: CASA applycal vs dsacont's numba apply on one full-size MS. Prints JSON.

    flock /tmp/dsacont-heavy.lock env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=1 \
        nice -n 5 python benchmarks/apply.py --ms /tmp/flag2/bench/bench.ms --work /tmp/flag2/apply

What is measured (one run, same machine, same MS, same tables):

1. Tables: a bandpass (B, solint inf) and gains (G, amplitude and phase, solint 'int') solved by
   CASA on the first ``--solve-integrations`` integrations of the MS (``timerange``): tables of
   the real shape (every antenna, every SPW) for a fraction of a full solve's time; G has that many
   solution times, so the linear interpolation in time is used between them and the last one is
   held beyond. ``--tables B G`` uses existing tables instead.
2. Two copies of the MS; ``apply_calibration(ms, tables, engine=...)`` with ``engine='casa'``
   (applycal) on one and ``engine='dsacont'`` on the other, each in its own process: the
   process's wall and CPU time, and the apply's own time (``timings_s['applycal']``: the part
   the engine changes; the CORRECTED_DATA check after it is the same for both). The numba
   kernels are compiled (or loaded from numba's cache) before the timed apply, as in a worker
   that has applied a group before.
3. Agreement: CORRECTED_DATA (maximum and median relative difference over unflagged samples) and
   FLAG (identical or not), read back chunk by chunk.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1",
       "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}

_SOLVE = """
import json, sys, time
import numpy as np
from astropy.time import Time
from dsacont.casa import casatasks
from dsacont.io.ms import read_ms_info
ms, b, g, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
info = read_ms_info(ms)
t = info.times_s
lo, hi = t[0] - 0.5 * info.interval_s, t[min(n, len(t)) - 1] + 0.5 * info.interval_s
fmt = lambda s: Time(s / 86400.0, format="mjd", scale="utc", precision=3).isot.replace("-", "/").replace("T", "/")
tr = f"{fmt(lo)}~{fmt(hi)}"
ct = casatasks()
t0 = time.perf_counter()
ct.bandpass(vis=ms, caltable=b, timerange=tr, solint="inf", combine="scan", refant="0", bandtype="B",
            solnorm=True, minsnr=3)
t1 = time.perf_counter()
ct.gaincal(vis=ms, caltable=g, timerange=tr, solint="int", refant="0", calmode="ap", gaintype="G", minsnr=3,
           gaintable=[b], interp=["nearest"])
print(json.dumps({"timerange": tr, "bandpass_s": t1 - t0, "gaincal_s": time.perf_counter() - t1}))
"""

_APPLY = """
import json, sys, time
import numpy as np
t0 = time.perf_counter()
from dsacont.calibration.apply import apply_calibration
from dsacont.calibration import apply_kernels as K
# numba compiles (or loads its cache) here, not inside the timed apply, as in a long-running worker
K.interp_gains_linear(np.zeros(2), np.ones((2, 1, 2), complex), np.zeros((2, 1, 2), bool), np.zeros(3))
K.fill_flagged_channels(np.arange(3.0), np.ones((1, 1, 2, 3), complex), np.zeros((1, 1, 2, 3), bool))
K.apply_jones(np.ones((2, 3, 4), np.complex64, order="F"), np.zeros((2, 3, 4), bool, order="F"), np.zeros(4, np.int64),
              np.zeros(4, np.int64), np.zeros(4, np.int64), np.array([[0, 0], [1, 1]]), np.ones((1, 1, 3, 2), complex),
              np.zeros((1, 1, 3, 2), bool))
r = apply_calibration(sys.argv[1], tables=sys.argv[3:], engine=sys.argv[2])
print(json.dumps({"engine": r["engine"], "timings_s": r["timings_s"], "flagged_fraction": r["flagged_fraction"],
                  "spw_flagged_unsolved": r["spw_flagged_unsolved"], "in_process_s": time.perf_counter() - t0}))
"""

_COMPARE = """
import json, sys
import numpy as np
from dsacont.io.ms import iter_ddid, read_ms_info, table
a, b = sys.argv[1], sys.argv[2]
info = read_ms_info(a)
worst, meds, nflag_diff, n = 0.0, [], 0, 0
with table(a) as ta, table(b) as tb:
    for (d, sa, s, k), (_, sb, _, _) in zip(iter_ddid(ta, range(len(info.ddid_spw))),
                                            iter_ddid(tb, range(len(info.ddid_spw)))):
        ca, fa = sa.getcol("CORRECTED_DATA", s, k), sa.getcol("FLAG", s, k)
        cb, fb = sb.getcol("CORRECTED_DATA", s, k), sb.getcol("FLAG", s, k)
        nflag_diff += int(np.count_nonzero(fa != fb))
        ok = ~fa & ~fb & (np.abs(ca) > 0)
        rel = np.abs(ca[ok] - cb[ok]) / np.abs(ca[ok])
        if rel.size:
            worst = max(worst, float(rel.max()))
            meds.append(float(np.median(rel)))
        n += fa.size
print(json.dumps({"max_relative_difference": worst, "median_relative_difference": float(np.median(meds)),
                  "flag_samples_differing": nflag_diff, "samples": n}))
"""


def _child(code, args, log):
    """Run ``python -c code args``: (wall s, CPU s, the JSON of its last stdout line)."""
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-c", code, *map(str, args)], capture_output=True, text=True, env=ENV)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    Path(log).write_text(p.stdout + p.stderr)
    if p.returncode != 0:
        raise SystemExit(f"child failed (rc {p.returncode}), see {log}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return wall, cpu, json.loads(p.stdout.strip().splitlines()[-1])


def main(argv=None):
    """Run the benchmark; print (and with --out write) the JSON. Returns 0."""
    ap = argparse.ArgumentParser(description="Apply benchmark: CASA applycal vs dsacont's numba apply on one MS.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--ms", default="/tmp/flag2/bench/bench.ms", help="a full-size Measurement Set (not modified)")
    ap.add_argument("--work", default="/tmp/flag2/apply", help="scratch directory for the tables and MS copies")
    ap.add_argument("--tables", nargs=2, default=None, metavar=("B", "G"),
                    help="existing bandpass and gain tables (default: solve them on the first integrations)")
    ap.add_argument("--solve-integrations", type=int, default=3,
                    help="integrations the B and G tables are solved on (G: one solution each)")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--keep", action="store_true", help="keep the MS copies")
    a = ap.parse_args(argv)
    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    res = {"ms": a.ms, "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}}
    if a.tables:
        tables = [str(Path(t).absolute()) for t in a.tables]
        res["tables"] = {"given": tables}
    else:
        tables = [str(work / "bench.B"), str(work / "bench.G")]
        for t in tables:
            shutil.rmtree(t, ignore_errors=True)
        wall, cpu, out = _child(_SOLVE, [a.ms, *tables, a.solve_integrations], work / "solve.log")
        res["tables"] = {"solved": tables, **out, "wall_s": wall}
    print(json.dumps(res["tables"]), file=sys.stderr)
    copies = {}
    for engine in ("casa", "dsacont"):
        dst = work / f"{engine}.ms"
        shutil.rmtree(dst, ignore_errors=True)
        shutil.copytree(a.ms, dst)
        copies[engine] = dst
        wall, cpu, out = _child(_APPLY, [dst, engine, *tables], work / f"apply_{engine}.log")
        res[engine] = {"process_wall_s": wall, "process_cpu_s": cpu, **out}
        print(json.dumps(res[engine]), file=sys.stderr)
    wall, cpu, out = _child(_COMPARE, [copies["casa"], copies["dsacont"]], work / "compare.log")
    res["agreement"] = out
    res["apply_speedup"] = res["casa"]["timings_s"]["applycal"] / res["dsacont"]["timings_s"]["applycal"]
    if not a.keep:
        for dst in copies.values():
            shutil.rmtree(dst, ignore_errors=True)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
