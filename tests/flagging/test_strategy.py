"""The flagging strategy (dsacont.flagging.strategy): the shipped default and user files."""
from __future__ import annotations

import json

import pytest

from dsacont import flagging as F
from dsacont.errors import BadInputError


def test_default_strategy_file_and_user_overrides(tmp_path):
    s = F.load_strategy()
    assert F.DEFAULT_STRATEGY_PATH.exists()
    assert s.rho == 1.5 and s.combine_baselines and s.cross_chi1 > 0 and s.auto_freq_window == 1
    user = tmp_path / "mine.json"
    user.write_text(json.dumps({"cross_chi1": 9.5, "static_mask_hz": [[1.38e9, 1.382e9]]}))
    u = F.load_strategy(user)
    assert u.cross_chi1 == 9.5 and u.static_mask_hz == [[1.38e9, 1.382e9]] and u.rho == s.rho
    toml = tmp_path / "mine.toml"
    toml.write_text("[cross]\nchi1 = 8.0\n[combined]\nenabled = false\n")
    t = F.load_strategy(toml)
    assert t.cross_chi1 == 8.0 and t.combine_baselines is False
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"cross_chi": 9}))
    with pytest.raises(BadInputError, match="cross_chi"):
        F.load_strategy(bad)
    with pytest.raises(BadInputError):
        F.load_strategy(tmp_path / "missing.json")
