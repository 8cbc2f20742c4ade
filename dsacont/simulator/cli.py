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
                   help="full: 96 antennas x 768 channels (~2.2 GB/group); small: 48 antennas x 128 channels "
                   "(default: small)")
    p.add_argument("--seed", type=int, default=0, help="seeds everything (sky, antennas, gains, RFI, noise, faults; default: 0)")
    p.add_argument("--dec", type=float, default=None,
                   help="pointing declination in degrees (default: 0834+555's, 55.5725)")
    p.add_argument("--no-rfi", action="store_true", help="no RFI")
    p.add_argument("--no-noise", action="store_true", help="no thermal noise")
    p.add_argument("--no-gains", action="store_true", help="no antenna gains or bandpasses")
    p.add_argument("--no-field", action="store_true", help="0834+555 only, no field sources")
    p.add_argument("--dead-antenna", type=int, default=None, metavar="N",
                   help="antenna number (0-based) whose visibilities are all zeros")
    p.add_argument("--realism", choices=["ideal", "realistic"], default="ideal",
                   help="ideal: the clean simulator; realistic: the real active array, raw correlator units, "
                   "drifting and jumping gains, bandpass dips, OVRO-like RFI, receptor faults, the real sky "
                   "(NVSS, VLA calibrators, Cas A); the four options below override parts of it (default: ideal)")
    p.add_argument("--ideal", action="store_true", help="same as --realism ideal (the default)")
    p.add_argument("--antennas", choices=["real", "random"], default=None,
                   help="real: the 96 pads active in 2026 (small: 48 of them); random: a seeded choice of the "
                   "117 pads (default: real if realistic, else random)")
    p.add_argument("--sky", choices=["real", "synthetic"], default=None,
                   help="real: 0834+555, VLA calibrators, Cas A, NVSS and a faint power law; synthetic: 0834+555 "
                   "and a power law (default: real if realistic, else synthetic)")
    p.add_argument("--instrument", choices=["realistic", "ideal"], default=None,
                   help="realistic: raw units (gains ~0.07), drifting/jumping gains, bandpass dips, OVRO RFI "
                   "(default: realistic if realistic, else ideal)")
    p.add_argument("--faults", choices=["on", "off"], default=None,
                   help="dead polarisations, wild/wrapping phases, residual delays, an antenna dying mid-group "
                   "(default: on if realistic, else off)")
    p.add_argument("--die-at", default=None, metavar="ISO",
                   help="UTC time the dying antenna stops (default: the middle of the first group)")
    a = p.parse_args(argv)
    if a.ideal and a.realism != "ideal":
        p.error("--ideal and --realism realistic contradict each other")

    from . import simulate

    t0 = time.perf_counter()
    paths = simulate(a.out_dir, a.start, a.minutes, dec_deg=a.dec, preset=a.preset, seed=a.seed,
                     rfi=not a.no_rfi, noise=not a.no_noise, gains=not a.no_gains,
                     dead_antenna=a.dead_antenna, field=not a.no_field, realism=a.realism, antennas=a.antennas,
                     sky_model=a.sky, instrument=a.instrument,
                     faults=None if a.faults is None else a.faults == "on", die_at=a.die_at)
    dt = time.perf_counter() - t0
    total = sum(os.path.getsize(x) for x in paths)
    for x in paths:
        print(x)
    ngroups = len(paths) // 16
    print(f"wrote {len(paths)} files ({ngroups} group(s), {total / 1e6:.1f} MB) in {dt:.1f} s"
          + (f" ({dt / ngroups:.1f} s per group)" if ngroups else ""))
    print(f"truth: {os.path.join(a.out_dir, 'truth')}")
    return 0
