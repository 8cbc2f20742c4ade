"""Which calibration tables calibrate a group: one rule, for the registry and for the service.

A group at time ``t`` (MJD, UTC) pointed at declination ``dec`` is calibrated by a chain of
tables applied in order::

    [B, G]           bandpass and gains solved together on a calibrator transit
    [B, G, F]        ... and a field gain correction F solved on the group itself (an
                     'origin = field' G table whose ``depends_on`` is that G)

The rule (:func:`choose_tables`), over the registry's valid records:

1. **Same strip only.** A table whose pointing declination differs from the group's by more than
   ``dec_tolerance_deg`` is never used (a bandpass or gain solved at another declination belongs
   to other antennas' pointing and another sky; the operators measured flux ratios of ~0.06 from
   tables borrowed across strips). Records without a declination (registered before the registry
   carried one) are used only when the group's declination is not given.
2. **The calibrator pair.** The calibrator-transit gain table (``origin = transit``) nearest in time
   to ``t``, within ``borrow_days``, with the bandpass it was solved on. How each is used:

   ========================  ====================================================================
   ``transit``               the table's own validity window covers ``t`` (bandpass +-24 h,
                             gains +-1 h by default)
   ``transferred``           gains outside their window but within ``transfer_h`` (default 24 h):
                             the last calibrator's gains carried forward (or back)
   ``borrowed``              older than that, up to ``borrow_days`` (default 30): no calibrator
                             transited on this strip lately; the pair is borrowed
   ========================  ====================================================================
3. **The field correction.** A field gain table (``origin = field``) covering ``t`` and solved on
   top of the chosen pair is appended (``how = field``).

Nothing valid on the strip within ``borrow_days``: no choice (the group waits for a calibrator).
"""
from __future__ import annotations

from dataclasses import dataclass, field

#: default tolerance (degrees) between a table's pointing declination and a group's
DEC_TOLERANCE_DEG = 1.0
#: gains farther than this (hours) from the group are "borrowed", nearer "transferred"
TRANSFER_H = 24.0
#: the oldest calibrator pair (days) that may still be borrowed
BORROW_DAYS = 30.0


def origin_of(rec) -> str:
    """'transit' or 'field': how the table was solved (old records without origin: 'transit')."""
    return getattr(rec, "origin", None) or "transit"


def same_strip(rec, dec_deg: float | None, tolerance_deg: float = DEC_TOLERANCE_DEG) -> bool:
    """True when ``rec`` may be applied at pointing declination ``dec_deg`` (degrees)."""
    if dec_deg is None:
        return True
    rdec = getattr(rec, "dec_deg", None)
    return rdec is not None and abs(float(rdec) - float(dec_deg)) <= tolerance_deg


@dataclass
class Choice:
    """The tables chosen for one group, in apply order, and how each is used.

    Attributes
    ----------
    tables : list of CalRecord
        [B, G] or [B, G, F].
    how : list of str
        Per table: 'transit', 'transferred', 'borrowed' or 'field'.
    age_h : list of float
        Per table: hours between its solve time and the group (signed: positive = solved before).
    """

    tables: list = field(default_factory=list)
    how: list = field(default_factory=list)
    age_h: list = field(default_factory=list)

    @property
    def paths(self) -> list[str]:
        return [r.path for r in self.tables]

    @property
    def pair(self) -> list:
        """The calibrator pair [B, G] (without a field correction)."""
        return [r for r in self.tables if origin_of(r) != "field"]

    def describe(self) -> list[dict]:
        """One JSON-able dict per table: path, kind, registry id, how, origin, age, calibrator."""
        return [{"path": r.path, "kind": r.kind, "registry_id": r.id if r.key is None else None,
                 "key": r.key, "how": h, "origin": origin_of(r), "age_h": round(a, 3), "calibrator": r.calibrator,
                 "dec_deg": getattr(r, "dec_deg", None)}
                for r, h, a in zip(self.tables, self.how, self.age_h)]


def choose_tables(records, mjd: float, dec_deg: float | None = None, *,
                  dec_tolerance_deg: float = DEC_TOLERANCE_DEG, transfer_h: float = TRANSFER_H,
                  borrow_days: float = BORROW_DAYS, field_gains: bool = True) -> Choice | None:
    """Choose the tables that calibrate a group at ``mjd`` (see the module docstring).

    Parameters
    ----------
    records : iterable of CalRecord
        Candidate registry records (any status; only 'valid' ones are used).
    mjd : float
        The group's mid-time, MJD (UTC).
    dec_deg : float, optional
        The group's pointing declination (apparent, degrees). None: no strip check.
    dec_tolerance_deg, transfer_h, borrow_days : float
        See :data:`DEC_TOLERANCE_DEG`, :data:`TRANSFER_H`, :data:`BORROW_DAYS`.
    field_gains : bool
        Append a field gain table that covers ``mjd`` (default True).

    Returns
    -------
    Choice or None
        None when no calibrator pair of the strip lies within ``borrow_days``.
    """
    mjd = float(mjd)
    valid = [r for r in records if r.status == "valid" and same_strip(r, dec_deg, dec_tolerance_deg)]
    by_id = {r.id: r for r in valid}
    gains = [r for r in valid if r.kind == "G" and origin_of(r) == "transit"
             and abs(r.solve_mjd - mjd) <= borrow_days and by_id.get(r.depends_on) is not None
             and by_id[r.depends_on].kind == "B"]
    if gains:
        g = min(gains, key=lambda r: (abs(r.solve_mjd - mjd), -r.id))
        b = by_id[g.depends_on]
    else:
        # a bandpass solved without gains (e.g. a manual solve): the bandpass alone is not enough
        return None
    age_g = 24.0 * (mjd - g.solve_mjd)
    if g.covers(mjd):
        how_g = "transit"
    elif abs(age_g) <= transfer_h:
        how_g = "transferred"
    else:
        how_g = "borrowed"
    how_b = "transit" if b.covers(mjd) else "borrowed"
    choice = Choice([b, g], [how_b, how_g], [24.0 * (mjd - b.solve_mjd), age_g])
    if field_gains:
        fields = [r for r in valid if r.kind == "G" and origin_of(r) == "field" and r.depends_on == g.id
                  and r.covers(mjd)]
        if fields:
            f = min(fields, key=lambda r: (abs(r.solve_mjd - mjd), -r.id))
            choice.tables.append(f)
            choice.how.append("field")
            choice.age_h.append(24.0 * (mjd - f.solve_mjd))
    return choice
