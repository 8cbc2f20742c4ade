"""Calibration tables read back: solutions, flags and SNR per antenna and SPW, and quality metrics."""
from __future__ import annotations

import numpy as np

from dsacont.io.ms import table


def read_caltable(path) -> dict:
    """Solutions of a caltable: arrays indexed [row] with CPARAM (npol, nchan, nrow)."""
    with table(path) as tb:
        out = {c: np.asarray(tb.getcol(c)) for c in ("TIME", "ANTENNA1", "SPECTRAL_WINDOW_ID", "CPARAM", "FLAG", "SNR")}
    with table(path, "SPECTRAL_WINDOW") as tb:
        f = tb.getvarcol("CHAN_FREQ")
        out["spw_freqs"] = [np.asarray(f[f"r{i + 1}"]).ravel() for i in range(len(f))]
    return out


def caltable_metrics(path, antennas=None) -> dict:
    """Quality metrics of a caltable: flagged fraction (overall, per SPW, per antenna), SNR, amplitudes.

    ``amp_scatter`` is the robust fractional spread of the good solutions' amplitudes,
    1.4826 x MAD / median (dimensionless): a gain correction that absorbed an unmodelled source
    spreads its amplitudes over antennas, which normalisation (``solnorm``) hides from the median.

    ``antennas``: antenna indices (MS ANTENNA rows) to count; default all rows of the table.
    Antennas absent from the data (an ANTENNA table lists all 117 pads) must be left out,
    otherwise their flagged solutions count as failures.
    """
    t = read_caltable(path)
    if antennas is not None:
        keep = np.isin(t["ANTENNA1"], np.asarray(list(antennas), dtype=int))
        t = {k: (v[..., keep] if isinstance(v, np.ndarray) and v.shape[-1] == keep.size else v) for k, v in t.items()}
    flag = t["FLAG"]
    good = ~flag
    snr = t["SNR"][good]
    amp = np.abs(t["CPARAM"])[good]
    per_spw = {int(s): float(flag[..., t["SPECTRAL_WINDOW_ID"] == s].mean()) for s in np.unique(t["SPECTRAL_WINDOW_ID"])}
    per_ant = {int(a): float(flag[..., t["ANTENNA1"] == a].mean()) for a in np.unique(t["ANTENNA1"])}
    return {
        "n_solutions": int(flag.size),
        "flagged_fraction": float(flag.mean()),
        "flagged_fraction_spw": per_spw,
        "flagged_fraction_antenna": per_ant,
        "snr_median": float(np.median(snr)) if snr.size else 0.0,
        "snr_p05": float(np.percentile(snr, 5)) if snr.size else 0.0,
        "amp_median": float(np.median(amp)) if amp.size else 0.0,
        "amp_scatter": float(1.4826 * np.median(np.abs(amp - np.median(amp))) / np.median(amp))
        if amp.size and np.median(amp) > 0 else 0.0,
        "n_times": int(np.unique(t["TIME"]).size),
    }


def missing_spws(path, n_spw: int) -> list[int]:
    """SPWs (0 .. ``n_spw`` - 1) for which the table has no unflagged solution at all."""
    return _missing(read_caltable(path), n_spw)


def _missing(t: dict, n_spw: int) -> list[int]:
    spw, flag = t["SPECTRAL_WINDOW_ID"], t["FLAG"]
    return [s for s in range(int(n_spw)) if not np.any(~flag[..., spw == s])]


def combined_spw(path) -> int | None:
    """The SPW holding the solutions of a table solved with ``combine='spw'``, else None.

    CASA labels a combined solution with the first SPW and flags the other rows of the table's
    SPECTRAL_WINDOW subtable (``FLAG_ROW``).
    """
    with table(path, "SPECTRAL_WINDOW") as tb:
        flag_row = np.asarray(tb.getcol("FLAG_ROW"), dtype=bool)
    if flag_row.size > 1 and (~flag_row).sum() == 1:
        return int(np.nonzero(~flag_row)[0][0])
    return None


def complete_spws(path, n_spw: int, donors=()) -> dict:
    """Give a caltable solutions for every SPW, so that it never blocks a group.

    A table solved on a group that lacked subbands has no solutions for their SPWs. Each such SPW
    (no row, or every solution flagged) is filled with the rows of the first table in ``donors``
    that has good solutions for it (the last valid table of the same kind and declination strip,
    nearest first), or else with flagged unit solutions copied from a present SPW, so that
    applycal flags that window's data instead of refusing the whole group.

    Parameters
    ----------
    path : path of the caltable, modified in place
    n_spw : int
        SPWs of the Measurement Set it was solved on.
    donors : iterable of caltable paths
        Tables of the same kind (same array, SPW layout and strip), best first.

    Returns
    -------
    dict
        ``filled``: ``{spw: donor path}``; ``flagged``: [spw]; empty lists when nothing was missing.
    """
    out = {"filled": {}, "flagged": []}
    solutions = read_caltable(path)
    todo = _missing(solutions, n_spw)
    if not todo or combined_spw(path) is not None:
        return out
    donor_missing: dict = {}  # each donor read once, however many windows it is asked for
    cols = ("TIME", "FIELD_ID", "SPECTRAL_WINDOW_ID", "ANTENNA1", "ANTENNA2", "INTERVAL", "SCAN_NUMBER",
            "OBSERVATION_ID", "CPARAM", "PARAMERR", "FLAG", "SNR")  # WEIGHT: never filled by CASA
    have_spw = np.asarray(solutions["SPECTRAL_WINDOW_ID"])
    present = sorted(set(range(int(n_spw))) - set(todo))
    with table(path, readonly=False) as tb:
        names = [c for c in cols if c in tb.colnames()]
        drop = np.nonzero(np.isin(have_spw, todo))[0]
        if drop.size:
            tb.removerows([int(r) for r in drop])
        for s in todo:
            rows, source = None, None
            for donor in donors:
                if donor not in donor_missing:
                    donor_missing[donor] = missing_spws(donor, n_spw)
                if s in donor_missing[donor]:
                    continue
                with table(donor) as dt:
                    sel = np.nonzero(np.asarray(dt.getcol("SPECTRAL_WINDOW_ID")) == s)[0]
                    rows = {c: _rows(dt, c, sel) for c in names if c in dt.colnames()}
                source = str(donor)
                break
            if rows is None:
                if not present:
                    continue
                sel = np.nonzero(np.asarray(tb.getcol("SPECTRAL_WINDOW_ID")) == present[0])[0]
                rows = {c: _rows(tb, c, sel) for c in names}
                rows["SPECTRAL_WINDOW_ID"] = np.full(sel.size, s, dtype=np.int32)
                rows["CPARAM"] = np.ones_like(rows["CPARAM"])
                rows["FLAG"] = np.ones_like(rows["FLAG"], dtype=bool)
                rows["SNR"] = np.zeros_like(rows["SNR"])
            n = int(np.asarray(rows["SPECTRAL_WINDOW_ID"]).size)
            if n == 0:
                continue
            start = tb.nrows()
            tb.addrows(n)
            for c, v in rows.items():
                tb.putcol(c, v, startrow=start, nrow=n)
            if source is None:
                out["flagged"].append(int(s))
            else:
                out["filled"][int(s)] = source
    return out


def _rows(tb, col: str, rows) -> np.ndarray:
    """Column ``col`` of the table rows ``rows`` (row index last, as ``getcol``)."""
    v = np.asarray(tb.getcol(col))
    return v[..., np.asarray(rows, dtype=int)]
