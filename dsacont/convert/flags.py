"""RFI flags in the conversion: computed first (:func:`flags_first`) and ORed into each block
(:class:`FlagOverlay`), or in the same pass as the writes (:func:`dsacont.convert.passes.fused_pass`);
then the group's flag summary and waterfall (:func:`write_flag_products`).
"""
from __future__ import annotations

import logging
import os
import time as _time
from pathlib import Path

import numpy as np

from dsacont import flagging
from dsacont.io.atomic import write_json_atomic

log = logging.getLogger(__name__)

__all__ = ["flags_first", "waterfall_baseline", "FlagOverlay", "read_waterfall", "write_flag_products"]


def flags_first(ds, strategy, computer, ts: str = "group") -> np.ndarray:
    """The RFI flags of the whole Dataset (:func:`dsacont.flagging.flag_dataset`), computed now
    with every thread or worker: ndarray (time, baseline, frequency, polarization) bool, the
    files' flags included."""
    t0 = _time.perf_counter()
    fda = flagging.flag_dataset(ds, strategy)
    fdata = fda.data if hasattr(fda, "data") else fda
    out = np.asarray(computer.compute_now(fdata), dtype=bool)
    log.info("%s: RFI flags computed in %.1f s (%.2f%% flagged)", ts, _time.perf_counter() - t0, 100.0 * out.mean())
    return out


def waterfall_baseline(flags_all, ant1, ant2) -> int | None:
    """The cross-correlation with the median flagged fraction (the one the waterfall shows), or
    None when there is no cross-correlation. ``flags_all`` (time, baseline, frequency, pol)."""
    cross = np.nonzero(np.asarray(ant1) != np.asarray(ant2))[0]
    if not cross.size:
        return None
    frac = flags_all[:, cross].mean(axis=(0, 2, 3))
    return int(cross[np.argsort(frac)[len(frac) // 2]])


class FlagOverlay:
    """Flags computed before the blocks, ORed into each block's FLAG; the waterfall baseline's
    amplitudes are copied from the blocks on their way to the MS (no extra read).

    Attributes
    ----------
    flags : ndarray (time, baseline, frequency, pol) bool
    baseline : int or None
        The waterfall's baseline (:func:`waterfall_baseline`).
    amp : ndarray (time, frequency, pol) float32 or None
        |DATA| of that baseline, filled by :meth:`apply`.
    """

    def __init__(self, flags_all, plan):
        self.flags = flags_all
        self.spws = plan.spws
        self.baseline = waterfall_baseline(flags_all, plan.ant1, plan.ant2)
        self.amp = None
        if self.baseline is not None:
            self.amp = np.zeros((plan.ntime, flags_all.shape[2], plan.npol), np.float32)

    def apply(self, t0: int, t1: int, si: int, data, flags) -> None:
        """OR the flags of integrations ``t0 .. t1``, SPW ``si`` into ``flags`` (in place) and keep
        the waterfall baseline's amplitudes of ``data``."""
        f0, f1, _ = self.spws[si]
        np.logical_or(flags, self.flags[t0:t1, :, f0:f1, :], out=flags)
        if self.amp is not None:
            self.amp[t0:t1, f0:f1] = np.abs(data[:, self.baseline])


def read_waterfall(tiles, bl: int, plan) -> np.ndarray:
    """|DATA| of baseline ``bl`` read back from the DATA tile file: (time, frequency, pol) float32."""
    nch = plan.nchan
    out = np.zeros((plan.ntime, plan.nspw * nch, plan.npol), np.float32)
    c = tiles.cols["DATA"]
    fd = tiles.fds["DATA"]
    for t in range(plan.ntime):
        for si, (f0, f1, _) in enumerate(plan.spws):
            raw = os.pread(fd, nch * plan.npol * 8, tiles._offset("DATA", plan.first_row(t, si) + bl))
            out[t, f0:f1] = np.abs(np.frombuffer(raw, np.dtype(c["dtype"])).reshape(nch, plan.npol))
    return out


def write_flag_products(ds, flags_all, wf_bl, wf_amp, qa_dir, ts: str) -> dict:
    """Write the flag summary ``<qa_dir>/<ts>.flags.json`` (:func:`dsacont.flagging.flag_summary`)
    and, when ``wf_amp`` is given, the waterfall ``<ts>.waterfall.png`` of baseline ``wf_bl``.
    Returns the summary."""
    qa_dir = Path(qa_dir)
    qa_dir.mkdir(parents=True, exist_ok=True)
    summary = flagging.flag_summary(flags_all, ds)
    write_json_atomic(summary, qa_dir / f"{ts}.flags.json")
    if wf_amp is not None:
        nb = flags_all.shape[1]
        # every baseline slot views the chosen baseline's amplitudes (no copy): plot_waterfall
        # draws that one, and the flag fractions of all baselines
        amp = np.broadcast_to(wf_amp[:, None], (wf_amp.shape[0], nb) + wf_amp.shape[1:])
        src = {"amp": amp, "frequency": ds["frequency"].values, "antenna1": ds["antenna1"].values,
               "antenna2": ds["antenna2"].values}
        flagging.plot_waterfall(src, flags_all, qa_dir / f"{ts}.waterfall.png", baseline=wf_bl)
    return summary
