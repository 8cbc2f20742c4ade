"""``dsacont image`` and ``dsacont mosaic``: help shows the library's real defaults; the mosaic runs."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from dsacont.cli import main
from dsacont.imaging.geometry import DEFAULT_FOV_DEG
from dsacont.imaging.tclean import DEFAULT_NITER, DEFAULT_NSIGMA


def _help(capsys, command):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    return " ".join(capsys.readouterr().out.split())


def test_image_help_shows_real_defaults(capsys):
    text = _help(capsys, "image")
    assert f"field of view (image side), degrees (default: {DEFAULT_FOV_DEG})" in text
    from dsacont.imaging.wsclean import DEFAULT_NITER as WSCLEAN_NITER

    assert f"(default: tclean {DEFAULT_NITER}, WSClean {WSCLEAN_NITER}," in text
    assert f"(default: {DEFAULT_NSIGMA})" in text
    assert "3.5 deg" not in text and "(default: None)" not in text


def test_mosaic_cli_runs(capsys, tmp_path):
    from astropy.io import fits
    from astropy.wcs import WCS

    from dsacont.imaging.beam import beam_image

    text = _help(capsys, "mosaic")
    assert "(default: 0.2)" in text and "(default: SIN)" in text
    tiles = []
    for k, ra in enumerate((128.0, 129.25)):
        w = WCS(naxis=4)
        w.wcs.ctype = ["RA---SIN", "DEC--SIN", "FREQ", "STOKES"]
        w.wcs.crval = [ra, 55.57, 1.4e9, 1.0]
        w.wcs.cdelt = [-60 / 3600, 60 / 3600, 1.875e8, 1.0]
        w.wcs.crpix = [33, 33, 1, 1]
        hdr = w.to_header()
        hdr.update(BMAJ=0.05, BMIN=0.05, BPA=0.0)
        pb = beam_image(w.celestial, (64, 64), [math.radians(ra)], [math.radians(55.57)], [1.4e9])
        stem = tmp_path / f"t{k}"
        img = np.random.default_rng(k).normal(0, 1e-3, (1, 1, 64, 64)).astype(np.float32)
        fits.PrimaryHDU(img, hdr).writeto(f"{stem}.image.fits")
        fits.PrimaryHDU(pb.reshape(1, 1, 64, 64), hdr).writeto(f"{stem}.pb.fits")
        (tmp_path / f"t{k}.qa.json").write_text(json.dumps({"qa": {"noise_jy": 1e-3}}))
        tiles.append(f"{stem}.image.fits")
    out = tmp_path / "m.fits"
    assert main(["mosaic", *tiles, "-o", str(out), "--no-register", "--no-png"]) == 0
    assert out.exists() and not (tmp_path / "m.png").exists()
    assert "2 tiles" in capsys.readouterr().out
    # recorded in the products database by the command, then found by --start/--end
    from dsacont.config import get_paths
    from dsacont.service.products import Products

    root = tmp_path / "root"
    out2 = tmp_path / "m2.fits"
    assert main(["mosaic", *tiles, "-o", str(out2), "--root", str(root), "--no-png"]) == 0
    row = Products(get_paths(root=root).products_db).get("mosaic", str(out2))
    assert row is not None and sorted(row["images"]) == sorted(tiles) and row["status"] == "mosaicked"
    assert main(["mosaic", "--start", "2025-10-29", "--root", str(root), "--no-png"]) == 2  # no images recorded
