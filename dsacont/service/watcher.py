"""The watcher: poll the incoming directory, validate each settled subband file, record it in the queue.

Polling works on every filesystem (NFS and Lustre included). ``*_incomplete.hdf5`` files are still
being written and are ignored; a new file must look settled (unchanged size for one poll, or older
than ``settle_s``) before it is read. Each file is validated cheaply (:func:`validate_subband_file`:
HDF5 signature, UVH5 header consistency through :func:`dsacont.io.uvh5.read_subband_header`, every
visibility row readable, no NaN/Inf) and recorded in the ingest queue
(:mod:`dsacont.service.queue`) under its group; a bad file is recorded as quarantined with a reason
naming it (the queue clusters files by the timestamps in their names, :mod:`dsacont.io.groups`).

What the watcher has seen but not recorded (a file not settled yet, or left for the next poll
by the validation budget) is kept in :attr:`Watcher.unrecorded`: the service never finalises a
group while such a file of it is in the directory, and ``dsacont status`` shows them (the queue's
``unrecorded`` table, :meth:`Watcher.report`).
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import h5py
import numpy as np

from dsacont.errors import BadInputError
from dsacont.io.groups import parse_subband_name
from dsacont.io.uvh5 import read_subband_header, scan_subband_data
from dsacont.service.queue import IngestQueue, unix_from_datetime

log = logging.getLogger(__name__)

_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def validate_subband_file(path, *, check_values: bool = True, max_nonfinite_frac: float = 0.0,
                          rows_per_read: int = 4096) -> dict:
    """Check that a subband file can be processed; return its shape.

    Cheap checks, in order: a regular non-empty file, the HDF5 signature, the UVH5 header and
    its consistency with the data arrays (:func:`dsacont.io.uvh5.read_subband_header`), then the
    visibilities read in blocks of ``rows_per_read`` baseline-times (catches truncation; memory
    bounded) counting NaN/Inf (``check_values``). It warms the page cache for the conversion (its
    cost per file is in ``benchmarks/README.md``).

    Returns
    -------
    dict
        ``{"nblts", "nfreqs", "npols", "ntimes", "nbls", "nonfinite", "time_unix"}`` (first and
        last integration edges, Unix seconds) and ``dec_deg`` (the pointing declination,
        ``phase_center_dec``, degrees) when the header has it.

    Raises
    ------
    BadInputError
        Naming the file and what is wrong.
    """
    path = str(path)
    try:
        st = os.stat(path)
    except PermissionError as exc:
        raise BadInputError(path, f"unreadable: {exc.strerror}") from exc
    except FileNotFoundError:
        if os.path.islink(path):
            raise BadInputError(path, f"unreadable: broken symbolic link to {os.readlink(path)}") from None
        raise
    if not os.path.isfile(path):
        raise BadInputError(path, "unreadable: not a regular file")
    if st.st_size == 0:
        raise BadInputError(path, "empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise BadInputError(path, f"unreadable: {exc.strerror or exc}") from exc
    if head != _HDF5_SIGNATURE and not h5py.is_hdf5(path):  # is_hdf5 also finds a user block
        raise BadInputError(path, f"not an HDF5 file (no HDF5 signature; {st.st_size} bytes, starts {head[:8]!r})")
    try:
        h = read_subband_header(path)
    except BadInputError as exc:
        msg = exc.reason
        if "truncated" in msg:
            msg = f"truncated HDF5 file ({st.st_size} bytes): {msg}"
        raise BadInputError(path, msg) from exc
    shape = {"nblts": h.nblts, "nfreqs": h.nfreqs, "npols": h.npols, "ntimes": h.ntimes, "nbls": h.nbls}
    # where and when it looked (the service's claim priority: a calibrator transit inside it)
    dec = h.extra.get("phase_center_dec")
    if dec is not None and np.isfinite(float(dec)):
        shape["dec_deg"] = round(float(np.degrees(float(dec))), 6)
    half = 0.5 * float(np.max(h.integration_time)) if np.size(h.integration_time) else 0.0
    shape["time_unix"] = [round((float(np.min(h.time)) - 2440587.5) * 86400.0 - half, 3),
                          round((float(np.max(h.time)) - 2440587.5) * 86400.0 + half, 3)]
    nonfinite = scan_subband_data(path, check_values=check_values, rows_per_read=rows_per_read)
    shape["nonfinite"] = nonfinite
    if check_values and nonfinite:
        total = h.nblts * h.nfreqs * h.npols
        frac = nonfinite / max(total, 1)
        if frac > max_nonfinite_frac:
            raise BadInputError(path, f"{nonfinite} of {total} visibilities are NaN/Inf ({100 * frac:.3g}%)")
    return shape




class Watcher:
    """Poll a directory for new subband files and record them in the queue.

    Parameters
    ----------
    incoming : path
        Directory the correlator (or ``dsacont replay``) writes to. Not recursive.
    queue : IngestQueue
    settle_s : float
        A file whose modification time is younger than this, and whose size changed since the
        previous poll, is left for the next poll (guards against copies made without the
        ``_incomplete`` rename).
    validate : bool
        Run :func:`validate_subband_file` (``check_values`` reads the visibilities once).
    """

    def __init__(self, incoming, queue: IngestQueue, *, settle_s: float = 1.0, validate: bool = True,
                 check_values: bool = True, max_nonfinite_frac: float = 0.0):
        self.incoming = Path(incoming)
        self.queue = queue
        self.settle_s = settle_s
        self.validate = validate
        self.check_values = check_values
        self.max_nonfinite_frac = max_nonfinite_frac
        self.known: set[str] = queue.known_paths()
        self._sizes: dict[str, int] = {}
        self._ignored: set[str] = set()
        self.newest_arrival = 0.0
        self.backlog = 0  # files seen but not yet recorded (not settled, or validation budget used up)
        self.unsettled = 0
        #: files seen but not yet recorded after the last poll: [(path, t_unix, subband, reason)]
        self.unrecorded: list[tuple[str, float, int, str]] = []
        self._unsettled: list[tuple[str, object]] = []

    def scan(self) -> list[tuple[str, object]]:
        """List new, settled subband files (not yet in the queue) with their parsed names, oldest first."""
        out = []
        now = time.time()
        self.unsettled = 0
        self._unsettled = []
        try:
            entries = list(os.scandir(self.incoming))
        except FileNotFoundError:
            log.warning("incoming directory %s does not exist (yet)", self.incoming)
            return []
        for e in entries:
            if e.path in self.known or not e.name.endswith(".hdf5") or "_incomplete" in e.name:
                continue
            name = parse_subband_name(e.name)
            if name is None:
                if e.path not in self._ignored:
                    self._ignored.add(e.path)
                    log.debug("ignoring %s: not a subband file name", e.path)
                continue
            try:
                st = e.stat()
            except FileNotFoundError:
                if e.is_symlink():  # a broken link: report it (validation quarantines it)
                    out.append((e.path, name))
                continue  # renamed or removed meanwhile
            prev = self._sizes.get(e.path)
            if now - st.st_mtime < self.settle_s and prev != st.st_size:
                self._sizes[e.path] = st.st_size
                self.unsettled += 1
                self._unsettled.append((e.path, name))
                continue
            self._sizes[e.path] = st.st_size  # settled: stays so while left for the next poll by the budget
            out.append((e.path, name))
        out.sort(key=lambda x: (x[1].timestamp, x[1].subband))
        return out

    def poll(self, budget_s: float | None = None) -> list:
        """Scan once, validate and record new files, oldest first; returns ``AddResult``s.

        ``budget_s``: stop after this many seconds (the rest waits for the next poll), so a
        backlog of thousands of files never starves the service loop's heartbeats.
        """
        results = []
        t0 = time.monotonic()
        todo = self.scan()
        unrecorded = [(p, unix_from_datetime(n.timestamp), n.subband, "unsettled") for p, n in self._unsettled]
        for i, (path, name) in enumerate(todo):
            if budget_s is not None and time.monotonic() - t0 > budget_s:
                unrecorded += [(p, unix_from_datetime(n.timestamp), n.subband, "validation budget")
                               for p, n in todo[i:]]
                log.info("watcher: validation budget of %.0f s used; %d more file(s) next poll", budget_s,
                         len(todo) - i)
                break
            reason, shape = None, None
            size = mtime = None
            try:
                st = os.stat(path)
                size, mtime = st.st_size, st.st_mtime
            except FileNotFoundError:
                if not os.path.islink(path):
                    continue
            except OSError:
                pass
            if self.validate:
                try:
                    shape = validate_subband_file(path, check_values=self.check_values,
                                                  max_nonfinite_frac=self.max_nonfinite_frac)
                except BadInputError as exc:
                    reason = exc.reason
                except FileNotFoundError:
                    continue
                except Exception as exc:  # noqa: BLE001 - anything unexpected while reading: quarantine, go on
                    reason = f"unreadable: {type(exc).__name__}: {exc}"
            res = self.queue.add_file(path, unix_from_datetime(name.timestamp), name.subband, shape=shape,
                                      reason=reason, size=size, mtime=mtime)
            self.known.add(path)
            self._sizes.pop(path, None)
            self.newest_arrival = time.time()
            if res.status == "ok":
                log.debug("file %s -> group %s", os.path.basename(path), res.group_timestamp)
            results.append(res)
        self.unrecorded = unrecorded
        self.backlog = len(unrecorded)  # files seen but not yet looked at count as a backlog
        return results

    def report(self, worker) -> None:
        """Write :attr:`unrecorded` to the queue (for ``dsacont status``) when it changed since the last report."""
        key = sorted((p, r) for p, _t, _sb, r in self.unrecorded)
        if key != getattr(self, "_reported", None):
            self.queue.set_unrecorded(worker, self.unrecorded)
            self._reported = key

    def unrecorded_times(self) -> list[float]:
        """The name timestamps (Unix s) of the files seen but not yet recorded (see :attr:`unrecorded`)."""
        return [t for _p, t, _sb, _r in self.unrecorded]
