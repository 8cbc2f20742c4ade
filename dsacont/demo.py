"""``dsacont demo``: the operators' acceptance test, on simulated data, on this machine.

1. Simulate the 60 minutes around the transit of 0834+555 on 2025-10-29 (13:55:26 UTC): 12
   consecutive 5-minute groups centred on the transit, small preset by default, into
   ``<root>/archive`` (kept between runs, re-simulated only when the preset/seed change).
2. Replay them into ``<root>/incoming`` in time order, as the correlator writes them
   (``_incomplete`` then rename), in a background thread.
3. Run the streaming service (:func:`dsacont.service.loop.run_service`, the same code path as
   ``dsacont stream``) on ``<root>``: it finds the groups, converts and flags them, solves the
   calibration on the calibrator transit (the groups before it wait for it), applies it, images
   every tile and builds the 60-minute mosaic when its 12 tiles are done. Nothing is hand-picked.
4. Print a summary: groups, calibration solved and how each group was calibrated, the
   calibrator's flux in the mosaic against the simulator's truth, noise, and the wall time of each
   stage; write it to ``<root>/summary.json``.

``--hours N`` runs N hours from the start of the acceptance hour instead (a mosaic per hour, the
groups after the transit calibrated around the clock: the calibrator pair transferred and a field
gain correction per group); ``--sky real|realistic`` simulates the real sky (NVSS, the VLA
calibrators, Cas A) and, with 'realistic', the realistic instrument (gains wandering by tens of
degrees over hours); ``--realistic`` (``--sky faulty``) adds the real array's faults. On the default
synthetic sky NVSS does not describe the field: the field corrections are solved against the sky
model dsacont builds from the tiles before them (:mod:`dsacont.service.sky`), and a group no tile
has covered yet gets the calibrator's gains transferred.
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import shutil
import threading
import time
from pathlib import Path

import numpy as np
from astropy import units as u
from astropy.coordinates import SkyCoord

from dsacont.calibration.registry import Registry
from dsacont.calibrators import REF_FREQ_HZ, get_calibrator, transit_time
from dsacont.config import get_paths
from dsacont.io.groups import find_groups
from dsacont.service.loop import ServiceOptions, run_service
from dsacont.service.products import Products
from dsacont.service.replay import replay
from dsacont.service.sky import SkyStore
from dsacont.simulator import load_truth, simulate
from dsacont.simulator.core import PRESETS

log = logging.getLogger(__name__)

CALIBRATOR = "0834+555"
TRANSIT_DAY = "2025-10-29T00:00:00"
N_GROUPS = 12
CADENCE_S = 24 * 12.884902


def demo_window(n_groups: int = N_GROUPS):
    """(start, transit) astropy Times: ``n_groups`` groups centred on the operators' transit."""
    cal = get_calibrator(CALIBRATOR)
    transit = transit_time(cal.ra_deg, TRANSIT_DAY, cal.dec_deg)
    return transit - (n_groups / 2) * CADENCE_S * u.s, transit


def _simulate_archive(archive: Path, preset: str, seed: int, n_groups: int, hours: int | None = None,
                      sky: str = "synthetic") -> None:
    start, _ = demo_window(n_groups if not hours else N_GROUPS)
    if hours:
        n_groups = hours * N_GROUPS
    marker = archive / "demo.json"
    want = {"preset": repr(PRESETS[preset]), "seed": seed, "n_groups": n_groups, "start": start.isot}
    sim_kw = {}
    if sky != "synthetic":
        want["sky"] = sky
        sim_kw = {"real": {"sky_model": "real"}, "realistic": {"realism": "realistic", "faults": False},
                  "faulty": {"realism": "realistic"}}[sky]
    if marker.exists() and json.loads(marker.read_text()) == want:
        groups = [g for g in find_groups(archive) if g.complete]
        if len(groups) >= n_groups:
            log.info("demo: reusing the simulated archive in %s", archive)
            return
    if archive.exists():
        shutil.rmtree(archive)
    archive.mkdir(parents=True)
    minutes = (n_groups - 0.5) * CADENCE_S / 60.0
    log.info("demo: simulating %d groups (%s preset) from %s into %s", n_groups, preset, start.isot, archive)
    simulate(archive, start, minutes, preset=preset, seed=seed, **sim_kw)
    marker.write_text(json.dumps(want))


def _calibrator_in_mosaic(mosaic: dict, archive: Path) -> dict:
    """Compare the calibrator in the mosaic's QA with the simulator's truth.

    The fitted flux and position, against the flux the simulator put on the sky (its own truth,
    primary-beam free) at the same frequency.
    """
    qa = mosaic.get("qa") or {}
    found = [c for c in qa.get("calibrators", []) if c.get("name") == CALIBRATOR]
    if not found:
        return {"name": CALIBRATOR, "error": "calibrator not measured in the mosaic QA"}
    c = found[0]
    freq = float(qa.get("freq_hz") or c.get("freq_hz") or 0.0)
    out = {"name": CALIBRATOR, "measured_jy": float(c["flux_jy"]), "catalogue_model_jy": c.get("expected_jy"),
           "offset_arcsec": c.get("offset_arcsec"), "offset_beams": c.get("offset_beams")}
    truth = load_truth(archive, sorted(glob.glob(str(archive / "*_sb00.hdf5")))[0])
    names = [str(n) for n in np.atleast_1d(truth["source_name"])]
    i = names.index(CALIBRATOR)
    if not freq:
        # the mosaic QA's expected value is the catalogue model at the image frequency: invert it
        cal = get_calibrator(CALIBRATOR)
        freq = REF_FREQ_HZ * (float(c["expected_jy"]) / cal.flux_jy) ** (1.0 / cal.spectral_index)
    ref_hz = float(np.atleast_1d(truth["source_ref_freq_hz"])[i])
    alpha = float(np.atleast_1d(truth["source_spectral_index"])[i])
    s_true = float(np.atleast_1d(truth["source_flux_jy"])[i]) * (freq / ref_hz) ** alpha
    out.update(freq_hz=freq, truth_jy=s_true, ratio=out["measured_jy"] / s_true)
    return out


def _sources_in_mosaic(mosaic: dict, products: Products, archive: Path, names=("0824+558",)) -> list[dict]:
    """Catalogued sources other than the calibrator, found in the mosaic's catalogue, against truth.

    The nearest catalogue component within half a restoring beam of the simulator's position; its
    integrated flux against the simulator's flux at the catalogue's frequency. A source the
    simulator did not put on the sky (the synthetic sky holds none of them) is left out.
    """
    from dsacont.sources import read_sources

    cats = [c for c in products.list_catalogues() if c["image_path"] == mosaic["path"]]
    truth = load_truth(archive, sorted(glob.glob(str(archive / "*_sb00.hdf5")))[0])
    tnames = [str(n) for n in np.atleast_1d(truth["source_name"])]
    out = []
    if not cats:
        return [{"name": n, "error": "the mosaic has no catalogue"} for n in names if n in tnames]
    tab = read_sources(cats[0]["path"])
    freq = float(tab.meta.get("FREQ") or REF_FREQ_HZ)
    half_beam = 0.5 * float(tab.meta.get("BMAJ", 0.02))
    for n in names:
        if n not in tnames:
            continue
        i = tnames.index(n)
        ra, dec = float(np.atleast_1d(truth["source_ra_deg"])[i]), float(np.atleast_1d(truth["source_dec_deg"])[i])
        ref_hz = np.atleast_1d(truth["source_ref_freq_hz"])  # one for all, or one per source
        s_true = float(np.atleast_1d(truth["source_flux_jy"])[i]) * (
            freq / float(ref_hz[i] if ref_hz.size > 1 else ref_hz[0])) ** float(
            np.atleast_1d(truth["source_spectral_index"])[i])
        sep = SkyCoord(np.asarray(tab["ra_deg"], float), np.asarray(tab["dec_deg"], float), unit="deg").separation(
            SkyCoord(ra, dec, unit="deg")).deg if len(tab) else np.array([])
        if not len(sep) or sep.min() > half_beam:
            out.append({"name": n, "truth_jy": s_true, "detected": False})
            continue
        j = int(np.argmin(sep))
        out.append({"name": n, "truth_jy": round(s_true, 4), "detected": True,
                    "measured_jy": round(float(tab["int_flux"][j]), 4), "ratio": round(float(tab["int_flux"][j]) / s_true, 4),
                    "offset_beams": round(float(sep[j]) / (2 * half_beam), 4), "snr": round(float(tab["snr"][j]), 1)})
    return out


def run_demo(root="demo-output", *, preset: str = "small", seed: int = 0, n_groups: int = N_GROUPS,
             hours: int | None = None, sky: str = "synthetic", scheduler: str | None = None,
             max_inflight: int = 2, fresh: bool = True, pipeline_options: dict | None = None,
             replay_mode: str = "copy", sky_store=None) -> dict:
    """Run the acceptance demo under ``root``; returns (and writes) the summary dict.

    ``hours``: instead of ``n_groups`` centred on the transit, ``hours`` x 12 groups from the start
    of the acceptance hour, a mosaic per hour. ``sky``: 'synthetic' (the acceptance sky: 0834+555
    and a synthetic population), 'real' (the real sky: NVSS, the VLA calibrators, Cas A) or
    'realistic' (the real sky and the realistic instrument: gains wandering by tens of degrees
    over hours, RFI, the real array), or 'faulty' (that and the real array's faults).
    ``pipeline_options``: the service's pipeline options (as ``dsacont stream --option KEY=VALUE``,
    e.g. ``{"imaging.imager": "auto"}``). ``replay_mode``: how the archive reaches the incoming
    directory (:func:`dsacont.service.replay.replay`: 'copy', or 'link' to spare the disk a second
    copy of a full-size hour, ~27 GB). ``sky_store``: a strip sky model to start from (the
    ``sky_model.sqlite3`` of an earlier run over the same sky), copied into the fresh state
    directory: the strip's second day, where the calibrator is solved with its field from the
    model and every tile's bright sources are known (on the same archive, each group's own
    tile of the earlier run is left out of its model, :meth:`dsacont.service.sky.SkyStore.model_near`).
    """
    t_all = time.perf_counter()
    root = Path(root).absolute()
    archive = root / "archive"
    paths = get_paths(root=root)
    t = time.perf_counter()
    _simulate_archive(archive, preset, seed, n_groups, hours, sky)
    tiles = N_GROUPS if hours else n_groups
    n_groups = hours * N_GROUPS if hours else n_groups
    t_sim = time.perf_counter() - t
    if fresh:
        for d in (paths.incoming, paths.stage, paths.state):
            shutil.rmtree(d, ignore_errors=True)
    paths.ensure()
    if sky_store is not None:
        shutil.copyfile(sky_store, paths.sky_db)

    replay_done = threading.Event()

    def _replay():
        try:
            replay(archive, paths.incoming, speed=None, mode=replay_mode)
        finally:
            replay_done.set()

    feeder = threading.Thread(target=_replay, name="replay", daemon=True)
    feeder.start()
    options = ServiceOptions(scheduler=scheduler, max_inflight=max_inflight, idle_exit_s=30.0, poll_s=1.0,
                             incomplete_timeout_s=60.0, min_free_gb=0.0,
                             processor_options={"tiles_per_mosaic": tiles, **(pipeline_options or {})})
    t = time.perf_counter()
    summary = run_service(paths, options)
    t_stream = time.perf_counter() - t
    feeder.join(timeout=5)

    products = Products(paths.products_db)
    mosaics = products.list_mosaics()
    images = products.list_images()
    registry = Registry(paths.registry_db)
    cal_tables = [r for r in registry.list(status="valid")]
    stage_times: dict[str, list] = {}
    for ms in products.list_ms():
        for k, v in (ms.get("qa") or {}).items():
            if k.endswith("_s"):
                stage_times.setdefault(k[:-2], []).append(v)
    for im in images:
        for k, v in (im.get("qa") or {}).items():
            if k in ("image_s",):
                stage_times.setdefault("image", []).append(v)
    for m in mosaics:
        v = (m.get("qa") or {}).get("mosaic_s")
        if v is not None:
            stage_times.setdefault("mosaic", []).append(v)
    out = {
        "root": str(root),
        "preset": preset,
        "groups_completed": len(summary.completed),
        "groups_failed": len(summary.failed),
        "service_exit": summary.exit_reason,
        "ms": len(products.list_ms()),
        "images": len(images),
        "mosaics": [m["path"] for m in mosaics],
        "calibration_tables": [{"kind": r.kind, "calibrator": r.calibrator, "path": r.path}
                               for r in cal_tables if r.origin != "field"],
        "field_gain_tables": sum(r.origin == "field" for r in cal_tables),
        "field_gain_sky_models": _sky_model_tally(cal_tables),
        "sky_model": SkyStore(paths.sky_db).summary() if paths.sky_db.exists() else None,
        "catalogues": len(products.list_catalogues()),
        "calibration_of_groups": _calibration_tally(images),
        "hours": _per_hour(mosaics, images),
        "image_noise_mjy": [round(1e3 * (im.get("qa") or {}).get("noise_jy", float("nan")), 3) for im in images],
        "image_noise_vs_radiometer": [round((im.get("qa") or {}).get("noise_ratio", float("nan")), 3) for im in images],
        "stage_wall_s": {k: {"total": round(float(np.sum(v)), 1), "mean": round(float(np.mean(v)), 1), "n": len(v)}
                         for k, v in stage_times.items()},
        "simulate_s": round(t_sim, 1),
        "stream_s": round(t_stream, 1),
        "wall_s": round(time.perf_counter() - t_all, 1),
    }
    if mosaics:
        _, transit = demo_window(1)
        m = min(mosaics, key=lambda r: abs((r.get("mid_mjd") or 0.0) - transit.mjd))  # the acceptance hour
        files = m.get("files") or {}
        out["mosaic_png"] = files.get("png")
        out["mosaic_noise_map"] = files.get("noise")
        out["mosaic_qa"] = m.get("qa")
        try:
            out["calibrator"] = _calibrator_in_mosaic(m, archive)
        except Exception as exc:  # noqa: BLE001
            out["calibrator"] = {"error": str(exc)}
        try:
            out["other_sources"] = _sources_in_mosaic(m, products, archive)
        except Exception as exc:  # noqa: BLE001 - a summary line, never a failed demo
            out["other_sources"] = [{"error": str(exc)}]
    (root / "summary.json").write_text(json.dumps(out, indent=1, default=str))
    return out


def _sky_model_tally(tables) -> dict:
    """Which sky model the accepted field gain corrections were solved against: ``{name: n}``."""
    out: dict[str, int] = {}
    for r in tables:
        if r.origin == "field":
            name = ((r.metrics or {}).get("sky") or {}).get("name", "?").split(" (")[0]
            out[name] = out.get(name, 0) + 1
    return out


def _calibration_tally(images) -> dict:
    """How the tiles were calibrated: ``{"B:transit G:transferred G:field": n, ...}``."""
    out: dict[str, int] = {}
    for im in images:
        key = " ".join((im.get("qa") or {}).get("calibration") or ["unknown"])
        out[key] = out.get(key, 0) + 1
    return out


def _per_hour(mosaics, images) -> list[dict]:
    """One row per mosaic (an hour): its start, tiles, median tile noise and how they were calibrated."""
    by_id = {im["id"]: im for im in images}
    rows = []
    for m in mosaics:
        tiles = [by_id[i] for i in ((m.get("params") or {}).get("images") or []) if i in by_id] or [
            im for im in images if m.get("start_mjd") is not None
            and m["start_mjd"] - 1e-4 <= (im.get("mid_mjd") or 0.0) <= m["end_mjd"] + 1e-4]
        noise = [(im.get("qa") or {}).get("noise_jy") for im in tiles]
        noise = [n for n in noise if n is not None]
        rows.append({"start": (m.get("start_time") or "")[:19], "tiles": len(tiles),
                     "median_tile_noise_mjy": round(1e3 * float(np.median(noise)), 3) if noise else None,
                     "calibration": _calibration_tally(tiles), "mosaic": m["path"]})
    return rows


def format_summary(s: dict) -> str:
    solved = ", ".join(t["kind"] + " on " + str(t["calibrator"]) for t in s["calibration_tables"])
    lines = [
        "",
        "dsacont demo: 60 minutes around the 0834+555 transit of 2025-10-29, through the streaming service",
        f"  groups completed     {s['groups_completed']} (failed {s['groups_failed']}); MS {s['ms']}, "
        f"images {s['images']}",
        f"  calibration solved   {solved or 'none'}; field gain corrections {s.get('field_gain_tables', 0)}"
        + (" (" + ", ".join(f"{n} against {k}" for k, n in s["field_gain_sky_models"].items()) + ")"
           if s.get("field_gain_sky_models") else ""),
    ]
    if s.get("sky_model"):
        sm = s["sky_model"]
        lines.append(f"  sky model of strip   {sm['sources']} sources from {sm['trusted_images']} trusted tile(s); "
                     f"{s.get('catalogues', 0)} tile catalogues")
    for how, n in (s.get("calibration_of_groups") or {}).items():
        lines.append(f"  calibrated with      {how}: {n} group(s)")
    cal = s.get("calibrator") or {}
    if "measured_jy" in cal:
        lines.append(f"  0834+555 in mosaic   {cal['measured_jy']:.3f} Jy vs truth {cal['truth_jy']:.3f} Jy "
                     f"at {cal['freq_hz'] / 1e6:.1f} MHz (ratio {cal['ratio']:.4f}), "
                     f"offset {cal['offset_arcsec']:.1f}\" ({cal['offset_beams']:.3f} beam)")
    for o in s.get("other_sources") or []:
        if o.get("detected"):
            lines.append(f"  {o['name']:<8} in mosaic   {o['measured_jy']:.3f} Jy vs truth {o['truth_jy']:.3f} Jy "
                         f"(ratio {o['ratio']:.3f}, {o['snr']:.0f} sigma, offset {o['offset_beams']:.3f} beam)")
        elif "name" in o:
            lines.append(f"  {o['name']:<8} in mosaic   not detected" + (f" ({o['error']})" if o.get("error") else ""))
    if s.get("image_noise_mjy"):
        lines.append(f"  tile noise           median {np.median(s['image_noise_mjy']):.2f} mJy/beam")
        r = [x for x in s.get("image_noise_vs_radiometer") or [] if np.isfinite(x)]
        if r:
            lines.append(f"  tile noise / radiometer equation  median {np.median(r):.2f}x ({min(r):.2f}-{max(r):.2f}x)")
    for k, v in s.get("stage_wall_s", {}).items():
        lines.append(f"  {k:<20} {v['total']:7.1f} s total, {v['mean']:6.1f} s per group (n={v['n']})")
    lines += [
        f"  simulate {s['simulate_s']} s, streaming {s['stream_s']} s, total wall {s['wall_s']} s",
        f"  mosaic               {', '.join(s['mosaics']) or 'NONE'}",
        *[f"  hour from {h['start']}  {h['tiles']} tiles, median tile noise {h['median_tile_noise_mjy']} mJy/beam"
          for h in (s.get("hours") or []) if len(s.get("hours") or []) > 1],
        f"  mosaic PNG           {s.get('mosaic_png')}",
        f"  products database    {Path(s['root']) / 'state' / 'products.sqlite3'}",
    ]
    return "\n".join(lines)


def cli(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="dsacont demo", description=__doc__.split("\n")[0])
    ap.add_argument("--root", default="demo-output", help="working directory (default ./demo-output)")
    ap.add_argument("--preset", default="small", choices=["small", "full"],
                    help="simulator preset: 'small' (48 antennas within 600 m, 128 channels) or 'full' (96 "
                         "antennas, 768 channels: the real size) (default small)")
    ap.add_argument("--seed", type=int, default=0, help="simulator random seed (default 0)")
    ap.add_argument("--groups", type=int, default=N_GROUPS, help="groups (tiles) to simulate and mosaic, centred on "
                    f"the transit (default {N_GROUPS}: 60 minutes)")
    ap.add_argument("--hours", type=int, default=None,
                    help="instead of --groups: this many hours from the start of the acceptance hour, a mosaic "
                         "per hour (default: the acceptance hour only, i.e. --groups)")
    ap.add_argument("--sky", default="synthetic", choices=["synthetic", "real", "realistic", "faulty"],
                    help="simulated sky and instrument: 'synthetic' (0834+555 and a synthetic population; the "
                         "acceptance test), 'real' (NVSS, the VLA calibrators, Cas A), 'realistic' (the real sky "
                         "and the realistic instrument: gains wandering over hours, RFI), 'faulty' (that and the "
                         "real array's faults: dead receptors, wild phases, an antenna dying) (default synthetic)")
    ap.add_argument("--realistic", action="store_true",
                    help="the whole realistic simulator: the same as --sky faulty (default off)")
    ap.add_argument("--scheduler", help="address of an existing dask-scheduler (default: start a LocalCluster)")
    ap.add_argument("--max-inflight", type=int, default=2,
                    help="groups processed at once (default 2: one per core here)")
    ap.add_argument("--keep", action="store_true", help="keep the previous run's products and queue (default: start "
                    "afresh; the simulated archive is kept either way)")
    args = ap.parse_args(argv)
    s = run_demo(args.root, preset=args.preset, seed=args.seed, n_groups=args.groups, hours=args.hours,
                 sky="faulty" if args.realistic else args.sky, scheduler=args.scheduler,
                 max_inflight=args.max_inflight, fresh=not args.keep)
    print(format_summary(s))
    return 0 if s["mosaics"] and not s["groups_failed"] else 1
