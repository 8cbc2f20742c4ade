"""The Measurement Set through the casatools ``table`` tool (no python-casacore): access and reading.

Every table is opened through :func:`table`, a context manager that closes the table and releases
its tool whatever happens (the pattern of dask-ms's ``TableProxy``). The metadata of an MS
(times, SPWs, data descriptions, polarisations, fields, antennas, telescope) is read in one
place, :func:`read_ms_info` (:class:`MSInfo`).

What an MS holds and how dsacont writes one (the layout, the conjugation, TIME) is described in
:mod:`dsacont.io.ms_build`, which builds them (:func:`~dsacont.io.ms_build.create_ms`, the
converter's skeletons and direct tile writes); :mod:`dsacont.io.ms_average` writes the
channel-averaged copy that imaging reads. This module holds what every stage uses to read and
modify an existing MS: :func:`table`, :func:`read_ms_info`, the record of a data column modified
in place (:func:`flatten_state`), and column access by DATA_DESCRIPTION in contiguous runs of rows
(:func:`ddid_runs`, :func:`get_runs`, :func:`put_runs`).

Casacore tables are not thread-safe: one writer per table (:class:`dsacont.io.ms_build.MSWriter`
per MS), used from one thread.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
from dataclasses import dataclass

import numpy as np

from dsacont.casa import ensure_casa
from dsacont.errors import BadInputError, DsacontError

log = logging.getLogger(__name__)

MJD0_JD = 2400000.5
SECONDS_PER_DAY = 86400.0
# Stokes codes (casacore Stokes::StokesTypes) for the MS POLARIZATION table
CORR_TYPE = {"XX": 9, "XY": 10, "YX": 11, "YY": 12, "RR": 5, "RL": 6, "LR": 7, "LL": 8, "I": 1}
# receptor pairs for each correlation (X = 0, Y = 1)
CORR_PRODUCT = {"XX": (0, 0), "XY": (0, 1), "YX": (1, 0), "YY": (1, 1)}


def jd_to_ms_time(jd):
    """JD (UTC) -> MS TIME: seconds since MJD 0 (float64)."""
    return (np.asarray(jd, dtype=np.float64) - MJD0_JD) * SECONDS_PER_DAY


def _ct():
    """casatools, configured for offline use (:func:`dsacont.casa.ensure_casa`)."""
    return ensure_casa()


@contextlib.contextmanager
def table(path, subtable: str | None = None, *, readonly: bool = True, **open_options):
    """A casatools table, open for the ``with`` block and closed (and its tool released) after it,
    whatever happens inside.

    Every casacore table dsacont reads or writes is opened here (the pattern of dask-ms's
    ``TableProxy``, with casatools instead of python-casacore).

    Parameters
    ----------
    path : str or os.PathLike
        The table (an MS directory, a calibration table, an image's table...).
    subtable : str, optional
        A subtable of ``path`` (``"SPECTRAL_WINDOW"``, ``"ANTENNA"``...).
    readonly : bool
        Open for reading only (default). False: open for writing; changes are flushed to disk
        when the block ends.
    **open_options
        Passed on to casatools ``table.open`` (e.g. ``lockoptions``).

    Yields
    ------
    casatools.table
        The open table tool.

    Raises
    ------
    RuntimeError
        casatools' own error when the table cannot be opened (no such table...).

    Examples
    --------
    >>> with table(ms, "SPECTRAL_WINDOW") as tb:
    ...     freqs = tb.getcell("CHAN_FREQ", 0)
    >>> with table(ms, readonly=False) as tb:
    ...     tb.putcol("FLAG", flags)
    """
    tb = _ct().table()
    where = str(path) if subtable is None else os.path.join(str(path), subtable)
    # close() alone: the tool's done() after a close logs "No table opened" twice, to the terminal
    tb.open(where, nomodify=bool(readonly), **open_options)
    try:
        yield tb
        if not readonly:
            tb.flush()
    finally:
        tb.close()


@dataclass
class MSInfo:
    """The metadata of a Measurement Set (no data column is read): :func:`read_ms_info`.

    Attributes
    ----------
    path : str
    nrows : int
        Rows of the main table.
    columns : list of str
        Main-table column names (``"CORRECTED_DATA" in info.columns``...).
    times_s : ndarray (ntime,) float64
        Unique TIME values, seconds since MJD 0 (UTC), integration centres, ascending.
    interval_s : float
        Median INTERVAL, seconds.
    spw_freqs : list of ndarray (nchan_spw,) float64
        Channel frequencies of each SPECTRAL_WINDOW row, Hz.
    spw_widths : list of ndarray (nchan_spw,) float64
        Channel widths, Hz, positive.
    spw_names : list of str
    ddid_spw, ddid_pol : ndarray (nddid,) int
        SPECTRAL_WINDOW_ID and POLARIZATION_ID of each DATA_DESCRIPTION row.
    corr_types : list of ndarray (ncorr,) int
        CORR_TYPE (Stokes codes: 9 = XX, 12 = YY) of each POLARIZATION row.
    field_names : list of str
    field_dirs : ndarray (nfield, 2) float64
        PHASE_DIR (RA, Dec) of each field, radians, in frame ``field_frame``.
    field_frame : str
        The PHASE_DIR reference frame (``"J2000"`` for dsacont's MSs).
    antenna_names : list of str
    antenna_positions : ndarray (nant, 3) float64
        ITRF (ECEF) metres.
    telescope_name : str
        OBSERVATION row 0 (``""`` when the table is empty).
    """

    path: str
    nrows: int
    columns: list
    times_s: np.ndarray
    interval_s: float
    spw_freqs: list
    spw_widths: list
    spw_names: list
    ddid_spw: np.ndarray
    ddid_pol: np.ndarray
    corr_types: list
    field_names: list
    field_dirs: np.ndarray
    field_frame: str
    antenna_names: list
    antenna_positions: np.ndarray
    telescope_name: str

    @property
    def mid_mjd(self) -> float:
        """MJD (UTC) halfway between the first and last integration centre."""
        return float(0.5 * (self.times_s.min() + self.times_s.max()) / SECONDS_PER_DAY)

    @property
    def time_range_s(self) -> tuple[float, float]:
        """(first, last) integration centre, seconds since MJD 0 (UTC)."""
        return float(self.times_s.min()), float(self.times_s.max())

    @property
    def start_end_mjd(self) -> tuple[float, float]:
        """MJD (UTC) of the start of the first and the end of the last integration."""
        half = 0.5 * self.interval_s
        return float((self.times_s.min() - half) / SECONDS_PER_DAY), float((self.times_s.max() + half) / SECONDS_PER_DAY)

    def ddid_layout(self) -> dict:
        """Per DATA_DESCRIPTION id: ``{"spw": int, "freq": ndarray (nchan,) Hz, "ncorr": int}``."""
        return {dd: {"spw": int(spw), "freq": np.asarray(self.spw_freqs[int(spw)], np.float64).ravel(),
                     "ncorr": int(np.asarray(self.corr_types[int(pol)]).size)}
                for dd, (spw, pol) in enumerate(zip(self.ddid_spw, self.ddid_pol))}


def _cells(tb, col) -> list:
    """Every cell of column ``col`` (variable shapes allowed); [] for an empty table."""
    return [tb.getcell(col, i) for i in range(tb.nrows())]


def read_ms_info(path, *, require_rows: bool = True) -> MSInfo:
    """Read the metadata of a Measurement Set with casatools (:class:`MSInfo`).

    Reads the subtables (SPECTRAL_WINDOW, DATA_DESCRIPTION, POLARIZATION, FIELD, ANTENNA,
    OBSERVATION) and the main table's TIME and INTERVAL columns; no data column.

    Parameters
    ----------
    path : str or os.PathLike
        The MS directory.
    require_rows : bool
        Raise when the main table has no rows (default).

    Returns
    -------
    MSInfo

    Raises
    ------
    dsacont.errors.BadInputError
        Naming the MS: not a table directory, no rows (``require_rows``), or casatools cannot
        read it.

    Notes
    -----
    The one reader of MS metadata: calibration (:func:`dsacont.calibration.msinfo.read_ms_info`,
    which also checks the frame), imaging (``inspect_ms``), MS flagging (``ddid_layout``) and the
    service (``time_range_s``, ``mid_mjd``) all read it here.
    """
    path = str(path)
    if not os.path.isdir(path) or not os.path.exists(os.path.join(path, "table.dat")):
        raise BadInputError(path, "not a Measurement Set (no table.dat)")
    try:
        with table(path) as tb:
            nrows = int(tb.nrows())
            if nrows == 0 and require_rows:
                raise BadInputError(path, "the Measurement Set has no rows")
            columns = [str(c) for c in tb.colnames()]
            times = np.unique(np.asarray(tb.getcol("TIME"), np.float64)) if nrows else np.zeros(0)
            interval = float(np.median(tb.getcol("INTERVAL"))) if nrows else 0.0
        with table(path, "SPECTRAL_WINDOW") as tb:
            spw_freqs = [np.asarray(f, np.float64).ravel() for f in _cells(tb, "CHAN_FREQ")]
            spw_widths = [np.abs(np.asarray(w, np.float64).ravel()) for w in _cells(tb, "CHAN_WIDTH")]
            spw_names = [str(n) for n in _cells(tb, "NAME")]
        with table(path, "DATA_DESCRIPTION") as tb:
            ddid_spw = np.asarray(_cells(tb, "SPECTRAL_WINDOW_ID"), dtype=int)
            ddid_pol = np.asarray(_cells(tb, "POLARIZATION_ID"), dtype=int)
        with table(path, "POLARIZATION") as tb:
            corr_types = [np.asarray(c, int).ravel() for c in _cells(tb, "CORR_TYPE")]
        with table(path, "FIELD") as tb:
            field_names = [str(n) for n in _cells(tb, "NAME")]
            pd = np.asarray(tb.getcol("PHASE_DIR")) if tb.nrows() else np.zeros((2, 1, 0))  # (2, npoly+1, nfield)
            frame = str(tb.getcolkeyword("PHASE_DIR", "MEASINFO").get("Ref", "J2000"))
        with table(path, "ANTENNA") as tb:
            antenna_names = [str(n) for n in _cells(tb, "NAME")]
            positions = np.asarray(tb.getcol("POSITION"), np.float64).T if tb.nrows() else np.zeros((0, 3))
        with table(path, "OBSERVATION") as tb:
            telescope = str(tb.getcell("TELESCOPE_NAME", 0)) if tb.nrows() else ""
    except RuntimeError as exc:
        raise BadInputError(path, f"casatools cannot read it: {exc}") from exc
    return MSInfo(path=path, nrows=nrows, columns=columns, times_s=times, interval_s=interval, spw_freqs=spw_freqs,
                  spw_widths=spw_widths, spw_names=spw_names, ddid_spw=ddid_spw, ddid_pol=ddid_pol,
                  corr_types=corr_types, field_names=field_names, field_dirs=np.ascontiguousarray(pd[:, 0, :].T),
                  field_frame=frame, antenna_names=antenna_names, antenna_positions=positions,
                  telescope_name=telescope)


# ---- the record of a data column modified in place (bright-source flattening, dsacont.imaging.flatten)

KEYWORD_FLATTEN = "DSACONT_FLATTEN"


class FlattenInterrupted(DsacontError):
    """An MS's data column was left half flattened (or half restored) by an interrupted run."""


def flatten_state(ms) -> dict | None:
    """The recorded flattening of ``ms`` (dict) or None; raises :class:`FlattenInterrupted` when a
    previous write was interrupted."""
    with table(ms) as tb:
        kw = tb.getkeywords()
    if KEYWORD_FLATTEN not in kw:
        return None
    state = json.loads(str(kw[KEYWORD_FLATTEN]))
    if state.get("state") != "applied":
        raise FlattenInterrupted(
            f"{ms}: flattening of {state.get('column')} was interrupted while {state.get('state')}; "
            "re-apply the calibration (dsacont applycal) to restore CORRECTED_DATA")
    return state


def clear_state(ms) -> None:
    """Forget the flattening record (after CORRECTED_DATA was rewritten from DATA by applycal)."""
    with table(ms, readonly=False) as tb:
        if KEYWORD_FLATTEN in tb.keywordnames():
            tb.removekeyword(KEYWORD_FLATTEN)


def set_flatten_state(tb, state: dict) -> None:
    tb.putkeyword(KEYWORD_FLATTEN, json.dumps(state))
    tb.flush()


# ---- data columns: add one, read one DATA_DESCRIPTION at a time

def ensure_column(ms: str, name: str, like: str = "DATA") -> None:
    """Add a data column shaped like ``like`` (tiled storage) if the MS has none."""
    with table(ms, readonly=False) as tb:
        if name in tb.colnames():
            return
        desc = tb.getcoldesc(like)
        desc.pop("comment", None)
        cell = [int(x) for x in tb.getcell(like, 0).shape]
        # tiles of ~1 MiB holding whole cells: the same row blocks as DATA
        rows = int(np.clip(2**20 // (8 * int(np.prod(cell))), 64, 8192))
        dm = {"TYPE": "TiledShapeStMan", "NAME": f"Tiled{name}", "SEQNR": 0,
              "SPEC": {"DEFAULTTILESHAPE": np.array(cell + [rows], dtype=np.int32)}}
        tb.addcols({name: desc}, dm)


def copy_column(ms: str, src: str = "DATA", dst: str = "CORRECTED_DATA", chunk_rows: int = 200_000) -> None:
    """Copy data column ``src`` into ``dst`` (added shaped like ``src`` if missing), in row chunks.

    For data already in Jy with no gains (a simulation without them): the calibrated column is DATA.
    """
    ensure_column(ms, dst, like=src)
    with table(ms, readonly=False) as tb:
        n = tb.nrows()
        for start in range(0, n, chunk_rows):
            k = min(chunk_rows, n - start)
            tb.putcol(dst, tb.getcol(src, start, k), start, k)


def iter_ddid(tb, ddids, chunk_rows: int = 200_000):
    """Yield (ddid, subtable, start, nrow) chunks of one DATA_DESC_ID at a time."""
    for d in ddids:
        sub = tb.query(f"DATA_DESC_ID=={int(d)}")
        try:
            n = sub.nrows()
            for s in range(0, n, chunk_rows):
                yield int(d), sub, s, min(chunk_rows, n - s)
        finally:
            sub.close()


def ddid_runs(tb) -> dict:
    """The main table's rows of each DATA_DESC_ID as contiguous runs: ``{ddid: [(start, nrow)]}``.

    A dsacont MS holds each (integration, SPW) as one run, so a column of one SPW is read or
    written run by run with plain ``getcol``/``putcol`` (:func:`get_runs`, :func:`put_runs`):
    ~3x faster than through a ``DATA_DESC_ID==d`` query's reference table (measured on a
    full-size DATA column: 1.6 s against ~5 s), and any row order still works (a run per row at
    worst).
    """
    ddid = np.asarray(tb.getcol("DATA_DESC_ID"))
    if ddid.size == 0:
        return {}
    edges = np.flatnonzero(np.diff(ddid)) + 1
    starts, ends = np.r_[0, edges], np.r_[edges, ddid.size]
    out: dict = {}
    for a, b in zip(starts, ends):
        out.setdefault(int(ddid[a]), []).append((int(a), int(b - a)))
    return out


def run_rows(runs) -> np.ndarray:
    """The row numbers of ``runs`` ([(start, nrow)]), in order."""
    return np.concatenate([np.arange(a, a + n) for a, n in runs]) if runs else np.zeros(0, dtype=np.int64)


#: runs shorter than this on average (an MS ordered by row, SPWs interleaved) are read through a
#: reference table of their rows instead (one getcol, not one per run)
MIN_MEAN_RUN = 256


def _fragmented(runs) -> bool:
    return len(runs) > 16 and sum(n for _, n in runs) / len(runs) < MIN_MEAN_RUN


#: casatools value types of the columns read straight from their storage files, and their dtypes
_TILE_DTYPES = {"complex": np.complex64, "boolean": np.bool_, "float": np.float32, "double": np.float64}
#: rows compared through casatools before a column is read straight from its file
_CHECK_ROWS = 8


def tiled_cube(tb, column: str, dminfo: dict | None = None) -> dict | None:
    """``column``'s storage when it is one hypercube of a ``TiledColumnStMan`` or ``TiledShapeStMan``
    whose tiles hold whole rows of whole bytes; else None.

    Then row ``r`` is ``per_row`` bytes at ``(r // R) * bucket + (r % R) * per_row`` of one of the
    manager's files, its cell in Fortran order: consecutive rows are one C-ordered
    ``(rows, *reversed(cell))`` array (Bool as bits, least significant first). What both the
    converter's direct tile writes (:meth:`dsacont.io.ms_build.MSWriter.tile_layout`) and the
    direct reads (:func:`tile_file`) rely on. ``dminfo``: ``tb.getdminfo()``, when the caller has it.

    Returns
    -------
    dict or None
        ``manager`` (the storage manager's TYPE), ``seqnr`` (its files are ``table.f<seqnr>_TSM<k>``),
        ``cell`` (list, casacore order), ``tile_rows`` R, ``bucket`` and ``per_row`` (bytes),
        ``dtype`` (numpy), ``nrows``.
    """
    nrows = int(tb.nrows())
    dms = [v for v in (dminfo or tb.getdminfo()).values() if column in [str(c) for c in v.get("COLUMNS", [])]]
    if len(dms) != 1 or dms[0].get("TYPE") not in ("TiledColumnStMan", "TiledShapeStMan") \
            or len(dms[0]["COLUMNS"]) != 1:
        return None
    cubes = list(dms[0].get("SPEC", {}).get("HYPERCUBES", {}).values())
    dtype = _TILE_DTYPES.get(str(tb.getcoldesc(column).get("valueType", "")).lower())
    if len(cubes) != 1 or dtype is None:
        return None
    cube = cubes[0]
    cell = [int(x) for x in cube["CellShape"]]
    tshape = [int(x) for x in cube["TileShape"]]
    if tshape[:-1] != cell or [int(x) for x in cube["CubeShape"]] != cell + [nrows]:
        return None
    R, ncell = tshape[-1], int(np.prod(cell))
    if dtype is np.bool_:
        if ncell % 8:
            return None
        per_row = ncell // 8
    else:
        per_row = ncell * np.dtype(dtype).itemsize
    if int(cube["BucketSize"]) != R * per_row:
        return None
    return dict(manager=str(dms[0]["TYPE"]), seqnr=int(dms[0]["SEQNR"]), cell=cell, tile_rows=R,
                bucket=R * per_row, per_row=per_row, dtype=dtype, nrows=nrows)


def tile_file(tb, column: str) -> dict | None:
    """Where ``column``'s cells lie in its storage file, when that is a plain byte layout; else None.

    The bulk columns of a dsacont MS (DATA, FLAG, WEIGHT, SIGMA: ``TiledColumnStMan``, written
    by :class:`dsacont.io.ms_build.TileFiles`) and the columns :func:`ensure_column` adds
    (``TiledShapeStMan``) have the plain layout of :func:`tiled_cube`. This finds the manager's
    file that is long enough and from which :data:`_CHECK_ROWS` rows spread over the table read
    the same as through casatools. The table's pending writes are flushed first (``tb`` may be
    open for writing).

    Returns
    -------
    dict or None
        :func:`tiled_cube`'s dict with ``file`` (path).
    """
    try:
        if int(tb.nrows()) == 0 or column not in tb.colnames():
            return None
        if tb.iswritable():
            tb.flush()
        cube = tiled_cube(tb, column)
        if cube is None:
            return None
        nrows = cube["nrows"]
        need = -(-nrows // cube["tile_rows"]) * cube["bucket"]
        stem = os.path.join(str(tb.name()), f"table.f{cube['seqnr']}_TSM")
        check = np.unique(np.linspace(0, nrows - 1, _CHECK_ROWS).astype(np.int64))
        want = [np.asarray(tb.getcol(column, int(r), 1)) for r in check]
        for k in range(8):  # a TiledShapeStMan's cube need not be in file 0 (CORRECTED_DATA: 1)
            found = dict(cube, file=f"{stem}{k}")
            if os.path.exists(found["file"]) and os.path.getsize(found["file"]) >= need and all(
                    np.array_equal(_read_file_rows(found, int(r), 1), w) for r, w in zip(check, want)):
                return found
    except (OSError, RuntimeError, KeyError, ValueError) as exc:
        log.debug("%s: no direct reading (%s)", column, exc)
    return None


def _read_file_rows(tf: dict, start: int, n: int, out=None, fd: int | None = None) -> np.ndarray:
    """Rows ``start .. start + n`` of a :func:`tile_file` column, as casatools returns them
    ((cell..., n), Fortran order), read into ``out`` (such an array) when given; ``fd``: the file,
    open (else it is opened and closed here)."""
    cell, dtype = tf["cell"], tf["dtype"]
    if out is None:
        out = np.empty((*cell, n), dtype=dtype, order="F")
    R, per_row = tf["tile_rows"], tf["per_row"]
    off = (start // R) * tf["bucket"] + (start % R) * per_row  # rows are contiguous: tiles are whole rows
    nbytes = n * per_row
    if dtype is np.bool_:
        raw = np.empty(nbytes, dtype=np.uint8)
        buf = memoryview(raw)
    else:
        raw = out.T  # the rows as one C-ordered block: exactly the file's bytes
        buf = memoryview(raw).cast("B")
    own = fd is None
    fd = os.open(tf["file"], os.O_RDONLY) if own else fd
    try:
        done = 0
        while done < nbytes:
            got = os.preadv(fd, [buf[done:]], off + done)
            if got <= 0:
                raise OSError(f"{tf['file']}: short read at byte {off + done}")
            done += got
    finally:
        if own:
            os.close(fd)
    if dtype is np.bool_:
        out.T[...] = np.unpackbits(raw, bitorder="little").view(np.bool_).reshape(n, *reversed(cell))
    return out


def column_reader(tb, column: str):
    """A reader of ``column``'s rows: ``read(start, nrow)`` -> (cell..., nrow) array in Fortran
    order, as ``tb.getcol(column, start, nrow)`` returns it, straight from the column's file when
    :func:`tile_file` finds its layout (checked once, here), else through ``getcol``. For loops
    over row blocks; ``tb`` must stay open and unmodified while it is used."""
    tf = tile_file(tb, column)
    if tf is None:
        return lambda start, nrow: np.asarray(tb.getcol(column, int(start), int(nrow)))
    return lambda start, nrow: _read_file_rows(tf, int(start), int(nrow))


def get_runs(tb, column: str, runs, cell_shape, dtype) -> np.ndarray:
    """``column`` over ``runs`` as one (cell shape..., nrow) array in Fortran order (the layout
    casatools returns), filled run by run (through ``selectrows`` when the runs are short).

    A column with a plain byte layout (:func:`tile_file`: the bulk columns of a dsacont MS and
    CORRECTED_DATA) is read straight from its file, run by run into the array: casatools'
    ``getcol`` goes through double precision and its own variant type (a full-size DATA column:
    4.7 s against 2.6 s, most of the difference copies and page faults).
    """
    nrow = sum(n for _, n in runs)
    tf = tile_file(tb, column) if runs else None
    if tf is not None and tuple(cell_shape) == tuple(tf["cell"]):
        out = np.empty((*cell_shape, nrow), dtype=tf["dtype"], order="F")
        fd = os.open(tf["file"], os.O_RDONLY)
        try:
            off = 0
            for a, n in runs:
                _read_file_rows(tf, a, n, out[..., off:off + n], fd)
                off += n
        finally:
            os.close(fd)
        return out if out.dtype == np.dtype(dtype) else np.asfortranarray(out, dtype=dtype)
    if _fragmented(runs):
        sub = tb.selectrows(run_rows(runs).tolist())
        try:
            return np.asfortranarray(sub.getcol(column), dtype=dtype)
        finally:
            sub.close()
    out = np.empty((*cell_shape, nrow), dtype=dtype, order="F")
    off = 0
    for a, n in runs:
        out[..., off:off + n] = tb.getcol(column, a, n)
        off += n
    return out


def put_runs(tb, column: str, values, runs) -> None:
    """Write ``values`` (cell shape..., nrow) into ``column`` over ``runs``, run by run (through
    ``selectrows`` when the runs are short)."""
    if _fragmented(runs):
        sub = tb.selectrows(run_rows(runs).tolist())
        try:
            sub.putcol(column, values)
        finally:
            sub.close()
        return
    off = 0
    for a, n in runs:
        tb.putcol(column, values[..., off:off + n], a, n)
        off += n
