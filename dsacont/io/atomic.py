"""Atomic writes: every product dsacont makes appears whole or not at all.

A file is written under a temporary name beside the target, then ``os.replace``d (:func:`atomic_path`,
:func:`write_json_atomic`); a product built elsewhere (an MS on tmpfs, a calibration table, a tile's
FITS files under the staging directory) is moved into place with :func:`move_into_place`. A reader
sees either the old product or the complete new one (``os.replace`` is atomic within one filesystem).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside ``path``; on success move it onto ``path``.

    Parameters
    ----------
    path : str or Path
        The final file. Its directory is created if missing.

    Yields
    ------
    Path
        ``<dir>/.<stem>.tmp<pid><suffix>`` (same suffix, so writers that go by the extension,
        e.g. matplotlib's ``savefig``, pick the right format). Write the file there.

    Notes
    -----
    If the body raises, the temporary file is removed and ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_json_atomic(obj, path, *, indent: int = 1, default=None) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Parameters
    ----------
    obj : JSON-serialisable object
    path : str or Path
        The JSON file (its directory is created if missing).
    indent : int
        JSON indentation.
    default : callable, optional
        ``json.dumps``'s ``default`` (e.g. :func:`dsacont.jsonio.json_default` for numpy values).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=indent, default=default))
    return path


def move_into_place(src: str | os.PathLike, dst: str | os.PathLike, staging_dir: str | os.PathLike | None = None) -> Path:
    """Move a file or directory ``src`` to ``dst`` atomically (nobody sees a partial ``dst``).

    Parameters
    ----------
    src : str or Path
        A finished product (a Measurement Set, a calibration table, an image...), written elsewhere.
    dst : str or Path
        Where it belongs. An existing ``dst`` is replaced (renamed aside first, then removed).
    staging_dir : str or Path, optional
        If ``src`` is on another filesystem it is first copied here (a directory on ``dst``'s
        filesystem; default ``dst``'s parent) and then renamed.

    Returns
    -------
    Path
        ``dst``.
    """
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    if os.stat(src).st_dev != os.stat(dst.parent).st_dev:
        staging = Path(staging_dir) if staging_dir else dst.parent
        staging.mkdir(parents=True, exist_ok=True)
        tmp = staging / f".{dst.name}.copy{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if src.is_dir():
            shutil.copytree(src, tmp)
            shutil.rmtree(src, ignore_errors=True)
        else:
            shutil.copy2(src, tmp)
            src.unlink()
        src = tmp
    if not src.is_dir():  # a file replaces a file in one step
        os.replace(src, dst)
        return dst
    old = None
    if dst.exists():
        old = dst.parent / f".{dst.name}.old{os.getpid()}"
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return dst
