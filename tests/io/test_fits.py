"""dsacont.io.fits: CASA's exported headers corrected (OBSGEO, MJD-OBS), no astropy fix-ups or truncation.

CASA's exportfits writes OBSGEO-X/Y/Z as the site's height turned into a geocentric vector
(|r| = 1188 m), which astropy reads as OBSGEO-H = -6377 km, and leaves MJD-OBS out; astropy then
"fixes" both with a FITSFixedWarning on every read. The files dsacont writes carry the array
centre of :mod:`dsacont.telescope` instead, and read without a warning.
"""
from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from astropy import units as u
from astropy.coordinates import EarthLocation
from astropy.io import fits
from astropy.wcs import WCS

from dsacont.io.fits import (
    beam_from_header,
    finish_casa_export,
    freq_from_header,
    geocentric_to_geodetic_iau1976,
    observatory_cards,
    read_fits_image,
    set_standard_cards,
    write_image,
    write_like,
)
from dsacont.telescope import OVRO_HEIGHT_M, OVRO_LAT_RAD, OVRO_LON_RAD


def assert_ovro_obsgeo(hdr):
    """OBSGEO-X/Y/Z is the array centre of dsacont.telescope (geodetic round trip within 1 m)."""
    loc = EarthLocation.from_geocentric(hdr["OBSGEO-X"], hdr["OBSGEO-Y"], hdr["OBSGEO-Z"], unit=u.m)
    lon, lat, height = loc.to_geodetic("WGS84")
    assert abs(height.to_value(u.m) - OVRO_HEIGHT_M) < 1.0
    # 1 m on the ground is ~1.6e-7 rad
    assert abs(lat.to_value(u.rad) - OVRO_LAT_RAD) < 1.6e-7
    assert abs(lon.to_value(u.rad) - OVRO_LON_RAD) < 1.6e-7
    # and the geodetic triplet (IAU 1976 ellipsoid, FITS WCS Paper VII) is the same place
    assert hdr["OBSGEO-L"] == pytest.approx(math.degrees(OVRO_LON_RAD), abs=1e-6)
    assert hdr["OBSGEO-B"] == pytest.approx(math.degrees(OVRO_LAT_RAD), abs=1e-5)
    assert abs(hdr["OBSGEO-H"] - OVRO_HEIGHT_M) < 5.0  # the IAU 1976 ellipsoid is 3 m above WGS84's here


def _read_strictly(path):
    """Read a FITS and its WCS the way a user does, with every warning an error."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        data, hdr, w = read_fits_image(path)
        WCS(hdr)  # all axes, as a user would
        fits.open(path).close()
    return data, hdr, w


def test_geodetic_iau1976_matches_wcslib():
    """The geodetic triplet agrees with the geocentric one in wcslib's own check (< 1 m apart)."""
    cards = {k: v for k, v, _ in observatory_cards()}
    lon, lat, h = geocentric_to_geodetic_iau1976(cards["OBSGEO-X"], cards["OBSGEO-Y"], cards["OBSGEO-Z"])
    a, f = 6378140.0, 1.0 / 298.2577
    e2 = (2 - f) * f
    n = a / math.sqrt(1 - e2 * math.sin(math.radians(lat)) ** 2)
    xyz = np.array([(n + h) * math.cos(math.radians(lat)) * math.cos(math.radians(lon)),
                    (n + h) * math.cos(math.radians(lat)) * math.sin(math.radians(lon)),
                    (n * (1 - e2) + h) * math.sin(math.radians(lat))])
    assert np.abs(xyz - [cards["OBSGEO-X"], cards["OBSGEO-Y"], cards["OBSGEO-Z"]]).max() < 1e-3
    hdr = fits.Header()
    hdr["CTYPE1"], hdr["CTYPE2"] = "RA---SIN", "DEC--SIN"
    set_standard_cards(hdr)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        WCS(hdr)
    assert_ovro_obsgeo(hdr)


@pytest.mark.casa
def test_casa_export_is_corrected(tmp_path):
    from dsacont.casa import casatasks, ensure_casa

    ct = ensure_casa()
    ia = ct.image()
    im = str(tmp_path / "t.im")
    ia.fromshape(im, [32, 32, 1, 1], overwrite=True)
    cs = ia.coordsys()
    cs.settelescope("OVRO_MMA")
    cs.setreferencevalue([2.2467, 0.9699, 1, 1.4e9])
    cs.setepoch(ct.measures().epoch("utc", "2025-10-29T13:55:26"))
    ia.setcoordsys(cs.torecord())
    ia.setrestoringbeam(major="40arcsec", minor="30arcsec", pa="10deg")
    ia.close()
    path = str(tmp_path / "t.fits")
    casatasks().exportfits(imagename=im, fitsimage=path, overwrite=True)
    raw = fits.getheader(path)
    # CASA's bogus position (the bug this guards against): 1.2 km from the Earth's centre
    assert np.hypot(np.hypot(raw["OBSGEO-X"], raw["OBSGEO-Y"]), raw["OBSGEO-Z"]) < 1e4
    finish_casa_export(path, slant=(0.01, -0.33))
    data, hdr, w = _read_strictly(path)
    assert_ovro_obsgeo(hdr)
    assert hdr["MJD-OBS"] == pytest.approx(60977.580162, abs=1e-6)
    assert hdr["PV2_1"] == 0.01 and hdr["PV2_2"] == -0.33
    assert beam_from_header(hdr)["bmaj_arcsec"] == pytest.approx(40.0)
    assert freq_from_header(hdr) == 1.4e9
    # a product written like it keeps its axes and cards, without warnings
    out = str(tmp_path / "pb.fits")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_like(path, out, np.ones((32, 32)), bunit="",
                   extra={"PBTYPE": ("AIRY-DRIFT", "Airy 4.65 m, averaged over tile time and band")})
    pb, phdr, _ = _read_strictly(out)
    assert fits.getdata(out).shape == (1, 1, 32, 32) and phdr["BUNIT"] == "" and pb.shape == (32, 32)
    assert_ovro_obsgeo(phdr)


def test_write_image_long_values(tmp_path):
    """Long string values go to CONTINUE cards, not truncated (no VerifyWarning)."""
    hdr = WCS(naxis=2).to_header()
    hdr["TILE000"] = "x" * 120 + ".image.fits"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        write_image(tmp_path / "m.fits", np.zeros((4, 4)), hdr)
    _, h, _ = _read_strictly(tmp_path / "m.fits")
    assert h["TILE000"] == "x" * 120 + ".image.fits"
    assert_ovro_obsgeo(h)
