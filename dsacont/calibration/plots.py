"""Pictures of calibration tables: bandpass amplitude and phase per antenna, gains.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from dsacont.calibration.tables import read_caltable
from dsacont.io.atomic import atomic_path
from dsacont.io.ms import table


def _antenna_names(caltable) -> list[str]:
    with table(caltable, "ANTENNA") as tb:
        return list(tb.getcol("NAME"))


def plot_bandpass(table, out=None) -> str:
    """PNG of a bandpass table: amplitude and phase vs frequency, one line per antenna, per pol."""
    # object-oriented Figure: never touches pyplot's global backend (Jupyter's stays inline)
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    t = read_caltable(table)
    out = str(out or f"{table}.png")
    npol = t["CPARAM"].shape[0]
    fig = Figure(figsize=(6 * npol, 7))
    axes = fig.subplots(2, npol, sharex=True, squeeze=False)
    ants = np.unique(t["ANTENNA1"])
    ants = np.array([a for a in ants if not t["FLAG"][:, :, t["ANTENNA1"] == a].all()])
    cmap = colormaps["viridis"]
    for k, a in enumerate(ants):
        colour = cmap(k / max(len(ants) - 1, 1))
        for r in np.flatnonzero(t["ANTENNA1"] == a):
            f = t["spw_freqs"][t["SPECTRAL_WINDOW_ID"][r]] / 1e6
            for p in range(npol):
                g = np.where(t["FLAG"][p, :, r], np.nan, t["CPARAM"][p, :, r])
                axes[0, p].plot(f, np.abs(g), lw=0.5, color=colour)
                axes[1, p].plot(f, np.degrees(np.angle(g)), lw=0.5, color=colour)
    for p in range(npol):
        axes[0, p].set_title(f"{Path(table).name}  pol {['X', 'Y'][p] if npol == 2 else p}")
        axes[0, p].set_ylabel("amplitude")
        axes[1, p].set_ylabel("phase (deg)")
        axes[1, p].set_xlabel("frequency (MHz)")
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90)
    return out


def plot_gains(table, out=None) -> str:
    """PNG of a gain table, one line per antenna, per pol: amplitude and phase vs time
    (SPW-averaged) when the table has several solution times, else vs SPW centre frequency
    (one solution per subband, ``solint='inf'``)."""
    # object-oriented Figure: never touches pyplot's global backend (Jupyter's stays inline)
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    t = read_caltable(table)
    out = str(out or f"{table}.png")
    npol = t["CPARAM"].shape[0]
    g = np.where(t["FLAG"], np.nan, t["CPARAM"])[:, 0, :]  # (npol, nrow)
    # solution times differ slightly between SPWs: cluster them to the integration (12.9 s)
    tt = np.sort(np.unique(t["TIME"]))
    edges = np.concatenate([[0], np.flatnonzero(np.diff(tt) > 6.0) + 1])
    centres = np.array([tt[e] for e in edges])
    tidx = np.searchsorted(centres, t["TIME"] + 6.0) - 1
    ants = np.unique(t["ANTENNA1"])
    names = _antenna_names(table)
    vs_time = centres.size > 1
    if vs_time:
        x_of = (centres - centres[0]) / 60.0
        key, nkey, xlabel = tidx, centres.size, "minutes from first solution"
    else:
        spws = np.unique(t["SPECTRAL_WINDOW_ID"])
        x_of = np.array([np.mean(t["spw_freqs"][s_]) / 1e6 for s_ in spws])
        key = np.searchsorted(spws, t["SPECTRAL_WINDOW_ID"])
        nkey, xlabel = spws.size, "SPW centre frequency (MHz)"
    fig = Figure(figsize=(6 * npol, 7))
    axes = fig.subplots(2, npol, sharex=True, squeeze=False)
    cmap = colormaps["viridis"]
    ants = np.array([a for a in ants if not t["FLAG"][:, :, t["ANTENNA1"] == a].all()])
    for k, a in enumerate(ants):
        colour = cmap(k / max(len(ants) - 1, 1))
        rows = t["ANTENNA1"] == a
        for p in range(npol):
            vals = np.full(nkey, np.nan + 0j)
            for i in range(nkey):
                sel = rows & (key == i)
                if sel.any() and np.isfinite(g[p, sel]).any():
                    vals[i] = np.nanmean(g[p, sel])
            if np.all(np.isnan(vals)):
                continue
            axes[0, p].plot(x_of, np.abs(vals), ".-", lw=0.5, ms=3, color=colour)
            axes[1, p].plot(x_of, np.degrees(np.angle(vals)), ".-", lw=0.5, ms=3, color=colour)
    for p in range(npol):
        what = "SPW mean" if vs_time else "per SPW"
        axes[0, p].set_title(f"{Path(table).name}  pol {['X', 'Y'][p] if npol == 2 else p} ({what}, "
                             f"{len(ants)} antennas of {len(names)})")
        axes[0, p].set_ylabel("amplitude")
        axes[1, p].set_ylabel("phase (deg)")
        axes[1, p].set_xlabel(xlabel)
    fig.tight_layout()
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90)
    return out


#: colours of the receptor states of :func:`plot_antenna_health`
HEALTH_COLOURS = {"ok": "#4daf4a", "dead": "#e41a1c", "dies": "#ff7f00", "bad": "#984ea3", "flagged": "#999999"}


def plot_antenna_health(health, out) -> str:
    """PNG of receptor health: an antenna x polarisation grid, one cell per receptor, coloured by
    state (:data:`HEALTH_COLOURS`), the unhealthy ones labelled with their reason underneath.

    Parameters
    ----------
    health : AntennaHealth, or its ``records()`` (a list of dicts with antenna, pol, state, reason)
    out : path of the PNG (written atomically)

    Returns
    -------
    str : ``out``
    """
    from matplotlib.colors import ListedColormap
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    records = health.records() if hasattr(health, "records") else list(health)
    title = Path(health.ms).name if hasattr(health, "ms") else Path(str(out)).name
    names = sorted({r["antenna"] for r in records}, key=lambda a: (len(a), a))
    states = list(HEALTH_COLOURS)
    grid = np.full((2, len(names)), np.nan)
    col = {a: i for i, a in enumerate(names)}
    for r in records:
        grid["XY".index(r["pol"]), col[r["antenna"]]] = states.index(r["state"]) if r["state"] in states else 4
    bad = [r for r in records if r["state"] != "ok"]
    fig = Figure(figsize=(max(6.0, 0.16 * len(names) + 1.5), 2.6 + 0.16 * min(len(bad), 30)))
    ax = fig.add_axes([0.05, 1 - 2.0 / fig.get_figheight(), 0.86, 1.4 / fig.get_figheight()])
    ax.imshow(grid, aspect="auto", cmap=ListedColormap(list(HEALTH_COLOURS.values())), vmin=-0.5,
              vmax=len(states) - 0.5, interpolation="nearest")
    ax.set_yticks([0, 1], ["X", "Y"])
    ax.set_xticks(range(len(names)), names, rotation=90, fontsize=6)
    ax.set_xlabel("antenna")
    n = {s: sum(r["state"] == s for r in records) for s in states}
    ax.set_title(f"{title}: " + ", ".join(f"{v} {k}" for k, v in n.items() if v), fontsize=9)
    ax.legend(handles=[Patch(color=c, label=s) for s, c in HEALTH_COLOURS.items()], loc="upper left",
              bbox_to_anchor=(1.0, 1.0), fontsize=6, frameon=False)
    text = "\n".join(f"{r['antenna']} {r['pol']}: {r['state']}  {r['reason']}" for r in bad[:30])
    if len(bad) > 30:
        text += f"\n... and {len(bad) - 30} more"
    fig.text(0.06, 0.02, text, fontsize=6, va="bottom", family="monospace")
    with atomic_path(str(out)) as tmp:
        fig.savefig(tmp, dpi=90)
    return str(out)
