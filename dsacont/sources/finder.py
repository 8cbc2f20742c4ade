"""Source finding on a tile or mosaic FITS with Aegean (AegeanTools), using dsacont's noise maps.

The finder was chosen by measurement (``benchmarks/source_finding.py``, same image, same noise
map, one core; figures in ``benchmarks/README.md``). On a simulated 2048^2 image (1000 point
sources, beam-correlated noise) Aegean 2.3.5 and PyBDSF 1.14.1 are equally accurate (>= 7 sigma
100 % complete, >= 5 sigma 100 % reliable, flux ratio 1.000 / 1.001, positions 0.022 / 0.023 beam
rms); on the demo hour's real tclean mosaic too (completeness >= 7 sigma 0.998 / 0.993, flux and
positions alike). PyBDSF is up to 1.5x faster (2048^2, quiet machine: 9.3 s against 14.1 s;
BANE's local rms adds ~10 s more). Aegean was chosen all the same: PyBDSF's image reader
imports python-casacore, which must never share a process with casatools (a streaming worker
images with casatools), and the operators' own pipelines use Aegean and BANE.

Which noise map (Jy/beam) a catalogue is measured against, first found wins:

1. ``noise=`` given: a FITS path (a map on the image's grid) or a number (Jy/beam, everywhere);
2. a mosaic's ``<stem>.noise.fits`` beside ``<stem>.fits`` (:func:`dsacont.imaging.make_mosaic`);
3. a tile (``<name>.pbcor.fits`` or ``<name>.image.fits``): the tile's noise from its QA JSON
   (:func:`dsacont.imaging.mosaic.tile_files`), divided by the tile's primary beam for the
   PB-corrected image;
4. else BANE's sliding-box rms (``local=False``: Aegean's own estimate);

and by default (``local=True``) the map is raised to BANE's local rms wherever that is higher,
so that sidelobes and calibration artefacts around bright sources count as noise, and then
(``near_bright``, as ``local`` by default), within 20 beams of every source of >= 100 sigma, to
the rms of the negative pixels of 6-beam boxes (:func:`near_bright_rms`): BANE's ~30-beam boxes
dilute the snapshot's sidelobes and a bright source's residual errors, which lie within a few
arcminutes of it. On the demo hour's mosaic this took the reliability above 5 sigma from 0.946
to 0.995 (24 false detections to 2) at the same completeness (``benchmarks/README.md``).

After Aegean's fit, a component alone in its island whose centre lies more than half a beam
from the image peak it sits on, or whose fitted peak is more than 15 % (and 3 sigma) above it
(one Gaussian stretched over an uncleaned source's dirty lobe), is fitted again at the restoring
beam's shape from that peak with Aegean's priorized fitting (``refit``; Aegean's flag 64,
:data:`REFIT_FLAG`, in ``flags``). Such a fit is a good point-source fit: :func:`clean_fit`
counts it with the flag-0 ones.

The catalogue is written beside the image as ``<image stem>.sources.fits`` (``x.fits`` ->
``x.sources.fits``): a FITS binary table (:func:`dsacont.io.fits.write_table`) with one row per
Gaussian component, columns (units in ``TUNITn``)::

    name            'J%H%M%S.s+%D%M%S' from the position
    ra_deg, dec_deg, ra_err_arcsec, dec_err_arcsec
    peak_flux (Jy/beam), peak_flux_err, int_flux (Jy), int_flux_err
    major_arcsec, minor_arcsec (fitted FWHM), pa_deg (east of north), and their *_err
    local_rms (Jy/beam, the noise map at the source), background (Jy/beam), snr (peak / local_rms)
    island, component, flags (Aegean's fit flags; 0 = clean fit, 64 = fitted again, see above)
    sidelobe        True: faint, on the snapshot PSF's arms near a much brighter detection
                    (:func:`dsacont.sources.sidelobes.sidelobe_candidates`); flagged, not removed

and the header cards ``IMAGE``, ``FINDER``, ``NSIGMA``, ``ISLSIGMA``, ``NOISESRC``, ``BMAJ``,
``BMIN``, ``BPA`` (deg), ``FREQ`` (Hz), ``DATE-OBS``/``MJD-OBS`` (when the image has them).
:func:`dsacont.calibration.skymodel.read_catalogue` reads it back as a sky model (``int_flux``).
"""
from __future__ import annotations

import logging
import math
import os
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from dsacont.errors import BadInputError
from dsacont.io.atomic import atomic_path
from dsacont.io.fits import (
    beam_from_header,
    freq_from_header,
    read_fits_image,
    read_header,
    read_table,
    write_like,
    write_table,
)
from dsacont.sources.sidelobes import sidelobe_candidates

log = logging.getLogger(__name__)

#: detection threshold (peak / local rms) and island-growing threshold of the default catalogue
DEFAULT_NSIGMA = 5.0
DEFAULT_ISLAND_NSIGMA = 3.0
#: Aegean's PRIORIZED flag: the component was fitted again at the beam's shape (:func:`_refit_misfits`).
REFIT_FLAG = 64
#: A one-Gaussian fit whose peak is this much above the image's peak it sits on missed its source.
#: A good fit of a point source peaks at most a few per cent above its brightest pixel (the
#: pixel grid samples the top of the beam); the displaced fits measured ~1.3x (22.6 / 17.0 mJy/beam).
MISFIT_PEAK_RATIO = 1.15
#: Islands of more pixels than this are fitted without Aegean's correlated-noise covariance. Its
#: cost grows with the square (and the inverse with the cube) of the island's pixels: on a
#: full-size tile two striped islands of 3354 and 4312 pixels took 121 of the catalogue's 160 s
#: (18 and 26 components, every other island < 3 s), and such islands hold the sidelobes and
#: stripes around bright sources, not the compact sources the covariance helps.
COVARIANCE_MAX_PIXELS = 2500

_TILE_SUFFIXES = (".pbcor.fits", ".image.fits")


def catalogue_path(image_path) -> Path:
    """``<image stem>.sources.fits`` beside ``image_path`` (``x.fits`` -> ``x.sources.fits``)."""
    p = Path(image_path)
    stem = p.name[:-5] if p.name.endswith(".fits") else p.name
    return p.with_name(stem + ".sources.fits")


#: BANE's grid step, in its default steps (its box stays its default size, 6 default steps)
BANE_STEP_FACTOR = 2


def bane_stripes(ny: int, step_y: int, cores: int) -> int:
    """The most stripes (``nslice``) BANE may cut an image of ``ny`` rows into with ``cores``
    processes: its stripes wait for each other at a barrier, so they must all run at once, and it
    rounds their height to whole steps, which can make more stripes than asked for (1207 rows in
    steps of 36, asked for 2: 3 stripes, and a deadlock)."""
    for n in range(max(1, int(cores)), 1, -1):
        height = int(max(ny / n / step_y, 1) * step_y)
        if len(range(0, ny, height)) <= cores:
            return n
    return 1


def local_rms(image_path, step_factor: int = BANE_STEP_FACTOR, cores: int = 1) -> np.ndarray:
    """BANE's sliding-box rms map of an image (Jy/beam, float32, shape (ny, nx); ``cores``
    processes, each a horizontal stripe).

    Boxes are BANE's default size (about 30 beams on a side), sigma-clipped, so the map follows
    the local noise including the sidelobes and artefacts around bright sources. They are stepped
    every ``step_factor`` of BANE's default steps (4 beams): on a full-size tile (3456^2 pixels) a
    step of 2 took BANE from 27.0 to 14.8 s, its map within 1 % (median) and 3 % (1st-99th
    percentile) of the default's; the small-scale rise near bright sources is
    :func:`near_bright_rms`'s.
    """
    from AegeanTools import BANE

    logging.getLogger("AegeanTools").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    hdr = read_header(image_path)
    step = BANE.get_step_size(hdr)
    kw = {}
    if step_factor != 1:
        kw = {"step_size": (step[0] * step_factor, step[1] * step_factor), "box_size": (6 * step[0], 6 * step[1])}
    nslice = bane_stripes(int(hdr["NAXIS2"]), kw.get("step_size", step)[1], cores)
    _, rms = BANE.filter_image(os.fspath(image_path), out_base=None, cores=max(1, int(cores)), nslice=nslice, **kw)
    return np.asarray(rms, dtype=np.float32)


#: near-bright noise (:func:`near_bright_rms`): seeds at least this many sigma of the map...
BRIGHT_SNR = 100.0
#: ... raise the map within this many beams of them ...
BRIGHT_RADIUS_BEAMS = 20.0
#: ... to the rms in boxes of this many beams on a side
BRIGHT_BOX_BEAMS = 6.0


def near_bright_rms(image, nmap, beam_px: float, *, bright_snr: float = BRIGHT_SNR,
                    radius_beams: float = BRIGHT_RADIUS_BEAMS, box_beams: float = BRIGHT_BOX_BEAMS):
    """The noise map raised near bright sources to the rms of the negative pixels of small boxes.

    A snapshot's PSF sidelobes and the residual calibration and beam-model errors of a bright
    source lie within a few arcminutes of it, at 0.1-1 % of its peak: tens of sigma for a
    1 Jy source. BANE's boxes (~30 beams) dilute them with the quiet sky around, so faint
    "sources" on them pass a 5-sigma cut. Like PyBDSF's ``adaptive_rms_box``, the map is raised,
    within ``radius_beams`` of every peak of at least ``bright_snr`` sigma, to the rms in boxes of
    ``box_beams`` on a side. The rms is that of the box's negative pixels: sidelobes and errors
    swing both ways, the sky's sources only up, so a real source does not raise the noise it is
    measured against (for noise alone it is the plain rms).

    Parameters
    ----------
    image : numpy.ndarray, float, shape (ny, nx)
        The image (Jy/beam; NaN where not covered).
    nmap : numpy.ndarray, float, shape (ny, nx)
        Its noise map (Jy/beam; NaN where unknown).
    beam_px : float
        The restoring beam's FWHM (geometric mean of the axes) in pixels.
    bright_snr, radius_beams, box_beams : float
        As above (defaults :data:`BRIGHT_SNR`, :data:`BRIGHT_RADIUS_BEAMS`, :data:`BRIGHT_BOX_BEAMS`).

    Returns
    -------
    (numpy.ndarray, int)
        The raised map (float32, shape (ny, nx); ``nmap`` unchanged outside the regions) and the
        number of bright seeds.
    """
    from scipy import ndimage

    img = np.asarray(image, dtype=np.float32)
    out = np.array(nmap, dtype=np.float32, copy=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(np.isfinite(img) & (out > 0), img / out, 0.0)
    seeds = snr >= bright_snr
    if not seeds.any():
        return out, 0
    labels, n = ndimage.label(seeds)
    peaks = ndimage.maximum_position(snr, labels, index=np.arange(1, n + 1))
    beam_px = max(float(beam_px), 1.0)
    r = int(math.ceil(radius_beams * beam_px))
    box = max(3, int(round(box_beams * beam_px)) | 1)
    ny, nx = img.shape
    for (py, px) in peaks:
        # a cutout one box wider than the region, so every box inside it is whole
        y0, y1 = max(0, py - r - box), min(ny, py + r + box + 1)
        x0, x1 = max(0, px - r - box), min(nx, px + r + box + 1)
        cut = img[y0:y1, x0:x1].astype(np.float64)
        neg = np.isfinite(cut) & (cut < 0)
        with np.errstate(invalid="ignore", divide="ignore"):
            frac = ndimage.uniform_filter(neg.astype(np.float64), box, mode="constant")
            ms = ndimage.uniform_filter(np.where(neg, cut * cut, 0.0), box, mode="constant") / frac
            rms = np.where(frac >= 0.1, np.sqrt(ms), np.nan)
        yy, xx = np.ogrid[y0 - py:y1 - py, x0 - px:x1 - px]
        inside = (yy * yy + xx * xx <= r * r) & np.isfinite(rms)
        sub = out[y0:y1, x0:x1]
        sub[inside] = np.fmax(sub[inside], rms[inside].astype(np.float32))
    return out, n


def noise_for_image(image_path, noise=None, *, local: bool = False, near_bright: bool = False, cores: int = 1):
    """The noise of ``image_path`` (see the module docstring for the order).

    Parameters
    ----------
    image_path : str or path-like
        A FITS image (mosaic, tile pbcor/image, or anything else).
    noise : str, path-like, float or None
        A noise-map FITS or a constant noise (Jy/beam); None to look for dsacont's own.
    local : bool
        Raise the map to BANE's local rms (:func:`local_rms`) where that is higher, so that
        artefacts around bright sources count as noise; with no map, BANE's map is the noise.
    near_bright : bool
        Then raise it near bright sources to the rms of small boxes (:func:`near_bright_rms`).
    cores : int
        Processes BANE may use.

    Returns
    -------
    (numpy.ndarray or None, str)
        The noise map (float32, shape (ny, nx), Jy/beam; NaN where unknown), or None when no noise
        is known (the finder then estimates its own), and a description of where it came from.
    """
    image = read_fits_image(image_path)
    nmap, source = _noise_map(image_path, image[0], noise)
    if local:
        rms = local_rms(image_path, cores=cores)
        if nmap is None:
            nmap, source = rms, "BANE local rms"
        else:
            with np.errstate(invalid="ignore"):
                nmap = np.where(np.isfinite(rms), np.fmax(nmap, rms), nmap).astype(np.float32)
            source = f"max({source}, BANE local rms)"
    if near_bright and nmap is not None:
        data, hdr, wcs = image
        if "BMAJ" in hdr and "BMIN" in hdr:  # no restoring beam, no beams to count in
            beam = beam_from_header(hdr)
            nmap, n = near_bright_rms(data, nmap, math.sqrt(beam["bmaj_arcsec"] * beam["bmin_arcsec"]) / _cell_arcsec(wcs))
            if n:
                source = f"{source}, raised near {n} bright"
    return nmap, source


def _cell_arcsec(wcs) -> float:
    """The pixel's side (arcsec; the geometric mean of the two axes) of a celestial WCS."""
    from astropy.wcs.utils import proj_plane_pixel_scales

    return math.sqrt(float(np.prod(proj_plane_pixel_scales(wcs)))) * 3600.0


def _noise_map(image_path, data, noise=None):
    """The noise map of ``image_path`` (its pixels ``data``) before any raise: see the module docstring."""
    image_path = os.fspath(image_path)
    if noise is not None and not isinstance(noise, (str, os.PathLike)):
        sigma = float(noise)
        if not math.isfinite(sigma) or sigma <= 0:
            raise BadInputError(image_path, f"noise {noise!r} is not a positive number of Jy/beam")
        return np.full(data.shape, sigma, np.float32), f"constant {sigma:.4g} Jy/beam"
    if noise is not None:
        nmap = read_fits_image(noise)[0]
        if nmap.shape != data.shape:
            raise BadInputError(noise, f"noise map shape {nmap.shape} differs from the image's {data.shape} "
                                       f"({image_path})")
        return nmap, os.fspath(noise)
    if image_path.endswith(".fits"):
        sibling = image_path[:-5] + ".noise.fits"
        if os.path.exists(sibling):
            nmap = read_fits_image(sibling)[0]
            if nmap.shape == data.shape:
                return nmap, sibling
    if image_path.endswith(_TILE_SUFFIXES):
        from dsacont.imaging.mosaic import tile_files

        try:
            files = tile_files(image_path)
        except BadInputError as exc:
            log.info("%s: no tile noise (%s); the finder estimates its own", image_path, exc)
            return None, "finder's estimate"
        sigma = float(files["noise"])
        if image_path.endswith(".pbcor.fits"):
            pb = read_fits_image(files["pb"])[0]
            with np.errstate(divide="ignore", invalid="ignore"):
                nmap = np.where((pb > 0) & np.isfinite(data), sigma / pb, np.nan).astype(np.float32)
            return nmap, f"tile noise {sigma:.4g} Jy/beam / pb"
        return np.full(data.shape, sigma, np.float32), f"tile noise {sigma:.4g} Jy/beam"
    return None, "finder's estimate"


def _name(ra_deg: float, dec_deg: float) -> str:
    ra_h = (ra_deg % 360.0) / 15.0
    h = int(ra_h)
    m = int((ra_h - h) * 60)
    s = ((ra_h - h) * 60 - m) * 60
    sign = "+" if dec_deg >= 0 else "-"
    d_abs = abs(dec_deg)
    d = int(d_abs)
    dm = int((d_abs - d) * 60)
    ds = int(((d_abs - d) * 60 - dm) * 60)
    return f"J{h:02d}{m:02d}{min(s, 59.9):04.1f}{sign}{d:02d}{dm:02d}{ds:02d}"


def _short(text: str) -> str:
    """A header value of at most 68 characters: paths reduced to their file names."""
    import re

    return re.sub(r"/[^\s,()]*/", "", text)[:68]


def _aegean_version() -> str:
    from importlib.metadata import version

    return f"aegean {version('aegeantools')}"


@contextmanager
def _aegean_quiet():
    """Aegean's fitting without its noise: its INFO log of every step (kept to warnings unless we
    debug), the LinAlgWarning of each ill-conditioned covariance of a faint fit (its errors come out
    NaN; one per fit, each with its own rcond, so Python's once-per-place rule does not hold them
    back: 527 in one full-size hour) and numpy's renames."""
    from scipy.linalg import LinAlgWarning

    logging.getLogger("AegeanTools").setLevel(max(logging.WARNING, log.getEffectiveLevel()))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=LinAlgWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module="AegeanTools")
        yield


def _run_aegean(image_path, rms_path, bkg_path, nsigma, island_nsigma, ndim, cores):
    from AegeanTools.source_finder import SourceFinder

    class _Finder(SourceFinder):
        """Aegean's fit, without the covariance on islands larger than COVARIANCE_MAX_PIXELS."""

        def _fit_island(self, island_data):
            docov = self.docov
            self.docov = bool(docov) and int(np.isfinite(island_data.i).sum()) <= COVARIANCE_MAX_PIXELS
            try:
                return super()._fit_island(island_data)
            finally:
                self.docov = docov

    sf = _Finder()
    kw = {"cube_index": 0} if ndim > 2 else {}
    with _aegean_quiet():
        return sf.find_sources_in_image(os.fspath(image_path), rmsin=rms_path, bkgin=bkg_path, innerclip=nsigma,
                                        outerclip=island_nsigma, cores=cores, progress=False, nonegative=True, **kw)


def _misfits(found, data, wcs, beam: dict):
    """Components whose one-Gaussian fit missed their source: alone in their island, and centred
    more than half the beam's major axis from the image's peak they sit on, or peaking more than
    :data:`MISFIT_PEAK_RATIO` (and 3 sigma) above it.

    A faint source nobody cleaned keeps the snapshot's dirty main lobe and its shoulders along the
    beam's major axis; on the full-size hour's mosaic Aegean fitted 22 of them as single Gaussians
    2.3-3x the beam long, centred 33-54" along that axis from the truth, their peaks above the
    image's (median 22.6 against 17.0 mJy/beam) (``benchmarks/README.md``, Source finding). The peak a component sits on is found by
    climbing the image from its centre. Returns [(component, ra, dec, peak)] with that peak's
    position and value.
    """
    cell = _cell_arcsec(wcs)
    bmaj = beam["bmaj_arcsec"]
    steps = max(1, int(math.ceil(1.5 * bmaj / cell)))
    img = np.where(np.isfinite(data), data, -np.inf)
    ny, nx = img.shape
    per_island: dict = {}
    for c in found:
        per_island[c.island] = per_island.get(c.island, 0) + 1
    out = []
    for c in found:
        if per_island[c.island] != 1:
            continue
        x, y = wcs.world_to_pixel_values(c.ra, c.dec)
        if not (np.isfinite(x) and np.isfinite(y)):
            continue
        xi, yi = int(round(float(x))), int(round(float(y)))
        if not (0 <= xi < nx and 0 <= yi < ny):
            continue
        for _ in range(steps):  # uphill to the local maximum
            y0, x0 = max(yi - 1, 0), max(xi - 1, 0)
            win = img[y0:yi + 2, x0:xi + 2]
            jy, jx = np.unravel_index(np.argmax(win), win.shape)
            if (y0 + jy, x0 + jx) == (yi, xi):
                break
            yi, xi = y0 + jy, x0 + jx
        top = float(img[yi, xi])
        if not np.isfinite(top):
            continue
        offset = math.hypot(xi - float(x), yi - float(y)) * cell
        rms = float(c.local_rms) if np.isfinite(c.local_rms) and c.local_rms > 0 else 0.0
        if offset > 0.5 * bmaj or (c.peak_flux > MISFIT_PEAK_RATIO * top and c.peak_flux > top + 3.0 * rms):
            ra, dec = wcs.pixel_to_world_values(xi, yi)
            out.append((c, float(ra), float(dec), top))
    return out


def _refit_misfits(found, image_path, rms_path, bkg_path, beam, island_nsigma, nsigma, ndim, cores):
    """``found`` with its misfits (:func:`_misfits`) fitted again by Aegean's priorized fitting:
    position and flux, the shape held at the restoring beam, from the image's peak. Refits below
    ``nsigma`` are dropped; the others carry Aegean's PRIORIZED flag (64)."""
    from AegeanTools.models import ComponentSource
    from AegeanTools.source_finder import SourceFinder

    data, _, wcs = read_fits_image(image_path)
    bad = _misfits(found, data, wcs, beam)
    if not bad:
        return found, 0
    priors = []
    for k, (_, ra, dec, top) in enumerate(bad):
        p = ComponentSource()
        p.ra, p.dec, p.peak_flux = ra, dec, top
        p.a, p.b, p.pa = beam["bmaj_arcsec"], beam["bmin_arcsec"], beam["bpa_deg"]
        p.psf_a, p.psf_b, p.psf_pa = p.a, p.b, p.pa
        p.island, p.source = k, 0
        priors.append(p)
    kw = {"cube_index": 0} if ndim > 2 else {}
    with _aegean_quiet():
        refit = SourceFinder().priorized_fit_islands(
            os.fspath(image_path), priors, rmsin=rms_path, bkgin=bkg_path, stage=2, outerclip=island_nsigma,
            cores=cores, progress=False, **kw)
    kept = [r for r in refit if r.local_rms > 0 and r.peak_flux >= nsigma * r.local_rms]
    drop = {id(c) for c, *_ in bad}
    return [c for c in found if id(c) not in drop] + kept, len(bad)


def _table(found, hdr):
    from astropy.table import Table

    def col(attr, scale=1.0):
        v = np.array([getattr(s, attr) for s in found], dtype=float)
        v = np.where(v < 0, np.nan, v) if attr.startswith("err_") else v
        return v * scale

    ra, dec = col("ra") % 360.0, col("dec")
    peak, rms = col("peak_flux"), col("local_rms")
    with np.errstate(divide="ignore", invalid="ignore"):
        snr = peak / rms
    t = Table()
    t["name"] = np.array([_name(r, d) for r, d in zip(ra, dec)], dtype="U20")
    t["ra_deg"], t["dec_deg"] = ra, dec
    t["ra_err_arcsec"] = col("err_ra", 3600.0) * np.cos(np.radians(dec))
    t["dec_err_arcsec"] = col("err_dec", 3600.0)
    t["peak_flux"], t["peak_flux_err"] = peak, col("err_peak_flux")
    t["int_flux"], t["int_flux_err"] = col("int_flux"), col("err_int_flux")
    t["major_arcsec"], t["major_err_arcsec"] = col("a"), col("err_a")
    t["minor_arcsec"], t["minor_err_arcsec"] = col("b"), col("err_b")
    t["pa_deg"], t["pa_err_deg"] = col("pa"), col("err_pa")
    t["local_rms"], t["background"], t["snr"] = rms, col("background"), snr
    t["island"] = np.array([s.island for s in found], dtype=np.int32)
    t["component"] = np.array([s.source for s in found], dtype=np.int32)
    t["flags"] = np.array([s.flags for s in found], dtype=np.int32)
    t["sidelobe"] = sidelobe_candidates(ra, dec, peak)
    units = {"ra_deg": "deg", "dec_deg": "deg", "ra_err_arcsec": "arcsec", "dec_err_arcsec": "arcsec",
             "peak_flux": "Jy/beam", "peak_flux_err": "Jy/beam", "int_flux": "Jy", "int_flux_err": "Jy",
             "major_arcsec": "arcsec", "major_err_arcsec": "arcsec", "minor_arcsec": "arcsec",
             "minor_err_arcsec": "arcsec", "pa_deg": "deg", "pa_err_deg": "deg", "local_rms": "Jy/beam",
             "background": "Jy/beam"}
    for k, u in units.items():
        t[k].unit = u
    t.sort("peak_flux", reverse=True)
    return t


def find_sources(image_path, *, noise=None, nsigma: float = DEFAULT_NSIGMA,
                 island_nsigma: float = DEFAULT_ISLAND_NSIGMA, local: bool = True, near_bright: bool | None = None,
                 refit: bool = True, out_path=None, cores: int = 1) -> dict:
    """Find and fit the sources of a FITS image; write the catalogue beside it.

    Parameters
    ----------
    image_path : str or path-like
        A mosaic (``<stem>.fits``, its ``<stem>.noise.fits`` beside it), a tile's ``.pbcor.fits``
        or ``.image.fits``, or any FITS image with a restoring beam (``BMAJ``/``BMIN``/``BPA``).
    noise : str, path-like, float or None
        The noise: a FITS map on the image's grid, or a constant (Jy/beam). Default: dsacont's own
        (:func:`noise_for_image`), else Aegean's estimate.
    nsigma : float
        Detection threshold: a component's island must peak at >= ``nsigma`` x the local noise.
    island_nsigma : float
        Islands grow down to ``island_nsigma`` x the local noise.
    local : bool
        Take the noise as the higher of the map and BANE's local rms (:func:`noise_for_image`):
        on the demo hour's mosaic this halves the false detections (artefacts within ~0.5 deg of
        0834+555) at the same completeness; on artefact-free images it changes little.
    near_bright : bool or None
        And raise it near sources of >= 100 sigma to the rms of 6-beam boxes
        (:func:`near_bright_rms`), where a snapshot's sidelobes and residual errors lie. None (the
        default): as ``local``.
    refit : bool
        Fit again, at the restoring beam's shape from the image's peak (Aegean's priorized
        fitting, flag 64), the components whose one Gaussian missed its source: centred more than
        half a beam from the image's peak near it, or peaking > 15 % above it (:func:`_misfits`; with a
        noise map only).
    out_path : str or path-like, optional
        The catalogue (default :func:`catalogue_path`, ``<image stem>.sources.fits``).
    cores : int
        Processes BANE and Aegean may use (a Dask worker's share of the CPUs).

    Returns
    -------
    dict
        ``path`` (the catalogue FITS), ``table`` (astropy Table, the columns of the module
        docstring, brightest first), ``image``, ``noise_source`` (where the noise came from),
        ``n_sources``, ``finder``, ``nsigma``, ``island_nsigma``, ``beam`` (arcsec/deg dict),
        ``freq_hz``, ``mjd`` (``MJD-OBS`` or None), ``elapsed_s``.

    Raises
    ------
    BadInputError
        The image is missing or unreadable, has no restoring beam, or its noise map does not fit.
    """
    t0 = time.perf_counter()
    image_path = os.fspath(image_path)
    if not os.path.exists(image_path):
        raise BadInputError(image_path, "image does not exist")
    try:
        hdr = read_header(image_path)
    except OSError as exc:
        raise BadInputError(image_path, f"not a FITS image: {exc}") from exc
    if "BMAJ" not in hdr or "BMIN" not in hdr:
        raise BadInputError(image_path, "no restoring beam (BMAJ/BMIN) in the header: the finder needs it")
    beam = beam_from_header(hdr)
    near_bright = local if near_bright is None else near_bright
    nmap, noise_source = noise_for_image(image_path, noise, local=local, near_bright=near_bright, cores=cores)
    out_path = Path(out_path) if out_path else catalogue_path(image_path)
    with tempfile.TemporaryDirectory(prefix="dsacont-sources-") as tmp:
        rms_path = bkg_path = None
        if nmap is not None:
            rms_path, bkg_path = os.path.join(tmp, "rms.fits"), os.path.join(tmp, "bkg.fits")
            write_like(image_path, rms_path, nmap)
            write_like(image_path, bkg_path, np.where(np.isfinite(nmap), 0.0, np.nan))
        found = _run_aegean(image_path, rms_path, bkg_path, nsigma, island_nsigma, int(hdr["NAXIS"]), cores)
        refitted = 0
        if refit and found and rms_path is not None:
            found, refitted = _refit_misfits(found, image_path, rms_path, bkg_path, beam, island_nsigma, nsigma,
                                             int(hdr["NAXIS"]), cores)
    table = _table(found, hdr)
    name = os.path.basename(image_path)  # a long name leaves no room for the comment (astropy would warn)
    cards = {"IMAGE": (name, "image the catalogue was made from") if len(name) <= 32 else name,
             "FINDER": (_aegean_version(), "source finder"),
             "NSIGMA": (float(nsigma), "detection threshold, x local rms"),
             "ISLSIGMA": (float(island_nsigma), "island threshold, x local rms"),
             "NOISESRC": _short(noise_source),
             "BMAJ": (beam["bmaj_arcsec"] / 3600.0, "[deg] restoring beam major FWHM"),
             "BMIN": (beam["bmin_arcsec"] / 3600.0, "[deg] restoring beam minor FWHM"),
             "BPA": (beam["bpa_deg"], "[deg] restoring beam position angle"),
             "FREQ": (freq_from_header(hdr), "[Hz] image frequency")}
    mjd = None
    if "MJD-OBS" in hdr:
        mjd = float(hdr["MJD-OBS"])
        cards["MJD-OBS"] = mjd
    if "DATE-OBS" in hdr:
        cards["DATE-OBS"] = str(hdr["DATE-OBS"])
    with atomic_path(out_path) as tmp_out:
        write_table(tmp_out, table, header=cards)
    # the returned table carries the same cards as the file's (the cross-match reads BMAJ, FREQ, NSIGMA)
    table.meta.update({k: (v[0] if isinstance(v, tuple) else v) for k, v in cards.items()})
    elapsed = time.perf_counter() - t0
    log.info("%s: %d sources (>= %.1f sigma, noise: %s; %d fitted again at the beam's shape) in %.1f s -> %s",
             image_path, len(table), nsigma, noise_source, refitted, elapsed, out_path)
    return {"path": str(out_path), "table": table, "image": image_path, "noise_source": noise_source,
            "n_sources": len(table), "refitted": refitted, "finder": _aegean_version(), "nsigma": float(nsigma),
            "island_nsigma": float(island_nsigma), "beam": beam, "freq_hz": freq_from_header(hdr), "mjd": mjd,
            "elapsed_s": round(elapsed, 3)}


def clean_fit(flags) -> np.ndarray:
    """True where a catalogue's ``flags`` (array of int) mark a good fit: Aegean's flag 0, or
    :data:`REFIT_FLAG` alone (fitted again at the beam's shape)."""
    return (np.asarray(flags, dtype=np.int64) & ~REFIT_FLAG) == 0


def read_sources(path):
    """A catalogue written by :func:`find_sources` (astropy Table with units; header cards in ``.meta``)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise BadInputError(path, "catalogue does not exist")
    try:
        return read_table(path)
    except Exception as exc:  # astropy raises several kinds for a non-table file
        raise BadInputError(path, f"not a source catalogue FITS table: {exc}") from exc


def catalogue_product(result: dict, qa: dict | None = None) -> dict:
    """The record of a catalogue made by :func:`find_sources`, for the service (no database is touched).

    Parameters
    ----------
    result : dict
        What :func:`find_sources` returned.
    qa : dict, optional
        The cross-match QA of the catalogue (:func:`dsacont.sources.crossmatch`), kept in the record.

    Returns
    -------
    dict
        ``kind`` 'catalogue', ``path`` (the catalogue FITS), ``image`` (the image it was made
        from), ``mjd``, ``params`` (finder, thresholds, noise source), ``n_sources``, ``qa``,
        ``status`` 'catalogued'. JSON-serialisable.
    """
    return {"kind": "catalogue", "path": os.path.abspath(result["path"]), "image": os.path.abspath(result["image"]),
            "mjd": result.get("mjd"), "n_sources": int(result["n_sources"]),
            "params": {"finder": result["finder"], "nsigma": result["nsigma"],
                       "island_nsigma": result["island_nsigma"], "noise_source": result["noise_source"]},
            "qa": qa or {}, "status": "catalogued"}
