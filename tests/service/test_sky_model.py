"""The sky model dsacont keeps itself (dsacont.service.sky): the store, and the bootstrap through the service.

The store is tested on its own with made-up detections (matching, weights, trust, exclusion of a
group's own tile, the RA wrap). The service test runs the real chain on the clean simulator's
synthetic sky, which the NVSS catalogue does not describe (a field solve against NVSS is rejected
there): the group after the calibrator's is field-calibrated only thanks to the model of the
transit tile, and the same LST one sidereal day later is calibrated with the first day's model.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
from astropy import units as u
from streamtools import run_service

from dsacont.config import get_paths
from dsacont.demo import demo_window
from dsacont.io.fits import read_header
from dsacont.io.groups import find_groups
from dsacont.service.products import Products
from dsacont.service.queue import IngestQueue
from dsacont.service.replay import replay
from dsacont.service.sky import SkyStore, meridian_ra_deg
from dsacont.simulator import simulate
from dsacont.sources import read_sources

SIDEREAL_DAY_S = 86164.0905
GROUP_S = 309.237648


def _tile(path, group, mjd, rows, trusted=True, beam=80.0):
    return {"image": str(path), "group": group, "mjd": mjd, "trusted": trusted, "calibration": ["B:transit", "G:transit"],
            "beam_arcsec": beam, "freq_hz": 1.4e9, "rows": [list(map(float, r)) for r in rows]}


def test_store_matches_weights_trusts_and_excludes(tmp_path):
    store = SkyStore(tmp_path / "sky.sqlite3")
    ra0 = meridian_ra_deg("2025-10-29T13:55:00")
    a = [[ra0, 55.5, 1.00, 0.01, 100.0], [ra0 + 1.0, 55.0, 0.20, 0.02, 10.0]]
    store.add_image(_tile(tmp_path / "t1.fits", "g1", 60977.58, a))
    # the second tile sees both again, 10 arcsec away (within half a beam), with another flux,
    # and one new source; the third is not trusted (transferred gains) and sees a wrong flux
    b = [[ra0 + 10 / 3600 / np.cos(np.radians(55.5)), 55.5, 1.10, 0.02, 50.0], [ra0 + 1.0, 55.0, 0.26, 0.02, 13.0],
         [ra0 - 1.5, 56.0, 0.05, 0.005, 10.0]]
    store.add_image(_tile(tmp_path / "t2.fits", "g2", 60977.585, b))
    store.add_image(_tile(tmp_path / "t3.fits", "g3", 60977.59, [[ra0, 55.5, 5.0, 0.01, 100.0]], trusted=False))
    assert store.summary()["sources"] == 3
    m = store.model_near("2025-10-29T13:55:00")
    by_name = {r[0]: r for r in m["sources"]}
    assert len(by_name) == 3 and m["provenance"]["images"] == 2 and m["provenance"]["days"] == 1
    bright = m["sources"][0]
    # inverse-variance mean: (1.0/0.01^2 + 1.1/0.02^2) / (1/0.01^2 + 1/0.02^2) = 1.02; untrusted 5 Jy ignored
    assert bright[3] == pytest.approx(1.02, abs=1e-6) and bright[4] == 2
    # the position is the S/N^2-weighted mean: 100^2 : 50^2 -> 2 arcsec east of the first
    assert (bright[1] - ra0) * 3600 * np.cos(np.radians(55.5)) == pytest.approx(2.0, abs=0.05)
    assert m["sources"][1][3] == pytest.approx(0.23, abs=1e-6)
    # a group's own tile never feeds its own model
    own = store.model_near("2025-10-29T13:55:00", exclude_group="g2")
    assert [r[3] for r in own["sources"]] == pytest.approx([1.0, 0.2])
    # a reprocessed tile replaces its detections (no double counting)
    store.add_image(_tile(tmp_path / "t2.fits", "g2", 60977.585, b[:1]))
    again = store.model_near("2025-10-29T13:55:00")
    assert len(again["sources"]) == 2 and store.summary()["detections"] == 4
    # a model 6 hours of RA away is empty
    assert store.model_near("2025-10-29T19:55:00")["sources"] == []


def test_a_source_only_one_tile_of_several_found_is_left_out(tmp_path):
    """The stripe a bright source outside one tile's field leaves across it is not in the model: the
    tiles around it, which should have seen a source that bright, did not; a faint source at the
    newest tile's leading edge, which no other tile could see, is kept."""
    store = SkyStore(tmp_path / "sky.sqlite3")
    ra0 = meridian_ra_deg("2025-10-29T13:55:00")
    step = 1.25  # deg of RA between consecutive 5-minute tiles

    def tile(i, rows):
        d = _tile(tmp_path / f"t{i}.fits", f"g{i}", 60977.58 + i * 0.0036, rows)
        d.update(ra_deg=ra0 + i * step, dec_deg=55.6, radius_deg=1.75, noise_jy=0.001)
        return d

    real = [ra0 + 0.3, 55.4, 0.2, 0.005, 40.0]  # inside all three tiles, bright: all find it
    store.add_image(tile(0, [real]))
    store.add_image(tile(1, [real]))
    artefact = [ra0 + 0.6, 55.57, 0.8, 0.02, 40.0]  # only tile 2 "finds" it, tiles 0 and 1 should have
    edge = [ra0 + 2 * step + 1.5 / np.cos(np.radians(55.6)), 55.6, 0.02, 0.002, 8.0]  # only tile 2 covers it
    store.add_image(tile(2, [real, artefact, edge]))
    m = store.model_near("2025-10-29T14:00:00")
    fluxes = sorted(r[3] for r in m["sources"])
    assert fluxes == pytest.approx([0.02, 0.2]), m
    assert m["rejected_unconfirmed"] == 1


def test_store_wraps_at_ra_zero(tmp_path):
    store = SkyStore(tmp_path / "sky.sqlite3")
    # a time whose meridian is at RA 0 (the meridian moves 360.9856 deg per day)
    t0 = 60977.0 + ((360.0 - meridian_ra_deg(60977.0)) % 360.0) / 360.9856
    assert abs(((meridian_ra_deg(t0) + 180) % 360) - 180) < 0.1
    rows = [[359.9, 55.0, 1.0, 0.01, 100.0], [0.1, 55.0, 0.5, 0.01, 50.0]]
    store.add_image(_tile(tmp_path / "w1.fits", "w1", t0, rows))
    store.add_image(_tile(tmp_path / "w2.fits", "w2", t0, [[359.9 + 5 / 3600, 55.0, 1.0, 0.01, 100.0]]))
    m = store.model_near(t0)
    assert len(m["sources"]) == 2 and m["sources"][0][4] == 2


@pytest.mark.casa
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_the_strip_model_calibrates_where_the_catalogue_cannot(tmp_path):
    """Transit, +1 and +2 groups on day 1, and the +2 group's LST on day 2, through the real service,
    imaging with WSClean (``imaging.imager=auto``: the full-size path; tclean if it is absent)."""
    start, _transit = demo_window(1)
    archive = tmp_path / "archive"
    simulate(archive, start, 3 * GROUP_S / 60 - 0.5, preset="small", seed=11)
    day2 = start + (2 * GROUP_S + SIDEREAL_DAY_S) * u.s
    simulate(archive, day2, 4.0, preset="small", seed=11)  # the same sky and array, a day later
    groups = sorted(find_groups(archive), key=lambda g: g.timestamp)
    assert len(groups) == 4
    names = dict(zip([g.timestamp for g in groups], ("transit", "+1", "+2", "day2")))

    root = tmp_path / "run"
    paths = get_paths(root=root).ensure()
    replay(archive, paths.incoming, mode="link")
    rc, log = run_service(root, "--max-groups", "4", "--idle-exit", "300", "--max-inflight", "1",
                          "--option", "imaging.fov_deg=2.0", "--option", "imaging.niter=500",
                          "--option", "imaging.imager=auto",
                          processor="dsacont.service.pipeline:process_group",
                          on_complete="dsacont.service.mosaics:on_group_complete", timeout=2000)
    assert rc == 0, log[-4000:]
    q = IngestQueue(paths.queue_db)
    try:
        for ts, name in names.items():
            assert q.get(ts).state == "completed", (name, q.get(ts).error)
    finally:
        q.close()

    db = Products(paths.products_db)
    chains = {}
    for ms in db.list_ms():
        chains[names[ms["group_timestamp"]]] = {c["how"]: c for c in db.get("ms", ms["path"])["caltables"]}
    assert set(chains["transit"]) == {"transit"}
    for name in ("+1", "+2", "day2"):
        field = chains[name].get("field")
        assert field is not None, (name, list(chains[name]))
        sky = field["detail"]["sky_model"]
        assert sky["name"].startswith("dsacont strip model"), (name, sky)
        # NVSS was tried first nowhere: the strip model comes first, and it was accepted
        assert not sky.get("rejected_before"), sky
    # day 2's model comes from day 1's tiles
    assert "1 day" in chains["day2"]["field"]["detail"]["sky_model"]["name"]
    assert chains["day2"]["field"]["detail"]["sky_model"]["n_sources"] >= 4

    # every tile has its catalogue recorded, with its cross-match QA, and the store knows 4 tiles
    cats = db.list_catalogues()
    assert len(cats) == 4 and all(c["n_sources"] > 0 for c in cats)
    assert all(read_sources(c["path"]).meta["IMAGE"].endswith(".pbcor.fits") for c in cats)
    # ... and its forced photometry at the NVSS and VLA calibrator positions in it, stored by the service
    import sqlite3

    con = sqlite3.connect(paths.products_db)
    measured = {r[0] for r in con.execute("SELECT image_path FROM photometry_images WHERE kind = 'tile'")}
    con.close()
    assert measured == {im["path"] for im in db.list_images()}
    phot = db.photometry(kind="tile")
    assert any(p["name"] == "0834+555" and p["detected"] and p["flux_jy"] > 5.0 for p in phot)
    summary = SkyStore(paths.sky_db).summary()
    # trusted: the transit's and the field-calibrated tiles, unless striped (noise > 5x the radiometer
    # equation: at this test's 2-deg field the tile two groups after the transit has 0834+555 just
    # outside it); day 2's tile was imaged too
    noisy = [im for im in db.list_images() if im["qa"]["noise_ratio"] > 5.0]
    assert summary["images"] == 4 and summary["trusted_images"] == 4 - len(noisy) >= 2
    # the tile's FITS header names the model too
    image = next(im for im in db.list_images() if "day2" == names.get(db.get("ms", im["ms_path"])["group_timestamp"]))
    assert any("dsacont strip model" in h for h in read_header(image["path"])["HISTORY"]), json.dumps(image["qa"])[:500]
