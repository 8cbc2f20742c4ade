"""`dsacont flag MS` (dsacont.flagging.cli)."""
from __future__ import annotations

import json

import pytest

from dsacont import flagging as F
from dsacont.errors import BadInputError


def test_cli(small_ms, tmp_path):
    from dsacont.cli import main

    summ = tmp_path / "s.json"
    strat = tmp_path / "st.json"
    strat.write_text(json.dumps({"cross_chi1": 8.0}))
    assert main(["flag", str(small_ms), "--strategy", str(strat), "--summary-json", str(summ), "--dry-run"]) == 0
    data = json.loads(summ.read_text())
    assert data["strategy"]["cross_chi1"] == 8.0 and 0 < data["overall"] < 1
    with pytest.raises(BadInputError):
        F.flag_ms(tmp_path / "nothing.ms")
