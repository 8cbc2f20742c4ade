"""The UVH5 array backend (:class:`dsacont.io.uvh5_backend.SubbandReader`) and its chunk gathers:
exactly what h5py reads, for any chunk shape and time slice, through a mapping or a copy."""
from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def small_ds(sim_small):
    from dsacont.io.uvh5 import open_group

    return open_group(sim_small[1])


def test_gather_chunks_any_chunk_shape():
    """The chunk gathers rebuild a (rows, chans, pols) array from its chunks stored in any order,
    with edge chunks stored whole, for any time slice."""
    from dsacont.io.kernels import gather_chunks, gather_chunks_p1

    rng = np.random.default_rng(7)
    full = (rng.standard_normal((50, 10, 2)) + 1j * rng.standard_normal((50, 10, 2))).astype(np.complex64)
    for R, C, P in ((8, 4, 1), (16, 3, 2), (7, 10, 2)):
        gshape = (-(-50 // R), -(-10 // C), -(-2 // P))
        order = rng.permutation(int(np.prod(gshape)))
        src = np.zeros(order.size * R * C * P, np.complex64)
        grid = np.empty(gshape, np.int64)
        for slot, k in enumerate(order):
            rk, ck, pk = np.unravel_index(k, gshape)
            chunk = np.zeros((R, C, P), np.complex64)
            part = full[rk * R:(rk + 1) * R, ck * C:(ck + 1) * C, pk * P:(pk + 1) * P]
            chunk[:part.shape[0], :part.shape[1], :part.shape[2]] = part
            src[slot * R * C * P:(slot + 1) * R * C * P] = chunk.ravel()
            grid[rk, ck, pk] = slot * R * C * P
        for r0, r1 in ((0, 50), (3, 29), (R, 2 * R)):
            for rev in (False, True):  # rev: channels reversed on the way
                want = full[r0:r1, ::-1] if rev else full[r0:r1]
                out = np.empty((r1 - r0, 10, 2), np.complex64)
                gather_chunks(src, grid, R, C, P, r0, r1, rev, out)
                np.testing.assert_array_equal(out, want)
                if P == 1:
                    out[:] = 0
                    gather_chunks_p1(src, grid, R, C, r0, r1, rev, out)
                    np.testing.assert_array_equal(out, want)


def _h5py_ascending(path, name, t0, t1, nbl):
    """Integrations t0..t1 of Data/<name> read by h5py itself, channels ascending in frequency:
    (t1 - t0, nbl, nchan, npol)."""
    import h5py

    with h5py.File(path, "r") as f:
        d = f["Data"][name]
        raw = d[t0 * nbl:t1 * nbl]
        freq = np.asarray(f["Header/freq_array"][()]).ravel()
    raw = raw.reshape(t1 - t0, nbl, raw.shape[-2], raw.shape[-1])
    return raw[:, :, ::-1] if freq[0] > freq[-1] else raw


@pytest.mark.parametrize("mmap_min", [0, 1 << 40])
def test_subband_reader_matches_loader(small_ds, mmap_min, monkeypatch):
    """The chunk-table reader returns exactly what h5py reads (pyuvdata-checked in test_uvh5), for
    any time slice, through a mapping or a copy."""
    from dsacont.io import uvh5_backend
    from dsacont.io.uvh5_backend import SubbandReader as _SubbandReader

    monkeypatch.setattr(uvh5_backend, "MMAP_MIN_BYTES", mmap_min)

    nbl = small_ds.sizes["baseline"]
    nt = small_ds.sizes["time"]
    for k in (0, 7, 15):
        path = small_ds.attrs["source_files"][k]
        r = _SubbandReader(path, nbl)
        assert all(t is not None for t in r.tables.values())  # the simulator writes chunked, unfiltered files
        for (t0, t1) in ((0, small_ds.sizes["time"]), (1, 3)):
            for name in ("visdata", "nsamples", "flags"):
                want = _h5py_ascending(path, name, t0, t1, nbl)
                got = r.read(name, t0, t1, scratch={})
                np.testing.assert_array_equal(got[:, :, ::-1] if r.flip else got, want)
                np.testing.assert_array_equal(r.read(name, t0, t1, scratch={}, ascending=True), want)
            # baseline ranges of every integration (the fused flag pass)
            want = _h5py_ascending(path, name, 0, nt, nbl)[:, 3:17]
            got = r.read_baselines(name, 3, min(17, nbl), small_ds.sizes["time"], scratch={})
            np.testing.assert_array_equal(got[:, :, ::-1] if r.flip else got, want)
            got = r.read_baselines(name, 3, min(17, nbl), small_ds.sizes["time"], scratch={}, ascending=True)
            np.testing.assert_array_equal(got, want)


def _mappings_of(path):
    """How many of this process's memory mappings are of ``path`` (Linux /proc/self/maps)."""
    import os

    real = os.path.realpath(path)
    with open("/proc/self/maps") as f:
        return sum(1 for line in f if line.rstrip().endswith(real))


@pytest.mark.skipif(not __import__("os").path.exists("/proc/self/maps"), reason="needs /proc/self/maps")
def test_a_mapping_still_viewed_after_a_read_neither_fails_it_nor_stays_mapped(small_ds, monkeypatch):
    """A full-size hour lost a conversion attempt to ``BufferError: cannot close exported pointers
    exist``: the reader closed its mapping while a view of it was still alive. A view that
    outlives the read (held here by the gather, as a traceback frame or a compiler's cache
    would) must not fail the read, and the file must be unmapped once the view goes."""
    from dsacont.io import uvh5_backend
    from dsacont.io.uvh5_backend import SubbandReader as _SubbandReader

    monkeypatch.setattr(uvh5_backend, "MMAP_MIN_BYTES", 0)
    nbl, nt = small_ds.sizes["baseline"], small_ds.sizes["time"]
    path = small_ds.attrs["source_files"][3]
    r = _SubbandReader(path, nbl)
    held = []
    gather = r._gather

    def gather_and_hold(src, *args):
        held.append(src[:8])  # a view of the mapping that outlives the read
        return gather(src, *args)

    monkeypatch.setattr(r, "_gather", gather_and_hold)
    before = _mappings_of(path)
    got = r.read_baselines("visdata", 0, nbl, nt, ascending=True)
    np.testing.assert_array_equal(got, _h5py_ascending(path, "visdata", 0, nt, nbl))
    np.testing.assert_array_equal(r.read("visdata", 1, 3, ascending=True),
                                  _h5py_ascending(path, "visdata", 1, 3, nbl))
    assert r.uniform("visdata", 0, nt) is None  # the simulator's visibilities differ
    assert held and _mappings_of(path) > before  # still mapped while viewed
    held.clear()
    assert _mappings_of(path) == before
