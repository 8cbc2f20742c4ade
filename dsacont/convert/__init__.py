"""Conversion: a subband group (the lazy Dataset of :func:`dsacont.io.uvh5.open_group`) to a
CASA Measurement Set, computed with Dask and numba, written by one writer.

Modules, in the order a conversion uses them:

- :mod:`~dsacont.convert.plan`: :class:`ConversionPlan` (SPWs, phase centre, geometry, the MS
  layout and rows) from the Dataset's coordinates; :func:`phase_centre`.
- :mod:`~dsacont.convert.sources`: block sources (the subband files read directly by their chunk
  tables, or the Dataset's dask arrays) and where blocks are computed (threads or ``distributed``).
- :mod:`~dsacont.convert.kernels` (numba) and their wrappers :mod:`~dsacont.convert.blocks`
  (:func:`compute_block`: one block of DATA/FLAG/WEIGHT/SIGMA) and :mod:`~dsacont.convert.phasing`
  (astrometry, uvw, the Dask rotation).
- :mod:`~dsacont.convert.passes`: the time-block pass and the fused RFI-flagging pass;
  :mod:`~dsacont.convert.flags`: flags computed first, the flag summary and waterfall.
- :mod:`~dsacont.convert.builder`: :class:`MSBuilder`, the MS in its staging directory (skeleton,
  tile files, the atomic move).
- :mod:`~dsacont.convert.group`: :func:`convert_group` (the script over all of these) and its
  result :class:`Conversion`; :mod:`~dsacont.convert.phased`: :func:`phase_dataset`,
  :func:`to_zarr`; :mod:`~dsacont.convert.cli`: ``dsacont convert``.

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
(:func:`dsacont.io.atomic.move_into_place`, an ``os.replace``): ``<stage>/tmp`` when it is on the
output's filesystem (so the move is a rename and every byte reaches the disk once), else tmpfs
when it has room, else ``<stage>/tmp`` (then the move copies). The *skeleton* (every row, all
metadata and subtables) is made in a thread while the first blocks are read and computed (at most
``passes.PREFETCH_BLOCKS`` blocks wait), by :func:`dsacont.io.ms_build.build_skeleton`:

- the first group of a layout (array, band, row structure) is built with casatools. Casacore
  zero-fills every tile when it closes the table, so this is done on tmpfs and copied to the
  staging directory without its bulk tile files, which are created sparse there
  (:meth:`dsacont.io.ms_build.TileFiles.relocate`). The verified skeleton minus its bulk files (~15 MB)
  is kept as a *template* in ``<stage>/tmp/ms-templates/<key>``.
- every later group of that layout is copied from its template and stamped with its own TIME,
  UVW (written into its tiles) and per-group subtables (FIELD, SOURCE, OBSERVATION, FEED time,
  HISTORY), several times cheaper than building it. A test compares every column of every table
  with a skeleton built from scratch; a damaged template is rebuilt. ``use_templates=False``
  turns this off.

DATA/FLAG/WEIGHT/SIGMA are then written straight into their ``TiledColumnStMan`` tile files
(:class:`dsacont.io.ms_build.TileFiles`: the layout and byte/bit order are verified on probe rows
first; any surprise falls back to casatools ``putcol``). Blocks are (``time`` chunk, one
subband): when the Dataset's data are still the files' (:func:`dsacont.io.uvh5.group_files`, from
its ``encoding``), each worker thread reads them by their HDF5 chunk tables
(:class:`dsacont.io.uvh5_backend.SubbandReader`: a short-lived mapping + a numba gather that also
puts the channels in ascending order, no h5py per-chunk calls, GIL released), runs the numba
block kernels (phase rotation with float64 phases, conjugation, flags, weights) and ``pwrite``s
its rows (one writer per column file at a time); a selected or transformed Dataset's blocks come
from its dask arrays. With ``flag=True`` and direct reads, the RFI flags are computed in the same
pass (:func:`dsacont.convert.passes.fused_pass`: baseline blocks exactly as
:func:`dsacont.flagging.flag_dataset` cuts them, so the flags are identical; the tiles are
written in baseline ranges). With a ``distributed`` client as the current scheduler
(LocalCluster or a ``dask-scheduler`` address) the blocks are computed on the workers and the
client writes (flags first, then the blocks).

Measured speed and memory: ``benchmarks/README.md`` (Conversion).
"""
from __future__ import annotations

from dsacont.convert.blocks import compute_block
from dsacont.convert.builder import TEMPLATE_DIRNAME, MSBuilder
from dsacont.convert.group import Conversion, convert_group
from dsacont.convert.phased import phase_dataset, to_zarr
from dsacont.convert.plan import PHASE_MODES, ConversionPlan, phase_centre, plan_conversion

__all__ = [
    "PHASE_MODES",
    "TEMPLATE_DIRNAME",
    "Conversion",
    "ConversionPlan",
    "MSBuilder",
    "compute_block",
    "convert_group",
    "phase_centre",
    "phase_dataset",
    "plan_conversion",
    "to_zarr",
]
