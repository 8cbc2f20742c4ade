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

#: the test files that take longest (measured in one CI run, worst first): they are collected first,
#: so the two xdist processes start on them and the short files fill in around them, instead of one
#: long file starting last and running alone at the end (on 2 cores the suite took 38 min that way,
#: the last 10 of them with one process idle)
LONGEST_FILES = (
    "service/test_e2e.py",
    "service/test_streaming.py",
    "imaging/test_imaging.py",
    "service/test_recovery.py",
    "service/test_sky_model.py",
    "service/test_around_the_clock.py",
    "calibration/test_calibration.py",
    "service/test_loop.py",
    "convert/test_group.py",
    "service/test_arrival_order.py",
)


def pytest_collection_modifyitems(session, config, items):
    """Longest files first (:data:`LONGEST_FILES`), each file's tests in their own order, the rest as
    collected."""
    def rank(item):
        path = item.nodeid.split("::", 1)[0].removeprefix("tests/")
        return LONGEST_FILES.index(path) if path in LONGEST_FILES else len(LONGEST_FILES)

    items[:] = [it for _, _, it in sorted((rank(it), i, it) for i, it in enumerate(items))]


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
