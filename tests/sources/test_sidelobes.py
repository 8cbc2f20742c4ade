"""The sidelobe flag (dsacont.sources.sidelobes): faint detections on the snapshot PSF's E-W and
N-S arms near a much brighter one are flagged; off the arms, too far, or not faint enough, not."""
from __future__ import annotations

import numpy as np

from dsacont.sources.sidelobes import sidelobe_candidates


def _offset(ra0, dec0, pa_deg, r_arcmin):
    """A position r_arcmin from (ra0, dec0) at position angle pa_deg (east of north), small-angle."""
    r, pa = np.radians(r_arcmin / 60.0), np.radians(pa_deg)
    dec = dec0 + np.degrees(r * np.cos(pa))
    ra = ra0 + np.degrees(r * np.sin(pa)) / np.cos(np.radians(dec0))
    return ra, dec


def test_faint_detections_on_the_arms_of_a_bright_source_are_flagged():
    ra0, dec0 = 359.9, 55.6  # the RA wraps between the bright source and some of its neighbours
    cases = [  # (pa_deg, r_arcmin, peak_jy, flagged?)
        (90.0, 12.0, 0.005, True),     # E arm
        (-88.0, 20.0, 0.005, True),    # W arm, 2 deg off
        (181.0, 8.0, 0.010, True),     # S arm
        (45.0, 12.0, 0.005, False),    # between the arms
        (90.0, 45.0, 0.005, False),    # on the arm, too far
        (90.0, 12.0, 0.050, False),    # on the arm, 5 % of the bright one: a real neighbour
        (20.0, 12.0, 0.005, False),    # 20 deg off the N arm
    ]
    ra, dec, peak = [ra0], [dec0], [1.0]
    for pa, r, s, _ in cases:
        a, d = _offset(ra0, dec0, pa, r)
        ra.append(a % 360.0)
        dec.append(d)
        peak.append(s)
    flagged = sidelobe_candidates(ra, dec, peak)
    assert not flagged[0]
    assert flagged[1:].tolist() == [c[3] for c in cases]


def test_the_rule_needs_a_much_brighter_neighbour_and_scales_with_the_arms_given():
    ra, dec = _offset(150.0, 55.0, 45.0, 10.0)
    # two equal sources on each other's 45-deg line: nothing is flagged, whatever the arms
    assert not sidelobe_candidates([150.0, ra], [55.0, dec], [0.01, 0.01]).any()
    # the same geometry with a 1 Jy source: flagged only when the arms are turned onto it
    assert not sidelobe_candidates([150.0, ra], [55.0, dec], [1.0, 0.005])[1]
    assert sidelobe_candidates([150.0, ra], [55.0, dec], [1.0, 0.005], arms_pa_deg=(45.0,))[1]
