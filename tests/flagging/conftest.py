"""Fixtures of the flagging tests: a Measurement Set of the small simulated group."""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

_WRITE_MS = textwrap.dedent(
    """
    # pyuvdata's write_ms (python-casacore) in its own process: never casacore next to casatools
    import sys
    import numpy as np
    from pyuvdata import UVData
    out, paths = sys.argv[1], sys.argv[2:]
    uvs = []
    for p in paths:
        uv = UVData()
        uv.read(p, file_type="uvh5", run_check=False)
        uv.uvw_array = uv.uvw_array.astype(np.float64)
        uvs.append(uv)
    uv = uvs[0]
    uv.fast_concat(uvs[1:], axis="freq", inplace=True, run_check=False)
    uv.reorder_freqs(channel_order="freq", run_check=False)
    uv.write_ms(out, clobber=True, run_check=False, force_phase=True)
    """
)


@pytest.fixture(scope="session")
def small_ms(sim_small, tmp_path_factory):
    """Write a Measurement Set of the small group (pyuvdata write_ms, 1 SPW, ascending)."""
    _, paths = sim_small
    ms = tmp_path_factory.mktemp("flag_ms") / "small.ms"
    subprocess.run([sys.executable, "-c", _WRITE_MS, str(ms), *paths], check=True,
                   env={**os.environ, "OMP_NUM_THREADS": "1"})
    return ms
