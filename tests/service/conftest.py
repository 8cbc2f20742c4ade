"""Fixtures shared by the service tests."""
from __future__ import annotations

import pytest
from streamtools import sim_group_files


@pytest.fixture(scope="module")
def sim_files(request):
    """The simulated small group's 16 files (see :func:`streamtools.sim_group_files`), per test module."""
    return sim_group_files(request)
