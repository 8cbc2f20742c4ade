"""``dsacont convert``: options for :func:`dsacont.convert.convert_group`, one call per group."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from dsacont.config import get_paths
from dsacont.convert.group import convert_group
from dsacont.convert.phased import to_zarr
from dsacont.convert.plan import PHASE_MODES
from dsacont.io.groups import find_groups
from dsacont.io.uvh5 import DEFAULT_TIME_CHUNK, open_group

__all__ = ["cli", "build_parser"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="dsacont convert",
        description="Convert a 16-subband group (its files, or every complete group of a directory) to a CASA "
                    "Measurement Set: 16 SPWs ascending, one phase centre, RFI flags, built in a staging "
                    "directory and moved into place.",
    )
    p.add_argument("inputs", nargs="+", help="the subband files of one group, or one directory (every complete group)")
    p.add_argument("-o", "--output", default=None,
                   help="output MS path (one group, ending in .ms) or directory of MSs (default: <stage>/ms/<timestamp>.ms)")
    p.add_argument("--phase", choices=PHASE_MODES, default="common",
                   help="'common': one phase centre, the meridian at the group's mid-time; "
                        "'per_integration': one field per integration (the correlator's own centres) (default: common)")
    p.add_argument("--no-flag", action="store_true", help="do not compute RFI flags; the files' flags are kept (default: RFI flags computed)")
    p.add_argument("--strategy", default=None,
                   help="flagging strategy file, TOML or JSON (default: dsacont/data/flag_strategy_default.toml)")
    p.add_argument("--time-chunk", type=int, default=DEFAULT_TIME_CHUNK, help=f"integrations per block (default: {DEFAULT_TIME_CHUNK})")
    p.add_argument("--tmp-dir", default=None,
                   help="where to build the MS before the atomic move (default: <stage>/tmp when on the output's "
                        "filesystem, else tmpfs when it has room, else <stage>/tmp)")
    p.add_argument("--scheduler", default=None,
                   help="dask-scheduler address (tcp://host:8786) whose workers compute the blocks (default: local threads)")
    p.add_argument("--root", default=None, help="put everything under this directory, as CONTIMG_ROOT does (default: CONTIMG_* paths)")
    p.add_argument("--zarr", default=None, help="also write the phased Dataset to this zarr store, one group only (default: none)")
    return p


def cli(argv: list[str] | None = None) -> int:
    """``dsacont convert``: convert one or more subband groups to Measurement Sets; prints each MS."""
    args = build_parser().parse_args(argv)
    paths = get_paths(root=args.root)
    if len(args.inputs) == 1 and os.path.isdir(args.inputs[0]):
        groups = [g for g in find_groups(args.inputs[0]) if getattr(g, "complete", True)]
        if not groups:
            print(f"dsacont convert: no complete groups in {args.inputs[0]}", file=sys.stderr)
            return 1
    else:
        groups = [args.inputs]
    client = None
    if args.scheduler:
        from distributed import Client  # optional, and slow to import

        client = Client(args.scheduler)
    chunks = {"time": args.time_chunk}
    try:
        for g in groups:
            out = None
            if args.output:
                out = Path(args.output)
                if len(groups) > 1 or out.suffix != ".ms":
                    out = None
                    paths = get_paths(root=args.root, ms=args.output)
            res = convert_group(g, out, phase=args.phase, flag=not args.no_flag, strategy=args.strategy,
                                paths=paths, tmp_dir=args.tmp_dir, chunks=chunks)
            print(res.ms)
            if args.zarr and len(groups) == 1:
                print(to_zarr(open_group(g, chunks=chunks), args.zarr, phase=args.phase))
    finally:
        if client is not None:
            client.close()
    return 0


if __name__ == "__main__":
    sys.exit(cli())
