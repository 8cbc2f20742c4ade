"""The flagger's typed options: :class:`Strategy` and its TOML/JSON files.

The shipped default is ``dsacont/data/flag_strategy_default.toml``; a user's file overlays any
subset of its keys (:func:`load_strategy`). Every flagging entry point takes ``strategy`` as None
(the default), a :class:`Strategy`, a dict of overrides, or a file path (:func:`as_strategy`).
"""
from __future__ import annotations

import json
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from dsacont.errors import BadInputError

DEFAULT_STRATEGY_PATH = Path(__file__).resolve().parent.parent / "data" / "flag_strategy_default.toml"


@dataclass
class Strategy:
    """Steps and thresholds of the flagger (see :mod:`dsacont.flagging` and the default file).

    Thresholds are in robust sigma units (1.4826 x MAD) of the relative residual |V|/B - 1.
    Windows and half-widths are in samples: integrations (12.9 s each for DSA-110) along time,
    channels along frequency. Load with :func:`load_strategy`; every field is optional in a
    user's file (missing = default).

    Attributes
    ----------
    flag_invalid : bool
        NaN/Inf/zeros are flagged (always on in the kernel; kept for the record).
    static_mask_hz : list of [lo, hi]
        Frequency ranges (Hz, inclusive) always flagged.
    iterations : int
        Rounds of background / SumThreshold per plane.
    rho : float
        SumThreshold: chi_M = chi_1 / rho**log2(M).
    max_window : int
        Largest SumThreshold window (samples); windows 1, 2, 4, ..., max_window.
    cross_chi1, auto_chi1 : float
        SumThreshold chi_1 on cross-correlations / autocorrelations.
    cross_freq_window, auto_freq_window : int
        Running median (channels) of the spectral background; 1 = per channel.
    cross_time_window, auto_time_window : int
        Window (integrations) of the temporal background.
    cross_smooth_time, auto_smooth_time : int
        Half-width (integrations) of the masked box mean of the residual.
    cross_smooth_freq, auto_smooth_freq : int
        Half-width (channels) of the masked box mean of the residual.
    combine_baselines : bool
        Run the across-baseline detectors.
    combined_chi1 : float
        SumThreshold chi_1 of the across-baseline detectors.
    combined_max_window : int
        Largest SumThreshold window of the across-baseline detectors (samples).
    min_baselines : int
        The across-baseline detectors need at least this many cross-correlations in a block.
    combine_polarizations : bool
        OR the across-baseline hits of all polarisations.
    time_fraction, channel_fraction : float
        Flag a whole integration (channel) of a plane above this flagged fraction; >= 1: off.
    dilate_time, dilate_freq : int
        Grow flags by this many integrations (channels) each side.
    block_baselines : int
        Baselines per block (the pool of the across-baseline detectors); blocks are cut by
        :func:`dsacont.flagging.blocks.baseline_blocks`.
    """

    flag_invalid: bool = True
    static_mask_hz: list = field(default_factory=list)
    iterations: int = 1
    rho: float = 1.5
    max_window: int = 32
    cross_chi1: float = 7.0
    cross_freq_window: int = 15
    cross_time_window: int = 5
    cross_smooth_time: int = 3
    cross_smooth_freq: int = 5
    auto_chi1: float = 7.0
    auto_freq_window: int = 1
    auto_time_window: int = 5
    auto_smooth_time: int = 3
    auto_smooth_freq: int = 5
    combine_baselines: bool = True
    combined_chi1: float = 7.0
    combined_max_window: int = 8
    min_baselines: int = 8
    combine_polarizations: bool = False
    time_fraction: float = 0.6
    channel_fraction: float = 0.6
    dilate_time: int = 0
    dilate_freq: int = 0
    block_baselines: int = 256

    def to_dict(self) -> dict:
        """Every field, as a JSON-serialisable dict."""
        return asdict(self)

    def static_channel_mask(self, freqs_hz) -> np.ndarray:
        """Channels always flagged.

        Parameters
        ----------
        freqs_hz : array_like of float, shape (Nf,)
            Channel centre frequencies in Hz.

        Returns
        -------
        numpy.ndarray of bool, shape (Nf,)
            True where the centre falls in one of ``static_mask_hz``'s [lo, hi].
        """
        freqs = np.asarray(freqs_hz, dtype=np.float64)
        mask = np.zeros(freqs.shape, dtype=bool)
        for lo, hi in self.static_mask_hz:
            mask |= (freqs >= float(lo)) & (freqs <= float(hi))
        return mask


# section keys whose flat name is not "<section>_<key>"
_ALIASES = {
    "combined_enabled": "combine_baselines",
    "combined_polarizations": "combine_polarizations",
    "combined_min_baselines": "min_baselines",
}


def _read_strategy_file(path: Path) -> dict:
    """Flat ``{field: value}`` of a TOML or JSON strategy file (sections flattened, aliases applied)."""
    text = path.read_text()
    data = tomllib.loads(text) if path.suffix.lower() == ".toml" else json.loads(text)
    # accept either flat keys or sections ([cross] chi1 = ... -> cross_chi1)
    flat: dict = {}
    for key, value in data.items():
        if isinstance(value, dict):
            for k, v in value.items():
                flat[f"{key}_{k}" if key not in ("general", "strategy") else k] = v
        else:
            flat[key] = value
    return {_ALIASES.get(k, k): v for k, v in flat.items()}


def load_strategy(path=None) -> Strategy:
    """Load a strategy: the shipped default, overlaid with a user's TOML or JSON file if given.

    Parameters
    ----------
    path : str or Path, optional
        None for the default, or a .toml/.json file with any subset of :class:`Strategy`'s
        fields (flat, or grouped in sections ``[cross]``/``[auto]``/``[combined]`` meaning the
        ``cross_``/``auto_``/``combined_`` prefixed fields).

    Returns
    -------
    Strategy

    Raises
    ------
    dsacont.errors.BadInputError
        The file cannot be read or parsed, or holds unknown keys.
    """
    names = {f.name for f in fields(Strategy)}
    values: dict = {}
    for p in [DEFAULT_STRATEGY_PATH] + ([Path(path)] if path is not None else []):
        try:
            flat = _read_strategy_file(p)
        except (OSError, ValueError) as exc:
            raise BadInputError(p, f"cannot read flagging strategy: {exc}") from exc
        unknown = sorted(set(flat) - names)
        if unknown:
            raise BadInputError(p, f"unknown flagging strategy keys {unknown}; known: {sorted(names)}")
        values.update(flat)
    return Strategy(**values)


def as_strategy(strategy) -> Strategy:
    """Return the :class:`Strategy` meant by ``strategy``.

    Parameters
    ----------
    strategy : None, Strategy, dict or path
        None: the default; a Strategy: itself; a dict: overrides of the default's fields; a path:
        :func:`load_strategy` of that file.

    Returns
    -------
    Strategy
    """
    if strategy is None:
        return load_strategy()
    if isinstance(strategy, Strategy):
        return strategy
    if isinstance(strategy, dict):
        return replace(load_strategy(), **strategy)
    return load_strategy(strategy)
