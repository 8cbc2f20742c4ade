"""Benchmark: simulate one group, then read it with pyuvdata as the operators do. Prints JSON.

    flock /tmp/dsacont-heavy.lock python benchmarks/simulate.py --preset full --out /tmp/sim/bench
    python benchmarks/simulate.py --read-only /tmp/shared-full     # time pyuvdata on existing files
    python benchmarks/simulate.py --realism realistic               # the realistic simulator

Figures: simulate wall/CPU time and peak RSS (in a child process), file sizes; pyuvdata (the peer:
how operators read real files) reading one subband and all 16 (one at a time, uvw cast to
float64, fast_concat along frequency), time and peak RSS, each in its own child process.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys

SIM = """
import time, resource, json, sys
t=time.perf_counter(); c=time.process_time()
import dsacont
paths = dsacont.simulate(sys.argv[1], sys.argv[2], 5, preset=sys.argv[3], seed=int(sys.argv[4]), realism=sys.argv[5])
print(json.dumps(dict(wall_s=time.perf_counter()-t, cpu_s=time.process_time()-c,
      peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024, files=len(paths))))
"""

READ = """
import time, resource, json, sys, warnings
import numpy as np
from pyuvdata import UVData
paths = sys.argv[1:]
kw = dict(file_type="uvh5", run_check=False, run_check_acceptability=False, strict_uvw_antpos_check=False,
          check_extra=False)
t = time.perf_counter()
uvs = []
with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    for p in paths:
        uv = UVData()
        uv.read(p, **kw)
        uv.uvw_array = uv.uvw_array.astype(np.float64)
        uvs.append(uv)
    uv = uvs[0]
    if len(uvs) > 1:
        uv.fast_concat(uvs[1:], axis="freq", inplace=True, run_check=False)
print(json.dumps(dict(wall_s=time.perf_counter()-t, peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/1024,
      nblts=uv.Nblts, nfreqs=uv.Nfreqs, data_dtype=str(uv.data_array.dtype))))
"""


def _child(code, args):
    r = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True)
    return json.loads(r.stdout.strip().splitlines()[-1])


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="small", choices=["small", "full"], help="simulator preset (default: small)")
    ap.add_argument("--out", default="/tmp/sim/bench", help="output directory (default: /tmp/sim/bench)")
    ap.add_argument("--start", default="2025-10-29T13:52:51", help="group start, UTC (default: 2025-10-29T13:52:51)")
    ap.add_argument("--seed", type=int, default=0, help="simulator seed (default: 0)")
    ap.add_argument("--realism", default="ideal", choices=["ideal", "realistic"],
                    help="simulator realism (default: ideal)")
    ap.add_argument("--read-only", default=None, help="existing directory of one group: only time pyuvdata")
    a = ap.parse_args(argv)
    res: dict = {"preset": a.preset, "realism": a.realism}
    d = a.read_only or a.out
    if not a.read_only:
        res["simulate"] = _child(SIM, [a.out, a.start, a.preset, str(a.seed), a.realism])
    paths = sorted(glob.glob(os.path.join(d, "*_sb??.hdf5")), key=lambda p: p[-7:-5])[:16]
    res["file_mb"] = [round(os.path.getsize(p) / 1e6, 1) for p in paths[:1]]
    res["group_mb"] = round(sum(os.path.getsize(p) for p in paths) / 1e6, 1)
    res["pyuvdata_one_file"] = _child(READ, paths[:1])
    res["pyuvdata_16_files"] = _child(READ, paths)
    print(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
