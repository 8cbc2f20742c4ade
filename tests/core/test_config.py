from pathlib import Path

import pytest

from dsacont.config import get_paths
from dsacont.errors import ConfigError


def test_operator_defaults(monkeypatch):
    for k in ("CONTIMG_ROOT", "CONTIMG_SCRATCH_DIR", "CONTIMG_OUTPUT_DIR", "CONTIMG_CAL_DIR", "CONTIMG_STATE_DIR",
              "CONTIMG_INCOMING_DIR", "CONTIMG_IMAGE_DIR", "CONTIMG_MOSAIC_DIR", "CONTIMG_TMP_DIR"):
        monkeypatch.delenv(k, raising=False)
    p = get_paths()
    assert p.stage == Path("/stage/dsa110-contimg")
    assert p.ms == Path("/stage/dsa110-contimg/ms")
    assert p.caltables == Path("/stage/dsa110-contimg/caltables")
    assert p.images == Path("/stage/dsa110-contimg/images")
    assert p.mosaics == Path("/stage/dsa110-contimg/mosaics")
    assert p.tmp == Path("/stage/dsa110-contimg/tmp")
    assert p.incoming == Path("/data/incoming")
    assert p.state == Path("/data/dsa110-contimg/state")
    assert p.registry_db.parent == p.state and p.products_db.parent == p.state and p.queue_db.parent == p.state
    assert "scratch" not in str(p.as_dict())


def test_environment_and_overrides(monkeypatch, tmp_path):
    monkeypatch.delenv("CONTIMG_ROOT", raising=False)
    monkeypatch.setenv("CONTIMG_SCRATCH_DIR", str(tmp_path / "stage"))
    monkeypatch.setenv("CONTIMG_CAL_DIR", str(tmp_path / "cal"))
    p = get_paths()
    assert p.ms == tmp_path / "stage" / "ms"
    assert p.caltables == tmp_path / "cal"
    p2 = get_paths(ms=tmp_path / "fast")
    assert p2.ms == tmp_path / "fast" and p2.caltables == tmp_path / "cal"
    with pytest.raises(TypeError):
        get_paths(scratch="/x")


def test_root_puts_everything_locally(tmp_path, monkeypatch):
    monkeypatch.setenv("CONTIMG_OUTPUT_DIR", "/elsewhere")  # root wins over the environment
    p = get_paths(root=tmp_path).ensure()
    for name, value in p.as_dict().items():
        assert value.startswith(str(tmp_path)), name
        assert Path(value).is_dir()


def test_unwritable_path_is_a_clear_error(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("x")
    with pytest.raises(ConfigError, match=r"ms directory .*a-file/ms.*CONTIMG_OUTPUT_DIR"):
        get_paths(root=tmp_path, ms=blocker / "ms").ensure("ms")
