"""Mosaic: PB-weighted combination of drifting tiles.

Tiles here are made analytically (a known sky x each tile's own Airy beam + Gaussian noise, with
CASA-like FITS headers and the same file layout as ``image_ms``), so the expected mosaic is
exact; the real tclean tiles are mosaicked in tests/imaging/test_imaging.py.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dsacont.imaging import beam_image, read_fits_image
from dsacont.imaging.mosaic import _header_info, make_mosaic, mosaic_grid, tile_files
from dsacont.imaging.qa import fit_source

DEC0 = 55.5725
FREQ = 1.405e9
CELL_ARCSEC = 12.0
NPIX = 640  # 2.13 deg tiles (a small, fast stand-in for 3.5 deg)
BMAJ_ARCSEC = 45.0


def _sky(n_src=25, seed=0, ra_span=(126.0, 131.5)):
    rng = np.random.default_rng(seed)
    ra = rng.uniform(*ra_span, n_src)
    dec = DEC0 + rng.uniform(-0.9, 0.9, n_src)
    flux = 10 ** rng.uniform(-1.3, 0.3, n_src)
    ra = np.concatenate([[128.72877], ra])
    dec = np.concatenate([[55.57252], dec])
    flux = np.concatenate([[8.8], flux])
    return {"ra_deg": ra, "dec_deg": dec, "flux_jy": flux}


def _write_tile(directory, k, ra_c, sky, noise, rng):
    """One synthetic tile: image = sum_s S_s A(s) G(beam) + noise, pb = A (single pointing)."""
    from astropy.io import fits
    from astropy.wcs import WCS

    w = WCS(naxis=4)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN", "FREQ", "STOKES"]
    w.wcs.crval = [ra_c, DEC0, FREQ, 1.0]
    w.wcs.cdelt = [-CELL_ARCSEC / 3600, CELL_ARCSEC / 3600, 1.875e8, 1.0]
    w.wcs.crpix = [NPIX / 2 + 1, NPIX / 2 + 1, 1.0, 1.0]
    w.wcs.cunit = ["deg", "deg", "Hz", ""]
    hdr = w.to_header()
    hdr["BMAJ"] = BMAJ_ARCSEC / 3600
    hdr["BMIN"] = BMAJ_ARCSEC / 3600
    hdr["BPA"] = 0.0
    hdr["BUNIT"] = "Jy/beam"
    w2 = w.celestial
    pb = beam_image(w2, (NPIX, NPIX), [math.radians(ra_c)], [math.radians(DEC0)], [FREQ])
    x, y = w2.world_to_pixel_values(sky["ra_deg"], sky["dec_deg"])
    yy, xx = np.mgrid[0:NPIX, 0:NPIX]
    sig = BMAJ_ARCSEC / CELL_ARCSEC / 2.3548
    # noise correlated over the beam, as in a real image
    from scipy.ndimage import gaussian_filter

    white = gaussian_filter(rng.normal(0, 1, (NPIX, NPIX)), sig / math.sqrt(2))
    img = noise * white / white.std()
    from dsacont.imaging import effective_beam

    a_src = effective_beam(np.radians(sky["ra_deg"]), np.radians(sky["dec_deg"]), [math.radians(ra_c)],
                           [math.radians(DEC0)], [FREQ])
    for xs, ys, s, a in zip(x, y, sky["flux_jy"], a_src):
        if -20 < xs < NPIX + 20 and -20 < ys < NPIX + 20:
            img += s * a * np.exp(-0.5 * ((xx - xs) ** 2 + (yy - ys) ** 2) / sig**2)
    stem = directory / f"tile{k:02d}"
    fits.PrimaryHDU(img.astype(np.float32).reshape(1, 1, NPIX, NPIX), hdr).writeto(f"{stem}.image.fits")
    fits.PrimaryHDU(pb.reshape(1, 1, NPIX, NPIX), hdr).writeto(f"{stem}.pb.fits")
    (directory / f"tile{k:02d}.qa.json").write_text(json.dumps({"qa": {"noise_jy": noise},
                                                               "start_mjd": 60977.5 + k * 0.00358,
                                                               "end_mjd": 60977.5 + (k + 1) * 0.00358}))
    return f"{stem}.image.fits"


@pytest.fixture(scope="module")
def tiles(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiles")
    rng = np.random.default_rng(42)
    sky = _sky()
    # 6 tiles, 5 minutes apart: 1.25 deg of RA each, with different noise levels
    ras = 128.72877 + (np.arange(6) - 2.5) * 1.25
    noises = [2e-3, 1e-3, 1.5e-3, 1e-3, 3e-3, 1e-3]
    paths = [_write_tile(d, k, ra, sky, n, rng) for k, (ra, n) in enumerate(zip(ras, noises))]
    return d, paths, sky, noises


def test_grid_covers_all_tiles(tiles):
    _, paths, _, _ = tiles
    infos = [_header_info(p) for p in paths]
    w, (ny, nx) = mosaic_grid(infos, projection="SIN")
    for info in infos:
        ny_t, nx_t = info["shape"]
        ra, dec = info["wcs"].pixel_to_world_values([0, nx_t - 1, 0, nx_t - 1], [0, 0, ny_t - 1, ny_t - 1])
        x, y = w.world_to_pixel_values(ra, dec)
        assert np.all((x >= 0) & (x <= nx - 1) & (y >= 0) & (y <= ny - 1))
    # 6 tiles drifting 1.25 deg of RA: ~(5 x 1.25 x cos(dec) + 2.13) deg wide
    width_deg = nx * CELL_ARCSEC / 3600
    assert 5.5 < width_deg < 6.5


def test_mosaic_recovers_flux_and_noise(tiles, tmp_path):
    d, paths, sky, noises = tiles
    res = make_mosaic(paths, tmp_path / "m.fits", pb_cutoff=0.2)
    mos, hdr, w = read_fits_image(res["mosaic"])
    noise, _, _ = read_fits_image(res["noise"])
    assert hdr["BMAJ"] == pytest.approx(BMAJ_ARCSEC / 3600)
    assert (tmp_path / "m.png").stat().st_size > 10_000
    # every source where the mosaic is sensitive comes back at its true flux (all tiles combined)
    beam_px = BMAJ_ARCSEC / CELL_ARCSEC
    checked = 0
    for ra, dec, s in zip(sky["ra_deg"], sky["dec_deg"], sky["flux_jy"]):
        x, y = w.world_to_pixel_values(ra, dec)
        if not (10 < x < mos.shape[1] - 10 and 10 < y < mos.shape[0] - 10):
            continue
        n_here = noise[int(round(float(y))), int(round(float(x)))]
        if not np.isfinite(n_here) or s / n_here < 50:
            continue
        fit = fit_source(mos, w, ra, dec, beam_px=beam_px, box_px=8)
        tol = max(0.02 * s, 5 * n_here)
        assert abs(fit["peak"] - s) < tol, (ra, dec, s, fit["peak"], n_here)
        assert fit["offset_arcsec"] < CELL_ARCSEC / 2
        checked += 1
    assert checked >= 10
    cal = [c for c in res["qa"]["calibrators"] if c["name"] == "0834+555"][0]
    assert cal["ratio"] == pytest.approx(1.0, abs=0.01)

    # the noise map is 1/sqrt(sum A_i^2 / sigma_i^2): at the mosaic centre several tiles overlap
    infos = [_header_info(p) for p in paths]
    ra_c, dec_c = w.pixel_to_world_values(mos.shape[1] / 2, mos.shape[0] / 2)
    inv_var = 0.0
    for info, p, n in zip(infos, paths, noises):
        pb, _, wt = read_fits_image(p.replace(".image.", ".pb."))
        x, y = wt.world_to_pixel_values(ra_c, dec_c)
        if 0 <= x < NPIX - 1 and 0 <= y < NPIX - 1:
            a = pb[int(round(float(y))), int(round(float(x)))]
            if a >= 0.2:
                inv_var += a**2 / n**2
    got = noise[int(mos.shape[0] / 2), int(mos.shape[1] / 2)]
    assert got == pytest.approx(1 / math.sqrt(inv_var), rel=0.02)
    # and it is the real noise: the S/N map of a source-free stretch has unit RMS
    assert res["qa"]["snr_map_rms"] == pytest.approx(1.0, abs=0.1)


def test_pb_cutoff_and_better_than_single_tile(tiles, tmp_path):
    d, paths, sky, noises = tiles
    res = make_mosaic(paths[:3], tmp_path / "m3.fits", pb_cutoff=0.5, projection="TAN", png=False)
    mos, _, w = read_fits_image(res["mosaic"])
    noise, _, _ = read_fits_image(res["noise"])
    assert res["png"] is None
    # with a 0.5 cutoff no pixel's noise exceeds the worst tile's noise / 0.5
    assert np.nanmax(noise) <= max(noises[:3]) / 0.5 * 1.001
    # weighting beats any single tile where tiles overlap
    assert np.nanmin(noise) < min(noises[:3])
    assert np.isnan(mos).any() and np.isfinite(mos).any()


def test_tile_files_resolution(tiles, tmp_path):
    d, paths, _, _ = tiles
    t = tile_files(paths[1].replace(".image.fits", ".pbcor.fits"))
    assert t["pb"].endswith("tile01.pb.fits") and t["noise"] == pytest.approx(1e-3)
    from dsacont.errors import BadInputError

    with pytest.raises(BadInputError):
        tile_files(str(tmp_path / "nothing.image.fits"))


def test_dask_distributed_client(tiles, tmp_path):
    """Reprojection tasks on a real (in-process) Dask cluster give the same mosaic."""
    from dask.distributed import Client, LocalCluster, get_task_stream

    d, paths, _, _ = tiles
    ref = make_mosaic(paths[:3], tmp_path / "a.fits", png=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None) as cluster, \
            Client(cluster) as client, get_task_stream(client) as ts:
        res = make_mosaic(paths[:3], tmp_path / "b.fits", client=client, png=False)
    # the work ran on the cluster's workers (a make_mosaic that ignored ``client`` gives the same
    # mosaic, so the equality below alone could not tell)
    assert len({t["worker"] for t in ts.data}) >= 1 and len(ts.data) >= 3, ts.data
    a, _, _ = read_fits_image(ref["mosaic"])
    b, _, _ = read_fits_image(res["mosaic"])
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-9)


def test_register(tiles, tmp_path):
    from dsacont.config import get_paths
    from dsacont.service.products import Products

    d, paths, _, _ = tiles
    p = get_paths(root=tmp_path / "root").ensure()
    from dsacont.imaging.mosaic import mosaic_product
    from dsacont.service.state import record_products

    res = make_mosaic(paths[:2], p.mosaics / "m.fits", png=False)
    res["mosaic_id"] = record_products(p, {"mosaics": [mosaic_product(res)]})["mosaics"][0]
    row = Products(p.products_db).get("mosaic", res["mosaic_id"])
    assert row["qa"]["n_tiles"] == 2 and len(row["images"]) == 2
    assert row["start_mjd"] == pytest.approx(60977.5)


def _assert_ovro_obsgeo(hdr):
    from astropy import units as u
    from astropy.coordinates import EarthLocation

    from dsacont.telescope import OVRO_HEIGHT_M, OVRO_LAT_RAD, OVRO_LON_RAD

    loc = EarthLocation.from_geocentric(hdr["OBSGEO-X"], hdr["OBSGEO-Y"], hdr["OBSGEO-Z"], unit=u.m)
    ref = EarthLocation.from_geodetic(math.degrees(OVRO_LON_RAD) * u.deg, math.degrees(OVRO_LAT_RAD) * u.deg,
                                      OVRO_HEIGHT_M * u.m)
    assert np.linalg.norm(u.Quantity(loc.geocentric).to_value(u.m) - u.Quantity(ref.geocentric).to_value(u.m)) < 1.0
    assert abs(loc.geodetic.height.to_value(u.m) - OVRO_HEIGHT_M) < 1.0


def test_mosaic_headers_carry_ovro_without_warnings(tiles, tmp_path):
    """The mosaic and its noise map carry the array centre (OBSGEO) and read without any warning."""
    import warnings

    from astropy.io import fits
    from astropy.wcs import WCS

    _, paths, _, _ = tiles
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = make_mosaic(paths[:2], tmp_path / "h.fits", png=False)
        for f in (res["mosaic"], res["noise"]):
            hdr = fits.getheader(f)
            WCS(hdr)
            read_fits_image(f)
            _assert_ovro_obsgeo(hdr)


def test_mapped_pixels_agree_with_the_exact_transforms():
    """The reprojection's pixel map, exact every 16 output pixels and bilinear between, against
    the exact transforms of every pixel: a full-size tile (3840^2 x 3", slant SIN with the
    PV2 cards dsacont's tiles carry) onto a SIN mosaic grid centred 1.6 deg of RA away."""
    from astropy.wcs import WCS

    from dsacont.imaging.mosaic import mapped_pixels

    tile = WCS(naxis=2)
    tile.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    tile.wcs.crval = [128.72877, 55.57252]
    tile.wcs.cdelt = [-3.0 / 3600, 3.0 / 3600]
    tile.wcs.crpix = [1921, 1921]
    tile.wcs.set_pv([(2, 1, 0.0), (2, 2, -0.0174)])  # a slant of ~1 deg towards the pole
    grid = WCS(naxis=2)
    grid.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    grid.wcs.crval = [127.1, 55.7]
    grid.wcs.cdelt = [-4.5 / 3600, 4.5 / 3600]
    grid.wcs.crpix = [1400, 1300]
    # the tile's footprint on the grid, and a margin around it
    cx, cy = grid.world_to_pixel_values(*tile.pixel_to_world_values([0, 3839, 0, 3839], [0, 0, 3839, 3839]))
    xs = np.arange(np.floor(cx.min()) - 50, np.ceil(cx.max()) + 50)
    ys = np.arange(np.floor(cy.min()) - 50, np.ceil(cy.max()) + 50, 7)
    tx, ty = mapped_pixels(grid, tile, xs, ys)
    ex, ey = mapped_pixels(grid, tile, xs, ys, step=1)
    inside = (ex >= 0) & (ex <= 3839) & (ey >= 0) & (ey <= 3839)
    assert inside.mean() > 0.5
    assert np.nanmax(np.hypot(tx - ex, ty - ey)[inside]) < 0.01


def test_mapped_pixels_beyond_the_horizon_are_nan():
    """Output pixels whose sky lies beyond the input projection's horizon have no input pixel:
    NaN, never a value interpolated from the nodes around them."""
    from astropy.wcs import WCS

    from dsacont.imaging.mosaic import mapped_pixels

    tile = WCS(naxis=2)
    tile.wcs.ctype = ["RA---SIN", "DEC--SIN"]
    tile.wcs.crval = [128.7, 55.6]
    tile.wcs.cdelt = [-0.01, 0.01]
    tile.wcs.crpix = [100, 100]
    grid = WCS(naxis=2)
    grid.wcs.ctype = ["RA---CAR", "DEC--CAR"]
    grid.wcs.crval = [128.7, 0.0]
    grid.wcs.cdelt = [-1.0, 1.0]
    grid.wcs.crpix = [180, 90]
    xs, ys = np.arange(0, 360, dtype=float), np.arange(0, 179, dtype=float)
    tx, ty = mapped_pixels(grid, tile, xs, ys)
    ex, ey = mapped_pixels(grid, tile, xs, ys, step=1)
    beyond = ~np.isfinite(ex)
    assert 0.2 < beyond.mean() < 0.8
    assert np.isnan(tx[beyond]).all() and np.isnan(ty[beyond]).all()
    assert np.isfinite(tx).mean() > 0.5 * np.isfinite(ex).mean()
