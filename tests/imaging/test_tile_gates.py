"""Image QA gates (imaging.qa.tile_gates): which tiles a mosaic must not take, and why."""
from __future__ import annotations

import math

from dsacont.imaging.qa import MAX_NOISE_RATIO, MIN_DYNAMIC_RANGE, tile_gates

GOOD = {"noise_ratio": 1.2, "dynamic_range": 800.0,
        "calibrators": [{"name": "0834+555", "detected": True, "pb": 0.97, "ratio": 1.01},
                        {"name": "0824+558", "detected": False, "pb": 0.9, "ratio": 0.02}]}


def test_good_tile_and_tile_without_qa_pass():
    assert tile_gates(GOOD) == [] and tile_gates({}) == [] and tile_gates(None) == []


def test_each_gate_fails_alone_with_its_reason():
    assert tile_gates({**GOOD, "noise_ratio": MAX_NOISE_RATIO * 1.01}) == [
        f"noise {MAX_NOISE_RATIO * 1.01:.2f}x the radiometer equation (> {MAX_NOISE_RATIO:g})"]
    assert tile_gates({**GOOD, "noise_ratio": MAX_NOISE_RATIO}) == []  # the limit itself passes
    assert tile_gates({**GOOD, "dynamic_range": MIN_DYNAMIC_RANGE - 0.5}) == [
        f"dynamic range {MIN_DYNAMIC_RANGE - 0.5:.1f} (< {MIN_DYNAMIC_RANGE:g})"]
    assert len(tile_gates({**GOOD, "noise_ratio": math.nan})) == 1  # a figure that is not finite fails
    low = {**GOOD, "calibrators": [{"name": "0834+555", "detected": True, "pb": 0.9, "ratio": 0.6}]}
    assert tile_gates(low) == ["0834+555 at 0.60x its catalogue flux (outside 0.65-1.54)"]
    high = {**GOOD, "calibrators": [{"name": "0834+555", "detected": True, "pb": 0.9, "ratio": 1.6}]}
    assert len(tile_gates(high)) == 1
    # far down the beam, or not detected (the sky model may lack it): not held against the tile
    assert tile_gates({**GOOD, "calibrators": [{"name": "x", "detected": True, "pb": 0.3, "ratio": 0.3}]}) == []
    assert tile_gates({**GOOD, "calibrators": [{"name": "x", "detected": False, "pb": 0.9, "ratio": 0.3}]}) == []
    assert len(tile_gates({"noise_ratio": 9.0, "dynamic_range": 3.0})) == 2
