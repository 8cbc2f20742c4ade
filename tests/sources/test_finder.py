"""Source finding on simulated images with known truth (dsacont.simulator.images), real FITS files."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from astropy import units as u
from astropy.io import fits

from dsacont.calibration.skymodel import read_catalogue
from dsacont.errors import BadInputError
from dsacont.simulator.images import sky_image
from dsacont.sources import catalogue_path, catalogue_product, find_sources, noise_for_image, read_sources

BEAM = (45.0, 33.0, 30.0)


def match(truth, table, radius_arcsec=20.0):
    """For each truth source: index of the nearest catalogue source and whether it is within the radius."""
    from astropy.coordinates import SkyCoord

    t = SkyCoord(truth["ra_deg"], truth["dec_deg"], unit="deg")
    c = SkyCoord(np.asarray(table["ra_deg"]), np.asarray(table["dec_deg"]), unit="deg")
    idx, sep, _ = t.match_to_catalog_sky(c)
    return idx, sep.arcsec <= radius_arcsec


@pytest.fixture(scope="module")
def mosaic(tmp_path_factory):
    """A 512^2 'mosaic' with its .noise.fits (noise rising 2x to the corners) and 60 sources, S/N 3-300."""
    d = tmp_path_factory.mktemp("mosaic")
    truth = sky_image(d / "m.fits", n_sources=60, npix=512, beam_arcsec=BEAM, snr_range=(3, 300), seed=5)
    return d, truth


def test_catalogue_against_truth(mosaic):
    d, truth = mosaic
    res = find_sources(d / "m.fits")
    assert res["path"] == str(d / "m.sources.fits") == str(catalogue_path(d / "m.fits"))
    assert "m.noise.fits" in res["noise_source"] and "BANE" in res["noise_source"]
    t = read_sources(res["path"])
    assert len(t) == res["n_sources"]
    idx, ok = match(truth, t)
    bright = truth["snr"] >= 7
    assert ok[bright].all(), "every source above 7 sigma is found"
    # reliability: every catalogue source is a true one
    from astropy.coordinates import SkyCoord

    c = SkyCoord(np.asarray(t["ra_deg"]), np.asarray(t["dec_deg"]), unit="deg")
    _, sep, _ = c.match_to_catalog_sky(SkyCoord(truth["ra_deg"], truth["dec_deg"], unit="deg"))
    assert (sep.arcsec <= 20).mean() >= 0.97
    sel = truth["snr"] >= 10
    ratio = np.asarray(t["int_flux"])[idx[sel]] / truth["flux_jy"][sel]
    assert abs(np.median(ratio) - 1) < 0.03
    peak_ratio = np.asarray(t["peak_flux"])[idx[sel]] / truth["flux_jy"][sel]
    assert abs(np.median(peak_ratio) - 1) < 0.03
    # local rms is the noise map at the source (not a global figure), raised where BANE finds more
    rms_ratio = np.asarray(t["local_rms"])[idx[sel]] / truth["noise_jy"][sel]
    assert np.all(rms_ratio > 0.99) and np.median(rms_ratio) < 1.1
    dra = (np.asarray(t["ra_deg"])[idx[sel]] - truth["ra_deg"][sel]) * np.cos(np.radians(truth["dec_deg"][sel])) * 3600
    ddec = (np.asarray(t["dec_deg"])[idx[sel]] - truth["dec_deg"][sel]) * 3600
    assert np.sqrt(np.mean(dra**2 + ddec**2)) < 0.1 * BEAM[1]
    # shapes: point sources come out with the beam's size
    assert np.median(t["major_arcsec"][t["snr"] > 20]) == pytest.approx(BEAM[0], rel=0.05)
    assert np.median(t["minor_arcsec"][t["snr"] > 20]) == pytest.approx(BEAM[1], rel=0.05)
    # units and header cards on disk
    assert t["int_flux"].unit == u.Jy and t["peak_flux"].unit == u.Jy / u.beam and t["ra_deg"].unit == u.deg
    assert t.meta["IMAGE"] == "m.fits" and t.meta["NSIGMA"] == 5.0 and "aegean" in t.meta["FINDER"]
    assert t.meta["MJD-OBS"] == pytest.approx(truth["mjd"])
    assert np.all(np.isfinite(t["int_flux_err"][t["snr"] > 10])) and np.all(t["int_flux_err"][t["snr"] > 10] > 0)
    # the sidelobe flag is on disk, computed from the catalogue's own positions and peaks
    from dsacont.sources.sidelobes import sidelobe_candidates

    assert t["sidelobe"].dtype == bool
    assert t["sidelobe"].tolist() == sidelobe_candidates(t["ra_deg"], t["dec_deg"], t["peak_flux"]).tolist()


def test_catalogue_reads_back_as_a_sky_model(mosaic):
    d, truth = mosaic
    res = find_sources(d / "m.fits", out_path=d / "again.sources.fits", local=False)
    sky = read_catalogue(res["path"])
    assert len(sky) == res["n_sources"]
    brightest = max(sky, key=lambda s: s.flux_jy)
    assert brightest.flux_jy == pytest.approx(truth["flux_jy"].max(), rel=0.03)  # Jy, not mJy


def test_threshold_is_obeyed(mosaic):
    d, _ = mosaic
    hi = find_sources(d / "m.fits", nsigma=10.0, out_path=d / "hi.sources.fits", local=False)
    lo = read_sources(find_sources(d / "m.fits", out_path=d / "lo.sources.fits", local=False)["path"])
    assert hi["table"]["snr"].min() >= 9.0
    assert lo["snr"].min() < 10.0 and hi["n_sources"] < len(lo)


def test_tile_noise_is_qa_noise_over_pb(tmp_path):
    """A tile's pbcor image is measured against (QA noise) / pb, from the files image_ms writes."""
    sigma = 2e-3
    truth = sky_image(tmp_path / "raw.fits", n_sources=25, npix=400, noise_jy=sigma, noise_rise=0.0,
                      snr_range=(20, 200), seed=9, write_noise_map=False)
    with fits.open(truth["image"]) as h:
        img, hdr = h[0].data[0, 0], h[0].header
    yy, xx = np.mgrid[0:400, 0:400]
    pb = np.exp(-((xx - 200.0) ** 2 + (yy - 200.0) ** 2) / (2 * 150.0**2)).astype(np.float32)
    for kind, data in (("image", img * pb), ("pb", pb), ("pbcor", img)):  # pbcor = (A S + n) / A
        fits.PrimaryHDU(data.reshape(1, 1, 400, 400), hdr).writeto(tmp_path / f"t.{kind}.fits")
    (tmp_path / "t.qa.json").write_text(json.dumps({"qa": {"noise_jy": sigma}}))
    nmap, source = noise_for_image(tmp_path / "t.pbcor.fits")
    assert "tile noise" in source
    np.testing.assert_allclose(nmap, sigma / pb, rtol=1e-5)
    flat, _ = noise_for_image(tmp_path / "t.image.fits")
    np.testing.assert_allclose(flat, sigma)
    res = find_sources(tmp_path / "t.pbcor.fits")
    assert res["path"] == str(tmp_path / "t.pbcor.sources.fits")
    t = res["table"]
    from astropy.wcs import WCS

    x, y = WCS(hdr).celestial.world_to_pixel_values(np.asarray(t["ra_deg"]), np.asarray(t["dec_deg"]))
    expect = sigma / pb[np.round(y).astype(int), np.round(x).astype(int)]
    np.testing.assert_allclose(np.asarray(t["local_rms"]), expect, rtol=0.05)


def test_constant_noise_argument(mosaic, tmp_path):
    d, _ = mosaic
    shutil.copy(d / "m.fits", tmp_path / "copy.fits")  # no noise map beside it
    res = find_sources(tmp_path / "copy.fits", noise=1e-3, local=False)
    assert res["noise_source"].startswith("constant")
    np.testing.assert_allclose(np.asarray(res["table"]["local_rms"]), 1e-3, rtol=1e-5)
    raised = find_sources(tmp_path / "copy.fits", noise=1e-3, out_path=tmp_path / "r.sources.fits")
    assert raised["noise_source"].startswith("max(constant 0.001 Jy/beam, BANE local rms), raised near ")
    assert np.all(raised["table"]["local_rms"] >= 1e-3 * (1 - 1e-6))
    prod = catalogue_product(res, {"n_matched": 3})
    assert prod["kind"] == "catalogue" and prod["path"] == res["path"] and prod["qa"] == {"n_matched": 3}
    json.dumps(prod)


def test_local_rms_keeps_artefacts_out(tmp_path):
    """A patch of extra noise the map does not know (an artefact region): the noise is raised to
    BANE's local rms there, so its peaks stay out of the catalogue; the map alone would let
    hundreds in (counted here as 5-sigma local maxima, not fitted: that takes Aegean ~20 s)."""
    from astropy.wcs import WCS
    from scipy.ndimage import gaussian_filter, maximum_filter

    truth = sky_image(tmp_path / "a.fits", n_sources=20, npix=512, noise_rise=0.0, snr_range=(20, 200), seed=13)
    lo, hi = 16, 368  # the patch, 2.3 BANE boxes (~30 beams) on a side; its edges are blurred by the box
    ilo, ihi = lo + 60, hi - 60
    with fits.open(truth["image"], mode="update") as h:
        extra = gaussian_filter(np.random.default_rng(1).normal(0, 1, (hi - lo, hi - lo)), 2.5)
        h[0].data[0, 0, lo:hi, lo:hi] += 4e-3 * extra / extra.std()  # 4x the map's 1 mJy/beam
        img = h[0].data[0, 0].copy()
    nmap, source = noise_for_image(truth["image"], local=True)
    assert source.startswith("max(") and "a.noise.fits" in source
    assert np.median(nmap[ilo:ihi, ilo:ihi]) == pytest.approx(np.sqrt(1 + 16) * 1e-3, rel=0.1)
    assert np.median(nmap[400:, 400:]) == pytest.approx(1e-3, rel=0.1)  # unchanged outside
    peaks = (img == maximum_filter(img, size=7)) & (img > 5e-3)
    truth_in = int(((truth["x"] > ilo) & (truth["x"] < ihi) & (truth["y"] > ilo) & (truth["y"] < ihi)).sum())
    assert peaks[ilo:ihi, ilo:ihi].sum() >= truth_in + 50, "against the map alone the patch is full of 5-sigma peaks"
    local = find_sources(truth["image"], out_path=tmp_path / "local.sources.fits")["table"]
    x, y = WCS(fits.getheader(truth["image"])).celestial.world_to_pixel_values(np.asarray(local["ra_deg"]),
                                                                             np.asarray(local["dec_deg"]))
    assert int(((x > ilo) & (x < ihi) & (y > ilo) & (y < ihi)).sum()) <= truth_in + 1
    assert len(local) >= len(truth["ra_deg"]) - 3  # the real sources (S/N >= 20 against the map) stay
    assert (local["peak_flux"] > 0).all(), "no negative components"


def test_empty_catalogue(mosaic, tmp_path):
    d, truth = mosaic
    res = find_sources(d / "m.fits", nsigma=1e4, local=False, out_path=tmp_path / "none.sources.fits")
    t = read_sources(res["path"])
    assert res["n_sources"] == 0 and len(t) == 0 and t["name"].dtype.kind == "U" and "int_flux" in t.colnames


def test_bad_inputs_name_the_file(tmp_path):
    with pytest.raises(BadInputError, match="nope.fits"):
        find_sources(tmp_path / "nope.fits")
    fits.PrimaryHDU(np.zeros((16, 16), np.float32)).writeto(tmp_path / "nobeam.fits")
    with pytest.raises(BadInputError, match="nobeam.fits.*BMAJ"):
        find_sources(tmp_path / "nobeam.fits")
    with pytest.raises(BadInputError, match="not a positive"):
        noise_for_image(tmp_path / "nobeam.fits", -1.0)


def test_the_sidelobes_of_a_bright_source_are_noise_and_the_sky_beyond_is_not(tmp_path):
    """Lobes strung along the snapshot PSF's arms within 20 beams of a 3 Jy source, at +-0.3 % of
    it (9 sigma), pass a 5-sigma cut against the map and BANE's ~30-beam boxes. Raised near the source to the rms of 6-beam boxes
    (``near_bright``), the map keeps them out; sources of the same S/N beyond stay in."""
    from astropy.wcs import WCS

    from dsacont.simulator.images import beam_kernel

    npix, cell, sigma = 720, 6.0, 1e-3
    w = WCS(naxis=2)
    c = (npix - 1) / 2.0
    w.wcs.crpix = [c + 1, c + 1]
    w.wcs.cdelt = [-cell / 3600.0, cell / 3600.0]
    w.wcs.crval = [128.72877, 55.57252]
    w.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    # the bright source at the centre, 8 sources of 9 sigma in the corners (> 30 beams from it),
    # and 2 of 15 sigma off its arms within 10 beams of it
    px = [c] + [c + dx for dx in (-300, -250, 250, 300) for _ in (0, 1)] + [c + 45, c - 50]
    py = [c] + [c + dy for _ in (-300, -250, 250, 300) for dy in (-290, 290)] + [c + 45, c + 35]
    ra, dec = w.pixel_to_world_values(np.array(px), np.array(py))
    flux = np.array([3.0] + [9 * sigma] * 8 + [15 * sigma] * 2)
    truth = sky_image(tmp_path / "b.fits", sources={"name": np.array([f"s{i}" for i in range(11)]), "ra_deg": ra,
                                                    "dec_deg": dec, "flux_jy": flux},
                      npix=npix, cell_arcsec=cell, beam_arcsec=BEAM, noise_jy=sigma, noise_rise=0.0, seed=3)
    bmaj_px, bmin_px = BEAM[0] / cell, BEAM[1] / cell
    yy, xx = np.mgrid[0:npix, 0:npix].astype(float)
    # the arms: lobes a beam apart, alternately positive and negative, out to 19 beams
    lobes = [(s * r, (-1) ** (r // 7)) for r in range(21, 125, 7) for s in (-1, 1)]
    arms = [(c + d, c, sign) for d, sign in lobes] + [(c, c + d, sign) for d, sign in lobes]
    with fits.open(truth["image"], mode="update") as h:
        for ax, ay, sign in arms:
            h[0].data[0, 0] += sign * 0.003 * 3.0 * beam_kernel(xx - ax, yy - ay, bmaj_px, bmin_px, BEAM[2])
    pos = [(ax, ay) for ax, ay, sign in arms if sign > 0]
    arm_ra, arm_dec = w.pixel_to_world_values(np.array([a[0] for a in pos]), np.array([a[1] for a in pos]))

    def count(table, ras, decs):
        _, ok = match({"ra_deg": ras, "dec_deg": decs}, table)
        return int(ok.sum())

    plain = find_sources(truth["image"], near_bright=False, out_path=tmp_path / "plain.sources.fits")
    raised = find_sources(truth["image"], out_path=tmp_path / "raised.sources.fits")
    assert "raised near 1 bright" in raised["noise_source"]
    assert count(plain["table"], arm_ra, arm_dec) >= 0.8 * len(pos), "against BANE's boxes the arms pass 5 sigma"
    assert count(raised["table"], arm_ra, arm_dec) <= len(pos) // 7
    for res in (plain, raised):
        # the noise near it is the rms of negative pixels: the sources there do not raise their own
        assert count(res["table"], truth["ra_deg"], truth["dec_deg"]) == 11, "every real source stays"
    nmap, _ = noise_for_image(truth["image"], near_bright=True)
    assert np.median(nmap[:100, :100]) == pytest.approx(sigma, rel=0.05), "unchanged far from it"


def test_a_one_gaussian_fit_beside_its_source_is_fitted_again_at_the_beam(tmp_path):
    """Aegean fitted some faint full-size sources as one Gaussian 2-3 beams long, centred most of
    a beam from the source along the beam's major axis. Such a fit (made here by moving a good
    fit 0.7 beam along that axis and stretching it) is found by climbing the image from its centre
    to the peak it sits on, and fitted again by Aegean's priorized fitting at the beam's shape
    from that peak; good fits are left alone."""
    from astropy.wcs import WCS

    from dsacont.io.fits import write_like
    from dsacont.sources import finder

    sigma = 1e-3
    truth = sky_image(tmp_path / "f.fits", n_sources=12, npix=512, beam_arcsec=BEAM, noise_jy=sigma,
                      noise_rise=0.0, snr_range=(15, 60), seed=17, write_noise_map=False)
    hdr = fits.getheader(truth["image"])
    beam = {"bmaj_arcsec": BEAM[0], "bmin_arcsec": BEAM[1], "bpa_deg": BEAM[2]}
    rms, bkg = tmp_path / "rms.fits", tmp_path / "bkg.fits"
    data = fits.getdata(truth["image"])[0, 0]
    write_like(truth["image"], rms, np.full(data.shape, sigma, np.float32))
    write_like(truth["image"], bkg, np.zeros(data.shape, np.float32))
    found = finder._run_aegean(truth["image"], str(rms), str(bkg), 5.0, 3.0, int(hdr["NAXIS"]), 1)
    wcs = WCS(hdr).celestial
    assert finder._misfits(found, data, wcs, beam) == [], "good fits are left alone"
    alone = [c for c in found if sum(o.island == c.island for o in found) == 1]
    bad, bright = sorted(alone, key=lambda c: c.peak_flux)[-1:-3:-1]
    # a good fit of a bright source peaks a few per cent above its brightest pixel: many sigma at
    # high S/N, and still a good fit (0834+555 must stay in the strip's sky model)
    bright.peak_flux *= 1.1
    assert bright.peak_flux - bright.peak_flux / 1.1 > 3 * bright.local_rms
    assert finder._misfits(found, data, wcs, beam) == [], "a bright source's fit peaking 10 % above its pixel"
    true_ra, true_dec = bad.ra, bad.dec
    pa = np.radians(BEAM[2])  # east of north
    shift = 0.7 * BEAM[0] / 3600.0
    bad.ra += shift * np.sin(pa) / np.cos(np.radians(bad.dec))
    bad.dec += shift * np.cos(pa)
    bad.a, bad.peak_flux = 2.5 * BEAM[0], 1.3 * bad.peak_flux
    flagged = finder._misfits(found, data, wcs, beam)
    assert [c for c, *_ in flagged] == [bad]
    out, n = finder._refit_misfits(found, truth["image"], str(rms), str(bkg), beam, 3.0, 5.0, int(hdr["NAXIS"]), 1)
    assert n == 1 and len(out) == len(found) and bad not in out
    new = [c for c in out if c not in found]
    assert len(new) == 1 and new[0].flags == finder.REFIT_FLAG  # Aegean's PRIORIZED
    assert finder.clean_fit([0, finder.REFIT_FLAG, 1, finder.REFIT_FLAG | 4]).tolist() == [True, True, False, False]
    from astropy.coordinates import SkyCoord

    sep = SkyCoord(new[0].ra, new[0].dec, unit="deg").separation(SkyCoord(true_ra, true_dec, unit="deg")).arcsec
    assert sep < 0.1 * BEAM[0]
    assert new[0].a == pytest.approx(BEAM[0], rel=0.01)
    assert new[0].peak_flux == pytest.approx(bad.peak_flux / 1.3, rel=0.1)


def test_bane_on_two_cores_never_waits_for_a_stripe_it_cannot_start(tmp_path):
    """BANE's stripes wait for each other at a barrier and it rounds their height to whole steps:
    an image of an odd number of rows, cut in two, came out as three stripes for two processes
    and hung for ever (the demo mosaic's 1207 rows). ``bane_stripes`` asks for no more than
    can run at once; the two-core map is the one-core map."""
    import subprocess
    import sys

    from dsacont.sources.finder import bane_stripes

    assert bane_stripes(1207, 36, 2) == 1 and bane_stripes(3950, 76, 2) == 2 and bane_stripes(1207, 36, 1) == 1
    truth = sky_image(tmp_path / "odd.fits", n_sources=5, npix=301, beam_arcsec=BEAM, noise_jy=1e-3,
                      snr_range=(20, 50), seed=5, write_noise_map=False)
    code = ("import sys, numpy as np; from dsacont.sources.finder import local_rms; "
            "a = local_rms(sys.argv[1], cores=1); b = local_rms(sys.argv[1], cores=2); "
            "ok = np.isfinite(a); print(a.shape[0], float(np.nanmax(np.abs(a[ok] - b[ok]) / a[ok])))")
    out = subprocess.run([sys.executable, "-c", code, str(truth["image"])], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows, diff = out.stdout.split()[-2:]
    assert int(rows) == 301 and float(diff) < 1e-3


def test_large_islands_are_fitted_without_the_noise_covariance(tmp_path, monkeypatch):
    """Aegean's correlated-noise covariance costs the square of an island's pixels (two striped
    islands of a full-size tile took 121 of its catalogue's 160 s): islands larger than
    ``COVARIANCE_MAX_PIXELS`` are fitted without it, the others with it, and point sources come
    out the same either way."""
    import AegeanTools.source_finder as aegean

    from dsacont.io.fits import write_like
    from dsacont.sources import finder

    sigma = 1e-3
    truth = sky_image(tmp_path / "c.fits", n_sources=12, npix=512, beam_arcsec=BEAM, noise_jy=sigma,
                      noise_rise=0.0, snr_range=(15, 60), seed=17, write_noise_map=False)
    hdr = fits.getheader(truth["image"])
    data = fits.getdata(truth["image"])[0, 0]
    rms, bkg = tmp_path / "rms.fits", tmp_path / "bkg.fits"
    write_like(truth["image"], rms, np.full(data.shape, sigma, np.float32))
    write_like(truth["image"], bkg, np.zeros(data.shape, np.float32))
    built = []
    cmatrix = aegean.Cmatrix

    def counted(*args, **kwargs):
        built.append(1)
        return cmatrix(*args, **kwargs)

    monkeypatch.setattr(aegean, "Cmatrix", counted)
    with_cov = finder._run_aegean(truth["image"], str(rms), str(bkg), 5.0, 3.0, int(hdr["NAXIS"]), 1)
    n_islands = len({c.island for c in with_cov})
    assert len(built) >= n_islands > 5  # every island of point sources is small: all with the covariance
    built.clear()
    monkeypatch.setattr(finder, "COVARIANCE_MAX_PIXELS", 10)  # every island is now "large"
    without = finder._run_aegean(truth["image"], str(rms), str(bkg), 5.0, 3.0, int(hdr["NAXIS"]), 1)
    assert built == []
    assert len(without) == len(with_cov)
    for a, b in zip(sorted(with_cov, key=lambda c: c.ra), sorted(without, key=lambda c: c.ra)):
        assert abs(a.ra - b.ra) * 3600 * np.cos(np.radians(a.dec)) < 0.05 * BEAM[1]
        assert abs(a.dec - b.dec) * 3600 < 0.05 * BEAM[1]
        assert b.int_flux == pytest.approx(a.int_flux, rel=0.02)
