"""The ``dsacont calibrate``, ``applycal`` and ``health`` commands (options only; the work is in
solve/apply/health).
"""
from __future__ import annotations

import argparse
import json

from dsacont.calibration.apply import DEFAULT_ENGINE, ENGINES, apply_calibration
from dsacont.calibration.skymodel import load_sky_csv
from dsacont.calibration.solve import solve_calibration
from dsacont.config import get_paths
from dsacont.errors import BadInputError, CalibrationUnavailable


def _paths_from_args(args):

    return get_paths(root=args.root) if args.root else get_paths()


def cli(argv: list[str]) -> int:
    """``dsacont calibrate MS [--calibrator NAME]``: solve B and G, register them, plot."""
    p = argparse.ArgumentParser(prog="dsacont calibrate", description=cli.__doc__)
    p.add_argument("ms", help="calibrator Measurement Set")
    p.add_argument("--calibrator", help="VLA calibrator name (default: brightest in the beam)")
    p.add_argument("--refant", help="reference antenna name(s), comma separated (default: automatic)")
    p.add_argument("--gain-solint", default="inf", help="G solution interval (CASA solint; default 'inf')")
    p.add_argument("--minsnr", type=float, default=3.0)
    p.add_argument("--beam", choices=("time", "mid", "none"), default="time", help="primary-beam model")
    p.add_argument("--sky", help="CSV of field sources to add to the model "
                                 "(name,ra_deg,dec_deg,flux_jy,spectral_index; flux at 1.4 GHz)")
    p.add_argument("--bandpass-validity-h", type=float, help="half-width of the B validity window (h; 24)")
    p.add_argument("--gain-validity-h", type=float, help="half-width of the G validity window (h; 1)")
    p.add_argument("--root", help="put caltables/state under this directory (like CONTIMG_ROOT)")
    p.add_argument("--registry", help="registry SQLite file (default: the state directory's)")
    p.add_argument("--no-register", action="store_true", help="solve only, do not register")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--method", choices=("fast", "casa"), default="fast",
                   help="solver: 'fast' (dsacont's own, one pass over the data; default) or 'casa' "
                        "(CASA gaincal/bandpass/gaincal, MODEL_DATA written)")
    a = p.parse_args(argv)
    paths = _paths_from_args(a)
    validity = {k: v for k, v in (("B", a.bandpass_validity_h), ("G", a.gain_validity_h)) if v is not None}
    try:
        sky = load_sky_csv(a.sky) if a.sky else None
        res = solve_calibration(a.ms, a.calibrator, paths=paths, registry=False if a.no_register else a.registry,
                                refant=a.refant, gain_solint=a.gain_solint, minsnr=a.minsnr, beam=a.beam,
                                validity_h=validity, plots=not a.no_plots, sky=sky, method=a.method)
    except (BadInputError, KeyError) as exc:
        print(f"dsacont calibrate: {exc}", file=__import__("sys").stderr)
        return 2
    m = res["metrics"]
    summary = {"status": res["status"], "calibrator": res["calibrator"], "refant": res["refant"],
               "tables": res["tables"], "ids": res["ids"], "plots": res["plots"],
               "flagged_solutions": {k: m[k]["flagged_fraction"] for k in ("B", "G")},
               "snr_median": {k: m[k]["snr_median"] for k in ("B", "G")},
               "n_sky_sources": m["model"]["n_sky_sources"], "timings_s": m["timings_s"], "method": m["method"]}
    print(json.dumps(summary, indent=2))
    return 0 if res["status"] == "valid" else 1


def cli_applycal(argv: list[str]) -> int:
    """``dsacont applycal MS``: apply the registered tables valid at the MS's time."""
    p = argparse.ArgumentParser(prog="dsacont applycal", description=cli_applycal.__doc__)
    p.add_argument("ms", help="target Measurement Set")
    p.add_argument("--tables", nargs="+", help="caltables to apply (B then G) instead of the registry's")
    p.add_argument("--time", help="look tables up for this time (ISO UTC) instead of the MS mid-time")
    p.add_argument("--interp", choices=("linear", "nearest"), default="linear")
    p.add_argument("--root", help="state/caltables under this directory (like CONTIMG_ROOT)")
    p.add_argument("--registry", help="registry SQLite file (default: the state directory's)")
    p.add_argument("--engine", choices=ENGINES, default=DEFAULT_ENGINE,
                   help="casa: CASA applycal; dsacont: dsacont's numba apply (same interpolation, same "
                        "result to float precision) (default: %(default)s)")
    a = p.parse_args(argv)
    paths = _paths_from_args(a)
    try:
        res = apply_calibration(a.ms, tables=a.tables, registry=a.registry, time=a.time, interp=a.interp,
                                paths=paths, engine=a.engine)
    except (CalibrationUnavailable, BadInputError) as exc:
        print(f"dsacont applycal: {exc}", file=__import__("sys").stderr)
        return 3
    print(json.dumps({k: res[k] for k in ("ms", "tables", "ids", "interp", "engine", "flagged_fraction", "timings_s")},
                     indent=2))
    return 0


def cli_health(argv: list[str]) -> int:
    """``dsacont health MS``: judge every receptor (antenna x polarisation) from the data; print
    the unhealthy ones as JSON, draw the antenna x polarisation grid; with --flag, flag them."""
    from dsacont.calibration.health import antenna_health, flag_unhealthy
    from dsacont.calibration.plots import plot_antenna_health

    p = argparse.ArgumentParser(prog="dsacont health", description=cli_health.__doc__)
    p.add_argument("ms", help="Measurement Set (DATA column; read only unless --flag)")
    p.add_argument("--flag", action="store_true",
                   help="OR the verdicts into FLAG (dead receptor: its correlations only; bad antenna: all; "
                        "dying antenna: from its death on) (default: off, read only)")
    p.add_argument("--plot", help="PNG of the grid (default: <ms without .ms>.health.png beside the MS)")
    p.add_argument("--no-plot", action="store_true", help="draw nothing (default: draw)")
    a = p.parse_args(argv)
    try:
        h = antenna_health(a.ms)
    except (BadInputError, RuntimeError) as exc:
        print(f"dsacont health: {exc}", file=__import__("sys").stderr)
        return 2
    out = {**h.summary(), "unhealthy": h.unhealthy()}
    if a.flag:
        out["flagged"] = flag_unhealthy(a.ms, h)
    if not a.no_plot:
        out["plot"] = plot_antenna_health(h, a.plot or f"{str(a.ms).rstrip('/').removesuffix('.ms')}.health.png")
    print(json.dumps(out, indent=1))
    return 0
