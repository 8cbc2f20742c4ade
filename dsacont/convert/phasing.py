"""Phase-centre geometry, UVW and phase rotation: numba kernels beside their Dask wrappers.

Conventions (see ``docs/ARCHITECTURE.md``)
------------------------------------------
- Baseline vector ``b = x[antenna2] - x[antenna1]`` (metres, ECEF axes, relative positions).
- A visibility phased to unit direction ``s0`` is ``V = S A exp(+2j pi f/c b.(s - s0))``
  (pyuvdata's sign). Moving the phase centre from ``s0_old`` to ``s0_new`` therefore multiplies
  by ``exp(-2j pi f/c (w_new - w_old))`` with ``w = b.s0``: exactly pyuvdata's ``_apply_w_proj``.
- Phases are computed in float64 even for complex64 data; the product is rounded to complex64
  once, at the end.

Geometry
--------
The correlator fringe-stops every integration to CASA's ``HADEC(0, dec)``: a fixed direction
on the rotating Earth, ``s_old = (cos d cos lon, cos d sin lon, sin d)`` in ECEF axes (the
meridian of the array centre at declination ``d``; az 0, el ``90 - d + lat`` at OVRO).
The new phase centre is a fixed ICRS direction (RA, Dec). Its apparent place per integration
(precession, nutation, aberration, UT1 from the IERS tables shipped with astropy) and the
position angle between the apparent and ICRS frames come from pyuvdata's ERFA-based
astrometry (``pyuvdata.utils.phasing``), so the UVWs agree with pyuvdata's to floating-point
precision and with CASA measures to millimetres (``tests/convert/test_convert.py`` checks both).
That per-integration astrometry is condensed into one 3x3 rotation per integration,
``uvw = R[t] @ b`` (u east, v north in the ICRS frame, w towards the phase centre); the
per-baseline work is done by the numba kernels of :mod:`dsacont.convert.kernels`, which this
module wraps (numpy in/out, and :func:`rotate_vis` mapping the rotation over a Dask array).
"""
from __future__ import annotations

import dask.array as da
import numpy as np
from pyuvdata.utils.phasing import calc_app_coords, calc_frame_pos_angle, calc_uvw, transform_app_to_icrs
from pyuvdata.utils.times import get_lst_for_time

from dsacont import telescope
from dsacont.convert.kernels import baseline_uvw_kernel, delta_w_kernel, rotate_kernel
from dsacont.telescope import OVRO_LAT_RAD, OVRO_LON_RAD

__all__ = [
    "lst",
    "hadec_to_icrs",
    "meridian_icrs",
    "hadec_direction_ecef",
    "uvw_rotation",
    "baseline_uvw",
    "delta_w",
    "rotate_vis",
    "rotate_vis_numpy",
    "baseline_uvw_kernel",
    "delta_w_kernel",
    "rotate_kernel",
]


# ----------------------------------------------------------------------------- astrometry (per time)
def _location():
    return telescope.ovro_location()


def lst(jd) -> np.ndarray:
    """Local apparent sidereal time at the array centre, radians, for JD (UTC) ``jd``.

    Same computation as pyuvdata's ``lst_array`` (ERFA, IERS UT1-UTC).
    """
    jd = np.atleast_1d(np.asarray(jd, dtype=float))
    return np.asarray(get_lst_for_time(jd, telescope_loc=_location()), dtype=float)


def hadec_to_icrs(ha_rad, dec_rad, jd) -> tuple[np.ndarray, np.ndarray]:
    """ICRS (RA, Dec) radians of the apparent topocentric direction (HA, Dec) at JD (UTC).

    ``ha_rad``, ``dec_rad`` and ``jd`` broadcast; returns two float64 arrays.
    """
    ha, dec, jd = np.broadcast_arrays(
        np.atleast_1d(np.asarray(ha_rad, float)),
        np.atleast_1d(np.asarray(dec_rad, float)),
        np.atleast_1d(np.asarray(jd, float)),
    )
    app_ra = np.mod(lst(jd) - ha, 2 * np.pi)
    ra, d = transform_app_to_icrs(
        time_array=np.ascontiguousarray(jd), app_ra=app_ra, app_dec=np.ascontiguousarray(dec),
        telescope_loc=_location(),
    )
    return np.mod(np.asarray(ra, float), 2 * np.pi), np.asarray(d, float)


def meridian_icrs(jd, dec_rad) -> tuple[float, float]:
    """ICRS (RA, Dec) radians of the meridian ``HADEC(0, dec_rad)`` at one JD (UTC)."""
    ra, dec = hadec_to_icrs(0.0, dec_rad, jd)
    return float(ra[0]), float(dec[0])


def hadec_direction_ecef(dec_rad: float, ha_rad: float = 0.0, lon_rad: float | None = None) -> np.ndarray:
    """Unit vector (3,) in ECEF axes of the Earth-fixed direction (HA, Dec) at longitude ``lon``.

    This is the correlator's fringe-stop direction (HA 0 at the pointing declination); it does
    not move with time. ``lon_rad`` defaults to the array centre's longitude.
    """
    if lon_rad is None:
        lon_rad = OVRO_LON_RAD
    gl = lon_rad - ha_rad
    return np.array([np.cos(dec_rad) * np.cos(gl), np.cos(dec_rad) * np.sin(gl), np.sin(dec_rad)])


def uvw_rotation(jd, ra_rad, dec_rad) -> np.ndarray:
    """Rotations ``R`` (ntime, 3, 3) with ``uvw = R[t] @ b`` for an ICRS phase centre.

    Parameters
    ----------
    jd : array (ntime,)
        JD (UTC) of the integrations.
    ra_rad, dec_rad : float or array (ntime,)
        ICRS phase centre, radians (one per integration allowed).

    Returns
    -------
    ndarray (ntime, 3, 3) float64
        Row 2 is the apparent direction of the phase centre in ECEF axes; rows 0, 1 are u (east)
        and v (north) rotated by the ICRS frame position angle, as pyuvdata's ``calc_uvw``.
    """
    jd = np.atleast_1d(np.asarray(jd, dtype=float))
    nt = jd.size
    ra = np.broadcast_to(np.asarray(ra_rad, float), (nt,))
    dec = np.broadcast_to(np.asarray(dec_rad, float), (nt,))
    loc = _location()
    lsts = lst(jd)
    app_ra = np.empty(nt)
    app_dec = np.empty(nt)
    # calc_app_coords takes one (ra, dec); group the times by centre
    centres = {}
    for i in range(nt):
        centres.setdefault((ra[i], dec[i]), []).append(i)
    for (r, d), idx in centres.items():
        idx = np.asarray(idx)
        a_r, a_d = calc_app_coords(
            lon_coord=r, lat_coord=d, coord_type="sidereal", time_array=jd[idx], lst_array=lsts[idx],
            telescope_loc=loc, all_times_unique=True,
        )
        app_ra[idx], app_dec[idx] = a_r, a_d
    pa = calc_frame_pos_angle(time_array=jd, app_ra=app_ra, app_dec=app_dec, telescope_loc=loc, ref_frame="icrs")
    # the rotation is linear in position: push the three unit vectors through pyuvdata's calc_uvw
    basis = np.vstack([np.eye(3), np.zeros((1, 3))])
    rep = np.repeat
    out = calc_uvw(
        app_ra=rep(app_ra, 3), app_dec=rep(app_dec, 3), frame_pa=rep(pa, 3), lst_array=rep(lsts, 3),
        use_ant_pos=True, antenna_positions=basis, antenna_numbers=np.arange(4),
        ant_1_array=np.full(3 * nt, 3), ant_2_array=np.tile(np.arange(3), nt),
        telescope_lat=OVRO_LAT_RAD, telescope_lon=OVRO_LON_RAD,
    )
    # out[3 t + j] = R[t] @ e_j  -> column j of R[t]
    return np.ascontiguousarray(np.asarray(out, float).reshape(nt, 3, 3).transpose(0, 2, 1))


# ----------------------------------------------------------------------------- wrappers
def baseline_uvw(rot, antpos, ant1, ant2) -> np.ndarray:
    """Baseline uvw (ntime, nbl, 3) metres from rotations ``rot`` (ntime, 3, 3); see kernel."""
    return baseline_uvw_kernel(
        np.ascontiguousarray(rot, dtype=np.float64), np.ascontiguousarray(antpos, dtype=np.float64),
        np.ascontiguousarray(ant1, dtype=np.int64), np.ascontiguousarray(ant2, dtype=np.int64),
    )


def delta_w(w_new_dir, w_old_dir, antpos, ant1, ant2) -> np.ndarray:
    """w_new - w_old (ntime, nbl) metres; direction arrays (ntime, 3) or (3,) broadcast."""
    w_new_dir = np.atleast_2d(np.asarray(w_new_dir, dtype=np.float64))
    w_old_dir = np.atleast_2d(np.asarray(w_old_dir, dtype=np.float64))
    nt = max(w_new_dir.shape[0], w_old_dir.shape[0])
    return delta_w_kernel(
        np.ascontiguousarray(np.broadcast_to(w_new_dir, (nt, 3))),
        np.ascontiguousarray(np.broadcast_to(w_old_dir, (nt, 3))),
        np.ascontiguousarray(antpos, dtype=np.float64),
        np.ascontiguousarray(ant1, dtype=np.int64), np.ascontiguousarray(ant2, dtype=np.int64),
    )


def rotate_vis_numpy(vis, dw, freq, conjugate: bool = False) -> np.ndarray:
    """numpy in/out: vis (t, bl, f, p) * exp(-2j pi f dw / c) (conjugated if ``conjugate``);
    see :func:`rotate_kernel`."""
    return rotate_kernel(
        np.ascontiguousarray(vis), np.ascontiguousarray(dw, dtype=np.float64),
        np.ascontiguousarray(freq, dtype=np.float64), bool(conjugate),
    )


def rotate_vis(vis, dw, freq):
    """Dask wrapper of :func:`rotate_kernel`: one kernel call per block, lazily.

    Parameters
    ----------
    vis : dask array (time, baseline, frequency, polarization) complex
    dw : array (time, baseline) float64 metres; rechunked to match ``vis``
    freq : array (frequency,) float64 Hz; rechunked to match ``vis``
    """
    dw = da.asarray(dw).rechunk((vis.chunks[0], vis.chunks[1]))
    freq = da.asarray(freq).rechunk((vis.chunks[2],))
    return da.blockwise(
        rotate_vis_numpy, "tbfp", vis, "tbfp", dw, "tb", freq, "f", dtype=vis.dtype,
        meta=np.empty((0, 0, 0, 0), dtype=vis.dtype),
    )
