"""The flagging waterfall PNG.

One baseline's amplitudes before and after flagging, and the fraction of baselines flagged.

Drawn on an object-oriented :class:`matplotlib.figure.Figure`: it never touches pyplot's global
backend (a notebook's inline backend stays as it is).
"""
from __future__ import annotations

from pathlib import Path

import dask.array as da
import numpy as np
from matplotlib.figure import Figure

from dsacont.io.atomic import atomic_path

from .summary import _flag_fractions, _raw


def plot_waterfall(ds_or_arrays, flags, png_path, baseline=None, polarization=0) -> Path:
    """Draw a waterfall PNG: one baseline's amplitudes with its flags, and the fraction flagged.

    Three panels against integration and frequency: the amplitude of one baseline, the same with
    its flags blanked, and the fraction of all baselines flagged.

    Parameters
    ----------
    ds_or_arrays : xarray.Dataset or dict
        The Dataset, or a dict with ``vis`` (Nt, Nb, Nf, Np) complex (or ``amp``, |V| of the
        same shape), ``frequency`` (Nf,) in Hz, and optionally ``antenna1``/``antenna2`` (Nb,).
    flags : array_like of bool, shape (Nt, Nb, Nf, Np)
        numpy, dask or xarray.
    png_path : str or Path
        The PNG, written atomically.
    baseline : int, optional
        Baseline index to draw; default the cross-correlation with the median flagged fraction.
    polarization : int
        Polarisation index to draw.

    Returns
    -------
    Path
        ``png_path``.
    """
    src = ds_or_arrays
    fl = _raw(flags)
    freqs = np.asarray(src["frequency"].values if hasattr(src["frequency"], "values") else src["frequency"])
    a1 = np.asarray(src["antenna1"].values if hasattr(src.get("antenna1", None), "values") else src.get("antenna1", []))
    a2 = np.asarray(src["antenna2"].values if hasattr(src.get("antenna2", None), "values") else src.get("antenna2", []))
    pb, pt, pf, pp, overall = _flag_fractions(fl)
    if baseline is None:
        cross = np.nonzero(a1 != a2)[0] if a1.size else np.arange(pb.size)
        if cross.size == 0:
            cross = np.arange(pb.size)
        order = cross[np.argsort(pb[cross])]
        baseline = int(order[len(order) // 2])
    if "amp" in src:
        amp = np.asarray(_raw(src["amp"])[:, baseline, :, polarization])
    else:
        v = src["vis"]
        v = _raw(v)[:, baseline, :, polarization]
        amp = np.abs(np.asarray(v.compute() if hasattr(v, "compute") else v))
    fplane = fl[:, baseline, :, polarization]
    fplane = np.asarray(fplane.compute() if hasattr(fplane, "compute") else fplane)
    frac = fl[..., polarization].mean(axis=1)
    if isinstance(frac, da.Array):
        frac = frac.compute()
    fmhz = freqs / 1e6
    ext = [fmhz[0], fmhz[-1], amp.shape[0] - 0.5, -0.5]
    fig = Figure(figsize=(10, 9), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    vmax = np.nanpercentile(amp[~fplane], 99) if (~fplane).any() else np.nanmax(amp)
    im = axes[0].imshow(amp, aspect="auto", extent=ext, vmin=0, vmax=vmax, interpolation="nearest")
    fig.colorbar(im, ax=axes[0], label="|V| (data units)")
    lab = f"baseline {baseline}" + (f" ({a1[baseline] + 1}-{a2[baseline] + 1})" if a1.size else "")
    axes[0].set_title(f"amplitude, {lab}, pol {polarization}")
    axes[1].imshow(np.where(fplane, np.nan, amp), aspect="auto", extent=ext, vmin=0, vmax=vmax,
                   interpolation="nearest")
    axes[1].set_title(f"after flagging ({fplane.mean():.1%} flagged)")
    im2 = axes[2].imshow(frac, aspect="auto", extent=ext, vmin=0, vmax=1, cmap="magma", interpolation="nearest")
    fig.colorbar(im2, ax=axes[2], label="fraction flagged")
    axes[2].set_title(f"fraction of baselines flagged (overall {overall:.2%})")
    axes[2].set_xlabel("frequency (MHz)")
    for ax in axes:
        ax.set_ylabel("integration")
    png_path = Path(png_path)
    with atomic_path(png_path) as tmp:
        fig.savefig(tmp, dpi=90)
    return png_path
