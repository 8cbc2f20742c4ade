"""dsacont: continuum imaging for the DSA-110 radio telescope.

Follow one group from files to mosaic, a package per stage (docs/ARCHITECTURE.md)::

    io.groups.find_groups -> io.uvh5.open_group -> flagging -> convert.convert_group (MS)
    -> calibration (solve / apply, registry) -> imaging.image_ms -> imaging.make_mosaic
    -> service (queue, products database, streaming) runs them all.

``import dsacont`` is light: stages (and casatools) are imported on first use. It does one thing
at once: it points CASA at the measures data of the ``casadata`` package (a site config named by
``CASASITECONFIG``, :mod:`dsacont.casa`), so that a user's own ``import casatools`` or
``import casatasks`` later in the same process works offline. A user's own CASA configuration wins.
"""
from __future__ import annotations

from dsacont import casa as _casa
from dsacont.lazy import lazy_exports

__version__ = "0.1.0"

# before anyone imports casatools: cheap (no casatools import), and never fatal for the import
try:
    _casa.configure()
except (ImportError, OSError):  # no casadata, or an unwritable cache: CASA's own defaults apply
    pass

# public name -> module that defines it (imported lazily, PEP 562)
_EXPORTS = {
    "simulate": "dsacont.simulator",
    "load_truth": "dsacont.simulator",
    "get_paths": "dsacont.config",
    "Paths": "dsacont.config",
    "find_groups": "dsacont.io.groups",
    "Group": "dsacont.io.groups",
    "open_group": "dsacont.io.uvh5",
    "convert_group": "dsacont.convert",
    "to_zarr": "dsacont.convert",
    "flag_dataset": "dsacont.flagging",
    "flag_ms": "dsacont.flagging",
    "get_calibrator": "dsacont.calibrators",
    "load_catalogue": "dsacont.calibrators",
    "transit_time": "dsacont.calibrators",
    "airy_beam": "dsacont.telescope",
    "image_ms": "dsacont.imaging",
    "make_mosaic": "dsacont.imaging",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
