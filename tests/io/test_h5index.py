"""The HDF5 chunk index read straight from the file's v1 B-tree equals h5py's chunk_iter, for the
simulator's files and for datasets of other ranks, chunk shapes, B-tree depths and formats."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from dsacont.io import h5index


def _sorted(index):
    off = index[0]
    order = np.lexsort(off.T[::-1])
    return [np.asarray(a)[order] for a in index]


def _same(a, b):
    for x, y in zip(_sorted(a), _sorted(b)):
        np.testing.assert_array_equal(x, y)


def test_simulator_files_read_from_the_btree(sim_small):
    """The correlator-format files (HDF5 default format) are indexed from their B-trees, and the
    result is exactly chunk_iter's."""
    for path in sim_small[1][:4]:
        with h5py.File(path, "r") as f:
            for name in ("visdata", "nsamples", "flags"):
                d = f["Data"][name]
                direct = h5index._via_btree(d)  # raises if the file were not read directly
                assert len(direct[1]) == d.id.get_num_chunks() > 1
                _same(direct, h5index._via_chunk_iter(d))
                _same(h5index.chunk_index(d), direct)


@pytest.mark.parametrize("libver", ["earliest", "latest"])
def test_other_shapes_depths_and_formats(tmp_path, libver):
    """Ranks 2-4, edge chunks, unallocated chunks and B-trees of several levels (thousands of
    chunks); libver='latest' files (other index types) fall back to chunk_iter, same answer."""
    rng = np.random.default_rng(0)
    path = tmp_path / f"t_{libver}.h5"
    with h5py.File(path, "w", libver=libver) as f:
        a = f.create_dataset("a", shape=(1000, 7), chunks=(3, 2), dtype="<f4")
        a[...] = rng.standard_normal((1000, 7))
        b = f.create_dataset("b", shape=(50, 1, 20, 2), chunks=(4, 1, 6, 1), dtype="<c8")
        b[...] = 1
        c = f.create_dataset("c", shape=(100, 10, 3), chunks=(10, 10, 3), dtype="u1")
        c[:30] = 1  # only the first 3 chunks allocated
        c[70:80] = 2
    with h5py.File(path, "r") as f:
        for name in ("a", "b", "c"):
            d = f[name]
            got = h5index.chunk_index(d)
            _same(got, h5index._via_chunk_iter(d))
            if libver == "earliest":
                h5index._via_btree(d)
            else:
                with pytest.raises(h5index._Unsupported):
                    h5index._via_btree(d)
        assert len(h5index.chunk_index(f["a"])[1]) == 334 * 4
        assert len(h5index.chunk_index(f["c"])[1]) == 4


def test_disagreement_with_hdf5_falls_back(sim_small, monkeypatch, caplog):
    """Should the direct read ever disagree with HDF5 on a checked chunk, chunk_iter is used."""
    real = h5index._via_btree

    def shifted(dset):
        off, addr, size, mask = real(dset)
        return off, addr + 8, size, mask

    monkeypatch.setattr(h5index, "_via_btree", shifted)
    with h5py.File(sim_small[1][0], "r") as f:
        d = f["Data"]["visdata"]
        with caplog.at_level("WARNING", logger="dsacont.io.h5index"):
            got = h5index.chunk_index(d)
        assert "disagrees" in caplog.text
        _same(got, h5index._via_chunk_iter(d))
