"""Benchmark: open a subband group lazily and compute it, against pyuvdata reading the same files.

Usage: python benchmarks/open_group.py GROUP_DIR [--repeat 1]

Each measurement runs in a fresh subprocess so peak RSS (ru_maxrss) belongs to it alone:
- ``open``: ``dsacont.open_group`` (lazy; reads headers only)
- ``compute``: ``open_group(...).compute()`` (materialise vis, flags, nsamples: all of it)
- ``reduce``: a streaming reduction over everything (mean |vis| per channel and pol, flag
  fraction): memory bounded by chunks, not by the group
- ``pyuvdata``: ``UVData.read`` of the 16 files (one at a time and concatenated in frequency,
  as the operators' scripts do; pyuvdata's multi-file read rejects the correlator's float32 uvw)
Prints one JSON document.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

MODES = ("open", "compute", "reduce", "pyuvdata")


def _paths(group_dir):
    from dsacont.io.groups import find_groups

    groups = [g for g in find_groups(group_dir) if g.complete]
    if not groups:
        raise SystemExit(f"no complete group in {group_dir}")
    return groups[0].paths


def child(mode: str, group_dir: str) -> dict:
    paths = _paths(group_dir)
    out = {"mode": mode}
    t0 = time.perf_counter()
    if mode in ("open", "compute", "reduce"):
        import dask
        import dask.array  # noqa: F401  (imports timed apart from the open)
        import xarray  # noqa: F401

        from dsacont.io.uvh5 import open_group

        out["import_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        ds = open_group(paths)
        out["open_s"] = time.perf_counter() - t0
        out["sizes"] = dict(ds.sizes)
        out["nbytes_gb"] = sum(ds[v].nbytes for v in ("vis", "flags", "nsamples")) / 1e9
        if mode == "compute":
            t1 = time.perf_counter()
            with dask.config.set(scheduler="threads", num_workers=2):
                ds = ds.compute()
            out["compute_s"] = time.perf_counter() - t1
        elif mode == "reduce":
            t1 = time.perf_counter()
            with dask.config.set(scheduler="threads", num_workers=2):
                amp, ff = dask.compute(abs(ds.vis).mean(("time", "baseline")), ds.flags.mean())
            out["reduce_s"] = time.perf_counter() - t1
            out["mean_amp_first_channel"] = float(amp.values[0, 0])
    else:
        from pyuvdata import UVData

        uvs = []
        for p in paths:
            uv = UVData()
            uv.read(p, file_type="uvh5", run_check=False)
            uv.uvw_array = uv.uvw_array.astype(float)  # correlator writes float32; pyuvdata wants float64
            uvs.append(uv)
        t1 = time.perf_counter()
        uv = uvs[0].fast_concat(uvs[1:], "freq", run_check=False, inplace=False)
        out["concat_s"] = time.perf_counter() - t1
        out["read_s"] = time.perf_counter() - t0
        out["Nfreqs"] = int(uv.Nfreqs)
    out["total_s"] = time.perf_counter() - t0
    out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("group_dir")
    ap.add_argument("--child", choices=MODES)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.group_dir)))
        return 0
    paths = _paths(args.group_dir)
    size = sum(os.path.getsize(p) for p in paths)
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    results = {"group_dir": args.group_dir, "input_gb": size / 1e9, "cores": os.cpu_count()}
    for mode in MODES:
        # drop the page cache where we can, so every mode reads from disk the same way
        subprocess.run(["sh", "-c", "sync; echo 3 > /proc/sys/vm/drop_caches"], capture_output=True)
        r = subprocess.run([sys.executable, __file__, args.group_dir, "--child", mode], env=env,
                           capture_output=True, text=True)
        if r.returncode != 0:
            results[mode] = {"error": r.stderr[-2000:]}
            continue
        results[mode] = json.loads(r.stdout.strip().splitlines()[-1])
    if "total_s" in results.get("compute", {}) and "total_s" in results.get("pyuvdata", {}):
        results["speedup_vs_pyuvdata"] = results["pyuvdata"]["total_s"] / results["compute"]["total_s"]
    print(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
