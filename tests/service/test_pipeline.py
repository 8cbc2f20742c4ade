"""The pipeline's mosaic trigger on real FITS tiles: runs of consecutive tiles, never across a gap."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from astropy.io import fits
from astropy.time import Time
from astropy.wcs import WCS

from dsacont.config import get_paths
from dsacont.imaging.beam import beam_image
from dsacont.service.mosaics import maybe_mosaic
from dsacont.service.options import GROUP_CADENCE_S, PipelineOptions


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


def test_crossmatch_gates_keep_tiles_with_a_wrong_flux_scale_or_astrometry_out(tmp_path):
    """The tiles' NVSS cross-match (image QA ``crossmatch``): a flux scale of 0.62 over 25 matches and a
    12" = 0.15 beam offset keep two tiles out; 0.62 over only 6 matches is not judged."""
    from dsacont.sources.crossmatch import tile_crossmatch_gates

    paths = get_paths(root=tmp_path / "root").ensure("mosaics")
    t0 = Time("2025-10-29T13:24:37").mjd
    rows = [_tile(tmp_path, k, t0 + k * GROUP_CADENCE_S / 86400) for k in range(6)]
    good = {"reference": "nvss", "n_matched": 25, "flux_ratio_median": 0.96, "flux_ratio_scatter": 0.07,
            "ra_offset_arcsec": 0.6, "dec_offset_arcsec": -0.4, "beam_major_arcsec": 80.0}
    for r in rows:
        r["qa"] = {"noise_ratio": 1.1, "dynamic_range": 500.0, "crossmatch": dict(good)}
    rows[1]["qa"]["crossmatch"]["flux_ratio_median"] = 0.62
    rows[2]["qa"]["crossmatch"].update(flux_ratio_median=0.62, n_matched=6)
    rows[4]["qa"]["crossmatch"].update(ra_offset_arcsec=9.6, dec_offset_arcsec=7.2)
    made = maybe_mosaic(paths, rows, PipelineOptions(tiles_per_mosaic=6, catalogue_tiles=False, photometry=False))
    ex = made[0]["product"]["qa"]["excluded_tiles"]
    assert [e["image_id"] for e in ex] == [2, 5] and made[0]["n_tiles"] == 4
    assert ex[0]["reason"] == "flux ratio to nvss 0.62 over 25 sources (outside 0.8-1.2)"
    assert ex[1]["reason"] == 'offset from nvss 12.0" = 0.15 beam over 25 sources (> 0.1 beam)'
    assert [u["path"] for u in made[0]["rejected_images"]] == [rows[1]["path"], rows[4]["path"]]
    # the band's edges, the offset limit, a missing beam, no cross-match at all
    assert tile_crossmatch_gates(dict(good, flux_ratio_median=1.2)) == []
    assert tile_crossmatch_gates(dict(good, flux_ratio_median=1.21)) != []
    assert tile_crossmatch_gates(dict(good, ra_offset_arcsec=8.0, dec_offset_arcsec=0.0)) == []
    assert tile_crossmatch_gates(dict(good, ra_offset_arcsec=8.1, dec_offset_arcsec=0.0)) != []
    assert tile_crossmatch_gates(dict(good, ra_offset_arcsec=30.0, beam_major_arcsec=float("nan"))) == []
    assert tile_crossmatch_gates(dict(good, flux_ratio_median=float("nan")))[0].startswith("flux ratio to nvss nan")
    assert tile_crossmatch_gates(None) == [] and tile_crossmatch_gates({}) == []


def test_tiles_and_mosaics_measured_at_the_reference_positions_and_recorded(tmp_path):
    """stage_catalogue hands back the tile's forced photometry and keeps its cross-match in the tile's QA;
    the mosaic hook hands back the mosaic's; the service stores both in the photometry table."""
    from dsacont.service.mosaics import on_group_complete
    from dsacont.service.pipeline import stage_catalogue
    from dsacont.service.products import Products
    from dsacont.service.state import record_products
    from dsacont.sources import light_curve

    paths = get_paths(root=tmp_path / "root").ensure("mosaics")
    t0 = Time("2025-10-29T13:24:37").mjd
    rows = [_tile(tmp_path, k, t0 + k * GROUP_CADENCE_S / 86400) for k in range(3)]
    cat = tmp_path / "ref.csv"  # the user's catalogue (NVSS layout): a source at each tile's centre, one off the sky
    lines = ["NVSS,RAJ2000,DEJ2000,S1.4"]
    for k in range(3):
        ra = 120.0 + 1.2885 * k
        lines.append(f"T{k},{int(ra / 15):02d} {(ra / 15 % 1) * 60:09.6f},+55 34 12.0,100.0")
    lines.append("SOUTH,12 00 00.0,-30 00 00.0,100.0")
    cat.write_text("\n".join(lines) + "\n")
    options = PipelineOptions(tiles_per_mosaic=3, photometry_catalogue=str(cat))
    end = t0 + GROUP_CADENCE_S / 86400
    made = {"images": [{"path": rows[0]["path"], "start": t0, "end": end, "qa": {"noise_jy": 1e-3}}]}
    stage_catalogue("2025-10-29T13:24:37", {"files": {"pbcor": rows[0]["path"]}}, paths, made, options)
    (ph,) = made["photometry"]
    assert ph["kind"] == "tile" and ph["image"] == rows[0]["path"] and ph["reference"] == "ref.csv"
    assert ph["mjd"] == pytest.approx(0.5 * (t0 + end), abs=1e-9)
    assert [r["name"] for r in ph["rows"]] == ["T0", "T1"]  # T1 is on the tile's edge; T2, SOUTH are not on it
    # the tile's noise (QA) over its primary beam: 1 mJy/beam at the centre, more at the edge
    t0_row, t1_row = ph["rows"]
    assert t0_row["flux_err_jy"] == pytest.approx(1e-3, rel=0.05) and t1_row["flux_err_jy"] > 1.1e-3
    assert all(abs(r["flux_jy"]) < 5e-3 and not r["detected"] for r in ph["rows"])
    xm = made["images"][0]["qa"]["crossmatch"]
    assert xm["n_matched"] == 0 and xm["reference"] == "nvss" and xm["beam_major_arcsec"] == pytest.approx(180.0)
    for r in rows:  # as the products database's rows carry it
        r["end_mjd"] = r["start_mjd"] + GROUP_CADENCE_S / 86400
    hook = on_group_complete(None, None, {"paths": paths, "options": options, "known": {"unmosaicked_images": rows}})
    (mph,) = hook["products"]["photometry"]
    assert mph["kind"] == "mosaic" and mph["image"] == hook["mosaics"][0]
    assert sorted(r["name"] for r in mph["rows"]) == ["T0", "T1", "T2"]
    assert mph["mjd"] == pytest.approx(t0 + 1.5 * GROUP_CADENCE_S / 86400, abs=1e-9)
    db = Products(paths.products_db)
    for r in rows:
        db.add_image(r["path"], start=r["start_mjd"], end=r["start_mjd"] + GROUP_CADENCE_S / 86400)
    record_products(paths, {"photometry": made["photometry"]})
    record_products(paths, hook["products"])
    assert [(p["kind"], p["image_path"]) for p in db.photometry("T0")] == [("tile", rows[0]["path"]),
                                                                          ("mosaic", mph["image"])]
    # T1's light curve: the stored rows of tile 0 and the mosaic, tiles 1 and 2 (never measured) from their files
    lc = light_curve((120.0 + 1.2885, 55.57), products=paths.products_db, kind="all")
    assert lc["kind"].value_counts().to_dict() == {"image": 3, "mosaic": 1}
    assert lc[lc["image"] == rows[0]["path"]]["flux_jy"].iloc[0] == ph["rows"][1]["flux_jy"]


def test_the_calibrator_group_goes_first_by_its_header(request):
    """The service's claim priority from what the watcher reads of a real simulated file: the
    0834+555 transit group (pointing declination and integration times of its header) goes first,
    then the groups outward from it; two hours from it, or with another calibrator asked for, time
    order."""
    from streamtools import sim_group_files

    from dsacont.service.priority import group_priority
    from dsacont.service.watcher import validate_subband_file

    header = validate_subband_file(sim_group_files(request)[0], check_values=False)
    assert header["dec_deg"] == pytest.approx(55.57, abs=0.05)
    t0, t1 = header["time_unix"]
    assert 290.0 < t1 - t0 < 320.0  # one group: 24 integrations of 12.88 s
    value, why = group_priority(None, header)
    assert value == 13 and why.startswith("calibrator 0834+555 transits in it (2025-10-29T13:5"), why
    # outward from it, one less per group; nothing beyond an hour
    for k, want in [(1, 12), (-1, 12), (3, 10), (-12, 1)]:
        shifted = dict(header, time_unix=[t0 + k * GROUP_CADENCE_S, t1 + k * GROUP_CADENCE_S])
        value, why = group_priority(None, shifted)
        assert value == want and why.startswith(f"{abs(k)} group(s) from the calibrator 0834+555 transit"), (k, why)
    later = dict(header, time_unix=[t0 + 2 * 3600.0, t1 + 2 * 3600.0])  # (another calibrator is near then)
    assert group_priority(None, later, {"calibrator": "0834+555"}) == (0, None)
    assert group_priority(None, header, {"calibrator": "0542+498"}) == (0, None)
    assert group_priority(None, {"nblts": 10}) == (0, None)  # a header without a pointing: time order
