"""Conversion to a Measurement Set: against pyuvdata's own path, CASA measures, listobs/msmd,
tclean of a point source, and a real dask-scheduler + dask-worker. Real files, real CASA."""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dsacont.casa import ensure_casa

HERE = Path(__file__).resolve().parents[1]
C = 299_792_458.0


# ----------------------------------------------------------------------------- helpers
def _ms_cube(path):
    """Read an MS with casatools into (time, baseline, frequency, pol) cubes (ascending freq)."""
    ct = ensure_casa()
    tb = ct.table()
    path = str(path)
    tb.open(path + "/SPECTRAL_WINDOW")
    spw_f = [tb.getcell("CHAN_FREQ", i) for i in range(tb.nrows())]
    tb.close()
    tb.open(path + "/DATA_DESCRIPTION")
    dd_spw = tb.getcol("SPECTRAL_WINDOW_ID")
    tb.close()
    tb.open(path + "/ANTENNA")
    ant = dict(names=list(tb.getcol("NAME")), pos=tb.getcol("POSITION").T, diam=tb.getcol("DISH_DIAMETER"),
               mount=list(tb.getcol("MOUNT")))
    tb.close()
    tb.open(path)
    time_ = tb.getcol("TIME")
    a1 = tb.getcol("ANTENNA1")
    a2 = tb.getcol("ANTENNA2")
    dd = tb.getcol("DATA_DESC_ID")
    uvw = tb.getcol("UVW").T
    data = tb.getcol("DATA").transpose(2, 1, 0)
    flag = tb.getcol("FLAG").transpose(2, 1, 0)
    tb.close()
    freqs = np.unique(np.concatenate(spw_f))
    times = np.unique(time_)
    key = a1.astype(np.int64) * 1000 + a2
    bls = np.unique(key)
    ti = np.searchsorted(times, time_)
    bi = np.searchsorted(bls, key)
    cube = np.zeros((times.size, bls.size, freqs.size, data.shape[2]), np.complex64)
    fcube = np.zeros(cube.shape, bool)
    uvw_c = np.zeros((times.size, bls.size, 3))
    for d in np.unique(dd):
        sel = dd == d
        f0 = np.searchsorted(freqs, spw_f[dd_spw[d]])
        cube[ti[sel][:, None], bi[sel][:, None], f0[None, :]] = data[sel]
        fcube[ti[sel][:, None], bi[sel][:, None], f0[None, :]] = flag[sel]
        uvw_c[ti[sel], bi[sel]] = uvw[sel]
    return dict(times=times, bls=bls, freqs=freqs, data=cube, flags=fcube, uvw=uvw_c, ant=ant,
                time_sorted=bool(np.all(np.diff(time_) >= 0)))


@pytest.fixture(scope="module")
def small_ds(sim_small):
    from dsacont.io.uvh5 import open_group

    return open_group(sim_small[1])


@pytest.fixture(scope="module")
def small_ms(sim_small, tmp_path_factory):
    """sim_small converted with the defaults except flagging (threaded scheduler)."""
    from dsacont.config import get_paths
    from dsacont.convert import convert_group

    root = tmp_path_factory.mktemp("conv_root")
    paths = get_paths(root=root)
    ms = convert_group(sim_small[1], paths=paths, flag=False)
    return ms, paths


# ----------------------------------------------------------------------------- geometry vs CASA
def test_phase_centre_and_uvw_against_casa_measures(small_ds):
    """Independent check: casatools measures (HADEC -> J2000, baseline -> uvw)."""
    from dsacont.convert.plan import geometry as _geometry
    from dsacont.convert.plan import phase_centre
    from dsacont.telescope import ARRAY_CENTRE_ECEF

    ct = ensure_casa()
    me, qa = ct.measures(), ct.quanta()
    c = phase_centre(small_ds, "common")
    dec0 = small_ds.attrs["phase_center_dec"]
    me.doframe(me.position("ITRF", *[qa.quantity(x, "m") for x in ARRAY_CENTRE_ECEF]))
    me.doframe(me.epoch("UTC", qa.quantity(c["jd_mid"] - 2400000.5, "d")))
    d = me.measure(me.direction("HADEC", qa.quantity(0.0, "rad"), qa.quantity(dec0, "rad")), "J2000")
    sep = np.degrees(phasing_sep(d["m0"]["value"], d["m1"]["value"], c["ra"][0], c["dec"][0])) * 3600
    assert sep < 1.0, f"meridian ICRS differs from CASA's HADEC->J2000 by {sep:.2f} arcsec"

    geo = _geometry(small_ds, c)
    pos = small_ds["antenna_position"].values
    a1, a2 = small_ds["antenna1"].values, small_ds["antenna2"].values
    times = small_ds["time"].values
    me.doframe(me.direction("J2000", qa.quantity(c["ra"][0], "rad"), qa.quantity(c["dec"][0], "rad")))
    for ti in (0, len(times) - 1):
        me.doframe(me.epoch("UTC", qa.quantity(times[ti] - 2400000.5, "d")))
        b = pos[a2] - pos[a1]
        bl = me.baseline("itrf", qa.quantity(b[:, 0], "m"), qa.quantity(b[:, 1], "m"), qa.quantity(b[:, 2], "m"))
        casa = np.asarray(me.touvw(bl)[1]["value"]).reshape(-1, 3)
        ours = geo["uvw"][ti]
        # w (the delay, what phasing needs) to millimetres; lengths to millimetres; CASA's J2000
        # uvw ignores annual aberration in the u-v orientation (a few arcsec rotation about w):
        np.testing.assert_allclose(ours[:, 2], casa[:, 2], atol=0.01)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), np.linalg.norm(casa, axis=1), atol=0.002)
        np.testing.assert_allclose(ours[:, :2], casa[:, :2], atol=0.15)


def phasing_sep(ra1, dec1, ra2, dec2):
    from dsacont.telescope import angular_separation

    return angular_separation(ra1, dec1, ra2, dec2)


# ----------------------------------------------------------------------------- vs pyuvdata
@pytest.mark.casa
def test_matches_pyuvdata_write_ms(small_ms, small_ds, sim_small, tmp_path):
    """The community reference: pyuvdata read -> declare driftscan HADEC(0,dec) -> phase to the
    same ICRS centre -> write_ms (in a subprocess: python-casacore), compared column by column."""
    from dsacont.convert import phase_centre

    ms, _ = small_ms
    c = phase_centre(small_ds, "common")
    ref = tmp_path / "pyuvdata.ms"
    res = subprocess.run([sys.executable, str(HERE / "pyuvdata_reference.py"), str(ref), repr(float(c["ra"][0])),
                          repr(float(c["dec"][0])), *sim_small[1]], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = _ms_cube(ms), _ms_cube(ref)
    assert a["time_sorted"]
    np.testing.assert_allclose(a["times"], b["times"], rtol=0, atol=1e-4)  # seconds since MJD 0, both
    assert 4.5e9 < a["times"][0] < 5.5e9  # MJD 0 epoch (2025 ~ 5.2e9 s), not MJD 51544
    np.testing.assert_array_equal(a["bls"], b["bls"])
    np.testing.assert_allclose(a["freqs"], b["freqs"], rtol=0, atol=1e-3)
    assert np.all(np.diff(a["freqs"]) > 0)
    np.testing.assert_allclose(a["uvw"], b["uvw"], rtol=0, atol=0.01)
    med = np.median(np.abs(b["data"]))
    diff = np.abs(a["data"] - b["data"])
    assert diff.max() < 1e-3 * med, f"max |dV| = {diff.max() / med:.2e} of the median amplitude"
    # antennas: same names and ITRF positions for every antenna with data
    used = np.unique(np.concatenate([a["bls"] // 1000, a["bls"] % 1000]))
    assert [a["ant"]["names"][i] for i in used] == [b["ant"]["names"][i] for i in used]
    np.testing.assert_allclose(a["ant"]["pos"][used], b["ant"]["pos"][used], atol=1e-3)
    assert len(a["ant"]["names"]) == 117 and a["ant"]["names"][:3] == ["1", "2", "3"]
    assert np.allclose(a["ant"]["diam"], 4.65) and set(a["ant"]["mount"]) == {"ALT-AZ"}


# ----------------------------------------------------------------------------- CASA reads it
@pytest.mark.casa
def test_listobs_and_msmd(small_ms, small_ds, tmp_path):
    from dsacont.casa import casatasks

    ms, paths = small_ms
    assert ms == paths.ms / f"{small_ds.attrs['group_timestamp']}.ms"
    ct = ensure_casa()
    ctk = casatasks()
    out = tmp_path / "listobs.txt"
    ctk.listobs(vis=str(ms), listfile=str(out), overwrite=True)
    text = out.read_text()
    assert "OVRO_MMA" in text and "sb15" in text and small_ds.attrs["group_timestamp"] in text
    nt, nbl, nf, _ = small_ds["vis"].shape
    md = ct.msmetadata()
    md.open(str(ms))
    try:
        assert md.nrows() == nt * nbl * 16
        assert md.nfields() == 1
        assert md.nspw() == 16
        assert all(md.nchan(i) == nf // 16 for i in range(16))
        f0 = md.chanfreqs(0)
        assert f0[0] == small_ds["frequency"].values[0]
        assert md.chanfreqs(15)[-1] == small_ds["frequency"].values[-1]
        assert md.corrtypesforpol(0).tolist() == [9, 12]
        assert len(md.timesforfield(0)) == nt
    finally:
        md.close()
    # nothing half-written left behind
    assert not any(p.name.startswith(".") for p in paths.ms.iterdir())
    assert not any(p.name.endswith(f".partial{os.getpid()}") for p in Path("/dev/shm").iterdir())
    # observation, history, polarization
    tb = ct.table()
    tb.open(str(ms) + "/OBSERVATION")
    assert tb.getcell("TELESCOPE_NAME", 0) == "OVRO_MMA"
    tb.close()
    tb.open(str(ms) + "/HISTORY")
    assert any("phase=common" in m for m in tb.getcol("MESSAGE"))
    tb.close()


@pytest.mark.casa
def test_tclean_puts_point_source_at_true_position(sim_clean, tmp_path):
    """Noise-free sky: the brightest source lands within a tenth of a beam of its true position."""
    from dsacont.casa import casatasks
    from dsacont.config import get_paths
    from dsacont.convert import convert_group
    from dsacont.simulator import load_truth
    from dsacont.telescope import angular_separation

    out_dir, files = sim_clean
    ms = convert_group(files, tmp_path / "clean.ms", flag=False, paths=get_paths(root=tmp_path))
    truth = load_truth(out_dir, files[0])
    k = int(np.argmax(truth["source_flux_jy"]))
    ra_t, dec_t = np.radians(truth["source_ra_deg"][k]), np.radians(truth["source_dec_deg"][k])

    ct = ensure_casa()
    tb = ct.table()
    tb.open(str(ms))
    umax = np.abs(tb.getcol("UVW")[:2]).max()
    tb.close()
    beam_rad = C / 1.5e9 / umax
    cell = np.degrees(beam_rad / 5) * 3600
    ctk = casatasks()
    img = str(tmp_path / "img")
    # image centred on the true position (tclean shifts the phase centre with the MS UVW)
    ctk.tclean(vis=str(ms), imagename=img, imsize=[128, 128], cell=f"{cell:.3f}arcsec", niter=0,
               specmode="mfs", gridder="standard", weighting="natural",
               phasecenter=f"J2000 {np.degrees(ra_t):.8f}deg {np.degrees(dec_t):.8f}deg")
    ia = ct.image()
    ia.open(img + ".image")
    pix = ia.getchunk()[:, :, 0, 0]
    csys = ia.coordsys()
    beam = ia.restoringbeam()
    ia.close()
    i, j = np.unravel_index(np.argmax(pix), pix.shape)
    # sub-pixel peak by a parabola through the neighbours
    di = 0.5 * (pix[i - 1, j] - pix[i + 1, j]) / (pix[i - 1, j] - 2 * pix[i, j] + pix[i + 1, j])
    dj = 0.5 * (pix[i, j - 1] - pix[i, j + 1]) / (pix[i, j - 1] - 2 * pix[i, j] + pix[i, j + 1])
    w = csys.toworld([i + di, j + dj, 0, 0], "n")["numeric"]
    sep = angular_separation(w[0], w[1], ra_t, dec_t)
    major = np.radians(beam["major"]["value"] / 3600) if beam else beam_rad
    assert pix[i, j] > 0.5 * truth["source_flux_jy"][k] * 0.5  # the source is there (beam-attenuated)
    assert sep < 0.1 * major, f"peak {np.degrees(sep) * 3600:.2f} arcsec from truth, beam {np.degrees(major) * 3600:.1f}"


# ----------------------------------------------------------------------------- modes, zarr, CLI
@pytest.mark.casa
def test_per_integration_layout_and_cli(sim_small, tmp_path, small_ms):
    from dsacont.convert.cli import cli

    out = tmp_path / "per_int.ms"
    assert cli([*sim_small[1], "-o", str(out), "--phase", "per_integration", "--no-flag",
                "--root", str(tmp_path / "root")]) == 0
    ct = ensure_casa()
    md = ct.msmetadata()
    md.open(str(out))
    try:
        assert md.nfields() == 24 and md.nscans() == 24
    finally:
        md.close()
    a, b = _ms_cube(out), _ms_cube(small_ms[0])
    # per-integration centres are the correlator's own: the data are (nearly) unrotated, so
    # common-centre data differ from them by the rotation, but amplitudes agree
    np.testing.assert_allclose(np.abs(a["data"]), np.abs(b["data"]), rtol=1e-4, atol=1e-5)
    # UVW for integration t: its own meridian; |uvw| equal (same baselines, same instant)
    np.testing.assert_allclose(np.linalg.norm(a["uvw"], axis=-1), np.linalg.norm(b["uvw"], axis=-1), atol=1e-3)
    # each field's phase centre is the correlator's fringe-stop centre at its integration, HADEC(0,
    # dec) with the simulator's pointing declination, turned into ICRS by astropy (an outside referee)
    import astropy.units as u
    from astropy.coordinates import EarthLocation, HADec, SkyCoord
    from astropy.time import Time

    from dsacont import load_truth

    truth = load_truth(sim_small[0], sim_small[1][0])
    tb = ct.table()
    tb.open(str(out) + "/FIELD")
    try:
        phase_dir = tb.getcol("PHASE_DIR")[:, 0, :]  # (2, nfield) radians, J2000
    finally:
        tb.close()
    loc = EarthLocation.from_geodetic(lon=-2.0644277991 * u.rad, lat=0.6498455107 * u.rad, height=1188.05 * u.m)
    t = Time(truth["time_jd"], format="jd", scale="utc")
    centre = SkyCoord(ha=np.zeros(t.size) * u.rad, dec=np.full(t.size, float(truth["pointing_dec_rad"])) * u.rad,
                      frame=HADec(obstime=t, location=loc, pressure=0 * u.hPa)).icrs
    fields = SkyCoord(ra=phase_dir[0] * u.rad, dec=phase_dir[1] * u.rad)
    assert fields.size == t.size == 24
    assert fields.separation(centre).arcsec.max() < 1.0


def test_to_zarr_roundtrip(small_ds, small_ms, tmp_path):
    import xarray as xr

    from dsacont.convert import to_zarr

    sub = small_ds.isel(frequency=slice(0, 16))
    store = to_zarr(sub, tmp_path / "g.zarr")
    z = xr.open_zarr(store)
    assert z["vis"].shape == sub["vis"].shape and "phase_center_ra" in z.attrs
    a = _ms_cube(small_ms[0])
    # zarr holds the Dataset convention; the MS holds its conjugate and -uvw
    np.testing.assert_allclose(z["vis"].values, np.conj(a["data"][:, :, :16]), atol=1e-5)
    np.testing.assert_allclose(z["uvw"].values, -a["uvw"], atol=1e-6)


def test_failure_leaves_nothing(small_ds, tmp_path):

    from dsacont.config import get_paths
    from dsacont.convert import convert_group

    def boom(x):
        raise RuntimeError("disk on fire")

    bad = small_ds.copy()
    bad["vis"] = (small_ds["vis"].dims, small_ds["vis"].data.map_blocks(boom, dtype=np.complex64))
    paths = get_paths(root=tmp_path)
    target = tmp_path / "bad.ms"
    with pytest.raises(RuntimeError, match="disk on fire"):
        convert_group(bad, target, flag=False, paths=paths, tmp_dir=tmp_path / "scratch")
    assert not target.exists()
    assert list((tmp_path / "scratch").iterdir()) == []
    if Path("/dev/shm").is_dir():  # nor the skeleton built on tmpfs
        assert not any(p.name.endswith(f".skeleton{os.getpid()}") for p in Path("/dev/shm").iterdir())


# ----------------------------------------------------------------------------- fast paths
def _main_columns(path):
    ct = ensure_casa()
    tb = ct.table()
    tb.open(str(path))
    try:
        return {c: tb.getcol(c) for c in ("DATA", "FLAG", "WEIGHT", "SIGMA", "UVW", "ANTENNA1", "ANTENNA2",
                                          "TIME", "DATA_DESC_ID", "FIELD_ID")}
    finally:
        tb.close()


def test_loader_dataset_is_read_from_its_files_unless_modified(sim_small, small_ms, tmp_path):
    """The pipeline passes open_group's Dataset: it is read from the files directly (same MS);
    a selected or transformed Dataset is read through its own dask arrays."""
    from dsacont import convert
    from dsacont.config import get_paths
    from dsacont.io.uvh5 import group_files, open_group

    paths = get_paths(root=tmp_path)
    ds = open_group(sim_small[1])
    ms = convert.convert_group(ds, tmp_path / "ds.ms", flag=False, paths=paths)
    assert ms.profile["direct_read"] is True
    a, b = _main_columns(small_ms[0]), _main_columns(ms)
    for col in a:
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
    # a group with a missing subband (the service's incomplete-group policy), with RFI flags:
    # direct reads (zeros, flagged, for the missing one) equal the dask path
    slots = list(sim_small[1])
    slots[5] = None
    holey = open_group(slots, allow_missing=True)
    one = convert.convert_group(holey, tmp_path / "holey1.ms", flag=True, paths=paths, qa_dir=tmp_path / "q1")
    assert one.profile["direct_read"] is True and "fused_flag_threads" in one.profile
    two = convert.convert_group(holey, tmp_path / "holey2.ms", flag=True, paths=paths, qa_dir=tmp_path / "q2",
                                direct_read=False)
    assert two.profile["direct_read"] is False
    a, b = _main_columns(one), _main_columns(two)
    for col in a:
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
    sub = ds.isel(time=slice(0, 2))
    res = convert.convert_group(sub, tmp_path / "sub.ms", flag=False, paths=paths)
    assert res.profile["direct_read"] is False
    scaled = ds.copy()
    scaled["vis"] = ds["vis"] * 2
    assert group_files(scaled) is None


def test_fast_paths_equal_putcol_and_dask_paths(sim_small, small_ms, tmp_path):
    """Direct HDF5 reads + direct tile writes (the default) give the same MS, column by column and
    bit for bit, as reading through the loader's dask arrays and writing with casatools putcol."""
    from dsacont import convert
    from dsacont.config import get_paths

    fast = small_ms[0]
    slow = convert.convert_group(sim_small[1], tmp_path / "slow.ms", flag=False, paths=get_paths(root=tmp_path),
                                 direct_write=False, direct_read=False)
    assert slow.profile["direct_tiles"] is False and slow.profile["direct_read"] is False
    a, b = _main_columns(fast), _main_columns(slow)
    for col in a:
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
    # and the default really took the fast paths
    again = convert.convert_group(sim_small[1], tmp_path / "fast.ms", flag=False, paths=get_paths(root=tmp_path))
    assert again.profile["direct_tiles"] is True and again.profile["direct_read"] is True
    c = _main_columns(again)
    for col in a:
        np.testing.assert_array_equal(a[col], c[col], err_msg=col)


def _every_table(path):
    """Every column of the main table and of every subtable, as numpy arrays (HISTORY's TIME,
    the wall-clock time of writing, left out)."""
    ct = ensure_casa()
    tb = ct.table()
    out = {}
    subs = [""] + sorted(p.name for p in Path(path).iterdir() if (p / "table.dat").exists())
    for sub in subs:
        tb.open(os.path.join(str(path), sub))
        try:
            for col in tb.colnames():
                if ((sub, col) == ("HISTORY", "TIME") or not tb.nrows() or not tb.iscelldefined(col, 0)
                        or tb.coldatatype(col).lower() == "record"):
                    continue
                try:
                    out[(sub, col)] = tb.getcol(col)
                except RuntimeError:  # variable-shape cells
                    out[(sub, col)] = tb.getvarcol(col)
        finally:
            tb.close()
    return out


def test_skeleton_template_gives_the_same_ms(sim_small, tmp_path, caplog):
    """A group stamped from the MS template of an earlier group of the same layout (another
    time, so other TIME, UVW, FIELD, SOURCE, OBSERVATION, HISTORY) equals, in every column of
    every table, the MS built from scratch; a damaged template is rebuilt, not trusted."""
    from dsacont import convert
    from dsacont.config import get_paths
    from dsacont.io.uvh5 import open_group

    paths = get_paths(root=tmp_path)
    ds = open_group(sim_small[1])
    first = convert.convert_group(ds, tmp_path / "first.ms", flag=False, paths=paths)
    assert "template_saved" in first.profile
    later = ds.assign_coords(time=ds["time"] + 0.4137)  # ~10 h later: another RA, other UVW
    stamped = convert.convert_group(later, tmp_path / "stamped.ms", flag=False, paths=paths)
    assert "skeleton_from_template" in stamped.profile
    fresh = convert.convert_group(later, tmp_path / "fresh.ms", flag=False, paths=paths, use_templates=False)
    assert "skeleton_from_template" not in fresh.profile
    a, b, c = _every_table(stamped), _every_table(fresh), _every_table(first)
    assert a.keys() == b.keys() and len(a) > 100
    pol_type = a[("FEED", "POLARIZATION_TYPE")]  # every antenna's receptors (casatools string bug)
    assert pol_type.shape[0] == 2 and np.all(pol_type[0] == "X") and np.all(pol_type[1] == "Y")
    for key in a:
        if isinstance(a[key], dict):
            assert a[key].keys() == b[key].keys(), key
            for r in a[key]:
                np.testing.assert_array_equal(a[key][r], b[key][r], err_msg=str(key))
        else:
            np.testing.assert_array_equal(a[key], b[key], err_msg=str(key))
    # the stamped MS really is another group's: what changes with time changed
    for key in (("", "TIME"), ("", "UVW"), ("FIELD", "PHASE_DIR"), ("OBSERVATION", "TIME_RANGE"), ("FEED", "TIME")):
        assert not np.array_equal(a[key], c[key]), key
    # a damaged template: a warning, a fresh skeleton (same MS), and the template replaced
    (tpl,) = (paths.tmp / convert.TEMPLATE_DIRNAME).iterdir()
    (tpl / "ms" / "table.dat").write_bytes(b"garbage")
    with caplog.at_level("WARNING", logger="dsacont.io.ms_build"):
        again = convert.convert_group(later, tmp_path / "again.ms", flag=False, paths=paths)
    assert "unusable" in caplog.text and "skeleton_from_template" not in again.profile
    d = _every_table(again)
    for key in (("", "DATA"), ("", "UVW"), ("", "TIME"), ("FIELD", "PHASE_DIR")):
        np.testing.assert_array_equal(d[key], b[key], err_msg=str(key))
    assert "template_saved" in again.profile and (tpl / "ms" / "table.dat").read_bytes() != b"garbage"


def test_uniform_blocks_and_varied_ones_give_the_same_ms(sim_small, tmp_path):
    """Blocks whose nsamples are all one value and flags all clear (the correlator's usual case)
    skip reading those two datasets; blocks where they vary are read in full. Either way the MS
    equals the dask path's, column by column; and the uniformity check finds single odd items."""
    import h5py

    from dsacont import convert
    from dsacont.config import get_paths
    from dsacont.io.uvh5_backend import SubbandReader

    files = [Path(shutil.copy(p, tmp_path / Path(p).name)) for p in sim_small[1]]
    with h5py.File(files[3], "r+") as f:  # one subband: odd nsamples in integration 1, a flag in 3
        ns = f["Data/nsamples"]
        nbl = ns.shape[0] // f["Header/Ntimes"][()]
        block = ns[nbl:2 * nbl]
        block[5, 0, 7, 1] = 0.5
        block[9, 0, 2, 0] = 0.0
        ns[nbl:2 * nbl] = block
        fl = f["Data/flags"]
        fb = fl[3 * nbl:4 * nbl]
        fb[11, 0, 6, 1] = True
        fl[3 * nbl:4 * nbl] = fb
    r = SubbandReader(files[3], nbl)
    assert r.uniform("nsamples", 0, 1) == np.float32(1.0) and r.uniform("flags", 0, 1) == 0
    assert r.uniform("nsamples", 1, 2) is None and r.uniform("nsamples", 0, 3) is None
    assert r.uniform("nsamples", 2, 3) == np.float32(1.0)
    assert r.uniform("flags", 3, 4) is None and r.uniform("flags", 0, 3) == 0
    paths = get_paths(root=tmp_path)
    fast = convert.convert_group(files, tmp_path / "fast.ms", flag=False, paths=paths, chunks={"time": 1})
    assert fast.profile["direct_read"] is True
    slow = convert.convert_group(files, tmp_path / "slow.ms", flag=False, paths=paths, direct_read=False)
    a, b = _main_columns(fast), _main_columns(slow)
    for col in a:
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
    assert a["FLAG"].sum() == 2 and np.any(a["WEIGHT"] < 1)


def test_fused_flags_equal_flags_first(sim_small, tmp_path):
    """flag=True in one pass (baseline blocks: read, flag, rotate, write partial tiles) gives the
    same MS and the same flag summary as computing flag_dataset first and writing in time blocks."""
    from dsacont import convert
    from dsacont.config import get_paths

    paths = get_paths(root=tmp_path)
    one = convert.convert_group(sim_small[1], tmp_path / "one.ms", flag=True, paths=paths, qa_dir=tmp_path / "qa1")
    assert "fused_flag_threads" in one.profile
    two = convert.convert_group(sim_small[1], tmp_path / "two.ms", flag=True, paths=paths, qa_dir=tmp_path / "qa2",
                                fuse_flags=False)
    assert "fused_flag_threads" not in two.profile
    a, b = _main_columns(one), _main_columns(two)
    assert a["FLAG"].mean() > 0
    for col in a:
        np.testing.assert_array_equal(a[col], b[col], err_msg=col)
    j1 = json.loads(next((tmp_path / "qa1").glob("*.flags.json")).read_text())
    j2 = json.loads(next((tmp_path / "qa2").glob("*.flags.json")).read_text())
    assert j1 == j2
    assert next((tmp_path / "qa1").glob("*.waterfall.png")).stat().st_size > 0


# ----------------------------------------------------------------------------- distributed
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.casa
def test_dask_scheduler_and_worker_processes(sim_small, small_ms, tmp_path):
    """A real dask-scheduler and dask-worker on localhost; the client writes, the worker computes."""
    from distributed import Client

    from dsacont.config import get_paths
    from dsacont.convert import convert_group

    port = _free_port()
    env = dict(os.environ, OMP_NUM_THREADS="1", NUMBA_NUM_THREADS="1", PYTHONPATH=str(HERE.parent))
    sched = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_scheduler", "--host", "127.0.0.1",
                              "--port", str(port), "--no-dashboard"], env=env,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    addr = f"tcp://127.0.0.1:{port}"
    worker = subprocess.Popen([sys.executable, "-m", "distributed.cli.dask_worker", addr, "--nthreads", "1",
                               "--nworkers", "1", "--memory-limit", "2GB", "--no-dashboard"], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with Client(addr, timeout=60) as client:
            client.wait_for_workers(1, timeout=120)
            ms = convert_group(sim_small[1], tmp_path / "dist.ms", flag=False, paths=get_paths(root=tmp_path))
            tasks = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.task_prefixes))
        assert tasks > 0  # the scheduler saw our tasks
        a, b = _ms_cube(ms), _ms_cube(small_ms[0])
        np.testing.assert_array_equal(a["data"], b["data"])
        np.testing.assert_array_equal(a["uvw"], b["uvw"])
    finally:
        for p in (worker, sched):
            p.terminate()
        for p in (worker, sched):
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def test_rfi_flags_are_ored_into_flag(sim_small, small_ms, tmp_path):
    """flag=True: dsacont.flagging's lazy flags (computed in one pass first) end up in FLAG."""
    import h5py

    from dsacont.config import get_paths
    from dsacont.convert import convert_group

    # the correlator's flags are kept: the simulator writes none, so set some in a copy of the files
    # (all of XX in sb03, ascending subband 12)
    raw = tmp_path / "raw"
    raw.mkdir()
    files = [shutil.copyfile(f, raw / Path(f).name) for f in sim_small[1]]
    with h5py.File(files[3], "r+") as h:
        fl = h["Data/flags"][...]
        fl[..., 0] = True
        h["Data/flags"][...] = fl
    ms = convert_group([str(f) for f in files], tmp_path / "flagged.ms", flag=True, paths=get_paths(root=tmp_path))
    a, b = _ms_cube(ms), _ms_cube(small_ms[0])
    nch = a["flags"].shape[2] // 16
    sb03 = slice(12 * nch, 13 * nch)
    assert a["flags"][:, :, sb03, 0].all() and not b["flags"][:, :, sb03, 0].any()
    assert not a["flags"][:, :, sb03, 1].all()
    assert a["flags"].mean() > b["flags"].mean()  # and RFI flags added (sim_small has RFI)
    np.testing.assert_array_equal(a["data"], b["data"])
