"""The lazy loader against real simulated HDF5 files and against pyuvdata's reading of them."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from dsacont.io import uvh5 as loader
from dsacont.errors import BadInputError
from dsacont.io.uvh5 import open_group


def test_open_is_lazy_and_follows_the_contract(sim_small):
    _, paths = sim_small
    before = loader.READ_COUNT["chunks"]
    ds = open_group(paths)
    assert loader.READ_COUNT["chunks"] == before  # opening read no visibility, flag or nsamples data
    assert ds.vis.dims == ("time", "baseline", "frequency", "polarization")
    assert ds.vis.dtype == np.complex64 and ds.flags.dtype == bool and ds.nsamples.dtype == np.float32
    for v in ("vis", "flags", "nsamples"):
        assert hasattr(ds[v].data, "dask")
    f = ds.frequency.values
    assert np.all(np.diff(f) > 0)  # ascending across all 16 subbands
    assert 1.311e9 < f[0] < f[-1] < 1.4988e9
    assert ds.subband.values[0] == 15 and ds.subband.values[-1] == 0
    # no frequency chunk spans two subbands
    edges = np.cumsum((0,) + ds.vis.data.chunks[2])
    for a, b in zip(edges[:-1], edges[1:]):
        assert len(set(ds.subband.values[a:b])) == 1
    assert ds.sizes["time"] == 24 and list(ds.polarization.values) == ["XX", "YY"]
    assert np.all(ds.antenna1.values <= ds.antenna2.values)
    assert ds.attrs["telescope_name"] == "OVRO_MMA"
    assert np.degrees(ds.attrs["phase_center_dec"]) == pytest.approx(55.5725, abs=1e-3)
    assert len(ds.attrs["source_files"]) == 16 and ds.attrs["source_files"][0].endswith("_sb00.hdf5")
    assert ds.uvw.dims == ("time", "baseline", "uvw_dim")
    # chunking is configurable; still one subband per frequency chunk at most
    ds2 = open_group(paths, chunks={"time": 4, "frequency": 10_000})
    assert ds2.vis.data.chunks[0][0] == 4 and max(ds2.vis.data.chunks[2]) == ds.sizes["frequency"] // 16


def test_values_equal_pyuvdata(sim_small):
    """Each subband file as pyuvdata reads it (one at a time: pyuvdata's multi-file concat insists
    on float64 uvw, and the correlator writes float32) equals the matching slice of the Dataset."""
    from pyuvdata import UVData

    _, paths = sim_small
    ds = open_group(paths).compute()
    nt, nb = ds.sizes["time"], ds.sizes["baseline"]
    for sb in (0, 7, 15):
        uv = UVData()
        uv.read(paths[sb], file_type="uvh5", run_check=False)
        f = uv.freq_array.ravel()
        order = np.argsort(f)
        sel = ds.subband.values == sb
        assert np.allclose(f[order], ds.frequency.values[sel])
        # pyuvdata keeps the files' time-major baseline order
        assert np.array_equal(uv.ant_1_array.reshape(nt, nb)[0], ds.antenna1.values)
        assert np.array_equal(uv.ant_2_array.reshape(nt, nb)[0], ds.antenna2.values)
        assert np.allclose(np.unique(uv.time_array), ds.time.values, atol=1e-9)
        shape = (nt, nb, -1, uv.Npols)
        assert np.array_equal(uv.data_array.reshape(shape)[:, :, order], ds.vis.values[:, :, sel])
        assert np.array_equal(uv.flag_array.reshape(shape)[:, :, order], ds.flags.values[:, :, sel])
        assert np.array_equal(uv.nsample_array.reshape(shape)[:, :, order], ds.nsamples.values[:, :, sel])
        assert np.allclose(uv.uvw_array.reshape(nt, nb, 3), ds.uvw.values, atol=1e-3)


def test_missing_subband_names_it(sim_small):
    _, paths = sim_small
    with pytest.raises(BadInputError, match="sb07 is missing"):
        open_group([p for p in paths if not p.endswith("_sb07.hdf5")])
    ds = open_group([None if p.endswith("_sb07.hdf5") else p for p in paths], allow_missing=True)
    sel = ds.subband.values == 7
    assert sel.sum() == ds.sizes["frequency"] // 16
    assert np.all(np.diff(ds.frequency.values) > 0)
    assert ds.flags.values[:, :, sel].all() and not ds.flags.values[:, :, ~sel].all()
    assert ds.attrs["missing_subbands"] == [7]


def test_mismatched_subband_names_the_file(sim_small, tmp_path):
    _, paths = sim_small
    bad = [shutil.copy(p, tmp_path) for p in paths]
    with h5py.File(bad[3], "r+") as f:  # sb03 from another observation: times shifted by 309 s
        f["Header/time_array"][...] = f["Header/time_array"][()] + 309.0 / 86400
    with pytest.raises(BadInputError, match=r"_sb03\.hdf5: integration times differ"):
        open_group(bad)


def test_not_hdf5_and_truncated_files(sim_small, tmp_path):
    _, paths = sim_small
    bad = [shutil.copy(p, tmp_path) for p in paths]
    with open(bad[5], "wb") as fh:
        fh.write(b"this is not an HDF5 file")
    with pytest.raises(BadInputError, match=r"_sb05\.hdf5: cannot be read as HDF5"):
        open_group(bad)
    bad[5] = shutil.copy(paths[5], tmp_path)
    size = len(open(bad[9], "rb").read())
    with open(bad[9], "r+b") as fh:
        fh.truncate(size // 2)
    with pytest.raises(BadInputError, match=r"_sb09\.hdf5"):
        open_group(bad).vis.compute()
