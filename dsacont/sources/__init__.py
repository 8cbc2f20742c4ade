"""Sources: from images to science (catalogues, cross-match QA, forced photometry, light curves).

The stage after imaging: it reads tile and mosaic FITS (:mod:`dsacont.io.fits`), reference
catalogues through :mod:`dsacont.calibration.skymodel`, and products databases read-only.

- :mod:`~dsacont.sources.finder`: ``find_sources`` (Aegean on an image with dsacont's noise map,
  the catalogue ``<image stem>.sources.fits`` beside it), ``read_sources``, ``catalogue_product``,
  ``clean_fit`` (which rows' fit flags mark a good fit);
- :mod:`~dsacont.sources.crossmatch`: ``crossmatch`` (flux ratio, offsets, completeness against
  NVSS, the VLA calibrators or a catalogue file; the operators' gates), ``reference_sources``,
  ``tile_crossmatch_gates`` (a tile's flux scale or astrometry keeps it out of the mosaic);
- :mod:`~dsacont.sources.photometry`: ``forced_photometry`` at given positions, with upper limits;
  ``reference_photometry`` (a tile's or mosaic's reference sources, the record the service stores
  in the products database's ``photometry`` table), ``reference_positions``;
- :mod:`~dsacont.sources.lightcurve`: ``light_curve``/``light_curves`` (pandas DataFrames) over a
  list of images or a products database (read-only; its stored photometry first:
  ``stored_photometry``), ``to_dataset`` (xarray), ``products_images``, ``plot_light_curve``;
- :mod:`~dsacont.sources.variability`: ``rank_variables`` (eta, V, max deviation, ranked candidates,
  on one measurement per pass through the beam: ``one_per_pass``), ``find_dip`` (ESE-like
  symmetric dips), ``metrics``;
- :mod:`~dsacont.sources.cli`: the ``dsacont sources``, ``lightcurve`` and ``variables`` commands.
"""
from __future__ import annotations

from dsacont.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "find_sources": "dsacont.sources.finder",
    "read_sources": "dsacont.sources.finder",
    "catalogue_path": "dsacont.sources.finder",
    "catalogue_product": "dsacont.sources.finder",
    "clean_fit": "dsacont.sources.finder",
    "noise_for_image": "dsacont.sources.finder",
    "crossmatch": "dsacont.sources.crossmatch",
    "reference_sources": "dsacont.sources.crossmatch",
    "tile_crossmatch_gates": "dsacont.sources.crossmatch",
    "forced_photometry": "dsacont.sources.photometry",
    "image_mjd": "dsacont.sources.photometry",
    "reference_photometry": "dsacont.sources.photometry",
    "reference_positions": "dsacont.sources.photometry",
    "light_curve": "dsacont.sources.lightcurve",
    "light_curves": "dsacont.sources.lightcurve",
    "products_images": "dsacont.sources.lightcurve",
    "stored_photometry": "dsacont.sources.lightcurve",
    "resolve_source": "dsacont.sources.lightcurve",
    "plot_light_curve": "dsacont.sources.lightcurve",
    "to_dataset": "dsacont.sources.lightcurve",
    "rank_variables": "dsacont.sources.variability",
    "one_per_pass": "dsacont.sources.variability",
    "find_dip": "dsacont.sources.variability",
    "metrics": "dsacont.sources.variability",
}

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
