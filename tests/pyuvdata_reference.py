"""pyuvdata's own path from a DSA-110 subband group to a Measurement Set (the community reference).

Run as a script in its own process (it imports python-casacore, which must never share a
process with casatools)::

    python tests/pyuvdata_reference.py OUT.ms RA_RAD DEC_RAD FILE [FILE ...]

Steps: read all subband files (one UVData, frequencies sorted ascending); declare the files'
true phase centre (the correlator fringe-stops to HADEC(0, dec) = a fixed az/el: pyuvdata reads
'drift' files as unprojected/zenith, so we relabel them as a 'driftscan' centre at that az/el
without touching the data, and recompute uvw from the antenna positions); phase to the ICRS
centre (RA, Dec) with ``UVData.phase``; ``write_ms`` (pyuvdata's default conjugation).
Prints a JSON line with the time spent in each step.
"""
from __future__ import annotations

import json
import sys
import time


def main(argv):
    out, ra, dec, files = argv[0], float(argv[1]), float(argv[2]), argv[3:]
    import erfa
    import numpy as np
    from pyuvdata import UVData

    t = {}
    t0 = time.perf_counter()
    parts = []
    for f in sorted(files):
        u = UVData()
        u.read(f, file_type="uvh5", run_check=False)
        u.uvw_array = u.uvw_array.astype(np.float64)  # DSA-110 files store float32 uvw
        parts.append(u)
    uvd = parts[0]
    uvd.fast_concat(parts[1:], "freq", inplace=True, run_check=False)
    del parts
    t["read"] = time.perf_counter() - t0

    t1 = time.perf_counter()
    uvd.reorder_freqs(channel_order="freq")
    dec0 = float(uvd.extra_keywords["phase_center_dec"])
    lat = uvd.telescope.location.lat.rad
    az, el = erfa.hd2ae(0.0, dec0, lat)
    cat_id = uvd._add_phase_center(cat_name="hadec_meridian", cat_type="driftscan", cat_lon=float(az),
                                   cat_lat=float(el), cat_frame="altaz")
    uvd.phase_center_id_array[:] = cat_id
    uvd._clear_unused_phase_centers()
    uvd._set_app_coords_helper()
    uvd.set_uvws_from_antenna_positions(update_vis=False)
    uvd.phase(lon=ra, lat=dec, cat_name="common", phase_frame="icrs", cat_type="sidereal")
    t["phase"] = time.perf_counter() - t1

    t2 = time.perf_counter()
    uvd.write_ms(out, clobber=True, run_check=False)
    t["write_ms"] = time.perf_counter() - t2
    t["total"] = time.perf_counter() - t0
    t["az_el_deg"] = [float(np.degrees(az)), float(np.degrees(el))]
    print(json.dumps(t))


if __name__ == "__main__":
    main(sys.argv[1:])
