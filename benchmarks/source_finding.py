r"""Benchmark: source finding against truth, dsacont's (Aegean) and the peer finder's (PyBDSF), same run; prints JSON.

    python benchmarks/source_finding.py                       # a simulated 2048^2 image (sky_image)
    python benchmarks/source_finding.py --mosaic /tmp/demo1/stage/mosaics/mosaic_....fits \
        --truth-dir /tmp/demo1/archive                         # a real tclean mosaic of the simulator's sky

Both finders get the same image and the same noise map, a 5-sigma detection and a 3-sigma island
threshold, one core: ``ours_local_only``/``peer`` the mosaic's ``.noise.fits`` (or the simulated
image's own) raised to BANE's local rms where that is higher; ``ours`` dsacont's default, that map
also raised near sources of >= 100 sigma to the rms of 6-beam boxes
(:func:`dsacont.sources.finder.near_bright_rms`); ``ours_map_only``/``peer_map_only`` the map
alone. The image
and its noise map are first copied into a work directory (PyBDSF writes its log beside the image).

Figures, each for both finders:

- completeness in bins of TRUE expected S/N (true flux at the image frequency / noise map at the
  true position), over the truth sources on covered pixels;
- reliability in bins of MEASURED S/N (peak / local rms): the fraction of catalogue sources with a
  true source within the match radius (half the beam's major FWHM);
- ``complete_snr_ge7`` and ``reliable_snr_ge5`` (the issue's goals: >= 95 % and >= 99 %);
- flux ratio (integrated / true) median and robust scatter, and position offsets (rms, arcsec and
  in units of the beam's geometric-mean FWHM), over matches with true S/N >= 10;
- wall time of the finder alone;
- ``sidelobe_flagged`` and ``unflagged``: the catalogue's sidelobe flag
  (:func:`dsacont.sources.sidelobes.sidelobe_candidates`, applied to either finder's list) and the
  completeness and reliability of the detections it leaves unflagged.

The simulator's truth of a real mosaic is the union of ``load_truth(truth_dir, group)["sources"]``
over its groups (each group records the sources near its own pointing), fluxes moved to the image
frequency with each source's spectral index.
PyBDSF is the ``bench`` extra (``pip install bdsf``); without it the peer is reported as missing.
"""
from __future__ import annotations

import argparse
import contextlib
import glob
import json
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dsacont.io.fits import freq_from_header, read_fits_image, read_header
from dsacont.simulator import load_truth
from dsacont.simulator.images import sky_image
from dsacont.sources import find_sources

BINS = [3, 5, 7, 10, 20, 50, 1e9]


def _bin_label(lo, hi):
    return f"{lo:g}-{hi:g}" if hi < 1e8 else f">={lo:g}"


def truth_for_image(image, noise_path, truth):
    """Truth sources on covered pixels with their true S/N: dict of arrays."""
    data, hdr, wcs = read_fits_image(image)
    nmap = read_fits_image(noise_path)[0]
    x, y = wcs.world_to_pixel_values(truth["ra_deg"], truth["dec_deg"])
    x, y = np.asarray(x), np.asarray(y)
    ny, nx = data.shape
    ok = np.isfinite(x) & np.isfinite(y) & (x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1)
    xi, yi = np.round(x[ok]).astype(int), np.round(y[ok]).astype(int)
    sub = np.isfinite(data[yi, xi]) & np.isfinite(nmap[yi, xi]) & (nmap[yi, xi] > 0)
    ok[ok] = sub
    xi, yi = np.round(x[ok]).astype(int), np.round(y[ok]).astype(int)
    out = {k: np.asarray(truth[k])[ok] for k in ("ra_deg", "dec_deg", "flux_jy")}
    out["snr"] = out["flux_jy"] / nmap[yi, xi]
    return out


def union_truth(truth_dir) -> dict:
    """Every source of every group's truth (each group records the sources near its own pointing)."""
    seen = {}
    for f in sorted(glob.glob(os.path.join(truth_dir, "truth", "*.npz"))):
        s = load_truth(truth_dir, Path(f).stem)["sources"]
        for i, n in enumerate(s["name"]):
            seen.setdefault(str(n), (s["ra_deg"][i], s["dec_deg"][i], s["flux_jy"][i], s["spectral_index"][i]))
        ref = float(s["ref_freq_hz"])
    if not seen:
        raise SystemExit(f"no truth files in {truth_dir}/truth")
    a = np.array(list(seen.values()), float)
    return {"name": np.array(list(seen)), "ra_deg": a[:, 0], "dec_deg": a[:, 1], "flux_jy": a[:, 2],
            "spectral_index": a[:, 3], "ref_freq_hz": ref}


def score(ra, dec, peak, rms, flux, truth, match_arcsec, beam_arcsec):
    from astropy.coordinates import SkyCoord

    ra, dec, peak, rms, flux = (np.asarray(a, float) for a in (ra, dec, peak, rms, flux))
    t = SkyCoord(truth["ra_deg"], truth["dec_deg"], unit="deg")
    out = {"n_found": int(len(ra)), "n_truth_covered": int(len(truth["ra_deg"]))}
    if len(ra) == 0:
        return out
    c = SkyCoord(ra, dec, unit="deg")
    idx, sep, _ = t.match_to_catalog_sky(c)
    found = sep.arcsec <= match_arcsec
    _, sep_c, _ = c.match_to_catalog_sky(t)
    real = sep_c.arcsec <= match_arcsec
    snr_true, snr_meas = truth["snr"], peak / rms
    out["completeness"], out["reliability"] = {}, {}
    for lo, hi in zip(BINS[:-1], BINS[1:]):
        sel = (snr_true >= lo) & (snr_true < hi)
        out["completeness"][_bin_label(lo, hi)] = [round(float(found[sel].mean()), 4) if sel.any() else None,
                                                   int(sel.sum())]
        sel = (snr_meas >= lo) & (snr_meas < hi)
        out["reliability"][_bin_label(lo, hi)] = [round(float(real[sel].mean()), 4) if sel.any() else None,
                                                  int(sel.sum())]
    sel = snr_true >= 7
    out["complete_snr_ge7"] = round(float(found[sel].mean()), 4) if sel.any() else None
    sel = snr_meas >= 5
    out["reliable_snr_ge5"] = round(float(real[sel].mean()), 4) if sel.any() else None
    out["false_snr_ge5"] = int((~real & sel).sum())
    good = found & (snr_true >= 10)
    ratio = flux[idx[good]] / truth["flux_jy"][good]
    out["flux_ratio_median"] = round(float(np.median(ratio)), 4)
    out["flux_ratio_scatter"] = round(float(1.4826 * np.median(np.abs(ratio - np.median(ratio)))), 4)
    dra = (ra[idx[good]] - truth["ra_deg"][good] + 180) % 360 - 180
    dra *= np.cos(np.radians(truth["dec_deg"][good])) * 3600
    ddec = (dec[idx[good]] - truth["dec_deg"][good]) * 3600
    rms_pos = float(np.sqrt(np.mean(dra**2 + ddec**2)))
    out["n_flux_position"] = int(good.sum())
    out["position_rms_arcsec"] = round(rms_pos, 3)
    out["position_rms_beam"] = round(rms_pos / beam_arcsec, 4)
    out["ra_offset_median_arcsec"] = round(float(np.median(dra)), 3)
    out["dec_offset_median_arcsec"] = round(float(np.median(ddec)), 3)
    return out


def run_ours(image, noise, local=True, near_bright=True):
    t0 = time.perf_counter()
    res = find_sources(image, noise=noise, local=local, near_bright=near_bright,
                       out_path=str(image)[:-5] + f".local{int(local)}{int(near_bright)}.sources.fits")
    dt = time.perf_counter() - t0
    t = res["table"]
    return {"finder": res["finder"], "noise": res["noise_source"], "time_s": round(dt, 2)}, (
        t["ra_deg"], t["dec_deg"], t["peak_flux"], t["local_rms"], t["int_flux"])


def run_peer(image, noise):
    try:
        import bdsf
    except ImportError:
        return {"finder": "bdsf (not installed: pip install bdsf)"}, None
    from astropy.io import fits
    from astropy.table import Table

    work = os.path.dirname(image)
    with fits.open(noise) as h:
        fits.PrimaryHDU(np.where(np.isfinite(h[0].data), 0.0, np.nan).astype(np.float32), h[0].header).writeto(
            os.path.join(work, "bdsf_mean.fits"), overwrite=True)
    # PyBDSF joins these names to the image's directory
    rms_name = os.path.relpath(noise, work)
    t0 = time.perf_counter()
    with contextlib.redirect_stdout(sys.stderr):  # PyBDSF prints to stdout; the JSON goes there
        img = bdsf.process_image(image, rmsmean_map_filename=["bdsf_mean.fits", rms_name], thresh_isl=3.0,
                                 thresh_pix=5.0, quiet=True, ncores=1)
        cat = os.path.join(work, "bdsf.srl.fits")
        img.write_catalog(outfile=cat, format="fits", catalog_type="srl", clobber=True)
    dt = time.perf_counter() - t0
    t = Table.read(cat)
    from importlib.metadata import version

    return {"finder": f"bdsf {version('bdsf')}", "time_s": round(dt, 2)}, (
        t["RA"], t["DEC"], t["Peak_flux"], t["Isl_rms"], t["Total_flux"])


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--mosaic", help="a real mosaic FITS (its .noise.fits beside it) of the simulator's sky")
    ap.add_argument("--truth-dir", help="the simulate() output directory of that mosaic's data (truth/)")
    ap.add_argument("--npix", type=int, default=2048, help="side of the simulated image")
    ap.add_argument("--n-sources", type=int, default=1000, help="sources in the simulated image")
    ap.add_argument("--seed", type=int, default=3)
    ap.add_argument("--work", default=None, help="work directory (default: a temporary one)")
    ap.add_argument("--finders", default="ours,ours_local_only,ours_map_only,peer,peer_map_only",
                    help="the runs to make, comma separated (e.g. 'ours' alone: under a minute of CPU on the demo)")
    args = ap.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-sources-"))
    work.mkdir(parents=True, exist_ok=True)
    if args.mosaic:
        image, noise = str(work / "image.fits"), str(work / "image.noise.fits")
        shutil.copy(args.mosaic, image)
        shutil.copy(args.mosaic[:-5] + ".noise.fits", noise)
        src = union_truth(args.truth_dir)
        freq = freq_from_header(read_header(image))
        flux = np.asarray(src["flux_jy"]) * (freq / float(src["ref_freq_hz"])) ** np.asarray(src["spectral_index"])
        truth = truth_for_image(image, noise, {"ra_deg": src["ra_deg"], "dec_deg": src["dec_deg"], "flux_jy": flux})
        desc = {"kind": "real tclean mosaic of the simulator's sky", "mosaic": args.mosaic, "truth_dir": args.truth_dir,
                "freq_hz": freq}
    else:
        image = str(work / "sim.fits")
        tr = sky_image(image, n_sources=args.n_sources, npix=args.npix, snr_range=(2.0, 1000.0), seed=args.seed)
        noise = tr["noise"]
        truth = truth_for_image(image, noise, tr)
        desc = {"kind": "simulated image (dsacont.simulator.images.sky_image)", "npix": args.npix,
                "n_sources": args.n_sources, "noise": "1 mJy/beam at the centre, 2x at the corners, beam-correlated",
                "seed": args.seed}
    hdr = read_header(image)
    bmaj, bmin = float(hdr["BMAJ"]) * 3600, float(hdr["BMIN"]) * 3600
    desc.update(beam_arcsec=[round(bmaj, 2), round(bmin, 2), round(float(hdr["BPA"]), 2)],
                shape=list(read_fits_image(image)[0].shape), n_truth_covered=int(len(truth["ra_deg"])),
                match_arcsec=round(bmaj / 2, 2))
    out = {"image": desc}
    # the peer gets the map raised to BANE's local rms (ours' default before near_bright, so its
    # figures compare with the earlier rows; ours_local_only is ours on the same map)
    from dsacont.io.fits import write_like
    from dsacont.sources.finder import noise_for_image
    from dsacont.sources.sidelobes import sidelobe_candidates

    wanted = [w.strip() for w in args.finders.split(",") if w.strip()]
    combined = str(work / "combined.noise.fits")
    if "peer" in wanted:
        write_like(noise, combined, noise_for_image(image, noise, local=True)[0])
    runs = (("ours", lambda i, n: run_ours(i, n, local=True)),
            ("ours_local_only", lambda i, n: run_ours(i, n, local=True, near_bright=False)),
            ("ours_map_only", lambda i, n: run_ours(i, n, local=False, near_bright=False)),
            ("peer", lambda i, n: run_peer(i, combined)),
            ("peer_map_only", run_peer))
    unknown = set(wanted) - {who for who, _ in runs}
    if unknown:
        ap.error(f"--finders: unknown {', '.join(sorted(unknown))}")
    for who, fn in runs:
        if who not in wanted:
            continue
        info, cols = fn(image, noise)
        if cols is not None:
            info.update(score(*cols, truth, bmaj / 2, math.sqrt(bmaj * bmin)))
            # the catalogue's sidelobe flag (dsacont.sources.sidelobes), the same rule on either finder's list
            cols = [np.asarray(c, float) for c in cols]
            keep = ~sidelobe_candidates(cols[0], cols[1], cols[2])
            sub = score(*(c[keep] for c in cols), truth, bmaj / 2, math.sqrt(bmaj * bmin))
            info["sidelobe_flagged"] = int((~keep).sum())
            info["unflagged"] = {k: sub.get(k) for k in ("n_found", "complete_snr_ge7", "reliable_snr_ge5",
                                                         "false_snr_ge5", "flux_ratio_median")}
        out[who] = info
    json.dump(out, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
