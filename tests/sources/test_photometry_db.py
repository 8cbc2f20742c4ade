"""Forced photometry stored in the products database: the worker's record (real FITS), the service's
writer (real SQLite), and light curves read back from the rows instead of the images."""
from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from dsacont.calibration.skymodel import SkySource
from dsacont.config import get_paths
from dsacont.service.products import Products
from dsacont.service.state import record_products
from dsacont.simulator.images import sky_image, variable_epochs
from dsacont.sources import light_curve, light_curves, reference_photometry, reference_positions, stored_photometry
from dsacont.sources.photometry import SAME_SOURCE_ARCSEC


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """6 daily 256^2 mosaics (1 mJy/beam) of 6 steady, 1 flaring and 1 dipping source, recorded by the
    service's own writer with the forced photometry of those 8 sources plus one blank position."""
    root = tmp_path_factory.mktemp("photdb")
    v = variable_epochs(root / "images", 6, n_steady=6, n_flare=1, n_dip=1, npix=256, base_flux_jy=(0.05, 0.3),
                        seed=7)
    refs = [SkySource(f"S{i}", float(r), float(d), 0.1) for i, (r, d) in enumerate(zip(v["ra_deg"], v["dec_deg"]))]
    blank = SkySource("BLANK", float(np.median(v["ra_deg"])) + 0.05, float(np.median(v["dec_deg"])) - 0.07, 0.1)
    refs.append(blank)
    paths = get_paths(root=root / "root")
    db = Products(paths.products_db)
    recs = []
    for img, mjd in zip(v["images"], v["mjd"]):
        db.add_mosaic(img, files={"mosaic": img, "noise": img[:-5] + ".noise.fits"}, start=mjd - 0.02, end=mjd + 0.02)
        recs.append(reference_photometry(img, "mosaic", reference=refs, mjd=float(mjd)))
    ids = record_products(paths, {"photometry": recs})
    return {"root": root, "v": v, "refs": refs, "paths": paths, "db": db, "recs": recs, "ids": ids}


def test_record_holds_every_covered_reference_with_upper_limits(run):
    v, recs = run["v"], run["recs"]
    rec = recs[2]
    assert rec["kind"] == "mosaic" and rec["mjd"] == pytest.approx(v["mjd"][2], abs=1e-9) and rec["reference"] == "9 sources"
    names = [r["name"] for r in rec["rows"]]
    assert names == [f"S{i}" for i in range(8)] + ["BLANK"]
    for i, r in enumerate(rec["rows"][:8]):
        assert abs(r["flux_jy"] - v["flux_jy"][i, 2]) < 5 * r["flux_err_jy"]
        assert r["detected"] and r["upper_limit_jy"] is None
        # the local rms: the image's own scatter near the source, about the map's 1 mJy/beam
        assert 0.5e-3 < r["local_rms_jy"] < 3e-3
    b = rec["rows"][-1]
    assert not b["detected"]
    assert b["upper_limit_jy"] == pytest.approx(max(b["flux_jy"], 0.0) + 3 * b["flux_err_jy"])
    # a position off the image is not measured
    far = reference_photometry(v["images"][0], "tile", reference=[SkySource("FAR", 10.0, -30.0, 1.0)])
    assert far["rows"] == [] and far["kind"] == "tile"
    with pytest.raises(ValueError, match="'tile' or 'mosaic'"):
        reference_photometry(v["images"][0], "cube")


def test_default_reference_is_nvss_and_the_calibrators_once(tmp_path):
    """Centred on 0834+555: the calibrator is measured under its own name, its NVSS entry not again."""
    truth = sky_image(tmp_path / "c.fits", n_sources=3, npix=600, cell_arcsec=20.0, seed=2)
    refs = reference_positions(truth["image"])
    names = [s.name for s in refs]
    assert "0834+555" in names and len(refs) > 5
    cal = refs[names.index("0834+555")]
    others = np.array([[s.ra_deg, s.dec_deg] for s in refs if s.name != "0834+555"])
    sep = np.hypot((others[:, 0] - cal.ra_deg) * np.cos(np.radians(cal.dec_deg)), others[:, 1] - cal.dec_deg) * 3600
    assert sep.min() > SAME_SOURCE_ARCSEC
    rec = reference_photometry(truth["image"], "tile")
    assert rec["reference"] == "nvss+vla" and [r["name"] for r in rec["rows"]] == names


def test_service_stores_rows_once_per_image(run):
    db, recs = run["db"], run["recs"]
    assert run["ids"]["photometry"] == [9] * 6
    rows = db.photometry("S6")
    assert len(rows) == 6 and all(r["kind"] == "mosaic" for r in rows)
    np.testing.assert_allclose([r["mjd"] for r in rows], run["v"]["mjd"], rtol=0, atol=1e-9)
    assert [r["flux_jy"] for r in rows] == pytest.approx([rec["rows"][6]["flux_jy"] for rec in recs])
    blank = db.photometry("BLANK")
    assert not any(r["detected"] for r in blank) and all(r["upper_limit_jy"] > 0 for r in blank)
    # recording again (a retried hook) replaces, never duplicates
    record_products(run["paths"], {"photometry": recs[:2]})
    assert len(db.photometry(kind="mosaic")) == 6 * 9
    assert len(db.photometry(image=recs[0]["image"])) == 9
    with pytest.raises(ValueError, match="kind"):
        db.add_photometry(dict(recs[0], kind="image"))


def test_light_curve_reads_the_stored_rows(run, tmp_path, capsys):
    v, dbp = run["v"], run["paths"].products_db
    before = hashlib.sha256(dbp.read_bytes()).hexdigest()
    i = int(np.flatnonzero(v["kind"] == "flare")[0])
    spec = (float(v["ra_deg"][i]) + 2.0 / 3600, float(v["dec_deg"][i]))  # 2" off: the stored source
    stored = light_curve(spec, products=dbp, kind="mosaics")
    fresh = light_curve(spec, products=dbp, kind="mosaics", use_stored=False)
    assert len(stored) == 6 and set(stored["kind"]) == {"mosaic"}
    np.testing.assert_allclose(stored["mjd"], v["mjd"], rtol=0, atol=1e-9)
    # the stored fluxes are the images' at the reference position, 2" from the one asked for
    np.testing.assert_allclose(stored["flux_jy"], fresh["flux_jy"], rtol=0.02)
    assert int(np.argmax(stored["flux_jy"].to_numpy())) == int(np.argmax(v["flux_jy"][i]))
    assert stored["name"].iloc[0] == fresh["name"].iloc[0]
    # with the images gone the stored light curve is whole; a position never stored has none
    gone = tmp_path / "gone"
    shutil.move(str(run["root"] / "images"), str(gone))
    try:
        again = light_curve(spec, products=dbp, kind="mosaics")
        np.testing.assert_allclose(again["flux_jy"], stored["flux_jy"])
        assert light_curve(spec, products=dbp, kind="mosaics", use_stored=False).empty
        other = (float(v["ra_deg"][i]) + 0.05, float(v["dec_deg"][i]))
        assert light_curve(other, products=dbp, kind="mosaics").empty
        # thresholds are applied to the stored flux and error
        strict = light_curve(spec, products=dbp, kind="mosaics", detect_nsigma=1e6)
        assert not strict["detected"].any()
        np.testing.assert_allclose(strict["upper_limit_jy"], strict["flux_jy"].clip(lower=0) + 3 * strict["flux_err_jy"])
        # a time range selects the epochs; tiles were never stored
        part = light_curve(spec, products=dbp, kind="mosaics", start=float(v["mjd"][1]) - 0.1,
                           end=float(v["mjd"][3]) + 0.1)
        assert len(part) == 3
        assert light_curve(spec, products=dbp, kind="images").empty
        # dsacont lightcurve: the stored rows; --remeasure opens the (gone) images
        from dsacont.sources.cli import cli_lightcurve

        arg = f"{spec[0]:.6f},{spec[1]:.6f}"
        assert cli_lightcurve([arg, "--db", str(dbp), "--kind", "mosaics"]) == 0
        assert "(6 measurements)" in capsys.readouterr().out
        assert cli_lightcurve([arg, "--db", str(dbp), "--kind", "mosaics", "--remeasure"]) == 1
        assert "no image covers" in capsys.readouterr().err
    finally:
        shutil.move(str(gone), str(run["root"] / "images"))
    # a position never stored is measured on the images (the fallback), beside stored ones
    both = light_curves([spec, other], products=dbp, kind="mosaics")
    assert both.groupby("name").size().to_dict() == {stored["name"].iloc[0]: 6, f"{other[0]:.5f},{other[1]:+.5f}": 6}
    measured, rows = stored_photometry(dbp, [spec, other], kind="mosaics")
    assert len(measured) == 6 and set(rows["name"]) == {stored["name"].iloc[0]}
    assert hashlib.sha256(dbp.read_bytes()).hexdigest() == before, "read-only"


def test_images_not_yet_measured_are_measured(run, tmp_path):
    """A mosaic recorded without photometry (an older run) is measured from its file, the rest read."""
    v, dbp = run["v"], run["paths"].products_db
    copy = tmp_path / "products.sqlite3"
    shutil.copy(dbp, copy)
    import sqlite3

    con = sqlite3.connect(copy)
    con.execute("DELETE FROM photometry WHERE image_path = ?", (str(v["images"][4]),))
    con.execute("DELETE FROM photometry_images WHERE image_path = ?", (str(v["images"][4]),))
    con.commit()
    con.close()
    spec = (float(v["ra_deg"][0]), float(v["dec_deg"][0]))
    lc = light_curve(spec, products=copy, kind="mosaics")
    assert len(lc) == 6
    np.testing.assert_allclose(lc["flux_jy"], light_curve(spec, products=dbp, kind="mosaics")["flux_jy"], rtol=1e-6)
    # an uncovered stored source on a measured image: a row with covered False when asked for
    con = sqlite3.connect(copy)
    con.execute("DELETE FROM photometry WHERE image_path = ? AND name = 'S0'", (str(v["images"][1]),))
    con.commit()
    con.close()
    full = light_curve(spec, products=copy, kind="mosaics", covered_only=False)
    assert len(full) == 6 and list(full["covered"]) == [True, False, True, True, True, True]
    assert len(light_curve(spec, products=copy, kind="mosaics")) == 5
