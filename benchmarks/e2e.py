"""Benchmark: the streaming path end to end, wall time per stage against real time.

Usage: python benchmarks/e2e.py [--preset full] [--groups 12] [--max-inflight 2] [--imager auto]
       [--option KEY=VALUE ...] [--root bench-output/e2e] [--sky-store STATE/sky_model.sqlite3]

Runs :func:`dsacont.demo.run_demo` (simulate the groups centred on the 0834+555 transit, replay
them into the incoming directory, ``dsacont stream`` processes them: convert+flag, calibrate,
image, mosaic) and reports the wall time of every stage. A full 60-minute run is 12 groups
(~27 GB of input, ~27 GB of Measurement Sets); when fewer groups are run, the 12-group time is
extrapolated as 12 x (mean per-group convert + apply + image) + one calibration solve (one
calibrator transit per hour) + the mosaic time scaled to 12 tiles, which the JSON states; with 12
groups the hour is measured whole. Goal: <= 30 min of wall time for 60 min of data on 2 cores,
peak RSS <= 8 GB with two groups in flight.

Also measured: the peak resident memory of the whole process tree (this process, the Dask
workers, CASA and WSClean), sampled every second, and the per-tile figures the issue's goal names
(noise against the radiometer equation on the transit tile and away from it), with the mosaic's
0834+555 against the simulator's truth (from the demo's summary). The archive is hard-linked into
the incoming directory (``--replay-mode link``), so a full-size hour needs ~27 GB of input plus
~18 GB of Measurement Sets, not twice the input.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time

CADENCE_S = 24 * 12.884902


def _top(sizes, n: int = 5) -> list:
    """The ``n`` largest (bytes, name) as [name, GB]."""
    return [(name, round(v / 2**30, 2)) for v, name in sorted(sizes, reverse=True)[:n]]


class PeakRSS:
    """Sample the memory of this process and all its descendants every ``every_s``.

    Two sums: RSS (each process's resident pages, so pages that forked processes share, e.g.
    BANE's workers forked from a Dask worker, are counted once per process) and PSS (each shared
    page divided among the processes that share it: the memory the tree really holds, Linux
    ``smaps``). With the peak of each, its time (s from the start) and the largest processes at
    that moment (name, GB).
    """

    def __init__(self, every_s: float = 1.0):
        import psutil

        self._psutil, self.every_s = psutil, every_s
        self.peak_total = self.peak_process = self.peak_pss = 0
        self.peak_pss_at_s, self.peak_pss_top = None, []
        self.peak_rss_at_s, self.peak_rss_top = None, []
        self._t0 = time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="peak-rss", daemon=True)

    def _run(self):
        me = self._psutil.Process()
        while not self._stop.is_set():
            rss, pss = [], []
            for p in [me, *me.children(recursive=True)]:
                try:
                    full, name = p.memory_full_info(), p.name()
                    rss.append((full.rss, name))
                    pss.append((getattr(full, "pss", full.rss), name))
                except (self._psutil.NoSuchProcess, self._psutil.AccessDenied):
                    pass
            now = round(time.perf_counter() - self._t0, 1)
            total_rss = sum(v for v, _ in rss)
            if total_rss > self.peak_total:
                self.peak_total, self.peak_rss_at_s, self.peak_rss_top = total_rss, now, _top(rss)
            self.peak_process = max(self.peak_process, max((v for v, _ in rss), default=0))
            total_pss = sum(v for v, _ in pss)
            if total_pss > self.peak_pss:
                self.peak_pss, self.peak_pss_at_s, self.peak_pss_top = total_pss, now, _top(pss)
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def tile_figures(root) -> list[dict]:
    """Per tile (products database): mid time, noise / radiometer, stage times, and whether it is the transit's."""
    from dsacont.config import get_paths
    from dsacont.demo import demo_window
    from dsacont.service.products import Products

    products = Products(get_paths(root=root).products_db)
    _, transit = demo_window(1)
    ms_qa = {m["path"]: m.get("qa") or {} for m in products.list_ms()}
    catalogue_s = {c["image_id"]: (c.get("qa") or {}).get("catalogue_s") for c in products.list_catalogues()
                   if c.get("image_id") is not None}
    rows = []
    for im in products.list_images():
        qa = im.get("qa") or {}
        row = {"start": (im.get("start_time") or "")[:19], "minutes_from_transit": round(((im.get("mid_mjd") or 0.0)
               - transit.mjd) * 1440.0, 1), "noise_mjy": round(1e3 * qa.get("noise_jy", float("nan")), 4),
               "noise_vs_radiometer": qa.get("noise_ratio"), "image_s": qa.get("image_s"),
               "imager": qa.get("imager"), "catalogue_s": catalogue_s.get(im["id"])}
        if qa.get("flattened_own"):  # imaged a second time for bright sources the strip model lacked
            row["imaged_again_for"] = qa["flattened_own"]
            row["first_pass_s"] = qa.get("first_pass_s")
        stem = str(im["path"]).removesuffix(".fits").rsplit(".", 1)[0]  # <name>.pbcor.fits -> <name>
        qa_json = (im.get("files") or {}).get("qa_json") or stem + ".qa.json"
        if os.path.exists(qa_json):  # the imaging step's own breakdown (wsclean_s, flatten_s, pb_s, ...)
            with open(qa_json) as fh:
                row["image_timing_s"] = {k: round(v, 1) for k, v in (json.load(fh).get("timing") or {}).items()}
        mq = ms_qa.get(im.get("ms_path"), {})
        row.update({k: mq[k] for k in ("convert_s", "solve_s", "field_solve_s", "apply_s", "field_image_s") if k in mq})
        rows.append(row)
    return rows


#: disk a group takes, GB: its MS (kept to the end of the run) and its 16 simulated files
DISK_PER_GROUP_GB = {"full": {"ms": 2.8, "archive": 2.3}, "small": {"ms": 0.05, "archive": 0.03}}


def mosaic_catalogue_s(root) -> float | None:
    """Seconds the mosaic's source catalogue took (the on-complete hook, after the mosaic), or None."""
    from dsacont.config import get_paths
    from dsacont.service.products import Products

    products = Products(get_paths(root=root).products_db)
    mosaics = {m["path"] for m in products.list_mosaics()}
    for c in products.list_catalogues():
        if c.get("image_id") is None and any(str(c["path"]).startswith(m.removesuffix(".fits")) for m in mosaics):
            return (c.get("qa") or {}).get("catalogue_s")
    return None


#: the stage times of a tile that occupy a worker slot (the image includes its first pass, if any)
WORK_KEYS = ("convert_s", "solve_s", "field_solve_s", "apply_s", "field_image_s", "image_s", "catalogue_s")


def disk_shortfall(root, preset: str, groups: int) -> str | None:
    """Why the run would fill the disk (a sentence), or None. A full-size hour keeps ~34 GB of
    MSs until it ends and needs ~28 GB of simulated files unless ``<root>/archive`` has them."""
    per = DISK_PER_GROUP_GB[preset]
    need = groups * per["ms"]
    if not os.path.isdir(os.path.join(root, "archive")):
        need += groups * per["archive"]
    probe = os.path.abspath(root)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    free = shutil.disk_usage(probe).free / 1e9
    if free < 1.1 * need + 2.0:
        return (f"{probe} has {free:.1f} GB free; {groups} {preset}-size group(s) need about {need:.1f} GB "
                f"(MSs {groups * per['ms']:.1f} GB kept to the end of the run, plus the simulated files "
                f"unless {root}/archive holds them): free some space or choose another --root")
    return None


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--preset", default="full", choices=["small", "full"])
    ap.add_argument("--groups", type=int, default=3)
    ap.add_argument("--root", default="bench-output/e2e")
    ap.add_argument("--max-inflight", type=int, default=1)
    ap.add_argument("--imager", default="auto", help="imaging.imager: auto (WSClean when installed), wsclean, tclean")
    ap.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                    help="a pipeline option, as dsacont stream --option (repeatable)")
    ap.add_argument("--replay-mode", default="link", choices=["copy", "link"])
    ap.add_argument("--keep", action="store_true", help="keep the run directory afterwards")
    ap.add_argument("--sky-store", help="start from this strip sky model (sky_model.sqlite3 of an earlier run "
                    "over the same sky, e.g. <root>/state of a --keep run): the strip's second day")
    args = ap.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    short = disk_shortfall(args.root, args.preset, args.groups)
    if short:
        print(f"e2e: {short}", file=sys.stderr)
        return 2
    from dsacont.demo import run_demo

    pipeline_options = {"imaging.imager": args.imager}
    for item in args.option:
        key, _, value = item.partition("=")
        pipeline_options[key.strip()] = value.strip()
    t0 = time.perf_counter()
    with PeakRSS() as rss:
        s = run_demo(args.root, preset=args.preset, n_groups=args.groups, max_inflight=args.max_inflight,
                     pipeline_options=pipeline_options, replay_mode=args.replay_mode,
                     sky_store=os.path.abspath(args.sky_store) if args.sky_store else None)
    wall = time.perf_counter() - t0
    tiles = tile_figures(args.root)
    transit_tile = min(tiles, key=lambda r: abs(r["minutes_from_transit"])) if tiles else None
    away = [r["noise_vs_radiometer"] for r in tiles if r is not transit_tile and r["noise_vs_radiometer"]]
    per_group = {k: v["mean"] for k, v in s.get("stage_wall_s", {}).items() if k != "mosaic"}
    mosaic_s = s.get("stage_wall_s", {}).get("mosaic", {}).get("total", 0.0)
    processing = s["stream_s"]
    mosaic_cat_s = mosaic_catalogue_s(args.root)
    # the slot-seconds of work the groups and the hour's mosaic took, against what the slots had:
    # what is not work is waiting (for calibration, for the next group, for the mosaic's tail)
    work = sum(float(r.get(k) or 0.0) for r in tiles for k in WORK_KEYS) + mosaic_s + (mosaic_cat_s or 0.0)
    # a 60-minute run: 12 x the per-group stages (convert+flag, apply, image) + the calibration
    # solve once (one calibrator transit per hour) + one 12-tile mosaic (its time scales with
    # the mosaic area; the measured N-tile time is scaled by 12/N), one group in flight
    solve_s = s.get("stage_wall_s", {}).get("solve", {}).get("total", 0.0)
    per_group_s = sum(per_group.get(k, 0.0) for k in ("convert", "apply", "image"))
    est12 = 12 * per_group_s + solve_s + mosaic_s * 12 / args.groups
    out = {
        "preset": args.preset,
        "groups": args.groups,
        "cores": os.cpu_count(),
        "real_time_s": args.groups * CADENCE_S,
        "simulate_s": s["simulate_s"],
        "stream_wall_s": processing,
        "stream_vs_real_time": processing / (args.groups * CADENCE_S),
        "per_group_stage_mean_s": per_group,
        "mosaic_s": mosaic_s,
        "mosaic_catalogue_s": mosaic_cat_s,
        "work_slot_s": round(work, 1),
        "slots_busy_fraction": round(work / (args.max_inflight * processing), 3) if processing else None,
        "calibration_of_groups": s.get("calibration_of_groups"),
        "field_gain_sky_models": s.get("field_gain_sky_models"),
        "extrapolated_60min_wall_s": est12,
        "extrapolation": "12 x mean(convert + apply + image) + one solve + mosaic x 12/N, one group in flight",
        "goal_60min_wall_s": 1800,
        "measured_60min": args.groups >= 12,
        "max_inflight": args.max_inflight,
        "sky_store": args.sky_store,
        "pipeline_options": pipeline_options,
        "peak_rss_gb_whole_tree": round(rss.peak_total / 2**30, 2),
        "peak_rss_gb_largest_process": round(rss.peak_process / 2**30, 2),
        "peak_rss_at_s": rss.peak_rss_at_s,
        "peak_rss_largest_processes_gb": rss.peak_rss_top,
        "peak_pss_gb_whole_tree": round(rss.peak_pss / 2**30, 2),
        "peak_pss_at_s": rss.peak_pss_at_s,
        "peak_pss_largest_processes_gb": rss.peak_pss_top,
        "goal_peak_rss_gb": 8.0,
        "tiles": tiles,
        "tiles_imaged_twice": sum("imaged_again_for" in r for r in tiles),
        "transit_tile_noise_vs_radiometer": transit_tile and transit_tile["noise_vs_radiometer"],
        "other_tiles_noise_vs_radiometer_max": max(away) if away else None,
        "other_tiles_noise_vs_radiometer_median": sorted(away)[len(away) // 2] if away else None,
        "goal_noise_vs_radiometer": {"transit_tile": 1.3, "other_tiles": 1.1},
        "groups_completed": s["groups_completed"],
        "groups_failed": s["groups_failed"],
        "calibrator": s.get("calibrator"),
        "image_noise_mjy": s.get("image_noise_mjy"),
        "total_wall_s": wall,
    }
    text = json.dumps(out, indent=1, default=str)
    # CASA's C++ layer writes to the same stdout: the JSON is also kept in <root>/e2e.json
    with open(os.path.join(args.root, "e2e.json"), "w") as fh:
        fh.write(text)
    print(text)
    if not args.keep:
        for sub in ("stage", "incoming"):
            shutil.rmtree(os.path.join(args.root, sub), ignore_errors=True)
    return 0 if s["groups_completed"] == args.groups else 1


if __name__ == "__main__":
    sys.exit(main())
