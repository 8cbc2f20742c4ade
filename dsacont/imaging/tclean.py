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
- **Deconvolution**: Hogbom (exact PSF in the minor cycle), cleaning the whole image
  (``clean_border=0``) until the peak residual is below ``threshold_nsigma`` (2.5) x the robust
  RMS of the residual, which tclean measures itself every major cycle (``nsigma``), at most
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
import math
import os
import shutil
import time
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dsacont.casa import casatasks
from dsacont.errors import BadInputError
from dsacont.imaging import flatten as F
from dsacont.imaging.beam import band_samples, beam_image, make_vptable
from dsacont.imaging.geometry import (
    C_M_S,
    DEFAULT_CELLS_PER_BEAM,
    DEFAULT_FOV_DEG,
    choose_geometry,
    pointing_track,
    wterm_phase_error_rad,
)
from dsacont.imaging.qa import psf_fwhm_arcsec, robust_rms, tile_qa
from dsacont.io.atomic import move_into_place, write_json_atomic
from dsacont.io.fits import beam_from_header, finish_casa_export, freq_from_header, read_fits_image, write_like
from dsacont.io.ms import read_ms_info, table
from dsacont.jsonio import json_default

log = logging.getLogger(__name__)

DEFAULT_ROBUST = 0.0
DEFAULT_NITER = 20000
DEFAULT_NSIGMA = 2.5
DEFAULT_NMAJOR = 10
DEFAULT_CYCLEFACTOR = 0.5
WTERM_TOLERANCE_RAD = 1.0
PBCOR_LIMIT = 0.05
# the steps of image_ms, for its progress bar
_STEPS = ("inspect", "flatten", "tclean", "export", "primary beam", "QA")


def inspect_ms(ms_path, *, datacolumn: str = "corrected", uv_channels: int = 64, chunk_rows: int = 20000) -> dict:
    """What imaging needs to know about an MS, read with casatools (no data column is read).

    Parameters
    ----------
    ms_path : str or path-like
        The Measurement Set.
    datacolumn : {'corrected', 'data', 'model'}
        The column that will be imaged (it must exist).
    uv_channels : int
        About this many channels (spread over the band) go into the uv sample.
    chunk_rows : int
        Rows of FLAG read at a time.

    Returns
    -------
    dict
        ``phase_dirs`` (nfield, 2) rad ICRS/J2000, ``telescope``, ``freqs`` (Nchan,) Hz, all
        channels of all SPWs, ascending, ``chan_width`` (Nchan,) Hz, ``chan_unflagged`` (Nchan,)
        unflagged counts (for the PB band average), ``times`` (Nt,) unique TIME, s since MJD 0,
        ``interval`` (s), ``start_mjd``, ``end_mjd``, ``max_baseline_m`` (longest unflagged
        cross-correlation uv distance, m), ``max_w_m`` (m), ``w_plane`` (a, b) of the fit
        ``w = a u + b v``, ``max_w_residual_m`` (m), ``n_ant``, ``n_vis_unflagged``
        (cross-correlation single-pol samples), ``flagged_fraction`` (of cross-correlations), and a
        channel-subsampled uv sample (``uv_u``, ``uv_v`` in wavelengths, ``uv_w`` weights), all
        (Nsample,), for the Briggs noise factor and the PSF estimate.

    Raises
    ------
    BadInputError
        Not an MS, no such column, no rows, or every cross-correlation flagged.
    """
    ms_path = str(ms_path)
    info = read_ms_info(ms_path)
    phase_dirs = info.field_dirs  # (nfield, 2)
    telescope = info.telescope_name
    spw_freqs = [np.asarray(f, float) for f in info.spw_freqs]
    spw_widths = [np.abs(np.asarray(w, float)) for w in info.spw_widths]
    dd_spw = np.asarray(info.ddid_spw)
    with table(ms_path) as tb:
        colnames = tb.colnames()
        want = {"corrected": "CORRECTED_DATA", "data": "DATA", "model": "MODEL_DATA"}[datacolumn.lower()]
        if want not in colnames:
            raise BadInputError(ms_path, f"has no {want} column (datacolumn={datacolumn!r}); "
                                         f"calibrate it first or image datacolumn='data'")
        nrow = tb.nrows()
        if nrow == 0:
            raise BadInputError(ms_path, "has no rows")
        times = np.asarray(tb.getcol("TIME"))
        interval = np.asarray(tb.getcol("INTERVAL"))
        a1 = np.asarray(tb.getcol("ANTENNA1"))
        a2 = np.asarray(tb.getcol("ANTENNA2"))
        ddid = np.asarray(tb.getcol("DATA_DESC_ID"))
        uvw = np.asarray(tb.getcol("UVW")).T  # (nrow, 3)
        cross = a1 != a2
        # per-SPW channel subsample for the uv-density estimate
        n_tot = 0
        n_unfl = 0.0
        chan_unfl = [np.zeros(len(f)) for f in spw_freqs]
        row_unfl = np.zeros(nrow)
        uu, vv, ww = [], [], []
        nchan_all = sum(len(f) for f in spw_freqs)
        step_all = max(1, int(round(nchan_all / max(uv_channels, 1))))
        for start in range(0, nrow, chunk_rows):
            n = min(chunk_rows, nrow - start)
            flag = np.asarray(tb.getcol("FLAG", start, n))  # (npol, nchan, n) — one DDID shape assumed
            sl = slice(start, start + n)
            c = cross[sl]
            good = ~flag  # (npol, nchan, n)
            cnt = good.sum(axis=0)  # (nchan, n) pols unflagged
            n_tot += flag[:, :, c].size
            n_unfl += float(cnt[:, c].sum())
            row_unfl[sl] = cnt.sum(axis=0)
            for spw in np.unique(dd_spw[ddid[sl]]):
                rows = c & (dd_spw[ddid[sl]] == spw)
                if not rows.any():
                    continue
                chan_unfl[spw] += cnt[:, rows].sum(axis=1)
                f = spw_freqs[spw]
                idx = np.arange(step_all // 2, len(f), step_all) if len(f) > step_all else np.array([len(f) // 2])
                scale = len(f) / len(idx)
                u_r = uvw[sl][rows]
                for j in idx:
                    lam = C_M_S / f[j]
                    uu.append(u_r[:, 0] / lam)
                    vv.append(u_r[:, 1] / lam)
                    ww.append(cnt[j, rows] * scale)

    live = cross & (row_unfl > 0)
    if not live.any():
        raise BadInputError(ms_path, "every cross-correlation is flagged")
    uvdist = np.hypot(uvw[live, 0], uvw[live, 1])
    # the array is nearly coplanar: w ~ a u + b v; what is left is the real w-term
    A = uvw[live, :2]
    plane, *_ = np.linalg.lstsq(A, uvw[live, 2], rcond=None)
    w_res = uvw[live, 2] - A @ plane
    freqs = np.concatenate(spw_freqs)
    widths = np.concatenate(spw_widths)
    order = np.argsort(freqs, kind="stable")
    tu = np.unique(times)
    half = 0.5 * float(np.median(interval))
    ants = np.unique(np.concatenate([a1[live], a2[live]]))
    return {
        "ms": ms_path,
        "phase_dirs": phase_dirs,
        "telescope": telescope,
        "freqs": freqs[order],
        "chan_width": widths[order],
        "chan_unflagged": np.concatenate(chan_unfl)[order],
        "times": tu,
        "interval": float(np.median(interval)),
        "start_mjd": float((tu.min() - half) / 86400.0),
        "end_mjd": float((tu.max() + half) / 86400.0),
        "max_baseline_m": float(uvdist.max()),
        "max_w_m": float(np.abs(uvw[live, 2]).max()),
        "w_plane": (float(plane[0]), float(plane[1])),
        "max_w_residual_m": float(np.abs(w_res).max()),
        "n_ant": int(len(ants)),
        "n_vis_unflagged": float(n_unfl),
        "flagged_fraction": float(1.0 - n_unfl / n_tot) if n_tot else 1.0,
        "uv_u": np.concatenate(uu) if uu else np.zeros(0),
        "uv_v": np.concatenate(vv) if vv else np.zeros(0),
        "uv_w": np.concatenate(ww) if ww else np.zeros(0),
    }


def image_ms(ms_path, out_dir=None, *, imsize: int | None = None, cell_arcsec: float | None = None,
             fov_deg: float = DEFAULT_FOV_DEG, robust: float = DEFAULT_ROBUST, niter: int = DEFAULT_NITER,
             threshold_nsigma: float = DEFAULT_NSIGMA, datacolumn: str = "corrected", paths=None,
             gridder: str = "auto", deconvolver: str = "auto", cells_per_beam: float = DEFAULT_CELLS_PER_BEAM,
             wterm_tolerance_rad: float = WTERM_TOLERANCE_RAD, pbcor_limit: float = PBCOR_LIMIT,
             name: str | None = None, calibrators="auto", keep_casa: bool = False,
             cyclefactor: float = DEFAULT_CYCLEFACTOR, nmajor: int = DEFAULT_NMAJOR, thermal_noise: bool = False,
             clean_border: float = 0.0, flatten="auto") -> dict:
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
    t_all = time.perf_counter()
    timing = {}
    ms_path = os.path.abspath(os.fspath(ms_path))
    if paths is None and out_dir is None:
        from dsacont.config import get_paths

        paths = get_paths()
    out_dir = Path(out_dir) if out_dir is not None else Path(paths.images)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp_base = Path(paths.tmp) if paths is not None else out_dir
    tmp_base.mkdir(parents=True, exist_ok=True)
    if name is None:
        name = Path(ms_path).name
        name = name[:-3] if name.endswith(".ms") else name

    # a progress bar over the steps in a terminal or notebook (none in logs: disable=None)
    bar = tqdm(total=len(_STEPS), desc=f"image {name}", unit="step", disable=None, leave=False)
    bar.set_postfix_str(_STEPS[0])
    t0 = time.perf_counter()
    try:
        info = inspect_ms(ms_path, datacolumn=datacolumn)
    except BaseException:
        bar.close()
        raise
    timing["inspect_s"] = time.perf_counter() - t0
    psf_minor = None
    if cell_arcsec is None and len(info["uv_u"]):
        t0 = time.perf_counter()
        psf_minor, _ = psf_fwhm_arcsec(info["uv_u"], info["uv_v"], info["uv_w"],
                                       1.0 / math.radians(fov_deg), robust)
        timing["psf_estimate_s"] = time.perf_counter() - t0
    imsize, cell_arcsec = choose_geometry(info, fov_deg=fov_deg, imsize=imsize, cell_arcsec=cell_arcsec,
                                          cells_per_beam=cells_per_beam, psf_minor_arcsec=psf_minor)
    half_width = math.radians(imsize * cell_arcsec / 3600.0 / 2.0)
    # w = a u + b v + w_res: the plane part is a coordinate distortion (slant SIN, PV2_1/PV2_2),
    # only w_res defocuses an image made with the standard (2-D) gridder
    wphase_full = wterm_phase_error_rad(info["max_w_m"], info["freqs"].max(), half_width)
    wphase = wterm_phase_error_rad(info["max_w_residual_m"], info["freqs"].max(), half_width)
    if gridder == "auto":
        gridder = "standard" if wphase <= wterm_tolerance_rad else "wproject"
    slant = (-info["w_plane"][0], -info["w_plane"][1]) if gridder == "standard" else None
    if deconvolver == "auto":
        deconvolver = "hogbom"
    nfield = info["phase_dirs"].shape[0]
    centre = info["phase_dirs"][nfield // 2]
    ra0, dec0 = float(centre[0]) % (2 * math.pi), float(centre[1])
    log.info("%s: %d antennas, %d channels %.1f-%.1f MHz, B_max %.0f m, w_max %.0f m (%.1f m off the plane) "
             "-> %d^2 x %.3g\" (w-phase at the edge %.2f rad, %.2f rad after the slant: %s, %s), flagged %.1f %%",
             name, info["n_ant"], len(info["freqs"]), info["freqs"].min() / 1e6, info["freqs"].max() / 1e6,
             info["max_baseline_m"], info["max_w_m"], info["max_w_residual_m"], imsize, cell_arcsec, wphase_full,
             wphase, gridder, deconvolver, 100 * info["flagged_fraction"])

    work = Path(tmp_base) / f"img-{name}-{os.getpid()}-{int(time.time() * 1e3) % 10**8}"
    work.mkdir(parents=True)
    stage = out_dir / f".{name}.partial-{os.getpid()}"
    stage.mkdir(parents=True, exist_ok=True)
    flattened = None
    try:
        _next_step(bar, "flatten")
        if flatten and datacolumn.lower() != "corrected":
            log.info("%s: no bright-source flattening: it works on CORRECTED_DATA only (DATA, the "
                     "correlator's record, is never modified)", name)
        elif flatten:
            t0 = time.perf_counter()
            flattened = F.flatten_sources(ms_path, flatten, column="CORRECTED_DATA")
            timing["flatten_s"] = time.perf_counter() - t0
        _next_step(bar, "tclean")
        ct = casatasks()
        vpt = make_vptable(str(work / "dsa110_airy.vp"), telescope=info["telescope"] or "OVRO_MMA",
                           reffreq_hz=float(np.median(info["freqs"])))
        imagename = str(work / name)
        phasecenter = "" if nfield == 1 else f"J2000 {ra0}rad {dec0}rad"
        t0 = time.perf_counter()
        kw = dict(vis=ms_path, imagename=imagename, datacolumn=datacolumn.lower(), specmode="mfs",
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
        ret = ct.tclean(**kw)
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
        if flattened and flattened["sources"]:
            t0 = time.perf_counter()
            F.unflatten(ms_path)  # the column holds the calibrated data again
            timing["unflatten_s"] = time.perf_counter() - t0
            flattened["restored"] = True
        if not os.path.isdir(imagename + ".image"):
            raise RuntimeError(f"tclean made no image for {ms_path} (see the CASA log)")
        n_iter_done = int(ret.get("iterdone", -1)) if isinstance(ret, dict) else -1
        n_major = int(ret.get("nmajordone", -1)) if isinstance(ret, dict) else -1

        _next_step(bar, "export")
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

        # the tile's own (drift + band averaged) primary beam
        _next_step(bar, "primary beam")
        t0 = time.perf_counter()
        img, hdr, wcs2d = read_fits_image(files["image"])
        mid_mjd = 0.5 * (info["start_mjd"] + info["end_mjd"])
        t_mjd = info["times"] / 86400.0
        if len(t_mjd) > 12:
            t_mjd = np.linspace(t_mjd.min(), t_mjd.max(), 12)
        pra, pdec = pointing_track(ra0, dec0, mid_mjd, t_mjd)
        fq, fw = band_samples(info["freqs"], info["chan_unflagged"], 32)
        pb = beam_image(wcs2d, img.shape, pra, pdec, fq, fw)
        pb_hdr = {"PBTYPE": ("AIRY-DRIFT", "Airy 4.65 m, averaged over tile time and band")}
        write_like(files["image"], files["pb"], pb, bunit="", extra=pb_hdr)
        pbcor = np.where(pb >= pbcor_limit, img / np.maximum(pb, 1e-6), np.nan)
        write_like(files["image"], files["pbcor"], pbcor)
        timing["pb_s"] = time.perf_counter() - t0

        _next_step(bar, "QA")
        t0 = time.perf_counter()
        casa_pb, _, _ = read_fits_image(casa_pb_fits)
        resid, _, _ = read_fits_image(files["residual"])
        qa = tile_qa(info, img, resid, pb, hdr, wcs2d, robust=robust, imsize=imsize, cell_arcsec=cell_arcsec,
                     calibrators=calibrators, casa_pb=casa_pb, centre=(ra0, dec0))
        qa.update({"gridder": gridder, "wterm_phase_edge_rad": wphase, "wterm_phase_edge_no_slant_rad": wphase_full,
                   "slant_sin": list(slant) if slant else None, "iterations": n_iter_done,
                   "noise_q_jy": noise_q, "flattened": (flattened or {}).get("sources", []),
                   "flatten_skipped": (flattened or {}).get("skipped", []),
                   "noise_q_ratio": None if noise_q is None else noise_q / qa["radiometer_jy"],
                   "major_cycles": n_major})
        timing["qa_s"] = time.perf_counter() - t0
        if keep_casa:
            dest = out_dir / f"{name}.casa"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(work, dest)

        result = {
            "name": name, "ms": ms_path, "imsize": imsize, "cell_arcsec": cell_arcsec, "gridder": gridder,
            "deconvolver": deconvolver, "robust": robust, "beam": beam_from_header(hdr),
            "freq_hz": freq_from_header(hdr), "ra_deg": math.degrees(ra0), "dec_deg": math.degrees(dec0),
            "start_mjd": info["start_mjd"], "end_mjd": info["end_mjd"], "qa": qa,
        }
        # atomic moves: pbcor (the primary product) last, then the QA file
        final = {}
        for k in ("pb", "residual", "image", "pbcor"):
            final[k] = str(move_into_place(files[k], out_dir / f"{name}.{k}.fits"))
        result.update(final)
        timing["total_s"] = time.perf_counter() - t_all
        result["timing"] = timing
        qa_path = write_json_atomic(result, out_dir / f"{name}.qa.json", indent=2, default=json_default)
        result["qa_json"] = str(qa_path)
        bar.update()
    finally:
        bar.close()
        if flattened and flattened["sources"] and not flattened.get("restored"):
            F.unflatten(ms_path)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(stage, ignore_errors=True)

    log.info("%s: rms %.3g mJy/beam (radiometer %.3g, ratio %.2f), peak %.4g Jy/beam, DR %.0f, %.1f s",
             name, 1e3 * qa["noise_jy"], 1e3 * qa["radiometer_jy"], qa["noise_ratio"], qa["peak_jy"],
             qa["dynamic_range"], timing["total_s"])
    return result


def _next_step(bar, label: str) -> None:
    """Mark the previous step of the progress bar done and show ``label`` as the current one."""
    bar.update()
    bar.set_postfix_str(label)


def image_product(result: dict) -> dict:
    """The products-database record of an image made by :func:`image_ms` (no database is touched).

    Parameters
    ----------
    result : dict
        What :func:`image_ms` returned.

    Returns
    -------
    dict
        ``Products.add_image``'s arguments with ``path`` (the PB-corrected FITS) included: ``ms``,
        ``files`` (image, pbcor, pb, residual, qa_json), ``ra_deg``, ``dec_deg``, ``start``/``end``
        (MJD, UTC), ``params`` (imaging settings), ``qa``, ``status`` 'imaged'. The streaming service
        records it with the group (:func:`dsacont.service.state.record_products`), and so does
        ``dsacont image``.
    """
    files = {k: result[k] for k in ("image", "pbcor", "pb", "residual", "qa_json") if result.get(k)}
    params = {k: result.get(k) for k in ("imsize", "cell_arcsec", "gridder", "deconvolver", "robust", "beam",
                                          "freq_hz")}
    return {"path": files["pbcor"], "ms": result.get("ms"), "files": files, "ra_deg": result.get("ra_deg"),
            "dec_deg": result.get("dec_deg"), "start": result.get("start_mjd"), "end": result.get("end_mjd"),
            "params": params, "qa": result.get("qa"), "status": "imaged"}
