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


# --- baseline-dependent time averaging (WSClean's -baseline-averaging) ----------------------------

OMEGA = 7.2921159e-5  # the Earth's rotation, rad/s


def _uvw_track(bx, by, bz, dec, hours_angle):
    """(u, v, w) in metres of equatorial baseline (bx, by, bz) towards hour angle H, declination dec
    (Thompson, Moran & Swenson eq. 4.1), for an array of H."""
    h = np.asarray(hours_angle, float)
    u = np.sin(h) * bx + np.cos(h) * by
    v = -np.sin(dec) * np.cos(h) * bx + np.sin(dec) * np.sin(h) * by + np.cos(dec) * bz
    w = np.cos(dec) * np.cos(h) * bx - np.cos(dec) * np.sin(h) * by + np.sin(dec) * bz
    return u, v, w


def _peak_by_brute_force(baselines, dec, lam, dt, n_of, l, m, nsub=64):
    """Dirty-image peak at (l, m) of a unit point source there, each baseline's data averaged over
    its n integrations exactly as WSClean does it (the mean of the visibilities at the mean uvw), each
    integration itself the mean of ``nsub`` instants (the correlator's boxcar)."""
    num = 0.0
    for (bx, by, bz), n in zip(baselines, n_of):
        t = (np.arange(n * nsub) + 0.5) / nsub * dt - n * dt / 2  # instants across n integrations
        u, v, _ = _uvw_track(bx, by, bz, dec, OMEGA * t)
        vis = np.mean(np.exp(2j * np.pi * (u * l + v * m) / lam))
        ubar, vbar = np.mean(u), np.mean(v)
        num += float(np.real(vis * np.exp(-2j * np.pi * (ubar * l + vbar * m) / lam)))
    return num / len(baselines)


def test_time_smearing_loss_matches_a_brute_force_average_of_the_fringes():
    """The sinc model of :func:`time_smearing_loss` (rates in, WSClean's averaging rule) against the
    fringes themselves: uvw tracked through the Earth's turn at the DSA-110's declination, averaged
    over each baseline's integrations, imaged at a source 2.5 deg north and 2.5 deg east of the centre."""
    from dsacont.imaging.geometry import averaging_factors, time_smearing_loss

    dec, lam, dt = math.radians(55.57), 0.21, 12.884902
    rng = np.random.default_rng(3)
    # east-west and north-south baselines of 20 m to 2.6 km, as the T-shaped array has
    lengths = np.geomspace(20.0, 2600.0, 40)
    baselines = [(0.0, L, 0.0) for L in lengths] + [(L * math.sin(0.65), 0.0, L * math.cos(0.65)) for L in lengths]
    baselines += [tuple(rng.normal(0, 500, 3)) for _ in range(20)]
    du, dv, length = [], [], []
    for b in baselines:
        (u0, v0, w0), (u1, v1, w1) = (np.array(_uvw_track(*b, dec, h)) for h in (0.0, OMEGA * 1.0))
        du.append((u1 - u0) / lam)
        dv.append((v1 - v0) / lam)
        length.append(math.sqrt(sum(x * x for x in b)) / lam)
    du, dv, length = np.array(du), np.array(dv), np.array(length)
    base = 2 * math.pi / 86400 * length.max() * dt
    for k in (0.3, 1.0, 3.0):
        x = k * base
        n_of = averaging_factors(length, dt, x, ntimes=24).astype(int)
        assert n_of.max() > n_of.min() and (n_of.min() == 1 or k > 1)
        both = [1 - (_peak_by_brute_force(baselines, dec, lam, dt, n_of, a, b)
                     / _peak_by_brute_force(baselines, dec, lam, dt, np.ones(len(baselines), int), a, b))
                for a, b in ((0.0, math.radians(2.5)), (math.radians(2.5), 0.0))]
        got = time_smearing_loss(du, dv, length, np.ones_like(du), dt, math.radians(2.5), x, ntimes=24, n_angles=2)
        assert got == pytest.approx(max(both), rel=0.01, abs=1e-4), (k, got, both)
    # nothing averaged, nothing lost
    assert time_smearing_loss(du, dv, length, np.ones_like(du), dt, math.radians(2.5), 0.0) == 0.0


def test_averaging_factors_are_wscleans_rule_and_the_budget_picks_the_most():
    from dsacont.imaging.geometry import averaging_factors, choose_baseline_averaging

    dt = 12.884902
    turn = 2 * math.pi / 86400 * dt  # radians per integration by WSClean's reckoning
    # a 10000-wavelength baseline turns 9.37 wavelengths per integration
    assert averaging_factors([10000.0], dt, 9.0)[0] == 1
    assert averaging_factors([10000.0], dt, 20.0)[0] == math.floor(20.0 / (turn * 10000))
    assert averaging_factors([100.0], dt, 20.0)[0] == math.floor(20.0 / (turn * 100))
    assert averaging_factors([100.0], dt, 20.0, ntimes=24)[0] == 24
    # the budget: the largest candidate whose loss is within it
    lengths = np.array([100.0, 1000.0, 10000.0])
    x, loss = choose_baseline_averaging(lengths, dt, lambda x: x / 1000.0, max_loss=0.01)
    assert loss <= 0.01 and x == pytest.approx(max(k * turn * 10000 for k in (0.1, 0.15, 0.2, 0.25, 0.3, 0.35,
                                                                               0.4, 0.45, 0.5, 0.6, 0.7, 0.8, 1.0)
                                                   if k * turn * 10000 / 1000 <= 0.01))
    assert choose_baseline_averaging(lengths, dt, lambda x: 1.0) == (0.0, 0.0)


@pytest.mark.parametrize("spread_lambda", [3000.0, 3e7])  # a dense grid; a grid far larger than the sample
def test_briggs_weights_are_the_definition_on_the_cells_of_samples_and_conjugates(spread_lambda):
    """w' = w / (1 + W f^2), W the natural weight gridded with every sample's Hermitian conjugate,
    f^2 = (5 x 10^-R)^2 / (sum W^2 / sum w), written out sample by sample; robust +5 is natural."""
    from dsacont.imaging.qa import briggs_weights

    rng = np.random.default_rng(3)
    n, cell = 400, 200.0
    u = np.round(rng.normal(0, spread_lambda, n) / cell) * cell  # on cell centres: no rounding ties
    v = np.round(rng.normal(0, spread_lambda / 2, n) / cell) * cell
    u[:20], v[:20] = u[20:40], v[20:40]  # shared cells
    u[40:50], v[40:50] = -u[50:60], -v[50:60]  # a sample in another's conjugate cell
    u[60], v[60] = 0.0, 0.0  # the origin is its own conjugate
    w = rng.integers(1, 4, n).astype(float)
    cells = np.stack([np.rint(u / cell), np.rint(v / cell)], axis=1)
    W = np.array([w[(cells == c).all(axis=1)].sum() + w[(cells == -c).all(axis=1)].sum() for c in cells])
    all_w = np.concatenate([w, w])
    grid = {}
    for c, wk in zip(np.concatenate([cells, -cells]), all_w):
        grid[tuple(c)] = grid.get(tuple(c), 0.0) + wk
    for robust in (-1.0, 0.0, 0.5):
        f2 = (5.0 * 10.0 ** (-robust)) ** 2 / (sum(x * x for x in grid.values()) / all_w.sum())
        np.testing.assert_allclose(briggs_weights(u, v, w, cell, robust), w / (1.0 + W * f2), rtol=1e-12)
    np.testing.assert_allclose(briggs_weights(u, v, w, cell, 5.0), w, rtol=1e-3)
