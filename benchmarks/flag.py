"""RFI flagging benchmark: dsacont vs AOFlagger on one full-size group.

Both are scored against the simulator's truth. Prints JSON (and writes it with --out).

    flock /tmp/dsacont-heavy.lock env OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 NUMBA_NUM_THREADS=2 \
        python benchmarks/flag.py --group /tmp/shared-full --work /tmp/flag/bench

What is measured (one run, same machine, same data):

1. dsacont on the lazy Dataset: ``flag_dataset(open_group(paths)).compute()`` with the
   synchronous Dask scheduler (one core: per-core throughput, HDF5 reads included), and the
   block kernels alone on the amplitudes already in memory (``flag_arrays``, one thread). Each
   twice, "after" (the kernels in ``dsacont.flagging.kernels``) and "before" (the kernels as
   they were before the speed-up, ``tests/flagging/reference_kernels.py``, swapped in for the
   run), interleaved in the same process; the JSON says whether the two flag sets are identical.
2. The Measurement Set: made from the same group by ``dsacont.convert_group(..., flag=False)``
   (falls back to pyuvdata ``write_ms`` if the conversion stage is unavailable; the JSON says
   which), then copied twice: ``dsacont flag MS --threads 1`` on one copy, ``aoflagger -j 1``
   (AOFlagger 3.1, its default strategy for an unknown telescope) on the other, each in its own
   process; wall and CPU time of each process.
3. Quality: recall of the injected RFI samples and false-flag fraction of clean samples, for all
   baselines, cross-correlations and autocorrelations; agreement between the two flag sets.

Throughput = visibilities (time x baseline x channel x polarisation samples) / seconds; "per
core" uses the process's CPU seconds (user + system), "wall" the elapsed seconds. The MS-based
figures include the MS reading and the FLAG writing of each tool.

python-casacore is used here (reading FLAG) only in this process; everything that uses
casatools (conversion, dsacont flag) runs in a subprocess.

Figures measured with this script are in ``benchmarks/README.md`` (RFI flagging).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import dask
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dsacont import load_truth  # noqa: E402  (this checkout first on the path)
from dsacont.flagging import blocks as _blocks  # noqa: E402
from dsacont.flagging import flag_arrays, flag_block, flag_dataset, load_strategy  # noqa: E402
from dsacont.io.uvh5 import open_group  # noqa: E402


def _reference_kernel(work: Path):
    """``flag_block_kernel`` as it was before the speed-up (tests/flagging/reference_kernels.py).

    Imported from a copy under ``work`` with a fixed module name, so numba's on-disk cache of it
    is its own (the tests import the same file under another name).
    """
    import importlib

    d = Path(work) / "reference_kernels"
    d.mkdir(parents=True, exist_ok=True)
    src = (ROOT / "tests" / "flagging" / "reference_kernels.py").read_text()
    dst = d / "dsacont_flag_reference_kernels.py"
    if not dst.exists() or dst.read_text() != src:
        dst.write_text(src)
    sys.path.insert(0, str(d))
    try:
        return importlib.import_module("dsacont_flag_reference_kernels").flag_block_kernel
    finally:
        sys.path.remove(str(d))


class _kernel:
    """Context manager: run the flagging wrappers with another block kernel."""

    def __init__(self, fn):
        self.fn, self.saved = fn, None

    def __enter__(self):
        self.saved = _blocks.flag_block_kernel
        _blocks.flag_block_kernel = self.fn

    def __exit__(self, *exc):
        _blocks.flag_block_kernel = self.saved

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "2",
       "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def children_cpu():
    """CPU seconds (user + system) of the finished child processes so far."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_child(cmd, log_path):
    """Run a command; returns (wall s, cpu s, returncode)."""
    c0, t0 = children_cpu(), time.perf_counter()
    with open(log_path, "w") as log:
        rc = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV).returncode
    return time.perf_counter() - t0, children_cpu() - c0, rc


def score(flags, truth, auto):
    """Score a (Nt, Nb, Nf, Np) flag cube against the truth mask.

    Recall, false-flag and flagged fractions for all baselines, cross-correlations and
    autocorrelations (``auto``: (Nb,) bool).
    """
    out = {}
    for name, sel in (("all", slice(None)), ("cross", ~auto), ("auto", auto)):
        f = flags[:, sel]
        t = truth[:, sel]
        out[name] = {"recall": float(f[t].mean()) if t.any() else None,
                     "false_flag_fraction": float(f[~t].mean()),
                     "flagged_fraction": float(f.mean())}
    return out


def agreement(a, b):
    """Agreement of two flag cubes: equal fraction, Jaccard index, fractions flagged by one only."""
    inter = np.count_nonzero(a & b)
    union = np.count_nonzero(a | b)
    return {"equal_fraction": float(np.count_nonzero(a == b) / a.size),
            "jaccard": float(inter / union) if union else 1.0,
            "only_dsacont_fraction": float(np.count_nonzero(a & ~b) / a.size),
            "only_aoflagger_fraction": float(np.count_nonzero(b & ~a) / a.size)}


def ms_flags_cube(ms, truth_freq, ant_index, times_jd):
    """FLAG of an MS as a (time, baseline, freq ascending, pol) cube in the truth's order."""
    # python-casacore only here, when an MS is read back (never next to casatools: those run in
    # subprocesses)
    from casacore.tables import table

    nt, nb, nf = len(times_jd), len(ant_index), len(truth_freq)
    t_mjd_s = (np.asarray(times_jd) - 2400000.5) * 86400.0
    with table(str(Path(ms) / "SPECTRAL_WINDOW"), ack=False) as spw:
        chan_freq = [spw.getcell("CHAN_FREQ", i) for i in range(spw.nrows())]
    with table(str(Path(ms) / "DATA_DESCRIPTION"), ack=False) as dd:
        dd_spw = dd.getcol("SPECTRAL_WINDOW_ID")
    cube = None
    with table(str(ms), ack=False) as tb:
        ddid = tb.getcol("DATA_DESC_ID")
        for d in np.unique(ddid):
            sub = tb.query(f"DATA_DESC_ID=={int(d)}")
            flag = sub.getcol("FLAG")  # (nrow, nchan, ncorr)
            tt = sub.getcol("TIME")
            a1, a2 = sub.getcol("ANTENNA1"), sub.getcol("ANTENNA2")
            sub.close()
            if cube is None:
                cube = np.zeros((nt, nb, nf, flag.shape[2]), dtype=bool)
            ti = np.abs(tt[:, None] - t_mjd_s[None, :]).argmin(axis=1)
            bi = np.array([ant_index[(int(x), int(y))] for x, y in zip(a1, a2)])
            ci = np.abs(np.asarray(chan_freq[int(dd_spw[d])])[:, None] - truth_freq[None, :]).argmin(axis=1)
            cube[ti[:, None], bi[:, None], ci[None, :], :] = flag
    return cube


_MAKE_MS_PYUVDATA = """
import sys, numpy as np
from pyuvdata import UVData
out, paths = sys.argv[1], sys.argv[2:]
uvs = []
for p in paths:
    uv = UVData(); uv.read(p, file_type="uvh5", run_check=False)
    uv.uvw_array = uv.uvw_array.astype(np.float64); uvs.append(uv)
uv = uvs[0]; uv.fast_concat(uvs[1:], axis="freq", inplace=True, run_check=False)
uv.reorder_freqs(channel_order="freq", run_check=False)
uv.write_ms(out, clobber=True, run_check=False, force_phase=True)
"""

_MAKE_MS_DSACONT = """
import sys
from dsacont import convert_group
convert_group(sys.argv[2:], sys.argv[1], flag=False, progress=False)
"""


def main(argv=None):
    """Run the benchmark; print (and with --out write) the JSON. Returns 0."""
    ap = argparse.ArgumentParser(description="RFI flagging benchmark: dsacont vs AOFlagger on one group.",
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    ap.add_argument("--group", default="/tmp/shared-full", help="directory with one simulated group + truth")
    ap.add_argument("--work", default="/tmp/flag/bench", help="scratch directory for the Measurement Sets and logs")
    ap.add_argument("--out", default=None, help="also write the JSON here")
    ap.add_argument("--skip-dataset", action="store_true", help="skip flag_dataset and the in-memory kernels")
    ap.add_argument("--skip-ms", action="store_true", help="skip the Measurement Set runs (dsacont flag MS, AOFlagger)")
    ap.add_argument("--keep", action="store_true", help="keep the MS copies")
    a = ap.parse_args(argv)

    work = Path(a.work)
    work.mkdir(parents=True, exist_ok=True)
    paths = sorted(p for p in glob.glob(os.path.join(a.group, "*_sb??.hdf5")))
    truth = load_truth(a.group, paths[0])
    tmask = np.asarray(truth["rfi_mask"])
    auto = np.asarray(truth["ant1"]) == np.asarray(truth["ant2"])
    nvis = int(tmask.size)
    res = {"group": a.group, "shape_time_baseline_freq_pol": list(tmask.shape), "n_visibilities": nvis,
           "rfi_fraction_truth": float(tmask.mean()), "strategy": load_strategy().to_dict(),
           "machine": {"cpus": os.cpu_count(), "loadavg_at_start": os.getloadavg()}}

    # warm-up: numba compiles (or loads its cache) here, not inside a timed section
    rng = np.random.default_rng(0)
    warm = np.abs(rng.standard_normal((24, 16, 64, 2))).astype(np.float32) + 1
    before_kernel = _reference_kernel(work)
    flag_block(warm, None, np.arange(16) == 0, None)
    with _kernel(before_kernel):
        flag_block(warm, None, np.arange(16) == 0, None)

    if not a.skip_dataset:
        ds = open_group(paths)
        flags = None
        for which in ("after", "before"):
            fl = flag_dataset(ds)
            ctx = _kernel(before_kernel) if which == "before" else _kernel(_blocks.flag_block_kernel)
            with ctx:
                c0, t0 = time.process_time(), time.perf_counter()
                with dask.config.set(scheduler="synchronous"):
                    fv = fl.values
                wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            key = "dsacont_dataset" if which == "after" else "dsacont_dataset_before"
            res[key] = {
                "what": f"flag_dataset(open_group(paths)).compute(), synchronous scheduler (1 core), "
                        f"HDF5 reads included; kernels {which} the speed-up",
                "wall_s": wall, "cpu_s": cpu, "vis_per_s_wall": nvis / wall, "vis_per_s_per_core": nvis / cpu,
                "quality": score(fv, tmask, auto)}
            print(json.dumps(res[key]), file=sys.stderr)
            if which == "after":
                flags = fv
            else:
                res[key]["identical_to_after"] = bool((fv == flags).all())
                del fv
        # kernels alone, amplitudes already in memory, one thread; after and before interleaved
        with dask.config.set(scheduler="threads", num_workers=2):
            amp = np.abs(ds.vis.values)
        runs = {"after": [], "before": []}
        for rep in range(2):
            for which in ("after", "before"):
                ctx = _kernel(before_kernel) if which == "before" else _kernel(_blocks.flag_block_kernel)
                with ctx:
                    c0, t0 = time.process_time(), time.perf_counter()
                    kf = flag_arrays(amp, None, auto, None, n_threads=1)
                    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
                runs[which].append((cpu, wall))
                if rep == 0 and which == "after":
                    kflags = kf
                elif rep == 0:
                    same_before = bool((kf == kflags).all())
                del kf
        for which in ("after", "before"):
            cpu, wall = min(runs[which])
            key = "dsacont_kernels" if which == "after" else "dsacont_kernels_before"
            res[key] = {"what": f"flag_arrays on in-memory |V| (no I/O), 1 thread, kernels {which} the speed-up "
                                f"(best of 2, interleaved)",
                        "wall_s": wall, "cpu_s": cpu, "vis_per_s_per_core": nvis / cpu,
                        "cpu_s_runs": [r[0] for r in runs[which]]}
        res["dsacont_kernels"]["identical_to_dataset_flags"] = bool((kflags == flags).all())
        res["dsacont_kernels_before"]["identical_to_after"] = same_before
        res["kernel_speedup_per_core"] = res["dsacont_kernels_before"]["cpu_s"] / res["dsacont_kernels"]["cpu_s"]
        # both cores
        c0, t0 = time.process_time(), time.perf_counter()
        flag_arrays(amp, None, auto, None, n_threads=2)
        wall = time.perf_counter() - t0
        res["dsacont_kernels"]["wall_s_2_threads"] = wall
        res["dsacont_kernels"]["vis_per_s_wall_2_threads"] = nvis / wall
        del amp, kflags, ds, fl
        print(json.dumps(res["dsacont_kernels"]), file=sys.stderr)
        print(json.dumps(res["dsacont_kernels_before"]), file=sys.stderr)
    else:
        flags = None

    if not a.skip_ms:
        base = work / "bench.ms"
        if not base.exists():
            t0 = time.perf_counter()
            wall, cpu, rc = run_child([sys.executable, "-c", _MAKE_MS_DSACONT, str(base), *paths], work / "convert.log")
            maker = "dsacont.convert_group(flag=False)"
            if rc != 0 or not base.exists():
                shutil.rmtree(base, ignore_errors=True)
                wall, cpu, rc = run_child([sys.executable, "-c", _MAKE_MS_PYUVDATA, str(base), *paths],
                                          work / "write_ms.log")
                maker = "pyuvdata write_ms (dsacont convert failed, see convert.log)"
                if rc != 0:
                    raise SystemExit("could not make the MS")
            (work / "maker.txt").write_text(maker)
            res["ms_made_by"] = {"maker": maker, "wall_s": wall}
        else:
            res["ms_made_by"] = {"maker": (work / "maker.txt").read_text() if (work / "maker.txt").exists() else "?",
                                 "reused": True}
        ms_d, ms_a = work / "dsacont.ms", work / "aoflagger.ms"
        for dst in (ms_d, ms_a):
            shutil.rmtree(dst, ignore_errors=True)
            shutil.copytree(base, dst)
        wall, cpu, rc = run_child([sys.executable, "-m", "dsacont.cli", "flag", str(ms_d), "--threads", "1",
                                   "--summary-json", str(work / "dsacont_summary.json")], work / "dsacont_flag.log")
        res["dsacont_ms"] = {"what": "dsacont flag MS --threads 1 (own process: MS read, kernels, FLAG write)",
                             "returncode": rc, "wall_s": wall, "cpu_s": cpu,
                             "vis_per_s_wall": nvis / wall, "vis_per_s_per_core": nvis / cpu}
        print(json.dumps(res["dsacont_ms"]), file=sys.stderr)
        aov = subprocess.run(["aoflagger", "-v"], capture_output=True, text=True).stdout.splitlines()[0]
        wall, cpu, rc = run_child(["aoflagger", "-j", "1", str(ms_a)], work / "aoflagger.log")
        res["aoflagger"] = {"what": f"{aov}: aoflagger -j 1 MS (default strategy; own process)",
                            "returncode": rc, "wall_s": wall, "cpu_s": cpu,
                            "vis_per_s_wall": nvis / wall, "vis_per_s_per_core": nvis / cpu}
        print(json.dumps(res["aoflagger"]), file=sys.stderr)
        ant_index = {(int(x), int(y)): i for i, (x, y) in enumerate(zip(truth["ant1"], truth["ant2"]))}
        tf = np.asarray(truth["freq_hz"])
        fd = ms_flags_cube(ms_d, tf, ant_index, truth["time_jd"])
        fa = ms_flags_cube(ms_a, tf, ant_index, truth["time_jd"])
        res["dsacont_ms"]["quality"] = score(fd, tmask, auto)
        res["aoflagger"]["quality"] = score(fa, tmask, auto)
        res["agreement_dsacont_ms_vs_aoflagger"] = agreement(fd, fa)
        if flags is not None:
            res["agreement_dsacont_dataset_vs_ms"] = agreement(flags, fd)
        res["throughput_ratio_per_core_dsacont_ms_over_aoflagger"] = (
            res["dsacont_ms"]["vis_per_s_per_core"] / res["aoflagger"]["vis_per_s_per_core"])
        if not a.keep:
            for dst in (ms_d, ms_a):
                shutil.rmtree(dst, ignore_errors=True)
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
