"""Cross-match QA against reference catalogues: a file in NVSS's (VizieR) column layout, the shipped
NVSS subset, the VLA calibrator list; and the ``dsacont sources`` command."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from astropy.coordinates import SkyCoord

from dsacont.simulator.images import sky_image
from dsacont.sources import find_sources
from dsacont.sources.crossmatch import crossmatch, reference_sources


@pytest.fixture(scope="module")
def field(tmp_path_factory):
    """A 512^2 image with its noise map, 50 sources S/N 4-400 (1 mJy/beam at the centre), and its catalogue."""
    d = tmp_path_factory.mktemp("xmatch")
    truth = sky_image(d / "f.fits", n_sources=50, npix=512, snr_range=(4, 400), seed=11)
    return d, truth, find_sources(d / "f.fits")


def _nvss_layout(path, truth, *, scale=1.0, ddec_arcsec=0.0, keep=None):
    """The truth as an NVSS VizieR table: sexagesimal RAJ2000/DEJ2000, S1.4 in mJy, sizes; as CSV."""
    keep = np.ones(len(truth["ra_deg"]), bool) if keep is None else keep
    c = SkyCoord(truth["ra_deg"][keep], truth["dec_deg"][keep] + ddec_arcsec / 3600.0, unit="deg")
    lines = ["NVSS,RAJ2000,DEJ2000,S1.4,l_MajAxis,MajAxis,l_MinAxis,MinAxis,PA"]
    for n, cc, s in zip(truth["name"][keep], c, truth["flux_jy"][keep] / scale):
        lines.append(f"{n},{cc.ra.to_string(unit='hourangle', sep=' ', precision=3)},"
                     f"{cc.dec.to_string(sep=' ', precision=2, alwayssign=True)},{s * 1e3:.4f},<,14.0,<,14.0,0.0")
    path.write_text("\n".join(lines) + "\n")
    return path


def test_nvss_layout_file_gives_flux_scale_offsets_and_completeness(field, tmp_path):
    d, truth, res = field
    # reference fluxes 10 % low and positions 6" south: the catalogue reads 1.11 x bright, 6" north
    ref = _nvss_layout(tmp_path / "nvss.csv", truth, scale=1 / 0.9, ddec_arcsec=-6.0)
    qa = crossmatch(d / "f.sources.fits", ref, flux_limit_jy=0.02)
    assert qa["reference"] == "nvss.csv"
    assert qa["n_reference"] == len(truth["ra_deg"])
    assert qa["match_arcsec"] == pytest.approx(22.5)  # half the beam major
    assert qa["flux_ratio_median"] == pytest.approx(1 / 0.9, rel=0.02)
    assert qa["flux_ratio_scatter"] < 0.1
    assert qa["dec_offset_arcsec"] == pytest.approx(6.0, abs=1.0)
    assert abs(qa["ra_offset_arcsec"]) < 1.0
    assert qa["completeness"] == 1.0 and qa["n_reference_above_limit"] > 10
    assert qa["gates"] == {"flux_scale": "pass", "completeness": "pass"}
    json.dumps(qa)
    # a flux scale far off fails the operators' gate
    low = crossmatch(d / "f.sources.fits", _nvss_layout(tmp_path / "x.csv", truth, scale=2.0))
    assert low["flux_ratio_median"] == pytest.approx(2.0, rel=0.03) and low["gates"]["flux_scale"] == "fail"
    # the in-memory result matches like the file (its table carries the beam and threshold cards)
    mem = crossmatch(res, ref, flux_limit_jy=0.02, flux_column="peak_flux")
    assert mem["match_arcsec"] == pytest.approx(22.5) and mem["flux_column"] == "peak_flux"
    assert mem["flux_ratio_median"] == pytest.approx(1 / 0.9, rel=0.02) and mem["completeness"] == 1.0


def test_completeness_counts_missing_sources(field, tmp_path):
    """Reference sources that are not in the image are missed: completeness drops by their share."""
    d, truth, res = field
    fake = dict(truth)
    rng = np.random.default_rng(0)
    n_fake = 10
    ra0, dec0 = np.median(truth["ra_deg"]), np.median(truth["dec_deg"])
    fake_ra = ra0 + rng.uniform(-0.3, 0.3, n_fake) / np.cos(np.radians(dec0))
    fake_dec = dec0 + rng.uniform(-0.3, 0.3, n_fake)
    # keep the fakes away from real sources
    real = SkyCoord(truth["ra_deg"], truth["dec_deg"], unit="deg")
    _, sep, _ = SkyCoord(fake_ra, fake_dec, unit="deg").match_to_catalog_sky(real)
    ok = sep.arcsec > 120
    for k, extra in (("ra_deg", fake_ra[ok]), ("dec_deg", fake_dec[ok]), ("flux_jy", np.full(ok.sum(), 0.2)),
                     ("name", np.array([f"FAKE{i}" for i in range(ok.sum())]))):
        fake[k] = np.concatenate([truth[k], extra])
    qa = crossmatch(res, _nvss_layout(tmp_path / "f.csv", fake), flux_limit_jy=0.05, return_matches=True)
    real_above = int((truth["flux_jy"] >= 0.05).sum())
    assert qa["n_reference_above_limit"] == real_above + ok.sum()
    assert qa["completeness"] == pytest.approx(real_above / (real_above + ok.sum()))
    assert not any(str(n).startswith("FAKE") for n in qa["matches"]["ref_name"])


def test_shipped_references(field):
    d, truth, res = field
    nvss = reference_sources("nvss")
    assert len(nvss) > 3000 and all(50 <= s.dec_deg <= 61 for s in nvss[:50])
    vla = reference_sources("vla")
    cal = next(s for s in vla if s.name == "0834+555")
    assert cal.flux_jy == pytest.approx(8.8, abs=0.1)
    # the simulated field is centred on 0834+555 but does not contain it: the calibrator is missed
    qa = crossmatch(res, "vla")
    assert qa["reference"] == "vla" and qa["n_reference"] >= 1 and qa["n_matched"] == 0
    assert qa["completeness"] == 0.0 and qa["gates"] == {"flux_scale": "n/a", "completeness": "fail"}
    assert crossmatch(res, "nvss")["n_reference"] < 5  # ~1.7 compact NVSS sources per square degree


def test_cli_sources_with_reference(field, tmp_path):
    d, truth, _ = field
    ref = _nvss_layout(tmp_path / "ref.csv", truth)
    out = subprocess.run([sys.executable, "-m", "dsacont.cli", "sources", str(d / "f.fits"), "--reference", str(ref),
                          "--json"], capture_output=True, text=True, check=True)
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    assert rec["kind"] == "catalogue" and rec["path"].endswith("f.sources.fits")
    assert rec["qa"]["flux_ratio_median"] == pytest.approx(1.0, abs=0.02)
    out = subprocess.run([sys.executable, "-m", "dsacont.cli", "sources", str(tmp_path / "missing.fits")],
                         capture_output=True, text=True)
    assert out.returncode == 1 and "missing.fits" in out.stderr
    helptext = subprocess.run([sys.executable, "-m", "dsacont.cli", "sources", "--help"], capture_output=True,
                              text=True, check=True).stdout
    assert "default: 5.0" in helptext and "--reference" in helptext
