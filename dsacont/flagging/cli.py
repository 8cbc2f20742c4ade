"""``dsacont flag MS``: flag RFI in an existing Measurement Set (updates its FLAG column)."""
from __future__ import annotations

import argparse
import json

from .ms import flag_ms
from .strategy import DEFAULT_STRATEGY_PATH, load_strategy


def build_parser() -> argparse.ArgumentParser:
    """Build the argparse parser of ``dsacont flag``."""
    p = argparse.ArgumentParser(
        prog="dsacont flag",
        description="Flag RFI in a Measurement Set: read the data column, run the flagger (the same "
                    "kernels and baseline blocks as the conversion's flagging), OR the new flags into "
                    "FLAG (existing flags are kept), and FLAG_ROW where a row is fully flagged.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("ms", help="Measurement Set directory")
    p.add_argument("--strategy", default=None,
                   help=f"TOML/JSON strategy file overlaying any subset of the default's keys "
                        f"(None: the shipped DSA-110 strategy, {DEFAULT_STRATEGY_PATH.name})")
    p.add_argument("--datacolumn", default="DATA", help="column whose amplitudes are flagged (e.g. CORRECTED_DATA)")
    p.add_argument("--summary-json", default=None,
                   help="write the flag summary here (JSON: fractions per antenna, subband, time, channel)")
    p.add_argument("--waterfall", default=None,
                   help="write a waterfall PNG of one cross-correlation (first band) here")
    p.add_argument("--threads", type=int, default=1, help="threads running the baseline blocks")
    p.add_argument("--dry-run", action="store_true", help="compute and report, do not write FLAG")
    p.add_argument("--print-strategy", action="store_true",
                   help="print the effective strategy (default + --strategy) as JSON and exit")
    return p


def cli(argv=None) -> int:
    """Run ``dsacont flag`` with the arguments ``argv`` (default ``sys.argv[1:]``); returns 0."""
    a = build_parser().parse_args(argv)
    if a.print_strategy:
        print(json.dumps(load_strategy(a.strategy).to_dict(), indent=1))
        return 0
    summ = flag_ms(a.ms, a.strategy, datacolumn=a.datacolumn, n_threads=a.threads, summary_json=a.summary_json,
                   waterfall=a.waterfall, dry_run=a.dry_run)
    bands = summ.get("bands", [summ])
    for i, b in enumerate(bands):
        print(f"band {i}: {b['overall']:.2%} flagged ({b['new_fraction']:.2%} new); cross {b['cross']:.2%}"
              + (f", auto {b['auto']:.2%}" if b["auto"] is not None else ""))
    print(f"{summ['seconds']:.1f} s")
    return 0
