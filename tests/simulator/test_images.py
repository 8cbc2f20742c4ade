"""The image-plane simulator: what it writes is what its truth says (checked with astropy and
Aegean, not with dsacont's sources stage)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
from astropy.io import fits
from astropy.wcs import WCS

from dsacont.simulator.images import correlated_noise, sky_image, variable_epochs


def test_noise_has_unit_variance_and_the_beams_correlation():
    rng = np.random.default_rng(0)
    n = correlated_noise((512, 512), 8.0, 8.0, 0.0, rng)
    assert n.std() == pytest.approx(1.0, abs=1e-6)
    # autocorrelation at half the beam's FWHM: the beam's value there, 0.5
    f = np.fft.rfft2(n)
    acf = np.fft.irfft2(f * np.conj(f), s=n.shape) / n.size
    assert acf[0, 4] == pytest.approx(0.5, abs=0.06) and acf[4, 0] == pytest.approx(0.5, abs=0.06)
    assert acf[0, 8] == pytest.approx(1 / 16, abs=0.04)  # exp(-4 ln 2) at a full FWHM


def test_sky_image_matches_its_truth(tmp_path):
    truth = sky_image(tmp_path / "s.fits", n_sources=30, npix=400, snr_range=(200, 500), noise_jy=1e-3, seed=4,
                      beam_arcsec=(48.0, 30.0, 30.0))
    with fits.open(truth["image"]) as h:
        data, hdr = h[0].data[0, 0], h[0].header
    assert hdr["BMAJ"] * 3600 == pytest.approx(48.0) and hdr["BUNIT"] == "Jy/beam" and "MJD-OBS" in hdr
    w = WCS(hdr).celestial
    x, y = w.world_to_pixel_values(truth["ra_deg"], truth["dec_deg"])
    np.testing.assert_allclose(x, truth["x"], atol=1e-6)
    # bright point sources: the peak pixel near each position is the flux (Jy/beam = Jy)
    for xs, ys, s, sig in zip(truth["x"], truth["y"], truth["flux_jy"], truth["noise_jy"]):
        xi, yi = int(round(xs)), int(round(ys))
        assert data[yi, xi] == pytest.approx(s, abs=5 * sig + 0.02 * s)
    noise = fits.getdata(truth["noise"])[0, 0]
    assert noise[200, 200] == pytest.approx(1e-3, rel=0.01) and noise[0, 0] == pytest.approx(2e-3, rel=0.01)
    with open(str(tmp_path / "s.truth.csv")) as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(truth["ra_deg"]) and float(rows[0]["flux_jy"]) == pytest.approx(truth["flux_jy"][0])


def test_beam_position_angle_is_east_of_north(tmp_path):
    """Aegean (an independent fitter) reads the drawn sources' PA as the header's BPA."""
    from AegeanTools.source_finder import SourceFinder

    truth = sky_image(tmp_path / "pa.fits", n_sources=8, npix=300, snr_range=(300, 400), seed=2,
                      beam_arcsec=(60.0, 30.0, 30.0), noise_rise=0.0)
    found = SourceFinder().find_sources_in_image(truth["image"], cube_index=0, cores=1, progress=False,
                                                 nonegative=True)
    pa = np.array([s.pa for s in found if s.peak_flux > 0.1])
    assert len(pa) >= 6 and np.median(pa) == pytest.approx(30.0, abs=2.0)


def test_variable_epochs_truth(tmp_path):
    v = variable_epochs(tmp_path, 10, n_steady=3, n_flare=1, n_dip=1, npix=256, seed=3)
    assert len(v["images"]) == 10 and v["flux_jy"].shape == (5, 10)
    np.testing.assert_allclose(np.diff(v["mjd"]), 0.99726957)  # the same LST every day
    assert list(v["kind"]) == ["steady"] * 3 + ["flare", "dip"]
    np.testing.assert_allclose(v["flux_jy"][:3], np.repeat(v["base_flux_jy"][:3, None], 10, axis=1))
    assert v["flux_jy"][3].max() > v["base_flux_jy"][3] and v["flux_jy"][4].min() < v["base_flux_jy"][4]
    for k, img in enumerate(v["images"]):
        assert fits.getheader(img)["MJD-OBS"] == pytest.approx(v["mjd"][k])
    with open(tmp_path / "variables_truth.csv") as fh:
        assert [r["kind"] for r in csv.DictReader(fh)] == list(v["kind"])
