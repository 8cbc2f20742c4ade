"""What every imager of a tile shares: the plan, bright-source flattening, the primary beam, QA, files.

An imager (:mod:`dsacont.imaging.tclean`, :mod:`dsacont.imaging.wsclean`) turns one calibrated MS
into a restored image and a residual on the grid :func:`plan_tile` chose; everything before and
after that is here, written once:

- :func:`inspect_ms`: what imaging needs to know about an MS (no data column is read);
- :func:`plan_tile`: inspect the MS, choose the cell
  and image side (:mod:`dsacont.imaging.geometry`), the image centre and the w-term figures;
- :func:`flattened`: flatten the drifting-beam modulation of bright sources in CORRECTED_DATA for
  the duration of the imager's run, and restore the column even when it fails
  (:mod:`dsacont.imaging.flatten`);
- :func:`finish_tile`: the tile's own drift- and band-averaged Airy beam (:mod:`dsacont.imaging.beam`;
  PB correction is always dsacont's, never the imager's), ``pbcor = image / pb``, QA
  (:func:`dsacont.imaging.qa.tile_qa`), the result dict and the atomic moves of the FITS files and
  the QA JSON into the images directory;
- :func:`image_product`: the products-database record of a result.
"""
from __future__ import annotations

import logging
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from dsacont.errors import BadInputError
from dsacont.imaging import flatten as F
from dsacont.imaging.beam import band_samples, beam_image
from dsacont.imaging.geometry import (
    C_M_S,
    bandwidth_smearing_loss,
    choose_channel_bin,
    choose_geometry,
    pointing_track,
    uv_smearing_loss,
    wterm_phase_error_rad,
)
from dsacont.imaging.qa import psf_fwhm_arcsec, tile_qa
from dsacont.io.atomic import move_into_place, write_json_atomic
from dsacont.io.fits import beam_from_header, freq_from_header, read_fits_image, write_like
from dsacont.io.ms import column_reader, flatten_state, read_ms_info, table
from dsacont.io.ms_average import average_channels
from dsacont.jsonio import json_default

log = logging.getLogger(__name__)

# the largest peak loss to bandwidth smearing at the field edge that imaging's channel averaging may cost
DEFAULT_SMEARING_BUDGET = 0.01


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
        (Nsample,), for the Briggs noise factor and the PSF estimate, with per sample the rate of
        change of (u, v) as the Earth turns (``uv_du``, ``uv_dv``, wavelengths per second, from the
        same baseline's UVW one integration later or earlier; 0 with one integration) and the
        baseline's length (``uv_len``, wavelengths at its window's highest frequency), for the time
        smearing of baseline-dependent averaging (:func:`dsacont.imaging.geometry.time_smearing_loss`).

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
        rate = _uvw_rates(uvw, times, a1, a2, ddid)  # (nrow, 3) m/s
        length_m = np.sqrt(np.sum(uvw * uvw, axis=1))
        # per-SPW channel subsample for the uv-density estimate
        n_tot = 0
        n_unfl = 0.0
        chan_unfl = [np.zeros(len(f)) for f in spw_freqs]
        row_unfl = np.zeros(nrow)
        uu, vv, ww, du, dv, ll = [], [], [], [], [], []
        nchan_all = sum(len(f) for f in spw_freqs)
        step_all = max(1, int(round(nchan_all / max(uv_channels, 1))))
        read_flag = column_reader(tb, "FLAG")
        for start in range(0, nrow, chunk_rows):
            n = min(chunk_rows, nrow - start)
            flag = read_flag(start, n)  # (npol, nchan, n) — one DDID shape assumed
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
                r_r = rate[sl][rows]
                len_r = length_m[sl][rows] * f.max() / C_M_S
                for j in idx:
                    lam = C_M_S / f[j]
                    uu.append(u_r[:, 0] / lam)
                    vv.append(u_r[:, 1] / lam)
                    ww.append(cnt[j, rows] * scale)
                    # float32: only the smearing estimate reads them (7 M samples at full size)
                    du.append((r_r[:, 0] / lam).astype(np.float32))
                    dv.append((r_r[:, 1] / lam).astype(np.float32))
                    ll.append(len_r.astype(np.float32))

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
        "spw_nchan": [len(f) for f in spw_freqs],
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
        "uv_du": np.concatenate(du) if du else np.zeros(0),
        "uv_dv": np.concatenate(dv) if dv else np.zeros(0),
        "uv_len": np.concatenate(ll) if ll else np.zeros(0),
    }


def _uvw_rates(uvw, times, a1, a2, ddid):
    """Rate of change of each row's UVW (m/s): the difference to the same baseline and data
    description one integration later (the last integration: one earlier); zeros for a baseline
    seen at one time only."""
    key = (np.asarray(ddid, np.int64) * (int(a1.max()) + 1) + a1) * (int(a2.max()) + 1) + a2
    order = np.lexsort((times, key))
    k, t, w = key[order], times[order], uvw[order]
    same = (k[1:] == k[:-1]) & (t[1:] > t[:-1])  # row i and i + 1: one baseline, successive times
    rate = np.zeros_like(w)  # forward differences; 0 where there is no next time
    rate[:-1][same] = (w[1:][same] - w[:-1][same]) / (t[1:] - t[:-1])[same, None]
    last = np.flatnonzero(same) + 1  # rows with a previous time of their baseline ...
    last = last[~np.append(same, False)[last]]  # ... and no next one: the backward difference
    rate[last] = rate[last - 1]
    out = np.zeros_like(uvw)
    out[order] = rate
    return out


def plan_tile(ms_path, out_dir=None, *, paths=None, name=None, datacolumn="corrected", fov_deg: float,
              robust: float, imsize=None, cell_arcsec=None, cells_per_beam: float, imager: str = "tclean") -> dict:
    """Inspect the MS and choose the image grid: what both imagers start from.

    Parameters
    ----------
    ms_path : str or path-like
        The calibrated Measurement Set.
    out_dir : path-like, optional
        Where the products go (default ``paths.images``).
    paths : dsacont.config.Paths, optional
        Its ``images`` and ``tmp`` directories are used (default :func:`dsacont.config.get_paths`
        when ``out_dir`` is not given either).
    name : str, optional
        Product name (default: the MS name without '.ms').
    datacolumn, fov_deg, robust, imsize, cell_arcsec, cells_per_beam
        As :func:`dsacont.imaging.tclean.image_ms`.
    imager : str
        Shown on the progress bar.

    Returns
    -------
    dict
        ``ms_path`` (absolute), ``out_dir``, ``tmp_base`` (Path), ``name``, ``info`` (inspect_ms),
        ``imsize`` (pixels), ``cell_arcsec``, ``half_width`` (rad), ``wphase_full`` and ``wphase``
        (w-term phase at the field edge without / with the w-plane fit, rad), ``nfield``, ``ra0``,
        ``dec0`` (image centre, rad), ``timing`` (seconds so far), ``t_all`` (perf_counter start),
        ``bar`` (the progress bar; :func:`finish_tile` closes it, and so must a caller that fails).
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
    steps = ("inspect", "flatten", imager, "export", "primary beam", "QA")
    bar = tqdm(total=len(steps), desc=f"image {name}", unit="step", disable=None, leave=False)
    bar.set_postfix_str(steps[0])
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
    # only w_res defocuses an image made with a 2-D gridder
    wphase_full = wterm_phase_error_rad(info["max_w_m"], info["freqs"].max(), half_width)
    wphase = wterm_phase_error_rad(info["max_w_residual_m"], info["freqs"].max(), half_width)
    nfield = info["phase_dirs"].shape[0]
    centre = info["phase_dirs"][nfield // 2]
    return {"ms_path": ms_path, "out_dir": out_dir, "tmp_base": tmp_base, "name": name, "info": info,
            "imsize": imsize, "cell_arcsec": cell_arcsec, "half_width": half_width, "wphase_full": wphase_full,
            "wphase": wphase, "nfield": nfield, "ra0": float(centre[0]) % (2 * math.pi), "dec0": float(centre[1]),
            "timing": timing, "t_all": t_all, "bar": bar, "steps": steps}


def next_step(plan: dict, label: str) -> None:
    """Mark the previous step of the plan's progress bar done and show ``label`` as the current one."""
    plan["bar"].update()
    plan["bar"].set_postfix_str(label)


def channel_bin(plan: dict, average_channels="auto", max_loss: float = DEFAULT_SMEARING_BUDGET) -> tuple[int, float]:
    """Channels to average for imaging the plan's MS, and the bandwidth smearing at the field edge.

    ``average_channels``: an int (1: none) or 'auto', the most within ``max_loss`` at the image's
    half width (:func:`dsacont.imaging.geometry.choose_channel_bin`). The loss is computed on the
    plan's uv sample (:func:`dsacont.imaging.geometry.uv_smearing_loss`, the worst direction);
    without one, with a Gaussian beam as wide as the longest baseline's fringe spacing.
    """
    info = plan["info"]
    nchan = info["spw_nchan"]
    width = float(np.median(info["chan_width"]))
    freq = float(np.median(info["freqs"]))
    edge = plan["half_width"]
    if len(info["uv_u"]):
        def loss(k):
            return uv_smearing_loss(info["uv_u"], info["uv_v"], info["uv_w"], k * width, freq, edge)
    else:
        fringe = C_M_S / (freq * max(info["max_baseline_m"], 1.0))

        def loss(k):
            return bandwidth_smearing_loss(k * width, freq, edge, fringe)
    if average_channels == "auto":
        return choose_channel_bin(min(nchan), loss, max_loss)
    k = max(1, int(average_channels))
    if any(n % k for n in nchan):
        raise ValueError(f"average_channels={k} does not divide the spectral windows' {sorted(set(nchan))} channels")
    return k, loss(k)


def average_for_imaging(plan: dict, work: Path, chanbin: int, datacolumn: str) -> None:
    """Write the plan's MS with ``chanbin`` channels averaged into ``work`` for the imager to read.

    Sets ``plan["scratch_ms"]``: the imager images its DATA column, and bright-source flattening
    is done in it and never undone (the copy is deleted with ``work``); the calibrated MS is not
    touched, except that one left flattened by a run that died before restoring it is restored
    first. An MS left half flattened by an interrupted write raises
    :class:`dsacont.io.ms.FlattenInterrupted` first, as imaging it in place would.
    """
    if flatten_state(plan["ms_path"]) is not None:
        F.unflatten(plan["ms_path"])
    t0 = time.perf_counter()
    dst = work / f"{plan['name']}.avg{chanbin}.ms"
    average_channels(plan["ms_path"], dst, chanbin, datacolumn=datacolumn)
    plan["scratch_ms"] = str(dst)
    plan["timing"]["average_s"] = time.perf_counter() - t0
    log.info("%s: %d channels averaged into %d for imaging (%.1f s)", plan["name"], len(plan["info"]["freqs"]),
             len(plan["info"]["freqs"]) // chanbin, plan["timing"]["average_s"])


@contextmanager
def flattened(plan: dict, flatten, datacolumn: str):
    """Flatten bright sources in CORRECTED_DATA for the body of the ``with``; restore it after.

    Yields the record of :func:`dsacont.imaging.flatten.flatten_sources` (or None: nothing to
    flatten, ``flatten`` false, or ``datacolumn`` not 'corrected'); its ``restored`` is True once
    the column holds the calibrated data again. The column is restored even if the body fails.
    With a scratch copy (``plan["scratch_ms"]``, :func:`average_for_imaging`) the copy's DATA is
    flattened instead and left so.
    """
    name, ms_path, timing = plan["name"], plan["ms_path"], plan["timing"]
    box = (plan["ra0"], plan["dec0"], plan["half_width"])  # sources outside the image: subtracted whole
    rec = None
    if flatten and plan.get("scratch_ms"):
        # a scratch copy (average_for_imaging): flatten its DATA, nothing to restore
        t0 = time.perf_counter()
        rec = F.flatten_sources(plan["scratch_ms"], flatten, column="DATA", image_box=box)
        timing["flatten_s"] = time.perf_counter() - t0
        yield rec
        return
    if flatten and datacolumn.lower() != "corrected":
        log.info("%s: no bright-source flattening: it works on CORRECTED_DATA only (DATA, the "
                 "correlator's record, is never modified)", name)
    elif flatten:
        t0 = time.perf_counter()
        rec = F.flatten_sources(ms_path, flatten, column="CORRECTED_DATA", image_box=box)
        timing["flatten_s"] = time.perf_counter() - t0
    try:
        yield rec
        if rec and rec["sources"] and not rec.get("restored"):
            t0 = time.perf_counter()
            F.unflatten(ms_path)  # the column holds the calibrated data again
            timing["unflatten_s"] = time.perf_counter() - t0
            rec["restored"] = True
    finally:
        if rec and rec["sources"] and not rec.get("restored"):
            F.unflatten(ms_path)


def finish_tile(plan: dict, files: dict, *, robust: float, pbcor_limit: float, calibrators, imaging: dict,
                qa_extra: dict, flattened_rec=None, casa_pb=None, stage: Path) -> dict:
    """Primary beam, pbcor, QA, and the files moved into place: the end of every imager's run.

    Parameters
    ----------
    plan : dict
        From :func:`plan_tile` (its progress bar is closed here).
    files : dict
        ``image``, ``residual``: the imager's restored image and residual FITS in ``stage`` (final
        headers: restoring beam, frequency axis, standard cards, WCS); ``pb``, ``pbcor``: the
        paths to write them to, in ``stage``.
    robust : float
        Briggs robust parameter used (for the radiometer expectation).
    pbcor_limit : float
        Blank the PB-corrected image where the beam is below this.
    calibrators : 'auto', list of str, or None
        Passed to :func:`dsacont.imaging.qa.tile_qa`.
    imaging : dict
        Result fields of the imager: ``gridder``, ``deconvolver``, ``imager``.
    qa_extra : dict
        Added to the QA record (iterations, major cycles, w-term figures, ...).
    flattened_rec : dict, optional
        :func:`flattened`'s record (QA ``flattened`` and ``flatten_skipped``).
    casa_pb : array (ny, nx), optional
        CASA's vptable beam (tclean only), compared with the model in QA.
    stage : Path
        The staging directory holding ``files`` (in ``plan["out_dir"]``).

    Returns
    -------
    dict
        What :func:`dsacont.imaging.tclean.image_ms` documents.
    """
    info, timing, name, out_dir = plan["info"], plan["timing"], plan["name"], plan["out_dir"]
    ra0, dec0 = plan["ra0"], plan["dec0"]
    try:
        # the tile's own (drift + band averaged) primary beam
        next_step(plan, "primary beam")
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

        next_step(plan, "QA")
        t0 = time.perf_counter()
        resid, _, _ = read_fits_image(files["residual"])
        qa = tile_qa(info, img, resid, pb, hdr, wcs2d, robust=robust, imsize=plan["imsize"],
                     cell_arcsec=plan["cell_arcsec"], calibrators=calibrators, casa_pb=casa_pb, centre=(ra0, dec0))
        qa.update({"flattened": (flattened_rec or {}).get("sources", []),
                   "flatten_skipped": (flattened_rec or {}).get("skipped", []), **qa_extra})
        if qa.get("noise_q_jy") is not None:
            qa["noise_q_ratio"] = qa["noise_q_jy"] / qa["radiometer_jy"]
        else:
            qa.setdefault("noise_q_ratio", None)
        timing["qa_s"] = time.perf_counter() - t0

        result = {
            "name": name, "ms": plan["ms_path"], "imsize": plan["imsize"], "cell_arcsec": plan["cell_arcsec"],
            **imaging, "robust": robust, "beam": beam_from_header(hdr),
            "freq_hz": freq_from_header(hdr), "ra_deg": math.degrees(ra0), "dec_deg": math.degrees(dec0),
            "start_mjd": info["start_mjd"], "end_mjd": info["end_mjd"], "qa": qa,
        }
        # atomic moves: pbcor (the primary product) last, then the QA file
        final = {}
        for k in ("pb", "residual", "image", "pbcor"):
            final[k] = str(move_into_place(files[k], out_dir / f"{name}.{k}.fits"))
        result.update(final)
        timing["total_s"] = time.perf_counter() - plan["t_all"]
        result["timing"] = timing
        qa_path = write_json_atomic(result, out_dir / f"{name}.qa.json", indent=2, default=json_default)
        result["qa_json"] = str(qa_path)
        plan["bar"].update()
    finally:
        plan["bar"].close()
    log.info("%s: %s: rms %.3g mJy/beam (radiometer %.3g, ratio %.2f), peak %.4g Jy/beam, DR %.0f, %.1f s",
             name, imaging.get("imager", "?"), 1e3 * qa["noise_jy"], 1e3 * qa["radiometer_jy"], qa["noise_ratio"],
             qa["peak_jy"], qa["dynamic_range"], timing["total_s"])
    return result


def component_mask(model: np.ndarray, radius_px: float) -> np.ndarray:
    """Pixels within ``radius_px`` of a clean component: the mask of a second, deeper clean.

    Parameters
    ----------
    model : ndarray, shape (nx, ny)
        A clean model image (Jy/pixel); components are its non-zero pixels.
    radius_px : float
        Radius of the disk around each component, pixels (at least 1).

    Returns
    -------
    ndarray of bool, shape (nx, ny)
    """
    from scipy import ndimage

    r = max(1, int(math.ceil(radius_px)))
    yy, xx = np.mgrid[-r:r + 1, -r:r + 1]
    disk = xx ** 2 + yy ** 2 <= radius_px ** 2
    comps = np.asarray(model) != 0
    if not comps.any():
        return comps
    return ndimage.binary_dilation(comps, structure=disk)


def work_dirs(plan: dict, prefix: str = "img") -> tuple[Path, Path]:
    """A fresh scratch directory (under the tmp directory) and the staging directory (in out_dir).

    If either cannot be made, the plan's progress bar is closed before the error propagates."""
    name = plan["name"]
    try:
        work = Path(plan["tmp_base"]) / f"{prefix}-{name}-{os.getpid()}-{int(time.time() * 1e3) % 10**8}"
        work.mkdir(parents=True)
        stage = plan["out_dir"] / f".{name}.partial-{os.getpid()}"
        stage.mkdir(parents=True, exist_ok=True)
    except BaseException:
        plan["bar"].close()
        raise
    return work, stage


def cleanup(plan: dict, work: Path, stage: Path, keep_as: Path | None = None) -> None:
    """Close the progress bar, keep the scratch directory as ``keep_as`` if asked, remove both."""
    plan["bar"].close()
    if keep_as is not None and work.exists():
        if keep_as.exists():
            shutil.rmtree(keep_as)
        shutil.copytree(work, keep_as, ignore=shutil.ignore_patterns("*.avg*.ms"))  # not the scratch MS
    shutil.rmtree(work, ignore_errors=True)
    shutil.rmtree(stage, ignore_errors=True)


def image_product(result: dict) -> dict:
    """The products-database record of an image made by :func:`dsacont.imaging.image_ms` (no database is touched).

    Parameters
    ----------
    result : dict
        What :func:`dsacont.imaging.image_ms` returned.

    Returns
    -------
    dict
        ``Products.add_image``'s arguments with ``path`` (the PB-corrected FITS) included: ``ms``,
        ``files`` (image, pbcor, pb, residual, qa_json), ``ra_deg``, ``dec_deg``, ``start``/``end``
        (MJD, UTC), ``params`` (imaging settings, with the ``imager``), ``qa``, ``status`` 'imaged'.
        The streaming service records it with the group (:func:`dsacont.service.state.record_products`),
        and so does ``dsacont image``.
    """
    files = {k: result[k] for k in ("image", "pbcor", "pb", "residual", "qa_json") if result.get(k)}
    params = {k: result.get(k) for k in ("imager", "imsize", "cell_arcsec", "gridder", "deconvolver", "robust",
                                          "beam", "freq_hz")}
    return {"path": files["pbcor"], "ms": result.get("ms"), "files": files, "ra_deg": result.get("ra_deg"),
            "dec_deg": result.get("dec_deg"), "start": result.get("start_mjd"), "end": result.get("end_mjd"),
            "params": params, "qa": result.get("qa"), "status": "imaged"}
