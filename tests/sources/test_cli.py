"""The sources commands' options: every one has help text and shows its real default."""
from __future__ import annotations

from dsacont.cli import COMMANDS, main
from dsacont.sources import cli as C
from dsacont.sources.variability import DEFAULT_DIP_NSIGMA, DEFAULT_P_MAX


def test_help_shows_true_defaults():
    for parser in (C._parser_sources(), C._parser_lightcurve(), C._parser_variables()):
        text = parser.format_help()
        assert "(default: None)" not in text
        for action in parser._actions:
            assert action.help, f"{parser.prog}: {action.dest} has no help"
    assert "(default: 5.0)" in C._parser_sources().format_help()
    lc = C._parser_lightcurve().format_help()
    assert "(default: images)" in lc and "(default: 3.0)" in lc and "read-only" in lc
    var = C._parser_variables().format_help()
    assert f"(default: {DEFAULT_P_MAX})" in var and f"(default: {DEFAULT_DIP_NSIGMA})" in var
    assert "(default: nvss)" in var


def test_commands_registered(capsys):
    for name in ("sources", "lightcurve", "variables"):
        assert COMMANDS[name][0] == "dsacont.sources.cli"
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "lightcurve" in out and "variables" in out and "sources" in out
