"""Write one subband file in the DSA-110 correlator's UVH5 layout (h5py, old UVH5 shapes).

Layout as written by the real correlator writer (dsa110-meridian-fs): Header datasets created
resizable and chunked (``maxshape=(None, ...)``, ``chunks=True``), ``latitude``/``longitude`` in
degrees and ``altitude`` in metres (no ``telescope_location``), no ``lst_array``, no
``vis_units``; ``Data/visdata`` complex64 (Nblts, 1, Nfreqs, Npols), ``Data/flags`` bool (all
False), ``Data/nsamples`` float32; ``extra_keywords`` with the HADEC fringe-stop description.
The file is written as ``<name>_incomplete.hdf5`` and renamed when complete.
"""
from __future__ import annotations

import os
from datetime import datetime, timezone

import h5py
import numpy as np

from .geometry import DISH_DIAMETER_M, N_PADS, OVRO_HEIGHT_M, OVRO_LAT_RAD, OVRO_LON_RAD, antenna_positions


def incomplete_name(final_path: str) -> str:
    """``..._sbNN.hdf5`` -> ``..._sbNN_incomplete.hdf5`` (the name while the file is being written)."""
    assert final_path.endswith(".hdf5")
    return final_path[: -len(".hdf5")] + "_incomplete.hdf5"


def _resizable(group, name, data, dtype):
    data = np.asarray(data, dtype=dtype)
    shape0 = (0,) + data.shape[1:]
    ds = group.create_dataset(name, shape0, maxshape=(None,) + data.shape[1:], dtype=dtype, chunks=True)
    ds.resize(data.shape[0], axis=0)
    ds[...] = data
    return ds


def write_subband(final_path: str, *, vis: np.ndarray, times_jd: np.ndarray, freqs_hz: np.ndarray,
                  channel_width_hz: float, integration_time_s: float, ant1: np.ndarray, ant2: np.ndarray,
                  uvw_m: np.ndarray, dec_rad: float, fs_table: str, applied_delays_ns: str) -> str:
    """Write one subband file; return the final path.

    vis: (Ntimes, Nbls, Nfreqs, 2) complex, file frequency order (descending);
    times_jd: (Ntimes,) integration centres; freqs_hz: (Nfreqs,) descending;
    ant1/ant2: (Nbls,) antenna numbers; uvw_m: (Nbls, 3) for HADEC(0, dec), constant in time.
    """
    nt, nbls, nf, npol = vis.shape
    nblts = nt * nbls
    tmp = incomplete_name(final_path)
    with h5py.File(tmp, "w") as fh:
        h = fh.create_group("Header")
        d = fh.create_group("Data")
        h["latitude"] = np.degrees(OVRO_LAT_RAD)
        h["longitude"] = np.degrees(OVRO_LON_RAD)
        h["altitude"] = OVRO_HEIGHT_M
        h["telescope_name"] = np.bytes_("OVRO_MMA")
        h["instrument"] = np.bytes_("DSA")
        h["object_name"] = np.bytes_("search")
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        h["history"] = np.bytes_(f"written by dsacont.simulator (DSA-110 correlator layout) on {stamp}")
        h["phase_type"] = np.bytes_("drift")
        h["Nants_data"] = int(np.unique(np.concatenate([ant1, ant2])).size)
        h["Nants_telescope"] = N_PADS
        h["antenna_diameters"] = np.full(N_PADS, DISH_DIAMETER_M)
        _resizable(h, "ant_1_array", np.tile(ant1, nt), np.int64)
        _resizable(h, "ant_2_array", np.tile(ant2, nt), np.int64)
        h.create_dataset("antenna_names", (N_PADS,), dtype="S4",
                         data=np.array([str(i + 1) for i in range(N_PADS)], dtype="S4"))
        h["antenna_numbers"] = np.arange(N_PADS)
        h["Nbls"] = nbls
        h["Nblts"] = nblts
        h["Nfreqs"] = nf
        h["Npols"] = npol
        h["Ntimes"] = nt
        h["Nspws"] = 1
        _resizable(h, "uvw_array", np.tile(np.asarray(uvw_m), (nt, 1)), np.float32)
        _resizable(h, "time_array", np.repeat(np.asarray(times_jd, dtype=float), nbls), np.float64)
        _resizable(h, "integration_time", np.full(nblts, integration_time_s), np.float64)
        h["freq_array"] = np.asarray(freqs_hz, dtype=np.float64)[np.newaxis, :]
        h["channel_width"] = float(abs(channel_width_hz))
        h["spw_array"] = np.array([1])
        h["polarization_array"] = np.array([-5, -6])
        h["antenna_positions"] = antenna_positions()
        ek = h.create_group("extra_keywords")
        ek["phase_center_dec"] = float(dec_rad)
        ek["ha_phase_center"] = 0.0
        ek["phase_center_epoch"] = "HADEC"
        ek["fs_table"] = np.bytes_(fs_table)
        ek["applied_delays_ns"] = np.bytes_(applied_delays_ns)
        _resizable(d, "visdata", np.asarray(vis, dtype=np.complex64).reshape(nblts, 1, nf, npol), np.complex64)
        _resizable(d, "flags", np.zeros((nblts, 1, nf, npol), dtype=bool), bool)
        _resizable(d, "nsamples", np.ones((nblts, 1, nf, npol), dtype=np.float32), np.float32)
    os.replace(tmp, final_path)
    return final_path
