"""The service's commands: ``dsacont stream``, ``status``, ``reprocess``, ``products`` and ``replay``.

Each function builds its options from the command line (and, for ``stream``, the ``--config``
TOML file) and calls the library: :func:`dsacont.service.loop.run_service`,
:func:`dsacont.service.status.format_status`, :class:`dsacont.service.products.Products`,
:func:`dsacont.service.replay.replay`.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import fields
from pathlib import Path

from dsacont.config import get_paths
from dsacont.errors import ConfigError
from dsacont.imaging import cli as imaging_cli
from dsacont.imaging.mosaic import mosaic_product
from dsacont.imaging.tclean import image_product
from dsacont.jsonio import json_default
from dsacont.options import from_mapping, load_toml, merge
from dsacont.service.loop import ServiceOptions, run_service
from dsacont.service.products import _KIND_ALIASES, Products
from dsacont.service.queue import IngestQueue
from dsacont.service.replay import plan, replay
from dsacont.service.state import record_products
from dsacont.service.status import format_status, status

log = logging.getLogger(__name__)


def _add_path_args(ap: argparse.ArgumentParser) -> None:
    g = ap.add_argument_group("where (default: the CONTIMG_* environment variables, see dsacont.config)")
    g.add_argument("--root", help="keep everything under this directory (incoming/, stage/, state/)")
    g.add_argument("--incoming", help="directory of arriving subband files")
    g.add_argument("--stage", help="staging base (ms/, caltables/, images/, mosaics/, tmp/ below it)")
    g.add_argument("--state", help="directory of the SQLite state databases")


def _paths_from_args(args):
    over = {k: getattr(args, k) for k in ("incoming", "stage", "state") if getattr(args, k, None)}
    return get_paths(root=getattr(args, "root", None), **over)


def _parse_options(items) -> dict:
    out = {}
    for item in items or []:
        k, sep, v = item.partition("=")
        if not sep:
            raise SystemExit(f"--option {item!r}: expected KEY=VALUE")
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


_D = ServiceOptions()


def _d(name: str) -> str:
    """Return the default of a ServiceOptions field, for the help text."""
    v = getattr(_D, name)
    return "none" if v is None or v == "" else str(v)


# command-line flag (dest) -> ServiceOptions field, where the names differ
_FLAG_FIELDS = {"poll": "poll_s", "idle_exit": "idle_exit_s", "tolerance": "tolerance_s",
                "incomplete_timeout": "incomplete_timeout_s", "lease": "lease_s", "retry_backoff": "retry_backoff_s",
                "cal_wait": "cal_wait_s", "max_cal_wait": "max_cal_wait_s", "disk_full_pause": "disk_full_pause_s",
                "settle": "settle_s", "watch_budget": "watch_budget_s", "group_timeout": "group_timeout_s",
                "max_nan_fraction": "max_nonfinite_frac", "workers": "n_workers", "threads": "threads_per_worker"}


def stream_parser() -> argparse.ArgumentParser:
    """Build the ``dsacont stream`` parser.

    Service flags default to "not given" (the config file's value, else the
    :class:`ServiceOptions` default written in each help text).
    """
    S = argparse.SUPPRESS
    ap = argparse.ArgumentParser(prog="dsacont stream", argument_default=S, description=(
        "Run the streaming service: watch the incoming directory, queue 16-subband groups, process them in time "
        "order on Dask. Settings come from ServiceOptions' defaults, then the --config file, then these flags."))
    _add_path_args(ap)
    ap.add_argument("--config", metavar="FILE", help="TOML file: [service] sets these options (names as in "
                    "dsacont.service.loop.ServiceOptions, e.g. poll_s), [pipeline] the processor's (default: none)")
    ap.add_argument("--processor", help=f"module:function run for each group (default {_d('processor')})")
    ap.add_argument("--on-complete", help="module:function run after each completed group, the mosaic trigger; "
                    f"'' for none (default {_d('on_complete')})")
    ap.add_argument("--priority", help="module:function giving each new group its claim priority (default "
                    f"{_d('priority')}: a calibrator's transit group first, then outward from it); '' for time order")
    ap.add_argument("--option", action="append", metavar="KEY=VALUE", default=[],
                    help="a processor option, over the config file's [pipeline] (repeatable; default: none)")
    ap.add_argument("--scheduler", help="address of an existing dask-scheduler; 'inline' to run in this process "
                    "(default: start a LocalCluster)")
    ap.add_argument("--max-inflight", type=int, help=f"groups processed at once (default {_d('max_inflight')})")
    ap.add_argument("--workers", type=int, help="LocalCluster worker processes (default: --max-inflight)")
    ap.add_argument("--threads", type=int, help="threads per LocalCluster worker (default: cores / workers)")
    ap.add_argument("--once", action="store_const", const=True, help="process what is there now, then exit "
                    "(default: run until stopped)")
    ap.add_argument("--stop-on-error", action="store_const", const=True,
                    help="exit (status 1) at the first failure (default: log it and go on)")
    ap.add_argument("--poll", type=float, help=f"seconds between scans of incoming (default {_d('poll_s')})")
    ap.add_argument("--max-groups", type=int, help="exit after this many groups reached an outcome (default: no limit)")
    ap.add_argument("--idle-exit", type=float, help="exit after this many idle seconds (default: never)")
    ap.add_argument("--tolerance", type=float, help=f"grouping tolerance, s (default {_d('tolerance_s')})")
    ap.add_argument("--incomplete-timeout", type=float, help="finalise an incomplete group after this many s "
                    f"without a new file for it (default {_d('incomplete_timeout_s')})")
    ap.add_argument("--min-subbands", type=int, help="process an incomplete group with at least this many usable "
                    f"subbands, else fail it (default {_d('min_subbands')})")
    ap.add_argument("--lease", type=float, help=f"claim lease, s (default {_d('lease_s')})")
    ap.add_argument("--max-attempts", type=int, help=f"attempts before a group fails (default {_d('max_attempts')})")
    ap.add_argument("--retry-backoff", type=float, help="first retry delay, s; doubles with each attempt "
                    f"(default {_d('retry_backoff_s')})")
    ap.add_argument("--cal-wait", type=float, help="a group waiting for calibration is claimed again when the "
                    "calibration registry changes, or at --max-cal-wait; with this, also every this many s (default "
                    f"{_d('cal_wait_s')})")
    ap.add_argument("--max-cal-wait", type=float, help="fail a group still without valid calibration this many s "
                    f"after it was queued (default {_d('max_cal_wait_s')}, 24 h)")
    ap.add_argument("--disk-full-pause", type=float, help="pause claiming this many s after a full disk "
                    f"(default {_d('disk_full_pause_s')})")
    ap.add_argument("--min-free-gb", type=float, help="do not start groups while the stage directory has less free "
                    f"space than this, GB (default {_d('min_free_gb')})")
    ap.add_argument("--settle", type=float, help="a file younger than this (s) is read only once its size stops "
                    f"changing (default {_d('settle_s')})")
    ap.add_argument("--watch-budget", type=float, help="seconds of file validation per loop (default: max(5, "
                    "lease / 4))")
    ap.add_argument("--group-timeout", type=float, help="give up on a group after this many s, restarting its "
                    "worker (default: no limit)")
    ap.add_argument("--no-value-check", dest="check_values", action="store_const", const=False,
                    help="do not read the visibilities to find NaN/Inf and truncation (default: read them)")
    ap.add_argument("--max-nan-fraction", type=float, help="quarantine a file with a larger fraction of NaN/Inf "
                    f"visibilities (default {_d('max_nonfinite_frac')}: any)")
    ap.add_argument("--reprocess-late", dest="reprocess_late", action="store_const", const=True,
                    help="rebuild by itself a completed group whose missing subbands arrive late (default "
                    f"{_d('reprocess_late')}: record them; 'dsacont reprocess GROUP' rebuilds)")
    ap.add_argument("--retry-failed", action="store_true", default=False, help="first put failed groups back in "
                    "the queue (attempts reset), e.g. after fixing a full disk (default: leave them failed)")
    ap.add_argument("-v", "--verbose", action="store_true", default=False, help="debug logging (default: info)")
    return ap


def stream_options(args) -> ServiceOptions:
    """ServiceOptions from the parsed ``dsacont stream`` arguments: defaults < --config < flags."""
    opts = ServiceOptions()
    if getattr(args, "config", None):
        data = load_toml(args.config)
        unknown = sorted(set(data) - {"service", "pipeline"})
        if unknown:
            raise ConfigError(f"{args.config}: unknown table(s) {', '.join(unknown)}; known: service, pipeline")
        opts = from_mapping(ServiceOptions, data.get("service"), where=f"{args.config} [service]")
        if "pipeline" in data:
            opts = merge(opts, {"processor_options": {**opts.processor_options, **data["pipeline"]}})
    names = {f.name for f in fields(ServiceOptions)}
    given = {_FLAG_FIELDS.get(k, k): v for k, v in vars(args).items() if _FLAG_FIELDS.get(k, k) in names}
    for key in ("on_complete", "priority"):
        if key in given:
            given[key] = given[key] or None
    if getattr(args, "option", None):
        given["processor_options"] = {**opts.processor_options, **_parse_options(args.option)}
    return merge(opts, given)


def cli_stream(argv: list[str]) -> int:
    """``dsacont stream``: run the streaming service."""
    args = stream_parser().parse_args(argv)
    if args.verbose:
        logging.getLogger("dsacont").setLevel(logging.DEBUG)
    else:
        logging.getLogger("distributed").setLevel(logging.WARNING)
    try:
        options = stream_options(args)
    except ConfigError as exc:
        print(f"dsacont stream: {exc}", file=sys.stderr)
        return 2
    paths = _paths_from_args(args)
    if args.retry_failed:
        with IngestQueue(paths.queue_db) as q:
            log.info("--retry-failed: %d failed group(s) back in the queue", q.requeue(("failed",)))
    summary = run_service(paths, options)
    print(format_status(paths))
    return summary.exit_code


def cli_status(argv: list[str]) -> int:
    """``dsacont status``: queue counts per state, running/waiting groups, recent failures, products."""
    ap = argparse.ArgumentParser(prog="dsacont status", description="Queue and products at a glance.")
    _add_path_args(ap)
    ap.add_argument("--failures", type=int, default=10, help="how many recent failures to show (default 10)")
    ap.add_argument("--json", action="store_true", help="print JSON (default: a table)")
    ap.add_argument("--watch", type=float, metavar="S", help="refresh every S seconds until interrupted "
                    "(default: print once)")
    args = ap.parse_args(argv)
    paths = _paths_from_args(args)
    while True:
        if args.json:
            print(json.dumps(status(paths, failures=args.failures), indent=1, default=str))
        else:
            if args.watch:
                print("\033[2J\033[H", end="")
                print(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))
            print(format_status(paths, failures=args.failures))
        if not args.watch:
            return 0
        try:
            time.sleep(args.watch)
        except KeyboardInterrupt:
            return 0


def cli_reprocess(argv: list[str]) -> int:
    """``dsacont reprocess GROUP... | --late``: queue groups to be processed again, products rebuilt."""
    ap = argparse.ArgumentParser(prog="dsacont reprocess", description=(
        "Queue groups to be processed again with all their usable files (late subbands included): the "
        "service rebuilds every product of each group and records it over the old rows (no duplicates); "
        "mosaics that used the group's images are marked stale and made again. A running 'dsacont "
        "stream' picks them up; otherwise run 'dsacont stream --once'."))
    ap.add_argument("groups", nargs="*", metavar="GROUP", help="group timestamps, YYYY-MM-DDTHH:MM:SS (as "
                    "'dsacont status' shows them; default: none)")
    ap.add_argument("--late", action="store_true", help="also every completed group with subbands that arrived "
                    "after it was processed (default: only the groups named)")
    _add_path_args(ap)
    args = ap.parse_args(argv)
    paths = _paths_from_args(args)
    if not paths.queue_db.exists():
        print(f"dsacont reprocess: no queue database at {paths.queue_db}", file=sys.stderr)
        return 1
    with IngestQueue(paths.queue_db) as q:
        names = list(args.groups)
        if args.late:
            names += sorted({f["group_timestamp"] for f in q.late_files() if f["group_state"] == "completed"}
                            - set(names))
        if not names:
            print("dsacont reprocess: no group named (and none with late subbands)", file=sys.stderr)
            return 1 if not args.late else 0
        out = q.rebuild(names, reason="dsacont reprocess")
    rc = 0
    for ts, what in out.items():
        if what in ("queued", "marked"):
            print(f"{ts}  {what} for rebuilding")
        else:
            rc = 1
            why = "no such group" if what == "unknown" else f"is {what}; try again when it has finished"
            print(f"{ts}  not queued: {why}", file=sys.stderr)
    return rc


def _summary(kind: str, d: dict) -> str:
    qa = d.get("qa") or {}
    bits = [f"{d['id']:>5}", (d.get("start_time") or "-")[:19], f"{d['status']:<10}"]
    if kind == "images":
        if qa.get("noise_jy") is not None:
            bits.append(f"rms={1e3 * qa['noise_jy']:.3f}mJy")
        if qa.get("dynamic_range") is not None:
            bits.append(f"DR={qa['dynamic_range']:.0f}")
    if kind in ("ms", "images") and qa.get("calibration"):
        bits.append("cal=" + ",".join(qa["calibration"]))
    if kind == "catalogues":
        bits[1] = f"{d.get('n_sources', 0):>5} sources"
        if qa.get("n_matched"):
            bits.append(f"{qa.get('reference', 'ref')}: {qa['n_matched']} matched, "
                        f"flux ratio {qa.get('flux_ratio_median', float('nan')):.3f}")
    if kind == "mosaics" and qa.get("n_tiles") is not None:
        bits.append(f"tiles={qa['n_tiles']}")
    bits.append(d["path"])
    return "  ".join(bits)


def cli_products(argv: list[str]) -> int:
    """``dsacont products list|show|counts``: query the products database."""
    ap = argparse.ArgumentParser(prog="dsacont products", description="Query the products database.")
    ap.add_argument("--db", help="the products SQLite file (default: products.sqlite3 in the state directory of "
                    "the configured paths)")
    ap.add_argument("--root", help="dsacont root directory, as get_paths(root=...) (default: CONTIMG_* variables)")
    sub = ap.add_subparsers(dest="action", required=True)
    p_list = sub.add_parser("list", help="list products of one kind, ordered by mid-time")
    p_list.add_argument("kind", choices=["ms", "images", "mosaics", "catalogues", "image", "mosaic", "catalogue"],
                        help="product kind")
    p_list.add_argument("--status", help="only products with this status (converted, calibrated, imaged, "
                        "mosaicked; default: any)")
    p_list.add_argument("--since", help="ISO UTC time: mid-time >= since (default: no limit)")
    p_list.add_argument("--until", help="ISO UTC time: mid-time <= until (default: no limit)")
    p_list.add_argument("--limit", type=int, help="at most this many rows (default: all)")
    p_list.add_argument("--json", action="store_true", help="print JSON rows instead of one line each")
    p_show = sub.add_parser("show", help="show one product (all fields, JSON)")
    p_show.add_argument("kind", choices=["ms", "image", "mosaic", "catalogue", "images", "mosaics", "catalogues"],
                        help="product kind")
    p_show.add_argument("key", help="id or path")
    sub.add_parser("counts", help="number of products per kind and status")
    args = ap.parse_args(argv)

    db_path = Path(args.db) if args.db else get_paths(root=args.root).products_db
    if not db_path.exists():
        print(f"dsacont products: no products database at {db_path}", file=sys.stderr)
        return 1
    db = Products(db_path)
    if args.action == "counts":
        print(json.dumps(db.counts(), indent=2))
        return 0
    if args.action == "show":
        key = int(args.key) if args.key.isdigit() else args.key
        row = db.get(args.kind, key)
        if row is None:
            print(f"dsacont products: no {args.kind} {args.key!r} in {db_path}", file=sys.stderr)
            return 1
        print(json.dumps(row, indent=2, default=json_default))
        return 0
    kind = _KIND_ALIASES[args.kind]
    rows = getattr(db, f"list_{kind if kind != 'ms' else 'ms'}")(
        status=args.status, since=args.since, until=args.until, limit=args.limit)
    if args.json:
        print(json.dumps(rows, indent=2, default=json_default))
    else:
        for r in rows:
            print(_summary(kind, r))
        print(f"{len(rows)} {kind}")
    return 0


def cli_replay(argv: list[str]) -> int:
    """``dsacont replay ARCHIVE [INCOMING] --start --end [--speed X]``."""
    ap = argparse.ArgumentParser(prog="dsacont replay", description="Feed archived subband files into an incoming "
                                 "directory in time order, as the correlator writes them (_incomplete, then rename).")
    ap.add_argument("archive", help="directory of archived *_sbNN.hdf5 files")
    ap.add_argument("incoming", nargs="?", help="directory to feed (default: the configured incoming directory)")
    ap.add_argument("--start", help="first group timestamp, UTC (e.g. 2025-10-29T13:25:00; default: the first)")
    ap.add_argument("--end", help="last group timestamp, UTC (default: the last)")
    ap.add_argument("--speed", type=float, default=0.0,
                    help="data seconds per wall second (1 = real time; default 0 = as fast as possible)")
    ap.add_argument("--mode", choices=("copy", "link", "symlink"), default="copy",
                    help="copy (default), hard-link or symlink the files")
    ap.add_argument("--tolerance", type=float, default=30.0, help="grouping tolerance, s (default 30)")
    ap.add_argument("--no-fsync", action="store_true", help="do not flush copies to disk before renaming "
                    "(default: flush)")
    ap.add_argument("--dry-run", action="store_true", help="list the files in delivery order and exit "
                    "(default: deliver them)")
    args = ap.parse_args(argv)
    if args.dry_run:
        for t, sb, p in plan(args.archive, args.start, args.end, tolerance_s=args.tolerance):
            print(time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(t)), f"sb{sb:02d}", p)
        return 0
    incoming = args.incoming if args.incoming is not None else get_paths().incoming
    delivered = replay(args.archive, incoming, args.start, args.end, args.speed or None, mode=args.mode,
                       tolerance_s=args.tolerance, fsync=not args.no_fsync, progress=True)
    print(f"delivered {len(delivered)} files to {incoming}")
    return 0


# ------------------------------------------------------ the imaging commands, with the products database
def _record(kind: str, product: dict, args) -> None:
    """Record one product made by a command run by hand (unless ``--no-register``)."""
    if args.no_register:
        return
    paths = get_paths(root=args.root).ensure("state")
    ids = record_products(paths, {kind: [product]})
    print(f"recorded in {paths.products_db} as {kind[:-1]} {ids[kind][0]}")


def cli_image(argv: list[str]) -> int:
    """``dsacont image MS``: :func:`dsacont.imaging.cli.cli`, then the image is recorded in the
    products database (this process is the control plane of a run by hand)."""
    return imaging_cli.cli(argv, on_result=lambda res, args: _record("images", image_product(res), args))


def _images_between(paths, start, end):
    if not paths.products_db.exists():
        print(f"dsacont mosaic: no products database at {paths.products_db}", file=sys.stderr)
        return None
    rows = Products(paths.products_db).images_between(start or 0.0, end or 1e9, status="imaged")
    return [r["path"] for r in rows]


def cli_mosaic(argv: list[str]) -> int:
    """``dsacont mosaic``: :func:`dsacont.imaging.cli.cli_mosaic` with ``--start/--end`` answered from
    the products database, and the mosaic recorded there."""
    return imaging_cli.cli_mosaic(argv, find_images=_images_between,
                                  on_result=lambda res, args: _record("mosaics", mosaic_product(res), args))
