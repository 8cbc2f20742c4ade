"""Products database: real SQLite files, real threads, the CLI."""
from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from dsacont.errors import BadInputError
from dsacont.service.cli import cli_products as cli
from dsacont.service.products import Products


def _touch(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


@pytest.fixture
def db(tmp_path):
    return Products(tmp_path / "state" / "products.sqlite3")


def test_wal_and_roundtrip(db, tmp_path):
    ms = tmp_path / "ms" / "2025-10-29T13:52:51.ms"
    ms.mkdir(parents=True)
    ms_id = db.add_ms(ms, start="2025-10-29T13:52:51", end="2025-10-29T13:58:00",
                      group_timestamp="2025-10-29T13:52:51", inputs=[f"/in/f_sb{i:02d}.hdf5" for i in range(16)],
                      caltables=[{"path": "/cal/a.B", "kind": "B", "registry_id": 3}, "/cal/a.G"])
    con = sqlite3.connect(db.db_path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    con.close()

    row = db.get("ms", ms_id)
    assert row["path"] == str(ms)
    assert len(row["inputs"]) == 16
    assert [c["path"] for c in row["caltables"]] == ["/cal/a.B", "/cal/a.G"]
    assert row["caltables"][0]["registry_id"] == 3
    assert row["start_time"].startswith("2025-10-29T13:52:51")
    assert db.get("ms", str(ms))["id"] == ms_id

    im = _touch(tmp_path / "images" / "t.pbcor.fits")
    im_id = db.add_image(im, ms=str(ms), files={"pbcor": im}, ra_deg=128.7, dec_deg=55.6,
                         start="2025-10-29T13:52:51", end="2025-10-29T13:58:00",
                         qa={"noise_jy": 2.1e-4, "peak_jy": 8.8, "dynamic_range": 41904.0},
                         params={"imsize": 512})
    got = db.get("image", im_id)
    assert got["ms_id"] == ms_id and got["qa"]["peak_jy"] == 8.8 and got["params"]["imsize"] == 512
    # update in place (same path) keeps the id, changes the QA
    assert db.add_image(im, ms=ms_id, qa={"noise_jy": 3e-4}) == im_id
    assert db.get("image", im_id)["qa"] == {"noise_jy": 3e-4}
    db.set_status("image", im_id, "bad", qa={"reason": "test"})
    assert db.get("image", im_id)["status"] == "bad"
    assert db.get("image", im_id)["qa"]["reason"] == "test"


def test_register_only_existing(db, tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        db.add_image(tmp_path / "missing.fits")
    with pytest.raises(BadInputError):
        db.add_ms(tmp_path / "missing.ms")


def test_images_between_and_mosaic(db, tmp_path):
    ids = []
    for k in range(6):
        start = 60977.5 + k * 309.2 / 86400  # MJD floats are accepted too
        im = _touch(tmp_path / "images" / f"tile{k}.fits")
        ids.append(db.add_image(im, start=start, end=start + 309.2 / 86400, status="imaged"))
    # a 15-minute window catches the three tiles whose mid-time is inside it
    from dsacont.service.products import _iso

    picked = db.images_between(_iso(60977.5), _iso(60977.5 + 3 * 309.2 / 86400))
    assert [p["id"] for p in picked] == ids[:3]
    assert [p["id"] for p in db.list_images(limit=2)] == ids[:2]

    mos = _touch(tmp_path / "mosaics" / "m.fits")
    mid = db.add_mosaic(mos, images=ids[:3] + [str(tmp_path / "external.fits")], qa={"n_tiles": 4})
    m = db.get("mosaic", mid)
    assert len(m["images"]) == 4
    # time range taken from the registered tiles
    assert m["start_mjd"] == pytest.approx(60977.5)
    assert m["end_mjd"] == pytest.approx(60977.5 + 3 * 309.2 / 86400)
    assert db.counts()["images"] == {"imaged": 6}
    # the mosaics a rebuilt group's images went into: by path, or by the start of any image
    tile = lambda k: str(tmp_path / "images" / f"tile{k}.fits")  # noqa: E731
    assert db.mosaics_of_images([tile(1)]) == [mid]
    assert db.mosaics_of_images([tile(4)]) == []
    assert db.mosaics_of_images([], (60977.5 + 1.5 * 309.2 / 86400, 60977.5 + 2.5 * 309.2 / 86400)) == [mid]
    assert db.mosaics_of_images([], (60977.5 + 3.5 * 309.2 / 86400, 60977.6)) == []
    assert db.mosaics_of_images() == []


def test_concurrent_writers(db, tmp_path):
    """Threads writing at once (WAL + busy timeout): every row lands, ids are unique."""
    files = [_touch(tmp_path / "images" / f"c{i}.fits") for i in range(40)]
    errors = []

    def work(chunk):
        try:
            for f in chunk:
                db.add_image(f, start="2025-10-29T13:00:00", end="2025-10-29T13:05:00")
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(files[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    rows = db.list_images()
    assert len(rows) == 40 and len({r["id"] for r in rows}) == 40


def test_cli(db, tmp_path, capsys):
    im = _touch(tmp_path / "images" / "x.fits")
    db.add_image(im, start="2025-10-29T13:52:51", end="2025-10-29T13:58:00",
                 qa={"noise_jy": 2e-4, "dynamic_range": 1000.0})
    assert cli(["--db", str(db.db_path), "list", "images"]) == 0
    out = capsys.readouterr().out
    assert "rms=0.200mJy" in out and "1 images" in out
    assert cli(["--db", str(db.db_path), "show", "image", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["path"] == str(im)
    assert cli(["--db", str(db.db_path), "show", "image", "99"]) == 1
    assert cli(["--db", str(tmp_path / "nope.sqlite3"), "list", "ms"]) == 1


def test_catalogues_are_linked_to_their_image_and_listed(db, tmp_path, capsys):
    im = _touch(tmp_path / "images" / "t.pbcor.fits")
    image_id = db.add_image(im, start="2025-10-29T13:52:51", end="2025-10-29T13:58:00")
    cat = _touch(tmp_path / "images" / "t.pbcor.sources.fits")
    qa = {"reference": "NVSS", "n_matched": 12, "flux_ratio_median": 0.981}
    cid = db.add_catalogue(cat, image=im, mjd=60977.58, n_sources=71, params={"finder": "aegean"}, qa=qa)
    assert db.add_catalogue(cat, image=im, mjd=60977.58, n_sources=72, qa=qa) == cid  # keyed by path
    row = db.get("catalogue", cid)
    assert row["image_id"] == image_id and row["n_sources"] == 72 and row["qa"]["flux_ratio_median"] == 0.981
    assert db.counts()["catalogues"] == {"catalogued": 1}
    assert cli(["--db", str(db.db_path), "list", "catalogues"]) == 0
    out = capsys.readouterr().out
    assert "72 sources" in out and "NVSS: 12 matched, flux ratio 0.981" in out and "1 catalogues" in out
