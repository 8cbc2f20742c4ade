"""``image_ms``: image one tile with the chosen imager, WSClean or CASA tclean.

:func:`image_ms` is what the service, ``dsacont image`` and the library's users call; it runs
:func:`dsacont.imaging.wsclean.image_ms` or :func:`dsacont.imaging.tclean.image_ms`, which make
the same files, result dict and QA (:mod:`dsacont.imaging.tile`). ``imager='auto'`` takes WSClean
when the ``wsclean`` program is installed and tclean otherwise; asking for 'wsclean' without the
program also falls back to tclean. Either fallback says so in one log line (once per process),
with how to install WSClean. The default is still 'tclean' (``DEFAULT_IMAGER``): WSClean measured
faster at the same quality (``benchmarks/README.md``, Imaging: the same full-size transit tile, the
same grid, side by side: 308 CPU-s against tclean's 563, 0834+555 at 1.0013 vs 1.0014 of truth,
0.002 vs 0.001 beam, residual noise 1.085x vs 1.036x the radiometer equation), and the streaming
tests of around-the-clock calibration and of the strip sky model run with it. The demo keeps tclean:
on the small preset's three demo tiles WSClean left 1.20-1.24x the radiometer noise against
tclean's 1.02-1.18x (0834+555 0.991 vs 0.990 of truth; one tile 30 s against 110 s). The
full-size hour (``benchmarks/e2e.py``) runs WSClean; ``dsacont stream --option imaging.imager=auto``
opts in.
"""
from __future__ import annotations

import inspect
import logging

from dsacont.imaging import tclean, wsclean

log = logging.getLogger(__name__)

IMAGERS = ("auto", "wsclean", "tclean")
DEFAULT_IMAGER = "tclean"
_warned: set[str] = set()


def choose_imager(imager: str = DEFAULT_IMAGER) -> str:
    """The imager that will run: 'wsclean' or 'tclean'.

    Parameters
    ----------
    imager : {'auto', 'wsclean', 'tclean'}
        'auto' and 'wsclean' give 'wsclean' when :func:`dsacont.imaging.wsclean.wsclean_binary`
        finds the program, else 'tclean' (logged once per process at WARNING).

    Raises
    ------
    ValueError
        An unknown imager.
    """
    imager = str(imager).lower()
    if imager not in IMAGERS:
        raise ValueError(f"imager must be one of {', '.join(IMAGERS)}, not {imager!r}")
    if imager == "tclean":
        return "tclean"
    if wsclean.wsclean_binary():
        return "wsclean"
    if imager not in _warned:
        _warned.add(imager)
        log.warning("imager=%r: no wsclean program on PATH, imaging with CASA tclean instead (several times "
                    "slower at full size); for the fast path: %s", imager, wsclean.INSTALL_HINT)
    return "tclean"


def image_ms(ms_path, out_dir=None, *, imager: str = DEFAULT_IMAGER, **kwargs) -> dict:
    """Image one calibrated MS (one tile): FITS image, pb, pbcor, residual and QA JSON.

    Parameters
    ----------
    ms_path : str or path-like
        The calibrated Measurement Set.
    out_dir : path-like, optional
        Output directory (default: the configured images directory).
    imager : {'auto', 'wsclean', 'tclean'}
        Which imager (:func:`choose_imager`); the result's ``imager`` says which ran.
    **kwargs
        The options of :func:`dsacont.imaging.tclean.image_ms` (both imagers take them; tclean's
        own ones are ignored by WSClean) and of :func:`dsacont.imaging.wsclean.image_ms`
        (``threads``, ``mgain``, ``auto_mask``: dropped when tclean runs).

    Returns
    -------
    dict
        As :func:`dsacont.imaging.tclean.image_ms`, plus ``imager``.
    """
    chosen = choose_imager(imager)
    if chosen == "wsclean":
        return wsclean.image_ms(ms_path, out_dir, **kwargs)
    accepted = inspect.signature(tclean.image_ms).parameters
    return tclean.image_ms(ms_path, out_dir, **{k: v for k, v in kwargs.items() if k in accepted})
