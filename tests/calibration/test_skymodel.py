"""Sky models from catalogue files: the shipped NVSS subset and files in survey column layouts."""
from __future__ import annotations

import numpy as np
import pytest
from astropy.table import Table

from dsacont.calibration.skymodel import SkySource, nvss_catalogue, read_catalogue, sources_near
from dsacont.errors import BadInputError


def test_shipped_nvss_subset():
    cat = nvss_catalogue()
    assert len(cat) == 3777  # the shared data README's count
    assert all(50 <= s.dec_deg <= 61 for s in cat)
    # 0824+558 as the data README quotes it: J082447.3+555242, 1.466 Jy
    s = {x.name: x for x in cat}["J082447.3+555242"]
    assert s.flux_jy == pytest.approx(1.466, abs=0.001) and s.ref_freq_hz == 1.4e9
    assert s.ra_deg == pytest.approx(15 * (8 + 24 / 60 + 47.3 / 3600), abs=0.1 / 3600 * 15)
    assert s.dec_deg == pytest.approx(55 + 52 / 60 + 42 / 3600, abs=1.5 / 3600)
    # within 2 deg of the pointing at the 0834+555 transit (0834+555 itself, extended, is not in
    # the compact subset): 0824+558, 1.46 deg away, is the brightest
    near = sources_near(cat, 128.72877, 55.5725, 2.0)
    assert near[0].name == "J082447.3+555242" and len(near) >= 3
    assert [x.flux_jy for x in near] == sorted((x.flux_jy for x in near), reverse=True)


def _nvss_rows():
    # (NVSS name, RA 'h m s', Dec 'd m s', S1.4 mJy, MajAxis", MinAxis", PA deg) as VizieR VIII/65 prints them
    return [("082447+555242", "08 24 47.27", "+55 52 42.5", 1465.6, 7.3, 6.1, -1.0),
            ("083112+554533", "08 31 12.10", "+55 45 33.0", 120.4, 0.0, 0.0, 0.0),
            ("084002+560010", "08 40 02.55", "+56 00 10.9", 35.2, 20.0, 10.0, 45.0)]


def test_catalogue_in_nvss_layout_sexagesimal(tmp_path):
    rows = _nvss_rows()
    t = Table(rows=rows, names=("NVSS", "RAJ2000", "DEJ2000", "S1.4", "MajAxis", "MinAxis", "PA"))
    path = tmp_path / "nvss.csv"
    t.write(path, format="ascii.csv")
    cat = read_catalogue(path)
    assert [s.name for s in cat] == [r[0] for r in rows]
    s = cat[0]
    assert s.ra_deg == pytest.approx(15 * (8 + 24 / 60 + 47.27 / 3600), abs=1e-6)
    assert s.dec_deg == pytest.approx(55 + 52 / 60 + 42.5 / 3600, abs=1e-6)
    assert s.flux_jy == pytest.approx(1.4656) and s.major_arcsec == 7.3 and s.pa_deg == -1.0
    assert s.flux_at(1.4e9 * 2) == pytest.approx(1.4656 * 2 ** -0.7)
    # a flux floor
    assert [x.name for x in read_catalogue(path, min_flux_jy=0.1)] == ["082447+555242", "083112+554533"]


def test_catalogue_fits_with_units_and_spectral_index(tmp_path):
    import astropy.units as u

    t = Table()
    t["Source_name"] = ["a", "b"]
    t["RA"] = [126.196968, 130.0] * u.deg
    t["DEC"] = [55.878463, 56.0] * u.deg
    t["Total_flux"] = [1.5, 0.2] * u.Jy  # a unit in the file wins over the mJy default
    t["alpha"] = [-0.3, np.nan]
    path = tmp_path / "cat.fits"
    t.write(path)
    cat = read_catalogue(path, ref_freq_hz=3.0e9)
    assert [s.flux_jy for s in cat] == pytest.approx([1.5, 0.2])
    assert cat[0].spectral_index == pytest.approx(-0.3) and cat[1].spectral_index == -0.7
    assert cat[0].ref_freq_hz == 3.0e9 and isinstance(cat[0], SkySource)


def test_bad_catalogue_names_the_file(tmp_path):
    bad = tmp_path / "notes.csv"
    bad.write_text("name,colour\nx,red\n")
    with pytest.raises(BadInputError, match="notes.csv.*RA"):
        read_catalogue(bad)
    with pytest.raises(BadInputError, match="garbage.fits"):
        (tmp_path / "garbage.fits").write_bytes(b"\x00" * 100)
        read_catalogue(tmp_path / "garbage.fits")
