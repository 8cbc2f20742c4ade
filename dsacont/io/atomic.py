"""Atomic file writes: write under a temporary name beside the target, then ``os.replace``.

A reader sees either the old file or the complete new one, never a partial one (``os.replace`` is
atomic within one filesystem, and the temporary name is in the target's own directory).
"""
from __future__ import annotations

import contextlib
import json
import os
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


def write_json_atomic(obj, path) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically.

    Parameters
    ----------
    obj : JSON-serialisable object
    path : str or Path
        The JSON file (its directory is created if missing).

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))
    return path
