"""The ``dsacont`` command. Each subcommand lives in the module of its stage.

A stage module exposes ``cli(argv: list[str]) -> int`` which builds its own argparse parser
(``prog="dsacont <name>"``). This table is the only shared piece, so stages never collide;
modules are imported only when their subcommand runs, so ``dsacont --help`` is instant.
"""
from __future__ import annotations

import importlib
import logging
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "simulate": ("dsacont.simulator.cli", "write simulated DSA-110 subband files with recorded truth"),
    "groups": ("dsacont.io.groups", "list complete/incomplete 16-subband groups in a directory"),
    "convert": ("dsacont.convert.cli", "convert a subband group to a CASA Measurement Set"),
    "flag": ("dsacont.flagging.cli", "flag RFI in an existing Measurement Set (FLAG column)"),
    "calibrate": ("dsacont.calibration.cli", "solve bandpass and gains on a calibrator MS, register tables"),
    "applycal": ("dsacont.calibration.cli", "apply the registered calibration to a target MS"),
    "health": ("dsacont.calibration.cli", "find dead receptors and bad antennas in an MS's data; flag, plot"),
    "image": ("dsacont.service.cli", "image a calibrated MS with tclean, PB-corrected FITS"),
    "mosaic": ("dsacont.service.cli", "combine tile images into a primary-beam-weighted mosaic"),
    "products": ("dsacont.service.cli", "query the products database"),
    "stream": ("dsacont.service.cli", "run the streaming service on an incoming directory"),
    "replay": ("dsacont.service.cli", "feed archived subband files into an incoming directory in time order"),
    "status": ("dsacont.service.cli", "queue and products at a glance"),
    "sources": ("dsacont.sources.cli", "find sources in FITS images (Aegean), catalogue beside each; cross-match QA"),
    "lightcurve": ("dsacont.sources.cli", "forced-photometry light curve of a source over recorded tiles/mosaics"),
    "variables": ("dsacont.sources.cli", "variability metrics and ESE-like dips of reference sources, ranked"),
    "reprocess": ("dsacont.service.cli", "rebuild a group's products (e.g. after late subbands arrived)"),
    "demo": ("dsacont.demo", "simulate the 0834+555 transit and run it through the streaming path"),
}

# modules with more than one subcommand expose cli_<name> for the others
_FUNC = {"applycal": "cli_applycal", "health": "cli_health", "status": "cli_status", "image": "cli_image", "mosaic": "cli_mosaic",
         "stream": "cli_stream",
         "products": "cli_products", "replay": "cli_replay", "reprocess": "cli_reprocess",
         "lightcurve": "cli_lightcurve", "variables": "cli_variables"}


def _usage() -> str:
    lines = ["usage: dsacont <command> [options]", "", "commands:"]
    for name, (_, text) in COMMANDS.items():
        lines.append(f"  {name:<10} {text}")
    lines += ["", "dsacont <command> --help for the options of each command."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] in ("-V", "--version"):
        from dsacont import __version__

        print(__version__)
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"dsacont: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S"
    )
    module = importlib.import_module(COMMANDS[name][0])
    func = getattr(module, _FUNC.get(name, "cli"))
    return int(func(rest) or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
