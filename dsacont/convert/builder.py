"""The MS builder: one group's Measurement Set in its staging directory, from skeleton to the
atomic move.

- **where**: ``<stage>/tmp`` when it is on the output's filesystem (the move is then a rename and
  every byte reaches the disk once), else tmpfs when it has room, else ``<stage>/tmp`` (the move
  then copies); or the caller's ``tmp_dir``.
- **skeleton** (every row, all metadata and subtables; :func:`dsacont.io.ms_build.build_skeleton`),
  built in a thread while the first blocks are read and computed (casatools releases the GIL).
  With direct writes a fresh skeleton is built on tmpfs (casacore zero-fills every tile when the
  table closes: cheap there, a second write of the whole MS on disk) and copied without its bulk
  tile files, which are created sparse in the staging directory; it is kept as a template in
  ``<stage>/tmp/ms-templates``, from which later groups of the same layout are stamped.
- **bulk columns** DATA/FLAG/WEIGHT/SIGMA: written straight into their tile files
  (:class:`dsacont.io.ms_build.TileFiles`, thread-safe ``pwrite``) when the layout checks out, else
  with casatools ``putcol`` (:class:`dsacont.io.ms_build.MSWriter`, one thread).
- **commit**: close, then :func:`dsacont.io.atomic.move_into_place`; on any error the staging MS is
  removed (nothing half-written is left anywhere).
"""
from __future__ import annotations

import os
import shutil
import threading
import time as _time
from pathlib import Path

import numpy as np

from dsacont.io import ms_build
from dsacont.io.atomic import move_into_place
from dsacont.io.kernels import pack_bits_le
from dsacont.io.uvh5_backend import scratch_array

__all__ = ["MSBuilder", "TEMPLATE_DIRNAME", "TMPFS"]

TMPFS = "/dev/shm"
# tmpfs is used only when this much more than the MS would stay free
TMPFS_MARGIN_BYTES = 1 << 30
# skeleton templates (ms_build.build_skeleton) live in <stage>/tmp/<this>
TEMPLATE_DIRNAME = "ms-templates"


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


class MSBuilder:
    """The MS of one :class:`dsacont.convert.plan.ConversionPlan`, built in a staging directory.

    Use as a context manager: leaving it by an exception waits for the skeleton thread, closes
    every file and removes the staging MS. ``start`` the skeleton, write blocks (``write_tiles``
    from any thread once :meth:`ready_tiles` gives the tiles; :meth:`write` from the caller's
    thread), then :meth:`commit`.

    Parameters
    ----------
    plan : ConversionPlan
    ms_path : path
        The final MS (replaced if it exists).
    paths : dsacont.config.Paths
        ``paths.tmp`` is the staging area (and holds the templates).
    tmp_dir : path, optional
        Build here instead of choosing.
    direct : bool
        Write the bulk columns straight into their tile files when the layout checks out.
    use_templates : bool
        Stamp the skeleton from (and save) templates of its layout (with ``direct``).
    prof : dict
        Seconds per step are added to it (skeleton steps, ``close``, ``move``).
    """

    def __init__(self, plan, ms_path, *, paths, tmp_dir=None, direct: bool = True, use_templates: bool = True,
                 prof: dict | None = None):
        self.plan = plan
        self.ms_path = Path(ms_path)
        self.paths = paths
        self.direct = bool(direct)
        self.prof = {} if prof is None else prof
        need = plan.estimate_ms_bytes()
        tmp_root = _pick_tmp_root(tmp_dir, paths, need, self.ms_path)
        tmp_root.mkdir(parents=True, exist_ok=True)
        self.tmp_ms = tmp_root / f".{self.ms_path.name}.partial{os.getpid()}"
        shutil.rmtree(self.tmp_ms, ignore_errors=True)
        self.build_in = None
        if self.direct and not _same_fs(tmp_root, TMPFS) and _tmpfs_has_room(need):
            self.build_in = Path(TMPFS) / f".{self.ms_path.name}.skeleton{os.getpid()}"
            shutil.rmtree(self.build_in, ignore_errors=True)
        self.templates = (Path(paths.tmp) / TEMPLATE_DIRNAME) if use_templates else None
        self.tiles = None  # TileFiles, once the skeleton is known to have them
        self.writer = None  # MSWriter, when the bulk columns are written with putcol
        self.write_seconds = 0.0  # time spent writing blocks, all threads
        self._skeleton = {"tiles": None, "error": None}
        self._done = threading.Event()
        self._thread = None
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ skeleton
    def _build_skeleton(self):
        try:
            self._skeleton["tiles"] = ms_build.build_skeleton(
                self.tmp_ms, self.plan.layout, self.plan.rows, direct=self.direct, templates=self.templates,
                build_in=self.build_in, prof=self.prof)
        except BaseException as exc:  # re-raised by wait() in the caller's thread
            self._skeleton["error"] = exc
        finally:
            self._done.set()

    def start(self, background: bool = True) -> None:
        """Build the skeleton: in a thread (``background``), else now."""
        if background:
            self._thread = threading.Thread(target=self._build_skeleton, name="dsacont-ms-skeleton", daemon=True)
            self._thread.start()
        else:
            self._build_skeleton()

    @property
    def skeleton_done(self) -> bool:
        return self._done.is_set()

    def ready_tiles(self):
        """The tile files when the skeleton is built and has them, else None (without waiting)."""
        if self._done.is_set() and self._skeleton["error"] is None:
            return self._skeleton["tiles"]
        return None

    def wait(self):
        """Wait for the skeleton; returns its TileFiles (None: write with putcol). Re-raises the
        skeleton's error."""
        self._done.wait()
        if self._skeleton["error"] is not None:
            raise self._skeleton["error"]
        self.tiles = self._skeleton["tiles"]
        return self.tiles

    def use_putcol(self) -> None:
        """Write the bulk columns with casatools from now on (the skeleton has no TileFiles)."""
        if self.writer is None:
            self.writer = ms_build.MSWriter(self.tmp_ms)

    # ------------------------------------------------------------------ writes
    def _add_write_time(self, dt: float) -> None:
        with self._lock:
            self.write_seconds += dt

    def write_tiles(self, tiles, t0: int, t1: int, si: int, data, flags, weight, sigma, scratch=None) -> None:
        """Write integrations ``t0 .. t1`` of SPW ``si`` (all baselines) into the tile files; any
        thread. Arrays as :func:`dsacont.convert.blocks.compute_block` returns them."""
        tw = _time.perf_counter()
        packed = scratch_array(scratch, "packed", (t1 - t0, flags[0].size // 8), np.uint8)
        pack_bits_le(flags.reshape(-1), packed.reshape(-1))
        for k, t in enumerate(range(t0, t1)):
            tiles.write(self.plan.first_row(t, si), DATA=data[k], FLAG=packed[k], WEIGHT=weight[k], SIGMA=sigma[k])
        self._add_write_time(_time.perf_counter() - tw)

    def write(self, t0: int, t1: int, si: int, data, flags, weight, sigma, scratch=None) -> None:
        """Write a block from the caller's thread, waiting for the skeleton if needed (tile files,
        else casatools ``putcol``)."""
        if not self._done.is_set() or (self.tiles is None and self.writer is None):
            if self.wait() is None:
                self.use_putcol()
        if self.tiles is not None:
            self.write_tiles(self.tiles, t0, t1, si, data, flags, weight, sigma, scratch)
            return
        tw = _time.perf_counter()
        for k, t in enumerate(range(t0, t1)):
            self.writer.put(self.plan.first_row(t, si), DATA=data[k], FLAG=flags[k], WEIGHT=weight[k], SIGMA=sigma[k])
        self._add_write_time(_time.perf_counter() - tw)

    # ------------------------------------------------------------------ end
    def commit(self) -> Path:
        """Close the MS and move it into place atomically; returns the final path."""
        if self.tiles is None and self.writer is None:
            self.wait()  # no blocks written here (or all by the workers)
        self.prof["direct_tiles"] = self.tiles is not None
        tick = _time.perf_counter()
        if self.tiles is not None:
            self.tiles.close()
        if self.writer is not None:
            self.writer.close()
            self.writer = None
        self.prof["close"] = _time.perf_counter() - tick
        tick = _time.perf_counter()
        final = move_into_place(self.tmp_ms, self.ms_path, staging_dir=self.paths.tmp)
        self.prof["move"] = _time.perf_counter() - tick
        return final

    def abort(self) -> None:
        """Wait for the skeleton thread, close every file and remove the staging MS."""
        if self._thread is not None:
            self._thread.join()
        tiles = self.tiles if self.tiles is not None else self._skeleton.get("tiles")
        if tiles is not None:
            tiles.close()
        if self.writer is not None:
            try:
                self.writer.close()
            except Exception:
                pass
        shutil.rmtree(self.tmp_ms, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None:
            self.abort()
        return False
