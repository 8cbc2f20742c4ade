"""The plan of one conversion: what the MS of a group will hold, computed from the Dataset's
coordinates and attributes alone (no visibility is read).

- the spectral windows: one per subband, ascending (:func:`spw_layout`);
- the phase centre(s) (:func:`phase_centre`) and the per-integration geometry: new UVW and the
  w change the visibilities are rotated by (:func:`geometry`);
- the MS layout (:class:`dsacont.io.ms_build.MSLayout`: subtables) and main-table rows
  (:class:`dsacont.io.ms_build.MainRows`), which :class:`dsacont.convert.builder.MSBuilder` builds.

See :mod:`dsacont.convert` for the decisions (16 SPWs, one common phase centre, row order).
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from dsacont import __version__
from dsacont.convert import phasing
from dsacont.io import ms as msio
from dsacont.io import ms_build
from dsacont.telescope import ARRAY_CENTRE_ECEF, DISH_DIAMETER_M, TELESCOPE_NAME

__all__ = ["PHASE_MODES", "ConversionPlan", "plan_conversion", "phase_centre", "geometry", "spw_layout"]

PHASE_MODES = ("common", "per_integration")


def phase_centre(ds, phase: str = "common") -> dict:
    """The phase centre(s) a group is rotated to.

    Parameters
    ----------
    ds : xarray.Dataset
        The reader's Dataset (uses ``time`` and ``attrs['phase_center_dec']``).
    phase : {'common', 'per_integration'}
        One centre, the meridian ``HADEC(0, dec)`` at the group's mid-time; or one per
        integration, the meridian at that integration's time (the correlator's own).

    Returns
    -------
    dict
        ``ra``, ``dec`` : ndarray (nfield,) radians, ICRS; ``names`` : list (nfield,) of str;
        ``field_of_time`` : ndarray (ntime,) int, the field of each integration;
        ``jd_mid`` : float, JD (UTC) of the middle of the group.
    """
    if phase not in PHASE_MODES:
        raise ValueError(f"phase must be one of {PHASE_MODES}, got {phase!r}")
    times = np.asarray(ds["time"].values, dtype=float)
    dec0 = float(ds.attrs["phase_center_dec"])
    ts = str(ds.attrs.get("group_timestamp", "group"))
    jd_mid = float(0.5 * (times.min() + times.max()))
    if phase == "common":
        ra, dec = phasing.meridian_icrs(jd_mid, dec0)
        return dict(ra=np.array([ra]), dec=np.array([dec]), names=[ts], field_of_time=np.zeros(times.size, int),
                    jd_mid=jd_mid)
    ra, dec = phasing.hadec_to_icrs(0.0, dec0, times)
    return dict(ra=ra, dec=dec, names=[f"{ts}_{i:02d}" for i in range(times.size)],
                field_of_time=np.arange(times.size), jd_mid=jd_mid)


def geometry(ds, centre: dict) -> dict:
    """Per-integration geometry of the Dataset ``ds`` phased to ``centre`` (:func:`phase_centre`).

    Returns
    -------
    dict
        ``uvw`` : ndarray (ntime, nbl, 3) float64, metres, Dataset convention (ant2 - ant1);
        ``dw`` : ndarray (ntime, nbl) float64, w_new - w_old, metres (the rotation's delay);
        ``rot`` : ndarray (ntime, 3, 3) float64, ``uvw = rot[t] @ b``.
    """
    times = np.asarray(ds["time"].values, dtype=float)
    f = centre["field_of_time"]
    rot = phasing.uvw_rotation(times, centre["ra"][f], centre["dec"][f])
    antpos = np.asarray(ds["antenna_position"].values, dtype=float)
    a1 = np.asarray(ds["antenna1"].values)
    a2 = np.asarray(ds["antenna2"].values)
    s_old = phasing.hadec_direction_ecef(float(ds.attrs["phase_center_dec"]))
    uvw = phasing.baseline_uvw(rot, antpos, a1, a2)
    dw = phasing.delta_w(rot[:, 2, :], s_old, antpos, a1, a2)
    return dict(uvw=uvw, dw=dw, rot=rot)


def spw_layout(ds) -> list[tuple[int, int, int]]:
    """The spectral windows from the ``subband`` coordinate: list of (first channel, end channel,
    subband) in the Dataset's (ascending) channel order; every SPW has the same channel count."""
    sb = np.asarray(ds["subband"].values)
    edges = np.flatnonzero(np.diff(sb) != 0) + 1
    starts = np.concatenate([[0], edges])
    ends = np.concatenate([edges, [sb.size]])
    spws = [(int(a), int(b), int(sb[a])) for a, b in zip(starts, ends)]
    nchan = {b - a for a, b, _ in spws}
    if len(nchan) != 1:
        raise ValueError(f"subbands have different channel counts {sorted(nchan)}; cannot lay out SPWs")
    return spws


@dataclass
class ConversionPlan:
    """What the MS of one group will hold (:func:`plan_conversion`).

    Attributes
    ----------
    timestamp : str
        The group's timestamp (the MS and FIELD name).
    phase : str
        'common' or 'per_integration'.
    spws : list of (int, int, int)
        (first channel, end channel, subband) of each SPW, ascending.
    times : ndarray (ntime,) float64
        JD (UTC) of the integrations.
    ant1, ant2 : ndarray (nbl,) int32
        Antenna numbers of each baseline.
    freq : ndarray (nfreq,) float64
        Channel frequencies, Hz, ascending.
    npol : int
    centre : dict
        :func:`phase_centre`.
    uvw : ndarray (ntime, nbl, 3) float64
        Metres, Dataset convention (the MS stores ``-uvw``).
    dw : ndarray (ntime, nbl) float64
        w_new - w_old, metres.
    layout : dsacont.io.ms_build.MSLayout
        Subtables and shape of the MS.
    rows : dsacont.io.ms_build.MainRows
        The main table's rows (time, spw, baseline order).
    """

    timestamp: str
    phase: str
    spws: list
    times: np.ndarray
    ant1: np.ndarray
    ant2: np.ndarray
    freq: np.ndarray
    npol: int
    centre: dict
    uvw: np.ndarray
    dw: np.ndarray
    layout: ms_build.MSLayout
    rows: ms_build.MainRows

    @property
    def ntime(self) -> int:
        return int(self.times.size)

    @property
    def nbl(self) -> int:
        return int(self.ant1.size)

    @property
    def nspw(self) -> int:
        return len(self.spws)

    @property
    def nchan(self) -> int:
        return self.spws[0][1] - self.spws[0][0]

    @property
    def nrows(self) -> int:
        return self.ntime * self.nspw * self.nbl

    def first_row(self, t: int, spw: int) -> int:
        """First main-table row of integration ``t``, SPW ``spw`` (a run of ``nbl`` rows)."""
        return (t * self.nspw + spw) * self.nbl

    def estimate_ms_bytes(self) -> int:
        """Bytes of the finished MS, with a margin (to choose where to build it)."""
        return int(self.nrows * (self.npol * self.nchan * 8 + self.npol * self.nchan / 8 + 24 + 16 + 80) * 1.05) + (8 << 20)


def plan_conversion(ds, phase: str = "common", *, rfi_flags: bool = False) -> ConversionPlan:
    """The :class:`ConversionPlan` of the reader's Dataset ``ds`` (coordinates and attributes only).

    Parameters
    ----------
    ds : xarray.Dataset
        From :func:`dsacont.io.uvh5.open_group` (possibly selected or transformed).
    phase : {'common', 'per_integration'}
        See :func:`phase_centre`.
    rfi_flags : bool
        The MS's FLAG will include dsacont's RFI flags (recorded in HISTORY).
    """
    if phase not in PHASE_MODES:
        raise ValueError(f"phase must be one of {PHASE_MODES}, got {phase!r}")
    ts = str(ds.attrs.get("group_timestamp", "group"))
    spws = spw_layout(ds)
    times = np.asarray(ds["time"].values, dtype=float)
    ntime = times.size
    a1 = np.asarray(ds["antenna1"].values, dtype=np.int32)
    a2 = np.asarray(ds["antenna2"].values, dtype=np.int32)
    pols = [str(p) for p in ds["polarization"].values]
    freq = np.asarray(ds["frequency"].values, dtype=float)
    width = np.asarray(ds["channel_width"].values, dtype=float)
    centre = phase_centre(ds, phase)
    geo = geometry(ds, centre)
    nbl, npol, nchan = a1.size, len(pols), spws[0][1] - spws[0][0]

    t_ms = msio.jd_to_ms_time(times)
    tint = float(ds.attrs.get("integration_time", np.median(np.diff(times)) * 86400.0 if ntime > 1 else 1.0))
    srcs = [os.path.basename(str(p)) for p in ds.attrs.get("source_files", [])]
    if phase == "per_integration":
        first_of_field = np.searchsorted(centre["field_of_time"], np.arange(len(centre["names"])))
        field_times = msio.jd_to_ms_time(times[first_of_field])
    else:
        field_times = np.array([msio.jd_to_ms_time(centre["jd_mid"])])
    ra0, dec0 = np.degrees(centre["ra"][0]), np.degrees(centre["dec"][0])
    layout = ms_build.MSLayout(
        antenna_names=[str(n) for n in ds["antenna_name"].values],
        antenna_positions=np.asarray(ds["antenna_position"].values, float) + ARRAY_CENTRE_ECEF,
        dish_diameter=DISH_DIAMETER_M,
        spw_freqs=np.stack([freq[a:b] for a, b, _ in spws]),
        spw_widths=np.stack([width[a:b] for a, b, _ in spws]),
        spw_names=[f"sb{s:02d}" for _, _, s in spws],
        polarizations=pols,
        field_names=centre["names"],
        field_dirs=np.stack([centre["ra"], centre["dec"]], axis=1),
        field_times=field_times,
        time_range=(float(t_ms.min() - tint / 2), float(t_ms.max() + tint / 2)),
        telescope_name=str(ds.attrs.get("telescope_name", TELESCOPE_NAME)),
        nrows=ntime * len(spws) * nbl,
        interval=tint,
        tile_rows=ms_build.run_tile_rows(nbl, npol, nchan),
        history=[
            f"dsacont {__version__} convert_group: group {ts}, {len(srcs)} subband files",
            f"phase={phase}: centre RA {ra0:.6f} Dec {dec0:.6f} deg "
            f"(ICRS, meridian HADEC(0, {np.degrees(float(ds.attrs['phase_center_dec'])):.4f} deg) at "
            f"{'mid-time' if phase == 'common' else 'each integration'}); UVW recomputed per integration",
            f"flags: correlator{' + dsacont.flagging' if rfi_flags else ''}",
            "source files: " + ", ".join(srcs),
        ],
    )
    field = centre["field_of_time"].astype(np.int32)
    # MS convention: UVW = x_ant1 - x_ant2 (minus the Dataset's uvw), DATA conjugated
    rows = ms_build.MainRows(time=t_ms, field_id=field, scan=field + 1 if phase == "per_integration" else np.ones(ntime, np.int32),
                         nspw=len(spws), ant1=a1, ant2=a2, uvw=-geo["uvw"], interval=tint)
    return ConversionPlan(timestamp=ts, phase=phase, spws=spws, times=times, ant1=a1, ant2=a2, freq=freq, npol=npol,
                          centre=centre, uvw=geo["uvw"], dw=geo["dw"], layout=layout, rows=rows)
