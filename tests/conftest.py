"""Shared fixtures: real simulated HDF5 groups written once per test session.

Fixtures here are used by every stage's tests; each stage's own fixtures live in its test file.
"""
from __future__ import annotations

import os

import pytest

# keep the machine's 2 cores from being oversubscribed by numba x BLAS x dask threads
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

# 0834+555 "transits" OVRO at 13:55:26 UTC on 2025-10-29 in the operators' convention (LST = J2000
# RA); it really crosses the meridian (and the fringe-stop centre) at 13:57:25 (precession since
# J2000). GROUP_START puts that true crossing at the group's mid-time.
TRANSIT = "2025-10-29T13:55:26"
GROUP_START = "2025-10-29T13:54:51"


def by_subband(paths):
    """Paths in subband order sb00..sb15 (names carry jittered timestamps, so sort on _sbNN)."""
    return sorted((str(p) for p in paths), key=lambda p: p[-7:-5])


@pytest.fixture(scope="session")
def sim_small(tmp_path_factory):
    """One complete small-preset group with every corruption (noise, gains, RFI), with truth.

    Returns (directory, list of 16 paths sb00..sb15).
    """
    from dsacont import simulate

    out = tmp_path_factory.mktemp("sim_small")
    paths = simulate(out, GROUP_START, 5, preset="small", seed=1)
    return out, by_subband(paths)


@pytest.fixture(scope="session")
def sim_clean(tmp_path_factory):
    """One small-preset group with no noise, no gains, no RFI (sky only), with truth."""
    from dsacont import simulate

    out = tmp_path_factory.mktemp("sim_clean")
    paths = simulate(out, GROUP_START, 5, preset="small", seed=2, rfi=False, noise=False, gains=False)
    return out, by_subband(paths)
