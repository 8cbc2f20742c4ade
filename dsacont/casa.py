"""CASA set-up that works offline, out of the box.

casatools looks for its measures data (leap seconds, IERS tables, observatory positions) through
``casaconfig``. On a fresh machine with no network the default configuration tries to download
them and fails. The ``casadata`` package ships a snapshot of that data, so before casatools is
first imported we point casaconfig at it with auto-updates off, through a *site* config file
named by ``CASASITECONFIG``.

Precedence (nothing the user set is overridden):

1. ``CASASITECONFIG`` already set, or a standard site config (``/opt/casa/casasiteconfig.py``,
   ``/home/casa/casasiteconfig.py``) exists: left alone.
2. Otherwise dsacont writes ``~/.cache/dsacont/casasiteconfig.py`` (or under
   ``$XDG_CACHE_HOME``) and sets ``CASASITECONFIG`` to it.
3. casaconfig loads the user's own ``~/.casa/config.py`` *after* the site config, so a user's
   own ``measurespath`` always wins.

``import dsacont`` runs :func:`configure` (cheap: it imports only the ``casadata`` data package),
so a user's own ``import casatools`` / ``import casatasks`` later in the same process works
offline too; importing ``dsacont`` never imports casatools itself. Every dsacont module that needs
CASA gets it through :func:`ensure_casa` (or :func:`casatasks`).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

_STANDARD_SITE_CONFIGS = ("/opt/casa/casasiteconfig.py", "/home/casa/casasiteconfig.py")

_SITE_CONFIG_TEXT = """\
# Written by dsacont: CASA measures data from the casadata package, no network updates.
# Delete this file or set CASASITECONFIG to use another configuration.
measurespath = {datapath!r}
datapath = [{datapath!r}]
measures_auto_update = False
data_auto_update = False
nologger = True
log2term = False
logfile = {logfile!r}
"""


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "dsacont"


def site_config_path() -> str | None:
    """Return the CASA site config file dsacont will use, writing it if needed.

    Returns None when the user already has a site config (env var or standard location).
    """
    if os.environ.get("CASASITECONFIG"):
        return None
    if any(os.path.isfile(p) for p in _STANDARD_SITE_CONFIGS):
        return None
    import casadata  # imported here: optional for `import dsacont`, and only needed without a site config

    datapath = os.path.abspath(casadata.datapath)
    path = _cache_dir() / "casasiteconfig.py"
    logfile = str(_cache_dir() / "casa.log")
    text = _SITE_CONFIG_TEXT.format(datapath=datapath, logfile=logfile)
    if not path.exists() or path.read_text() != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".tmp{os.getpid()}")
        tmp.write_text(text)
        os.replace(tmp, path)
    _rotate(Path(logfile))
    return str(path)


#: CASA's log is rotated (to ``casa.log.1``) when a process starts and finds it larger than this
MAX_LOG_BYTES = 200 * 2**20


def _rotate(logfile: Path) -> None:
    """Keep CASA's log from filling the disk: one old copy, rotated at process start."""
    try:
        if logfile.stat().st_size > MAX_LOG_BYTES:
            os.replace(logfile, logfile.with_name(logfile.name + ".1"))
    except OSError:  # absent, or rotated by another process at the same moment
        pass


def configure() -> None:
    """Set ``CASASITECONFIG`` so that casatools finds casadata's measures offline.

    Must run before ``casatools`` is first imported in this process; calling it later is
    harmless but has no effect.
    """
    if "casatools" in sys.modules:
        return
    path = site_config_path()
    if path is not None:
        os.environ["CASASITECONFIG"] = path


def ensure_casa():
    """Configure CASA for offline use and return the imported ``casatools`` module.

    CASA's log keeps the level :func:`casatasks` sets (``CONTIMG_CASA_LOG_LEVEL``, default
    ``WARN``) from the first call on: casatools alone logs INFO to the console (e.g. four lines of
    its Simulator each time a convert worker makes an MS template, 103 lines in a full-size hour).
    """
    configure()
    import casatools

    global _TOOLS_LOG_SET
    if not _TOOLS_LOG_SET:
        sink = casatools.logsink()  # the log file of the site config (or the user's)
        sink.setglobal(True)
        sink.filter(_log_level())
        _TOOLS_LOG_SET = True
    return casatools


_TOOLS_LOG_SET = False


def _log_level() -> str:
    """CASA's log level: ``CONTIMG_CASA_LOG_LEVEL``, default ``WARN``."""
    return os.environ.get("CONTIMG_CASA_LOG_LEVEL", "WARN")


def casatasks():
    """Return the imported ``casatasks`` module, configured for offline use.

    CASA's own log keeps warnings and errors only (``CONTIMG_CASA_LOG_LEVEL``, default ``WARN``;
    ``INFO`` for everything): at INFO, a day of streaming writes gigabytes of per-solution lines.
    """
    ensure_casa()
    import casatasks as ct

    global _LOG_LEVEL_SET
    if not _LOG_LEVEL_SET:
        ct.casalog.filter(_log_level())
        _LOG_LEVEL_SET = True
    return ct


_LOG_LEVEL_SET = False
