"""Sources: from images to science (catalogues, cross-match QA, forced photometry, light curves).

The stage after imaging: it reads tile and mosaic FITS (:mod:`dsacont.io.fits`), reference
catalogues through :mod:`dsacont.calibration.skymodel`, and products databases read-only.

- :mod:`~dsacont.sources.finder`: ``find_sources`` (Aegean on an image with dsacont's noise map,
  the catalogue ``<image stem>.sources.fits`` beside it), ``read_sources``, ``catalogue_product``;
- :mod:`~dsacont.sources.cli`: the ``dsacont sources`` command.
"""
from __future__ import annotations

from dsacont.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "find_sources": "dsacont.sources.finder",
    "read_sources": "dsacont.sources.finder",
    "catalogue_path": "dsacont.sources.finder",
    "catalogue_product": "dsacont.sources.finder",
    "noise_for_image": "dsacont.sources.finder",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
