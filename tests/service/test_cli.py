"""The service's commands: ``dsacont stream`` takes its options from one TOML file, flags over it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from streamtools import service_env, sim_group_files

from dsacont.config import get_paths
from dsacont.service.cli import stream_options, stream_parser
from dsacont.service.loop import ServiceOptions
from dsacont.service.products import Products
from dsacont.service.replay import replay


def test_toml_sets_options_and_a_flag_overrides_it(tmp_path):
    cfg = tmp_path / "dsacont.toml"
    cfg.write_text('[service]\nmax_inflight = 2\npoll_s = 5\nincomplete_timeout_s = 600.0\nonce = true\n'
                   '[pipeline]\ntiles_per_mosaic = 6\nimaging = { niter = 10 }\n')
    o = stream_options(stream_parser().parse_args(["--config", str(cfg), "--poll", "0.5", "--option", "calibrator=x"]))
    assert o.max_inflight == 2 and o.incomplete_timeout_s == 600.0 and o.once is True
    assert o.poll_s == 0.5  # the flag wins over the file
    assert o.processor_options == {"tiles_per_mosaic": 6, "imaging": {"niter": 10}, "calibrator": "x"}
    assert isinstance(o.poll_s, float) and o.tolerance_s == ServiceOptions().tolerance_s  # defaults elsewhere
    # no file: the dataclass defaults
    assert stream_options(stream_parser().parse_args([])) == ServiceOptions()
    # a wrong key or type names the file and the key
    cfg.write_text("[service]\npol_s = 1\n")
    with pytest.raises(Exception, match=r"dsacont.toml \[service\].*pol_s"):
        stream_options(stream_parser().parse_args(["--config", str(cfg)]))
    cfg.write_text('[service]\nmax_inflight = "two"\n')
    with pytest.raises(Exception, match="max_inflight: expected int"):
        stream_options(stream_parser().parse_args(["--config", str(cfg)]))


def test_stream_reads_the_config_file(sim_group_files_dir, tmp_path):
    """``dsacont stream --config FILE`` end to end: the file's processor and options are used."""
    root = tmp_path / "run"
    replay(sim_group_files_dir, get_paths(root=root).incoming, mode="link")
    cfg = tmp_path / "svc.toml"
    cfg.write_text('[service]\nprocessor = "stream_processors:summarise"\non_complete = ""\nonce = true\n'
                   'poll_s = 0.3\nmin_free_gb = 0.0\nlease_s = 30.0\n[pipeline]\nsleep_s = 0\n')
    env = service_env()
    r = subprocess.run([sys.executable, "-m", "dsacont.cli", "stream", "--root", str(root), "--config", str(cfg)],
                       env=env, capture_output=True, text=True, timeout=300, cwd=str(Path(__file__).parents[2]))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "processor stream_processors:summarise" in r.stderr
    assert [Path(x["path"]).suffix for x in Products(get_paths(root=root).products_db).list_images()] == [".json"]


@pytest.fixture
def sim_group_files_dir(request):
    return Path(sim_group_files(request)[0]).parent


def test_pipeline_options_are_typed():
    from dsacont.service.options import PipelineOptions, options_from

    o = options_from({"tiles_per_mosaic": "3", "imaging.niter": "10", "mosaic": {"pb_cutoff": 0.3}})
    assert o == PipelineOptions(tiles_per_mosaic=3, imaging={"niter": 10}, mosaic={"pb_cutoff": 0.3})
    with pytest.raises(ValueError, match="unknown option"):
        options_from({"tiles": 1})
    with pytest.raises(ValueError, match="tiles_per_mosaic: expected int"):
        options_from({"tiles_per_mosaic": "many"})
