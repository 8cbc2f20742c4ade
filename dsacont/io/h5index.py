"""Where the chunks of a chunked HDF5 dataset are in its file: the chunk index, read fast.

The UVH5 array backend reads the correlator's files by their chunks
(:class:`dsacont.io.uvh5_backend.SubbandReader`),
so it needs every chunk's position in the dataset and byte offset in the file. h5py's
``DatasetID.chunk_iter`` gives them through a Python callback per chunk, holding the GIL; a
full-size group has ~200,000 chunks. Files written with HDF5's default ("earliest") format keep
the chunk index in a version-1 B-tree, whose nodes are a few kB of fixed-size records:
:func:`chunk_index` reads them directly (``os.pread`` + numpy), several times faster and without
holding the GIL (figures: ``benchmarks/README.md``, Conversion).

Format (HDF5 File Format Specification 3.0, sections III.A.1, IV.A.1.a, IV.A.2.i):

- version-1 object header: prefix (version 1, message count, header size), then messages of
  (type u16, size u16, flags u8, 3 reserved bytes, data), 8-byte aligned; a continuation message
  (type 0x10) points to another block of messages;
- data layout message (type 0x08) version 3, class 2 (chunked): dimensionality ``k`` (the
  dataset's rank + 1), the B-tree's address, ``k`` u32 chunk dimensions (the last is the element
  size);
- version-1 B-tree node: ``TREE``, node type (1 = raw data chunks), level, entries used ``n``,
  two sibling addresses, then ``n`` (key, child) pairs and a final key; a chunk key is (chunk size
  u32, filter mask u32, ``k`` u64 element offsets). Children of level-0 nodes are chunk addresses.

Anything else (another superblock, object header or layout version, another index type as in
files written with ``libver='latest'``, 4-byte addresses, a node that does not parse) falls back
to ``chunk_iter``. A few chunks picked at random are always checked against HDF5's own
``get_chunk_info_by_coord``.
"""
from __future__ import annotations

import logging
import operator
import os

import h5py
import numpy as np

log = logging.getLogger(__name__)

__all__ = ["chunk_index"]

_U16 = np.dtype("<u2")
_U32 = np.dtype("<u4")
_U64 = np.dtype("<u8")
# chunks checked against HDF5 per dataset
N_CHECKS = 3


class _Unsupported(Exception):
    """Raised when a file's chunk index is not one :func:`_btree_index` reads."""


def _u(buf, pos, dt):
    return int(np.frombuffer(buf, dt, count=1, offset=pos)[0])


def _layout_message(fd, header_addr: int):
    """(B-tree address, chunk dims incl. the element size) from a v1 object header's layout message."""
    pre = os.pread(fd, 16, header_addr)
    if len(pre) < 16 or pre[0] != 1:
        raise _Unsupported("object header version")
    nmsg = _u(pre, 2, _U16)
    blocks = [(header_addr + 16, _u(pre, 8, _U32))]
    seen = 0
    while blocks and seen < nmsg:
        addr, size = blocks.pop(0)
        buf = os.pread(fd, size, addr)
        pos = 0
        while pos + 8 <= len(buf) and seen < nmsg:
            mtype, msize = _u(buf, pos, _U16), _u(buf, pos + 2, _U16)
            data = buf[pos + 8: pos + 8 + msize]
            seen += 1
            if mtype == 0x10:  # continuation
                blocks.append((_u(data, 0, _U64), _u(data, 8, _U64)))
            elif mtype == 0x08:  # data layout
                if data[0] != 3 or data[1] != 2:
                    raise _Unsupported(f"layout message version {data[0]} class {data[1]}")
                k = data[2]
                return _u(data, 3, _U64), np.frombuffer(data, _U32, count=k, offset=11).astype(np.int64)
            pos += 8 + msize
    raise _Unsupported("no layout message")


def _btree_index(fd, root: int, k: int):
    """Every leaf entry of a v1 raw-data-chunk B-tree: (offsets (n, k), addresses, sizes, masks)."""
    entry = np.dtype([("size", _U32), ("mask", _U32), ("off", _U64, (k,)), ("child", _U64)])
    leaves = []
    stack = [root]
    nodes = 0
    while stack:
        addr = stack.pop()
        nodes += 1
        if nodes > 1_000_000:
            raise _Unsupported("B-tree too large")
        head = os.pread(fd, 24, addr)
        if len(head) < 24 or head[:4] != b"TREE" or head[4] != 1:
            raise _Unsupported(f"no raw-data B-tree node at {addr}")
        level, n = head[5], _u(head, 6, _U16)
        body = os.pread(fd, n * entry.itemsize, addr + 24)
        if len(body) < n * entry.itemsize:
            raise _Unsupported("file ends inside a B-tree node")
        ent = np.frombuffer(body, entry, count=n)
        if level == 0:
            leaves.append(ent)
        else:
            stack.extend(int(c) for c in ent["child"][::-1])
    ent = np.concatenate(leaves) if leaves else np.zeros(0, entry)
    return (ent["off"].astype(np.int64), ent["child"].astype(np.int64), ent["size"].astype(np.int64),
            ent["mask"].astype(np.int64))


def _via_btree(dset):
    """The v1 B-tree read directly; raises _Unsupported when this file is not of that kind."""
    fid = dset.file.id
    if fid.get_create_plist().get_sizes() != (8, 8):
        raise _Unsupported("offset/length sizes")
    info = h5py.h5o.get_info(dset.id)
    path = dset.file.filename
    fd = os.open(path, os.O_RDONLY)
    try:
        root, dims = _layout_message(fd, int(info.addr))
        if tuple(dims[:-1]) != tuple(dset.chunks) or dims[-1] != dset.dtype.itemsize:
            raise _Unsupported(f"layout chunk dims {tuple(dims)} vs {dset.chunks}")
        off, addr, size, mask = _btree_index(fd, root, len(dims))
    finally:
        os.close(fd)
    return off[:, :-1], addr, size, mask


def _via_chunk_iter(dset):
    """h5py's ``chunk_iter`` (StoreInfo records kept as they come, taken apart in C)."""
    rows = []
    dset.id.chunk_iter(rows.append)
    n = len(rows)
    field = operator.attrgetter
    off = np.array(list(map(field("chunk_offset"), rows)), np.int64).reshape(n, len(dset.shape))
    return (off, np.fromiter(map(field("byte_offset"), rows), np.int64, n),
            np.fromiter(map(field("size"), rows), np.int64, n),
            np.fromiter(map(field("filter_mask"), rows), np.int64, n))


def chunk_index(dset, rng=None):
    """Every allocated chunk of the h5py dataset ``dset``.

    Returns
    -------
    offsets : (nchunks, rank) int64    element coordinates of each chunk's first element
    addresses : (nchunks,) int64       byte offset of each chunk in the file
    sizes : (nchunks,) int64           stored bytes of each chunk
    masks : (nchunks,) int64           filter masks (0: every filter applied)

    Read from the version-1 B-tree directly when the file has one, else with h5py's
    ``chunk_iter``; ``N_CHECKS`` chunks at random are compared with HDF5's own answer, and a
    disagreement (which would be a bug here) falls back to ``chunk_iter`` with a warning.
    """
    try:
        out = _via_btree(dset)
        off, addr, size = out[0], out[1], out[2]
        rng = np.random.default_rng() if rng is None else rng
        for i in (rng.integers(0, len(addr), size=min(N_CHECKS, len(addr))) if len(addr) else ()):
            ci = dset.id.get_chunk_info_by_coord(tuple(int(x) for x in off[i]))
            if ci.byte_offset != addr[i] or ci.size != size[i]:
                log.warning("%s %s: the chunk index read from the B-tree disagrees with HDF5 at %s; "
                            "using chunk_iter", dset.file.filename, dset.name, tuple(off[i]))
                return _via_chunk_iter(dset)
    except (_Unsupported, OSError, ValueError, AttributeError, KeyError) as exc:
        log.debug("%s %s: chunk index via chunk_iter (%s)", dset.file.filename, dset.name, exc)
        return _via_chunk_iter(dset)
    return out
