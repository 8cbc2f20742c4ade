"""Imaging one tile with real CASA tclean, scored against the simulator's truth.

One small-preset group centred on the 0834+555 transit with thermal noise but no gains and no RFI
(so DATA is what calibrated CORRECTED_DATA should be), converted by ``convert_group`` and imaged
once for the module.
"""
from __future__ import annotations

import json
import math
import os
import warnings

import numpy as np
import pytest

pytestmark = [pytest.mark.casa, pytest.mark.slow]

GROUP_START = "2025-10-29T13:54:51"  # 0834+555 crosses the meridian at the mid-time


@pytest.fixture(scope="module")
def tile(tmp_path_factory):
    from dsacont import load_truth, simulate
    from dsacont.config import get_paths
    from dsacont.convert import convert_group
    from dsacont.imaging import image_ms

    base = tmp_path_factory.mktemp("imaging")
    files = sorted(str(p) for p in simulate(base / "raw", GROUP_START, 5, preset="small", seed=11, rfi=False,
                                            noise=True, gains=False))
    paths = get_paths(root=base / "root").ensure()
    ms = convert_group(files, paths.ms / f"{GROUP_START}.ms", flag=False, paths=paths, progress=False)
    _corrected_equals_data(ms)  # no gains were simulated: the calibrated data are DATA
    with warnings.catch_warnings(record=True) as caught:  # checked by test_no_fits_warnings_while_imaging
        warnings.simplefilter("always")
        res = image_ms(ms, paths=paths, thermal_noise=True, imager="tclean")
    res["_warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    # the service records what a worker made (image_ms itself never touches a database)
    from dsacont.imaging.tclean import image_product
    from dsacont.service.state import record_products

    res["image_id"] = record_products(paths, {"images": [image_product(res)]})["images"][0]
    truth = load_truth(base / "raw", files[0])
    return res, truth, paths, str(ms)


def _corrected_equals_data(ms):
    from dsacont.io.ms import copy_column

    copy_column(str(ms), "DATA", "CORRECTED_DATA")


def _band_mean_flux(truth, k, freqs):
    s = truth["sources"]
    return float(np.mean(s["flux_jy"][k] * (freqs / 1.4e9) ** s["spectral_index"][k]))


def test_products_and_headers(tile):
    from astropy.io import fits
    from astropy.wcs import WCS

    res, _, paths, ms = tile
    for k in ("image", "pbcor", "pb", "residual", "qa_json"):
        assert os.path.exists(res[k]) and os.path.dirname(res[k]) == str(paths.images)
    # nothing left behind in tmp or as partial files
    assert not any(p.name.startswith("img-") for p in paths.tmp.iterdir())
    assert not any(p.name.startswith(".") for p in paths.images.iterdir())
    hdr = fits.getheader(res["pbcor"])
    for key in ("BMAJ", "BMIN", "BPA"):
        assert key in hdr
    assert 10.0 < hdr["BMAJ"] * 3600 < 200.0
    assert hdr["CTYPE3"].startswith("FREQ") and 1.3e9 < hdr["CRVAL3"] < 1.5e9
    assert hdr["CTYPE1"] == "RA---SIN" and hdr["CTYPE2"] == "DEC--SIN"
    # the coplanar-array w-term lives in the WCS: eta ~ -(projection of the array normal)
    assert -0.40 < hdr["PV2_2"] < -0.25
    w = WCS(hdr).celestial
    ra, dec = w.pixel_to_world_values(hdr["CRPIX1"] - 1, hdr["CRPIX2"] - 1)
    assert ra == pytest.approx(res["ra_deg"], abs=1e-6) and dec == pytest.approx(res["dec_deg"], abs=1e-6)
    qa = json.loads(open(res["qa_json"]).read())
    assert qa["qa"]["gridder"] == "standard"
    # the slant removes most of the w-term (small preset: 2.2 rad at the edge -> ~0.1 rad;
    # full array 10 rad -> 0.3 rad)
    assert qa["qa"]["wterm_phase_edge_rad"] < 0.5
    assert qa["qa"]["wterm_phase_edge_rad"] < 0.2 * qa["qa"]["wterm_phase_edge_no_slant_rad"]


def test_fits_headers_carry_ovro_without_warnings(tile, tmp_path):
    """Every FITS of a tile (and a mosaic of it) carries OVRO's true position and reads without
    any astropy warning (no FITSFixedWarning fix-ups, no truncated card)."""
    import warnings

    from astropy import units as u
    from astropy.coordinates import EarthLocation
    from astropy.io import fits
    from astropy.wcs import WCS

    from dsacont.imaging import read_fits_image
    from dsacont.imaging.mosaic import make_mosaic
    from dsacont.telescope import OVRO_HEIGHT_M, OVRO_LAT_RAD, OVRO_LON_RAD

    res, _, _, _ = tile
    ref = EarthLocation.from_geodetic(math.degrees(OVRO_LON_RAD) * u.deg, math.degrees(OVRO_LAT_RAD) * u.deg,
                                      OVRO_HEIGHT_M * u.m)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = make_mosaic([res], tmp_path / "one.fits", png=False)
        for f in [res[k] for k in ("image", "pb", "pbcor", "residual")] + [m["mosaic"], m["noise"]]:
            hdr = fits.getheader(f)
            WCS(hdr)
            read_fits_image(f)
            loc = EarthLocation.from_geocentric(hdr["OBSGEO-X"], hdr["OBSGEO-Y"], hdr["OBSGEO-Z"], unit=u.m)
            assert np.linalg.norm(u.Quantity(loc.geocentric).to_value(u.m) - u.Quantity(ref.geocentric).to_value(u.m)) < 1.0, f
            assert abs(loc.geodetic.height.to_value(u.m) - OVRO_HEIGHT_M) < 1.0, f
            assert "MJD-OBS" in hdr or f in (m["mosaic"], m["noise"])


def test_no_fits_warnings_while_imaging(tile):
    """Making a tile raises no astropy FITS fix-up or card-truncation warning."""
    res, _, _, _ = tile
    bad = [w for w in res["_warnings"] if w.startswith(("FITSFixedWarning", "VerifyWarning"))]
    assert not bad, bad


def test_calibrator_flux_and_position(tile):
    """0834+555 in the PB-corrected image: flux within 2 % of truth, position within 1/10 beam."""
    from dsacont.imaging import read_fits_image
    from dsacont.imaging.qa import fit_source

    res, truth, _, _ = tile
    s = truth["sources"]
    k = list(s["name"]).index("0834+555")
    expected = _band_mean_flux(truth, k, truth["freq_hz"])
    pbcor, hdr, w = read_fits_image(res["pbcor"])
    beam_px = res["qa"]["beam_px"]
    fit = fit_source(pbcor, w, s["ra_deg"][k], s["dec_deg"][k], beam_px=beam_px, box_px=int(3 * beam_px))
    assert fit["peak"] == pytest.approx(expected, rel=0.02)
    bmin_arcsec = res["beam"]["bmin_arcsec"]
    assert fit["offset_arcsec"] < 0.1 * bmin_arcsec
    # the QA's own catalogue check agrees
    cal = [c for c in res["qa"]["calibrators"] if c["name"] == "0834+555"][0]
    assert cal["ratio"] == pytest.approx(1.0, abs=0.02) and cal["offset_beams"] < 0.1


def test_noise_vs_radiometer(tile):
    """Tile noise within 1.3x the radiometer equation (Briggs factor and flags included).

    Stokes I: the robust RMS of the residual in the tile's main lobe (beam >= 0.5), with 0834+555
    (8.8 Jy) at the centre, its drifting-beam modulation flattened before tclean. Thermal: the RMS
    of the Stokes-Q dirty image (the simulated sky is unpolarised).
    """
    res, truth, _, _ = tile
    qa = res["qa"]
    # the radiometer figure is built from the simulator's SEFD and the MS's own counts
    assert qa["radiometer_natural_jy"] == pytest.approx(
        truth["noise_sigma_jy"] / math.sqrt(1128 * 24 * 128 * 2), rel=0.01)
    assert 1.0 < qa["weighting_factor"] < 2.0
    assert 0.8 < qa["noise_q_ratio"] < 1.3, qa
    # both ways: an estimator that under-reads the noise fails as surely as a noisy image
    assert 0.8 < qa["noise_ratio"] < 1.3 and qa["dynamic_range"] > 10000, qa
    assert qa["noise_region"] == "pb >= 0.5"


def test_bright_source_flattened_and_restored(tile):
    """0834+555's beam modulation was flattened with a fitted scale ~1 (the catalogue flux is the
    simulated one), 0824+558 (catalogued, but not in the simulated sky) was left alone, and
    CORRECTED_DATA holds the calibrated data again afterwards."""
    from dsacont.casa import ensure_casa

    res, _, _, ms = tile
    flat = {f["name"]: f for f in res["qa"]["flattened"]}
    assert set(flat) == {"0834+555"}
    assert flat["0834+555"]["scale"] == pytest.approx(1.0, abs=0.01)
    assert 0.8 * 8.8 < flat["0834+555"]["mean_apparent_jy"] < 8.8
    assert "0824+558" in {s["name"] for s in res["qa"]["flatten_skipped"]}
    tb = ensure_casa().table()
    tb.open(ms)
    try:
        assert "DSACONT_FLATTEN" not in tb.keywordnames()
        d, c = tb.getcol("DATA"), tb.getcol("CORRECTED_DATA")
    finally:
        tb.close()
    assert np.abs(c - d).max() < 1e-4 * np.abs(d).max()


def test_flatten_fits_the_flux_and_guards_interruptions(tile):
    """A catalogue flux 25 % too high is corrected by the fit; an interrupted write is detected
    (and cleared once CORRECTED_DATA is rewritten); unflatten restores the column."""
    from dsacont.calibration import SkySource
    from dsacont.calibrators import get_calibrator
    from dsacont.casa import ensure_casa
    from dsacont.imaging import flatten as F

    _, _, _, ms = tile
    cal = get_calibrator("0834+555")
    wrong = SkySource("0834+555", cal.ra_deg, cal.dec_deg, 1.25 * cal.flux_jy, cal.spectral_index)
    out = F.flatten_sources(ms, [wrong])
    assert out["sources"][0]["scale"] == pytest.approx(0.8, abs=0.01)
    assert F.flatten_state(ms)["state"] == "applied"
    # flattening again first undoes the recorded flattening (never applied twice)
    again = F.flatten_sources(ms, [wrong])
    assert again["sources"][0]["scale"] == pytest.approx(0.8, abs=0.01)
    F.unflatten(ms)
    assert F.flatten_state(ms) is None
    tb = ensure_casa().table()
    tb.open(ms, nomodify=False)
    try:
        d, c = tb.getcol("DATA"), tb.getcol("CORRECTED_DATA")
        assert np.abs(c - d).max() < 1e-4 * np.abs(d).max()
        tb.putkeyword("DSACONT_FLATTEN", '{"state": "applying", "column": "CORRECTED_DATA"}')
    finally:
        tb.close()
    with pytest.raises(F.FlattenInterrupted, match="applycal"):
        F.flatten_state(ms)
    F.clear_state(ms)
    assert F.flatten_state(ms) is None


def test_a_source_outside_the_image_is_subtracted_whole(tile):
    """A flattened source outside the image being made (20-30 min from the transit 0834+555 lies
    3 deg from the pointing, beyond a full-size tile's 2.6 deg half-width) is subtracted whole:
    nothing would deconvolve the constant flattening leaves. Its scale is still fitted; what is
    left of it in the data fits to nothing."""
    from dsacont.calibrators import get_calibrator
    from dsacont.imaging import flatten as F

    _, _, _, ms = tile
    cal = get_calibrator("0834+555")
    ra, dec = np.radians(cal.ra_deg), np.radians(cal.dec_deg)
    east = (ra + np.radians(3.0) / np.cos(dec), dec, np.radians(2.5))  # an image 3 deg east of it
    assert F.outside_image([cal], east) == {"0834+555"}
    assert F.outside_image([cal], (ra, dec, np.radians(0.1))) == set()
    assert F.outside_image([cal], None) == set()
    try:
        out = F.flatten_sources(ms, ["0834+555"], image_box=east)
        rec = out["sources"][0]
        assert rec["mode"] == "subtract" and rec["mean_apparent_jy"] == 0.0
        assert rec["scale"] == pytest.approx(1.0, abs=0.01)
        F.clear_state(ms)  # keep the data as subtracted, and fit the source again
        left = F.flatten_sources(ms, ["0834+555"])
        assert left["sources"] == [] and abs(left["skipped"][0]["scale"]) < 0.01, left
    finally:
        _corrected_equals_data(ms)  # no gains were simulated: the calibrated data are DATA
        F.clear_state(ms)


def test_flatten_auto_and_the_strip_models_bright_sources(tile):
    """``["auto", ...]`` flattens what 'auto' chooses (0834+555) and the given sources, e.g. the
    strip model's: a source as bright as a calibrator that no calibrator list names (the sky's
    brightest non-calibrator in the beam, from the simulator's truth, its flux 20 % off: the fit
    corrects it), while a copy of 0834+555 (the strip model holds the calibrator too) is not
    flattened twice, nor a second entry of that source (6" away, as the own tile's sources and the
    strip model's of one handed-over calibrator tile). ``bright_among`` keeps that source and drops
    one too faint in the beam."""
    from dsacont import calibration as C
    from dsacont.calibration import SkySource
    from dsacont.imaging import flatten as F
    from dsacont.telescope import airy_beam

    _, truth, _, ms = tile
    info = C.read_ms_info(ms)
    pdec = C.pointing_dec(info)
    src = truth["sources"]
    apparent = []
    for name, ra, dec, flux, alpha in zip(src["name"], src["ra_deg"], src["dec_deg"], src["flux_jy"],
                                          src["spectral_index"]):
        off = C.beam_offsets(np.radians(ra), np.radians(dec), pdec, [info.mid_mjd])[0]
        apparent.append((flux * airy_beam(off, 1.4e9), str(name), ra, dec, flux, alpha))
    others = sorted((a for a in apparent if a[1] != "0834+555"), key=lambda a: -a[0])
    app, name, ra, dec, flux, alpha = others[0]
    assert app > 0.1, others[:3]  # the small sky's brightest non-calibrator is flatten-worthy
    bright = SkySource(name, ra, dec, 1.2 * flux, alpha)
    faint = SkySource("faint", ra + 0.3, dec, 0.05, -0.7)
    dup = SkySource("0834+555 (strip)", 128.7287675 + 2e-3, 55.5725197, 8.0, -0.7)
    chosen = F.bright_among(info, [faint, bright, dup], pointing_dec_rad=pdec)
    assert [s.name for s in chosen] == [dup.name, bright.name]
    try:
        twin = SkySource(name + " (again)", ra + 3e-3, dec, flux, alpha)
        out = F.flatten_sources(ms, ["auto", *chosen, twin])
        names = [s["name"] for s in out["sources"]]
        # the copy is neither flattened nor tried (a joint fit with the calibrator would be degenerate)
        tried = names + [s["name"] for s in out.get("skipped") or []]
        assert names == ["0834+555", name] and {dup.name, twin.name}.isdisjoint(tried), (names, out.get("skipped"))
        scale = out["sources"][1]["scale"]
        assert scale == pytest.approx(1 / 1.2, abs=0.03), scale
    finally:
        F.unflatten(ms)
    assert F.flatten_state(ms) is None


def _reference_pointing_and_beam(truth, ra_rad, dec_rad):
    """An outside referee for the primary beam: astropy turns the simulator's fixed az/el into the
    ICRS pointing at each integration (no refraction), and the 4.65 m Airy pattern is written out
    here, (2 J1(x)/x)^2 with x = pi D sin(theta) / lambda, averaged over time and band."""
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time
    from scipy.special import j1

    loc = EarthLocation.from_geodetic(lon=-2.0644277991 * u.rad, lat=0.6498455107 * u.rad, height=1188.05 * u.m)
    t = Time(truth["time_jd"], format="jd", scale="utc")
    frame = AltAz(obstime=t, location=loc, pressure=0 * u.hPa)
    az = np.full(len(t), float(truth["pointing_az_rad"]))
    el = np.full(len(t), float(truth["pointing_el_rad"]))
    icrs = SkyCoord(az=az * u.rad, alt=el * u.rad, frame=frame).icrs
    sep = SkyCoord(ra=ra_rad * u.rad, dec=dec_rad * u.rad).separation(icrs).rad  # (Nt,)
    x = np.pi * 4.65 * np.sin(sep)[:, None] * np.asarray(truth["freq_hz"])[None, :] / 299792458.0
    beam = np.where(x > 0, (2 * j1(x) / np.where(x > 0, x, 1)) ** 2, 1.0)
    return icrs.ra.rad, icrs.dec.rad, float(beam.mean())


def test_two_stage_clean_masks_around_the_components(tile):
    """tclean cleans the whole tile down to 4 sigma, then only within a beam of the components
    found, down to 2.5 sigma: the mask is a small part of the tile."""
    res = tile[0]
    q = res["qa"]
    assert q["clean_mask_nsigma"] == 4.0
    assert 0 < q["clean_mask_px"] < 0.2 * res["imsize"] ** 2, q["clean_mask_px"]


def test_bright_in_tile_finds_the_bright_sources_nothing_flattened(tile):
    """The tile's own peaks above 0.1 Jy apparent: the flattened calibrator is left out, and every
    other one is a true source (a second imaging pass flattens these)."""
    from astropy.coordinates import SkyCoord

    from dsacont.imaging.flatten import bright_in_tile

    res, truth, _, _ = tile
    flat = [f for f in res["qa"]["flattened"] if f["name"] == "0834+555"]
    assert flat
    cal = SkyCoord(flat[0]["ra_deg"], flat[0]["dec_deg"], unit="deg")
    every = bright_in_tile(res["image"], res["pb"], (), min_apparent_jy=0.1)
    new = bright_in_tile(res["image"], res["pb"], flat, min_apparent_jy=0.1)
    pos = lambda ss: SkyCoord([s.ra_deg for s in ss], [s.dec_deg for s in ss], unit="deg")  # noqa: E731
    assert pos(every).separation(cal).arcsec.min() < 30.0  # the calibrator itself, unless flattened
    assert len(new) == len(every) - 1 and (not new or pos(new).separation(cal).arcsec.min() > 180.0)
    src = truth["sources"]
    bright = src["flux_jy"] >= 0.1
    ref = SkyCoord(src["ra_deg"][bright], src["dec_deg"][bright], unit="deg")
    for s in new:
        sep = SkyCoord(s.ra_deg, s.dec_deg, unit="deg").separation(ref).arcsec
        assert sep.min() < 30.0, (s, sep.min())


def test_component_mask_is_a_disk_around_each_component():
    from dsacont.imaging.tile import component_mask

    model = np.zeros((50, 60))
    model[10, 20], model[40, 50] = 0.5, -0.1  # negative components are components too
    mask = component_mask(model, 3.0)
    assert mask.shape == model.shape and mask.dtype == bool
    assert mask[10, 20] and mask[13, 20] and mask[10, 17] and mask[12, 22] and mask[40, 50]
    assert not mask[14, 20] and not mask[13, 23] and not mask[25, 35]
    assert mask.sum() == 2 * 29  # the lattice points of a disk of radius 3
    assert not component_mask(np.zeros((5, 5)), 2.0).any()


def test_primary_beam(tile):
    """CASA's .pb from our vptable is the 4.65 m Airy beam; our pb is its drift/band average, checked
    against an independent evaluation (astropy's frames, the Airy formula written out here)."""
    from dsacont.imaging import pointing_track, read_fits_image
    from dsacont.telescope import airy_beam, angular_separation

    res, truth, _, _ = tile
    qa = res["qa"]
    assert qa["casa_pb_max_abs_diff"] < 0.01
    # the drift over 5 minutes lowers the tile-centre response by ~1.5 %
    assert 0.97 < qa["pb_drift_band_vs_casa_centre"] < 0.995
    pb, hdr, w = read_fits_image(res["pb"])
    ny, nx = pb.shape
    # the pointing track is the simulator's fixed az/el (HADEC(0, dec)), to arcseconds: a frame
    # error (J2000 vs apparent: 0.09 deg of precession since 2000) would be 300" off
    t = truth["time_jd"] - 2400000.5
    pra, pdec = pointing_track(math.radians(res["ra_deg"]), math.radians(res["dec_deg"]),
                               0.5 * (res["start_mjd"] + res["end_mjd"]), t)
    ref_ra, ref_dec, _ = _reference_pointing_and_beam(truth, 0.0, 0.0)
    off = np.degrees(angular_separation(pra, pdec, ref_ra, ref_dec)) * 3600
    assert off.max() < 10.0, off
    for (x, y) in [(nx // 2, ny // 2), (nx // 5, ny // 3), (4 * nx // 5, 2 * ny // 3), (nx // 10, ny // 2)]:
        ra, dec = w.pixel_to_world_values(x, y)
        _, _, direct = _reference_pointing_and_beam(truth, np.radians(ra), np.radians(dec))
        assert pb[y, x] == pytest.approx(direct, abs=2e-3), (x, y)
    # and it is not the single-pointing beam at the image frequency (1 at the centre)
    ra, dec = w.pixel_to_world_values(nx // 2, ny // 2)
    single = airy_beam(angular_separation(math.radians(res["ra_deg"]), math.radians(res["dec_deg"]),
                                          math.radians(ra), math.radians(dec)), res["freq_hz"])
    assert single - pb[ny // 2, nx // 2] > 0.005


def test_field_sources_completeness(tile):
    """Sources expected above 10 sigma in the tile are found, at the right places."""
    from dsacont.imaging import read_fits_image
    from dsacont.imaging.qa import completeness, find_sources

    res, truth, _, _ = tile
    img, hdr, w = read_fits_image(res["image"])
    pb, _, _ = read_fits_image(res["pb"])
    noise = res["qa"]["noise_jy"]
    found = find_sources(img, w, noise, nsigma=5.0, beam_px=res["qa"]["beam_px"], pb=pb, pb_min=0.2)
    s = truth["sources"]
    x, y = w.world_to_pixel_values(s["ra_deg"], s["dec_deg"])
    ny, nx = img.shape
    inside = (x > 5) & (x < nx - 6) & (y > 5) & (y < ny - 6)
    a = np.zeros(len(x))
    a[inside] = pb[np.round(y[inside]).astype(int), np.round(x[inside]).astype(int)]
    flux = s["flux_jy"] * (res["freq_hz"] / 1.4e9) ** s["spectral_index"]
    exp_snr = np.where(inside & (a >= 0.2), flux * a / noise, 0.0)
    c = completeness(found, s["ra_deg"], s["dec_deg"], exp_snr, snr_min=10.0,
                     match_arcsec=res["beam"]["bmaj_arcsec"])
    assert c["n_expected"] >= 10
    assert c["completeness"] >= 0.9, c
    assert c["median_offset_arcsec"] < 0.2 * res["beam"]["bmin_arcsec"]


def test_registered(tile):
    from dsacont.service.products import Products

    res, _, paths, ms = tile
    row = Products(paths.products_db).get("image", res["image_id"])
    assert row["path"] == res["pbcor"] and row["ms_path"] == ms
    assert row["qa"]["noise_jy"] == pytest.approx(res["qa"]["noise_jy"])
    assert row["start_mjd"] < row["end_mjd"]


def test_bad_inputs(tmp_path, tile):
    from dsacont.errors import BadInputError
    from dsacont.imaging import image_ms

    with pytest.raises(BadInputError, match="not a Measurement Set"):
        image_ms(tmp_path / "nope.ms", tmp_path)
    import shutil

    from dsacont.casa import ensure_casa

    _, _, _, ms = tile
    raw = tmp_path / "uncalibrated.ms"
    shutil.copytree(ms, raw)
    tb = ensure_casa().table()
    tb.open(str(raw), nomodify=False)
    try:
        tb.removecols("CORRECTED_DATA")
    finally:
        tb.close()
    with pytest.raises(BadInputError, match="CORRECTED_DATA"):
        image_ms(raw, tmp_path, datacolumn="corrected")


@pytest.fixture(scope="module")
def second_tile(tile, tmp_path_factory):
    """The next 5-minute group (0834+555 ~0.7 deg from its centre), imaged the same way."""
    from dsacont import load_truth, simulate
    from dsacont.convert import convert_group

    _, _, paths, _ = tile
    base = tmp_path_factory.mktemp("imaging2")
    start = "2025-10-29T14:00:00"  # the next group: 13:54:51 + 309.24 s
    files = sorted(str(p) for p in simulate(base / "raw", start, 5, preset="small", seed=11, rfi=False,
                                            noise=True, gains=False))
    ms = convert_group(files, paths.ms / "second.ms", flag=False, paths=paths, progress=False)
    _corrected_equals_data(ms)
    # `dsacont image` itself: the files, then the image recorded in the products database
    from dsacont.cli import main
    from dsacont.service.products import Products

    assert main(["image", str(ms), "--root", str(paths.state.parent)]) == 0
    res = json.loads((paths.images / "second.qa.json").read_text())
    row = Products(paths.products_db).get("image", res["pbcor"])
    assert row is not None and row["ms_path"] == str(ms) and row["status"] == "imaged"
    return res, load_truth(base / "raw", files[0])


def test_mosaic_of_real_tiles(tile, second_tile, tmp_path):
    """Two real tclean tiles: the calibrator's mosaic flux within 2 % of truth, position < 0.1 beam."""
    from dsacont.imaging.mosaic import make_mosaic

    res1, truth, paths, _ = tile
    res2, _ = second_tile
    m = make_mosaic([res1, res2], paths.mosaics / "two.fits")
    from dsacont.imaging.mosaic import mosaic_product
    from dsacont.service.state import record_products

    m["mosaic_id"] = record_products(paths, {"mosaics": [mosaic_product(m)]})["mosaics"][0]
    s = truth["sources"]
    k = list(s["name"]).index("0834+555")
    expected = _band_mean_flux(truth, k, truth["freq_hz"])
    cal = [c for c in m["qa"]["calibrators"] if c["name"] == "0834+555"][0]
    assert cal["flux_jy"] == pytest.approx(expected, rel=0.02)
    assert cal["offset_beams"] < 0.1
    # best mosaic noise: the quieter tile's noise over its drift-averaged beam peak (~0.985),
    # slightly improved by the other tile
    assert m["qa"]["noise_min_jy"] < min(res1["qa"]["noise_jy"], res2["qa"]["noise_jy"]) / 0.97
    assert m["qa"]["snr_map_rms"] < 1.5
    from dsacont.service.products import Products

    row = Products(paths.products_db).get("mosaic", m["mosaic_id"])
    assert sorted(row["images"]) == sorted([res1["pbcor"], res2["pbcor"]])


# --- WSClean: the same tile, the same files, the same grid -------------------------------------

@pytest.fixture(scope="module")
def wsclean_tile(tile, tmp_path_factory):
    """The transit tile imaged by WSClean (the same MS as ``tile``'s tclean image)."""
    from dsacont.imaging import image_ms, wsclean_binary

    if wsclean_binary() is None:
        pytest.skip("no wsclean program (apt-get install wsclean; .ci/run installs it)")
    _, _, paths, ms = tile
    out = tmp_path_factory.mktemp("wsclean-images")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        res = image_ms(ms, out, paths=paths, imager="wsclean", thermal_noise=True)
    res["_warnings"] = [f"{w.category.__name__}: {w.message}" for w in caught]
    return res


def test_wsclean_calibrator_flux_and_grid(tile, wsclean_tile):
    """WSClean's tile: 0834+555 within 2 % of truth and 0.1 beam, noise near the radiometer figure,
    and the pixel grid and header of tclean's tile (the same slant SIN projection)."""
    from astropy.io import fits

    from dsacont.imaging import read_fits_image
    from dsacont.imaging.qa import fit_source

    res_t, truth, paths, _ = tile
    res = wsclean_tile
    assert res["imager"] == "wsclean" and res["gridder"] == "2d" and res["qa"]["imager"] == "wsclean"
    assert not [w for w in res["_warnings"] if "FITS" in w or "WCS" in w], res["_warnings"]
    s = truth["sources"]
    k = list(s["name"]).index("0834+555")
    expected = _band_mean_flux(truth, k, truth["freq_hz"])
    pbcor, _, w = read_fits_image(res["pbcor"])
    bpx = res["qa"]["beam_px"]
    fit = fit_source(pbcor, w, s["ra_deg"][k], s["dec_deg"][k], beam_px=bpx, box_px=int(3 * bpx))
    assert fit["peak"] == pytest.approx(expected, rel=0.02)
    assert fit["offset_arcsec"] < 0.1 * res["beam"]["bmin_arcsec"]
    cal = [c for c in res["qa"]["calibrators"] if c["name"] == "0834+555"][0]
    assert cal["ratio"] == pytest.approx(1.0, abs=0.02) and cal["offset_beams"] < 0.1
    qa = res["qa"]
    assert 0.85 < qa["noise_ratio"] < 1.3 and 0.85 < qa["noise_q_ratio"] < 1.2, qa
    assert qa["flattened"] and qa["iterations"] > 100 and qa["major_cycles"] >= 2
    # the small preset's 1.46 MHz channels already smear 0.6 % at the field edge: nothing averaged
    assert qa["channel_bin"] == 1 and 0.002 < qa["smearing_loss_edge"] < 0.01, qa
    # baseline-dependent time averaging ('auto'): within its 1 % budget at the field edge
    assert qa["baseline_averaging_wl"] >= 0 and 0 <= qa["time_smearing_loss_edge"] <= 0.01, qa
    # the restoring beam is fitted to the PSF as tclean fits its own: within 5 %
    for key in ("bmaj_arcsec", "bmin_arcsec"):
        assert res["beam"][key] == pytest.approx(res_t["beam"][key], rel=0.05)
    # the same pixel grid and header layout as tclean's image, for every product
    for kind in ("image", "residual", "pb", "pbcor"):
        ht, hw = fits.getheader(res_t[kind]), fits.getheader(res[kind])
        for key in ("NAXIS", "NAXIS1", "NAXIS2", "NAXIS3", "NAXIS4", "CTYPE1", "CTYPE2", "CTYPE3", "CTYPE4",
                    "CRPIX1", "CRPIX2", "RADESYS", "OBSGEO-X", "OBSGEO-B"):
            assert hw[key] == ht[key], (kind, key)
        # CASA's exportfits leaves the residual's BUNIT empty; WSClean's residual says Jy/beam
        assert hw["BUNIT"] == ht["BUNIT"] or (kind == "residual" and hw["BUNIT"] == "Jy/beam"), kind
        for key in ("CDELT1", "CDELT2", "CRVAL1", "CRVAL2", "MJD-OBS"):
            assert hw[key] == pytest.approx(ht[key], rel=1e-9, abs=1e-9), (kind, key)
        assert hw["CRVAL3"] == pytest.approx(ht["CRVAL3"], rel=1e-3)
        # the same 2-D gridding with the w-plane as a slant SIN projection
        assert hw["PV2_1"] == pytest.approx(ht["PV2_1"], abs=1e-9) and hw["PV2_2"] == pytest.approx(ht["PV2_2"])
    # the products sit where tclean's do, nothing left behind
    names = {os.path.basename(res[k]) for k in ("image", "residual", "pb", "pbcor", "qa_json")}
    assert names == {os.path.basename(res_t[k]) for k in ("image", "residual", "pb", "pbcor", "qa_json")}
    assert not any(p.name.startswith("wsc-") for p in paths.tmp.iterdir())
    # the MS holds the calibrated data again after flattening (no record left: not 'applied')
    from dsacont.imaging.flatten import flatten_state

    assert flatten_state(res["ms"]) is None


def test_wsclean_on_channel_averaged_copy(tile, wsclean_tile, tmp_path):
    """average_channels=2: WSClean images a scratch copy with pairs of channels averaged; 0834+555
    as in the unaveraged tile (within 1 %; the smearing at the centre is nil), the calibrated MS
    untouched (flattening happens in the copy) and the copy gone afterwards."""
    from dsacont.imaging import image_ms
    from dsacont.imaging.flatten import flatten_state
    from dsacont.io.ms import table

    _, truth, paths, ms = tile
    with table(ms) as tb:
        before = tb.getcol("CORRECTED_DATA", 0, 5000)
    res = image_ms(ms, tmp_path / "avg", paths=paths, imager="wsclean", threads=2, average_channels=2)
    qa = res["qa"]
    assert qa["channel_bin"] == 2 and qa["smearing_loss_edge"] > wsclean_tile["qa"]["smearing_loss_edge"]
    assert res["timing"]["average_s"] > 0 and qa["flattened"]
    cal = [c for c in qa["calibrators"] if c["name"] == "0834+555"][0]
    ref = [c for c in wsclean_tile["qa"]["calibrators"] if c["name"] == "0834+555"][0]
    assert cal["ratio"] == pytest.approx(ref["ratio"], abs=0.01) and cal["offset_beams"] < 0.1, (cal, ref)
    assert 0.85 < qa["noise_ratio"] < 1.3, qa
    with table(ms) as tb:
        np.testing.assert_array_equal(tb.getcol("CORRECTED_DATA", 0, 5000), before)
    assert flatten_state(ms) is None
    assert not any(p.name.startswith("wsc-") for p in paths.tmp.iterdir())
    with pytest.raises(ValueError, match="does not divide"):
        image_ms(ms, tmp_path / "bad", paths=paths, imager="wsclean", average_channels=3)


def test_channel_averaged_copy_is_what_mstransform_writes(tile, tmp_path, caplog):
    """dsacont's run-wise channel averaging against CASA's mstransform on the same MS, flags set in
    it: every main column (rows matched by time, window and baseline) and the averaged
    SPECTRAL_WINDOW identical (WEIGHT and SIGMA to float32 rounding).
    An MS in another row order (mstransform's own output: window-major) is handed to mstransform."""
    import logging
    import shutil

    from dsacont.io import ms as msio
    from dsacont.io.ms_average import average_channels

    _, _, _, tile_ms = tile
    ms = str(tmp_path / "src.ms")
    shutil.copytree(tile_ms, ms)
    with msio.table(ms, readonly=False) as tb:  # flags: scattered, and whole bins of 2
        n = 20000
        flag = np.asarray(tb.getcol("FLAG", 0, n))
        flag |= np.random.default_rng(4).random(flag.shape) < 0.2
        flag[:, 2:4, :500] = True
        tb.putcol("FLAG", flag, 0, n)
    ours, casa = tmp_path / "ours.ms", tmp_path / "casa.ms"
    average_channels(ms, ours, 2)
    mt = msio._ct().mstransformer()
    try:
        mt.config({"inputms": ms, "outputms": str(casa), "datacolumn": "corrected", "chanaverage": True, "chanbin": 2})
        mt.open()
        mt.run()
    finally:
        mt.done()

    def rows(path):
        with msio.table(str(path)) as tb:
            cols = {c: np.asarray(tb.getcol(c)) for c in ("TIME", "DATA_DESC_ID", "ANTENNA1", "ANTENNA2", "DATA", "FLAG",
                                                          "WEIGHT", "SIGMA", "UVW", "FIELD_ID", "INTERVAL", "SCAN_NUMBER")}
        order = np.lexsort((cols["ANTENNA2"], cols["ANTENNA1"], cols["DATA_DESC_ID"], cols["TIME"]))
        return {k: v[..., order] for k, v in cols.items()}

    a, b = rows(ours), rows(casa)
    assert a["FLAG"].any() and not a["FLAG"].all()
    for key in a:  # the weights to float32 rounding (the order of mstransform's sums is its own)
        if key in ("WEIGHT", "SIGMA"):
            np.testing.assert_allclose(a[key], b[key], rtol=1e-6, err_msg=key)
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    with msio.table(str(ours), "SPECTRAL_WINDOW") as x, msio.table(str(casa), "SPECTRAL_WINDOW") as y:
        for col in ("CHAN_FREQ", "CHAN_WIDTH", "EFFECTIVE_BW", "RESOLUTION", "TOTAL_BANDWIDTH", "REF_FREQUENCY", "NUM_CHAN"):
            np.testing.assert_array_equal(x.getcol(col), y.getcol(col), err_msg=col)
    # WSClean's integration estimate holds for dsacont's order, not for mstransform's
    from dsacont.imaging.wsclean import wsclean_integration_scale

    interval = float(np.median(a["INTERVAL"]))
    assert wsclean_integration_scale(ours, interval) == pytest.approx(1.0, rel=1e-6)
    assert wsclean_integration_scale(casa, interval) < 0.5
    with caplog.at_level(logging.INFO, logger="dsacont.io.ms_average"):
        average_channels(casa, tmp_path / "again.ms", 2, datacolumn="data")
    assert any("not in dsacont's order" in r.getMessage() for r in caplog.records)
    assert msio.read_ms_info(str(tmp_path / "again.ms")).spw_freqs[0].size * 4 == msio.read_ms_info(ms).spw_freqs[0].size


def test_wsclean_baseline_averaging_is_what_wsclean_does(tile, wsclean_tile, tmp_path):
    """baseline_averaging: WSClean's own log says how many rows its averaging left; that must be the
    fraction dsacont's model of it predicts from the MS's baselines (WSClean's own rule and its
    integration estimate, :func:`wsclean_integration_scale`), and 0834+555 at the phase centre,
    where time averaging smears nothing, keeps its flux (within 1 % of the unaveraged tile)."""
    import re

    from dsacont.imaging import image_ms
    from dsacont.imaging.geometry import averaging_factors
    from dsacont.io.ms import read_ms_info, table

    _, _, paths, ms = tile
    info = read_ms_info(ms)
    with table(ms) as tb:
        cross = np.asarray(tb.getcol("ANTENNA1")) != np.asarray(tb.getcol("ANTENNA2"))  # WSClean reads no autos
        uvw = np.asarray(tb.getcol("UVW"))[:, cross]
        ddid = np.asarray(tb.getcol("DATA_DESC_ID"))[cross]
    fmax = np.array([np.max(f) for f in info.spw_freqs])[np.asarray(info.ddid_spw)[ddid]]
    length = np.sqrt((uvw ** 2).sum(axis=0)) * fmax / 299792458.0
    ntimes = len(np.unique(info.times_s))
    turn = 2 * math.pi / 86400 * info.interval_s * length.max()  # the longest baseline's, wavelengths
    x = 0.5 * turn
    n = averaging_factors(length, info.interval_s, x, ntimes=ntimes)
    want = float(np.mean(np.ceil(ntimes / n) / ntimes))  # rows left per row read
    res = image_ms(ms, tmp_path / "bda", paths=paths, imager="wsclean", threads=2, baseline_averaging=x,
                   keep_casa=True)
    log = (tmp_path / "bda" / f"{res['name']}.wsclean" / "wsclean.log").read_text()
    got = float(re.search(r"reduced the number of rows to ([0-9.]+)%", log).group(1)) / 100
    assert got == pytest.approx(want, abs=0.003), (got, want)
    assert re.search(r"Averaging factor for longest baseline: 1 x", log), log[-2000:]
    qa = res["qa"]
    assert qa["baseline_averaging_wl"] == pytest.approx(x, rel=1e-3) and 0 < qa["time_smearing_loss_edge"] < 0.05
    cal = [c for c in qa["calibrators"] if c["name"] == "0834+555"][0]
    ref = [c for c in wsclean_tile["qa"]["calibrators"] if c["name"] == "0834+555"][0]
    assert cal["ratio"] == pytest.approx(ref["ratio"], abs=0.01), (cal, ref)
    assert 0.85 < qa["noise_ratio"] < 1.3, qa


def test_fallback_to_tclean_without_wsclean(tile, tmp_path, monkeypatch, caplog):
    """imager='wsclean' with no wsclean program on PATH: tclean's tile, and one log line saying so."""
    import logging

    from dsacont.imaging import image_ms
    from dsacont.imaging import imager as imager_mod

    _, _, paths, ms = tile
    monkeypatch.setenv("PATH", str(tmp_path))  # no wsclean here
    monkeypatch.delenv("DSACONT_WSCLEAN", raising=False)
    monkeypatch.setattr(imager_mod, "_warned", set())
    with caplog.at_level(logging.WARNING, logger="dsacont.imaging.imager"):
        res = image_ms(ms, tmp_path / "out", paths=paths, imager="wsclean", fov_deg=1.0, niter=0,
                       calibrators=None, flatten=None, threads=2)
        assert imager_mod.choose_imager("wsclean") == "tclean"
    assert res["imager"] == "tclean" and res["gridder"] == "standard"
    assert os.path.exists(res["pbcor"])
    lines = [r.getMessage() for r in caplog.records if "no wsclean program" in r.getMessage()]
    assert len(lines) == 1 and "tclean" in lines[0] and "apt-get install wsclean" in lines[0]
    with pytest.raises(ValueError, match="imager must be one of"):
        image_ms(ms, tmp_path / "out", imager="casa")


def test_uv_sample_fringe_rates_are_the_earths_turn(tile):
    """inspect_ms's per-sample (du, dv), from each baseline's UVW one integration later, against the
    rotation of the baseline under the phase centre (Thompson, Moran & Swenson):
    dv/dt = omega u sin(dec), du/dt = omega (w cos(dec) - v sin(dec)), w from the fitted plane."""
    from dsacont.imaging.tile import inspect_ms

    _, _, _, ms = tile
    info = inspect_ms(ms)
    dec = info["phase_dirs"][0][1]
    omega = 7.2921159e-5
    u, v = info["uv_u"], info["uv_v"]
    a, b = info["w_plane"]
    long_ = np.hypot(u, v) > 0.3 * np.hypot(u, v).max()  # well-measured rates
    np.testing.assert_allclose(info["uv_dv"][long_], omega * u[long_] * np.sin(dec),
                               rtol=0.02, atol=0.02 * np.abs(omega * u).max())
    np.testing.assert_allclose(info["uv_du"][long_], omega * ((a * u + b * v) * np.cos(dec) - v * np.sin(dec))[long_],
                               rtol=0.02, atol=0.02 * np.abs(info["uv_du"]).max())
    # the baseline's length at its window's top frequency is at least its uv distance here
    assert np.all(info["uv_len"] >= 0.999 * np.hypot(u, v))
