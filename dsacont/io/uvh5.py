"""The one UVH5 reader: a subband group -> a lazy xarray Dataset, dask-chunked by time and
frequency; and the header of one subband file.

``open_group(paths)`` reads only the small header datasets of the 16 files. The visibilities,
flags and nsamples stay on disk until computed: each dask chunk is one slice of one file (a block
of integrations of one subband), read by the array backend
(:class:`dsacont.io.uvh5_backend.SubbandReader`: the file's HDF5 chunk table, mapped bytes and a
numba gather), so a chunk never spans two subbands and memory is bounded by the chunk size.

Frequency order: the correlator writes sb00 at the top of the band and channels descending
inside each file. The Dataset is **ascending** across all subbands (sb15's lowest channel
first): subbands are ordered by frequency and each chunk is flipped on read.

Dataset layout (see docs/ARCHITECTURE.md)::

    dims    time, baseline, frequency, polarization (+ antenna, uvw_dim for coordinates)
    vis     complex64 (time, baseline, frequency, polarization)   dask
    flags   bool      (time, baseline, frequency, polarization)   dask
    nsamples float32  (time, baseline, frequency, polarization)   dask
    coords  time (JD UTC), frequency (Hz, ascending), polarization ('XX','YY'),
            antenna1/antenna2 (baseline; 0-based numbers), uvw (time, baseline, uvw_dim; metres,
            as stored: the correlator's drift phasing), subband (frequency), channel_width
            (frequency, Hz), antenna_name / antenna_position (antenna; ECEF rel. to centre, m)
    attrs   phase_center_dec (rad), telescope_name, integration_time (s), source_files,
            group_timestamp, missing_subbands, fs_table, applied_delays_ns
    encoding (``ds.encoding`` and each data variable's, as xarray's backends record them)
            source          tuple of the 16 paths, sb00..sb15 ('' for a missing subband)
            original_shape  (time, baseline, frequency, polarization) as opened
            dask_name       the name of the dask array open_group made for the variable

:func:`group_files` tells whether a Dataset's data are still exactly what was opened (so a
consumer may read the files themselves, as the converter does) from that encoding.
"""
from __future__ import annotations

import logging
import os
import threading

import dask.array as da
import h5py
import numpy as np
import xarray as xr

from dsacont.errors import BadInputError
from dsacont.io.groups import N_SUBBANDS, Group, parse_subband_name
from dsacont.io.uvh5_backend import SubbandReader

log = logging.getLogger(__name__)

__all__ = ["open_group", "group_files", "SubbandHeader", "read_subband_header", "scan_subband_data",
           "DATA_VARIABLES"]

# the Dataset's data variables and the file datasets they are read from
DATA_VARIABLES = {"vis": "visdata", "flags": "flags", "nsamples": "nsamples"}

POL_NAMES = {-5: "XX", -6: "YY", -7: "XY", -8: "YX", -1: "RR", -2: "LL", -3: "RL", -4: "LR", 1: "I"}
DEFAULT_TIME_CHUNK = 8

# How many visibility/flag/nsamples chunks were read from disk in this process (tests use it to
# show that opening a group reads nothing).
READ_COUNT = {"chunks": 0}
_READ_LOCK = threading.Lock()


def _as_str(x):
    if isinstance(x, bytes):
        return x.decode()
    if isinstance(x, np.ndarray) and x.shape == ():
        return _as_str(x[()])
    return str(x)


class SubbandHeader:
    """The header of one UVH5 subband file (small arrays only), checked on construction.

    Parameters
    ----------
    path : str or os.PathLike

    Attributes
    ----------
    path : str
    nblts, ntimes, nbls, nfreqs, npols : int
        Rows (Ntimes x Nbls, time-major), integrations, baselines, channels, polarisations.
    freq : ndarray (nfreqs,) float64
        Channel centres, Hz, in file order (descending for the correlator's files).
    channel_width : ndarray (nfreqs,) float64
        Hz, positive.
    time : ndarray (nblts,) float64
        JD (UTC) of each row's integration centre; :attr:`times` (ntimes,) one per integration.
    ant1, ant2 : ndarray (nblts,) int32
        0-based antenna numbers of each row.
    uvw : ndarray (nblts, 3) float64
        Metres, as stored.
    pols : ndarray (npols,) int64
        AIPS polarisation codes (-5, -6 = XX, YY).
    integration_time : ndarray float64
        Seconds (per row, as stored).
    telescope_name : str
    antenna_names : list of str; antenna_numbers : ndarray (nant,) int32
    antenna_positions : ndarray (nant, 3) float64
        ECEF metres relative to the array centre.
    extra : dict
        ``Header/extra_keywords`` (``phase_center_dec`` radians, ``fs_table``, ...).
    vis_shape : tuple
        Shape of ``Data/visdata``: (nblts, 1, nfreqs, npols) (old UVH5) or (nblts, nfreqs, npols).
    dtypes : dict
        numpy dtype of ``Data/visdata``, ``Data/flags``, ``Data/nsamples``.

    Raises
    ------
    dsacont.errors.BadInputError
        Naming the file and what is wrong (see :func:`read_subband_header`).
    """

    def __init__(self, path):
        self.path = str(path)
        try:
            with h5py.File(self.path, "r") as f:
                h = f["Header"]
                self.nblts = int(h["Nblts"][()])
                self.ntimes = int(h["Ntimes"][()])
                self.nbls = int(h["Nbls"][()])
                self.nfreqs = int(h["Nfreqs"][()])
                self.npols = int(h["Npols"][()])
                self.freq = np.asarray(h["freq_array"][()], dtype=np.float64).reshape(-1)
                cw = np.asarray(h["channel_width"][()], dtype=np.float64)
                self.channel_width = np.broadcast_to(np.abs(cw).reshape(-1), self.freq.shape).copy()
                self.time = np.asarray(h["time_array"][()], dtype=np.float64)
                self.ant1 = np.asarray(h["ant_1_array"][()], dtype=np.int32)
                self.ant2 = np.asarray(h["ant_2_array"][()], dtype=np.int32)
                self.uvw = np.asarray(h["uvw_array"][()], dtype=np.float64)
                self.pols = np.asarray(h["polarization_array"][()], dtype=np.int64)
                self.integration_time = np.asarray(h["integration_time"][()], dtype=np.float64)
                self.telescope_name = _as_str(h["telescope_name"][()])
                self.antenna_names = [_as_str(n) for n in h["antenna_names"][()]]
                self.antenna_numbers = np.asarray(h["antenna_numbers"][()], dtype=np.int32)
                self.antenna_positions = np.asarray(h["antenna_positions"][()], dtype=np.float64)
                ek = h.get("extra_keywords")
                self.extra = {k: ek[k][()] for k in ek} if ek is not None else {}
                d = f["Data"]
                self.vis_shape = d["visdata"].shape
                self.dtypes = {name: d[name].dtype for name in ("visdata", "flags", "nsamples")}
                for name in ("flags", "nsamples"):
                    if d[name].shape != self.vis_shape:
                        raise BadInputError(self.path, f"Data/{name} has shape {d[name].shape}, visdata {self.vis_shape}")
        except BadInputError:
            raise
        except KeyError as exc:
            raise BadInputError(self.path, f"not a UVH5 subband file: missing {exc.args[0]}") from exc
        except OSError as exc:
            raise BadInputError(self.path, f"cannot be read as HDF5 ({exc})") from exc
        self._check()

    def _check(self):
        p = self.path
        if self.nblts != self.ntimes * self.nbls:
            raise BadInputError(p, f"Nblts={self.nblts} is not Ntimes*Nbls={self.ntimes}*{self.nbls}")
        expect = {(self.nblts, 1, self.nfreqs, self.npols), (self.nblts, self.nfreqs, self.npols)}
        if tuple(self.vis_shape) not in expect:
            raise BadInputError(p, f"Data/visdata has shape {self.vis_shape}, expected "
                                   f"({self.nblts}, 1, {self.nfreqs}, {self.npols})")
        if self.freq.size != self.nfreqs:
            raise BadInputError(p, f"freq_array has {self.freq.size} channels, Nfreqs={self.nfreqs}")
        for name in ("time", "ant1", "ant2"):
            if getattr(self, name).shape != (self.nblts,):
                raise BadInputError(p, f"{name} array has shape {getattr(self, name).shape}, expected ({self.nblts},)")
        t = self.time.reshape(self.ntimes, self.nbls)
        if not np.all(t == t[:, :1]):
            raise BadInputError(p, "baselines are not time-major (time_array varies within an integration)")
        a1 = self.ant1.reshape(self.ntimes, self.nbls)
        a2 = self.ant2.reshape(self.ntimes, self.nbls)
        if not (np.all(a1 == a1[:1]) and np.all(a2 == a2[:1])):
            raise BadInputError(p, "baseline order changes between integrations")
        if not np.all(np.isfinite(self.freq)) or not np.all(np.isfinite(self.time)):
            raise BadInputError(p, "non-finite frequencies or times in the header")

    @property
    def times(self) -> np.ndarray:
        return self.time.reshape(self.ntimes, self.nbls)[:, 0]

    @property
    def phase_center_dec(self) -> float:
        if "phase_center_dec" not in self.extra:
            raise BadInputError(self.path, "Header/extra_keywords/phase_center_dec is missing")
        return float(self.extra["phase_center_dec"])


class _SubbandFile:
    """The :class:`SubbandReader` of one subband file, created at the first read and shared by
    the file's three datasets. Pickles as its path (to Dask workers)."""

    def __init__(self, path, nbls):
        self.path = str(path)
        self.nbls = int(nbls)
        self._reader = None
        self._lock = threading.Lock()

    def reader(self) -> SubbandReader:
        if self._reader is None:
            with self._lock:
                if self._reader is None:
                    self._reader = SubbandReader(self.path, self.nbls)
        return self._reader

    def __getstate__(self):
        return {"path": self.path, "nbls": self.nbls}

    def __setstate__(self, state):
        self.__init__(state["path"], state["nbls"])


class _SubbandArray:
    """Array-like (Ntimes, Nbls, Nfreqs, Npols) view of one dataset of one subband file.

    Indexing reads only the requested integrations (a contiguous time slice) through the file's
    :class:`SubbandReader`, drops the old UVH5 spw axis and returns channels in ascending
    frequency.
    """

    def __init__(self, source: _SubbandFile, name, header: SubbandHeader):
        self.source = source
        self.name = name
        self.shape = (header.ntimes, header.nbls, header.nfreqs, header.npols)
        self.dtype = header.dtypes[name]
        self.ndim = 4

    def __getitem__(self, key):
        if not isinstance(key, tuple):
            key = (key,)
        key = key + (slice(None),) * (4 - len(key))
        tsl = key[0]
        if not isinstance(tsl, slice) or tsl.step not in (None, 1):
            raise IndexError("subband arrays are read by contiguous time slices")
        t0, t1, _ = tsl.indices(self.shape[0])
        with _READ_LOCK:
            READ_COUNT["chunks"] += 1
        block = self.source.reader().read(self.name, t0, t1, ascending=True)
        return np.ascontiguousarray(block[(slice(None),) + key[1:]])


def _missing_header_msg(i, group_ts):
    return f"subband sb{i:02d} is missing from group {group_ts}"


def open_group(paths, *, chunks=None, allow_missing: bool = False):
    """Open a subband group lazily as an ``xarray.Dataset`` (nothing is read until compute).

    Parameters
    ----------
    paths : sequence of path or None, or a :class:`dsacont.io.groups.Group`
        The group's files. Either 16 entries in subband order (None where missing) or any
        list of subband files (sorted by the ``_sbNN`` in their names).
    chunks : dict, optional
        ``{"time": n_integrations, "frequency": n_channels}``. Frequency chunks never span two
        subbands (a larger value is cut to one subband). Default: 8 integrations, one subband.
    allow_missing : bool
        If True, missing subbands become zero visibilities with flags set (their frequencies
        inferred from the others). If False (default), a missing subband raises.

    Returns
    -------
    xarray.Dataset
        See the module docstring.

    Raises
    ------
    dsacont.errors.BadInputError
        Naming the file: unreadable, not UVH5, or inconsistent with the rest of the group
        (times, baselines, polarisations, channel count, declination).
    """
    if isinstance(paths, Group):
        group_ts, slots = paths.timestamp, list(paths.paths)
    else:
        slots = [None] * N_SUBBANDS
        plist = list(paths)
        if len(plist) == N_SUBBANDS and any(p is None for p in plist):
            slots = [None if p is None else str(p) for p in plist]
        else:
            for p in plist:
                name = parse_subband_name(p)
                if name is None:
                    raise BadInputError(p, "not a subband file name (YYYY-MM-DDTHH:MM:SS_sbNN.hdf5)")
                if slots[name.subband] is not None:
                    raise BadInputError(p, f"duplicate subband sb{name.subband:02d} (also {slots[name.subband]})")
                slots[name.subband] = str(p)
        stamps = [parse_subband_name(p) for p in slots if p is not None]
        group_ts = min(s.timestamp for s in stamps if s is not None).strftime("%Y-%m-%dT%H:%M:%S") if any(stamps) else "?"

    present = [i for i, p in enumerate(slots) if p is not None]
    if not present:
        raise BadInputError(group_ts, "no subband files")
    missing = [i for i in range(N_SUBBANDS) if slots[i] is None]
    if missing and not allow_missing:
        raise BadInputError(group_ts, _missing_header_msg(missing[0], group_ts)
                            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))
    for p in slots:
        if p is not None and not os.path.exists(p):
            raise BadInputError(p, "file does not exist")

    headers = {i: SubbandHeader(slots[i]) for i in present}
    ref = headers[present[0]]
    for i in present[1:]:
        h = headers[i]
        for attr, what in (("ntimes", "integrations"), ("nbls", "baselines"), ("nfreqs", "channels"), ("npols", "polarisations")):
            if getattr(h, attr) != getattr(ref, attr):
                raise BadInputError(h.path, f"has {getattr(h, attr)} {what}, {os.path.basename(ref.path)} has {getattr(ref, attr)}")
        if not np.allclose(h.times, ref.times, rtol=0, atol=1e-3 / 86400):
            raise BadInputError(h.path, f"integration times differ from {os.path.basename(ref.path)} by up to "
                                        f"{np.max(np.abs(h.times - ref.times)) * 86400:.1f} s: not the same observation")
        if not (np.array_equal(h.ant1, ref.ant1) and np.array_equal(h.ant2, ref.ant2)):
            raise BadInputError(h.path, f"baseline order differs from {os.path.basename(ref.path)}")
        if not np.array_equal(h.pols, ref.pols):
            raise BadInputError(h.path, f"polarisations {h.pols.tolist()} differ from {ref.pols.tolist()}")
        if abs(h.phase_center_dec - ref.phase_center_dec) > 1e-6:
            raise BadInputError(h.path, f"pointing declination {np.degrees(h.phase_center_dec):.4f} deg differs "
                                        f"from {np.degrees(ref.phase_center_dec):.4f} deg")

    nf = ref.nfreqs
    # frequencies of every subband slot (ascending inside), inferring missing ones
    sb_freqs: dict[int, np.ndarray] = {}
    sb_cw: dict[int, np.ndarray] = {}
    for i in present:
        order = np.argsort(headers[i].freq)
        sb_freqs[i], sb_cw[i] = headers[i].freq[order], headers[i].channel_width[order]
    if missing:
        # subband k sits (k - i) subband-widths below subband i (frequencies descend with k)
        i0 = present[0]
        width = nf * float(np.median(sb_cw[i0]))
        for k in missing:
            sb_freqs[k] = sb_freqs[i0] - (k - i0) * width
            sb_cw[k] = sb_cw[i0]
    sb_order = sorted(range(N_SUBBANDS), key=lambda k: sb_freqs[k][0])
    freq = np.concatenate([sb_freqs[k] for k in sb_order])
    if np.any(np.diff(freq) <= 0):
        bad = [slots[k] for k in sb_order if slots[k] is not None]
        raise BadInputError(bad[0], "subband frequencies overlap or are out of order across the group")

    chunks = dict(chunks or {})
    tchunk = int(chunks.get("time", DEFAULT_TIME_CHUNK))
    fchunk = int(min(chunks.get("frequency", nf), nf))
    fchunks = tuple([fchunk] * (nf // fchunk) + ([nf % fchunk] if nf % fchunk else []))
    shape = (ref.ntimes, ref.nbls, nf, ref.npols)

    files = {k: _SubbandFile(slots[k], ref.nbls) for k in present}

    def build(name, dtype):
        blocks = []
        for k in sb_order:
            if slots[k] is None:
                fill = True if name == "flags" else 0
                blocks.append(da.full(shape, fill, dtype=dtype, chunks=(tchunk, ref.nbls, fchunks, ref.npols)))
                continue
            arr = _SubbandArray(files[k], name, headers[k])
            blocks.append(
                da.from_array(arr, chunks=(tchunk, ref.nbls, fchunks, ref.npols), lock=False, asarray=True,
                              name=f"{name}-{os.path.basename(slots[k])}-{tchunk}-{fchunk}",
                              meta=np.empty((0, 0, 0, 0), dtype=arr.dtype))
            )
        return da.concatenate(blocks, axis=2)

    dims = ("time", "baseline", "frequency", "polarization")
    vis = build("visdata", np.complex64)
    flags = build("flags", bool)
    nsamples = build("nsamples", np.float32)

    subband = np.concatenate([np.full(nf, k, dtype=np.int16) for k in sb_order])
    cw = np.concatenate([sb_cw[k] for k in sb_order])
    uvw = ref.uvw.reshape(ref.ntimes, ref.nbls, 3)
    itime = float(np.median(ref.integration_time))
    pols = [POL_NAMES.get(int(p), str(int(p))) for p in ref.pols]

    ds = xr.Dataset(
        data_vars={"vis": (dims, vis), "flags": (dims, flags), "nsamples": (dims, nsamples)},
        coords={
            "time": ("time", ref.times, {"units": "JD", "scale": "utc", "description": "integration centres"}),
            "frequency": ("frequency", freq, {"units": "Hz", "order": "ascending"}),
            "polarization": ("polarization", pols, {"aips_codes": ref.pols.tolist()}),
            "antenna1": ("baseline", ref.ant1[: ref.nbls]),
            "antenna2": ("baseline", ref.ant2[: ref.nbls]),
            "uvw": (("time", "baseline", "uvw_dim"), uvw,
                    {"units": "m", "description": "as stored by the correlator (HADEC(0, dec) drift phasing), ant2 - ant1"}),
            "subband": ("frequency", subband, {"description": "0 = sb00 = highest frequency"}),
            "channel_width": ("frequency", cw, {"units": "Hz"}),
            "antenna_name": ("antenna", np.asarray(ref.antenna_names)),
            "antenna_number": ("antenna", ref.antenna_numbers),
            "antenna_position": (("antenna", "uvw_dim"), ref.antenna_positions,
                                 {"units": "m", "frame": "ECEF relative to the array centre"}),
        },
        attrs={
            "phase_center_dec": ref.phase_center_dec,
            "telescope_name": ref.telescope_name,
            "integration_time": itime,
            "source_files": [p if p is not None else "" for p in slots],
            "group_timestamp": group_ts,
            "missing_subbands": missing,
            "fs_table": _as_str(ref.extra.get("fs_table", "")),
            "applied_delays_ns": _as_str(ref.extra.get("applied_delays_ns", "")),
        },
    )
    source = tuple(p if p is not None else "" for p in slots)
    ds.encoding["source"] = source
    for var in DATA_VARIABLES:
        ds[var].encoding = {"source": source, "original_shape": tuple(ds[var].shape), "dask_name": ds[var].data.name}
    log.debug("opened group %s lazily: %s", group_ts, dict(ds.sizes))
    return ds


def group_files(ds) -> list[str | None] | None:
    """The subband files behind ``ds`` when its data are still exactly what :func:`open_group`
    opened, else None.

    Decided from each data variable's ``encoding`` (see the module docstring): every one of
    ``vis``, ``flags`` and ``nsamples`` still carries this reader's ``source`` and has its
    ``original_shape``, and its data is still the dask array ``open_group`` made
    (``dask_name``). Any selection, reordering or arithmetic gives a new array (or drops the
    encoding): then None, and a consumer must compute the Dataset's own arrays. Coordinates and
    attributes may differ (they are not read from the files by consumers of this answer).

    Parameters
    ----------
    ds : xarray.Dataset

    Returns
    -------
    list of (str or None), length 16, or None
        The file of each subband slot, sb00..sb15 (None for a missing subband, which the
        Dataset fills with zeros, flagged); None when the data are not the files' as opened, or
        no file is present.
    """
    source = None
    for var in DATA_VARIABLES:
        if var not in ds:
            return None
        enc = ds[var].encoding
        src = enc.get("source")
        if not isinstance(src, tuple) or len(src) != N_SUBBANDS or (source is not None and src != source):
            return None
        data = ds[var].data
        if (tuple(ds[var].shape) != tuple(enc.get("original_shape", ())) or not isinstance(data, da.Array)
                or data.name != enc.get("dask_name")):
            return None
        source = src
    files = [p or None for p in source]
    return files if any(files) else None


def read_subband_header(path) -> SubbandHeader:
    """The header of one UVH5 subband file, checked (see :class:`SubbandHeader`).

    Reads only the ``Header`` datasets and the shapes and dtypes of ``Data/*``: ~10 ms.

    Raises
    ------
    dsacont.errors.BadInputError
        Naming the file: not HDF5, not UVH5 (a missing dataset), or an inconsistent layout
        (Nblts != Ntimes x Nbls, data shapes, not time-major, baseline order changing, non-finite
        frequencies or times).
    """
    return SubbandHeader(path)


def scan_subband_data(path, *, check_values: bool = True, rows_per_read: int = 4096) -> int:
    """Read a subband file's visibilities through (catches truncation and corrupt chunks) and
    count the non-finite ones.

    Parameters
    ----------
    path : str or os.PathLike
    check_values : bool
        Read every row of ``Data/visdata`` in blocks of ``rows_per_read`` baseline-times
        (memory bounded) and count NaN/Inf items. False: read only the last row of each of
        ``Data/visdata``, ``Data/flags`` and ``Data/nsamples`` (a truncated file fails there).
    rows_per_read : int
        Rows (baseline-times) per read.

    Returns
    -------
    int
        Visibility items (complex values, all channels and polarisations) that are NaN or Inf;
        0 with ``check_values=False``.

    Raises
    ------
    dsacont.errors.BadInputError
        The data cannot be read (naming the file, its size and the dataset).
    """
    path = str(path)
    nonfinite = 0
    try:
        with h5py.File(path, "r") as f:
            vis = f["Data/visdata"]
            nrows = vis.shape[0]
            if check_values:
                for r0 in range(0, nrows, rows_per_read):
                    block = vis[r0:r0 + rows_per_read]
                    if block.dtype.names:  # compound (r, i) integer storage
                        block = block[block.dtype.names[0]].astype(np.float32) + 1j * block[block.dtype.names[1]]
                    nonfinite += int(block.size - np.count_nonzero(np.isfinite(block)))
            else:
                vis[nrows - 1:nrows]  # the last row: a truncated file fails here
            for name in ("flags", "nsamples"):
                d = f["Data/" + name]
                d[d.shape[0] - 1:d.shape[0]]
    except OSError as exc:
        size = os.path.getsize(path) if os.path.exists(path) else 0
        raise BadInputError(path, f"truncated or corrupt HDF5 data ({size} bytes): cannot read "
                                  f"Data/visdata ({exc})") from exc
    return nonfinite
