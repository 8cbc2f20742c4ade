import numpy as np
import pytest

from dsacont import telescope as T


def test_array_centre_is_casa_ovro_mma():
    loc = T.ovro_location()
    assert loc.lat.deg == pytest.approx(37.23340, abs=1e-5)
    # CASA's me.observatory('OVRO_MMA') in radians; (the facts doc's -118.28332 deg does not match
    # its own radian value -2.0644277991 = -118.28300 deg: we follow CASA)
    assert loc.lon.rad == pytest.approx(-2.0644277991, abs=1e-10)
    assert loc.height.value == pytest.approx(1188.05, abs=0.01)


def test_stations():
    s = T.stations()
    assert len(s.names) == 117 and s.names[0] == "1" and s.names[-1] == "117"
    assert list(s.numbers) == list(range(117))
    assert s.height_m[116] == 1182.6  # DSA-117 has no elevation in the table
    d = np.linalg.norm(s.enu[:, None] - s.enu[None], axis=-1)
    assert 2500 < d.max() < 2800  # longest baseline ~2.6 km
    # the first pads form the east-west arm: same latitude, spaced in longitude
    assert np.ptp(s.enu[:20, 1]) < 1.0 and np.ptp(s.enu[:20, 0]) > 100
    # ECEF relative positions are consistent with ENU
    assert np.allclose(np.linalg.norm(s.ecef_rel, axis=1), np.linalg.norm(s.enu, axis=1))


def test_airy_beam():
    f = 1.4e9
    fwhm = T.beam_fwhm_rad(f)
    assert np.degrees(fwhm) == pytest.approx(2.715, abs=0.01)  # facts doc: ~2.7 deg at 1.4 GHz
    assert T.airy_beam(0.0, f) == pytest.approx(1.0)
    assert T.airy_beam(fwhm / 2, f) == pytest.approx(0.5, abs=1e-3)
    # first null at 1.22 lambda / D
    null = np.arcsin(1.2197 * T.SPEED_OF_LIGHT / f / T.DISH_DIAMETER_M)
    assert T.airy_beam(null, f) < 1e-6
    # broadcasting: (n_offsets, 1) x (n_freqs,)
    b = T.airy_beam(np.radians([0.5, 1.0])[:, None], np.array([1.31e9, 1.5e9]))
    assert b.shape == (2, 2) and b[0, 0] > b[0, 1]  # wider beam at lower frequency


def test_station_file_against_published_site():
    """The station file (shared by simulator and pipeline) against figures from outside it: every
    pad lies in the Owens Valley, within 3 km of the observatory's published position (37.2339 N,
    118.2820 W) at the valley floor's height (~1,180-1,240 m), and within 3 km of CASA's OVRO_MMA."""
    s = T.stations()
    lat, lon = np.radians(37.2339), np.radians(-118.2820)
    lat_s, lon_s = s.lat_rad, s.lon_rad
    d = 6.371e6 * np.arccos(np.clip(np.sin(lat) * np.sin(lat_s) + np.cos(lat) * np.cos(lat_s) * np.cos(lon_s - lon),
                                    -1, 1))
    assert d.max() < 3000
    assert np.all((s.height_m > 1150) & (s.height_m < 1250))
    assert np.linalg.norm(s.enu, axis=1).max() < 3000
