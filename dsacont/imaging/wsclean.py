"""Imaging one calibrated Measurement Set (one 5-minute tile) with WSClean.

The same products as :func:`dsacont.imaging.tclean.image_ms` (``<name>.image/.pb/.pbcor/.residual.fits``
and ``<name>.qa.json``, the same result dict and QA record, the same grid chosen by
:func:`dsacont.imaging.tile.plan_tile`), made by the ``wsclean`` program (Offringa et al. 2014;
Debian/Ubuntu package ``wsclean``) run as a subprocess. Everything before and after the imager
(bright-source flattening, dsacont's drift-averaged Airy primary beam, pbcor, QA, the atomic file
moves) is :mod:`dsacont.imaging.tile`'s, shared with tclean.

Choices
-------
- **Gridder** (``gridder='auto'``): as tclean's, a 2-D gridder (WSClean's with one w-layer,
  ``-nwlayers 1``) that leaves the array's w-plane ``w = a u + b v`` as a slant SIN projection
  (PV2_1/PV2_2, :mod:`dsacont.imaging.tclean`), unless the residual w-phase at the field edge
  exceeds ``wterm_tolerance_rad``; then the w-gridder (``-use-wgridder``, ducc0's wgridder inside
  WSClean, full w-correction to ``-wgridder-accuracy`` 1e-4, a true SIN image). The w-gridder
  costs many w-planes over a 5 deg field: on the full-size transit tile it took 918 CPU-s against
  tclean's 563 (``benchmarks/README.md``).
- **Threads**: ``-j threads``; the streaming service passes its worker's share of the CPUs
  (``context.threads``: 1 per group with two groups in flight on 2 cores); called alone the
  default is the CPUs this process may use. ``-parallel-gridding`` only helps with several output
  images (channels or polarisations); a Stokes-I MFS tile has one, so it is not used.
- **Weighting**: Briggs, robust 0 (``-weight briggs 0``), as tclean.
- **Deconvolution**: Hogbom (WSClean's default, no multiscale: the field is point sources at
  these resolutions) over the whole image, down to about ``threshold_nsigma`` (2.5) x the final
  residual's robust RMS, as tclean's nsigma. WSClean fixes its last threshold from the noise it
  measures at the start of its last major cycle, which still holds the uncleaned faint sources
  (small-preset transit tile: 0.63 mJy, the final residual 0.60 and the thermal noise 0.51), so
  ``-auto-threshold`` is ``SIGMA_FACTOR`` (0.8) x ``threshold_nsigma``: with 2.5 x itself the
  residual was 1.19x the radiometer figure (tclean 0.96x), with 2.0 x 1.04x (its Stokes-Q dirty
  image 1.01x);
  ``auto_mask`` (default 4) is WSClean's two-stage auto-masking (clean to ``auto_mask`` sigma
  everywhere, then only within the components found so far down to the threshold). At most
  ``nmajor`` major cycles (``-nmiter``), ``mgain`` (0.9) of the peak per major cycle. Full-size
  transit tile (``benchmarks/README.md``): without the mask, every tile stopped at the old
  20000-iteration cap cleaning noise peaks (WSClean 114 s, residual 1.32x the radiometer figure;
  60000 iterations: 263 s, 1.13x, a residual that reads low because noise went into the model);
  with the 4-sigma mask it converges at ~31000 iterations in 75 s, 1.30x.
- **Restoring beam**: fitted here to WSClean's PSF as tclean fits its own (:func:`fit_psf_beam`:
  the main lobe above ``psfcutoff`` 0.35 of the peak), and the image restored here
  (:func:`restore`: residual + model convolved with that beam). WSClean's own fit is narrower on
  the snapshot PSF (small preset: 93" x 46" vs tclean's 109" x 61"), and with ~2.7 pixels per
  minor FWHM a point source whose clean components straddle pixels then restores ~3 % low
  (0834+555 at 0.971 of truth vs 0.994); with the tclean-like beam 0.993.
- **Baseline-dependent averaging** (``baseline_averaging='auto'``): WSClean averages each
  baseline's integrations as it reads them (``-baseline-averaging``), many on the short baselines
  (18 % of DSA-110's are under 100 m) and none on the longest, as many as keep the extra time
  smearing at the field edge within ``time_smearing_budget`` (1 %), judged on the tile's own uv
  coverage and fringe rates (:func:`dsacont.imaging.geometry.time_smearing_loss`, checked against
  a brute-force average of the fringes in the tests). On the full-size transit tile that grids
  0.44 of the visibilities in every major cycle. WSClean's rule assumes rows in time order;
  :func:`wsclean_integration_scale` corrects the value for an MS in another order (CASA
  mstransform's window-major copies).
- **Primary beam**: never WSClean's; dsacont's own (:func:`dsacont.imaging.tile.finish_tile`).
- An MS with several fields (``phase='per_integration'`` conversion) is imaged by tclean instead:
  WSClean images one phase centre.

Measured timings and the comparison with tclean: ``benchmarks/README.md`` (Imaging).
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from dsacont.imaging.geometry import (
    DEFAULT_CELLS_PER_BEAM,
    DEFAULT_FOV_DEG,
    choose_baseline_averaging,
    time_smearing_loss,
)
from dsacont.imaging.qa import robust_rms
from dsacont.imaging.tile import (
    DEFAULT_SMEARING_BUDGET,
    average_for_imaging,
    channel_bin,
    cleanup,
    finish_tile,
    flattened,
    next_step,
    plan_tile,
    work_dirs,
)
from dsacont.io.fits import set_slant_sin, set_standard_cards

log = logging.getLogger(__name__)

# deconvolution (measured on the full-size transit tile, benchmarks/README.md, Imaging): clean to
# the threshold inside an automatic mask at 4 sigma, 90 % of the peak per major cycle; the niter
# cap is a safety net (the tile converges at ~31000), not the stopping rule it was at 20000
DEFAULT_MGAIN = 0.9
DEFAULT_AUTO_MASK = 4.0
DEFAULT_NITER = 60000
DEFAULT_ACCURACY = 1e-4
# WSClean's -auto-threshold = threshold_nsigma x this (see the module docstring)
SIGMA_FACTOR = 0.8
INSTALL_HINT = "apt-get install wsclean (Debian/Ubuntu package)"
# the largest peak loss at the field edge that baseline-dependent time averaging may add
DEFAULT_TIME_SMEARING_BUDGET = 0.01


def wsclean_binary() -> str | None:
    """Path of the ``wsclean`` program on PATH (``$DSACONT_WSCLEAN`` overrides), or None."""
    override = os.environ.get("DSACONT_WSCLEAN")
    if override:
        return override if shutil.which(override) else None
    return shutil.which("wsclean")


def default_threads() -> int:
    """The CPUs this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - not Linux
        return max(1, os.cpu_count() or 1)


def image_ms(ms_path, out_dir=None, *, imsize: int | None = None, cell_arcsec: float | None = None,
             fov_deg: float = DEFAULT_FOV_DEG, robust: float = 0.0, niter: int | None = None,
             threshold_nsigma: float = 2.5, datacolumn: str = "corrected", paths=None,
             cells_per_beam: float = DEFAULT_CELLS_PER_BEAM, pbcor_limit: float = 0.05, name: str | None = None,
             calibrators="auto", keep_casa: bool = False, nmajor: int = 10, thermal_noise: bool = False,
             flatten="auto", threads: int | None = None, mgain: float = DEFAULT_MGAIN,
             auto_mask: float | None = DEFAULT_AUTO_MASK, accuracy: float = DEFAULT_ACCURACY, extra_args=(),
             wsclean: str | None = None, gridder: str = "auto", wterm_tolerance_rad: float = 1.0,
             average_channels="auto", smearing_budget: float = DEFAULT_SMEARING_BUDGET,
             baseline_averaging="auto", time_smearing_budget: float = DEFAULT_TIME_SMEARING_BUDGET,
             **tclean_only) -> dict:
    """Image one MS (one tile) with WSClean; write FITS image, pb, pbcor, residual and QA.

    Parameters
    ----------
    ms_path, out_dir, imsize, cell_arcsec, fov_deg, robust, niter, threshold_nsigma, datacolumn, paths,
    cells_per_beam, pbcor_limit, name, calibrators, nmajor, thermal_noise, flatten
        As :func:`dsacont.imaging.tclean.image_ms` (``niter`` default ``DEFAULT_NITER``, 60000: a
        safety cap, the auto-mask and threshold stop the cleaning; ``nmajor`` -> ``-nmiter``, ``threshold_nsigma``
        -> ``-auto-threshold``; ``thermal_noise`` makes a dirty Stokes-Q image with WSClean).
    keep_casa : bool
        Keep WSClean's work directory (its FITS and log) as ``<out_dir>/<name>.wsclean/``.
    threads : int, optional
        ``-j``: threads for WSClean (default :func:`default_threads`).
    mgain : float
        ``-mgain``: fraction of the peak cleaned per major cycle.
    auto_mask : float, optional
        ``-auto-mask`` in sigma (default 4): clean the whole image to this, then only inside the
        mask of what was found to the threshold. None: no mask, noise peaks anywhere are cleaned
        to the threshold (slower by far, and the residual's noise then reads low: clean bias).
    accuracy : float
        ``-wgridder-accuracy``: the w-gridder's relative accuracy.
    extra_args : sequence of str
        More WSClean options, appended to the Stokes-I command line as given.
    wsclean : str, optional
        The program (default :func:`wsclean_binary`).
    gridder : {'wgridder', '2d', 'auto'}
        'wgridder': ``-use-wgridder`` (full w-correction, true SIN); '2d': WSClean's gridder with
        one w-layer (``-nwlayers 1``), the w-plane left as a slant SIN projection as tclean's
        'standard' does (PV2_1/PV2_2); 'auto': '2d' when the residual w-phase at the field edge is
        within ``wterm_tolerance_rad``, else 'wgridder'. tclean's gridder names mean 'wgridder'.
    wterm_tolerance_rad : float
        For ``gridder='auto'``.
    average_channels : int or 'auto'
        Image a scratch copy of the MS with this many adjacent channels averaged
        (:func:`dsacont.imaging.tile.average_for_imaging`; WSClean cannot average channels as it
        reads). 'auto' (default): the most whose bandwidth smearing at the field edge stays within
        ``smearing_budget`` on the tile's uv coverage (3 of the full array's 244 kHz channels,
        none on the small preset);
        1: image the MS itself.
    smearing_budget : float
        For ``average_channels='auto'``: the largest fractional peak loss at the field edge.
    baseline_averaging : float or 'auto'
        ``-baseline-averaging``: WSClean averages in time, as it reads, as many integrations on each
        baseline as keep its turn within this many wavelengths (short baselines many, the longest
        none), so that fewer visibilities are gridded in every major cycle. 'auto' (default): the
        most whose extra time smearing at the field edge stays within ``time_smearing_budget`` on
        the tile's own uv coverage and fringe rates
        (:func:`dsacont.imaging.geometry.choose_baseline_averaging`); 0: none.
    time_smearing_budget : float
        For ``baseline_averaging='auto'``: the largest fractional peak loss it may add at the field
        edge (worst direction).
    **tclean_only
        tclean's own options (``deconvolver``, ``cyclefactor``, ``clean_border``) are accepted, so
        one option set serves both imagers, and ignored.

    Returns
    -------
    dict
        As :func:`dsacont.imaging.tclean.image_ms`, with ``imager`` 'wsclean', ``gridder``
        'wgridder', ``deconvolver`` 'hogbom'; QA ``iterations`` (minor) and ``major_cycles`` from
        WSClean's FITS cards, ``wsclean_version``, ``threads``.

    Raises
    ------
    BadInputError
        The MS is missing, has no such data column, or is entirely flagged.
    FileNotFoundError
        No wsclean program.
    RuntimeError
        WSClean failed (the message holds the end of its log).
    """
    # tclean's deconvolution knobs; WSClean's own are auto_mask / threshold_nsigma / mgain
    unknown = set(tclean_only) - {"deconvolver", "cyclefactor", "clean_border", "mask_nsigma", "mask_beams"}
    if unknown:
        raise TypeError(f"image_ms (wsclean) got unexpected keyword arguments {sorted(unknown)}")
    exe = wsclean or wsclean_binary()
    if not exe:
        raise FileNotFoundError(f"no wsclean program on PATH ({INSTALL_HINT})")
    threads = int(threads or default_threads())
    plan = plan_tile(ms_path, out_dir, paths=paths, name=name, datacolumn=datacolumn, fov_deg=fov_deg,
                     robust=robust, imsize=imsize, cell_arcsec=cell_arcsec, cells_per_beam=cells_per_beam,
                     imager="wsclean")
    if plan["nfield"] > 1:
        plan["bar"].close()
        log.warning("%s: %d fields (one per integration): WSClean images one phase centre; imaging with tclean",
                    plan["name"], plan["nfield"])
        from dsacont.imaging import tclean

        return tclean.image_ms(ms_path, out_dir, imsize=imsize, cell_arcsec=cell_arcsec, fov_deg=fov_deg,
                               robust=robust, threshold_nsigma=threshold_nsigma, datacolumn=datacolumn,
                               paths=paths, cells_per_beam=cells_per_beam, pbcor_limit=pbcor_limit, name=name,
                               calibrators=calibrators, keep_casa=keep_casa, nmajor=nmajor,
                               thermal_noise=thermal_noise, flatten=flatten, wterm_tolerance_rad=wterm_tolerance_rad,
                               **({"niter": niter} if niter is not None else {}), **tclean_only)
    info, timing, name = plan["info"], plan["timing"], plan["name"]
    niter = DEFAULT_NITER if niter is None else niter
    imsize, cell_arcsec = plan["imsize"], plan["cell_arcsec"]
    log.info("%s: %d antennas, %d channels %.1f-%.1f MHz, B_max %.0f m, w_max %.0f m -> %d^2 x %.3g\" "
             "(wsclean, w-gridder, %d threads), flagged %.1f %%", name, info["n_ant"], len(info["freqs"]),
             info["freqs"].min() / 1e6, info["freqs"].max() / 1e6, info["max_baseline_m"], info["max_w_m"],
             imsize, cell_arcsec, threads, 100 * info["flagged_fraction"])
    column = {"corrected": "CORRECTED_DATA", "data": "DATA", "model": "MODEL_DATA"}[datacolumn.lower()]
    if gridder == "auto":
        gridder = "2d" if plan["wphase"] <= wterm_tolerance_rad else "wgridder"
    if gridder not in ("wgridder", "2d"):
        gridder = "wgridder"  # tclean's names ('standard', 'wproject', ...) mean nothing to WSClean
    # the 2-D gridder (-nwlayers 1) leaves the w-plane w = a u + b v as a slant SIN projection,
    # exactly as tclean's 'standard' gridder does
    slant = (-info["w_plane"][0], -info["w_plane"][1]) if gridder == "2d" else None
    grid_args = ["-nwlayers", "1"] if gridder == "2d" else ["-use-wgridder", "-wgridder-accuracy", str(accuracy)]
    work, stage = work_dirs(plan, prefix="wsc")
    try:
        chanbin, smearing = channel_bin(plan, average_channels, smearing_budget)
        if chanbin > 1:
            average_for_imaging(plan, work, chanbin, datacolumn)
            column = "DATA"
        image_ms_path = plan.get("scratch_ms", plan["ms_path"])
        bda, time_loss = baseline_averaging_of(plan, baseline_averaging, time_smearing_budget)
        bda_args = []
        if bda > 0:
            value = bda * wsclean_integration_scale(image_ms_path, plan["info"]["interval"])
            bda_args = ["-baseline-averaging", f"{value:.6g}"]
        next_step(plan, "flatten")
        with flattened(plan, flatten, datacolumn) as flat:
            next_step(plan, "wsclean")
            common = [exe, "-size", str(imsize), str(imsize), "-scale", f"{cell_arcsec}asec",
                      "-weight", "briggs", str(robust), "-data-column", column, *grid_args, "-reorder",
                      "-j", str(threads), "-no-update-model-required", "-temp-dir", str(work), *bda_args]
            cmd = [*common, "-name", str(work / name), "-pol", "I", "-niter", str(int(niter)),
                   "-nmiter", str(int(nmajor)), "-mgain", str(mgain),
                   "-auto-threshold", f"{threshold_nsigma * SIGMA_FACTOR:.4g}"]
            if auto_mask:
                cmd += ["-auto-mask", str(auto_mask)]
            cmd += [str(a) for a in extra_args]
            t0 = time.perf_counter()
            _run(cmd + [image_ms_path], work / "wsclean.log", plan["ms_path"])
            timing["wsclean_s"] = time.perf_counter() - t0
            noise_q = None
            if thermal_noise:
                t0 = time.perf_counter()
                _run([*common, "-name", str(work / "q"), "-pol", "Q", "-niter", "0", "-no-dirty",
                      image_ms_path], work / "wsclean_q.log", plan["ms_path"])
                q_fits = work / "q-image.fits"
                if not q_fits.exists():
                    q_fits = work / "q-dirty.fits"
                noise_q = robust_rms(_plane(q_fits))
                timing["thermal_noise_s"] = time.perf_counter() - t0

        next_step(plan, "export")
        t0 = time.perf_counter()
        files = {k: str(stage / f"{name}.{k}.fits") for k in ("image", "residual", "pb", "pbcor")}
        cards = {}
        for kind in ("model", "residual", "psf"):
            if not (work / f"{name}-{kind}.fits").exists():
                raise RuntimeError(f"wsclean made no {name}-{kind}.fits for {plan['ms_path']} "
                                   f"(log: {work / 'wsclean.log'})")
        psf = _plane(work / f"{name}-psf.fits")
        beam = fit_psf_beam(psf, cell_arcsec)
        model = _plane(work / f"{name}-model.fits")
        resid = _plane(work / f"{name}-residual.fits")
        cards = _finish_wsclean_fits(work / f"{name}-residual.fits", files["residual"], beam=beam, slant=slant)
        _finish_wsclean_fits(work / f"{name}-residual.fits", files["image"], beam=beam, slant=slant,
                             data=restore(model, resid, beam, cell_arcsec))
        timing["restore_s"] = time.perf_counter() - t0
        timing["export_s"] = time.perf_counter() - t0
        result = finish_tile(
            plan, files, robust=robust, pbcor_limit=pbcor_limit, calibrators=calibrators, stage=stage,
            imaging={"imager": "wsclean", "gridder": gridder, "deconvolver": "hogbom"}, flattened_rec=flat,
            qa_extra={"imager": "wsclean", "gridder": gridder,
                      "wterm_phase_edge_rad": plan["wphase"] if slant else 0.0,
                      "wterm_phase_edge_no_slant_rad": plan["wphase_full"], "slant_sin": list(slant) if slant else None,
                      "iterations": int(cards.get("WSCMINOR", -1)), "major_cycles": int(cards.get("WSCMAJOR", -1)),
                      "noise_q_jy": noise_q, "wsclean_version": str(cards.get("WSCVERSI", "")).strip(),
                      "threads": threads, "auto_mask": auto_mask, "mgain": mgain,
                      "channel_bin": chanbin, "smearing_loss_edge": round(smearing, 5),
                      "baseline_averaging_wl": round(bda, 4), "time_smearing_loss_edge": round(time_loss, 5)})
    finally:
        cleanup(plan, work, stage, keep_as=plan["out_dir"] / f"{name}.wsclean" if keep_casa else None)
    return result


def baseline_averaging_of(plan: dict, baseline_averaging="auto",
                          max_loss: float = DEFAULT_TIME_SMEARING_BUDGET) -> tuple[float, float]:
    """WSClean's ``-baseline-averaging`` value for the plan's tile (wavelengths, 0: none) and the time
    smearing it adds at the field edge (:func:`dsacont.imaging.geometry.time_smearing_loss`).

    ``baseline_averaging``: a number (0 or None: none) or 'auto', the most within ``max_loss``
    (:func:`dsacont.imaging.geometry.choose_baseline_averaging`). Without a uv sample with fringe
    rates (one integration), none.
    """
    info = plan["info"]
    if not baseline_averaging or not len(info.get("uv_du", ())) or len(info["times"]) < 2:
        return 0.0, 0.0

    def loss(x):
        return time_smearing_loss(info["uv_du"], info["uv_dv"], info["uv_len"], info["uv_w"], info["interval"],
                                  plan["half_width"], x, ntimes=len(info["times"]))
    if baseline_averaging == "auto":
        return choose_baseline_averaging(info["uv_len"], info["interval"], loss, max_loss)
    x = float(baseline_averaging)
    return x, loss(x)


def wsclean_integration_scale(ms_path, interval_s: float) -> float:
    """WSClean's idea of the integration time over the real one, for ``-baseline-averaging``.

    WSClean takes the integration as the time between the first and last rows over the number of
    changes of TIME in row order. That holds for rows in time order (dsacont's MSs and its
    channel-averaged copies: 1). CASA's mstransform writes each spectral window's rows as one
    block (all times of window 0, then all of window 1, ...), so TIME goes back at every block and
    WSClean counts 16 x 24 steps in 24 integrations: its integration is ~16x too short and every
    averaging factor ~16x too long (the longest baseline averaged over 5 integrations where 1 was
    meant; 0834+555 at the phase centre 2.2 % low). The value handed to WSClean is dsacont's times
    this ratio, so WSClean's factors are the ones :func:`averaging_factors` predicts (its log line
    "Baseline averaging reduced the number of rows to ..." says so).
    """
    from dsacont.io.ms import table

    with table(str(ms_path)) as tb:
        t = np.asarray(tb.getcol("TIME"))
    if len(t) < 2 or interval_s <= 0:
        return 1.0
    steps = int(np.count_nonzero(np.diff(t) != 0))
    if steps == 0 or t[-1] <= t[0]:
        return 1.0
    return float((t[-1] - t[0]) / steps / interval_s)


def _plane(path):
    """The first image plane of a WSClean FITS, float32 (no WCS parsed: its headers lack MJD-OBS)."""
    from astropy.io import fits

    data = np.asarray(fits.getdata(path), dtype=np.float32)
    while data.ndim > 2:
        data = data[0]
    return data


def _run(cmd: list[str], log_path: Path, ms_path: str) -> None:
    """Run WSClean with its output in ``log_path``; raise RuntimeError with the log's end if it fails."""
    log.debug("running %s", " ".join(cmd))
    with open(log_path, "w") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        tail = Path(log_path).read_text(errors="replace").splitlines()[-15:]
        raise RuntimeError(f"wsclean failed on {ms_path} (exit {proc.returncode}):\n" + "\n".join(tail))


def fit_psf_beam(psf, cell_arcsec: float, psfcutoff: float = 0.35) -> dict:
    """The restoring beam: an elliptical Gaussian fitted to the PSF's main lobe, as tclean does.

    Parameters
    ----------
    psf : array, shape (ny, nx)
        The PSF image (peak 1 at the centre), RA increasing to the left (FITS convention).
    cell_arcsec : float
        Pixel size, arcsec.
    psfcutoff : float
        The main lobe is the connected region around the peak above this fraction of it
        (tclean's ``psfcutoff``).

    Returns
    -------
    dict
        ``bmaj_arcsec``, ``bmin_arcsec`` (FWHM), ``bpa_deg`` (east of north, -90..90).
    """
    from scipy import ndimage, optimize

    psf = np.asarray(psf, float)
    j0, i0 = np.unravel_index(np.nanargmax(psf), psf.shape)
    half = 64
    sub = psf[max(0, j0 - half):j0 + half + 1, max(0, i0 - half):i0 + half + 1] / psf[j0, i0]
    cj, ci = j0 - max(0, j0 - half), i0 - max(0, i0 - half)
    lab, _ = ndimage.label(sub > psfcutoff)
    yy, xx = np.nonzero(lab == lab[cj, ci])
    vals = sub[yy, xx]
    # sky offsets in pixels: x east (RA increases to the left: east = -column), y north
    dx, dy = -(xx - ci).astype(float), (yy - cj).astype(float)

    def model(p):
        smaj, smin, pa = p
        c, s_ = math.cos(pa), math.sin(pa)
        u = dx * s_ + dy * c  # along the major axis (PA from north through east)
        v = dx * c - dy * s_
        return np.exp(-0.5 * ((u / smaj) ** 2 + (v / smin) ** 2))

    # start from the moments of the lobe
    w = np.clip(vals, 1e-6, None)
    cov = np.cov(np.vstack([dx, dy]), aweights=w) if len(vals) > 3 else np.eye(2)
    ev, evec = np.linalg.eigh(cov)
    p0 = [math.sqrt(max(ev[1], 0.5)) * 1.5, math.sqrt(max(ev[0], 0.5)) * 1.5,
          math.atan2(evec[0, 1], evec[1, 1])]
    fit = optimize.least_squares(lambda p: model(p) - vals, p0, bounds=([0.1, 0.1, -4 * math.pi], [1e4, 1e4, 4 * math.pi]))
    smaj, smin, pa = fit.x
    if smin > smaj:
        smaj, smin, pa = smin, smaj, pa + math.pi / 2
    pa_deg = (math.degrees(pa) + 90.0) % 180.0 - 90.0
    k = 2.0 * math.sqrt(2.0 * math.log(2.0)) * cell_arcsec
    return {"bmaj_arcsec": float(smaj * k), "bmin_arcsec": float(smin * k), "bpa_deg": float(pa_deg)}


def restore(model, residual, beam: dict, cell_arcsec: float):
    """Restored image (Jy/beam): ``residual + model (*) G``, G the restoring beam with peak 1.

    Parameters
    ----------
    model : array (ny, nx)
        Clean components, Jy per pixel.
    residual : array (ny, nx)
        Residual, Jy/beam.
    beam : dict
        :func:`fit_psf_beam`'s.
    cell_arcsec : float
        Pixel size, arcsec.
    """
    from scipy.signal import fftconvolve

    s = 2.0 * math.sqrt(2.0 * math.log(2.0)) * cell_arcsec
    smaj, smin, pa = beam["bmaj_arcsec"] / s, beam["bmin_arcsec"] / s, math.radians(beam["bpa_deg"])
    r = int(math.ceil(5 * smaj))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1].astype(float)
    dx, dy = -xx, yy
    u = dx * math.sin(pa) + dy * math.cos(pa)
    v = dx * math.cos(pa) - dy * math.sin(pa)
    g = np.exp(-0.5 * ((u / smaj) ** 2 + (v / smin) ** 2))
    model = np.nan_to_num(np.asarray(model, np.float64))
    nz = np.nonzero(model)
    if not len(nz[0]):
        return np.asarray(residual, np.float32)
    # only the bounding box of the components (a few sources) needs the convolution
    j0, j1 = max(0, nz[0].min() - r), min(model.shape[0], nz[0].max() + r + 1)
    i0, i1 = max(0, nz[1].min() - r), min(model.shape[1], nz[1].max() + r + 1)
    out = np.asarray(residual, np.float64).copy()
    out[j0:j1, i0:i1] += fftconvolve(model[j0:j1, i0:i1], g, mode="same")
    return out.astype(np.float32)


def _finish_wsclean_fits(src: Path, dest: str, *, beam: dict, data=None, slant=None) -> dict:
    """Copy a WSClean FITS (or ``data`` in its place) to ``dest`` with ``beam`` and dsacont's
    standard cards; return WSClean's WSC* cards.

    WSClean writes the same axes as CASA's exportfits (RA---SIN, DEC--SIN, FREQ, STOKES; reference
    pixel N/2 + 1; the same CRVAL and CDELT) with the restoring beam (BMAJ/BMIN/BPA, degrees) and
    DATE-OBS; the observatory position and MJD-OBS are added here, and BUNIT, RADESYS, LONPOLE,
    LATPOLE and RESTFRQ as CASA writes them. WSClean's CRVAL3 is the band centre (CASA's the
    centre of the selected channels' range: within a channel of it).
    """
    from astropy.io import fits

    with fits.open(src) as hdul:
        hdr = hdul[0].header.copy()
        shape = hdul[0].data.shape
        data = hdul[0].data if data is None else np.asarray(data, np.float32).reshape(shape)
        hdr["BMAJ"] = beam["bmaj_arcsec"] / 3600.0
        hdr["BMIN"] = beam["bmin_arcsec"] / 3600.0
        hdr["BPA"] = beam["bpa_deg"]
        hdr["BUNIT"] = "Jy/beam"
        # the celestial frame and spectral cards as CASA's exportfits writes them
        hdr["RADESYS"] = "FK5"
        hdr["LONPOLE"] = 180.0
        hdr["LATPOLE"] = hdr["CRVAL2"]
        hdr["RESTFRQ"] = hdr["CRVAL3"]
        hdr["TIMESYS"] = hdr.get("TIMESYS", "UTC")
        set_standard_cards(hdr)
        fits.PrimaryHDU(data, hdr).writeto(dest, overwrite=True)
    if slant is not None:
        set_slant_sin(dest, *slant)
    return {k: hdr[k] for k in hdr if str(k).startswith("WSC")}
