"""``dsacont simulate OUT_DIR --start ... --minutes ...``: write simulated DSA-110 subband files."""
from __future__ import annotations

import argparse
import os
import time


def cli(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="dsacont simulate",
        description="Write simulated DSA-110 correlator subband files (16 per ~5-minute group) "
        "with recorded truth in OUT_DIR/truth/.",
    )
    p.add_argument("out_dir", help="output directory (created)")
    p.add_argument("--start", required=True, help="UTC start of the first group, ISO (2025-10-29T13:52:51)")
    p.add_argument("--minutes", type=float, required=True, help="length of the window in minutes")
    p.add_argument("--preset", choices=["small", "full"], default="small",
                   help="full: 96 antennas x 768 channels (~2.2 GB/group); small: 48 antennas x 128 channels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dec", type=float, default=None, help="pointing declination in degrees (default 0834+555's)")
    p.add_argument("--no-rfi", action="store_true", help="no RFI")
    p.add_argument("--no-noise", action="store_true", help="no thermal noise")
    p.add_argument("--no-gains", action="store_true", help="no antenna gains or bandpasses")
    p.add_argument("--no-field", action="store_true", help="0834+555 only, no field sources")
    p.add_argument("--dead-antenna", type=int, default=None, metavar="N",
                   help="antenna number (0-based) whose visibilities are all zeros")
    a = p.parse_args(argv)

    from . import simulate

    t0 = time.perf_counter()
    paths = simulate(a.out_dir, a.start, a.minutes, dec_deg=a.dec, preset=a.preset, seed=a.seed,
                     rfi=not a.no_rfi, noise=not a.no_noise, gains=not a.no_gains,
                     dead_antenna=a.dead_antenna, field=not a.no_field)
    dt = time.perf_counter() - t0
    total = sum(os.path.getsize(x) for x in paths)
    for x in paths:
        print(x)
    ngroups = len(paths) // 16
    print(f"wrote {len(paths)} files ({ngroups} group(s), {total / 1e6:.1f} MB) in {dt:.1f} s"
          + (f" ({dt / ngroups:.1f} s per group)" if ngroups else ""))
    print(f"truth: {os.path.join(a.out_dir, 'truth')}")
    return 0
