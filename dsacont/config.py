"""Where things live: one place that resolves every path from CONTIMG_* environment variables.

Defaults follow the operators' layout (staging on ``/stage/dsa110-contimg/``, NOT ``/scratch``)::

    incoming     /data/incoming                          CONTIMG_INCOMING_DIR
    stage        /stage/dsa110-contimg                   CONTIMG_SCRATCH_DIR (the staging base)
    ms           <stage>/ms                              CONTIMG_OUTPUT_DIR
    caltables    <stage>/caltables                       CONTIMG_CAL_DIR
    images       <stage>/images                          CONTIMG_IMAGE_DIR
    mosaics      <stage>/mosaics                         CONTIMG_MOSAIC_DIR
    tmp          <stage>/tmp                             CONTIMG_TMP_DIR
    state        /data/dsa110-contimg/state              CONTIMG_STATE_DIR
                 (ingest queue, products and calibration registry SQLite files)

Precedence, highest first: keyword overrides to :func:`get_paths`, then ``root=`` (a local
directory holding everything, used by the demo and the tests), then environment variables, then
the defaults. ``CONTIMG_ROOT`` is the environment form of ``root=``.

Example::

    >>> p = get_paths(root="/tmp/run1")          # everything under /tmp/run1
    >>> p.ms
    PosixPath('/tmp/run1/stage/ms')
    >>> p = get_paths(ms="/fast/ms").ensure()    # create and check writability
"""
from __future__ import annotations

import os
from dataclasses import dataclass, fields, replace
from pathlib import Path

from dsacont.errors import ConfigError

DEFAULT_INCOMING = "/data/incoming"
DEFAULT_STAGE = "/stage/dsa110-contimg"
DEFAULT_STATE = "/data/dsa110-contimg/state"

# field -> environment variable
ENV_VARS = {
    "incoming": "CONTIMG_INCOMING_DIR",
    "stage": "CONTIMG_SCRATCH_DIR",
    "ms": "CONTIMG_OUTPUT_DIR",
    "caltables": "CONTIMG_CAL_DIR",
    "images": "CONTIMG_IMAGE_DIR",
    "mosaics": "CONTIMG_MOSAIC_DIR",
    "tmp": "CONTIMG_TMP_DIR",
    "state": "CONTIMG_STATE_DIR",
}
_STAGE_SUBDIRS = ("ms", "caltables", "images", "mosaics", "tmp")


@dataclass(frozen=True)
class Paths:
    """Resolved directories of one dsacont installation (all absolute ``Path`` objects)."""

    incoming: Path
    stage: Path
    ms: Path
    caltables: Path
    images: Path
    mosaics: Path
    tmp: Path
    state: Path

    @property
    def queue_db(self) -> Path:
        """SQLite ingest queue of the streaming service."""
        return self.state / "ingest.sqlite3"

    @property
    def products_db(self) -> Path:
        """SQLite products database (MS, images, mosaics and their provenance)."""
        return self.state / "products.sqlite3"

    @property
    def registry_db(self) -> Path:
        """SQLite calibration registry (caltables and validity windows)."""
        return self.state / "cal_registry.sqlite3"

    @property
    def sky_db(self) -> Path:
        """SQLite sky model dsacont keeps itself (sources of earlier tiles, by strip)."""
        return self.state / "sky_model.sqlite3"

    def ensure(self, *names: str) -> "Paths":
        """Create the named directories (all by default) and check they are writable.

        Raises :class:`dsacont.errors.ConfigError` naming the directory, the environment
        variable that sets it, and what went wrong.
        """
        for name in names or [f.name for f in fields(self)]:
            path = getattr(self, name)
            try:
                path.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ConfigError(
                    f"cannot create the {name} directory {path} ({exc.strerror}); "
                    f"set {ENV_VARS[name]} or pass {name}=... to use another place"
                ) from exc
            if not os.access(path, os.W_OK | os.X_OK):
                raise ConfigError(
                    f"the {name} directory {path} is not writable by this user; "
                    f"set {ENV_VARS[name]} or pass {name}=... to use another place"
                )
        return self

    def as_dict(self) -> dict[str, str]:
        return {f.name: str(getattr(self, f.name)) for f in fields(self)}


def get_paths(root: str | os.PathLike | None = None, **overrides) -> Paths:
    """Resolve dsacont's directories; nothing is created (call ``.ensure()`` for that).

    Parameters
    ----------
    root : path, optional
        Put everything under one local directory: ``root/incoming``, ``root/stage/{ms,...}``,
        ``root/state``. Defaults to ``$CONTIMG_ROOT`` when set.
    **overrides
        Any of ``incoming, stage, ms, caltables, images, mosaics, tmp, state``.
    """
    unknown = set(overrides) - set(ENV_VARS)
    if unknown:
        raise TypeError(f"get_paths() got unknown directories {sorted(unknown)}; known: {list(ENV_VARS)}")
    env = os.environ
    root = root if root is not None else env.get("CONTIMG_ROOT") or None

    values: dict[str, Path] = {}
    if root is not None:
        r = Path(root).expanduser().absolute()
        values["incoming"] = r / "incoming"
        values["stage"] = r / "stage"
        values["state"] = r / "state"
    else:
        values["incoming"] = Path(env.get(ENV_VARS["incoming"], DEFAULT_INCOMING))
        values["stage"] = Path(env.get(ENV_VARS["stage"], DEFAULT_STAGE))
        values["state"] = Path(env.get(ENV_VARS["state"], DEFAULT_STATE))
    if "stage" in overrides:
        values["stage"] = Path(overrides["stage"])
    for sub in _STAGE_SUBDIRS:
        from_env = None if root is not None else env.get(ENV_VARS[sub])
        values[sub] = Path(from_env) if from_env else values["stage"] / sub
    for key, value in overrides.items():
        values[key] = Path(value)
    return Paths(**{k: Path(v).expanduser().absolute() for k, v in values.items()})


def with_overrides(paths: Paths, **overrides) -> Paths:
    """Return a copy of ``paths`` with some directories replaced."""
    return replace(paths, **{k: Path(v).expanduser().absolute() for k, v in overrides.items()})
