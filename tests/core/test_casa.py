"""CASA works offline out of the box, and a user's own CASA config wins."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

CHILD = textwrap.dedent(
    """
    import json, dsacont.casa as c
    ct = c.ensure_casa()
    me = ct.measures()
    me.doframe(me.observatory('OVRO_MMA'))
    me.doframe(me.epoch('utc', '2025-10-29T13:55:26'))
    d = me.measure(me.direction('J2000', '08h34m54.904s', '55d34m21.07s'), 'HADEC')
    import casaconfig.config as cfg
    print(json.dumps({'ha': d['m0']['value'], 'dec': d['m1']['value'],
                      'measurespath': cfg.measurespath, 'site': __import__('os').environ.get('CASASITECONFIG')}))
    """
)


def _fresh_env(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASA")}
    env["HOME"] = str(tmp_path / "home")
    env["XDG_CACHE_HOME"] = str(tmp_path / "cache")
    os.makedirs(env["HOME"], exist_ok=True)
    return env


def _run(env, cwd):
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1]), out


def test_measures_conversion_in_fresh_process(tmp_path):
    import casadata

    res, out = _run(_fresh_env(tmp_path), tmp_path)
    # CASA and the catalogue agree: at the operators' transit time 0834+555 sits 119 s of time
    # east of the apparent meridian (26 years of precession), at apparent dec 55.48 deg
    assert res["ha"] == pytest.approx(-0.0086976, abs=2e-6)
    assert res["dec"] == pytest.approx(0.96832, abs=1e-4)
    assert os.path.realpath(res["measurespath"]) == os.path.realpath(casadata.datapath)
    assert res["site"].startswith(str(tmp_path / "cache"))
    # no measures-data error reaches the user. The only CASA message allowed is casacore's notice
    # that casadata's leap-second table is older than a year (no leap second since 2017, so the
    # conversions are right); it comes from C++ straight to stderr.
    severe = [ln for ln in (out.stdout + out.stderr).splitlines() if "SEVERE" in ln]
    allowed = ("TAI_UTC seems out-of-date", "Until the table is updated", "derived from UTC could be wrong")
    assert all(any(a in ln for a in allowed) for ln in severe), severe
    for bad in ("measurespath", "No such file", "not found", "Exception", "Traceback"):
        assert bad not in out.stderr, out.stderr
    # and no casa-*.log litters the working directory
    assert not any(n.startswith("casa-") and n.endswith(".log") for n in os.listdir(tmp_path))


def test_user_casa_config_wins(tmp_path):
    import casadata

    env = _fresh_env(tmp_path)
    mine = tmp_path / "my-measures"
    os.symlink(casadata.datapath, mine)
    os.makedirs(os.path.join(env["HOME"], ".casa"))
    with open(os.path.join(env["HOME"], ".casa", "config.py"), "w") as fh:
        fh.write(f"measurespath = {str(mine)!r}\nmeasures_auto_update = False\ndata_auto_update = False\n")
    res, _ = _run(env, tmp_path)
    assert res["measurespath"] == str(mine)
    assert res["ha"] == pytest.approx(-0.0086976, abs=2e-6)


def test_existing_site_config_is_left_alone(tmp_path):
    import casadata

    env = _fresh_env(tmp_path)
    site = tmp_path / "site.py"
    site.write_text(f"measurespath = {casadata.datapath!r}\nmeasures_auto_update = False\ndata_auto_update = False\n")
    env["CASASITECONFIG"] = str(site)
    res, _ = _run(env, tmp_path)
    assert res["site"] == str(site)


USER_CHILD = textwrap.dedent(
    """
    import json, sys
    import dsacont
    light = 'casatools' not in sys.modules and 'casatasks' not in sys.modules
    import casatools  # the user's own import, after dsacont's
    me = casatools.measures()
    me.doframe(me.observatory('OVRO_MMA'))
    me.doframe(me.epoch('utc', '2025-10-29T13:55:26'))
    d = me.measure(me.direction('J2000', '08h34m54.904s', '55d34m21.07s'), 'HADEC')
    print(json.dumps({'light': light, 'ha': d['m0']['value'], 'dec': d['m1']['value']}))
    """
)


def _no_network(cmd):
    """``cmd`` in a private network namespace (no interface but loopback) when the system allows one."""
    if shutil.which("unshare") and subprocess.run(["unshare", "-rn", "true"], capture_output=True).returncode == 0:
        return ["unshare", "-rn", *cmd]
    return cmd


def test_import_dsacont_makes_users_casatools_work_offline(tmp_path):
    """``import dsacont`` then the user's own ``import casatools``: a measures conversion works with
    an empty HOME and no network, and importing dsacont did not import casatools itself."""
    env = _fresh_env(tmp_path)
    env["PYTHONPATH"] = os.pathsep.join([os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    out = subprocess.run(_no_network([sys.executable, "-c", USER_CHILD]), env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    res = json.loads(out.stdout.strip().splitlines()[-1])
    assert res["light"], "import dsacont imported casatools"
    assert res["ha"] == pytest.approx(-0.0086976, abs=2e-6)
    assert res["dec"] == pytest.approx(0.96832, abs=1e-4)
    for bad in ("measurespath", "Traceback"):
        assert bad not in out.stderr, out.stderr


def test_casatools_alone_logs_warnings_only(tmp_path):
    """A process that uses casatools without casatasks (a convert worker making an MS template
    with CASA's Simulator) prints none of CASA's INFO lines (casatools alone prints them all);
    with ``CONTIMG_CASA_LOG_LEVEL=INFO`` they go to CASA's log file."""
    child = textwrap.dedent(
        """
        import dsacont.casa as c
        ct = c.ensure_casa()
        sm = ct.simulator()
        sm.open('x.ms')
        sm.close()
        sm.done()
        """
    )
    quiet = subprocess.run([sys.executable, "-c", child], env=_fresh_env(tmp_path), cwd=tmp_path,
                           capture_output=True, text=True, timeout=300)
    assert quiet.returncode == 0, quiet.stderr
    assert (tmp_path / "x.ms").is_dir()
    assert "INFO" not in quiet.stderr + quiet.stdout, quiet.stderr
    log = tmp_path / "cache" / "dsacont" / "casa.log"  # the site config's log file
    assert "Simulator::reset" not in (log.read_text() if log.exists() else "")
    shutil.rmtree(tmp_path / "x.ms")
    loud = subprocess.run([sys.executable, "-c", child], env={**_fresh_env(tmp_path), "CONTIMG_CASA_LOG_LEVEL": "INFO"},
                          cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert loud.returncode == 0, loud.stderr
    assert "Simulator::reset" in log.read_text()
