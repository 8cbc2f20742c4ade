"""Crash recovery on the real chain: the service killed -9 in the middle of the calibration solve and
in the middle of imaging (the real ``process_group`` in its Dask worker, CASA and all), restarted
each time; in the end the group is completed once, with one set of products and calibration tables,
nothing half-written and nothing doubled."""
from __future__ import annotations

import re
import signal
import sqlite3
from pathlib import Path

import pytest
from streamtools import group_timestamp, run_service, sim_group_files, start_service, wait_for

from dsacont.calibration.registry import Registry
from dsacont.config import get_paths
from dsacont.service.products import Products
from dsacont.service.queue import IngestQueue
from dsacont.service.replay import replay

PROCESSOR = "dsacont.service.pipeline:process_group"
HOOK = "dsacont.service.mosaics:on_group_complete"


def _kill_when(root, log_name, pattern, what):
    """Start the service, SIGKILL it once its log matches ``pattern`` (the real chain has reached
    that step in its worker), and wait for it to be dead."""
    svc = start_service(root, "--once", "--option", "tiles_per_mosaic=1", log_name=log_name, processor=PROCESSOR,
                        on_complete=HOOK)
    try:
        wait_for(lambda: re.search(pattern, svc.log_path.read_text(errors="replace")) is not None, 900,
                 interval=0.1, what=what)
        svc.kill()
        assert svc.wait(60) == -signal.SIGKILL
    finally:
        if svc.poll() is None:
            svc.kill()
    return svc.log_path.read_text(errors="replace")


@pytest.mark.casa
@pytest.mark.slow
@pytest.mark.timeout(2400)
def test_killed_mid_calibration_and_mid_imaging_then_restarted(request, tmp_path):
    files = sim_group_files(request)  # the 0834+555 transit group: it solves its own calibration
    root = tmp_path / "run"
    paths = get_paths(root=root).ensure()
    replay(Path(files[0]).parent, paths.incoming, mode="link")
    ts = group_timestamp(files, 0)

    # 1. killed while the solve runs (the reference antenna chosen): nothing of the solve may be
    #    registered, and nothing half-written is in place. The fast solve takes ~1 s here, so the
    #    kill may land after it moved its finished tables into place (they are complete, and the
    #    solve after the restart replaces them) but before the service registered them
    _kill_when(root, "run1.log", r"reference antenna\(s\)", "the calibration solve to start")
    assert Registry(paths.registry_db).list(status="valid") == []
    for p in paths.caltables.iterdir():
        assert re.fullmatch(r".*_0834\+555\.[BG](\.png)?", p.name), p
        assert p.suffix == ".png" or (p / "table.dat").is_file(), f"{p} is not a whole table"

    # 2. restarted, killed while tclean images the calibrated MS: no image in place or recorded
    log2 = _kill_when(root, "run2.log", r"antennas, \d+ channels .*B_max", "imaging to start")
    assert "interrupted" in log2 or "reclaim" in log2.lower(), log2[-3000:]
    assert not paths.products_db.exists() or Products(paths.products_db).list_images() == []
    assert list(paths.images.glob("*.fits")) == []

    # 3. restarted to the end
    rc, log = run_service(root, "--once", "--option", "tiles_per_mosaic=1", processor=PROCESSOR, on_complete=HOOK,
                          timeout=1200)
    assert rc == 0, log[-4000:]
    q = IngestQueue(paths.queue_db)
    try:
        g = q.get(ts)
        assert g.state == "completed", (g.state, g.error)
        assert len(q.events(g.id, "completed")) == 1 and len(q.events(g.id, "reclaimed")) == 2
    finally:
        q.close()
    # calibration: one B and one G, valid, solved on this MS; the caltables directory holds just them
    reg = Registry(paths.registry_db).list(status="valid")
    assert sorted(r.kind for r in reg) == ["B", "G"]
    assert sorted(p.name for p in paths.caltables.iterdir() if p.is_dir()) == sorted(Path(r.path).name for r in reg)
    # one MS, one image, one mosaic: counted in SQL, and on disk
    con = sqlite3.connect(paths.products_db)
    try:
        counts = {t: con.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in ("ms", "images", "mosaics")}
    finally:
        con.close()
    assert counts == {"ms": 1, "images": 1, "mosaics": 1}
    assert sorted(p.name for p in paths.ms.glob("*.ms")) == [f"{ts}.ms"]
    assert len(list(paths.images.glob("*.pbcor.fits"))) == 1
    image = Products(paths.products_db).list_images()[0]
    assert Path(image["path"]).exists() and image["qa"]["noise_jy"] > 0
