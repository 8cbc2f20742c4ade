"""Forced photometry and light curves on simulated daily images (real FITS), from a file list and
from a real products database written by dsacont.service.products."""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from dsacont.errors import BadInputError
from dsacont.simulator.images import sky_image, variable_epochs
from dsacont.sources import forced_photometry, light_curve, light_curves, products_images, resolve_source, to_dataset


@pytest.fixture(scope="module")
def epochs(tmp_path_factory):
    """8 daily 384^2 images of one field: 10 steady, 2 flaring, 2 dipping sources, 1 mJy/beam noise."""
    d = tmp_path_factory.mktemp("epochs")
    v = variable_epochs(d, 8, n_steady=10, n_flare=2, n_dip=2, npix=384, base_flux_jy=(0.03, 0.3), seed=4)
    return d, v


@pytest.fixture(scope="module")
def products_db(epochs, tmp_path_factory):
    """A products database (the service's own writer) with the 8 epochs recorded as mosaics."""
    from dsacont.service.products import Products

    d, v = epochs
    db = tmp_path_factory.mktemp("state") / "products.sqlite3"
    p = Products(db)
    for img, mjd in zip(v["images"], v["mjd"]):
        p.add_mosaic(img, files={"mosaic": img, "noise": img[:-5] + ".noise.fits"}, start=mjd - 0.02, end=mjd + 0.02)
    return db


def test_forced_photometry_matches_truth_with_honest_errors(tmp_path):
    truth = sky_image(tmp_path / "f.fits", n_sources=40, npix=512, snr_range=(5, 200), seed=21)
    df = forced_photometry(truth["image"], truth["ra_deg"], truth["dec_deg"], names=truth["name"])
    assert list(df["name"]) == list(truth["name"]) and df["covered"].all()
    pull = (df["flux_jy"] - truth["flux_jy"]) / df["flux_err_jy"]
    assert abs(pull.mean()) < 0.5 and 0.6 < pull.std() < 1.4
    np.testing.assert_allclose(df["flux_err_jy"], truth["noise_jy"], rtol=0.02)
    assert df["mjd"].iloc[0] == pytest.approx(truth["mjd"])
    # blank positions: ~no false detections at 3 sigma, upper limits = max(f, 0) + 3 err
    rng = np.random.default_rng(3)
    ra = np.median(truth["ra_deg"]) + rng.uniform(-0.3, 0.3, 300)
    dec = np.median(truth["dec_deg"]) + rng.uniform(-0.2, 0.2, 300)
    from astropy.coordinates import SkyCoord

    _, sep, _ = SkyCoord(ra, dec, unit="deg").match_to_catalog_sky(SkyCoord(truth["ra_deg"], truth["dec_deg"], unit="deg"))
    blank = forced_photometry(truth["image"], ra[sep.arcsec > 150], dec[sep.arcsec > 150])
    assert 0.7 < (blank["flux_jy"] / blank["flux_err_jy"]).std() < 1.3
    assert blank["detected"].mean() < 0.03
    nd = blank[~blank["detected"]]
    np.testing.assert_allclose(nd["upper_limit_jy"], np.maximum(nd["flux_jy"], 0) + 3 * nd["flux_err_jy"])
    assert blank["upper_limit_jy"][blank["detected"]].isna().all()
    # outside the image: not covered, NaN
    out = forced_photometry(truth["image"], [0.0], [0.0])
    assert not out["covered"][0] and np.isnan(out["flux_jy"][0])
    with pytest.raises(BadInputError, match="gone.fits"):
        forced_photometry(tmp_path / "gone.fits", [0.0], [0.0])


def test_light_curves_follow_the_truth(epochs):
    d, v = epochs
    srcs = [(r, dd) for r, dd in zip(v["ra_deg"], v["dec_deg"])]
    lc = light_curves(srcs, v["images"])
    assert len(lc) == len(srcs) * len(v["images"])
    assert lc.groupby("name")["mjd"].apply(lambda s: s.is_monotonic_increasing).all()
    for i, (r, dd) in enumerate(srcs):
        one = lc[lc["name"] == f"{r:.5f},{dd:+.5f}"]
        np.testing.assert_allclose(one["mjd"], v["mjd"], atol=1e-6)
        # within 5 sigma of the true flux at every epoch
        assert np.all(np.abs(one["flux_jy"].to_numpy() - v["flux_jy"][i]) < 5 * one["flux_err_jy"].to_numpy())
    ds = to_dataset(lc)
    assert ds.sizes == {"source": len(srcs), "image": len(v["images"])}
    np.testing.assert_allclose(ds["mjd"], v["mjd"], atol=1e-6)
    k = f"{srcs[3][0]:.5f},{srcs[3][1]:+.5f}"
    np.testing.assert_allclose(ds["flux_jy"].sel(source=k), lc[lc["name"] == k]["flux_jy"])
    # a source missing from one image: NaN there, not detected
    part = to_dataset(lc[~((lc["name"] == k) & (lc["image"] == v["images"][0]))])
    assert np.isnan(part["flux_jy"].sel(source=k)[0]) and not bool(part["detected"].sel(source=k)[0])


def test_light_curve_from_products_database(epochs, products_db):
    d, v = epochs
    before = hashlib.sha256(products_db.read_bytes()).hexdigest()
    listed = products_images(products_db, kind="mosaics")
    assert [r["path"] for r in listed] == [str(p) for p in v["images"]]
    np.testing.assert_allclose([r["mjd"] for r in listed], v["mjd"], atol=1e-6)
    assert products_images(products_db, kind="images") == []
    assert len(products_images(products_db, kind="mosaics", start=float(v["mjd"][2]) - 0.1,
                               end=float(v["mjd"][4]) + 0.1)) == 3
    i = int(np.flatnonzero(v["kind"] == "flare")[0])
    lc = light_curve((v["ra_deg"][i], v["dec_deg"][i]), products=products_db, kind="mosaics")
    assert isinstance(lc, pd.DataFrame) and len(lc) == 8 and set(lc["kind"]) == {"mosaic"}
    peak_epoch = int(np.argmax(v["flux_jy"][i]))
    assert int(np.argmax(lc["flux_jy"].to_numpy())) == peak_epoch
    assert hashlib.sha256(products_db.read_bytes()).hexdigest() == before, "read-only"
    with pytest.raises(BadInputError, match="nothere"):
        products_images(d / "nothere.sqlite3")


def test_resolve_source():
    assert resolve_source("0834+555")[1:] == pytest.approx((128.72877, 55.57252), abs=1e-4)
    assert resolve_source("128.5,55.25") == ("128.5,55.25", 128.5, 55.25)
    name, ra, dec = resolve_source("08:34:54.9,+55:34:21")
    assert ra == pytest.approx(128.72875, abs=1e-4) and dec == pytest.approx(55.5725, abs=1e-4)
    from dsacont.calibration.skymodel import nvss_catalogue

    s = nvss_catalogue()[100]
    assert resolve_source(s.name) == (s.name, s.ra_deg, s.dec_deg)
    with pytest.raises(ValueError, match="unknown source"):
        resolve_source("nonsense")


def test_cli_lightcurve(epochs, products_db, tmp_path):
    d, v = epochs
    i = int(np.flatnonzero(v["kind"] == "dip")[0])
    spec = f"{v['ra_deg'][i]:.6f},{v['dec_deg'][i]:.6f}"
    out = subprocess.run([sys.executable, "-m", "dsacont.cli", "lightcurve", spec, "--db", str(products_db),
                          "--kind", "mosaics", "--csv", str(tmp_path / "lc.csv"), "--plot", str(tmp_path / "lc.png")],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "8 measurements" in out.stdout
    csv = pd.read_csv(tmp_path / "lc.csv")
    assert len(csv) == 8 and {"mjd", "flux_jy", "flux_err_jy", "upper_limit_jy"} <= set(csv.columns)
    assert (tmp_path / "lc.png").read_bytes()[:4] == b"\x89PNG"
    # --state: the database in that state directory (as the service lays it out)
    via_state = subprocess.run([sys.executable, "-m", "dsacont.cli", "lightcurve", spec, "--state",
                                str(products_db.parent), "--kind", "mosaics"], capture_output=True, text=True)
    assert via_state.returncode == 0 and "8 measurements" in via_state.stdout, via_state.stderr
    # a state directory the reader cannot write (root runs it without its DAC override): an immutable snapshot
    ro = tmp_path / "ro_state"
    ro.mkdir()
    shutil.copy(products_db, ro / "products.sqlite3")
    ro.chmod(0o555)
    try:
        prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"] if os.geteuid() == 0 else []
        r = subprocess.run(prefix + [sys.executable, "-m", "dsacont.cli", "lightcurve", spec, "--db",
                                     str(ro / "products.sqlite3"), "--kind", "mosaics"], capture_output=True, text=True)
        assert r.returncode == 0 and "8 measurements" in r.stdout, r.stderr
        assert "immutable snapshot" in r.stderr and sorted(p.name for p in ro.iterdir()) == ["products.sqlite3"]
    finally:
        ro.chmod(0o755)
    bad = subprocess.run([sys.executable, "-m", "dsacont.cli", "lightcurve", "0.0,-80.0", "--db", str(products_db),
                          "--kind", "mosaics"], capture_output=True, text=True)
    assert bad.returncode == 1 and "no image covers" in bad.stderr
