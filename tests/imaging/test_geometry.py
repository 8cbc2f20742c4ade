"""Imaging geometry without an MS: the bandwidth-smearing budget that chooses the channel averaging.

The referee is a direct numerical average of the beam over the band (a point source at offset
theta is imaged at theta nu / nu0 in each channel of the bin), not the closed form the library uses.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

from dsacont.imaging.geometry import bandwidth_smearing_loss, choose_channel_bin

ARCSEC = math.pi / 180 / 3600


def _loss_by_integration(width_hz, freq_hz, offset_rad, fwhm_rad, n=20001):
    """1 - the band-averaged Gaussian beam at the source's nominal position."""
    nu = freq_hz + width_hz * (np.arange(n) + 0.5 - n / 2) / n
    shift = offset_rad * (nu / freq_hz - 1.0)  # radial position error in each frequency slice
    return 1.0 - float(np.mean(np.exp(-4 * math.log(2) * (shift / fwhm_rad) ** 2)))


@pytest.mark.parametrize("width_hz,offset_deg,fwhm_arcsec", [
    (244140.625, 2.5, 35.0), (4 * 244140.625, 2.5, 35.0), (8 * 244140.625, 2.5, 35.0),
    (1.46e6, 2.5, 60.0), (1e6, 0.5, 10.0)])
def test_bandwidth_smearing_loss_matches_a_numerical_band_average(width_hz, offset_deg, fwhm_arcsec):
    got = bandwidth_smearing_loss(width_hz, 1.405e9, math.radians(offset_deg), fwhm_arcsec * ARCSEC)
    want = _loss_by_integration(width_hz, 1.405e9, math.radians(offset_deg), fwhm_arcsec * ARCSEC)
    assert got == pytest.approx(want, rel=0.01, abs=1e-7)


def test_uv_smearing_loss_of_a_gaussian_uv_cover_is_the_gaussian_beam_formula():
    """uv points drawn from a circular Gaussian of std sigma (wavelengths) make a Gaussian PSF of
    FWHM sqrt(2 ln 2) / (pi sigma): the sinc average over the uv sample must give the Gaussian-beam
    loss for that FWHM (both checked against the numerical band average above), in every direction."""
    from dsacont.imaging.geometry import uv_smearing_loss

    fwhm = 35.0 * ARCSEC
    sigma = math.sqrt(2 * math.log(2)) / (math.pi * fwhm)
    rng = np.random.default_rng(5)
    u, v = rng.normal(0, sigma, 400_000), rng.normal(0, sigma, 400_000)
    w = np.ones_like(u)
    for k in (2, 4, 8):
        got = uv_smearing_loss(u, v, w, k * 244140.625, 1.405e9, math.radians(2.5), max_samples=400_000)
        want = _loss_by_integration(k * 244140.625, 1.405e9, math.radians(2.5), fwhm)
        assert got == pytest.approx(want, rel=0.05)
    # an east-west line of baselines smears only east-west: the worst direction is found
    line = uv_smearing_loss(u, 0 * v, w, 4 * 244140.625, 1.405e9, math.radians(2.5))
    assert line == pytest.approx(_loss_by_integration(4 * 244140.625, 1.405e9, math.radians(2.5), fwhm), rel=0.05)


def test_channel_bin_is_the_most_within_budget_that_divides_the_window():
    edge, beam = math.radians(2.5), 35.0 * ARCSEC

    def gauss(width_hz, fwhm):
        return lambda k: bandwidth_smearing_loss(k * width_hz, 1.405e9, edge, fwhm)

    # 48 channels of 244 kHz per subband, a 35" beam: 4 cost 0.7 %, 6 cost 1.6 %
    k, loss = choose_channel_bin(48, gauss(244140.625, beam), max_loss=0.01)
    assert k == 4 and loss == pytest.approx(_loss_by_integration(4 * 244140.625, 1.405e9, edge, beam), rel=0.01)
    assert _loss_by_integration(6 * 244140.625, 1.405e9, edge, beam) > 0.01
    # a bin must divide the window: 5 is within a 1.2 % budget but not a divisor of 48
    assert choose_channel_bin(48, gauss(244140.625, beam), max_loss=0.012)[0] == 4
    assert choose_channel_bin(45, gauss(244140.625, beam), max_loss=0.012)[0] == 5
    # wide channels and a wide beam (the small preset): nothing to average within 1 %
    assert choose_channel_bin(8, gauss(1.46e6, 60.0 * ARCSEC))[0] == 1
    # a tighter budget averages less
    assert choose_channel_bin(48, gauss(244140.625, beam), max_loss=0.002)[0] == 2
