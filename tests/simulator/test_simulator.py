"""The simulator writes files in the DSA-110 correlator's layout, with physics checked by pyuvdata
(never by our own pipeline code), and truth that round-trips."""
from __future__ import annotations

import os
import re
import warnings

import h5py
import numpy as np
import pytest
from conftest import GROUP_START
from uvtools import PYUV_KW, _read_uv

# The files carry uvw toward the fringe-stop direction HADEC(0, dec) (el ~72 deg), which pyuvdata
# reads as zenith-phased ("unprojected"): its uvw check then says they do not match the antenna
# positions, as it does for the real correlator's files. Expected here.
pytestmark = pytest.mark.filterwarnings("ignore:The uvw_array does not match the expected values:UserWarning")

NAME = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)_sb(\d\d)\.hdf5$")
INT_S = 12.884902
SEFD = 6000.0
# 0834+555 in the VLA calibrator list: J2000 position, 20 cm and 6 cm fluxes
CAL_RA, CAL_DEC = 128.72876715, 55.57251972
S20, S6 = 8.80, 5.60
@pytest.fixture(scope="module")
def sim_one_source(tmp_path_factory):
    """0834+555 alone, no noise/gains/RFI, written through the CLI."""
    from dsacont.simulator.cli import cli

    out = tmp_path_factory.mktemp("sim_one")
    rc = cli([str(out), "--start", GROUP_START, "--minutes", "5", "--seed", "5", "--no-rfi", "--no-noise",
              "--no-gains", "--no-field"])
    assert rc == 0
    paths = sorted((str(p) for p in out.glob("*_sb??.hdf5")), key=lambda p: p[-7:-5])
    return out, paths


# ---------------------------------------------------------------- layout


def test_file_names_jitter_and_no_incomplete(sim_small):
    out, paths = sim_small
    assert len(paths) == 16
    names = [os.path.basename(p) for p in paths]
    stamps = []
    for sb, n in enumerate(names):
        m = NAME.match(n)
        assert m, n
        assert int(m.group(2)) == sb
        stamps.append(np.datetime64(m.group(1)))
    spread = (max(stamps) - min(stamps)).astype(int)
    assert 0 < spread <= 15  # each node stamps its own clock, never enough to split a 30 s group
    assert min(stamps) >= np.datetime64(GROUP_START)
    assert not [f for f in os.listdir(out) if "incomplete" in f]


def test_header_layout_as_correlator(sim_small):
    out, paths = sim_small
    prev_low = np.inf
    for sb, p in enumerate(paths):
        with h5py.File(p, "r") as f:
            h, d = f["Header"], f["Data"]
            nbls, nt, nf = int(h["Nbls"][()]), int(h["Ntimes"][()]), int(h["Nfreqs"][()])
            nblts = int(h["Nblts"][()])
            assert nt == 24 and nblts == nt * nbls and int(h["Npols"][()]) == 2 and int(h["Nspws"][()]) == 1
            assert d["visdata"].dtype == np.complex64 and d["visdata"].shape == (nblts, 1, nf, 2)
            assert d["flags"].dtype == bool and d["flags"].shape == (nblts, 1, nf, 2) and not d["flags"][:].any()
            assert d["nsamples"].dtype == np.float32
            assert h["uvw_array"].dtype == np.float32 and h["uvw_array"].shape == (nblts, 3)
            assert h["freq_array"].shape == (1, nf)
            fr = h["freq_array"][0]
            assert np.all(np.diff(fr) < 0)  # descending within the file
            assert fr[0] < prev_low  # and across files: sb00 highest
            prev_low = fr[-1]
            assert float(h["channel_width"][()]) > 0
            assert "lst_array" not in h
            assert list(h["polarization_array"][:]) == [-5, -6]
            assert h["telescope_name"][()] == b"OVRO_MMA" and h["instrument"][()] == b"DSA"
            assert h["object_name"][()] == b"search" and h["phase_type"][()] == b"drift"
            assert np.allclose(h["antenna_diameters"][:], 4.65) and h["antenna_diameters"].shape == (117,)
            assert h["antenna_positions"].shape == (117, 3)
            assert [x.decode() for x in h["antenna_names"][:]] == [str(i + 1) for i in range(117)]
            assert list(h["antenna_numbers"][:]) == list(range(117))
            assert np.isclose(h["latitude"][()], np.degrees(0.6498455107))
            assert np.isclose(h["longitude"][()], np.degrees(-2.0644277991))
            ek = h["extra_keywords"]
            assert np.isclose(ek["phase_center_dec"][()], np.radians(55.57251972), atol=1e-6)
            assert ek["ha_phase_center"][()] == 0.0
            epoch = ek["phase_center_epoch"][()]
            assert (epoch.decode() if isinstance(epoch, bytes) else epoch) == "HADEC"
            assert "fs_table" in ek and len(ek["applied_delays_ns"][()].split()) == 2 * 117
            # time-major baselines with autocorrelations, ant1 <= ant2, uvw constant in time
            a1 = h["ant_1_array"][:].reshape(nt, nbls)
            a2 = h["ant_2_array"][:].reshape(nt, nbls)
            assert (a1 == a1[0]).all() and (a2 == a2[0]).all() and (a1 <= a2).all()
            nants = np.unique(a1[0]).size
            assert nbls == nants * (nants + 1) // 2 and (a1[0] == a2[0]).sum() == nants
            uvw = h["uvw_array"][:].reshape(nt, nbls, 3)
            assert (uvw == uvw[0]).all()
            t = h["time_array"][:].reshape(nt, nbls)
            assert (t == t[:, :1]).all()
            assert np.allclose(np.diff(t[:, 0]) * 86400, INT_S, atol=1e-3)
            assert np.allclose(h["integration_time"][:], INT_S)
    # the first integration centre is half an integration after the group start
    from astropy.time import Time

    with h5py.File(paths[0], "r") as f:
        t0 = f["Header/time_array"][0]
    assert abs((t0 - Time(GROUP_START).jd) * 86400 - INT_S / 2) < 1e-3


def test_pyuvdata_reads_each_file_and_the_group(sim_small):
    from pyuvdata import UVData

    out, paths = sim_small
    uvs = []
    for p in paths:
        uv = _read_uv(p)
        uv.check()  # passes once uvw is float64
        assert uv.Ntimes == 24 and uv.Npols == 2
        assert uv.telescope.name == "OVRO_MMA"
        assert uv.phase_center_catalog[0]["cat_type"] == "unprojected"  # read as zenith drift
        uvs.append(uv)
    # all 16 at once, as operators do it: one file at a time, float64 uvw, concatenate along freq
    uv = uvs[0]
    uv.fast_concat(uvs[1:], axis="freq", inplace=True, run_check=False)
    uv.check()
    assert uv.Nfreqs == 16 * uvs[1].Nfreqs
    assert np.all(np.diff(uv.freq_array) < 0)
    # one UVData.read of all 16 at once: pyuvdata's own concatenation (checked with 3.2.8) insists on
    # float64 uvw, which the real files (float32 uvw, as the simulator writes them) do not have. If a
    # pyuvdata release lifts that, this fails and the operators' note in the README changes with it.
    allin = UVData()
    with warnings.catch_warnings(), pytest.raises(ValueError, match=r"uvw_array.*float32.*float64"):
        warnings.simplefilter("ignore")
        allin.read(paths, axis="freq", **PYUV_KW)


# ---------------------------------------------------------------- physics, checked by pyuvdata


def _expected_amplitude(times_jd, freqs_hz, el0_rad):
    """0834+555's catalogue flux x Airy beam, from astropy alt/az (independent of the simulator)."""
    import astropy.units as u
    from astropy.coordinates import AltAz, EarthLocation, SkyCoord
    from astropy.time import Time
    from scipy.special import j1

    loc = EarthLocation.from_geodetic(np.degrees(-2.0644277991) * u.deg, np.degrees(0.6498455107) * u.deg,
                                      1188.05 * u.m)
    tt = Time(times_jd, format="jd", scale="utc")
    aa = SkyCoord(CAL_RA * u.deg, CAL_DEC * u.deg).transform_to(AltAz(obstime=tt, location=loc))
    pnt = SkyCoord(az=np.zeros(tt.size) * u.rad, alt=np.full(tt.size, el0_rad) * u.rad,
                   frame=AltAz(obstime=tt, location=loc))
    theta = aa.separation(pnt).rad
    alpha = np.log(S6 / S20) / np.log(4.86e9 / 1.4e9)
    x = np.pi * 4.65 * np.sin(theta)[:, None] * freqs_hz[None, :] / 299792458.0
    return S20 * (freqs_hz[None, :] / 1.4e9) ** alpha * (2 * j1(x) / x) ** 2  # (Ntimes, Nfreqs)


@pytest.mark.parametrize("sb", [0, 15])
def test_pyuvdata_phases_point_source_to_zero(sim_one_source, sb):
    """Declare the true phase centre (fixed az/el of HADEC(0, dec)) and let pyuvdata rephase to
    0834+555: every cross visibility must become real and equal to flux x beam."""
    out, paths = sim_one_source
    uv = _read_uv(paths[sb])
    dec = uv.extra_keywords["phase_center_dec"]
    el0 = np.pi / 2 - abs(0.6498455107 - dec)  # HA=0 north of zenith (dec > lat): az 0
    cid = uv._add_phase_center("hadec", cat_type="driftscan", cat_lon=0.0, cat_lat=el0, cat_frame="altaz")
    uv.phase_center_id_array[:] = cid
    uv._clear_unused_phase_centers()
    uv._set_app_coords_helper()
    uv.phase(lon=np.radians(CAL_RA), lat=np.radians(CAL_DEC), cat_type="sidereal", cat_name="0834+555")
    cross = uv.ant_1_array != uv.ant_2_array
    vis = uv.data_array[cross]  # (Nblts_cross, Nfreqs, 2)
    ph = np.degrees(np.angle(vis))
    blen = np.linalg.norm(uv.uvw_array[cross], axis=1)
    # float32 uvw in the files limit the agreement to ~0.05 deg; a sign or geometry error gives ~100 deg
    assert np.sqrt(np.mean(ph**2)) < 0.05
    assert np.abs(ph).max() < 0.3
    assert np.abs(ph[blen > 0.6 * blen.max()]).max() < 0.3  # the longest baselines, most sensitive
    times = np.unique(uv.time_array)
    exp = _expected_amplitude(times, uv.freq_array, el0)
    tidx = np.searchsorted(times, uv.time_array[cross])
    got = np.abs(vis)
    rel = got / exp[tidx][:, :, None] - 1
    assert np.abs(rel).max() < 0.01
    # the autocorrelations hold SEFD + the calibrator's apparent flux, real
    auto = uv.data_array[~cross]
    assert np.allclose(auto.imag, 0) and np.allclose(auto.real, SEFD + exp[np.searchsorted(times, uv.time_array[~cross])][:, :, None], rtol=1e-5)


def test_truth_of_one_source_sky(sim_one_source):
    from dsacont import load_truth

    out, paths = sim_one_source
    tr = load_truth(out, paths[3])
    assert list(tr["sources"]["name"]) == ["0834+555"]
    assert tr["sources"]["flux_jy"][0] == S20
    assert np.isclose(tr["sources"]["spectral_index"][0], np.log(S6 / S20) / np.log(4.86 / 1.4))
    assert tr["settings"] == dict(preset="small", seed=5, rfi=False, noise=False, gains=False, field=False)
    assert (tr["gains"] == 1).all() and (tr["bandpass"] == 1).all() and not tr["rfi_mask"].any()


def test_noise_matches_sefd(sim_one_source, tmp_path):
    """Same seed and sky with noise on: the difference is the noise, sigma = SEFD/sqrt(2 dnu tau)."""
    from dsacont import load_truth, simulate

    out, clean = sim_one_source
    noisy = simulate(tmp_path, GROUP_START, 5, seed=5, rfi=False, gains=False, field=False)
    noisy = sorted(noisy, key=lambda p: p[-7:-5])
    tr = load_truth(tmp_path, noisy[0])
    dnu = tr["channel_width_hz"]
    sigma = SEFD / np.sqrt(2 * dnu * INT_S)
    assert np.isclose(tr["noise_sigma_jy"], sigma)
    for a, b in [(clean[2], noisy[2]), (clean[12], noisy[12])]:
        with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
            va, vb = fa["Data/visdata"][:, 0], fb["Data/visdata"][:, 0]
            a1, a2 = fa["Header/ant_1_array"][:], fa["Header/ant_2_array"][:]
        n = (vb - va)[a1 != a2]
        assert abs(n.real.std() / sigma - 1) < 0.02 and abs(n.imag.std() / sigma - 1) < 0.02
        assert abs(n.real.mean()) < 0.02 * sigma
        auto_clean = va[a1 == a2].real
        na = (vb - va)[a1 == a2]
        assert np.all(na.imag == 0)
        assert abs((na.real / (auto_clean / np.sqrt(dnu * INT_S))).std() - 1) < 0.05


# ---------------------------------------------------------------- truth and corruptions


def test_truth_round_trip_and_gains_in_data(sim_small):
    from astropy.time import Time, TimeDelta

    from dsacont import load_truth

    out, paths = sim_small
    tr = load_truth(out, paths[5])
    tr2 = load_truth(out, Time(GROUP_START) + TimeDelta(10, format="sec"))
    assert tr["truth_path"] == tr2["truth_path"]
    assert tr["files"] == [os.path.basename(p) for p in paths]
    nt, na, nf = tr["time_jd"].size, tr["antennas"].size, tr["freq_hz"].size
    nbls = tr["ant1"].size
    assert nt == 24 and na == 48 and nf == 128 and nbls == na * (na + 1) // 2
    assert tr["gains"].shape == (nt, na, 2) and tr["bandpass"].shape == (na, nf, 2)
    assert tr["rfi_mask"].shape == (nt, nbls, nf, 2) and tr["rfi_mask"].dtype == bool
    assert tr["rfi_amplitude_jy"].shape == (nt, nf)
    assert np.all(np.diff(tr["freq_hz"]) > 0)
    # bandpass split: mean |B| = 1, mean phase 0 per antenna/pol; gains nearly constant in a group
    assert np.allclose(np.abs(tr["bandpass"]).mean(axis=1), 1)
    assert np.allclose(np.angle(tr["bandpass"]).mean(axis=1), 0, atol=1e-9)
    ptp = np.abs(tr["bandpass"]).max(axis=1) - np.abs(tr["bandpass"]).min(axis=1)
    assert 0.05 < np.median(ptp) < 0.4
    dph = np.degrees(np.angle(tr["gains"][-1] / tr["gains"][0]))
    assert np.abs(dph).max() < 2.0 and np.abs(np.abs(tr["gains"][-1] / tr["gains"][0]) - 1).max() < 0.005
    assert np.degrees(np.angle(tr["gains"][0])).std() > 30  # phases spread over the circle
    # RFI: a few narrowband channels for the whole group plus 1-2 broadband bursts
    tf = tr["rfi_tf_mask"]
    full_chan = tf.all(axis=0)
    full_time = tf.all(axis=1)
    assert 1 <= full_chan.sum() <= 6 and 1 <= full_time.sum() <= 4
    assert (tf == (full_chan[None, :] | full_time[:, None])).all()
    assert (tr["rfi_amplitude_jy"][tf] >= 10 * tr["noise_sigma_jy"] - 1e-9).all()
    # the files agree with the truth: autocorrelations = |g B|^2 (SEFD + sky) away from RFI
    fidx = {}
    ant_i = {int(a): i for i, a in enumerate(tr["antennas"])}
    auto_rows = np.nonzero(tr["ant1"] == tr["ant2"])[0]
    for sb, p in enumerate(paths):
        with h5py.File(p, "r") as f:
            v = f["Data/visdata"][:, 0].reshape(nt, nbls, -1, 2)
            fr = f["Header/freq_array"][0]
        ch = np.searchsorted(tr["freq_hz"], fr)  # file channel -> truth (ascending) channel
        assert np.allclose(tr["freq_hz"][ch], fr)
        fidx[sb] = ch
        for r in auto_rows[:6]:
            i = ant_i[int(tr["ant1"][r])]
            g = tr["gains"][:, i, None, :] * tr["bandpass"][i, ch][None]
            ratio = v[:, r].real / (np.abs(g) ** 2 * SEFD)
            ok = ~tr["rfi_tf_mask"][:, ch]
            assert np.abs(ratio[ok] - 1).max() < 0.01  # noise 2e-4, sky < 0.2 %
            assert (ratio[~ok] > 1 + 5 * tr["noise_sigma_jy"] / SEFD).all()  # RFI power >= 10 sigma
    assert tr["dead_antenna"] is None


def test_clean_switches(sim_clean):
    from dsacont import load_truth

    out, paths = sim_clean
    tr = load_truth(out, paths[0])
    assert tr["settings"]["rfi"] is False and tr["settings"]["noise"] is False and tr["settings"]["gains"] is False
    assert not tr["rfi_mask"].any() and (tr["gains"] == 1).all()
    assert tr["sources"]["name"][0] == "0834+555" and tr["sources"]["name"].size > 10  # field sources on
    with h5py.File(paths[7], "r") as f:
        v = f["Data/visdata"][:, 0]
        a1, a2 = f["Header/ant_1_array"][:], f["Header/ant_2_array"][:]
    auto = v[a1 == a2]
    # no noise: all autos of one time/channel identical (SEFD + the same sky)
    nt = 24
    auto = auto.reshape(nt, -1, *auto.shape[1:])
    assert np.allclose(auto, auto[:, :1], rtol=0, atol=1e-3)
    assert (np.abs(auto.real - SEFD) < 50).all()


def test_seed_reproducible_and_dead_antenna(sim_small, tmp_path):
    """Same seed again, with antenna 'dead': every other baseline is bit-identical, the dead one's are 0."""
    from dsacont import load_truth, simulate

    out, paths = sim_small
    tr = load_truth(out, paths[0])
    dead = int(tr["antennas"][7])
    again = simulate(tmp_path, GROUP_START, 5, preset="small", seed=1, dead_antenna=dead)
    again = sorted(again, key=lambda p: p[-7:-5])
    assert [os.path.basename(p) for p in again] == [os.path.basename(p) for p in paths]
    for sb in (0, 9):
        with h5py.File(paths[sb], "r") as fa, h5py.File(again[sb], "r") as fb:
            va, vb = fa["Data/visdata"][:], fb["Data/visdata"][:]
            a1, a2 = fa["Header/ant_1_array"][:], fa["Header/ant_2_array"][:]
            assert (fa["Header/uvw_array"][:] == fb["Header/uvw_array"][:]).all()
        hit = (a1 == dead) | (a2 == dead)
        assert (va[~hit] == vb[~hit]).all()
        assert (vb[hit] == 0).all() and (np.abs(va[hit]) > 0).all()
    tr2 = load_truth(tmp_path, again[0])
    assert tr2["dead_antenna"] == dead
    i = list(tr2["antennas"]).index(dead)
    assert (tr2["gains"][:, i] == 0).all()
    assert np.array_equal(tr2["rfi_tf_mask"], tr["rfi_tf_mask"])


def test_other_seed_differs_and_groups_tile_time():
    from astropy.time import Time

    from dsacont.simulator import core

    ants1 = core.active_antennas(core.PRESETS["full"], 0)
    ants2 = core.active_antennas(core.PRESETS["full"], 1)
    assert ants1.size == ants2.size == 96 and not np.array_equal(ants1, ants2)
    starts = core._group_starts(Time(GROUP_START), 60)
    assert len(starts) == 12
    d = np.diff([s.unix for s in starts])
    assert np.allclose(d, 24 * INT_S)
    assert len(core._group_starts(Time(GROUP_START), 5)) == 1
    f = core.frequencies(core.PRESETS["full"])
    assert f.size == 768 and np.isclose(f[0], 1498.75e6 - 244140.625 / 2) and np.isclose(f[-1], 1311.25e6 + 244140.625 / 2)


def test_truth_gains_calibrate_the_data(sim_small):
    """Dividing the files by the truth g1 B1 conj(g2 B2), then letting pyuvdata rephase to 0834+555,
    leaves the calibrator's flux x beam on long baselines: the gain convention and the truth agree."""
    from dsacont import load_truth

    out, paths = sim_small
    tr = load_truth(out, paths[0])
    ant_i = np.full(117, -1)
    ant_i[tr["antennas"]] = np.arange(tr["antennas"].size)
    for sb in (2, 13):
        uv = _read_uv(paths[sb])
        ch = np.searchsorted(tr["freq_hz"], uv.freq_array)
        times = np.unique(uv.time_array)
        ti = np.searchsorted(times, uv.time_array)
        i1, i2 = ant_i[uv.ant_1_array], ant_i[uv.ant_2_array]
        g1 = tr["gains"][ti, i1][:, None, :] * tr["bandpass"][i1][:, ch, :]
        g2 = tr["gains"][ti, i2][:, None, :] * tr["bandpass"][i2][:, ch, :]
        uv.data_array = uv.data_array / (g1 * np.conj(g2))
        dec = uv.extra_keywords["phase_center_dec"]
        el0 = np.pi / 2 - abs(0.6498455107 - dec)
        cid = uv._add_phase_center("hadec", cat_type="driftscan", cat_lon=0.0, cat_lat=el0, cat_frame="altaz")
        uv.phase_center_id_array[:] = cid
        uv._clear_unused_phase_centers()
        uv._set_app_coords_helper()
        uv.phase(lon=np.radians(CAL_RA), lat=np.radians(CAL_DEC), cat_type="sidereal", cat_name="0834+555")
        long = np.linalg.norm(uv.uvw_array, axis=1) > 300
        rfi = tr["rfi_tf_mask"][ti][:, ch]  # (Nblts, Nf)
        exp = _expected_amplitude(times, uv.freq_array, el0)
        for t in range(times.size):
            sel = long & (ti == t)
            v = uv.data_array[sel]  # (Nsel, Nf, 2)
            ok = ~rfi[sel][0]
            if not ok.any():  # a broadband RFI burst
                continue
            m = v[:, ok].mean(axis=0)  # (Nf_ok, 2)
            e = exp[t, ok][:, None]
            assert np.abs(m.real / e - 1).max() < 0.03
            assert np.abs(m.imag / e).max() < 0.03


def test_simulator_is_independent_of_the_pipeline():
    """The simulator imports no pipeline stage (it is the truth the pipeline is scored against)."""
    import subprocess
    import sys

    # what `import dsacont` itself loads (the package root and its offline CASA set-up, dsacont.casa)
    # is not the simulator's doing; everything the simulator adds must be its own
    code = ("import sys, dsacont; base = set(sys.modules); import dsacont.simulator, dsacont.simulator.cli; "
            "print(sorted(m for m in set(sys.modules) - base if m.startswith('dsacont')))")
    mods = eval(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout)
    assert mods and all(m.startswith("dsacont.simulator") or m == "dsacont.errors" for m in mods), mods
    src = os.path.join(os.path.dirname(__import__("dsacont").__file__), "simulator")
    for name in os.listdir(src):
        if name.endswith(".py"):
            text = open(os.path.join(src, name)).read()
            for stage in ("telescope", "io", "calibrators", "flagging", "convert", "calibration", "imaging",
                          "service"):
                assert f"dsacont.{stage}" not in text and f"from .. import {stage}" not in text, (name, stage)
