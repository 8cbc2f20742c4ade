"""Building a Measurement Set: its layout, the converter's skeletons and direct tile writes.

Layout written by :func:`create_ms` (what CASA's tasks need; columns and keywords checked
against pyuvdata's ``write_ms`` and casatools' own ``simulator`` skeleton):

- Main table: the MS v2 required columns. DATA (complex), FLAG (bool), WEIGHT, SIGMA and UVW
  are fixed-shape columns in ``TiledColumnStMan`` hypercubes (DATA/FLAG cells (npol, nchan));
  TIME-like and ID columns in ``IncrementalStMan`` (constant over long runs of rows),
  ANTENNA1/ANTENNA2 in ``StandardStMan``. No MODEL_DATA / CORRECTED_DATA (calibration adds
  them when needed), no WEIGHT_SPECTRUM (DSA-110 nsamples are constant across a subband).
- UVW column MEASINFO ``J2000``; FIELD directions ``J2000`` (the phase centre is computed in
  ICRS; ICRS and J2000 differ by ~20 mas, far below anything this array can see).
- Subtables: ANTENNA, FEED (one row per antenna, SPECTRAL_WINDOW_ID -1, receptors X/Y),
  SPECTRAL_WINDOW, POLARIZATION (XX, YY = CORR_TYPE 9, 12), DATA_DESCRIPTION (one per SPW),
  FIELD, SOURCE (one row per field), OBSERVATION (TELESCOPE_NAME, TIME_RANGE), PROCESSOR,
  HISTORY; STATE, POINTING, FLAG_CMD present and empty (STATE_ID = -1).
- **Conjugation** (as CASA reads it, and as pyuvdata >= 3.2 ``write_ms`` writes it):
  ``DATA = conj(V)`` and ``UVW = x[ANTENNA1] - x[ANTENNA2]``, where ``V`` and ``uvw = x2 - x1``
  are the Dataset's (UVH5 / ARCHITECTURE.md) convention. So gains CASA solves on an MS are the
  complex conjugates of the UVH5-convention gains ``V_obs = g1 conj(g2) V``.
- TIME is seconds since MJD 0 (UTC), integration centres; INTERVAL = EXPOSURE = the
  integration time.

Direct tile writing (:class:`TileFiles`)
---------------------------------------
casatools ``putcol`` copies through its own variant type and holds the GIL, which made it the
bottleneck of a conversion (figures: ``benchmarks/README.md``, Conversion). When each main-table run of rows fills
whole tiles, the bulk columns (DATA, FLAG, WEIGHT, SIGMA) are instead written straight into
their ``TiledColumnStMan`` files, at memory speed and from several threads. What casacore's
storage manager does, and what :class:`TileFiles` relies on and checks:

- A ``TiledColumnStMan`` with one hypercube of cell shape ``cell`` and tile shape
  ``cell + [R]`` stores tile ``k`` (rows ``k*R .. k*R + R``) as one bucket at byte offset
  ``k * BucketSize`` of ``table.f<SEQNR>_TSM0``; inside a tile the values are in Fortran order
  (cell axes fastest, row slowest), i.e. exactly a C-contiguous ``(R, *reversed(cell))`` numpy
  array. Bool is stored as bits, 8 per byte, least significant bit first. Numbers are in the
  table's byte order (little endian: casacore's default ``local`` on x86; checked).
- ``addrows`` + closing the table makes casacore allocate every bucket (the file already has its
  final length, zero filled) and write all the header bookkeeping itself; nothing but the tile
  contents is written directly, and only after the table is closed.
- :meth:`MSWriter.tile_layout` reads the data manager info (one hypercube, tile shape, bucket
  size, row count) and puts random probe values into the first and last row of each column with
  ``putcol``; :meth:`TileFiles.open` checks file lengths and finds those probe bytes at the
  computed offsets. Any mismatch (another tile shape, byte order, bit order, storage manager,
  casacore version) returns None and the caller writes with ``putcol`` instead. The test suite
  compares every cell of every column against ``getcol``.
- Because each tile is exactly ``R`` rows of whole bytes, a column's file holds its rows
  contiguously in row order, so any row range (a baseline range of one (time, SPW) run too) is
  one ``pwrite``.
- :meth:`TileFiles.relocate` copies a verified skeleton (built on tmpfs, where casacore's zero
  fill is cheap) without its bulk tile files, which it creates sparse at their full length in
  the destination: valid only because every byte of them is written afterwards.

Skeleton templates (:func:`build_skeleton`)
-------------------------------------------
Building the skeleton with casatools (rows, ANTENNA1/2, UVW, probes; casacore then zero-fills
every tile) costs about as much CPU as converting the group's data. Groups of
one layout (same antennas, band, polarisations, row structure, field count, tiling, versions:
:func:`template_key`) differ only in TIME/TIME_CENTROID, UVW and the FIELD, SOURCE, OBSERVATION,
HISTORY rows and FEED's TIME. So the first verified skeleton of a layout is kept, without its
bulk files, as a template; later groups copy it, create the bulk files (UVW too) sparse, write
UVW into its tiles and rewrite the per-group columns and subtables (:func:`_write_group_subtables`
is the same code that fills them in a fresh MS). Templates are immutable once saved (atomic
rename); the ``TEMPLATES_KEPT`` most recently used are kept.

Table access goes through :func:`dsacont.io.ms.table`.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time as _time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsacont import __version__
from dsacont.io.kernels import pack_bits_le
from dsacont.io.ms import CORR_PRODUCT, CORR_TYPE, SECONDS_PER_DAY, _ct, jd_to_ms_time, table, tiled_cube

log = logging.getLogger(__name__)

# rows per tile of the main-table hypercubes (DATA tile ~ npol*nchan*8*rows bytes)
DATA_TILE_ROWS = 1024
# main-table tiles hold one (integration, spw) run of rows when it is at most this big
MAX_RUN_TILE_BYTES = 8 << 20
# the main-table columns written straight into their tile files (TileFiles)
BULK_COLUMNS = ("DATA", "FLAG", "WEIGHT", "SIGMA")
# skeleton templates: bump when what a template holds, or how it is stamped, changes
TEMPLATE_VERSION = 1
TEMPLATES_KEPT = 4


@dataclass
class MSLayout:
    """Everything the subtables need, plus the shape of the main table.

    Attributes
    ----------
    antenna_names : list[str] (nant,)           row i of ANTENNA = antenna number i
    antenna_positions : ndarray (nant, 3)       absolute ITRF (ECEF) metres
    dish_diameter : float                       metres
    spw_freqs : ndarray (nspw, nchan)           channel centres, Hz, ascending
    spw_widths : ndarray (nspw, nchan)          channel widths, Hz (positive)
    spw_names : list[str]                       e.g. 'sb15' for the lowest subband
    polarizations : list[str]                   ['XX', 'YY']
    field_names : list[str] (nfield,)
    field_dirs : ndarray (nfield, 2)            (RA, Dec) radians, J2000/ICRS
    field_times : ndarray (nfield,)             MS TIME of each field (s)
    time_range : (float, float)                 MS TIME of the start and end of the data (s)
    telescope_name : str
    nrows : int                                 rows of the main table (for size estimates)
    interval : float                            integration time (s)
    tile_rows : int                             rows per tile of the tiled columns (0: default)
    history : list[str]                         messages for HISTORY
    """

    antenna_names: list
    antenna_positions: np.ndarray
    dish_diameter: float
    spw_freqs: np.ndarray
    spw_widths: np.ndarray
    spw_names: list
    polarizations: list
    field_names: list
    field_dirs: np.ndarray
    field_times: np.ndarray
    time_range: tuple
    telescope_name: str = "OVRO_MMA"
    nrows: int = 0
    interval: float = 0.0
    tile_rows: int = 0
    history: list = field(default_factory=list)
    mount: str = "ALT-AZ"
    observer: str = "dsacont"
    project: str = "dsa110-contimg"

    @property
    def nchan(self) -> int:
        return int(self.spw_freqs.shape[1])

    @property
    def npol(self) -> int:
        return len(self.polarizations)


def run_tile_rows(nbl: int, npol: int, nchan: int) -> int:
    """:attr:`MSLayout.tile_rows` for runs of ``nbl`` rows: a run per tile when its DATA is at most
    ``MAX_RUN_TILE_BYTES``, else 0 (``DATA_TILE_ROWS``)."""
    return int(nbl) if int(nbl) * int(npol) * int(nchan) * 8 <= MAX_RUN_TILE_BYTES else 0


def _tiled(desc, dminfo, col, cell_shape, rows):
    desc[col].update(
        dataManagerType="TiledColumnStMan", dataManagerGroup=f"Tiled{col}",
        shape=np.array(cell_shape, dtype=np.int32), ndim=len(cell_shape), option=5,
    )
    dminfo[f"*{len(dminfo) + 1}"] = {
        "TYPE": "TiledColumnStMan", "NAME": f"Tiled{col}",
        "SPEC": {"DEFAULTTILESHAPE": np.array(list(cell_shape) + [rows], dtype=np.int32)},
        "COLUMNS": np.array([col]),
    }


def create_ms(path: str | os.PathLike, layout: MSLayout) -> None:
    """Create an MS at ``path`` (must not exist) with all subtables filled and no main-table
    rows, ready for :class:`MSWriter` (``add_runs`` then ``put``).
    """
    ct = _ct()
    path = str(path)
    if os.path.exists(path):
        raise FileExistsError(path)
    skel = path + ".skel"
    shutil.rmtree(skel, ignore_errors=True)
    sm = ct.simulator()
    try:
        sm.open(skel)  # a standard empty MS: required columns + every required subtable
        sm.close()
    finally:
        sm.done()
    with table(skel) as tb:
        desc = tb.getdesc()
        keywords = tb.getkeywords()
        info = tb.info()
    for col in ("MODEL_DATA", "CORRECTED_DATA"):
        desc.pop(col, None)
    desc.pop("_define_hypercolumn_", None)
    dminfo: dict = {}
    npol, nchan = layout.npol, layout.nchan
    # tiles that hold exactly one written run of rows (one integration x spw = nbl rows) are
    # written whole: ~2x faster puts than unaligned tiles (measured, casatools 6.7)
    rows = int(layout.tile_rows or DATA_TILE_ROWS)
    _tiled(desc, dminfo, "DATA", [npol, nchan], rows)
    _tiled(desc, dminfo, "FLAG", [npol, nchan], rows)
    _tiled(desc, dminfo, "UVW", [3], rows)
    _tiled(desc, dminfo, "WEIGHT", [npol], rows)
    _tiled(desc, dminfo, "SIGMA", [npol], rows)
    desc["UVW"]["keywords"]["MEASINFO"]["Ref"] = "J2000"
    # constant or slowly changing columns in the IncrementalStMan (a value per change, not per row)
    for col in ("FLAG_ROW", "DATA_DESC_ID"):
        desc[col].update(dataManagerType="IncrementalStMan", dataManagerGroup="ismdata")
    tb = ct.table()
    try:
        tb.create(path, desc, dminfo=dminfo)
        tb.close()
    finally:
        tb.done()
    subtables = [k for k, v in keywords.items() if isinstance(v, str) and v.startswith("Table:")]
    for sub in subtables:
        os.rename(os.path.join(skel, sub), os.path.join(path, sub))
    shutil.rmtree(skel, ignore_errors=True)
    with table(path, readonly=False) as tb:
        for k, v in keywords.items():
            tb.putkeyword(k, f"Table: {os.path.join(path, k)}" if k in subtables else v)
        tb.putinfo(info)
    _write_subtables(path, layout)


def _write_subtables(path: str, L: MSLayout) -> None:
    _write_static_subtables(path, L)
    _write_group_subtables(path, L)


def _rows_exactly(tb, n: int) -> None:
    """Make the open table ``tb`` have exactly ``n`` rows (fresh rows when the count differs)."""
    if tb.nrows() != n:
        if tb.nrows():
            tb.removerows(list(range(tb.nrows())))
        if n:
            tb.addrows(n)


def _write_static_subtables(path: str, L: MSLayout) -> None:
    """The subtables that depend only on the array and the band (ANTENNA, FEED but its TIME,
    SPECTRAL_WINDOW, POLARIZATION, DATA_DESCRIPTION, PROCESSOR): the same for every group of
    one layout (:func:`template_key`)."""
    nant = len(L.antenna_names)
    nspw = L.spw_freqs.shape[0]

    with table(path, "ANTENNA", readonly=False) as tb:
        tb.addrows(nant)
        tb.putcol("NAME", np.array(L.antenna_names, dtype=str))
        tb.putcol("STATION", np.array([f"DSA-{int(n):03d}" if str(n).isdigit() else str(n) for n in L.antenna_names]))
        tb.putcol("TYPE", np.array(["GROUND-BASED"] * nant))
        tb.putcol("MOUNT", np.array([L.mount] * nant))
        tb.putcol("POSITION", np.ascontiguousarray(np.asarray(L.antenna_positions, float).T))
        tb.putcol("OFFSET", np.zeros((3, nant)))
        tb.putcol("DISH_DIAMETER", np.full(nant, float(L.dish_diameter)))
        tb.putcol("FLAG_ROW", np.zeros(nant, bool))
        mi = tb.getcolkeyword("POSITION", "MEASINFO")
        mi["Ref"] = "ITRF"
        tb.putcolkeyword("POSITION", "MEASINFO", mi)

    with table(path, "FEED", readonly=False) as tb:
        tb.addrows(nant)
        tb.putcol("ANTENNA_ID", np.arange(nant, dtype=np.int32))
        tb.putcol("FEED_ID", np.zeros(nant, np.int32))
        tb.putcol("BEAM_ID", np.full(nant, -1, np.int32))
        tb.putcol("SPECTRAL_WINDOW_ID", np.full(nant, -1, np.int32))
        tb.putcol("INTERVAL", np.full(nant, 0.0))
        tb.putcol("NUM_RECEPTORS", np.full(nant, 2, np.int32))
        # Fortran order: casatools 6.7 reads a C-ordered 2-D string array from the wrong memory
        # (garbage receptor types from antenna 59 on; numeric arrays are not affected)
        tb.putcol("POLARIZATION_TYPE", np.asfortranarray(np.array([["X"] * nant, ["Y"] * nant])))
        tb.putcol("BEAM_OFFSET", np.zeros((2, 2, nant)))
        tb.putcol("POL_RESPONSE", np.repeat(np.eye(2, dtype=np.complex64)[:, :, None], nant, axis=2))
        tb.putcol("POSITION", np.zeros((3, nant)))
        tb.putcol("RECEPTOR_ANGLE", np.repeat(np.array([[0.0], [np.pi / 2]]), nant, axis=1))

    with table(path, "SPECTRAL_WINDOW", readonly=False) as tb:
        tb.addrows(nspw)
        for i in range(nspw):
            f = np.asarray(L.spw_freqs[i], float)
            w = np.asarray(L.spw_widths[i], float)
            tb.putcell("NUM_CHAN", i, int(f.size))
            tb.putcell("CHAN_FREQ", i, f)
            tb.putcell("CHAN_WIDTH", i, w)
            tb.putcell("EFFECTIVE_BW", i, w)
            tb.putcell("RESOLUTION", i, w)
            tb.putcell("TOTAL_BANDWIDTH", i, float(np.sum(w)))
            tb.putcell("REF_FREQUENCY", i, float(f[0]))
            tb.putcell("MEAS_FREQ_REF", i, 5)  # TOPO
            tb.putcell("NET_SIDEBAND", i, 1)
            tb.putcell("NAME", i, str(L.spw_names[i]))
            tb.putcell("FREQ_GROUP", i, 0)
            tb.putcell("FREQ_GROUP_NAME", i, "")
            tb.putcell("IF_CONV_CHAIN", i, 0)
            tb.putcell("FLAG_ROW", i, False)

    with table(path, "POLARIZATION", readonly=False) as tb:
        tb.addrows(1)
        tb.putcell("NUM_CORR", 0, L.npol)
        tb.putcell("CORR_TYPE", 0, np.array([CORR_TYPE[p] for p in L.polarizations], np.int32))
        tb.putcell("CORR_PRODUCT", 0, np.array([CORR_PRODUCT[p] for p in L.polarizations], np.int32).T.copy())
        tb.putcell("FLAG_ROW", 0, False)

    with table(path, "DATA_DESCRIPTION", readonly=False) as tb:
        tb.addrows(nspw)
        tb.putcol("SPECTRAL_WINDOW_ID", np.arange(nspw, dtype=np.int32))
        tb.putcol("POLARIZATION_ID", np.zeros(nspw, np.int32))
        tb.putcol("FLAG_ROW", np.zeros(nspw, bool))

    with table(path, "PROCESSOR", readonly=False) as tb:
        tb.addrows(1)
        tb.putcell("TYPE", 0, "CORRELATOR")
        tb.putcell("SUB_TYPE", 0, "DSA-110")
        tb.putcell("TYPE_ID", 0, 0)
        tb.putcell("MODE_ID", 0, 0)
        tb.putcell("FLAG_ROW", 0, False)


def _write_group_subtables(path: str, L: MSLayout) -> None:
    """The subtables (and columns) that change from group to group: FEED TIME, FIELD, SOURCE,
    OBSERVATION, HISTORY. Rewritten whole, so an MS copied from a template of another group
    ends up exactly as if it had been created for this one."""
    nant = len(L.antenna_names)
    nfield = len(L.field_names)
    tmid = float(np.mean(L.time_range))

    with table(path, "FEED", readonly=False) as tb:
        tb.putcol("TIME", np.full(nant, tmid))

    dirs = np.asarray(L.field_dirs, float).reshape(nfield, 2)
    with table(path, "FIELD", readonly=False) as tb:
        _rows_exactly(tb, nfield)
        for col in ("PHASE_DIR", "DELAY_DIR", "REFERENCE_DIR"):
            tb.putcol(col, np.ascontiguousarray(dirs.T[:, None, :]))
            mi = tb.getcolkeyword(col, "MEASINFO")
            mi["Ref"] = "J2000"
            tb.putcolkeyword(col, "MEASINFO", mi)
        tb.putcol("NAME", np.array(L.field_names, dtype=str))
        tb.putcol("CODE", np.array([""] * nfield))
        tb.putcol("NUM_POLY", np.zeros(nfield, np.int32))
        tb.putcol("SOURCE_ID", np.arange(nfield, dtype=np.int32))
        tb.putcol("TIME", np.asarray(L.field_times, float))
        tb.putcol("FLAG_ROW", np.zeros(nfield, bool))

    with table(path, "SOURCE", readonly=False) as tb:
        _rows_exactly(tb, nfield)
        tb.putcol("SOURCE_ID", np.arange(nfield, dtype=np.int32))
        tb.putcol("NAME", np.array(L.field_names, dtype=str))
        tb.putcol("DIRECTION", np.ascontiguousarray(dirs.T))
        tb.putcol("PROPER_MOTION", np.zeros((2, nfield)))
        tb.putcol("TIME", np.full(nfield, tmid))
        tb.putcol("INTERVAL", np.full(nfield, float(L.time_range[1] - L.time_range[0])))
        tb.putcol("SPECTRAL_WINDOW_ID", np.full(nfield, -1, np.int32))
        tb.putcol("NUM_LINES", np.zeros(nfield, np.int32))
        tb.putcol("CALIBRATION_GROUP", np.zeros(nfield, np.int32))
        tb.putcol("CODE", np.array([""] * nfield))

    with table(path, "OBSERVATION", readonly=False) as tb:
        _rows_exactly(tb, 1)
        tb.putcell("TELESCOPE_NAME", 0, L.telescope_name)
        tb.putcell("TIME_RANGE", 0, np.array(L.time_range, float))
        tb.putcell("OBSERVER", 0, L.observer)
        tb.putcell("PROJECT", 0, L.project)
        tb.putcell("SCHEDULE_TYPE", 0, "")
        tb.putcell("RELEASE_DATE", 0, 0.0)
        tb.putcell("LOG", 0, np.array([""]))
        tb.putcell("SCHEDULE", 0, np.array([""]))
        tb.putcell("FLAG_ROW", 0, False)

    with table(path, "HISTORY", readonly=False) as tb:
        _rows_exactly(tb, 0)
    if L.history:
        add_history(path, L.history)


def add_history(path, messages, origin: str = "dsacont.convert") -> None:
    """Append ``messages`` (list of str) to the MS HISTORY table."""
    with table(path, "HISTORY", readonly=False) as tb:
        n0 = tb.nrows()
        n = len(messages)
        tb.addrows(n)
        now = jd_to_ms_time(_time.time() / SECONDS_PER_DAY + 2440587.5)
        for i, msg in enumerate(messages):
            r = n0 + i
            tb.putcell("TIME", r, float(now))
            tb.putcell("OBSERVATION_ID", r, 0)
            tb.putcell("MESSAGE", r, str(msg))
            tb.putcell("PRIORITY", r, "NORMAL")
            tb.putcell("ORIGIN", r, origin)
            tb.putcell("OBJECT_ID", r, 0)
            tb.putcell("APPLICATION", r, f"dsacont {__version__}")
            tb.putcell("CLI_COMMAND", r, np.array([""]))
            tb.putcell("APP_PARAMS", r, np.array([""]))


class MSWriter:
    """Write main-table rows of an MS made by :func:`create_ms`. One writer, one thread.

    Use as a context manager; :meth:`put` writes ``nrow`` consecutive rows from ``startrow``.
    """

    def __init__(self, path):
        self.path = str(path)
        self._open = table(self.path, readonly=False)
        self.tb = self._open.__enter__()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self):
        """Flush and close the table (idempotent)."""
        if self.tb is not None:
            self.tb = None
            self._open.__exit__(None, None, None)

    def put(self, startrow: int, **columns) -> None:
        """Write columns for rows ``startrow .. startrow + n``.

        Row-major numpy arrays, first axis = row: DATA (n, nchan, npol) complex64,
        FLAG (n, nchan, npol) bool, UVW (n, 3), WEIGHT/SIGMA (n, npol), scalars (n,).
        (casatools wants the row axis last; C-contiguous row-major arrays are passed transposed,
        which is the Fortran layout casacore stores, so no copy is made here.)
        """
        tb = self.tb
        for name, arr in columns.items():
            arr = np.asarray(arr)
            n = arr.shape[0]
            tb.putcol(name, arr.T, startrow=int(startrow), nrow=int(n))

    def add_runs(self, lengths, constants: dict | None = None, **columns) -> None:
        """Append rows in runs; ``columns[name][k]`` is the value of run ``k`` (``lengths[k]`` rows).

        For IncrementalStMan columns (TIME, FIELD_ID, DATA_DESC_ID, INTERVAL, ...): rows added
        after a row inherit its values, so each run costs one ``putcell`` per column instead of
        one value per row. ``constants`` (name -> value) are put once, in the first new row.
        """
        tb = self.tb
        first = True
        for k, n in enumerate(lengths):
            r = tb.nrows()
            tb.addrows(1)
            if first and constants:
                for name, value in constants.items():
                    tb.putcell(name, r, value)
            first = False
            for name, values in columns.items():
                v = values[k]
                tb.putcell(name, r, v.item() if hasattr(v, "item") else v)
            if int(n) > 1:
                tb.addrows(int(n) - 1)


    # ------------------------------------------------------------------ direct tile writing
    def tile_layout(self, columns=BULK_COLUMNS, seed: int = 12345, known: dict | None = None):
        """Describe the tiled storage of ``columns`` and put probe values in their first and
        last rows (see :class:`TileFiles`). Returns a dict for :meth:`TileFiles.open`, or None if
        a column is not in a single-hypercube ``TiledColumnStMan`` whose tiles hold whole rows
        of whole bytes. Call after all rows are added; :meth:`TileFiles.open` after closing.

        ``known``: ``{column: {row: cell value (row-major)}}`` for columns already written
        (UVW): those values serve as the probes and nothing is put."""
        tb = self.tb
        nrows = int(tb.nrows())
        if nrows == 0:
            return None
        dminfo = tb.getdminfo()
        rng = np.random.default_rng(seed)
        out = {"path": self.path, "nrows": nrows, "columns": {}}
        for col in columns:
            # a TiledColumnStMan (its one file is _TSM0) of whole tiles: every byte is written here
            cube = tiled_cube(tb, col, dminfo)
            if cube is None or cube["manager"] != "TiledColumnStMan" or nrows % cube["tile_rows"]:
                return None
            cell, R, bucket, dtype = cube["cell"], cube["tile_rows"], cube["bucket"], cube["dtype"]
            probes = {}
            if known and col in known:
                probes = {int(r): np.asarray(v, dtype) for r, v in known[col].items()}
            for row in (() if probes else (0, nrows - 1)):
                shape = tuple(reversed(cell))  # row-major cell as MSWriter.put takes it
                if dtype is np.bool_:
                    v = rng.random(shape) < 0.5
                elif dtype is np.complex64:
                    v = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(np.complex64)
                else:
                    v = rng.standard_normal(shape).astype(np.float32)
                self.put(row, **{col: v[None]})
                probes[row] = v
            out["columns"][col] = dict(file=os.path.join(self.path, f"table.f{cube['seqnr']}_TSM0"),
                                       cell=cell, tile_rows=R, bucket=bucket, dtype=np.dtype(dtype).str,
                                       ntiles=nrows // R, probes=probes)
        return out


class TileFiles:
    """Write whole tiles of DATA/FLAG/WEIGHT/SIGMA straight into a closed MS's storage files.

    Obtain with :meth:`open` (which verifies the layout; None means: use :class:`MSWriter`).
    :meth:`write` is thread-safe (``os.pwrite`` to disjoint byte ranges; no casacore call).
    """

    def __init__(self, layout):
        self.layout = layout
        self.cols = layout["columns"]
        self.fds = {}
        # one writer per file at a time: concurrent buffered writes to one file serialise on its
        # inode lock in the kernel anyway, and waiting there spins (burns a core); here it sleeps
        self._col_locks = {col: threading.Lock() for col in self.cols}

    @classmethod
    def open(cls, layout, check_probes: bool = True):
        """Verify file lengths and probe values of a :meth:`MSWriter.tile_layout` (the table
        must be closed). Returns a :class:`TileFiles` or None (logged) if anything differs."""
        if not layout:
            return None
        self = cls(layout)
        try:
            for col, c in self.cols.items():
                if os.path.getsize(c["file"]) != c["ntiles"] * c["bucket"]:
                    log.info("direct tile writing off: %s has %d bytes, expected %d", c["file"],
                             os.path.getsize(c["file"]), c["ntiles"] * c["bucket"])
                    return None
                fd = os.open(c["file"], os.O_RDWR)
                self.fds[col] = fd
                for row, v in (c["probes"].items() if check_probes else ()):
                    expect = self._encode(col, v[None])
                    off = self._offset(col, row)
                    got = os.pread(fd, expect.nbytes, off)
                    if got != expect.tobytes():
                        log.info("direct tile writing off: probe of %s row %d not found in %s", col, row, c["file"])
                        self.close()
                        return None
        except OSError as exc:
            log.info("direct tile writing off: %s", exc)
            self.close()
            return None
        return self

    @classmethod
    def of_column(cls, tile_file: dict, column: str):
        """Writer of one existing column whose layout :func:`dsacont.io.ms.tile_file` found (its
        file holds every tile already, as after ``addcols``): None if the file is not its full
        length. Nothing else may write the column while it is used, and the casacore table it was
        found through must not read it again (its cached tiles would be stale)."""
        tf = tile_file
        ntiles = -(-int(tf["nrows"]) // int(tf["tile_rows"]))
        col = dict(file=tf["file"], cell=list(tf["cell"]), tile_rows=int(tf["tile_rows"]), bucket=int(tf["bucket"]),
                   dtype=np.dtype(tf["dtype"]).str, ntiles=ntiles, probes={})
        return cls.open({"path": os.path.dirname(tf["file"]), "nrows": int(tf["nrows"]), "columns": {column: col}},
                        check_probes=False)

    @classmethod
    def relocate(cls, tiles, src_ms, dst_ms):
        """Copy the MS ``src_ms`` (closed, layout verified by ``tiles``) to ``dst_ms`` except the
        bulk tile files, which are created empty (sparse) at their full length instead: every
        byte of them is written later through the returned :class:`TileFiles` (each row of each
        column is written exactly once), so casacore's zero-filled copies are never copied.
        ``tiles`` is closed; ``src_ms`` is left as it is (the caller removes it)."""
        src_ms, dst_ms = str(src_ms), str(dst_ms)
        skip = _bulk_files(tiles.layout)
        tiles.close()
        _copy_without(src_ms, dst_ms, skip)
        layout = dict(tiles.layout, path=dst_ms, columns={})
        for col, c in tiles.cols.items():
            rel = os.path.relpath(c["file"], src_ms)
            new = dict(c, file=os.path.join(dst_ms, rel))
            fd = os.open(new["file"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            try:
                os.ftruncate(fd, c["ntiles"] * c["bucket"])
            finally:
                os.close(fd)
            layout["columns"][col] = new
        return cls.open(layout, check_probes=False)

    def _offset(self, col, row):
        c = self.cols[col]
        R, ncell = c["tile_rows"], int(np.prod(c["cell"]))
        tile, k = divmod(int(row), R)
        per_row = ncell // 8 if c["dtype"] == "|b1" else ncell * np.dtype(c["dtype"]).itemsize
        return tile * c["bucket"] + k * per_row

    def _encode(self, col, arr):
        c = self.cols[col]
        if c["dtype"] == "|b1":
            a = np.ascontiguousarray(arr, dtype=np.bool_)
            return pack_bits_le(a.reshape(-1), np.empty(a.size // 8, np.uint8))
        return np.ascontiguousarray(arr, dtype=np.dtype(c["dtype"]))

    def forget(self, col) -> None:
        """Stop handling column ``col`` (its file is left as it is)."""
        fd = self.fds.pop(col, None)
        if fd is not None:
            os.close(fd)
        self.cols = {k: v for k, v in self.cols.items() if k != col}
        self.layout = dict(self.layout, columns=self.cols)

    def write(self, startrow: int, **columns) -> None:
        """Write rows ``startrow ..`` of each column; arrays row-major as :meth:`MSWriter.put`
        takes them (DATA (n, nchan, npol) ...). FLAG may be given already packed (uint8, from
        :func:`pack_bits_le`). Any row range: buckets are exactly ``R`` rows of whole bytes, so
        the file holds the rows contiguously in row order."""
        for col, arr in columns.items():
            arr = np.asarray(arr)
            if self.cols[col]["dtype"] == "|b1" and arr.dtype == np.uint8:
                buf = np.ascontiguousarray(arr)
            else:
                buf = self._encode(col, arr)
            mv = memoryview(buf).cast("B")
            off = self._offset(col, startrow)
            end = self.cols[col]["ntiles"] * self.cols[col]["bucket"]
            if off + len(mv) > end:
                raise ValueError(f"{col}: rows from {startrow} run past the end of the column")
            fd = self.fds[col]
            done = 0
            with self._col_locks[col]:
                while done < len(mv):
                    done += os.pwrite(fd, mv[done:], off + done)

    def close(self):
        for fd in self.fds.values():
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


@dataclass
class MainRows:
    """The main table of one group: ``ntime * nspw`` runs of ``nbl`` rows, in (time, spw,
    baseline) order (sorted by TIME; one (integration, spw) is a contiguous run).

    Attributes
    ----------
    time : ndarray (ntime,)         MS TIME (and TIME_CENTROID) of each integration, s
    field_id : ndarray (ntime,)     FIELD_ID of each integration
    scan : ndarray (ntime,)         SCAN_NUMBER of each integration
    nspw : int                      runs per integration; DATA_DESC_ID = spw
    ant1, ant2 : ndarray (nbl,)     ANTENNA1/ANTENNA2 of every run
    uvw : ndarray (ntime, nbl, 3)   UVW, metres (MS convention: x[ANTENNA1] - x[ANTENNA2])
    interval : float                INTERVAL = EXPOSURE, s
    """

    time: np.ndarray
    field_id: np.ndarray
    scan: np.ndarray
    nspw: int
    ant1: np.ndarray
    ant2: np.ndarray
    uvw: np.ndarray
    interval: float

    @property
    def nbl(self) -> int:
        return int(len(self.ant1))

    @property
    def nrows(self) -> int:
        return int(len(self.time)) * int(self.nspw) * self.nbl

    def run_start(self, t: int, spw: int) -> int:
        """First row of integration ``t``, spw ``spw``."""
        return (int(t) * int(self.nspw) + int(spw)) * self.nbl

    def write_metadata(self, w: "MSWriter") -> None:
        """Add every row to the (empty) main table of ``w`` with all columns but the bulk ones.
        IncrementalStMan columns get one value per run (constants once); ANTENNA1/2 and UVW
        one ``putcol`` per integration."""
        ntime, nspw = len(self.time), int(self.nspw)
        fid = np.repeat(np.asarray(self.field_id, np.int32), nspw)
        t_run = np.repeat(np.asarray(self.time, float), nspw)
        w.add_runs(
            np.full(ntime * nspw, self.nbl),
            constants=dict(INTERVAL=float(self.interval), EXPOSURE=float(self.interval), STATE_ID=-1, ARRAY_ID=0,
                           OBSERVATION_ID=0, PROCESSOR_ID=0, FEED1=0, FEED2=0, FLAG_ROW=False),
            TIME=t_run, TIME_CENTROID=t_run, FIELD_ID=fid,
            SCAN_NUMBER=np.repeat(np.asarray(self.scan, np.int32), nspw),
            DATA_DESC_ID=np.tile(np.arange(nspw, dtype=np.int32), ntime),
        )
        ant1_t = np.tile(np.asarray(self.ant1, np.int32), nspw)
        ant2_t = np.tile(np.asarray(self.ant2, np.int32), nspw)
        for t in range(ntime):
            w.put(self.run_start(t, 0), ANTENNA1=ant1_t, ANTENNA2=ant2_t, UVW=np.tile(self.uvw[t], (nspw, 1)))

    def static_digest(self, h) -> None:
        """Feed everything but TIME and UVW (what a template holds) into hash ``h``."""
        for a in (self.field_id, self.scan, self.ant1, self.ant2):
            h.update(np.ascontiguousarray(a, np.int64).tobytes())
        h.update(repr((int(self.nspw), float(self.interval), len(self.time))).encode())


def template_key(layout: MSLayout, rows: MainRows) -> str:
    """Name of the skeleton template of MSs with this layout: a hash of everything a template
    holds (array, band, polarisations, row structure, field count, tiling, versions)."""
    h = hashlib.sha1()
    L = layout
    h.update(repr((TEMPLATE_VERSION, __version__, _ct().version_string(),
                   list(map(str, L.antenna_names)), float(L.dish_diameter), list(map(str, L.spw_names)),
                   list(map(str, L.polarizations)), len(L.field_names), str(L.telescope_name), int(L.nrows),
                   float(L.interval), int(L.tile_rows), L.mount, L.observer, L.project)).encode())
    for a in (L.antenna_positions, L.spw_freqs, L.spw_widths):
        h.update(np.ascontiguousarray(a, np.float64).tobytes())
    rows.static_digest(h)
    return h.hexdigest()[:20]


def _bulk_files(tile_layout: dict) -> set:
    return {os.path.realpath(c["file"]) for c in tile_layout["columns"].values()}


def _copy_without(src, dst, skip: set) -> None:
    """Copy the table directory ``src`` to ``dst`` without the files in ``skip`` (real paths)."""
    def ignore(d, names):
        return [n for n in names if os.path.realpath(os.path.join(d, n)) in skip]

    shutil.copytree(src, dst, ignore=ignore)


def _save_template(built, tile_layout: dict, root: Path, key: str) -> None:
    """Keep the freshly built, verified skeleton ``built`` (closed) as template ``root/key``:
    every file but the bulk tile files, and their layout. Atomic; a template another process
    saved first is kept. Only the ``TEMPLATES_KEPT`` most recently used templates are kept."""

    dst = root / key
    if dst.exists():
        return
    tmp = root / f".{key}.partial{os.getpid()}.{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        root.mkdir(parents=True, exist_ok=True)
        _copy_without(built, tmp / "ms", _bulk_files(tile_layout))
        cols = {col: dict(file=os.path.relpath(c["file"], built), cell=c["cell"], tile_rows=c["tile_rows"],
                          bucket=c["bucket"], dtype=c["dtype"], ntiles=c["ntiles"])
                for col, c in tile_layout["columns"].items()}
        (tmp / "layout.json").write_text(json.dumps({"key": key, "nrows": tile_layout["nrows"], "columns": cols}))
        os.replace(tmp, dst)
    except OSError as exc:
        log.info("MS template not saved (%s)", exc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    try:
        kept = sorted((p for p in root.iterdir() if not p.name.startswith(".")), key=lambda p: p.stat().st_mtime)
        for old in kept[:-TEMPLATES_KEPT]:
            shutil.rmtree(old, ignore_errors=True)
    except OSError:
        pass


def _from_template(root: Path, key: str, path, layout: MSLayout, rows: MainRows):
    """The MS ``path`` from template ``root/key`` (None when there is none): the template's
    files copied, the bulk tile files created sparse at full length, this group's TIME,
    TIME_CENTROID and per-group subtables written with casatools and its UVW written into its
    tiles. Returns the :class:`TileFiles` of the bulk columns."""

    tpl = root / key
    try:
        meta = json.loads((tpl / "layout.json").read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key or meta.get("nrows") != rows.nrows:
        return None
    try:
        os.utime(tpl)
    except OSError:
        pass
    path = str(path)
    shutil.copytree(tpl / "ms", path)
    cols = {}
    for col, c in meta["columns"].items():
        f = os.path.join(path, c["file"])
        fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.ftruncate(fd, c["ntiles"] * c["bucket"])
        finally:
            os.close(fd)
        cols[col] = dict(c, file=f, probes={})
    tiles = TileFiles.open({"path": path, "nrows": meta["nrows"], "columns": cols}, check_probes=False)
    if tiles is None:
        return None
    with table(path, readonly=False) as tb:
        per_t = int(rows.nspw) * rows.nbl
        for t, v in enumerate(np.asarray(rows.time, float)):
            run = np.full(per_t, v)
            tb.putcol("TIME", run, startrow=rows.run_start(t, 0), nrow=per_t)
            tb.putcol("TIME_CENTROID", run, startrow=rows.run_start(t, 0), nrow=per_t)
    _write_group_subtables(path, layout)
    uvw = np.asarray(rows.uvw, np.float64)
    for t in range(len(rows.time)):
        for spw in range(int(rows.nspw)):
            tiles.write(rows.run_start(t, spw), UVW=uvw[t])
    tiles.forget("UVW")  # written: the caller's columns are the bulk ones
    return tiles


def build_skeleton(path, layout: MSLayout, rows: MainRows, *, direct: bool = True, templates=None,
                   build_in=None, prof: dict | None = None):
    """Create the MS ``path`` with every row and all metadata; the bulk columns are left for
    the caller. Returns :class:`TileFiles` for DATA/FLAG/WEIGHT/SIGMA (direct writing verified)
    or None (write them with :class:`MSWriter`).

    ``templates``: a directory of skeleton templates (:func:`template_key`). Building a
    skeleton with casatools is costly, most of it casacore zero-filling every tile when the
    table closes; a group whose layout was seen before is instead copied
    from its template (~15 MB of metadata) and stamped with its own TIME, UVW and per-group
    subtables. ``build_in``: build a fresh skeleton there (tmpfs: zero-filling is cheap) and
    move it to ``path`` without its bulk files (:meth:`TileFiles.relocate`).
    """
    prof = {} if prof is None else prof
    tick = _time.perf_counter()
    key = template_key(layout, rows) if (templates and direct) else None
    if key:
        try:
            tiles = _from_template(Path(templates), key, path, layout, rows)
        except Exception as exc:  # a damaged template: build afresh (and replace it)
            log.warning("MS template %s unusable (%s); building the MS skeleton afresh", key, exc)
            shutil.rmtree(Path(templates) / key, ignore_errors=True)
            shutil.rmtree(path, ignore_errors=True)
            tiles = None
        if tiles is not None:
            prof["skeleton_from_template"] = _time.perf_counter() - tick
            return tiles
    where = Path(build_in) if build_in else Path(path)
    try:
        create_ms(where, layout)
        prof["create"] = _time.perf_counter() - tick
        tick = _time.perf_counter()
        with MSWriter(where) as w:
            rows.write_metadata(w)
            last = rows.nrows - 1
            known = {"UVW": {0: rows.uvw[0, 0][None], last: rows.uvw[-1, -1][None]}}
            tile_layout = w.tile_layout(BULK_COLUMNS + ("UVW",), known=known) if direct else None
            if direct and tile_layout is None:  # direct writes without a template (UVW stays casatools')
                tile_layout = w.tile_layout(BULK_COLUMNS)
        tiles = TileFiles.open(tile_layout)
        prof["metadata"] = _time.perf_counter() - tick
        tick = _time.perf_counter()
        if tiles is not None and key and "UVW" in tiles.cols:
            _save_template(where, tile_layout, Path(templates), key)
            prof["template_saved"] = _time.perf_counter() - tick
        if tiles is not None:  # UVW is already in place: not a column for the caller
            tiles.forget("UVW")
        if where != Path(path):
            tick = _time.perf_counter()
            if tiles is not None:
                tiles = TileFiles.relocate(tiles, where, path)
            else:
                shutil.copytree(where, path)
            prof["relocate"] = _time.perf_counter() - tick
    finally:
        if where != Path(path):
            shutil.rmtree(where, ignore_errors=True)
    return tiles


