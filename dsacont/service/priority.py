"""The streaming service's claim priority: which waiting group a free worker takes first.

The queue claims groups by priority, then by time (:meth:`dsacont.service.queue.IngestQueue.claim`);
the service sets each new group's priority once, from the watcher's reading of one of its files
(:class:`dsacont.service.loop.ServiceOptions` ``priority``, default :func:`group_priority`).
In real time the groups arrive one by one and the order does not matter; in a backlog (an archive
replayed, a restart after downtime) it decides how soon the calibrator's tables exist.
"""
from __future__ import annotations

import functools
import math

from astropy.time import Time

from dsacont import calibration
from dsacont.service.options import GROUP_CADENCE_S, options_from

#: groups within this many of a calibrator's transit group get a claim priority (the gains' hour)
PRIORITY_REACH = 12


@functools.lru_cache(maxsize=256)
def _transits_of_day(dec_deg: float, day: int, min_flux_jy: float, min_pb: float, calibrator: str | None):
    """(name, transit Unix s) of the calibrator transits at a pointing declination on one UTC day
    (Unix day number), with two hours either side; cached: the service asks once per group."""
    t0 = Time(day * 86400.0 - 7200.0, format="unix", scale="utc")
    t1 = Time((day + 1) * 86400.0 + 7200.0, format="unix", scale="utc")
    found = calibration.find_calibrator_transits(t0, t1, dec_deg, min_flux_jy=min_flux_jy, min_pb=min_pb)
    return tuple((t.name, float(t.transit.unix)) for t in found if not calibrator or t.name == calibrator)


def group_priority(group, header: dict, options=None) -> tuple[int, str | None]:
    """The streaming service's claim priority of a new group (:class:`dsacont.service.loop.ServiceOptions`).

    From the pointing declination and integration times of ``header`` (the watcher's reading of
    one of its files) and the calibrator transits there (:func:`dsacont.calibration.find_calibrator_transits`
    with ``options``' ``cal_min_flux_jy``, ``cal_min_pb`` and ``calibrator``): ``PRIORITY_REACH + 1``
    (13) for the group in which a calibrator transits, one less for each group further from
    it, 0 beyond ``PRIORITY_REACH`` groups (an hour) or without a pointing in the header. In a
    backlog (an archive replayed, a restart after downtime) every group of a strip's first day
    waits for the transit group's tables, and its sky model grows outward from the transit tile
    through the overlap of consecutive tiles: taken in this order, the transit group solves
    while the others convert, and each tile after it finds its inner neighbour's sources in the
    model (to flatten and to solve its field gains against) instead of imaging itself twice.
    """
    dec, span = (header or {}).get("dec_deg"), (header or {}).get("time_unix")
    if dec is None or not span:
        return 0, None
    o = options_from(options)
    t0, t1 = float(span[0]), float(span[1])
    best = None
    for day in sorted({int(t0 // 86400), int(t1 // 86400)}):
        for name, t in _transits_of_day(round(float(dec), 2), day, float(o.cal_min_flux_jy), float(o.cal_min_pb),
                                        o.calibrator or None):
            gap = max(0.0, t0 - t, t - t1)  # 0: it transits inside the group
            steps = math.ceil(gap / GROUP_CADENCE_S - 1e-6)
            if steps <= PRIORITY_REACH and (best is None or steps < best[0]):
                best = (steps, name, t)
    if best is None:
        return 0, None
    steps, name, t = best
    when = Time(t, format="unix", scale="utc").isot[:19]
    why = (f"calibrator {name} transits in it ({when})" if steps == 0 else
           f"{steps} group(s) from the calibrator {name} transit at {when}")
    return PRIORITY_REACH + 1 - steps, why
