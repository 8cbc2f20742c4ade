"""Imaging: calibrated Measurement Sets to 5-minute tile images and 60-minute mosaics.

One tile (one MS) goes through WSClean or CASA tclean with an explicit DSA-110 Airy beam and comes out as
FITS (image, effective primary beam, PB-corrected image, residual) with a QA record; tiles are
combined in the image plane, each weighted by its own drifting beam and noise.

Modules, in the order a tile uses them:

- :mod:`~dsacont.imaging.geometry`: cell, image side, w-term budget, the drifting pointing
  (``choose_geometry``, ``good_fft_size``, ``wterm_phase_error_rad``, ``pointing_track``);
- :mod:`~dsacont.imaging.beam`: the CASA Airy vptable and the tile's time- and band-averaged
  primary beam (``make_vptable``, ``effective_beam``, ``beam_image``, ``band_samples``);
- :mod:`~dsacont.imaging.flatten`: flattening bright sources' drifting-beam modulation in the data
  before tclean, and restoring it (``flatten_sources``, ``unflatten``);
- :mod:`~dsacont.imaging.imager`: ``image_ms``, the imaging step itself: CASA tclean (the default),
  or WSClean when installed (``imager='auto'|'wsclean'|'tclean'``, ``choose_imager``);
- :mod:`~dsacont.imaging.tclean` and :mod:`~dsacont.imaging.wsclean`: the two imagers
  (``wsclean_binary``);
- :mod:`~dsacont.imaging.tile`: what both share: the grid plan, flattening around the imager,
  primary beam, pbcor, QA and the files (``inspect_ms``, ``image_product``);
- :mod:`~dsacont.imaging.qa`: noise, radiometer expectation, source fits (``tile_qa``,
  ``calibrator_checks``, ``robust_rms``, ``fit_source``, ``find_sources``, ...);
- :mod:`~dsacont.imaging.mosaic`: ``make_mosaic``, the primary-beam-weighted combination;
- :mod:`~dsacont.imaging.cli`: the ``dsacont image`` and ``dsacont mosaic`` commands.

FITS files are read and written by :mod:`dsacont.io.fits` (``read_fits_image`` is re-exported
here). Names are imported on first use (PEP 562), so importing one module does not import them all.
"""
from __future__ import annotations

from dsacont.lazy import lazy_exports

# public name -> module that defines it
_EXPORTS = {
    "C_M_S": "dsacont.imaging.geometry",
    "DEFAULT_FOV_DEG": "dsacont.imaging.geometry",
    "DEFAULT_CELLS_PER_BEAM": "dsacont.imaging.geometry",
    "choose_geometry": "dsacont.imaging.geometry",
    "good_fft_size": "dsacont.imaging.geometry",
    "wterm_phase_error_rad": "dsacont.imaging.geometry",
    "pointing_track": "dsacont.imaging.geometry",
    "make_vptable": "dsacont.imaging.beam",
    "effective_beam": "dsacont.imaging.beam",
    "beam_image": "dsacont.imaging.beam",
    "band_samples": "dsacont.imaging.beam",
    "flatten_sources": "dsacont.imaging.flatten",
    "unflatten": "dsacont.imaging.flatten",
    "inspect_ms": "dsacont.imaging.tile",
    "image_ms": "dsacont.imaging.imager",
    "choose_imager": "dsacont.imaging.imager",
    "IMAGERS": "dsacont.imaging.imager",
    "DEFAULT_IMAGER": "dsacont.imaging.imager",
    "wsclean_binary": "dsacont.imaging.wsclean",
    "image_product": "dsacont.imaging.tile",
    "DEFAULT_NITER": "dsacont.imaging.tclean",
    "DEFAULT_NSIGMA": "dsacont.imaging.tclean",
    "DEFAULT_NMAJOR": "dsacont.imaging.tclean",
    "WTERM_TOLERANCE_RAD": "dsacont.imaging.tclean",
    "PBCOR_LIMIT": "dsacont.imaging.tclean",
    "tile_qa": "dsacont.imaging.qa",
    "calibrator_checks": "dsacont.imaging.qa",
    "MAIN_LOBE_PB": "dsacont.imaging.qa",
    "make_mosaic": "dsacont.imaging.mosaic",
    "read_fits_image": "dsacont.io.fits",
    "set_slant_sin": "dsacont.io.fits",
}


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
