"""The streaming service's own overhead (not the pipeline stages): prints one JSON document.

* ``validate``: the watcher's per-file check (:func:`dsacont.service.watcher.validate_subband_file`:
  header + every visibility row read + NaN count) on a group directory (full size if given).
* ``queue``: SQLite queue throughput: files recorded, groups finalised, claim+complete per second.
* ``service``: one real ``dsacont stream --once`` process on N replayed copies of a group with a
  no-op processor: start-up (imports + LocalCluster) and per-group overhead (claim -> worker ->
  complete), i.e. what the service adds on top of the stages.

    python benchmarks/stream.py [GROUP_DIR] [--groups 6]

GROUP_DIR: a directory with one 16-subband group (default: /tmp/shared-full if present for the
validation figure; the service run hard-links copies of it, so it costs no disk).
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def noop(group, context):
    """Do nothing: a processor that measures the service's own overhead."""
    return {"timestamp": group.timestamp}


def bench_validate(files):
    from dsacont.service.watcher import validate_subband_file

    t = []
    for f in files:
        t0 = time.perf_counter()
        validate_subband_file(f)
        t.append(time.perf_counter() - t0)
    size = sum(os.path.getsize(f) for f in files)
    return {"files": len(files), "mb_per_file": round(size / len(files) / 1e6, 1),
            "s_per_file_mean": round(sum(t) / len(t), 3), "s_per_group": round(sum(t), 2),
            "mb_per_s": round(size / 1e6 / sum(t), 1)}


def bench_queue(tmp, n_groups=300):
    from dsacont.service.queue import IngestQueue, WorkerId

    q = IngestQueue(Path(tmp) / "q.sqlite3")
    t0 = time.perf_counter()
    for g in range(n_groups):
        for sb in range(16):
            t = 1761745971.0 + 309 * g + sb
            q.add_file(f"/in/{g}_{sb}.hdf5", t, sb)
    t_add = time.perf_counter() - t0
    t0 = time.perf_counter()
    q.finalize_groups()
    t_fin = time.perf_counter() - t0
    me = WorkerId.this_process("bench")
    t0 = time.perf_counter()
    n = 0
    while (g := q.claim(me)) is not None:
        q.complete(g, {})
        n += 1
    t_claim = time.perf_counter() - t0
    return {"groups": n_groups, "files_recorded_per_s": round(16 * n_groups / t_add),
            "finalise_s": round(t_fin, 3), "claim_complete_per_s": round(n / t_claim, 1)}


def bench_service(group_files, n_groups, tmp):
    from streamtools import make_archive

    from dsacont.service.replay import replay

    root = Path(tmp) / "run"
    make_archive(group_files, Path(tmp) / "archive", range(n_groups))
    replay(Path(tmp) / "archive", root / "incoming", mode="link")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")]))
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dsacont.cli", "stream", "--root", str(root), "--processor",
                        "stream:noop", "--on-complete", "", "--once", "--poll", "0.2", "--min-free-gb", "0"],
                       capture_output=True, text=True, env=env)
    wall = time.perf_counter() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    from dsacont.service.queue import IngestQueue

    q = IngestQueue(root / "state" / "ingest.sqlite3")
    gs = q.groups()
    first_claim = min(e["t"] for e in q.events(event="claimed"))
    per_group = [g.finished - g.started for g in gs]
    return {"groups": len(gs), "completed": sum(g.state == "completed" for g in gs), "process_wall_s": round(wall, 1),
            "startup_to_first_claim_s": round(first_claim - (time.time() - wall), 1),
            "claim_to_complete_s_mean": round(sum(per_group) / len(per_group), 3),
            "note": "no-op processor; validation of every file included in start-up"}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("group_dir", nargs="?", default="/tmp/shared-full")
    ap.add_argument("--groups", type=int, default=6)
    args = ap.parse_args()
    files = sorted(glob.glob(os.path.join(args.group_dir, "*_sb??.hdf5")))
    if len(files) != 16:
        raise SystemExit(f"{args.group_dir}: expected 16 subband files, found {len(files)}")
    out = {"group_dir": args.group_dir}
    out["validate"] = bench_validate(files)
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR", "/tmp")) as tmp:
        out["queue"] = bench_queue(tmp)
        out["service"] = bench_service(files, args.groups, tmp)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
