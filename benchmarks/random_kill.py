"""Random SIGKILLs over a multi-group replay in random order: nothing lost, nothing doubled.

An archive of N groups (shifted copies of one simulated small-preset group) is copied into the
incoming directory file by file in random order (plain copies, no ``_incomplete`` rename), while
the real service (``python -m dsacont.cli stream``, real Dask LocalCluster, the light real
processor of ``tests/stream_processors.py``) is killed with SIGKILL at random moments and started
again, at least ``--kills`` times; then it runs to the end. Printed (one JSON document): groups,
files, kills survived, claims, reclaims, completions per group, duplicate product rows or files,
half-written products, quarantined files, wall time.

    python benchmarks/random_kill.py [GROUP_DIR] [--groups 12] [--kills 50] [--seed 1] [--max-attempts 1000]

GROUP_DIR: a directory with one 16-subband group (default: a small-preset group simulated into
the work directory). Peer: none (no other streaming pipeline on this machine to kill); the
figure to compare is the old service's on the same replay (``git stash`` the fix), which fails
groups as incomplete when files arrive out of order.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import random
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("group_dir", nargs="?", help="a directory with one 16-subband group (default: simulate one)")
    ap.add_argument("--groups", type=int, default=12, help="groups in the replay (default 12)")
    ap.add_argument("--kills", type=int, default=50, help="SIGKILLs of the service, at least (default 50)")
    ap.add_argument("--max-delay", type=float, default=10.0, help="kill between 0.3 s and this many s after each "
                    "start (default 10; the service needs a few s to start its cluster)")
    ap.add_argument("--interval", type=float, default=0.2, help="seconds between copied files (default 0.2)")
    ap.add_argument("--work-s", type=float, default=4.0, help="seconds of stand-in work per group, so that kills "
                    "land while groups are in flight (default 4)")
    ap.add_argument("--seed", type=int, default=1, help="random seed (default 1)")
    ap.add_argument("--max-attempts", type=int, default=1000, help="the service's --max-attempts (default 1000: "
                    "each kill with a group in flight uses one of its attempts)")
    ap.add_argument("--workdir", help="work directory (default: a new temporary one, removed at the end)")
    args = ap.parse_args(argv)

    from streamtools import make_archive, run_service, start_service

    from dsacont.config import get_paths
    from dsacont.service.queue import IngestQueue

    rng = random.Random(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="dsacont_random_kill_"))
    work.mkdir(parents=True, exist_ok=True)
    if args.group_dir:
        files = sorted(glob.glob(os.path.join(args.group_dir, "*_sb??.hdf5")))
    else:
        from dsacont import simulate

        files = sorted(map(str, simulate(work / "sim", "2025-10-29T13:54:51", 5, preset="small", seed=1)))
    assert len(files) == 16, f"need one 16-subband group, found {len(files)} files"
    stamps = make_archive(files, work / "archive", range(args.groups))
    root = work / "run"
    paths = get_paths(root=root).ensure()
    order = sorted((work / "archive").iterdir())
    rng.shuffle(order)

    done = threading.Event()

    def copier():
        for f in order:
            shutil.copyfile(f, paths.incoming / f.name)
            time.sleep(args.interval)
        done.set()

    t_start = time.time()
    threading.Thread(target=copier, daemon=True).start()
    # every kill of the service while a group is in flight counts as one of that group's attempts
    # (the queue cannot tell a service killed from outside from one the group crashed); with 50
    # kills over a few groups that is not the question here, so the attempts are many
    svc_args = ("--incomplete-timeout", "60", "--reprocess-late", "--max-attempts", str(args.max_attempts),
                "--option", f"sleep_s={args.work_s}")
    kills = in_flight = 0
    while kills < args.kills:
        svc = start_service(root, *svc_args, log_name="service.log")
        time.sleep(rng.uniform(0.3, args.max_delay))
        if svc.poll() is None:
            os.kill(svc.pid, signal.SIGKILL)
            kills += 1
        svc.wait()
        try:
            with IngestQueue(paths.queue_db) as q:
                in_flight += q.counts()["in_progress"] > 0
        except Exception:  # noqa: BLE001 - killed before the queue existed
            pass
    done.wait()
    rc, log = run_service(root, *svc_args, "--idle-exit", "5", timeout=900)
    wall = time.time() - t_start

    q = IngestQueue(paths.queue_db)
    try:
        groups = {g.timestamp: g for g in q.groups()}
        completed = Counter(q.get(e["group_id"]).timestamp for e in q.events(event="completed"))
        rebuilds = Counter(q.get(e["group_id"]).timestamp for e in q.events(event="rebuild"))
        reopened = len(q.events(event="reopened"))
        reclaims = len(q.events(event="reclaimed"))
        quarantined = len(q.files("quarantined"))
        late = len(q.late_files())
    finally:
        q.close()
    con = sqlite3.connect(paths.products_db)
    try:
        rows = [r[0] for r in con.execute("SELECT path FROM images")]
    finally:
        con.close()
    on_disk = sorted(p.name for p in paths.images.iterdir())
    half = 0
    for p in paths.images.iterdir():
        try:
            prod = json.loads(p.read_text())
            half += prod["timestamp"] != p.stem
        except ValueError:
            half += 1
    once = all(completed[t] == 1 + rebuilds[t] for t in stamps) and sorted(groups) == sorted(stamps)
    # more than one product row or file for a group, or one for no group
    per_row = Counter(Path(r).stem for r in rows)
    per_file = Counter(Path(n).stem for n in on_disk)
    duplicates = sum(c - 1 for c in (*per_row.values(), *per_file.values()) if c > 1) + sum(
        1 for s in (*per_row, *per_file) if s not in stamps)
    ok = rc == 0 and once and duplicates == 0 and half == 0 and all(g.state == "completed" for g in groups.values())
    result = {
        "groups": len(stamps),
        "files": len(order),
        "kills": kills,
        "kills_with_a_group_in_flight": in_flight,
        # every kill was followed by a restart that carried on; all count if the end state is right
        "kills_survived": kills if ok else 0,
        "final_exit_code": rc,
        "groups_completed": sum(g.state == "completed" for g in groups.values()),
        "groups_complete_16_subbands": sum(g.state == "completed" and not g.missing for g in groups.values()),
        "groups_other": {t: (g.state, g.error) for t, g in groups.items() if g.state != "completed"},
        # completed once (plus once per rebuild after late subbands: --reprocess-late)
        "completed_once": once,
        "rebuilds": sum(rebuilds.values()),
        "reopened": reopened,
        "claims": sum(g.claims for g in groups.values()),
        "max_attempts_used": max((g.attempts for g in groups.values()), default=0),
        "reclaims": reclaims,
        "duplicates_found": duplicates,
        "half_written_products": half,
        "quarantined_files": quarantined,
        "late_files_unused": late,
        "wall_s": round(wall, 1),
        "peer": None,
    }
    print(json.dumps(result, indent=1))
    if not args.workdir:
        shutil.rmtree(work, ignore_errors=True)
    return result


if __name__ == "__main__":
    main()
