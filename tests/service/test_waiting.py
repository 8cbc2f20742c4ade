"""Waiting without spinning, and the backlog in ``dsacont status``.

* Groups that find no valid calibration are not claimed again while other groups complete (which
  change nothing in the calibration registry); they are claimed once more when the calibrator
  group registers its tables, and the log says once what each waits for. Claims are counted.
* ``dsacont status`` shows the files the watcher sees but has not recorded, the groups
  collecting, the oldest unprocessed data and how far behind real time the service is.
"""
from __future__ import annotations

import calendar
import json
import re
import shutil
import subprocess
import sys
import time

import pytest
from streamtools import make_archive, queue_groups, service_env, start_service, wait_for

from dsacont.config import get_paths
from dsacont.service.queue import IngestQueue, WorkerId
from dsacont.service.status import format_status, status
from dsacont.service.watcher import Watcher

pytestmark = pytest.mark.timeout(300)


def test_groups_waiting_for_calibration_are_not_reclaimed_until_the_registry_changes(sim_files, tmp_path):
    """Groups 0 and 1 need the calibrator group 2, whose files arrive last; groups 3-5 complete
    meanwhile. Each waiting group is claimed exactly twice: once to find no calibration, once after
    group 2 registered its (stand-in) table."""
    root = tmp_path / "run"
    paths = get_paths(root=root).ensure()
    stamps = make_archive(sim_files, tmp_path / "archive", range(6))
    cal = [f for f in sorted((tmp_path / "archive").iterdir()) if f.name < stamps[3] and f.name >= stamps[2]]
    assert len(cal) == 16
    for f in (tmp_path / "archive").iterdir():
        if f not in cal:
            shutil.copyfile(f, paths.incoming / f.name)
    svc = start_service(root, "--incomplete-timeout", "60", "--option", f"cal_after={stamps[2]}")
    try:
        def ready():
            g = queue_groups(root)
            return (all(s in g and g[s].state == "completed" for s in stamps[3:])
                    and all(s in g and g[s].waits >= 1 for s in stamps[:2]))

        wait_for(ready, 120, what="groups 3-5 done, 0 and 1 waiting")
        time.sleep(3)  # ten polls: nothing that could satisfy them has happened, so no claim
        g = queue_groups(root)
        assert [g[s].claims for s in stamps[:2]] == [1, 1] and all(g[s].state == "pending" for s in stamps[:2])
        assert all(g[s].wait_reason == "calibration" for s in stamps[:2])
        # dsacont status: the two waiting groups, the backlog and how far behind real time
        out = subprocess.run([sys.executable, "-m", "dsacont.cli", "status", "--root", str(root), "--json"],
                             capture_output=True, text=True, env=service_env(), check=True).stdout
        st = json.loads(out)
        assert [w["group"] for w in st["waiting"]] == stamps[:2] and st["waiting"][0]["wait"] == "calibration"
        assert st["backlog"]["oldest_unprocessed"] == stamps[0]
        assert st["backlog"]["groups_open"] == {"pending": 2}
        t0 = calendar.timegm(time.strptime(stamps[0], "%Y-%m-%dT%H:%M:%S"))
        assert abs(st["backlog"]["behind_s"] - (time.time() - t0)) < 120
        for f in cal:  # the calibrator group arrives
            shutil.copyfile(f, paths.incoming / f.name)
        wait_for(lambda: all(g.state == "completed" for g in queue_groups(root).values()) and len(queue_groups(root)) == 6,
                 120, what="every group completed")
    finally:
        svc.terminate()
        svc.wait(60)
    log = svc.log_path.read_text(errors="replace")
    g = queue_groups(root)
    assert [g[s].claims for s in stamps] == [2, 2, 1, 1, 1, 1], {s: g[s].claims for s in stamps}
    assert all(g[s].attempts == 0 for s in stamps)
    for s in stamps[:2]:  # said once
        assert len(re.findall(rf"group {s} waits for calibration", log)) == 1, log[-3000:]
    assert "calibration registry changed" in log
    assert "caught up: nothing unprocessed" in format_status(paths)


def test_status_shows_files_seen_but_not_recorded(sim_files, tmp_path):
    """The real watcher on real files: a file still being written (unsettled) and files beyond the
    validation budget are reported per file, and the data they hold count as unprocessed."""
    paths = get_paths(root=tmp_path / "run").ensure()
    stamps = make_archive(sim_files, paths.incoming, [0])
    q = IngestQueue(paths.queue_db)
    try:
        w = Watcher(paths.incoming, q, settle_s=1e9)
        me = WorkerId.this_process("test")
        assert w.poll(budget_s=0.0) == []  # the files are fresh: not settled at the first sight
        w.report(me)
        st = status(paths)
        assert st["backlog"]["unrecorded_files"] == 16
        assert st["backlog"]["unrecorded_by_reason"] == {"unsettled": 16}
        assert st["backlog"]["oldest_unprocessed"] == stamps[0] and st["backlog"]["behind_s"] > 0
        assert w.poll(budget_s=0.0) == []  # settled now (same size), but no validation budget left
        w.report(me)
        st = status(paths)
        assert st["backlog"]["unrecorded_by_reason"] == {"validation budget": 16}
        text = format_status(paths)
        assert "16 file(s) seen, not recorded yet (16 validation budget)" in text
        assert f"oldest unprocessed data {stamps[0]} UTC: behind real time by" in text
        assert len(w.poll(budget_s=None)) == 16
        w.report(me)
        st = status(paths)
        assert st["backlog"]["unrecorded_files"] == 0 and st["backlog"]["groups_open"] == {"collecting": 1}
        assert st["backlog"]["oldest_unprocessed"] == stamps[0]
    finally:
        q.close()
