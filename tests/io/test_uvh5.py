"""The lazy loader against real simulated HDF5 files and against pyuvdata's reading of them."""
from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from dsacont.errors import BadInputError
from dsacont.io import uvh5 as loader
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


def test_encoding_names_the_files_until_the_data_change(sim_small):
    """open_group records its files in encoding['source']; group_files gives them back only while
    the data are exactly what was opened (coordinates may change), so a consumer knows when it may
    read the files itself."""
    from dsacont.io.uvh5 import group_files

    _, paths = sim_small
    ds = open_group(paths)
    assert ds.encoding["source"] == tuple(paths)
    for v in ("vis", "flags", "nsamples"):
        assert ds[v].encoding["source"] == tuple(paths) and ds[v].encoding["original_shape"] == ds[v].shape
    assert group_files(ds) == list(paths)
    assert group_files(ds.copy()) == list(paths)
    assert group_files(ds.assign_coords(time=ds.time + 0.25)) == list(paths)
    scaled = ds.copy()
    scaled["vis"] = ds.vis * 2
    reordered = ds.copy()
    reordered["flags"] = ds.flags.copy(data=ds.flags.data[::-1])
    for changed in (ds.isel(time=slice(0, 2)), ds.isel(time=list(range(ds.sizes["time"]))[::-1]), ds.roll(time=1),
                    scaled, reordered, ds.chunk({"time": 3})):
        assert group_files(changed) is None
    holey = open_group([None if p.endswith("_sb07.hdf5") else p for p in paths], allow_missing=True)
    assert group_files(holey) == [None if k == 7 else p for k, p in enumerate(paths)]


def test_lazy_dataset_pickles(sim_small):
    """The array backend travels to Dask workers as paths (no open file in the graph)."""
    import pickle

    _, paths = sim_small
    ds = open_group(paths)
    ds.vis.data[2:5, :, :10].compute()  # the readers exist now, with open files
    vis = pickle.loads(pickle.dumps(ds.vis.data))
    np.testing.assert_array_equal(vis[2:5].compute(), ds.vis.data[2:5].compute())


def test_header_and_data_scan_for_the_watcher(sim_small, tmp_path):
    from dsacont.io.uvh5 import read_subband_header, scan_subband_data

    _, paths = sim_small
    h = read_subband_header(paths[3])
    assert h.nblts == h.ntimes * h.nbls and h.freq[0] > h.freq[-1] and h.pols.tolist() == [-5, -6]
    assert scan_subband_data(paths[3]) == 0 and scan_subband_data(paths[3], check_values=False) == 0
    bad = shutil.copy(paths[4], tmp_path)
    with h5py.File(bad, "r+") as f:
        v = f["Data/visdata"]
        block = v[0:2]
        block[1, 0, 3, 1] = np.nan
        v[0:2] = block
    assert scan_subband_data(bad) == 1
    with open(bad, "r+b") as fh:
        fh.truncate(len(open(paths[4], "rb").read()) // 2)
    with pytest.raises(BadInputError, match=r"_sb04\.hdf5"):
        read_subband_header(bad) and scan_subband_data(bad)
