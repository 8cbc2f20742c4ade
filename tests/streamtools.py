"""Helpers shared by the streaming and replay tests: build archives of several groups from one
simulated group, corrupt files in the ways the correlator/disks do, run the real service."""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import h5py
import numpy as np

from dsacont.io.groups import parse_subband_name

CADENCE_S = 309
TESTS_DIR = Path(__file__).resolve().parent
SIM_ENV = "DSACONT_TEST_SIM_DIR"  # reuse an already simulated small group while developing


def sim_group_files(request) -> list[str]:
    d = os.environ.get(SIM_ENV)
    if d:
        files = sorted(glob.glob(os.path.join(d, "*_sb??.hdf5")))
        assert len(files) == 16, f"{SIM_ENV}={d} must hold one 16-subband group"
        return files
    _, files = request.getfixturevalue("sim_small")
    return sorted(files)


def shifted_name(path, k: int, extra_s: int = 0) -> str:
    n = parse_subband_name(path)
    ts = (n.timestamp + timedelta(seconds=CADENCE_S * k + extra_s)).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{ts}_sb{n.subband:02d}.hdf5"


def group_timestamp(files, k: int) -> str:
    """Timestamp (earliest file) of the k-th shifted copy of the simulated group."""
    return min(shifted_name(f, k) for f in files).split("_sb")[0]


def make_archive(files, dest, groups, *, skip=None) -> list[str]:
    """Hard-link shifted copies (group k = +k*309 s) of the simulated group into ``dest``.

    ``skip``: {k: set of subbands} not to write. Returns the group timestamps.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    stamps = []
    for k in groups:
        names = []
        for f in files:
            sb = parse_subband_name(f).subband
            if skip and sb in skip.get(k, ()):
                continue
            target = dest / shifted_name(f, k)
            names.append(target.name)
            if not target.exists():
                os.link(f, target)
        stamps.append(min(names).split("_sb")[0])
    return stamps


def subband_file(files, sb: int) -> str:
    return next(f for f in files if parse_subband_name(f).subband == sb)


# ------------------------------------------------------------------------------------ corruption
def write_truncated(src, dst, fraction=0.5):
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.truncate(int(os.path.getsize(src) * fraction))


def write_not_hdf5(dst):
    with open(dst, "w") as f:
        f.write("correlator node 7: disk error, this is a log, not HDF5\n" * 200)


def write_with_nans(src, dst, n=10):
    shutil.copyfile(src, dst)
    with h5py.File(dst, "r+") as f:
        v = f["Data/visdata"]
        block = v[:n]
        block[...] = np.nan
        v[:n] = block


def write_half_integrations(src, dst):
    """A valid UVH5 file with the first half of the integrations only: a different shape
    (Nblts, Ntimes) than its siblings, consistent in itself."""
    with h5py.File(src, "r") as fi, h5py.File(dst, "w") as fo:
        nblts = int(fi["Header/Nblts"][()])
        ntimes = int(fi["Header/Ntimes"][()])
        keep = (ntimes // 2) * (nblts // ntimes)
        for gname in ("Header", "Data"):
            go = fo.create_group(gname)
            for key, item in fi[gname].items():
                if isinstance(item, h5py.Group):
                    fi.copy(item, go, name=key)
                    continue
                data = item[()]
                if key == "Nblts":
                    data = np.asarray(keep, dtype=item.dtype)
                elif key == "Ntimes":
                    data = np.asarray(ntimes // 2, dtype=item.dtype)
                elif item.shape and item.shape[0] == nblts:
                    data = data[:keep]
                go.create_dataset(key, data=data)
                for a, val in item.attrs.items():
                    go[key].attrs[a] = val


# ---------------------------------------------------------------------------------- the service
def service_cmd(root, *args, processor="stream_processors:summarise", on_complete="stream_processors:on_complete"):
    return [sys.executable, "-m", "dsacont.cli", "stream", "--root", str(root), "--processor", processor,
            "--on-complete", on_complete,
            "--poll", "0.3", "--min-free-gb", "0", "--lease", "30", *map(str, args)]


def service_env(**extra):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(TESTS_DIR), str(TESTS_DIR.parent), env.get("PYTHONPATH", "")])
    env.update({k: str(v) for k, v in extra.items()})
    return env


#: run a command without the capabilities that let root read any file, so that root (as CI runs)
#: sees file permissions as a normal user does (util-linux setpriv)
WITHOUT_DAC_OVERRIDE = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]


def start_service(root, *args, log_name="service.log", env=None, as_normal_user=False, **kw):
    """Start ``dsacont stream`` on ``root``. ``as_normal_user``: when this process is root, the
    service runs without root's power to read unreadable files (:data:`WITHOUT_DAC_OVERRIDE`)."""
    Path(root).mkdir(parents=True, exist_ok=True)
    log = open(Path(root) / log_name, "ab")
    cmd = service_cmd(root, *args, **kw)
    if as_normal_user and os.geteuid() == 0:
        cmd = WITHOUT_DAC_OVERRIDE + cmd
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                            env=service_env(**(env or {})), cwd=str(TESTS_DIR.parent))
    proc.log_path = Path(root) / log_name
    log.close()
    return proc


def run_service(root, *args, timeout=180, **kw) -> tuple[int, str]:
    """Run the service to its end; returns (return code, its log of this run)."""
    log_path = Path(root) / "service.log"
    start = log_path.stat().st_size if log_path.exists() else 0
    proc = start_service(root, *args, **kw)
    try:
        rc = proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"service did not finish in {timeout} s:\n{log_path.read_text()[start:][-4000:]}")
    with open(log_path, "rb") as f:
        f.seek(start)
        text = f.read().decode(errors="replace")
    return rc, text


def wait_for(cond, timeout=60.0, interval=0.2, what="condition"):
    t0 = time.time()
    while time.time() - t0 < timeout:
        v = cond()
        if v:
            return v
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def queue_groups(root) -> dict:
    """The service's queue under ``root``: ``{group timestamp: GroupRecord}``."""
    from dsacont.config import get_paths
    from dsacont.service.queue import IngestQueue

    q = IngestQueue(get_paths(root=root).queue_db)
    try:
        return {g.timestamp: g for g in q.groups()}
    finally:
        q.close()
