import numpy as np
import pytest
from astropy.time import Time

from dsacont.calibrators import get_calibrator, load_catalogue, nearest_transit, transit_time, transits_between


def test_catalogue_parses_0834():
    cats = load_catalogue()
    assert len(cats) > 1800
    c = get_calibrator("0834+555")
    assert c.ra_deg == pytest.approx(128.72877, abs=1e-5)
    assert c.dec_deg == pytest.approx(55.57252, abs=1e-5)
    assert c.flux_jy == 8.80
    assert c.fluxes["6cm"] == 5.60 and c.fluxes["90cm"] == 9.0
    assert c.spectral_index == pytest.approx(np.log(5.6 / 8.8) / np.log(4.86 / 1.4))
    assert c.flux_at(1.4e9) == pytest.approx(8.8)
    assert get_calibrator("J0834+555") is c
    with pytest.raises(KeyError):
        get_calibrator("9999+999")


def test_transit_of_0834_on_2025_10_29():
    c = get_calibrator("0834+555")
    t = transit_time(c.ra_deg, "2025-10-29T00:00:00", c.dec_deg)
    assert abs((t - Time("2025-10-29T13:55:26")).sec) < 1.0
    # the true meridian crossing (apparent hour angle 0) is 119 s later: precession since J2000
    ta = transit_time(c.ra_deg, "2025-10-29T00:00:00", c.dec_deg, convention="apparent")
    assert (ta - t).sec == pytest.approx(119.1, abs=1.0)
    assert abs((nearest_transit(c.ra_deg, "2025-10-29T20:00:00") - t).sec) < 0.1
    ts = transits_between(c.ra_deg, "2025-10-28", "2025-10-31")
    assert len(ts) == 3
    assert np.allclose(np.diff([x.unix for x in ts]), 86164.09, atol=1.0)


# The catalogue file is shared by the simulator and the pipeline, so an error in it could hide
# itself: check a few entries against figures from outside it (the flux-density scale of Perley &
# Butler 2017, ApJS 230, 7, Table 6 polynomial fits; the positions the VLA calibrator manual prints
# for the primary calibrators).
PERLEY_BUTLER_2017 = {  # log10 S[Jy] = sum a_i (log10 nu[GHz])^i
    "3C286": (1.2481, -0.4507, -0.1798, 0.0357),
    "3C48": (1.3253, -0.7553, -0.1914, 0.0498),
    "3C147": (1.4516, -0.6961, -0.2007, 0.0640, -0.0464, 0.0289),
}
PRINTED_POSITIONS = {  # name in the file, (RA h m s, Dec d m s) as the manual prints them
    "1331+305": ("3C286", (13, 31, 8.288), (30, 30, 32.96)),
    "0137+331": ("3C48", (1, 37, 41.299), (33, 9, 35.13)),
    "0542+498": ("3C147", (5, 42, 36.138), (49, 51, 7.23)),
}


@pytest.mark.parametrize("name", sorted(PRINTED_POSITIONS))
def test_primary_calibrators_against_outside_figures(name):
    other, (rh, rm, rs), (dd, dm, ds) = PRINTED_POSITIONS[name]
    c = get_calibrator(name)
    assert c.ra_deg == pytest.approx(15 * (rh + rm / 60 + rs / 3600), abs=0.01 / 3600 * 15)
    assert c.dec_deg == pytest.approx(dd + dm / 60 + ds / 3600, abs=0.05 / 3600)
    x = np.log10(1.4)
    pb = 10 ** sum(a * x ** i for i, a in enumerate(PERLEY_BUTLER_2017[other]))
    # the manual's 20 cm fluxes (15.0, 16.5, 22.5 Jy) predate the 2017 scale by a few per cent
    assert c.flux_at(1.4e9) == pytest.approx(pb, rel=0.03)
