"""Imaging one calibrated Measurement Set (one 5-minute tile) with CASA tclean.

:func:`image_ms` makes, for one MS, in the images directory::

    <name>.image.fits     restored Stokes-I image, flat noise (NOT primary-beam corrected), Jy/beam
    <name>.pb.fits        the tile's effective primary beam A(ra, dec) (0..1)
    <name>.pbcor.fits     image / pb (blank where pb < pbcor_limit), Jy/beam = Jy for point sources
    <name>.residual.fits  residual after cleaning, Jy/beam
    <name>.qa.json        noise, peak, dynamic range, radiometer expectation, calibrator check

All carry BMAJ/BMIN/BPA (degrees), the frequency axis (CRVAL3 = reference frequency, Hz), a
SIN-projection WCS centred on the MS phase centre (CASA's exportfits) and the array centre's
OBSGEO cards (:mod:`dsacont.io.fits`). The cost of a tile is dominated by gridding (per
visibility, not per pixel), then by FFTs and Hogbom minor cycles (per pixel); measured timings are
in ``benchmarks/README.md``.

Choices
-------
- **Geometry** (cell, field, image side): :mod:`dsacont.imaging.geometry`. On demo tile 13:45
  (0834+555 flattened, 3 sigma) a 3.5 deg field left the residual RMS 1.46x the radiometer
  equation, 5 deg 1.25x; pass ``fov_deg=3.5`` / ``cell_arcsec`` to trade noise for speed.
- **Weighting**: Briggs, robust 0. The radiometer expectation includes the Briggs noise factor
  (computed from the MS's uv coverage; agrees with CASA's "theoretical sensitivity" to 2 %).
- **Gridder / w-term**: ``w = a u + b v + w_res`` with ``b ~ 0.33`` and ``w_res`` a few metres
  (station heights and the 5-minute drift). The plane part is not a defocus but a coordinate
  distortion: a 2-D (standard) gridder puts a source at ``(l - a(1 - n), m - b(1 - n))``, which is
  exactly FITS's slant orthographic projection SIN with ``PV2_1 = -a``, ``PV2_2 = -b`` (Calabretta
  & Greisen 2002, 5.1.5). So the fast 'standard' gridder is used and the exported WCS carries
  PV2_1/PV2_2 (astropy/wcslib, ds9 and the mosaic honour them). Measured: ignoring w costs 10.3 rad
  of phase at the field edge on the full array; after the plane fit 0.28 rad (0.11 rad small
  preset). ``gridder="auto"`` falls back to 'wproject' (CASA's automatic w-planes, several times
  slower) only when the residual phase exceeds ``wterm_tolerance_rad`` (1 rad).
- **Bright sources**: the drifting-beam modulation of bright catalogue sources (0834+555 and any
  VLA calibrator above 0.1 Jy apparent within 5 deg) is flattened in CORRECTED_DATA before tclean
  and restored afterwards (:mod:`dsacont.imaging.flatten`): tclean's fixed point components cannot
  follow a source whose beam gain changes by up to ~30 % during the tile. Small-preset demo tile
  13:45 (0834+555 1.4 deg east of centre): 5.4x the radiometer noise with the old settings
  (3.5 deg, 4 sigma, no flattening), 2.8x with flattening alone, 1.25x with the field and depth
  below.
- **Deconvolution**: Hogbom (exact PSF in the minor cycle), in two stages: the whole image
  (``clean_border=0``) down to ``mask_nsigma`` (4) x the robust RMS of the residual, then only
  within ``mask_beams`` (1) beam of the components found so far, until the peak residual there
  is below ``threshold_nsigma`` (2.5) x the RMS, which tclean measures itself every major cycle
  (``nsigma``). On the small-preset demo hour, one unmasked stage to 2.5 sigma put components on
  noise peaks and on the sidelobes of sources the data did not fit exactly (false detections
  >= 5 sigma: 99, reliability 0.81) and took ~1 mJy from every faint source (flux ratio 0.964);
  two stages: 63, 0.87 and 0.993, at a residual RMS of 1.13x the radiometer equation instead of
  0.84x (a residual below the thermal noise is noise cleaned away). Each stage at most
  ``nmajor`` (10) major cycles, ``cyclefactor=0.5`` (the snapshot PSF has ~0.45 near sidelobes;
  CASA's default needed 13 major cycles). Deeper cleaning removes the sidelobes of the many
  faint field sources: on the demo tile 13:45 (5 deg field, 0834+555 flattened) the residual RMS
  over the image was 1.45x the radiometer figure at 4 sigma, 1.25x at 3 sigma; on the transit
  tile 13:55 (main lobe) 1.41x at 3 sigma, 1.28x at 2.5 sigma, 1.25x at 2 sigma.
- **Primary beam**: the tile's drift- and band-averaged Airy beam (:mod:`dsacont.imaging.beam`);
  ``pbcor = image / pb``.
- **Noise**: QA ``noise_jy`` is the robust RMS of the residual in the tile's main lobe (effective
  beam >= 0.5: the same sky whatever the field size), ``noise_image_jy`` over the inner 90 % of the
  image; ``thermal_noise=True`` also measures the thermal noise on a dirty Stokes-Q image. Cleaning
  to 2.5 sigma removes some noise peaks too, so the residual RMS can read slightly below the
  radiometer figure on quiet tiles (:func:`dsacont.imaging.qa.tile_qa`).
"""
from __future__ import annotations

import logging
import os
import time

import numpy as np
from astropy import units as u

from dsacont.casa import casatasks, ensure_casa
from dsacont.imaging.beam import make_vptable
from dsacont.imaging.geometry import DEFAULT_CELLS_PER_BEAM, DEFAULT_FOV_DEG
from dsacont.imaging.qa import robust_rms
from dsacont.imaging.tile import (  # noqa: F401  (inspect_ms and image_product lived here)
    cleanup,
    component_mask,
    finish_tile,
    flattened,
    image_product,
    inspect_ms,
    next_step,
    plan_tile,
    work_dirs,
)
from dsacont.io.fits import finish_casa_export, read_fits_image

log = logging.getLogger(__name__)

DEFAULT_ROBUST = 0.0
DEFAULT_NITER = 20000
DEFAULT_NSIGMA = 2.5
DEFAULT_NMAJOR = 10
DEFAULT_CYCLEFACTOR = 0.5
DEFAULT_MASK_NSIGMA = 4.0
DEFAULT_MASK_BEAMS = 1.0
WTERM_TOLERANCE_RAD = 1.0
PBCOR_LIMIT = 0.05


def image_ms(ms_path, out_dir=None, *, imsize: int | None = None, cell_arcsec: float | None = None,
             fov_deg: float = DEFAULT_FOV_DEG, robust: float = DEFAULT_ROBUST, niter: int = DEFAULT_NITER,
             threshold_nsigma: float = DEFAULT_NSIGMA, datacolumn: str = "corrected", paths=None,
             gridder: str = "auto", deconvolver: str = "auto", cells_per_beam: float = DEFAULT_CELLS_PER_BEAM,
             wterm_tolerance_rad: float = WTERM_TOLERANCE_RAD, pbcor_limit: float = PBCOR_LIMIT,
             name: str | None = None, calibrators="auto", keep_casa: bool = False,
             cyclefactor: float = DEFAULT_CYCLEFACTOR, nmajor: int = DEFAULT_NMAJOR, thermal_noise: bool = False,
             clean_border: float = 0.0, flatten="auto",
             mask_nsigma: float | None = DEFAULT_MASK_NSIGMA, mask_beams: float = DEFAULT_MASK_BEAMS) -> dict:
    """Image one MS (one tile) with tclean; write FITS image, pb, pbcor, residual and QA.

    Parameters
    ----------
    ms_path : str or path-like
        The (calibrated) MS; one field (a common phase centre) expected; with several fields the
        middle one is the image centre.
    out_dir : str or path-like, optional
        Directory for the FITS (default ``paths.images``). Files appear atomically.
    imsize : int, optional
        Image side, pixels (default from ``fov_deg`` and the cell,
        :func:`dsacont.imaging.geometry.choose_geometry`).
    cell_arcsec : float, optional
        Cell, arcsec (default from the longest baseline and the PSF, ``cells_per_beam``).
    fov_deg : float
        Field of view (image side), degrees, when ``imsize`` is not given.
    robust : float
        Briggs robust parameter.
    niter : int
        Maximum number of clean iterations; cleaning stops at ``threshold_nsigma`` x the robust
        residual RMS (tclean ``nsigma``).
    threshold_nsigma : float
        Clean down to this many times the residual's robust RMS.
    datacolumn : {'corrected', 'data'}
        'corrected' (calibrated data) or 'data'.
    paths : dsacont.config.Paths, optional
        Default ``get_paths()``: images, tmp, products_db.
    gridder : {'auto', 'standard', 'wproject', 'widefield'}
        'auto': 'standard' with the slant SIN WCS unless the residual w-term phase at the field
        edge exceeds ``wterm_tolerance_rad``, then 'wproject'.
    deconvolver : {'auto', 'hogbom', 'clark'}
        'auto' = 'hogbom'; 'clark' (PSF patch) has faster minor cycles on big images, but deep
        minor cycles need the exact PSF.
    cells_per_beam : float
        Cells per fringe spacing of the longest baseline (when ``cell_arcsec`` is None).
    wterm_tolerance_rad : float
        Largest residual w-term phase (rad) at the field edge the 'standard' gridder may leave.
    pbcor_limit : float
        pbcor pixels where the beam is below this are blanked (NaN).
    name : str, optional
        File stem (default the MS name without '.ms').
    calibrators : 'auto', list of str, or None
        'auto' (every VLA calibrator inside the image), a list of names, or None (no check).
    keep_casa : bool
        Keep CASA's image directories (in ``<out_dir>/<name>.casa/``) for inspection.
    cyclefactor : float
        tclean's; a major cycle starts when the residual peak falls below
        ``cyclefactor x PSF sidelobe x peak`` (floor 1 % of the peak). DSA-110 snapshot PSFs have
        ~0.45 near sidelobes, so CASA's default 1.0 halves the peak per major cycle (13 major
        cycles on a tile with 0834+555). 0.1 needs ~3 but diverged on a tile with 0834+555 0.7 deg
        off centre (its beam gain changes by ~30 % during the tile, so no fixed PSF fits it and
        deep minor cycles oscillate: model 8.5 -> 7.4 -> 10.6 -> 6.2 -> 12.3 Jy); 0.5 converges
        there (4 cycles to the threshold) and elsewhere.
    nmajor : int
        At most this many major cycles. Once the residual is near ``threshold_nsigma`` x RMS,
        tclean's nsigma stop is re-evaluated on every new residual and it can spend many cycles
        removing a few mJy near the threshold; 5 reaches the threshold on 0834+555 tiles.
    thermal_noise : bool
        Also make a dirty Stokes-Q image (XX - YY)/2 with the same weights and report its robust
        RMS (``qa["noise_q_jy"]``, ``qa["noise_q_ratio"]``): the thermal noise without the
        deconvolution errors of bright sources (an unpolarised sky has Q = 0; on real data with
        linear feeds Q also holds polarised emission and XX/YY gain mismatch). Costs two gridding
        passes.
    clean_border : float
        Fraction of the image side at each edge where no clean components are placed (default 0:
        with bright sources flattened, cleaning to the edge converges and removes the sidelobes of
        sources near it).
    flatten : 'auto', None/False, or list of str
        Flatten the drifting-beam modulation of bright catalogue sources (or of these calibrators)
        in CORRECTED_DATA before tclean and restore it afterwards (:mod:`dsacont.imaging.flatten`;
        QA ``flattened``). Not done with ``datacolumn='data'``.
    mask_nsigma : float or None
        Clean in two stages: the whole image down to ``mask_nsigma`` x the residual's robust RMS,
        then only within ``mask_beams`` restoring-beam FWHMs of the components found so far, down
        to ``threshold_nsigma``. Without a mask, the deep cycles put components on noise peaks
        and on the sidelobes of sources the data do not fit exactly, and take the flux from the
        faint sources around them (clean bias); with it, they only finish the sources already
        found. None: one unmasked clean down to ``threshold_nsigma``.
    mask_beams : float
        Radius of the second stage's mask around each component, restoring-beam major FWHMs.

    Returns
    -------
    dict
        ``image``, ``pbcor``, ``pb``, ``residual``, ``qa_json`` (paths), ``name``, ``imsize``
        (pixels), ``cell_arcsec``, ``gridder``, ``deconvolver``, ``robust``, ``beam``
        (``bmaj_arcsec``, ``bmin_arcsec``, ``bpa_deg``), ``freq_hz``, ``ra_deg``, ``dec_deg``
        (image centre), ``start_mjd``, ``end_mjd``, ``qa`` (:func:`dsacont.imaging.qa.tile_qa`
        plus the imaging record), ``timing`` (seconds per step).

    Raises
    ------
    BadInputError
        The MS is missing, has no such data column, or is entirely flagged.
    """
    plan = plan_tile(ms_path, out_dir, paths=paths, name=name, datacolumn=datacolumn, fov_deg=fov_deg,
                     robust=robust, imsize=imsize, cell_arcsec=cell_arcsec, cells_per_beam=cells_per_beam,
                     imager="tclean")
    info, timing, name = plan["info"], plan["timing"], plan["name"]
    imsize, cell_arcsec, wphase, wphase_full = plan["imsize"], plan["cell_arcsec"], plan["wphase"], plan["wphase_full"]
    ra0, dec0, nfield = plan["ra0"], plan["dec0"], plan["nfield"]
    if gridder == "auto":
        gridder = "standard" if wphase <= wterm_tolerance_rad else "wproject"
    slant = (-info["w_plane"][0], -info["w_plane"][1]) if gridder == "standard" else None
    if deconvolver == "auto":
        deconvolver = "hogbom"
    log.info("%s: %d antennas, %d channels %.1f-%.1f MHz, B_max %.0f m, w_max %.0f m (%.1f m off the plane) "
             "-> %d^2 x %.3g\" (w-phase at the edge %.2f rad, %.2f rad after the slant: %s, %s), flagged %.1f %%",
             name, info["n_ant"], len(info["freqs"]), info["freqs"].min() / 1e6, info["freqs"].max() / 1e6,
             info["max_baseline_m"], info["max_w_m"], info["max_w_residual_m"], imsize, cell_arcsec, wphase_full,
             wphase, gridder, deconvolver, 100 * info["flagged_fraction"])

    work, stage = work_dirs(plan)
    try:
        next_step(plan, "flatten")
        with flattened(plan, flatten, datacolumn) as flat:
            next_step(plan, "tclean")
            ct = casatasks()
            vpt = make_vptable(str(work / "dsa110_airy.vp"), telescope=info["telescope"] or "OVRO_MMA",
                               reffreq_hz=float(np.median(info["freqs"])))
            imagename = str(work / name)
            phasecenter = "" if nfield == 1 else f"J2000 {ra0}rad {dec0}rad"
            t0 = time.perf_counter()
            kw = dict(vis=plan["ms_path"], imagename=imagename, datacolumn=datacolumn.lower(), specmode="mfs",
                      gridder=gridder, vptable=vpt, pblimit=-1e-4, imsize=[imsize, imsize],
                      cell=f"{cell_arcsec}arcsec", phasecenter=phasecenter, stokes="I", weighting="briggs",
                      robust=robust, niter=int(niter), gain=0.1, deconvolver=deconvolver, threshold="0Jy",
                      nsigma=float(threshold_nsigma), pbcor=False, savemodel="none", interactive=False,
                      restart=False, calcres=True, calcpsf=True, cyclefactor=float(cyclefactor),
                      minpsffraction=0.01, nmajor=int(nmajor))
            if clean_border > 0:
                # no clean components in the outer border: sources just outside the image put PSF
                # sidelobes there, and deep Hogbom cycles chasing them diverge (seen on a tile with
                # 0834+555 0.7 deg from its centre: residual 0.2 Jy at the edge without the mask)
                b = int(round(clean_border * imsize))
                kw.update(usemask="user", mask=f"box[[{b}pix,{b}pix],[{imsize - 1 - b}pix,{imsize - 1 - b}pix]]")
            if gridder == "wproject":
                kw["wprojplanes"] = -1
            if gridder == "widefield":
                kw["wprojplanes"] = -1
                kw["facets"] = 1
            two_stage = mask_nsigma is not None and mask_nsigma > threshold_nsigma \
                and clean_border <= 0 and niter > 0
            if two_stage:
                ret = ct.tclean(**dict(kw, nsigma=float(mask_nsigma)))
                # tclean's own (empty) mask image of the first stage becomes the components' mask
                masked = _component_mask(imagename, mask_beams, cell_arcsec, imagename + ".mask")
                if masked:
                    ret2 = ct.tclean(**dict(kw, usemask="user", mask="", restart=True,
                                            calcpsf=False, calcres=False))
                    ret = _merge_returns(ret, ret2)
                mask_px = masked
            else:
                ret = ct.tclean(**kw)
                mask_px = None
            timing["tclean_s"] = time.perf_counter() - t0
            noise_q = None
            if thermal_noise:
                t0 = time.perf_counter()
                kq = dict(kw, imagename=imagename + "_q", stokes="Q", niter=0, nsigma=0.0)
                kq.pop("nmajor", None)
                ct.tclean(**kq)
                qfits = str(work / "q.fits")
                ct.exportfits(imagename=imagename + "_q.residual", fitsimage=qfits, overwrite=True)
                finish_casa_export(qfits)
                noise_q = robust_rms(read_fits_image(qfits)[0])
                timing["thermal_noise_s"] = time.perf_counter() - t0
        if not os.path.isdir(imagename + ".image"):
            raise RuntimeError(f"tclean made no image for {plan['ms_path']} (see the CASA log)")
        n_iter_done = int(ret.get("iterdone", -1)) if isinstance(ret, dict) else -1
        n_major = int(ret.get("nmajordone", -1)) if isinstance(ret, dict) else -1

        next_step(plan, "export")
        t0 = time.perf_counter()
        files = {k: str(stage / f"{name}.{k}.fits") for k in ("image", "residual", "pb", "pbcor")}
        ct.exportfits(imagename=imagename + ".image", fitsimage=files["image"], overwrite=True, velocity=False)
        ct.exportfits(imagename=imagename + ".residual", fitsimage=files["residual"], overwrite=True)
        casa_pb_fits = str(work / "casa_pb.fits")
        ct.exportfits(imagename=imagename + ".pb", fitsimage=casa_pb_fits, overwrite=True)
        # CASA's OBSGEO cards are wrong: the array centre's, MJD-OBS, and the slant SIN parameters
        for f in (files["image"], files["residual"], casa_pb_fits):
            finish_casa_export(f, slant=slant)
        timing["export_s"] = time.perf_counter() - t0
        casa_pb, _, _ = read_fits_image(casa_pb_fits)
        result = finish_tile(
            plan, files, robust=robust, pbcor_limit=pbcor_limit, calibrators=calibrators, stage=stage,
            imaging={"imager": "tclean", "gridder": gridder, "deconvolver": deconvolver}, flattened_rec=flat,
            casa_pb=casa_pb,
            qa_extra={"imager": "tclean", "gridder": gridder, "wterm_phase_edge_rad": wphase,
                      "wterm_phase_edge_no_slant_rad": wphase_full, "slant_sin": list(slant) if slant else None,
                      "iterations": n_iter_done, "noise_q_jy": noise_q, "major_cycles": n_major,
                      "clean_mask_nsigma": mask_nsigma if mask_px is not None else None, "clean_mask_px": mask_px})
    finally:
        cleanup(plan, work, stage, keep_as=plan["out_dir"] / f"{name}.casa" if keep_casa else None)
    return result


def _component_mask(imagename: str, mask_beams: float, cell_arcsec: float, mask_path: str) -> int:
    """Write a CASA mask image of the pixels within ``mask_beams`` beams of the model's components.

    Returns the number of masked pixels (0: no components, no mask written).
    """
    ia = ensure_casa().image()
    try:
        ia.open(imagename + ".psf")
        beam = ia.restoringbeam()
        ia.close()
        major = beam.get("major") or {"value": 0.0, "unit": "arcsec"}
        bmaj_arcsec = u.Quantity(float(major["value"]), major["unit"]).to_value(u.arcsec)
        radius_px = max(1.0, mask_beams * bmaj_arcsec / cell_arcsec)
        ia.open(imagename + ".model")
        model = ia.getchunk()
        ia.close()
        mask = component_mask(model[:, :, 0, 0], radius_px)
        n = int(mask.sum())
        if n:
            ia.fromimage(outfile=mask_path, infile=imagename + ".model", overwrite=True)
            ia.putchunk(mask.astype(np.float32)[:, :, None, None])
            ia.close()
        return n
    finally:
        ia.done()


def _merge_returns(first, second):
    """tclean's summaries of two consecutive runs as one: iterations and major cycles added."""
    if not isinstance(first, dict) or not isinstance(second, dict):
        return second if isinstance(second, dict) else first
    out = dict(second)
    for k in ("iterdone", "nmajordone"):
        if k in first and k in second:
            out[k] = int(first[k]) + int(second[k])
    return out
