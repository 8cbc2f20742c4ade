"""DSA-110 correlator simulator: writes UVH5 subband files exactly as the correlator lays them
out, with recorded truth (sources, gains, bandpasses, RFI, noise).

Independent of the pipeline on purpose (imports only ``dsacont.errors`` from dsacont), so the
pipeline can be scored against it. See ``docs/SIMULATOR.md``.

    simulate(out_dir, start, minutes, *, dec_deg=None, preset="small", seed=0,
             rfi=True, noise=True, gains=True, dead_antenna=None, field=True,
             realism="ideal", antennas=None, sky_model=None, instrument=None, faults=None,
             die_at=None, variables=None) -> list[str]
    load_truth(out_dir, group_timestamp_or_path) -> dict
    Variability(start_mjd, end_mjd, fraction=0.1, ...)       (flaring and ESE-dipping field sources)
"""
from __future__ import annotations

from .core import GROUP_S, INTEGRATION_S, PRESETS, simulate
from .truth import load_truth
from .variables import Variability, read_variables_truth

__all__ = ["simulate", "load_truth", "Variability", "read_variables_truth", "PRESETS", "GROUP_S", "INTEGRATION_S"]
