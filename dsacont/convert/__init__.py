"""Conversion: a subband group (the lazy Dataset of :func:`dsacont.io.uvh5.open_group`) to a
CASA Measurement Set, computed with Dask and numba, written by one writer.

Decisions
---------
**16 spectral windows of 48 channels** (one per subband), ascending: SPW 0 is the lowest
subband (sb15), SPW 15 the highest (sb00); channels ascend inside each SPW.
CASA's ``bandpass`` solves and normalises (``solnorm``) per SPW, which is exactly the per-subband
solution the operators want (each subband passes through its own correlator node and
digital filter; solutions must not be combined across subbands). ``gaincal`` can still solve
one gain across all SPWs (``combine='spw'``) or per SPW; ``tclean`` images all SPWs together
(``specmode='mfs'``) with no penalty; per-subband flagging and selection are ``spw='3'``.
A single 768-channel SPW would force a band-wide ``solnorm`` and lose the subband boundaries.
All SPWs share one POLARIZATION row (XX, YY) and have one DATA_DESCRIPTION each.

**One common phase centre** (``phase="common"``, the default): the meridian ``HADEC(0, dec)``
at the group's mid-time (mean of the integration centres), converted to ICRS; every
integration is phase-rotated to it (numba kernel, float64 phases) and its UVW recomputed, so a
5-minute MS images as 5 minutes (the old pipeline imaged one 13-s field of 24). The FIELD
table has one row named after the group timestamp. ``phase="per_integration"`` keeps the
correlator's layout: one field per integration, each the meridian at that integration's time
(FIELD names ``<timestamp>_NN``), SCAN_NUMBER = field + 1.

**Rows** are ordered (time, spw, baseline): sorted by TIME, and one (time, spw) is a
contiguous run of ``nbl`` rows, so each computed block is written with a few ``putcol``
calls. **ANTENNA** has all 117 pads (row = antenna number, names '1'..'117', ECEF from the
files' ``antenna_positions`` + array centre, 4.65 m, ALT-AZ), so antenna IDs are the same in
every MS whatever subset is active, and calibration tables transfer between groups.
**WEIGHT** is the channel-mean nsamples per polarisation, **SIGMA** = 1/sqrt(WEIGHT); samples
with nsamples == 0 are flagged.

Execution
---------
One pass over the data. The MS is built in a staging directory and moved into place atomically
(:func:`dsacont.io.ms.move_into_place`, an ``os.replace``): ``<stage>/tmp`` when it is on the
output's filesystem (so the move is a rename and every byte reaches the disk once), else tmpfs
when it has room, else ``<stage>/tmp`` (then the move copies). The *skeleton* (every row, all
metadata and subtables) is made in a thread while the first blocks are read and computed (at most
``PREFETCH_BLOCKS`` blocks wait), by :func:`dsacont.io.ms.build_skeleton`:

- the first group of a layout (array, band, row structure) is built with casatools. Casacore
  zero-fills every tile when it closes the table, so this is done on tmpfs and copied to the
  staging directory without its bulk tile files, which are created sparse there
  (:meth:`dsacont.io.ms.TileFiles.relocate`). The verified skeleton minus its bulk files (~15 MB)
  is kept as a *template* in ``<stage>/tmp/ms-templates/<key>``.
- every later group of that layout is copied from its template and stamped with its own TIME,
  UVW (written into its tiles) and per-group subtables (FIELD, SOURCE, OBSERVATION, FEED time,
  HISTORY): 0.4-0.6 s instead of 1.5-2.5 CPU-s. A test compares every column of every table
  with a skeleton built from scratch; a damaged template is rebuilt. ``use_templates=False``
  turns this off.

DATA/FLAG/WEIGHT/SIGMA are then written straight into their ``TiledColumnStMan`` tile files
(:class:`dsacont.io.ms.TileFiles`: the layout and byte/bit order are verified on probe rows
first; any surprise falls back to casatools ``putcol``). Blocks are (``time`` chunk, one
subband): given files, each worker thread reads them by their HDF5 chunk tables
(:class:`_SubbandReader`: a short-lived mapping + a numba gather that also puts the channels in
ascending order, no h5py per-chunk calls, GIL released), runs the numba :func:`rotate_block_kernel` and :func:`flag_weight_kernel`
(phase rotation with float64 phases, conjugation, flags, weights) and ``pwrite``s its rows (one
writer per column file at a time); given a Dataset, blocks come from its dask
arrays. With ``flag=True`` and files, the RFI flags are computed in the same pass
(:func:`_fused_flag_pass`: baseline blocks exactly as :func:`dsacont.flagging.flag_dataset` cuts
them, so the flags are identical; the tiles are written in baseline ranges). With a
``distributed`` client as the current scheduler (LocalCluster or a ``dask-scheduler`` address)
the blocks are computed on the workers and the client writes (flags first, then the blocks).

Performance (``benchmarks/convert.py``, full-size group 2.33 GB -> 1.48 GB MS, this 2-core
machine, warm page cache; figures in ``benchmarks/README.md``): 1.4-1.8 s per group in the
streaming service's steady state (same process, template present; 2.4-2.7 CPU-s), 5.7-7.2 s for
the first group in a new process (imports and IERS tables ~2 s, the casatools skeleton), 4.8-5.1 s
for a new process once the template exists; 0.98 GB peak RSS. pyuvdata's path: 36.8-39.8 s, 6.9 GB.
The I/O floor (read the input, write the MS's bytes; one thread) takes 0.5-0.9 s depending on the
VM's memory state, so a steady-state group is 1.75-3.5x the floor (median of three runs: 2.3x). Per steady-state group, in CPU-s: opening the group
(headers through h5py) ~0.4, gathering the visibilities from their chunks (with the channel
reversal, plus the chunk indexes and the nsamples/flags uniformity checks) ~1.1, the rotation
kernel ~0.4, page-cache writes ~0.35, the stamped skeleton ~0.2.
"""
from __future__ import annotations

import argparse
import logging
import mmap
import os
import shutil
import sys
import threading
import time as _time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numba
import numpy as np

from dsacont.io import h5index
from dsacont.io import ms as msio
from dsacont.convert import phasing
from dsacont.errors import BadInputError
from dsacont.telescope import SPEED_OF_LIGHT

log = logging.getLogger(__name__)

__all__ = ["convert_group", "to_zarr", "phase_centre", "phase_dataset", "cli"]

PHASE_MODES = ("common", "per_integration")
TMPFS = "/dev/shm"
TMPFS_MARGIN_BYTES = 1 << 30
# reads at least this large go through a short-lived mmap instead of a copy
MMAP_MIN_BYTES = 1 << 20
# blocks computed ahead while the MS skeleton is being built (~35 MB each at full size)
PREFETCH_BLOCKS = 12
# skeleton templates (msio.build_skeleton) live in <stage>/tmp/<this>
TEMPLATE_DIRNAME = "ms-templates"
# seconds spent in each phase of the last convert_group call in this process (benchmarks read it)
LAST_PROFILE: dict = {}


# ----------------------------------------------------------------------------- phase centre
def phase_centre(ds, phase: str = "common") -> dict:
    """The phase centre(s) a group is rotated to.

    Parameters
    ----------
    ds : xarray.Dataset   the loader's Dataset (uses ``time`` and ``attrs['phase_center_dec']``)
    phase : 'common' | 'per_integration'

    Returns
    -------
    dict with ``ra``, ``dec`` (nfield,) radians ICRS; ``names`` (nfield,) str;
    ``field_of_time`` (ntime,) int field index of each integration; ``jd_mid`` float.
    """
    if phase not in PHASE_MODES:
        raise ValueError(f"phase must be one of {PHASE_MODES}, got {phase!r}")
    times = np.asarray(ds["time"].values, dtype=float)
    dec0 = float(ds.attrs["phase_center_dec"])
    ts = str(ds.attrs.get("group_timestamp", "group"))
    jd_mid = float(0.5 * (times.min() + times.max()))
    if phase == "common":
        ra, dec = phasing.meridian_icrs(jd_mid, dec0)
        return dict(ra=np.array([ra]), dec=np.array([dec]), names=[ts], field_of_time=np.zeros(times.size, int),
                    jd_mid=jd_mid)
    ra, dec = phasing.hadec_to_icrs(0.0, dec0, times)
    return dict(ra=ra, dec=dec, names=[f"{ts}_{i:02d}" for i in range(times.size)],
                field_of_time=np.arange(times.size), jd_mid=jd_mid)


def _geometry(ds, centre) -> dict:
    """Per-integration geometry: new uvw (ntime, nbl, 3) and w_new - w_old (ntime, nbl)."""
    times = np.asarray(ds["time"].values, dtype=float)
    f = centre["field_of_time"]
    rot = phasing.uvw_rotation(times, centre["ra"][f], centre["dec"][f])
    antpos = np.asarray(ds["antenna_position"].values, dtype=float)
    a1 = np.asarray(ds["antenna1"].values)
    a2 = np.asarray(ds["antenna2"].values)
    s_old = phasing.hadec_direction_ecef(float(ds.attrs["phase_center_dec"]))
    uvw = phasing.baseline_uvw(rot, antpos, a1, a2)
    dw = phasing.delta_w(rot[:, 2, :], s_old, antpos, a1, a2)
    return dict(uvw=uvw, dw=dw, rot=rot)


def phase_dataset(ds, phase: str = "common"):
    """The Dataset rotated to :func:`phase_centre` (lazy): ``vis`` rotated, ``uvw`` recomputed,
    attrs ``phase_center_ra``/``phase_center_dec_icrs`` (rad, first field) and coordinate
    ``field`` (time) added. Everything else unchanged."""
    centre = phase_centre(ds, phase)
    geo = _geometry(ds, centre)
    vis = phasing.rotate_vis(ds["vis"].data, geo["dw"], np.asarray(ds["frequency"].values, float))
    out = ds.copy()
    out["vis"] = (ds["vis"].dims, vis)
    out = out.assign_coords(
        uvw=(("time", "baseline", "uvw_dim"), geo["uvw"]),
        field=("time", centre["field_of_time"].astype(np.int32)),
    )
    out.attrs = dict(ds.attrs)
    out.attrs.update(phase_mode=phase, phase_center_ra=float(centre["ra"][0]),
                     phase_center_dec_icrs=float(centre["dec"][0]), phase_center_frame="ICRS")
    return out


def to_zarr(ds, store, *, phase: str | None = "common", **kwargs):
    """Write the (phased) Dataset to a zarr store for notebook analysis; returns ``store``.

    ``phase=None`` writes ``ds`` as given. A string store path is written next to itself and
    renamed into place. Extra keyword arguments go to ``xarray.Dataset.to_zarr``.
    """
    out = phase_dataset(ds, phase) if phase else ds
    out = out.copy()
    out.attrs = {k: (list(map(str, v)) if isinstance(v, (list, tuple)) else v) for k, v in out.attrs.items()}
    for name in list(out.variables):
        out[name].encoding = {}
    if isinstance(store, (str, os.PathLike)):
        final = Path(store)
        tmp = final.parent / f".{final.name}.tmp{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        out.to_zarr(str(tmp), mode="w", **kwargs)
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
        return final
    out.to_zarr(store, mode="w", **kwargs)
    return store


# ----------------------------------------------------------------------------- helpers
def _spw_layout(ds):
    """SPW boundaries from the ``subband`` coordinate: list of (f0, f1, subband)."""
    sb = np.asarray(ds["subband"].values)
    edges = np.flatnonzero(np.diff(sb) != 0) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [sb.size]])
    spws = [(int(a), int(b), int(sb[a])) for a, b in zip(starts, ends)]
    nchan = {b - a for a, b, _ in spws}
    if len(nchan) != 1:
        raise ValueError(f"subbands have different channel counts {sorted(nchan)}; cannot lay out SPWs")
    return spws


def _estimate_ms_bytes(nrows, nchan, npol) -> int:
    return int(nrows * (npol * nchan * 8 + npol * nchan / 8 + 24 + 16 + 80) * 1.05) + (8 << 20)


def _pick_tmp_root(tmp_dir, paths, need_bytes, ms_path=None) -> Path:
    """Where the MS is built: ``tmp_dir`` if given; else ``<stage>/tmp`` when it is on the
    output's filesystem (the move is then a rename: every byte written once); else tmpfs when it
    has room (then one copy to the output's filesystem); else ``<stage>/tmp``."""
    if tmp_dir is not None:
        return Path(tmp_dir)
    if ms_path is not None:
        try:
            Path(paths.tmp).mkdir(parents=True, exist_ok=True)
            Path(ms_path).parent.mkdir(parents=True, exist_ok=True)
            if os.stat(paths.tmp).st_dev == os.stat(Path(ms_path).parent).st_dev:
                return Path(paths.tmp)
        except OSError:
            pass
    if _tmpfs_has_room(need_bytes):
        return Path(TMPFS)
    return Path(paths.tmp)


def _same_fs(a, b) -> bool:
    try:
        return os.stat(a).st_dev == os.stat(b).st_dev
    except OSError:
        return False


def _tmpfs_has_room(need_bytes) -> bool:
    if not (os.path.isdir(TMPFS) and os.access(TMPFS, os.W_OK)):
        return False
    st = os.statvfs(TMPFS)
    return st.f_bavail * st.f_frsize > need_bytes + TMPFS_MARGIN_BYTES


def _client_or_none():
    """The distributed Client when it is dask's current scheduler, else None."""
    try:
        import dask
        from distributed import default_client
    except ImportError:  # pragma: no cover
        return None
    try:
        client = default_client()
    except ValueError:
        return None
    sched = dask.base.get_scheduler()
    if sched is None or getattr(sched, "__self__", None) is client:
        return client
    return None


class _Computer:
    """Where blocks are computed: the distributed client (when it is dask's scheduler) or a local
    thread pool; ``window`` blocks are in flight at a time."""

    def __init__(self, window: int | None = None):
        self.client = _client_or_none()
        if self.client is not None:
            nthreads = sum(self.client.nthreads().values()) or 1
            self.pool = None
        else:
            import dask

            nthreads = int(dask.config.get("num_workers", None) or os.cpu_count() or 1)
            self.pool = ThreadPoolExecutor(max_workers=nthreads, thread_name_prefix="dsacont-convert")
        self.nthreads = nthreads
        self.window = int(window or nthreads + 1)

    def compute_now(self, coll):
        """Compute one collection with every worker/thread (not in the window)."""
        if self.client is not None:
            return self.client.compute(coll).result()
        return coll.compute(scheduler="threads", num_workers=self.nthreads)


# ----------------------------------------------------------------------------- block kernels
@numba.njit(nogil=True, cache=True)
def rotate_block_kernel(vis, dw, freq, flip, uniform, data_out):
    """DATA of one block: ``data_out <- conj(vis * exp(-2j pi freq dw / c))``, channels ascending.

    vis : (nt, nbl, nf, npol) complex64   visibilities, channels in file order
    dw : (nt, nbl) float64                w_new - w_old, metres
    freq : (nf,) float64                  channel frequencies, Hz, ascending (output order)
    flip : bool                           input channels descend (output channel f is input nf-1-f)
    uniform : bool                        ``freq`` is evenly spaced (phases by recurrence)
    data_out : (nt, nbl, nf, npol) complex64

    Phases are computed in float64 (with ``uniform``: the phasor of channel f is the phasor of
    channel 0 times the channel step's phasor f times, ~1e-15 rad of rounding over a subband;
    else sin/cos per channel); the rotation itself is done in float32, the data's precision
    (relative error ~1e-7). Reversed channels (``flip``) are ~2x slower than ascending ones:
    :meth:`_SubbandReader.read` can reverse them while gathering instead.
    """
    nt, nbl, nf, npol = vis.shape
    m = nf * npol
    k = -2.0 * np.pi / SPEED_OF_LIGHT
    df = freq[1] - freq[0] if nf > 1 else 0.0
    cr = np.empty(m, np.float32)
    ci = np.empty(m, np.float32)
    # one row (baseline of one integration) = m contiguous (channel, pol) items
    vr = vis.reshape(nt * nbl, m).view(np.float32)
    dr = data_out.reshape(nt * nbl, m).view(np.float32)
    for row in range(nt * nbl):
        t = row // nbl
        b = row - t * nbl
        d = k * dw[t, b]
        c = np.cos(d * freq[0])
        s = np.sin(d * freq[0])
        cs = np.cos(d * df)
        ss = np.sin(d * df)
        for f in range(nf):
            if f > 0:
                if uniform:
                    cn = c * cs - s * ss
                    s = c * ss + s * cs
                    c = cn
                else:
                    c = np.cos(d * freq[f])
                    s = np.sin(d * freq[f])
            for p in range(npol):
                cr[f * npol + p] = c
                ci[f * npol + p] = s
        vrow = vr[row]
        drow = dr[row]
        if flip:
            for f in range(nf):
                for p in range(npol):
                    j = f * npol + p
                    i = (nf - 1 - f) * npol + p
                    drow[2 * j] = vrow[2 * i] * cr[j] - vrow[2 * i + 1] * ci[j]
                    drow[2 * j + 1] = -(vrow[2 * i] * ci[j] + vrow[2 * i + 1] * cr[j])
        else:
            for j in range(m):
                x = vrow[2 * j]
                y = vrow[2 * j + 1]
                drow[2 * j] = x * cr[j] - y * ci[j]
                drow[2 * j + 1] = -(x * ci[j] + y * cr[j])
    return data_out


@numba.njit(nogil=True, cache=True)
def flag_weight_kernel(ns, fl, flip, flag_out, weight_out, sigma_out):
    """FLAG, WEIGHT and SIGMA of one block.

    ns : (nt, nbl, nf, npol) float32   nsamples, channels in file order
    fl : (nt, nbl, nf, npol) bool      the files' flags, same order
    flip : bool                        input channels descend
    flag_out : (nt, nbl, nf, npol) bool           <- fl | (ns == 0), channels ascending
    weight_out, sigma_out : (nt, nbl, npol) float32 <- channel-mean nsamples; 1/sqrt(weight) (0 if 0)
    """
    nt, nbl, nf, npol = ns.shape
    m = nf * npol
    n2 = ns.reshape(nt * nbl, m)
    fl2 = fl.reshape(nt * nbl, m).view(np.uint8)
    fo2 = flag_out.reshape(nt * nbl, m).view(np.uint8)
    for row in range(nt * nbl):
        t = row // nbl
        b = row - t * nbl
        nrow = n2[row]
        frow = fl2[row]
        orow = fo2[row]
        if flip:
            for f in range(nf):
                for p in range(npol):
                    i = (nf - 1 - f) * npol + p
                    orow[f * npol + p] = frow[i] | (nrow[i] == 0)
        else:
            for j in range(m):
                orow[j] = frow[j] | (nrow[j] == 0)
        for p in range(npol):
            acc = 0.0
            for f in range(nf):
                acc += nrow[f * npol + p]
            w = np.float32(acc / nf)
            weight_out[t, b, p] = w
            sigma_out[t, b, p] = np.float32(1.0) / np.sqrt(w) if w > 0 else np.float32(0.0)
    return flag_out


@numba.njit(nogil=True, cache=True)
def rows_all_equal(src, grid, R, C, P, r0, r1, v):
    """True when every item of rows ``r0 .. r1`` of a chunked (rows, chans, pols) dataset equals
    ``v`` (compared as stored: pass bit patterns, e.g. uint32 for float32). ``src``/``grid``/
    ``R, C, P`` as in :func:`gather_chunks`, ``grid`` starting at row chunk ``r0 // R``; all
    ``C * P`` items of each row of a chunk are checked (edge chunks' padding too)."""
    rk0 = r0 // R
    run = C * P
    for rk in range(grid.shape[0]):
        top = (rk0 + rk) * R
        a = max(r0, top) - top
        b = min(r1, top + R) - top
        if b <= a:
            continue
        for ck in range(grid.shape[1]):
            for pk in range(grid.shape[2]):
                base = grid[rk, ck, pk]
                same = True
                for i in range(base + a * run, base + b * run):
                    same &= src[i] == v
                if not same:
                    return False
    return True


def _is_uniform(freq, dw_max) -> bool:
    """Channels evenly spaced to better than 1e-9 rad of phase at the largest |dw|."""
    f = np.asarray(freq, float)
    if f.size < 3:
        return True
    lin = f[0] + np.arange(f.size) * (f[1] - f[0])
    return bool(np.max(np.abs(f - lin)) * 2 * np.pi / SPEED_OF_LIGHT * max(dw_max, 1e-3) < 1e-9)


def _scratch(store, key, shape, dtype):
    """An uninitialised array from ``store`` (reused when shape and dtype match), or new."""
    if store is None:
        return np.empty(shape, dtype)
    a = store.get(key)
    if a is None or a.shape != tuple(shape) or a.dtype != np.dtype(dtype):
        a = store[key] = np.empty(shape, dtype)
    return a


def compute_block(vis, ns, fl, dw, freq, flip=False, scratch=None, nsamples=None):
    """One block of the main table: returns (data, flags, weight, sigma) (see
    :func:`rotate_block_kernel` and :func:`flag_weight_kernel` for shapes and conventions).

    ``nsamples``: every nsamples of the block equals this value and no flag of the files is set
    (``ns`` and ``fl`` are then not read; the correlator's usual case); FLAG is then
    ``nsamples == 0`` everywhere and WEIGHT ``nsamples``. ``scratch``: optional dict of reusable
    output buffers (see :meth:`_SubbandReader.read`)."""
    vis = np.ascontiguousarray(vis, dtype=np.complex64)
    dw = np.ascontiguousarray(dw, dtype=np.float64)
    freq = np.ascontiguousarray(freq, dtype=np.float64)
    nt, nbl, nf, npol = vis.shape
    data = _scratch(scratch, "data", vis.shape, np.complex64)
    flags = _scratch(scratch, "flags", vis.shape, np.bool_)
    weight = _scratch(scratch, "weight", (nt, nbl, npol), np.float32)
    sigma = _scratch(scratch, "sigma", (nt, nbl, npol), np.float32)
    uniform = _is_uniform(freq, float(np.max(np.abs(dw))) if dw.size else 0.0)
    rotate_block_kernel(vis, dw, freq, bool(flip), uniform, data)
    if nsamples is None:
        flag_weight_kernel(np.ascontiguousarray(ns, dtype=np.float32), np.ascontiguousarray(fl, dtype=np.bool_),
                           bool(flip), flags, weight, sigma)
    else:
        w = np.float32(nsamples)
        flags.fill(w == 0)
        weight.fill(w)
        sigma.fill(np.float32(1.0) / np.sqrt(w) if w > 0 else np.float32(0.0))
    return data, flags, weight, sigma


# ----------------------------------------------------------------------------- direct HDF5 reads
@numba.njit(nogil=True, cache=True)
def gather_chunks(src, grid, R, C, P, r0, r1, rev, out):
    """Copy rows ``r0 .. r1`` of a chunked (rows, chans, pols) dataset into ``out``
    (r1 - r0, chans, pols) from its raw chunks, in output order.

    src: 1-D array of the dataset's items (file bytes viewed as the dtype); grid: (row chunks,
    chan chunks, pol chunks) int64 item offset of each chunk in ``src``; R, C, P: the chunk shape
    (a chunk stores R*C*P items in C order; edge chunks are stored whole); rev: reverse the
    channel axis (file channel c goes to ``out[:, chans - 1 - c]``)."""
    nr, nf, npol = out.shape
    nck = grid.shape[1]
    npk = grid.shape[2]
    for r in range(r0, r1):
        rk = r // R
        rr = r - rk * R
        o = out[r - r0]
        for ck in range(nck):
            ch = min(C, nf - ck * C)
            for pk in range(npk):
                ph = min(P, npol - pk * P)
                base = grid[rk, ck, pk] + rr * C * P
                for c in range(ch):
                    oc = nf - 1 - (ck * C + c) if rev else ck * C + c
                    for p in range(ph):
                        o[oc, pk * P + p] = src[base + c * P + p]
    return out


@numba.njit(nogil=True, cache=True)
def gather_chunks_p1(src, grid, R, C, r0, r1, rev, out):
    """:func:`gather_chunks` for chunks of one polarisation (P = 1, what the correlator writes):
    the same result, ~2x faster (a contiguous run of C items per chunk and row)."""
    nr, nf, npol = out.shape
    nck = grid.shape[1]
    for r in range(r0, r1):
        rk = r // R
        rr = r - rk * R
        orow = r - r0
        for ck in range(nck):
            ch = min(C, nf - ck * C)
            for pk in range(npol):
                base = grid[rk, ck, pk] + rr * C
                if rev:
                    top = nf - 1 - ck * C
                    for c in range(ch):
                        out[orow, top - c, pk] = src[base + c]
                else:
                    for c in range(ch):
                        out[orow, ck * C + c, pk] = src[base + c]
    return out


class _SubbandReader:
    """Reads ``Data/{visdata,nsamples,flags}`` of one subband file by time slices, in the file's
    channel order (``flip`` says whether they descend).

    Chunked, unfiltered datasets (what the correlator writes) are read without h5py's per-chunk
    machinery: the chunk table is read once (:func:`dsacont.io.h5index.chunk_index`), then the byte
    range holding the requested rows is mapped (``MMAP_MIN_BYTES`` and up; smaller ranges are read
    with one ``preadv``) and scattered by :func:`gather_chunks` — both release the GIL, so
    subbands are read in parallel threads. Anything else (filters, big-endian, contiguous or
    unaligned layouts, fill-value chunks) is read with h5py."""

    NAMES = ("visdata", "nsamples", "flags")

    def __init__(self, path, nbls):
        import h5py

        self.path = str(path)
        self.nbls = int(nbls)
        self.tables = {}
        self.fd = None
        self._lock = threading.Lock()
        with h5py.File(self.path, "r") as f:
            fr = np.asarray(f["Header/freq_array"][()], float).reshape(-1)
            self.flip = bool(fr.size > 1 and fr[0] > fr[-1])
            for name in self.NAMES:
                d = f["Data"][name]
                self.shape = d.shape
                self.tables[name] = self._table(d)
        self.nf, self.npol = int(self.shape[-2]), int(self.shape[-1])

    @staticmethod
    def _table(d):
        """(dtype, chunk table arrays...) for a direct read, or None."""
        try:
            if d.chunks is None or d.compression is not None or d.id.get_create_plist().get_nfilters():
                return None
            dt = d.dtype
            if dt.byteorder == ">" or dt.kind not in "cfb":
                return None
            if dt.kind == "b" and dt.itemsize != 1:
                return None
            shape, ch = d.shape, d.chunks
            if len(shape) == 4:
                if shape[1] != 1:
                    return None
                ch = (ch[0], ch[2], ch[3])
            elif len(shape) != 3:
                return None
            co, offs, sizes, masks = h5index.chunk_index(d)
        except (AttributeError, TypeError, ValueError, OSError):
            return None
        if not offs.size:
            return None
        nbytes = int(np.prod(d.chunks)) * dt.itemsize
        if np.any(sizes != nbytes) or np.any(masks != 0) or co.ndim != 2:
            return None
        if co.shape[1] == 4:
            co = co[:, [0, 2, 3]]
        if np.any((offs - offs.min()) % dt.itemsize):
            return None
        # every chunk of the regular grid must be allocated (no fill-value chunks)
        nrows, nf, npol = shape[0], shape[-2], shape[-1]
        gshape = (-(-nrows // ch[0]), -(-nf // ch[1]), -(-npol // ch[2]))
        if offs.size != int(np.prod(gshape)) or np.any(co % np.array(ch)):
            return None
        grid = np.full(gshape, -1, np.int64)
        grid[co[:, 0] // ch[0], co[:, 1] // ch[1], co[:, 2] // ch[2]] = offs
        if np.any(grid < 0):
            return None
        return dict(dtype=dt, chunk=ch, nbytes=nbytes, grid=grid)

    @staticmethod
    def _span(tab, r0, r1):
        """Where rows r0..r1 of a directly read dataset are: file bytes [lo, hi) holding their
        chunks, those chunks' grid as item offsets from ``lo``, and r0, r1 counted from the first
        row of the first chunk. Returns (lo, hi, grid, a, b)."""
        R = tab["chunk"][0]
        g = tab["grid"][r0 // R: -(-r1 // R)]
        lo, hi = int(g.min()), int(g.max()) + tab["nbytes"]
        top = (r0 // R) * R
        return lo, hi, np.ascontiguousarray((g - lo) // tab["dtype"].itemsize), r0 - top, r1 - top

    def _map(self, lo: int, hi: int):
        """A read-only mapping of file bytes [lo, hi) and its page-aligned start; (None, 0) when
        the file cannot be mapped (the caller then reads with preadv)."""
        try:
            pa = lo - lo % mmap.ALLOCATIONGRANULARITY
            return mmap.mmap(self._fd(), hi - pa, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ, offset=pa), pa
        except (OSError, ValueError, AttributeError):
            return None, 0

    def _fd(self):
        fd = getattr(self, "fd", None)
        if fd is None:
            with self._lock:
                if getattr(self, "fd", None) is None:
                    self.fd = os.open(self.path, os.O_RDONLY)
                fd = self.fd
        return fd

    def close(self):
        fd, self.fd = getattr(self, "fd", None), None
        if fd is not None:
            os.close(fd)

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def read_baselines(self, name, b0, b1, ntime, scratch=None, ascending=False):
        """(ntime, b1 - b0, nf, npol): baselines b0..b1 of every integration, file channel order,
        or ascending frequency with ``ascending`` (one read of each integration's row range)."""
        out = _scratch(scratch, ("bl", name), (ntime, b1 - b0, self.nf, self.npol), self.dtype(name))
        tab = self.tables[name]
        if tab is not None:
            # one mapping of the whole dataset, one gather per integration (only the pages of
            # the rows gathered are touched)
            R, C, P = tab["chunk"]
            lo = int(tab["grid"].min())
            hi = int(tab["grid"].max()) + tab["nbytes"]
            isz = tab["dtype"].itemsize
            kind = np.uint8 if tab["dtype"].kind == "b" else tab["dtype"]
            grid = tab.get("grid_rel")
            if grid is None:
                grid = tab["grid_rel"] = np.ascontiguousarray((tab["grid"] - lo) // isz)
            m, pa = self._map(lo, hi)
            if m is not None:
                try:
                    src = np.frombuffer(m, dtype=kind, count=(hi - lo) // isz, offset=lo - pa)
                    dst = out.view(np.uint8) if tab["dtype"].kind == "b" else out
                    for t in range(ntime):
                        self._gather(src, grid, R, C, P, t * self.nbls + b0, t * self.nbls + b1,
                                     ascending and self.flip, dst[t])
                    del src
                finally:
                    m.close()
                return out
        sub = {} if scratch is None else scratch.setdefault(("blsub", name), {})
        for t in range(ntime):
            out[t] = self._read_rows(name, t * self.nbls + b0, t * self.nbls + b1, sub, ascending)
        return out

    def dtype(self, name):
        tab = self.tables[name]
        if tab is not None:
            return tab["dtype"]
        import h5py

        with h5py.File(self.path, "r") as f:
            return f["Data"][name].dtype

    def uniform(self, name, t0, t1):
        """The value every item of ``Data/<name>`` holds in integrations t0..t1 (numpy scalar of
        its dtype), or None: values differ, or the dataset is not read directly. One pass over
        the mapped rows (~20x cheaper than gathering them), stopping at the first difference."""
        tab = self.tables[name]
        isz = tab["dtype"].itemsize if tab is not None else 0
        bits = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(isz)
        if bits is None:
            return None
        R, C, P = tab["chunk"]
        r0, r1 = t0 * self.nbls, t1 * self.nbls
        lo, hi, grid, a, _ = self._span(tab, r0, r1)
        m, pa = self._map(lo, hi)
        if m is None:
            return None
        try:
            src = np.frombuffer(m, dtype=bits, count=(hi - lo) // isz, offset=lo - pa)
            first = src[grid[0, 0, 0] + a * C * P]
            same = rows_all_equal(src, grid, R, C, P, r0, r1, first)
            value = np.array(first, bits).view(np.uint8 if tab["dtype"].kind == "b" else tab["dtype"])[()]
            del src
        finally:
            m.close()
        return value if same else None

    def read(self, name, t0, t1, scratch=None, ascending=False):
        """(t1 - t0, nbls, nf, npol) array of integrations t0..t1, file channel order, or
        ascending frequency with ``ascending`` (reversed while gathering, at no extra cost).

        ``scratch``: a dict this reader may keep buffers in and reuse between calls of one
        thread (fresh memory costs page faults: ~2 ms per MB on small VMs); the returned array
        is then one of them, valid until the next call with the same name."""
        out = self._read_rows(name, t0 * self.nbls, t1 * self.nbls, scratch, ascending)
        return out.reshape(t1 - t0, self.nbls, self.nf, self.npol)

    def _read_rows(self, name, r0, r1, scratch=None, ascending=False):
        """(r1 - r0, nf, npol) rows r0..r1 of Data/<name>, file channel order (ascending
        frequency with ``ascending``)."""
        rev = bool(ascending and self.flip)
        tab = self.tables[name]
        if tab is None:
            import h5py

            with h5py.File(self.path, "r") as f:
                d = f["Data"][name]
                raw = d[r0:r1, 0, :, :] if len(d.shape) == 4 else d[r0:r1, :, :]
            return np.ascontiguousarray(raw[:, ::-1] if rev else raw)
        R, C, P = tab["chunk"]
        lo, hi, grid, a, b = self._span(tab, r0, r1)
        isz = tab["dtype"].itemsize
        out = _scratch(scratch, ("out", name), (r1 - r0, self.nf, self.npol), tab["dtype"])
        dst = out.view(np.uint8) if tab["dtype"].kind == "b" else out
        kind = np.uint8 if tab["dtype"].kind == "b" else tab["dtype"]
        m, pa = None, 0
        if hi - lo >= MMAP_MIN_BYTES:
            # large reads: straight from the page cache through a short-lived mapping (no copy)
            m, pa = self._map(lo, hi)
        if m is not None:
            try:
                src = np.frombuffer(m, dtype=kind, count=(hi - lo) // isz, offset=lo - pa)
                self._gather(src, grid, R, C, P, a, b, rev, dst)
                del src
            finally:
                m.close()
            return out
        buf = _scratch(scratch, ("buf", name), ((hi - lo) // isz,), tab["dtype"])
        raw = memoryview(buf.view(np.uint8))
        got = 0
        while got < len(raw):
            n = os.preadv(self._fd(), [raw[got:]], lo + got)
            if not n:
                raise BadInputError(self.path, f"Data/{name}: file ends inside a chunk")
            got += n
        self._gather(buf.view(np.uint8) if tab["dtype"].kind == "b" else buf, grid, R, C, P, a, b, rev, dst)
        return out

    @staticmethod
    def _gather(src, grid, R, C, P, a, b, rev, dst):
        if P == 1:
            gather_chunks_p1(src, grid, R, C, a, b, bool(rev), dst)
        else:
            gather_chunks(src, grid, R, C, P, a, b, bool(rev), dst)


def _files_behind(ds, spws):
    """The subband file of each SPW (None: a missing subband, zeros flagged) when ``ds`` is exactly
    what :func:`dsacont.io.uvh5.open_group` returned, unmodified: every dask layer of ``vis``,
    ``flags`` and ``nsamples`` is the loader's (one read per source file, fills for missing
    subbands, the concatenation). Any selection or transformation adds a layer: then None, and
    the blocks come from the Dataset's own dask arrays."""
    import dask.array as da

    sf = list(ds.attrs.get("source_files", []))
    if len(sf) != 16 or any(not isinstance(p, str) for p in sf):
        return None
    names = {os.path.basename(p) for p in sf if p}
    for var, prefix in (("vis", "visdata"), ("flags", "flags"), ("nsamples", "nsamples")):
        data = ds[var].data if var in ds else None
        if not isinstance(data, da.Array) or not data.name.startswith("concatenate-"):
            return None
        for layer in data.__dask_graph__().layers:
            if layer == data.name or layer.startswith(("full-", "full_like-")):
                continue
            head = layer[len("original-"):] if layer.startswith("original-") else layer
            if not head.startswith(prefix + "-"):
                return None
            rest = head[len(prefix) + 1:]
            if not any(rest.startswith(n + "-") for n in names):
                return None
    out = [sf[sb] or None for _, _, sb in spws]
    return out if any(out) else None


# ----------------------------------------------------------------------------- flags in the same pass
def _fused_flag_pass(ds, tiles, src_files, spws, dw, freq, a1, a2, strategy, flag_mod, comp, ts, progress, prof):
    """One pass over the subband files in baseline blocks: read, RFI-flag, rotate, write.

    Blocks are the baseline chunks :func:`dsacont.flagging.flag_dataset` uses (``block_baselines``,
    spread evenly), each with all integrations and all channels in ascending order, and the same
    inputs (|vis| and the files' flags), so the RFI flags equal ``flag_dataset``'s. Each block is
    then rotated per subband and written as partial tiles (a baseline range of one (time, spw) run
    is contiguous in the tile files). Returns the (time, baseline, frequency, pol) flags
    (files' flags | RFI), as ``flag_dataset`` would."""
    s = flag_mod._as_strategy(strategy)
    ntime, nbl = dw.shape
    nspw = len(spws)
    nf = freq.size
    npol = ds.sizes["polarization"]
    bblocks = flag_mod.baseline_blocks(nbl, s.block_baselines)
    is_auto = np.asarray(a1) == np.asarray(a2)
    static = np.asarray(s.static_channel_mask(freq), dtype=bool)
    flags_all = np.empty((ntime, nbl, nf, npol), dtype=bool)
    readers = [None] * nspw
    readers_lock = threading.Lock()
    local = threading.local()
    stats = {"read": 0.0, "flag": 0.0, "kernel": 0.0, "write": 0.0}
    stats_lock = threading.Lock()

    def reader(si):
        with readers_lock:
            if readers[si] is None:
                r = _SubbandReader(src_files[si], nbl)
                if r.shape[0] != ntime * nbl or r.nf != spws[si][1] - spws[si][0] or r.npol != npol:
                    raise BadInputError(src_files[si], f"Data/visdata has shape {r.shape}, not the group's")
                readers[si] = r
            return readers[si]

    def one(b0, b1):
        sc = getattr(local, "scratch", None)
        if sc is None:
            sc = local.scratch = {}
        nb = b1 - b0
        ta = _time.perf_counter()
        vis = _scratch(sc, "vis", (ntime, nb, nf, npol), np.complex64)
        ns = _scratch(sc, "ns", (ntime, nb, nf, npol), np.float32)
        fl = _scratch(sc, "fl", (ntime, nb, nf, npol), np.bool_)
        for si, (f0, f1, _) in enumerate(spws):
            if src_files[si] is None:  # a missing subband: zeros, flagged (as the loader fills it)
                vis[:, :, f0:f1] = 0
                ns[:, :, f0:f1] = 0
                fl[:, :, f0:f1] = True
                continue
            r = reader(si)
            for name, dst in (("visdata", vis), ("nsamples", ns), ("flags", fl)):
                dst[:, :, f0:f1] = r.read_baselines(name, b0, b1, ntime, sc, ascending=True)
        tb = _time.perf_counter()
        fall = flag_mod.flag_block(np.abs(vis), fl, is_auto[b0:b1], s, static)
        flags_all[:, b0:b1] = fall
        tc = _time.perf_counter()
        tw = 0.0
        for si, (f0, f1, _) in enumerate(spws):
            data, flags, weight, sigma = compute_block(vis[:, :, f0:f1], ns[:, :, f0:f1], fall[:, :, f0:f1],
                                                       dw[:, b0:b1], freq[f0:f1], False, sc)
            tw0 = _time.perf_counter()
            bits = _scratch(sc, "bits", (flags[0].size // 8,), np.uint8)
            for t in range(ntime):
                msio.pack_bits_le(flags[t].reshape(-1), bits)
                tiles.write((t * nspw + si) * nbl + b0, DATA=data[t], FLAG=bits, WEIGHT=weight[t], SIGMA=sigma[t])
            tw += _time.perf_counter() - tw0
        td = _time.perf_counter() - tw
        te = _time.perf_counter()
        with stats_lock:
            for k, dt in (("read", tb - ta), ("flag", tc - tb), ("kernel", td - tc), ("write", te - td)):
                stats[k] += dt
        return nb

    t0 = _time.perf_counter()
    done = 0
    futs = []
    window = max(1, comp.nthreads)  # ~0.3 GB per full-size block in flight
    try:
        for b0, b1 in bblocks:
            futs.append(comp.pool.submit(one, b0, b1))
            while len(futs) >= window:
                done += futs.pop(0).result()
                if progress:
                    log.info("%s: flagged and wrote %d/%d baselines (%.1f s)", ts, done, nbl,
                             _time.perf_counter() - t0)
        while futs:
            done += futs.pop(0).result()
    finally:
        for f in futs:
            f.cancel()
        for f in futs:
            try:
                f.exception()  # wait: no thread may still write when the caller cleans up
            except BaseException:
                pass
        for r in readers:
            if r is not None:
                r.close()
    log.info("%s: RFI flags computed in the write pass (%.1f s, %.2f%% flagged)", ts, _time.perf_counter() - t0,
             100.0 * flags_all.mean())
    prof.update({f"fused_{k}_threads": v for k, v in stats.items()})
    return flags_all


def _read_waterfall(tiles, bl, ntime, spws, nbl, npol):
    """|DATA| of baseline ``bl`` (time, frequency, pol) read back from the DATA tile file."""
    nspw = len(spws)
    nch = spws[0][1] - spws[0][0]
    out = np.zeros((ntime, nspw * nch, npol), np.float32)
    c = tiles.cols["DATA"]
    fd = tiles.fds["DATA"]
    for t in range(ntime):
        for si, (f0, f1, _) in enumerate(spws):
            row = (t * nspw + si) * nbl + bl
            raw = os.pread(fd, nch * npol * 8, tiles._offset("DATA", row))
            out[t, f0:f1] = np.abs(np.frombuffer(raw, np.dtype(c["dtype"])).reshape(nch, npol))
    return out


# ----------------------------------------------------------------------------- main entry
def _write_flag_products(ds, flags_np, wf_bl, wf_amp, qa_dir: Path, ts: str) -> None:
    """Flag summary JSON and waterfall PNG of one group (see ``convert_group(qa_dir=)``)."""
    from dsacont.flagging import flag_summary, plot_waterfall
    from dsacont.io.atomic import write_json_atomic

    qa_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(flag_summary(flags_np, ds), qa_dir / f"{ts}.flags.json")
    if wf_amp is not None:
        nb = flags_np.shape[1]
        # every baseline slot views the chosen baseline's amplitudes (no copy): plot_waterfall
        # draws that one, and the flag fractions of all baselines
        amp = np.broadcast_to(wf_amp[:, None], (wf_amp.shape[0], nb) + wf_amp.shape[1:])
        src = {"amp": amp, "frequency": ds["frequency"].values, "antenna1": ds["antenna1"].values,
               "antenna2": ds["antenna2"].values}
        plot_waterfall(src, flags_np, qa_dir / f"{ts}.waterfall.png", baseline=wf_bl)


def convert_group(
    paths_or_dataset,
    ms_path=None,
    *,
    phase: str = "common",
    flag: bool = True,
    strategy=None,
    paths=None,
    tmp_dir=None,
    chunks=None,
    progress: bool = True,
    window: int | None = None,
    qa_dir=None,
    direct_write: bool = True,
    direct_read: bool = True,
    fuse_flags: bool = True,
    use_templates: bool = True,
) -> Path:
    """Convert one subband group to a CASA Measurement Set; returns the MS path.

    Parameters
    ----------
    paths_or_dataset : list of paths, :class:`dsacont.io.groups.Group`, or xarray.Dataset
        The group (16 subband files) or the Dataset from :func:`dsacont.io.uvh5.open_group`.
    ms_path : path, optional
        Output MS. Default ``<paths.ms>/<group_timestamp>.ms``. Replaced if it exists.
    phase : 'common' | 'per_integration'
        One phase centre for the group (meridian at mid-time, ICRS) or one field per integration.
    flag : bool
        OR the RFI flags of :func:`dsacont.flagging.flag_dataset` (computed first, in one pass)
        into FLAG. Skipped with a log message if the flagging module is unavailable.
    strategy : passed to ``flag_dataset``.
    paths : :class:`dsacont.config.Paths`, optional (default ``get_paths()``).
    tmp_dir : path, optional
        Where the MS is built before the atomic move. Default: ``<stage>/tmp`` when it shares
        the output's filesystem (a rename), else tmpfs when it has room, else ``<stage>/tmp``.
    chunks : dict, optional
        Loader chunks, e.g. ``{"time": 8}`` (frequency chunks are one subband).
    progress : bool
        Log progress (about every 10 %).
    window : int, optional
        Blocks computed ahead of the writer (default: number of threads + 1).
    qa_dir : path, optional
        Where the flag summary ``<timestamp>.flags.json`` (fraction flagged per antenna,
        subband, time...) and the waterfall ``<timestamp>.waterfall.png`` of one cross baseline
        are written when ``flag=True`` (default: beside the MS). The waterfall's amplitudes are
        copied from the blocks on their way to the MS: no extra read.
    direct_write : bool
        Write DATA/FLAG/WEIGHT/SIGMA straight into their tile files when the MS layout checks
        out (:class:`dsacont.io.ms.TileFiles`); False: always casatools ``putcol``.
    direct_read : bool
        Given files, or the loader's Dataset unmodified (:func:`_files_behind`), read the files
        by their HDF5 chunk tables in parallel threads (:class:`_SubbandReader`); False, or a
        selected/transformed Dataset: through the Dataset's dask arrays.
    fuse_flags : bool
        With ``flag=True``, direct reads and writes and no distributed client: compute
        the RFI flags in the same single pass over the files that writes the MS (baseline blocks
        cut exactly as :func:`dsacont.flagging.flag_dataset` cuts them, so the flags are the
        same). False (or when those conditions fail): flags first, then a second read.
    use_templates : bool
        With direct writes, keep the MS skeleton of each new layout as a template in
        ``<stage>/tmp/ms-templates`` and stamp later groups of that layout from it
        (:func:`dsacont.io.ms.build_skeleton`); False: build every skeleton with casatools.
    """
    import xarray as xr

    t_start = _time.perf_counter()
    if paths is None:
        from dsacont.config import get_paths

        paths = get_paths()
    from_files = not isinstance(paths_or_dataset, xr.Dataset)
    if not from_files:
        ds = paths_or_dataset
    else:
        from dsacont.io.uvh5 import open_group

        ds = open_group(paths_or_dataset, chunks=chunks)
    if phase not in PHASE_MODES:
        raise ValueError(f"phase must be one of {PHASE_MODES}, got {phase!r}")

    ts = str(ds.attrs.get("group_timestamp", "group"))
    if ms_path is None:
        ms_path = Path(paths.ms) / f"{ts}.ms"
    ms_path = Path(ms_path).absolute()

    spws = _spw_layout(ds)
    nspw = len(spws)
    nchan = spws[0][1] - spws[0][0]
    times = np.asarray(ds["time"].values, dtype=float)
    ntime = times.size
    a1 = np.asarray(ds["antenna1"].values, dtype=np.int32)
    a2 = np.asarray(ds["antenna2"].values, dtype=np.int32)
    nbl = a1.size
    pols = [str(p) for p in ds["polarization"].values]
    npol = len(pols)
    freq = np.asarray(ds["frequency"].values, dtype=float)
    width = np.asarray(ds["channel_width"].values, dtype=float)
    nrows = ntime * nspw * nbl

    # ---- geometry (small, per integration)
    prof = {"open": _time.perf_counter() - t_start}
    tick = _time.perf_counter()
    centre = phase_centre(ds, phase)
    geo = _geometry(ds, centre)
    prof["geometry"] = _time.perf_counter() - tick
    log.info("%s: phase centre %s RA %.5f Dec %.5f deg (ICRS), %d field(s)", ts, phase,
             np.degrees(centre["ra"][0]), np.degrees(centre["dec"][0]), len(centre["names"]))

    # ---- dask arrays, chunked (time, all baselines, one subband, all pols)
    import dask
    import dask.array as da

    vis = ds["vis"].data
    nsamp = ds["nsamples"].data
    fl = ds["flags"].data
    if not isinstance(vis, da.Array):
        vis, nsamp, fl = (da.from_array(np.asarray(x)) for x in (vis, nsamp, fl))
    tchunks = vis.chunks[0]
    target = (tchunks, (nbl,), (nchan,) * nspw, (npol,))
    vis, nsamp, fl = (x.rechunk(target) if x.chunks != target else x for x in (vis, nsamp, fl))
    # the subband files themselves (read directly), when the Dataset is the loader's, unmodified
    src_files = _files_behind(ds, spws) if direct_read else None

    comp = _Computer(window)
    flags_np = None
    flag_mod = None
    if flag:
        try:
            from dsacont import flagging as flag_mod
        except ImportError as exc:
            log.warning("flagging unavailable (%s): converting without RFI flags", exc)
    # flags fused into the one pass over the files (baseline blocks, as flag_dataset cuts them)
    # when we read the files ourselves, locally, and can write partial tiles; else computed first
    fuse = flag_mod is not None and fuse_flags and src_files is not None and comp.client is None and direct_write

    def _flags_first():
        t0 = _time.perf_counter()
        fda = flag_mod.flag_dataset(ds, strategy)
        fdata = fda.data if hasattr(fda, "data") else fda
        out = np.asarray(comp.compute_now(fdata), dtype=bool)
        log.info("%s: RFI flags computed in %.1f s (%.2f%% flagged)", ts, _time.perf_counter() - t0,
                 100.0 * out.mean())
        return out

    def _waterfall_baseline(flags_all):
        # the cross-correlation with the median flagged fraction
        cross = np.nonzero(a1 != a2)[0]
        if not cross.size:
            return None
        frac = flags_all[:, cross].mean(axis=(0, 2, 3))
        return int(cross[np.argsort(frac)[len(frac) // 2]])

    if flag_mod is not None and not fuse:
        flags_np = _flags_first()
    wf_bl, wf_amp = None, None
    if flags_np is not None:
        wf_bl = _waterfall_baseline(flags_np)
        if wf_bl is not None:
            wf_amp = np.zeros((ntime, flags_np.shape[2], npol), np.float32)

    # ---- MS skeleton in the temp location
    tmp_root = _pick_tmp_root(tmp_dir, paths, _estimate_ms_bytes(nrows, nchan, npol), ms_path)
    tmp_root.mkdir(parents=True, exist_ok=True)
    tmp_ms = tmp_root / f".{ms_path.name}.partial{os.getpid()}"
    shutil.rmtree(tmp_ms, ignore_errors=True)
    from dsacont import __version__
    from dsacont.telescope import ARRAY_CENTRE_ECEF, DISH_DIAMETER_M, TELESCOPE_NAME

    antpos_abs = np.asarray(ds["antenna_position"].values, float) + ARRAY_CENTRE_ECEF
    t_ms = msio.jd_to_ms_time(times)
    tint = float(ds.attrs.get("integration_time", np.median(np.diff(times)) * 86400.0 if ntime > 1 else 1.0))
    srcs = [os.path.basename(str(p)) for p in ds.attrs.get("source_files", [])]
    layout = msio.MSLayout(
        antenna_names=[str(n) for n in ds["antenna_name"].values],
        antenna_positions=antpos_abs,
        dish_diameter=DISH_DIAMETER_M,
        spw_freqs=np.stack([freq[a:b] for a, b, _ in spws]),
        spw_widths=np.stack([width[a:b] for a, b, _ in spws]),
        spw_names=[f"sb{s:02d}" for _, _, s in spws],
        polarizations=pols,
        field_names=centre["names"],
        field_dirs=np.stack([centre["ra"], centre["dec"]], axis=1),
        field_times=msio.jd_to_ms_time(times[np.searchsorted(centre["field_of_time"], np.arange(len(centre["names"])))])
        if phase == "per_integration" else np.array([msio.jd_to_ms_time(centre["jd_mid"])]),
        time_range=(float(t_ms.min() - tint / 2), float(t_ms.max() + tint / 2)),
        telescope_name=str(ds.attrs.get("telescope_name", TELESCOPE_NAME)),
        nrows=nrows,
        interval=tint,
        tile_rows=nbl if nbl * npol * nchan * 8 <= (8 << 20) else 0,
        history=[
            f"dsacont {__version__} convert_group: group {ts}, {len(srcs)} subband files",
            f"phase={phase}: centre RA {np.degrees(centre['ra'][0]):.6f} Dec {np.degrees(centre['dec'][0]):.6f} deg "
            f"(ICRS, meridian HADEC(0, {np.degrees(float(ds.attrs['phase_center_dec'])):.4f} deg) at "
            f"{'mid-time' if phase == 'common' else 'each integration'}); UVW recomputed per integration",
            f"flags: correlator{' + dsacont.flagging' if flag_mod is not None else ''}",
            "source files: " + ", ".join(srcs),
        ],
    )
    log.info("%s: writing %d rows (%d times x %d spw x %d baselines) to %s", ts, nrows, ntime, nspw, nbl, tmp_ms)
    tiles = None
    writer = None
    skel = {"tiles": None, "error": None}
    skel_done = threading.Event()

    # casacore zero-fills every tile of the skeleton when it is closed (1.5 GB at full size); on
    # tmpfs that costs RAM bandwidth, on disk a second write of the whole MS. So with direct
    # writes a fresh skeleton is built on tmpfs and copied without its bulk tile files, which are
    # created sparse in the staging directory and filled once (msio.TileFiles.relocate); and it
    # is kept as a template, from which the next group of the same layout is stamped instead.
    build_in = None
    if direct_write and not _same_fs(tmp_root, TMPFS) and _tmpfs_has_room(_estimate_ms_bytes(nrows, nchan, npol)):
        build_in = Path(TMPFS) / f".{ms_path.name}.skeleton{os.getpid()}"
        shutil.rmtree(build_in, ignore_errors=True)
    # MS convention: UVW = x_ant1 - x_ant2 (minus the Dataset's uvw), DATA conjugated
    rows = msio.MainRows(
        time=t_ms, field_id=centre["field_of_time"].astype(np.int32),
        scan=(centre["field_of_time"].astype(np.int32) + 1) if phase == "per_integration" else np.ones(ntime, np.int32),
        nspw=nspw, ant1=a1, ant2=a2, uvw=-geo["uvw"], interval=tint)
    templates = (Path(paths.tmp) / TEMPLATE_DIRNAME) if use_templates else None

    def _skeleton():
        """The MS with every row and all metadata, closed; returns TileFiles or None."""
        return msio.build_skeleton(tmp_ms, layout, rows, direct=direct_write, templates=templates,
                                   build_in=build_in, prof=prof)

    def _skeleton_thread():
        try:
            skel["tiles"] = _skeleton()
        except BaseException as exc:  # re-raised by _wait_skeleton in the caller's thread
            skel["error"] = exc
        finally:
            skel_done.set()

    def _wait_skeleton():
        skel_done.wait()
        if skel["error"] is not None:
            raise skel["error"]
        return skel["tiles"]

    skel_thread = None
    try:
        if fuse:
            _skeleton_thread()
        else:
            # casatools releases the GIL: the skeleton (~1 s at full size, mostly casacore allocating
            # the tiles) is built while the first blocks are read and computed
            skel_thread = threading.Thread(target=_skeleton_thread, name="dsacont-ms-skeleton", daemon=True)
            skel_thread.start()
        tick = _time.perf_counter()
        if fuse:
            tiles = _wait_skeleton()
            if tiles is None:  # partial tiles cannot be written: flags first, then the time blocks
                writer = msio.MSWriter(tmp_ms)
                fuse = False
                flags_np = _flags_first()
                wf_bl = _waterfall_baseline(flags_np)
                if wf_bl is not None:
                    wf_amp = np.zeros((ntime, flags_np.shape[2], npol), np.float32)
        if fuse:
            flags_np = _fused_flag_pass(ds, tiles, src_files, spws, geo["dw"], freq, a1, a2, strategy, flag_mod,
                                        comp, ts, progress, prof)
            wf_bl = _waterfall_baseline(flags_np)
            if wf_bl is not None:
                wf_amp = _read_waterfall(tiles, wf_bl, ntime, spws, nbl, npol)
        tb_edges = np.concatenate([[0], np.cumsum(tchunks)]).astype(int)
        blocks = [] if fuse else [(int(tb_edges[ti]), int(tb_edges[ti + 1]), si)
                                  for ti in range(len(tchunks)) for si in range(nspw)]
        local = threading.local()
        readers: dict = {}
        readers_lock = threading.Lock()
        stats = {"read": 0.0, "kernel": 0.0, "write": 0.0}
        stats_lock = threading.Lock()

        def _add(key, dt):
            with stats_lock:
                stats[key] += dt

        def _reader(si):
            with readers_lock:
                r = readers.get(si)
                if r is None:
                    r = readers[si] = _SubbandReader(src_files[si], nbl)
                    if r.shape[0] != ntime * nbl or (r.nf, r.npol) != (nchan, npol):
                        raise BadInputError(src_files[si], f"Data/visdata has shape {r.shape}, the group "
                                                           f"{(ntime * nbl, nchan, npol)}")
            return r

        def _prep(t0, t1, si, data, flags):
            """RFI flags into FLAG, and the waterfall's amplitudes."""
            f0, f1, _ = spws[si]
            if flags_np is not None:
                np.logical_or(flags, flags_np[t0:t1, :, f0:f1, :], out=flags)
            if wf_amp is not None:
                wf_amp[t0:t1, f0:f1] = np.abs(data[:, wf_bl])

        def _write_tiles(tf, t0, t1, si, data, flags, weight, sigma, scratch):
            tw = _time.perf_counter()
            packed = _scratch(scratch, "packed", (t1 - t0, flags[0].size // 8), np.uint8)
            msio.pack_bits_le(flags.reshape(-1), packed.reshape(-1))
            for k, t in enumerate(range(t0, t1)):
                tf.write((t * nspw + si) * nbl, DATA=data[k], FLAG=packed[k], WEIGHT=weight[k], SIGMA=sigma[k])
            _add("write", _time.perf_counter() - tw)

        def _local_block(t0, t1, si):
            """Read, compute and (direct mode, skeleton ready) write one block, in a worker thread.
            Returns None when written, else (data, flags, weight, sigma) in fresh arrays."""
            f0, f1, _ = spws[si]
            scratch = getattr(local, "scratch", None)
            if scratch is None:
                scratch = local.scratch = {}
            tr = _time.perf_counter()
            if src_files is not None and src_files[si] is not None:
                r = _reader(si)
                # the correlator's usual block: no flag set, one nsamples value; then only the
                # visibilities are gathered (channels reversed on the way: the kernel is ~2x
                # slower on reversed input)
                flag_value = r.uniform("flags", t0, t1)
                ns_value = r.uniform("nsamples", t0, t1) if flag_value is not None and not flag_value else None
                v = r.read("visdata", t0, t1, scratch, ascending=True)
                if ns_value is None:
                    n, f_ = (r.read(name, t0, t1, scratch, ascending=True) for name in ("nsamples", "flags"))
                else:
                    n = f_ = None
            else:
                v, n, f_ = dask.compute(vis[t0:t1, :, f0:f1, :], nsamp[t0:t1, :, f0:f1, :],
                                        fl[t0:t1, :, f0:f1, :], scheduler="sync")
                ns_value = None
            tk = _time.perf_counter()
            _add("read", tk - tr)
            tf = skel["tiles"] if skel_done.is_set() and skel["error"] is None else None
            # channels are ascending from both sources (the reader reverses them while gathering)
            out = compute_block(v, n, f_, geo["dw"][t0:t1], freq[f0:f1], False, scratch if tf is not None else None,
                                nsamples=ns_value)
            _add("kernel", _time.perf_counter() - tk)
            _prep(t0, t1, si, out[0], out[1])
            if tf is None:
                return out
            _write_tiles(tf, t0, t1, si, *out, scratch)
            return None

        if comp.client is None:
            jobs = ((b, comp.pool.submit(_local_block, *b)) for b in blocks)
        else:
            # distributed: workers read and compute, this process writes
            def _dist_jobs():
                for t0, t1, si in blocks:
                    f0, f1, _ = spws[si]
                    d = dask.delayed(compute_block, pure=True)(
                        vis[t0:t1, :, f0:f1, :], nsamp[t0:t1, :, f0:f1, :], fl[t0:t1, :, f0:f1, :],
                        geo["dw"][t0:t1], freq[f0:f1], False)
                    yield (t0, t1, si), comp.client.compute(d)
            jobs = _dist_jobs()

        nblocks = len(blocks)
        counts = {"done": 0, "next": 0.1, "nbytes": 0, "t_write": 0.0}
        main_scratch: dict = {}

        def _collect(t0, t1, si, fut):
            """Result of one block in this thread: write it if the worker did not."""
            nonlocal tiles, writer
            res = fut.result()
            if comp.client is not None:
                _prep(t0, t1, si, res[0], res[1])
            if res is not None:
                if not skel_done.is_set() or (tiles is None and writer is None):
                    tiles = _wait_skeleton()
                    if tiles is None and writer is None:
                        writer = msio.MSWriter(tmp_ms)
                tw = _time.perf_counter()
                if tiles is not None:
                    _write_tiles(tiles, t0, t1, si, *res, main_scratch)
                else:
                    data, flags, weight, sigma = res
                    for k, t in enumerate(range(t0, t1)):
                        writer.put((t * nspw + si) * nbl, DATA=data[k], FLAG=flags[k], WEIGHT=weight[k],
                                   SIGMA=sigma[k])
                    counts["t_write"] += _time.perf_counter() - tw
            counts["nbytes"] += (t1 - t0) * nbl * nchan * npol * 8
            counts["done"] += 1
            if progress and counts["done"] / nblocks >= counts["next"]:
                log.info("%s: %3.0f%% (%d/%d blocks, %.1f s)", ts, 100.0 * counts["done"] / nblocks, counts["done"],
                         nblocks, _time.perf_counter() - t_start)
                counts["next"] += 0.1

        def _window():
            # while the skeleton is being built, blocks computed ahead wait in memory (~35 MB each)
            return comp.window if skel_done.is_set() else max(comp.window, PREFETCH_BLOCKS)

        pending: deque = deque()
        try:
            for job in jobs:
                pending.append(job)
                while len(pending) >= _window() or (pending and pending[0][1].done()):
                    (t0, t1, si), fut = pending.popleft()
                    _collect(t0, t1, si, fut)
            while pending:
                (t0, t1, si), fut = pending.popleft()
                _collect(t0, t1, si, fut)
        finally:
            for _, fut in pending:
                try:
                    fut.cancel()
                except Exception:
                    pass
            if comp.pool is not None:
                comp.pool.shutdown(wait=True, cancel_futures=True)
            for r in readers.values():
                r.close()
        if tiles is None and writer is None:
            tiles = _wait_skeleton()  # no blocks (or all written by workers)
        t_write = counts["t_write"]
        nbytes = counts["nbytes"]
        prof["blocks"] = _time.perf_counter() - tick
        prof["blocks_write"] = t_write + stats["write"]
        prof["blocks_read_threads"] = stats["read"]
        prof["blocks_kernel_threads"] = stats["kernel"]
        prof["direct_tiles"] = tiles is not None
        prof["direct_read"] = src_files is not None
        tick = _time.perf_counter()
        if tiles is not None:
            tiles.close()
        if writer is not None:
            writer.close()
        prof["close"] = _time.perf_counter() - tick
        tick = _time.perf_counter()
        final = msio.move_into_place(tmp_ms, ms_path, staging_dir=paths.tmp)
        prof["move"] = _time.perf_counter() - tick
    except BaseException:
        if skel_thread is not None:
            skel_thread.join()
        tiles = tiles if tiles is not None else skel.get("tiles")
        if tiles is not None:
            tiles.close()
        if writer is not None:
            try:
                writer.close()
            except Exception:
                pass
        shutil.rmtree(tmp_ms, ignore_errors=True)
        raise
    if flags_np is not None:
        _write_flag_products(ds, flags_np, wf_bl, wf_amp, Path(qa_dir) if qa_dir else ms_path.parent, ts)
    dt = _time.perf_counter() - t_start
    log.info("%s: wrote %s (%d rows, %.0f MB of visibilities) in %.1f s", ts, final, nrows, nbytes / 1e6, dt)
    log.info("%s: time profile (s): %s", ts, ", ".join(f"{k} {v:.2f}" for k, v in prof.items()))
    LAST_PROFILE.clear()
    LAST_PROFILE.update(prof, total=dt)
    return final


# ----------------------------------------------------------------------------- CLI
def cli(argv: list[str] | None = None) -> int:
    """``dsacont convert``: convert one or more subband groups to Measurement Sets."""
    p = argparse.ArgumentParser(
        prog="dsacont convert",
        description="Convert a 16-subband group (files, or a directory of groups) to a CASA MS.",
    )
    p.add_argument("inputs", nargs="+", help="subband files of one group, or a directory (every complete group)")
    p.add_argument("-o", "--output", help="output MS path (one group) or directory (default <stage>/ms)")
    p.add_argument("--phase", choices=PHASE_MODES, default="common",
                   help="one phase centre (meridian at mid-time, default) or one field per integration")
    p.add_argument("--no-flag", action="store_true", help="do not run RFI flagging")
    p.add_argument("--strategy", help="flagging strategy file (TOML/JSON)")
    p.add_argument("--time-chunk", type=int, default=None, help="integrations per block (default 8)")
    p.add_argument("--tmp-dir", help="where to build the MS before the atomic move")
    p.add_argument("--scheduler", help="dask-scheduler address (tcp://host:8786); default local threads")
    p.add_argument("--root", help="put everything under this directory (as CONTIMG_ROOT)")
    p.add_argument("--zarr", help="also write the phased Dataset to this zarr store (one group only)")
    args = p.parse_args(argv)

    from dsacont.config import get_paths

    paths = get_paths(root=args.root)
    groups = []
    if len(args.inputs) == 1 and os.path.isdir(args.inputs[0]):
        from dsacont.io.groups import find_groups

        found = find_groups(args.inputs[0])
        groups = [g for g in found if getattr(g, "complete", True)]
        if not groups:
            print(f"dsacont convert: no complete groups in {args.inputs[0]}", file=sys.stderr)
            return 1
    else:
        groups = [args.inputs]
    client = None
    if args.scheduler:
        from distributed import Client

        client = Client(args.scheduler)
    chunks = {"time": args.time_chunk} if args.time_chunk else None
    try:
        for g in groups:
            out = None
            if args.output:
                out = Path(args.output)
                if len(groups) > 1 or out.suffix != ".ms":
                    out = None
                    paths = get_paths(root=args.root, ms=args.output)
            ms = convert_group(g, out, phase=args.phase, flag=not args.no_flag, strategy=args.strategy,
                               paths=paths, tmp_dir=args.tmp_dir, chunks=chunks)
            print(ms)
            if args.zarr and len(groups) == 1:
                from dsacont.io.uvh5 import open_group

                print(to_zarr(open_group(g, chunks=chunks), args.zarr, phase=args.phase))
    finally:
        if client is not None:
            client.close()
    return 0
