"""``convert_group``: one subband group to a Measurement Set, as a short script over the plan
(:mod:`~dsacont.convert.plan`), the block source (:mod:`~dsacont.convert.sources`), the passes
(:mod:`~dsacont.convert.passes`) and the MS builder (:mod:`~dsacont.convert.builder`).
"""
from __future__ import annotations

import logging
import os
import time as _time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import xarray as xr

from dsacont.config import get_paths
from dsacont.convert.builder import MSBuilder
from dsacont.convert.flags import FlagOverlay, flags_first, read_waterfall, waterfall_baseline, write_flag_products
from dsacont.convert.passes import fused_pass, time_pass
from dsacont.convert.plan import plan_conversion
from dsacont.convert.sources import BlockSource, Computer
from dsacont.io.uvh5 import open_group

log = logging.getLogger(__name__)

__all__ = ["convert_group", "Conversion"]


@dataclass(eq=False)
class Conversion:
    """What :func:`convert_group` made. It is ``os.PathLike`` (the MS path): pass it wherever a
    path is wanted (``str(result)``, ``Path(result)``, ``casatools`` via ``str``); ``result.ms``
    is the :class:`~pathlib.Path`.

    Attributes
    ----------
    ms : pathlib.Path
        The Measurement Set, in place.
    path_taken : str
        ``"direct"``: the blocks were read from the subband files by their chunk tables;
        ``"dask"``: through the Dataset's dask arrays (a selected or transformed Dataset,
        ``direct_read=False``).
    profile : dict
        Seconds per step (``open``, ``geometry``, skeleton steps, ``blocks``, ``blocks_write``,
        ``close``, ``move``, ``total``, per-thread sums ``*_threads``) and the paths taken
        (``direct_read``, ``direct_tiles`` bools).
    flag_summary : dict or None
        The RFI flag summary (:func:`dsacont.flagging.flag_summary`) with ``flag=True``.
    """

    ms: Path
    path_taken: str
    profile: dict = field(default_factory=dict)
    flag_summary: dict | None = None

    def __fspath__(self) -> str:
        return str(self.ms)

    def __str__(self) -> str:
        return str(self.ms)

    def __eq__(self, other) -> bool:
        if isinstance(other, Conversion):
            return self.ms == other.ms
        if isinstance(other, (str, os.PathLike)):
            return self.ms == Path(other)
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self.ms)

    def __truediv__(self, other) -> Path:
        return self.ms / other

    @property
    def name(self) -> str:
        return self.ms.name

    @property
    def parent(self) -> Path:
        return self.ms.parent


def convert_group(
    group,
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
) -> Conversion:
    """Convert one subband group to a CASA Measurement Set.

    Parameters
    ----------
    group : list of paths, :class:`dsacont.io.groups.Group`, or xarray.Dataset
        The group (16 subband files) or the Dataset from :func:`dsacont.io.uvh5.open_group`.
    ms_path : path, optional
        Output MS. Default ``<paths.ms>/<group_timestamp>.ms``. Replaced if it exists.
    phase : {'common', 'per_integration'}
        One phase centre for the group (meridian at mid-time, ICRS) or one field per integration.
    flag : bool
        OR dsacont's RFI flags (:func:`dsacont.flagging.flag_dataset`) into FLAG, and write the
        flag summary and waterfall.
    strategy : None, path, dict or :class:`dsacont.flagging.Strategy`
        The flagging strategy (default: the package's).
    paths : :class:`dsacont.config.Paths`, optional
        Default ``get_paths()``.
    tmp_dir : path, optional
        Where the MS is built before the atomic move. Default: ``<stage>/tmp`` when it shares
        the output's filesystem (a rename), else tmpfs when it has room, else ``<stage>/tmp``.
    chunks : dict, optional
        Reader chunks when opening files, e.g. ``{"time": 8}`` (integrations per block;
        frequency chunks are one subband).
    progress : bool
        Log progress (about every 10 %).
    window : int, optional
        Blocks computed ahead of the writer (default: number of threads + 1).
    qa_dir : path, optional
        Where the flag summary ``<timestamp>.flags.json`` and the waterfall
        ``<timestamp>.waterfall.png`` of one cross baseline go with ``flag=True`` (default:
        beside the MS). The waterfall's amplitudes are taken from the blocks on their way.
    direct_write : bool
        Write DATA/FLAG/WEIGHT/SIGMA straight into their tile files when the MS layout checks
        out (:class:`dsacont.io.ms_build.TileFiles`); False: always casatools ``putcol``.
    direct_read : bool
        Read the subband files themselves by their HDF5 chunk tables, in parallel threads, when
        the Dataset's data are still the files' (:func:`dsacont.io.uvh5.group_files`); False, or
        a selected/transformed Dataset: through the Dataset's dask arrays.
    fuse_flags : bool
        With ``flag=True``, direct reads and writes and no distributed client: compute the RFI
        flags in the same single pass over the files that writes the MS (the same flags as
        ``flag_dataset``). False (or when those conditions fail): flags first, then the blocks.
    use_templates : bool
        With direct writes, stamp the MS skeleton from a template of its layout in
        ``<stage>/tmp/ms-templates`` (:func:`dsacont.io.ms_build.build_skeleton`); False: build every
        skeleton with casatools.

    Returns
    -------
    Conversion
        The MS path (``os.PathLike``), the path taken, the time profile and the flag summary.
    """
    t_start = _time.perf_counter()
    paths = paths if paths is not None else get_paths()
    ds = group if isinstance(group, xr.Dataset) else open_group(group, chunks=chunks)
    prof = {"open": _time.perf_counter() - t_start}

    tick = _time.perf_counter()
    plan = plan_conversion(ds, phase, rfi_flags=flag)
    prof["geometry"] = _time.perf_counter() - tick
    ms_path = Path(ms_path if ms_path is not None else Path(paths.ms) / f"{plan.timestamp}.ms").absolute()
    log.info("%s: phase centre %s RA %.5f Dec %.5f deg (ICRS), %d field(s)", plan.timestamp, phase,
             np.degrees(plan.centre["ra"][0]), np.degrees(plan.centre["dec"][0]), len(plan.centre["names"]))

    source = BlockSource(ds, plan, direct_read)
    computer = Computer(window)
    fuse = flag and fuse_flags and source.direct and computer.client is None and direct_write
    flags_all = flags_first(ds, strategy, computer, plan.timestamp) if flag and not fuse else None
    overlay = FlagOverlay(flags_all, plan) if flags_all is not None else None

    nbytes = 0
    prof.update(blocks_read_threads=0.0, blocks_kernel_threads=0.0)
    try:
        with MSBuilder(plan, ms_path, paths=paths, tmp_dir=tmp_dir, direct=direct_write,
                       use_templates=use_templates, prof=prof) as builder:
            log.info("%s: writing %d rows (%d times x %d spw x %d baselines) to %s", plan.timestamp, plan.nrows,
                     plan.ntime, plan.nspw, plan.nbl, builder.tmp_ms)
            # fused: the pass writes partial tiles, so the skeleton comes first; else it is built in
            # a thread (casatools releases the GIL) while the first blocks are read and computed
            builder.start(background=not fuse)
            tick = _time.perf_counter()
            if fuse and builder.wait() is None:  # no tile files: flags first, then the time blocks
                builder.use_putcol()
                fuse = False
                flags_all = flags_first(ds, strategy, computer, plan.timestamp)
                overlay = FlagOverlay(flags_all, plan)
            if fuse:
                flags_all = fused_pass(source, builder.tiles, plan, computer, strategy, progress=progress, prof=prof)
                wf_bl = waterfall_baseline(flags_all, plan.ant1, plan.ant2)
                wf_amp = read_waterfall(builder.tiles, wf_bl, plan) if wf_bl is not None else None
            else:
                nbytes = time_pass(source, builder, plan, computer, overlay, progress=progress, prof=prof)
                wf_bl, wf_amp = (overlay.baseline, overlay.amp) if overlay is not None else (None, None)
            prof["blocks"] = _time.perf_counter() - tick
            prof["blocks_write"] = builder.write_seconds
            prof["direct_read"] = source.direct
            final = builder.commit()
    finally:
        computer.shutdown()
        source.close()
    summary = None
    if flags_all is not None:
        summary = write_flag_products(ds, flags_all, wf_bl, wf_amp, qa_dir or ms_path.parent, plan.timestamp)
    prof["total"] = _time.perf_counter() - t_start
    log.info("%s: wrote %s (%d rows, %.0f MB of visibilities) in %.1f s", plan.timestamp, final, plan.nrows,
             nbytes / 1e6, prof["total"])
    log.info("%s: time profile (s): %s", plan.timestamp, ", ".join(f"{k} {v:.2f}" for k, v in prof.items()))
    return Conversion(ms=Path(final), path_taken="direct" if source.direct else "dask", profile=prof,
                      flag_summary=summary)
