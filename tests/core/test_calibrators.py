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
