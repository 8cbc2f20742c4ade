"""Benchmark: one subband group -> Measurement Set, dsacont vs pyuvdata's path, and the raw I/O floor.

Run under the shared lock (heavy)::

    flock /tmp/dsacont-heavy.lock env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=2 \\
        python benchmarks/convert.py /tmp/shared-full --scratch /tmp/conv/bench

Each measurement runs in its own process under ``/usr/bin/time -v`` (wall seconds, peak RSS).
In order: dsacont, the I/O floor (read every input byte, then write as many bytes as dsacont's MS
has to the same temp location dsacont built it in, and rename or copy them to the output
directory, as dsacont's atomic move does),
dsacont ``convert_group`` (flag=False, as pyuvdata's path does no flagging), then pyuvdata (read
16 files, fast_concat, declare the drift centre, phase to the same ICRS centre, write_ms:
``tests/pyuvdata_reference.py``). The input files are read once first, so all three see a warm
page cache. Prints one JSON document.

Targets (issue 4): dsacont >= 5x faster than pyuvdata, peak RSS <= 2 GB, within 2x of the floor.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


CPU = {}


def _timed(cmd, env=None):
    """Run ``cmd`` under /usr/bin/time -v; returns (wall_s, peak_rss_mb, stdout).

    The child's user+system CPU seconds are left in ``CPU['last']`` (a load-independent figure
    on a shared machine)."""
    t0 = time.perf_counter()
    res = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    if res.returncode != 0:
        raise RuntimeError(f"{cmd[:3]} failed:\n{res.stderr[-4000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", res.stderr)
    rss = int(m.group(1)) / 1024 if m else float("nan")
    u = re.search(r"User time \(seconds\): ([\d.]+)", res.stderr)
    s = re.search(r"System time \(seconds\): ([\d.]+)", res.stderr)
    CPU["last"] = (float(u.group(1)) + float(s.group(1))) if u and s else float("nan")
    return wall, rss, res.stdout


def _du(path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


FLOOR = r"""
import os, sys, time, json, shutil
files, nbytes_out, tmp_dir, out_dir = sys.argv[1:-3], int(sys.argv[-3]), sys.argv[-2], sys.argv[-1]
buf = bytearray(16 << 20)
t0 = time.perf_counter(); nin = 0
for f in files:
    with open(f, 'rb', buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n: break
            nin += n
t_read = time.perf_counter() - t0
os.makedirs(tmp_dir, exist_ok=True); os.makedirs(out_dir, exist_ok=True)
tmp = os.path.join(tmp_dir, 'floor.bin'); dst = os.path.join(out_dir, 'floor.bin')
t1 = time.perf_counter(); left = nbytes_out
with open(tmp, 'wb', buffering=0) as fh:
    while left > 0:
        left -= fh.write(memoryview(buf)[:min(len(buf), left)])
t_write = time.perf_counter() - t1
t2 = time.perf_counter()
if os.stat(tmp_dir).st_dev != os.stat(out_dir).st_dev:
    shutil.copyfile(tmp, dst)
else:
    os.replace(tmp, dst)
t_move = time.perf_counter() - t2
for p in (tmp, dst):
    if os.path.exists(p): os.remove(p)
print(json.dumps(dict(read_s=t_read, write_s=t_write, move_s=t_move, bytes_in=nin, bytes_out=nbytes_out)))
"""

DSACONT = r"""
import json, logging, sys, time
logging.basicConfig(level=logging.INFO, format='%(asctime)s %(name)s: %(message)s', stream=sys.stderr)
t0 = time.perf_counter()
c0 = time.process_time()  # CPU of every thread of this process
from dsacont.config import get_paths
from dsacont import convert
out, root, tmp_dir, flag = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == 'flag'
files = sys.argv[5:]
ms = convert.convert_group(files, out, flag=flag, paths=get_paths(root=root),
                           tmp_dir=None if tmp_dir == 'auto' else tmp_dir, qa_dir=root + '/qa')
cold = dict(convert.LAST_PROFILE)
t_cold = time.perf_counter() - t0
cpu_cold = time.process_time() - c0
res = dict(ms=str(ms), profile=cold, cold_in_process_s=t_cold, cold_cpu_s=cpu_cold)
if not flag:
    # the streaming service converts group after group in one process: time a second, warm call
    t1 = time.perf_counter()
    c1 = time.process_time()
    ms2 = convert.convert_group(files, out + '.warm.ms', flag=False, paths=get_paths(root=root),
                                tmp_dir=None if tmp_dir == 'auto' else tmp_dir)
    res.update(warm_seconds=time.perf_counter() - t1, warm_cpu_s=time.process_time() - c1,
               warm_profile=dict(convert.LAST_PROFILE))
    import shutil; shutil.rmtree(ms2, ignore_errors=True)
print(json.dumps(res))
"""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("group_dir", nargs="?", default="/tmp/shared-full")
    ap.add_argument("--scratch", default="/tmp/conv/bench", help="output/scratch directory (deleted after)")
    ap.add_argument("--tmp-dir", default="auto", help="dsacont's temp dir for the MS (auto: tmpfs if room)")
    ap.add_argument("--skip-pyuvdata", action="store_true")
    ap.add_argument("--also-flag", action="store_true",
                    help="also time one dsacont conversion with flag=True (RFI flags in the same pass)")
    ap.add_argument("--also-tmpfs", action="store_true",
                    help="also time dsacont building the MS in /dev/shm (then copied to the output filesystem)")
    ap.add_argument("--keep", action="store_true", help="keep the MSs")
    args = ap.parse_args(argv)

    files = sorted(glob.glob(os.path.join(args.group_dir, "*_sb??.hdf5")))
    if len(files) != 16:
        sys.exit(f"expected 16 subband files in {args.group_dir}, found {len(files)}")
    scratch = Path(args.scratch)
    shutil.rmtree(scratch, ignore_errors=True)
    scratch.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    bytes_in = sum(os.path.getsize(f) for f in files)
    for f in files:  # warm the page cache for everyone
        with open(f, "rb") as fh:
            while fh.read(16 << 20):
                pass
    result = dict(group_dir=args.group_dir, n_files=len(files), input_mb=bytes_in / 1e6,
                  cpus=os.cpu_count(), loadavg_before=os.getloadavg())

    # dsacont
    root = scratch / "root"
    ms = scratch / "dsacont.ms"
    wall, rss, out = _timed([sys.executable, "-c", DSACONT, str(ms), str(root), args.tmp_dir, "noflag", *files],
                            env=env)
    info = json.loads(out.strip().splitlines()[-1])
    ms_bytes = _du(ms)
    result["dsacont"] = dict(child_seconds=wall, cpu_seconds=CPU["last"], peak_rss_mb=rss, ms_mb=ms_bytes / 1e6,
                             mb_per_s_in=bytes_in / 1e6 / wall, mb_per_s_out=ms_bytes / 1e6 / wall,
                             profile=info["profile"], warm_seconds=info["warm_seconds"],
                             warm_profile=info["warm_profile"], cold_cpu_seconds=info["cold_cpu_s"],
                             warm_cpu_seconds=info["warm_cpu_s"],
                             note="child_seconds/cpu_seconds/peak_rss cover the whole child: a cold and a warm "
                                  "conversion; cold_/warm_cpu_seconds are each conversion's own (all threads)")

    if args.also_flag:
        msf = scratch / "dsacont_flag.ms"
        wallf, rssf, outf = _timed([sys.executable, "-c", DSACONT, str(msf), str(root), args.tmp_dir, "flag", *files],
                                   env=env)
        infof = json.loads(outf.strip().splitlines()[-1])
        result["dsacont_flag"] = dict(cold_seconds=infof["cold_in_process_s"], cold_cpu_seconds=infof["cold_cpu_s"],
                                      peak_rss_mb=rssf, profile=infof["profile"],
                                      note="flag=True (RFI flags fused into the pass), one cold conversion")
        shutil.rmtree(msf, ignore_errors=True)

    if args.also_tmpfs:
        ms2 = scratch / "dsacont_tmpfs.ms"
        wall2, rss2, out2 = _timed([sys.executable, "-c", DSACONT, str(ms2), str(root), "/dev/shm", "noflag",
                                    *files], env=env)
        info2 = json.loads(out2.strip().splitlines()[-1])
        result["dsacont_tmpfs"] = dict(cold_seconds=info2["cold_in_process_s"], warm_seconds=info2["warm_seconds"],
                                        peak_rss_mb=rss2, profile=info2["profile"], warm_profile=info2["warm_profile"])
        shutil.rmtree(ms2, ignore_errors=True)

    # I/O floor: read the input bytes, write the output bytes where dsacont writes, move/copy
    # where dsacont built its MS: by default <stage>/tmp, on the output's filesystem (a rename)
    tmp_dir = str(root / "stage" / "tmp" / "floor") if args.tmp_dir == "auto" else args.tmp_dir
    wall_f, _, out = _timed([sys.executable, "-c", FLOOR, *files, str(ms_bytes), tmp_dir, str(root / "stage" / "tmp")])
    floor = json.loads(out.strip().splitlines()[-1])
    shutil.rmtree(tmp_dir, ignore_errors=True)
    floor["seconds"] = floor["read_s"] + floor["write_s"] + floor["move_s"]
    floor["cpu_seconds"] = CPU["last"]
    result["io_floor"] = floor

    # pyuvdata
    if not args.skip_pyuvdata:
        import numpy as np

        from dsacont import phasing
        from dsacont.loader import open_group

        ds = open_group(files)
        times = ds["time"].values
        ra, dec = phasing.meridian_icrs(0.5 * (times.min() + times.max()), float(ds.attrs["phase_center_dec"]))
        ref = scratch / "pyuvdata.ms"
        wall_p, rss_p, out = _timed([sys.executable, str(REPO / "tests" / "pyuvdata_reference.py"), str(ref),
                                     repr(ra), repr(dec), *files], env=env)
        steps = json.loads(out.strip().splitlines()[-1])
        ref_bytes = _du(ref)
        result["pyuvdata"] = dict(seconds=wall_p, cpu_seconds=CPU["last"], peak_rss_mb=rss_p, ms_mb=ref_bytes / 1e6,
                                  mb_per_s_in=bytes_in / 1e6 / wall_p, steps=steps)
        result["speedup_vs_pyuvdata"] = wall_p / info["cold_in_process_s"]
        result["speedup_vs_pyuvdata_warm"] = steps["total"] / info["warm_seconds"]
        result["cpu_ratio_pyuvdata_over_dsacont"] = result["pyuvdata"]["cpu_seconds"] / info["cold_cpu_s"]
        result["cpu_ratio_pyuvdata_over_dsacont_warm"] = result["pyuvdata"]["cpu_seconds"] / info["warm_cpu_s"]
        del np
    result["dsacont"]["cold_seconds"] = info["cold_in_process_s"]
    result["ratio_to_io_floor"] = info["cold_in_process_s"] / floor["seconds"]
    result["ratio_to_io_floor_warm"] = info["warm_seconds"] / floor["seconds"]
    result["targets"] = dict(
        speedup_ge_5=result.get("speedup_vs_pyuvdata", float("nan")) >= 5,
        peak_rss_le_2gb=result["dsacont"]["peak_rss_mb"] <= 2048,
        within_2x_floor=result["ratio_to_io_floor_warm"] <= 2,
    )
    result["loadavg_after"] = os.getloadavg()
    if not args.keep:
        shutil.rmtree(scratch, ignore_errors=True)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
