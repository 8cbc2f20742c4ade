"""The pipeline's mosaic trigger on real FITS tiles: runs of consecutive tiles, never across a gap."""
from __future__ import annotations

import json
import math

import numpy as np
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from dsacont.config import get_paths
from dsacont.imaging.beam import beam_image
from dsacont.service.pipeline import GROUP_CADENCE_S, PipelineOptions, maybe_mosaic


def _tile(directory, k, start_mjd):
    """A small real tile (image, drifting-beam pb, QA JSON) 1.29 deg of RA after the previous."""
    ra = 120.0 + 1.2885 * k
    w = WCS(naxis=4)
    w.wcs.ctype = ["RA---SIN", "DEC--SIN", "FREQ", "STOKES"]
    w.wcs.crval = [ra, 55.57, 1.4e9, 1.0]
    w.wcs.cdelt = [-120 / 3600, 120 / 3600, 1.875e8, 1.0]
    w.wcs.crpix = [25, 25, 1, 1]
    hdr = w.to_header()
    hdr.update(BMAJ=0.05, BMIN=0.05, BPA=0.0)
    stem = directory / f"tile{k:02d}"
    pb = beam_image(w.celestial, (48, 48), [math.radians(ra)], [math.radians(55.57)], [1.4e9])
    img = np.random.default_rng(k).normal(0, 1e-3, (1, 1, 48, 48)).astype(np.float32)
    fits.PrimaryHDU(img, hdr).writeto(f"{stem}.pbcor.fits")
    fits.PrimaryHDU(img, hdr).writeto(f"{stem}.image.fits")
    fits.PrimaryHDU(pb.reshape(1, 1, 48, 48), hdr).writeto(f"{stem}.pb.fits")
    (directory / f"tile{k:02d}.qa.json").write_text(json.dumps({"qa": {"noise_jy": 1e-3}, "start_mjd": start_mjd,
                                                                 "end_mjd": start_mjd + GROUP_CADENCE_S / 86400}))
    return {"id": k + 1, "path": f"{stem}.pbcor.fits", "start_mjd": start_mjd,
            "start_time": Time(start_mjd, format="mjd").isot}


def test_twelve_tile_trigger_skips_a_missing_group(tmp_path):
    paths = get_paths(root=tmp_path / "root").ensure("mosaics")
    t0 = Time("2025-10-29T13:24:37").mjd
    # 25 five-minute slots, the group of slot 5 missing: 0-4, then 6-24
    rows = [_tile(tmp_path, k, t0 + k * GROUP_CADENCE_S / 86400) for k in range(25) if k != 5]
    made = maybe_mosaic(paths, rows, PipelineOptions(tiles_per_mosaic=12))
    # one mosaic, of slots 6-17: never 0-4 with tiles after the gap, nothing of the 7 left over
    assert len(made) == 1
    assert made[0]["product"]["images"] == [k + 1 for k in range(6, 18)]
    assert made[0]["n_tiles"] == 12
    assert sorted(p.name for p in paths.mosaics.glob("*.fits") if "noise" not in p.name and "sources" not in p.name) \
        == [f"mosaic_{rows[5]['start_time'][:19]}_12tiles.fits"]
    # the mosaic is catalogued beside it (noise only here: a catalogue of no source, with its record)
    cat = made[0]["catalogue"]["product"]
    assert cat["image"] == made[0]["product"]["path"] and cat["path"].endswith("_12tiles.sources.fits")
    assert cat["n_sources"] == 0 and cat["qa"]["n_matched"] == 0
    # without the gap the same 25 slots make two mosaics, 0-11 and 12-23
    (tmp_path / "full").mkdir()
    full = [_tile(tmp_path / "full", k, t0 + k * GROUP_CADENCE_S / 86400) for k in range(25)]
    made = maybe_mosaic(get_paths(root=tmp_path / "root2").ensure("mosaics"), full, PipelineOptions(tiles_per_mosaic=12))
    assert [m["product"]["images"] for m in made] == [list(range(1, 13)), list(range(13, 25))]


def test_gated_tiles_kept_out_of_the_mosaic_with_their_reason(tmp_path):
    """Of 12 consecutive tiles, one with 8x the radiometer noise and one whose calibrator came out
    at half its flux are kept out: the mosaic is made of the other 10, its QA lists the two with
    their reasons, and once recorded the two are 'rejected' and no longer mosaic candidates."""
    from dsacont.service.products import Products
    from dsacont.service.state import record_products

    paths = get_paths(root=tmp_path / "root").ensure("mosaics")
    t0 = Time("2025-10-29T13:24:37").mjd
    rows = [_tile(tmp_path, k, t0 + k * GROUP_CADENCE_S / 86400) for k in range(12)]
    for r in rows:
        r["qa"] = {"noise_ratio": 1.1, "dynamic_range": 500.0}
    rows[3]["qa"]["noise_ratio"] = 8.0
    rows[7]["qa"]["calibrators"] = [{"name": "0834+555", "detected": True, "pb": 0.95, "ratio": 0.5}]
    made = maybe_mosaic(paths, rows, PipelineOptions(tiles_per_mosaic=12))
    assert len(made) == 1 and made[0]["n_tiles"] == 10
    assert made[0]["product"]["images"] == [r["id"] for k, r in enumerate(rows) if k not in (3, 7)]
    ex = made[0]["product"]["qa"]["excluded_tiles"]
    assert [(e["image_id"], e["path"]) for e in ex] == [(4, rows[3]["path"]), (8, rows[7]["path"])]
    assert ex[0]["reason"].startswith("noise 8.00x the radiometer equation") and "0834+555 at 0.50x" in ex[1]["reason"]
    # recorded by the service as the hook returns it
    db = Products(paths.products_db)
    for r in rows:
        db.add_image(r["path"], start=r["start_mjd"], qa=r["qa"])
    record_products(paths, {"mosaics": [made[0]["product"]],
                            "images_update": [u for m in made for u in m["rejected_images"]]})
    assert [db.get("image", rows[k]["path"])["status"] for k in (2, 3, 7)] == ["imaged", "rejected", "rejected"]
    assert db.get("image", rows[3]["path"])["qa"]["rejected"] == ex[0]["reason"]
    mos = db.list_mosaics()[0]
    assert mos["qa"]["excluded_tiles"] == ex
    assert db.images_not_in_mosaic() == []  # ten in the mosaic, two rejected


def test_a_run_of_only_bad_tiles_makes_no_mosaic_and_rejects_them(tmp_path):
    paths = get_paths(root=tmp_path / "root").ensure("mosaics")
    t0 = Time("2025-10-29T13:24:37").mjd
    rows = [_tile(tmp_path, k, t0 + k * GROUP_CADENCE_S / 86400) for k in range(3)]
    for r in rows:
        r["qa"] = {"noise_ratio": 1.1, "dynamic_range": 4.0}
    made = maybe_mosaic(paths, rows, PipelineOptions(tiles_per_mosaic=3))
    assert [m["product"] for m in made] == [None] and not list(paths.mosaics.glob("*.fits"))
    assert [u["path"] for u in made[0]["rejected_images"]] == [r["path"] for r in rows]
    assert all(u["qa"]["rejected"] == "dynamic range 4.0 (< 10)" for u in made[0]["rejected_images"])
