"""Reading simulated subband files with pyuvdata, as the operators do (shared by the simulator tests)."""
from __future__ import annotations

import warnings

import numpy as np

PYUV_KW = dict(file_type="uvh5", run_check=False, run_check_acceptability=False,
               strict_uvw_antpos_check=False, check_extra=False)


def _read_uv(path):
    """Read one subband as the operators do (pyuvdata, uvw cast to float64 as the files hold float32)."""
    from pyuvdata import UVData

    uv = UVData()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        uv.read(path, **PYUV_KW)
    uv.uvw_array = uv.uvw_array.astype(np.float64)
    return uv
