"""dsacont: continuum imaging for the DSA-110 radio telescope.

Follow one group from files to mosaic, each stage a module named after it::

    groups.find_groups -> loader.open_group -> flagging -> convert.convert_group (MS)
    -> calibration (solve / apply, registry) -> imaging.image_ms -> mosaic.make_mosaic
    -> products (database); streaming runs them all as a service.

``import dsacont`` is light: stages (and casatools) are imported on first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

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
}


def __getattr__(name):
    mod = _EXPORTS.get(name)
    if mod is None:
        raise AttributeError(f"module 'dsacont' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + list(_EXPORTS))
