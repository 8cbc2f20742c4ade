"""Antenna health from the data, before any solve: dead receptors and antennas with bad phase.

    health = antenna_health(ms)          read DATA once; per receptor (antenna x polarisation):
                                         autocorrelation power, coherent SNR of its cross-
                                         correlations, phase coherence and phase rate in time
    flag_unhealthy(ms, health)           OR the verdicts into FLAG (a dead receptor: only its own
                                         correlations; a bad antenna: all of its; an antenna that
                                         dies: from the integration it died in)
    choose_refant(info, flags, health=health)   (solve.py) picks the reference among the healthy

Everything is a ratio to the array's median or a dimensionless statistic (SNR, coherence, phase),
never a flux: the data are in raw correlator units (gains ~0.07, visibilities ~1/200 of Jy), and
an absolute threshold in Jy would mean nothing before calibration.

The statistics, per receptor (antenna a, receptor X or Y; parallel hands only):

* **auto power** (integration t): median over subbands of the autocorrelation, / the median of
  all receptors at t. A receptor whose autocorrelation falls below ``DEAD_AUTO_RATIO`` of the
  array's, or whose unflagged cross-correlations are mostly exact zeros, is dead at t (a dead
  correlator input writes zeros). Dead at every t: ``dead`` (``zeros``); at some: ``dies``.
* **coherent SNR**: for each baseline, integration and subband, |mean over channels| / (noise of
  that mean, from adjacent-channel differences). Noise alone gives ~0.9 whatever the units; sky
  gives more. Per baseline the median over integrations and subbands, divided by the median of
  the baselines of similar length (8 length bins: a source off the phase centre decorrelates more
  on long baselines); the receptor's median of that over its baselines to healthy partners below
  ``DEAD_SNR_RATIO``: the receptor carries no sky, ``dead`` (``no coherent signal``).
* **phase coherence**: per baseline, |sum_t V_t conj(V_t-1)| / sum_t |V_t||V_t-1| over consecutive
  integrations (subbands summed: their bandpass phases cancel), normalised by length bin like the
  SNR. A phase that is redrawn every integration gives ~1/sqrt(N); the receptor's median below
  ``BAD_COHERENCE_RATIO``: ``bad`` (``wild phase``).
* **phase rate**: arg of the same sum / the integration time, as the antenna's (median over
  partners, sign by baseline orientation), minus a robust fit linear in antenna position (the
  fringe rate of a source off the phase centre). Faster than ``MAX_PHASE_RATE_DEG_MIN`` and than
  ``RATE_SIGMA`` standard errors (from the spread of the antenna's baselines): ``bad`` (``phase wraps``): a solve with one
  solution per group would average it to nothing.

The two coherent statistics need sky on the baselines: when the array's median SNR is below
``MIN_ARRAY_SNR`` (a faint field), only the autocorrelation/zero test is used and
``AntennaHealth.notes`` says so.
"""
from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

from dsacont.calibration.kernels import _channel_stats_kernel
from dsacont.errors import BadInputError
from dsacont.io.ms import column_reader, read_ms_info, table

log = logging.getLogger(__name__)

#: a receptor whose autocorrelation is below this fraction of the array's median is dead
DEAD_AUTO_RATIO = 0.1
#: ... or whose unflagged cross-correlation samples are more than this fraction exact zeros
DEAD_ZERO_FRACTION = 0.5
#: a receptor whose coherent SNR is below this fraction of the array's median carries no sky
DEAD_SNR_RATIO = 0.3
#: an antenna whose phase coherence between integrations is below this fraction of the array's
BAD_COHERENCE_RATIO = 0.5
#: a phase rate farther than this from the array's median is a wrapping phase, deg per minute
MAX_PHASE_RATE_DEG_MIN = 15.0
#: ... and farther than this many standard errors of the antenna's rate (from the spread of its
#: baselines' rates about the model)
RATE_SIGMA = 6.0
#: below this array-median coherent SNR (noise alone: ~0.9) the sky is too faint for the
#: coherent statistics: only autocorrelations and zeros are judged
MIN_ARRAY_SNR = 4.0

#: correlation types (Stokes codes) -> receptor pair; parallel hands carry the statistics
_CORR_RECEPTORS = {9: (0, 0), 10: (0, 1), 11: (1, 0), 12: (1, 1), 5: (0, 0), 6: (0, 1), 7: (1, 0), 8: (1, 1)}
_PARALLEL = (9, 12, 5, 8)
RECEPTORS = ("X", "Y")
STATES = ("ok", "dead", "dies", "bad", "flagged", "absent")


@dataclass
class AntennaHealth:
    """What :func:`antenna_health` found. Receptor arrays are (Na, 2): every antenna of the MS's
    ANTENNA table (row = antenna id), receptors X (0) and Y (1).

    Attributes
    ----------
    ms : str
    antenna_names : list of str (Na,)
    state : ndarray (Na, 2) str
        ``ok``, ``dead`` (no usable signal all group), ``dies`` (dead from some integration on),
        ``bad`` (phase unusable: both receptors of the antenna), ``flagged`` (no unflagged data
        to judge), ``absent`` (no rows in the MS).
    reason : ndarray (Na, 2) str
        Why, with the figure (empty when ok).
    auto_ratio : ndarray (Na, 2) float
        Median autocorrelation power / the array's median (nan without autocorrelations).
    snr_ratio : ndarray (Na, 2) float
        Median over the receptor's baselines of their coherent SNR / that of baselines of similar
        length.
    coherence_ratio : ndarray (Na, 2) float
        The same for the phase coherence between consecutive integrations.
    phase_rate_deg_min : ndarray (Na, 2) float
        Phase rate less the array's (a fit linear in antenna position), degrees per minute.
    dead_t : ndarray (Na, Nt, 2) bool
        Receptor dead (zeros / no power) in integration t (``times_s``).
    times_s : ndarray (Nt,) float
        MS TIME of the integrations, s.
    array_snr : float
        The median over baselines between healthy receptors of their coherent SNR per
        integration and subband (noise alone ~0.9).
    notes : list of str
    """

    ms: str
    antenna_names: list
    state: np.ndarray
    reason: np.ndarray
    auto_ratio: np.ndarray
    snr_ratio: np.ndarray
    coherence_ratio: np.ndarray
    phase_rate_deg_min: np.ndarray
    dead_t: np.ndarray
    times_s: np.ndarray
    array_snr: float
    notes: list = field(default_factory=list)

    def usable(self) -> np.ndarray:
        """(Na,) bool: antennas with data whose two receptors are both ``ok``."""
        return np.all(self.state == "ok", axis=1)

    def healthy_antennas(self) -> list[str]:
        """Names of the antennas with both receptors ``ok`` (reference-antenna candidates)."""
        return [n for n, u in zip(self.antenna_names, self.usable()) if u]

    def unhealthy(self) -> list[dict]:
        """The receptors judged dead, dying or bad (the :meth:`records` that are not ``ok``, ``absent``)."""
        return [r for r in self.records() if r["state"] not in ("ok", "absent")]

    def records(self) -> list[dict]:
        """One dict per receptor of every present antenna: ``antenna`` (name), ``pol`` ('X'/'Y'),
        ``state``, ``reason``, ``metric`` (the figure the state rests on: auto ratio for zeros,
        SNR ratio for no signal, coherence ratio for a wild phase, deg/min for a wrapping one,
        the SNR ratio when ok) and ``dead_from_s`` (MS TIME of the first dead integration, or
        None). JSON-ready: what a worker returns and the products database records."""
        out = []
        for a, name in enumerate(self.antenna_names):
            for r in range(2):
                st = str(self.state[a, r])
                if st == "absent":
                    continue
                why = str(self.reason[a, r])
                if "zeros" in why or st == "dies":
                    m = self.auto_ratio[a, r]
                elif "wraps" in why:
                    m = self.phase_rate_deg_min[a, r]
                elif "wild" in why:
                    m = self.coherence_ratio[a, r]
                else:
                    m = self.snr_ratio[a, r]
                dt = np.nonzero(self.dead_t[a, :, r])[0]
                out.append({"antenna": str(name), "pol": RECEPTORS[r], "state": st, "reason": why,
                            "metric": None if not np.isfinite(m) else round(float(m), 4),
                            "dead_from_s": float(self.times_s[dt[0]]) if dt.size else None})
        return out

    def summary(self) -> dict:
        """Counts by state, the array SNR and notes (JSON-ready)."""
        present = self.state != "absent"
        return {"ms": self.ms, "receptors": int(present.sum()),
                **{s: int((self.state == s).sum()) for s in STATES if s != "absent"},
                "bad_antennas": sorted({str(self.antenna_names[a]) for a, _ in np.argwhere(self.state == "bad")}),
                "array_snr": round(float(self.array_snr), 3), "notes": list(self.notes)}


def _pol_setup(info, ms):
    pols = np.unique(info.ddid_pol)
    if len(pols) != 1:
        raise BadInputError(ms, f"{len(pols)} polarization setups; antenna health needs one")
    corr = [int(c) for c in info.corr_types[int(pols[0])]]
    bad = [c for c in corr if c not in _CORR_RECEPTORS]
    if bad:
        raise BadInputError(ms, f"correlation types {bad} are not linear or circular receptor pairs")
    return corr


def _read_stats(ms, info, chunk_rows):
    """Per-row channel statistics of DATA (see the kernel) and the row indices."""
    with table(ms) as tb:
        a1 = tb.getcol("ANTENNA1").astype(np.int64)
        a2 = tb.getcol("ANTENNA2").astype(np.int64)
        tt = tb.getcol("TIME")
        dd = tb.getcol("DATA_DESC_ID").astype(np.int64)
        nrow = a1.size
        parts = []
        read_data, read_flag = column_reader(tb, "DATA"), column_reader(tb, "FLAG")
        for start in range(0, nrow, chunk_rows):
            n = min(chunk_rows, nrow - start)
            data = read_data(start, n)
            flag = read_flag(start, n)
            parts.append(_channel_stats_kernel(np.ascontiguousarray(data, dtype=np.complex64),
                                               np.ascontiguousarray(flag, dtype=np.bool_)))
    mean, var, n, nzero = (np.concatenate([p[i] for p in parts]) for i in range(4))
    ti = np.searchsorted(info.times_s, tt)
    ti = np.clip(ti, 0, len(info.times_s) - 1)
    spw = np.asarray(info.ddid_spw)[dd]
    return a1, a2, ti, spw, mean, var, n, nzero


def _by_length(values, blen, ref, nbins: int = 8):
    """values (nbl,) / the median of the ``ref`` baselines in the same length bin (quantiles of
    the ``ref`` baselines' lengths); nan where a bin has no reference."""
    out = np.full(values.shape, np.nan)
    if ref.sum() < 2:
        return out
    nb = int(max(1, min(nbins, ref.sum() // 20)))
    edges = np.quantile(blen[ref], np.linspace(0, 1, nb + 1))
    idx = np.clip(np.searchsorted(edges, blen, side="right") - 1, 0, nb - 1)
    for k in range(nb):
        m = ref & (idx == k)
        if m.any():
            med = np.median(values[m])
            if med > 0:
                out[idx == k] = values[idx == k] / med
    return out


def _receptor_median(values, b1, b2, na, partner_ok, sign: bool = False):
    """(na,) median over each antenna's baselines to good partners of ``values`` (nbl,); with
    ``sign``, a baseline's value counts negated for its second antenna (a phase rate b1 - b2)."""
    out = np.full(na, np.nan)
    for a in range(na):
        s1 = (b1 == a) & partner_ok[b2]
        s2 = (b2 == a) & partner_ok[b1]
        v = np.concatenate([values[s1], -values[s2] if sign else values[s2]])
        v = v[np.isfinite(v)]
        if v.size >= 3:
            out[a] = np.median(v)
    return out


def _minus_plane(rate, pos, judged, iters: int = 3):
    """rate (na, 2) minus a robust fit a + k . position (the fringe rate of a source off the phase
    centre is linear in antenna position), fitted on the ``judged`` receptors."""
    x = pos - np.median(pos[np.any(judged, axis=1)], axis=0)
    A_all = np.column_stack([np.ones(len(pos)), x])
    out = np.full(rate.shape, np.nan)
    for r in range(2):
        use = judged[:, r].copy()
        coef = np.zeros(4)
        for _ in range(iters):
            if use.sum() < 8:
                break
            coef = np.linalg.lstsq(A_all[use], rate[use, r], rcond=None)[0]
            res = rate[:, r] - A_all @ coef
            mad = 1.4826 * np.median(np.abs(res[use])) + 1e-9
            use = judged[:, r] & (np.abs(res) < max(5 * mad, MAX_PHASE_RATE_DEG_MIN / 2))
        out[:, r] = rate[:, r] - A_all @ coef
    return out


def antenna_health(ms, *, chunk_rows: int = 100_000) -> AntennaHealth:
    """Judge every receptor of a Measurement Set from its DATA column (module docstring).

    Parameters
    ----------
    ms : path of the Measurement Set (read only; flags are written by :func:`flag_unhealthy`).
    chunk_rows : int
        Main-table rows read at once (memory ~ rows x correlations x channels x 9 bytes).

    Returns
    -------
    AntennaHealth

    Raises
    ------
    BadInputError
        No rows, several polarization setups, or correlations that are not receptor pairs.
    """
    ms = str(ms)
    info = read_ms_info(ms, require_rows=True)
    corr = _pol_setup(info, ms)
    par = [(c, _CORR_RECEPTORS[ct][0]) for c, ct in enumerate(corr) if ct in _PARALLEL]
    if not par:
        raise BadInputError(ms, "no parallel-hand correlations (XX, YY, RR, LL)")
    na = len(info.antenna_names)
    nt = len(info.times_s)
    nspw = len(info.spw_freqs)
    a1, a2, ti, spw, mean, var, n, nzero = _read_stats(ms, info, chunk_rows)
    present = np.zeros(na, bool)
    present[a1] = True
    present[a2] = True

    # ---- per receptor and integration: unflagged samples, zero fraction, auto power
    auto = a1 == a2
    usable = np.zeros((na, nt, 2))
    zeros = np.zeros((na, nt, 2))
    pw = np.full((na, nspw, nt, 2), np.nan)
    for c, r in par:
        tot = (n[:, c] + nzero[:, c]).astype(float)
        for ant in (a1, a2):
            np.add.at(usable, (ant[~auto], ti[~auto], r), tot[~auto])
            np.add.at(zeros, (ant[~auto], ti[~auto], r), nzero[~auto, c].astype(float))
        pa = mean[auto, c].real
        # unflagged power; exact zeros count as 0, fully flagged autocorrelations as unknown
        pw[a1[auto], spw[auto], ti[auto], r] = np.where(n[auto, c] > 0, pa, np.where(nzero[auto, c] > 0, 0.0, np.nan))
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-nan slices: receptors without autos
        zero_frac = zeros / usable
        pt = np.nanmedian(pw, axis=1) if auto.any() else np.full((na, nt, 2), np.nan)
        ref_t = np.nanmedian(np.where(pt > 0, pt, np.nan).transpose(1, 0, 2).reshape(nt, -1), axis=1)
        auto_t = pt / ref_t[None, :, None]
        has_data = usable > 0
        dead_t = has_data & ((zero_frac > DEAD_ZERO_FRACTION) | (np.isfinite(auto_t) & (auto_t < DEAD_AUTO_RATIO)))
        auto_ratio = np.nanmedian(np.where(has_data, auto_t, np.nan), axis=1)  # (na, 2)

    # ---- cross-correlation cells (baseline, subband, integration, receptor)
    cross = ~auto
    key = a1[cross] * na + a2[cross]
    ukey, bl = np.unique(key, return_inverse=True)
    b1, b2 = ukey // na, ukey % na
    nbl = ukey.size
    M = np.zeros((nbl, nspw, nt, 2), np.complex128)
    V = np.zeros((nbl, nspw, nt, 2))
    N = np.zeros((nbl, nspw, nt, 2))
    for c, r in par:
        M[bl, spw[cross], ti[cross], r] = mean[cross, c]
        V[bl, spw[cross], ti[cross], r] = var[cross, c]
        N[bl, spw[cross], ti[cross], r] = n[cross, c]
    alive = ~dead_t  # (na, nt, 2)
    ok_cell = (N >= 2) & (V > 0) & alive[b1][:, None, :, :] & alive[b2][:, None, :, :]
    with np.errstate(invalid="ignore", divide="ignore"):
        snr = np.where(ok_cell, np.abs(M) * np.sqrt(N) / np.sqrt(V), np.nan)

    state = np.full((na, 2), "ok", dtype=object)
    reason = np.full((na, 2), "", dtype=object)
    state[~present] = "absent"
    notes = []
    for a in np.nonzero(present)[0]:
        for r in range(2):
            d = dead_t[a, :, r]
            if not has_data[a, :, r].any():
                state[a, r], reason[a, r] = "flagged", "no unflagged data"
            elif d[has_data[a, :, r]].all():
                state[a, r] = "dead"
                reason[a, r] = (f"zeros (autocorrelation {np.nan_to_num(auto_ratio[a, r]):.2g} of the array's)")
            elif d.any():
                state[a, r] = "dies"
                first = int(np.nonzero(d)[0][0])
                reason[a, r] = f"zeros from integration {first} of {nt} on"

    # baselines are compared with baselines of similar length: a bright source off the phase
    # centre decorrelates across a subband, and fringes faster, on long baselines than on short ones
    pos = np.asarray(info.antenna_positions, float)
    blen = np.linalg.norm(pos[b1] - pos[b2], axis=1)

    # ---- coherent SNR: a receptor with power but no sky
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        snr_bl = np.nanmedian(snr.reshape(nbl, nspw * nt, 2), axis=1)  # (nbl, 2)
    snr_r = np.full((na, 2), np.nan)
    array_snr = np.nan
    for _ in range(2):  # second pass leaves out the baselines to receptors found dead
        partner_ok = np.isin(state, ("ok", "dies"))
        both = partner_ok[b1] & partner_ok[b2] & np.isfinite(snr_bl)  # (nbl, 2)
        array_snr = float(np.median(snr_bl[both])) if both.any() else np.nan
        if not np.isfinite(array_snr) or array_snr < MIN_ARRAY_SNR:
            break
        for r in range(2):
            snr_r[:, r] = _receptor_median(_by_length(snr_bl[:, r], blen, both[:, r]), b1, b2, na, partner_ok[:, r])
        judged = np.isin(state, ("ok", "dies")) & np.isfinite(snr_r)
        for a, r in np.argwhere(judged & (snr_r < DEAD_SNR_RATIO)):
            state[a, r] = "dead"
            reason[a, r] = f"no coherent signal (SNR {snr_r[a, r]:.2g} of the array's)"
    snr_ratio = snr_r

    # ---- phase in time: coherence between consecutive integrations and phase rate
    coh_ratio = np.full((na, 2), np.nan)
    rate_rel = np.full((na, 2), np.nan)
    if not np.isfinite(array_snr) or array_snr < MIN_ARRAY_SNR:
        notes.append(f"array coherent SNR {array_snr:.2g} < {MIN_ARRAY_SNR}: too little sky for the "
                     "signal and phase tests; only autocorrelations and zeros judged")
    elif nt >= 3:
        dts = np.diff(info.times_s)
        step = float(np.median(dts))
        consec = np.abs(dts - step) < 0.25 * step  # (nt-1,)
        Mv = np.where(ok_cell, M, 0.0)
        prod = Mv[:, :, 1:, :] * np.conj(Mv[:, :, :-1, :]) * consec[None, None, :, None]
        L = prod.sum(axis=(1, 2))  # (nbl, 2)
        norm = (np.abs(Mv[:, :, 1:, :]) * np.abs(Mv[:, :, :-1, :]) * consec[None, None, :, None]).sum(axis=(1, 2))
        with np.errstate(invalid="ignore", divide="ignore"):
            coh = np.where(norm > 0, np.abs(L) / norm, np.nan)
            rate = np.angle(L) / step * 60.0 * 180.0 / np.pi  # deg/min, antenna b1 minus b2
        good = np.isin(state, ("ok", "dies"))
        both = good[b1] & good[b2] & np.isfinite(coh)
        rate_a = np.full((na, 2), np.nan)
        for r in range(2):
            coh_ratio[:, r] = _receptor_median(_by_length(coh[:, r], blen, both[:, r]), b1, b2, na, good[:, r])
            rate_a[:, r] = _receptor_median(rate[:, r], b1, b2, na, good[:, r], sign=True)
        judged = good & np.isfinite(coh_ratio) & np.isfinite(rate_a)
        if judged.sum() >= 8:
            model = rate_a - _minus_plane(rate_a, pos, judged)  # the array's rate at each antenna
            rate_rel = np.full((na, 2), np.nan)
            rate_err = np.full((na, 2), np.nan)
            for r in range(2):
                # each baseline's rate less the model's for it: the antenna's own, partner by partner
                d = rate[:, r] - (model[b1, r] - model[b2, r])
                rate_rel[:, r] = _receptor_median(d, b1, b2, na, good[:, r], sign=True)
                spread = _receptor_median(np.abs(d - np.where(np.isfinite(rate_rel[b1, r]), rate_rel[b1, r], 0.0)
                                                 + np.where(np.isfinite(rate_rel[b2, r]), rate_rel[b2, r], 0.0)),
                                          b1, b2, na, good[:, r])
                npart = np.array([((b1 == a) & good[b2, r]).sum() + ((b2 == a) & good[b1, r]).sum() for a in range(na)])
                rate_err[:, r] = 1.4826 * spread * 1.25 / np.sqrt(np.maximum(npart, 1))
            lim = np.maximum(MAX_PHASE_RATE_DEG_MIN, RATE_SIGMA * rate_err)
            wild = judged & (coh_ratio < BAD_COHERENCE_RATIO)
            wrap = judged & ~wild & (np.abs(rate_rel) > lim)
            # a phase fault is the antenna's (its LO, its electronics): both receptors that can be
            # judged must show it, a wrap with one sign (one receptor alone is sky structure or noise)
            for a in np.nonzero(wild.any(axis=1) | wrap.any(axis=1))[0]:
                live = [r for r in range(2) if judged[a, r]]
                if not all(wild[a, r] or wrap[a, r] for r in live):
                    continue
                if not any(wild[a, r] for r in live) and len({np.sign(rate_rel[a, r]) for r in live}) != 1:
                    continue
                r = next((r for r in live if wild[a, r]), live[0])
                why = (f"wild phase (coherence {coh_ratio[a, r]:.2g} of the array's)" if wild[a, r] else
                       f"phase wraps ({rate_rel[a, r]:+.0f} deg/min)")
                for rr in range(2):
                    if state[a, rr] in ("ok", "dies"):
                        state[a, rr], reason[a, rr] = "bad", why
        else:
            notes.append("fewer than 8 receptors to compare phases with: phase not judged")
    h = AntennaHealth(ms=ms, antenna_names=list(info.antenna_names), state=state.astype(str),
                      reason=reason.astype(str), auto_ratio=auto_ratio, snr_ratio=snr_ratio,
                      coherence_ratio=coh_ratio, phase_rate_deg_min=rate_rel, dead_t=dead_t,
                      times_s=np.asarray(info.times_s), array_snr=array_snr, notes=notes)
    s = h.summary()
    log.info("%s: antenna health: %d receptors, %d dead, %d dying, %d bad (antennas %s); array SNR %.1f",
             ms, s["receptors"], s["dead"], s["dies"], s["bad"], ",".join(s["bad_antennas"]) or "none", array_snr)
    return h


def flag_unhealthy(ms, health: AntennaHealth, *, chunk_rows: int = 200_000) -> dict:
    """OR the health verdicts into the FLAG column.

    A ``dead`` receptor: every correlation that involves it (its partner's other receptor is
    kept: XX of a dead X, not YY). A ``bad`` antenna: all its correlations. ``dies``: that
    receptor's correlations in the integrations it is dead in. Autocorrelations alike.

    Returns
    -------
    dict: ``receptors`` (how many were flagged, all or in part), ``flagged_fraction_added``
    (of all FLAG samples, newly set).
    """
    ms = str(ms)
    info = read_ms_info(ms, require_rows=True)
    corr = _pol_setup(info, ms)
    na, nt = len(info.antenna_names), len(info.times_s)
    kill = np.zeros((na, nt, 2), bool)
    whole = np.isin(health.state, ("dead", "bad"))
    kill |= whole[:, None, :]
    kill |= (health.state == "dies")[:, None, :] & health.dead_t
    pairs = np.array([_CORR_RECEPTORS[c] for c in corr])  # (ncorr, 2)
    added = total = 0
    if not kill.any():
        return {"receptors": 0, "flagged_fraction_added": 0.0}
    with table(ms, readonly=False) as tb:
        nrow = tb.nrows()
        for start in range(0, nrow, chunk_rows):
            k = min(chunk_rows, nrow - start)
            a1 = tb.getcol("ANTENNA1", start, k)
            a2 = tb.getcol("ANTENNA2", start, k)
            ti = np.clip(np.searchsorted(info.times_s, tb.getcol("TIME", start, k)), 0, nt - 1)
            m = kill[a1[:, None], ti[:, None], pairs[None, :, 0]] | kill[a2[:, None], ti[:, None], pairs[None, :, 1]]
            flag = tb.getcol("FLAG", start, k)
            total += flag.size
            if m.any():
                new = m.T[:, None, :] & ~flag
                added += int(new.sum())
                tb.putcol("FLAG", flag | m.T[:, None, :], start, k)
    return {"receptors": int(np.any(kill, axis=1).sum()), "flagged_fraction_added": added / max(total, 1)}


def require_healthy(antennas, health: AntennaHealth) -> None:
    """Raise :class:`BadInputError` (naming the MS) unless every antenna named is healthy.

    Parameters
    ----------
    antennas : list of str
        Antenna names (e.g. a reference-antenna list).
    health : AntennaHealth
    """
    ok = set(health.healthy_antennas())
    by_name = {n: i for i, n in enumerate(health.antenna_names)}
    bad = []
    for a in antennas:
        if a in ok:
            continue
        i = by_name.get(a)
        why = "not in the MS" if i is None else "; ".join(
            f"{RECEPTORS[r]} {health.state[i, r]}" + (f": {health.reason[i, r]}" if health.reason[i, r] else "")
            for r in range(2))
        bad.append(f"{a} ({why})")
    if bad:
        raise BadInputError(health.ms, "reference antenna not healthy: " + ", ".join(bad))


def assess_and_flag(ms, *, group_timestamp: str | None = None, plot: bool = True) -> dict:
    """Judge an MS's receptors, flag the unhealthy ones, and draw the antenna x polarisation grid
    beside the MS (``<ms without .ms>.health.png``). What a worker returns for the products
    database (``made["antenna_health"]``, recorded by the service).

    Returns
    -------
    dict: ``ms``, ``group_timestamp``, ``records`` (:meth:`AntennaHealth.records`), ``summary``
    (:meth:`AntennaHealth.summary` with ``flagged`` from :func:`flag_unhealthy`), ``plot`` (path
    or None), and ``health`` (the :class:`AntennaHealth`; drop it before serialising).
    """
    h = antenna_health(ms)
    summary = {**h.summary(), "flagged": flag_unhealthy(ms, h)}
    png = None
    if plot:
        from dsacont.calibration.plots import plot_antenna_health

        try:
            png = plot_antenna_health(h, f"{str(ms).removesuffix('.ms')}.health.png")
        except Exception as exc:  # a picture must never lose a group
            log.warning("%s: antenna health plot failed: %s", ms, exc)
    return {"ms": str(ms), "group_timestamp": group_timestamp, "records": h.records(), "summary": summary,
            "plot": png, "health": h}
