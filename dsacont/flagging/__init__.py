"""RFI flagging: numba kernels on (time, frequency) planes, a strategy, Dask and MS wrappers.

Modules (codex-africanus style: kernels beside the wrappers that map them):

- :mod:`~dsacont.flagging.kernels`: small pure ``@njit(nogil=True, cache=True)`` kernels that work
  on one (time, frequency) plane of one baseline and polarisation, and the numba *block driver*
  ``flag_block_kernel`` that runs them over every plane of a block of baselines.
- :mod:`~dsacont.flagging.strategy`: :class:`Strategy` (the typed options) and its TOML/JSON files.
- :mod:`~dsacont.flagging.blocks`: :func:`baseline_blocks` (the one place baselines are cut into
  blocks), :func:`flag_block` (one block in memory), :func:`flag_arrays` (a cube, block by block)
  and the Dask wrapper :func:`flag_dataset` (lazy flags for the Dataset of ``open_group``).
- :mod:`~dsacont.flagging.ms`: :func:`flag_ms`, the same blocks on an existing Measurement Set,
  updating its FLAG column.
- :mod:`~dsacont.flagging.summary`, :mod:`~dsacont.flagging.plots`: :func:`flag_summary` and
  :func:`plot_waterfall`, the QA products.
- :mod:`~dsacont.flagging.cli`: ``dsacont flag MS``.

The algorithm (defaults in ``dsacont/data/flag_strategy_default.toml``, see :class:`Strategy`):

1. *Pre-flags*: the input flags, non-finite samples (NaN/Inf), exact zeros, and an optional static
   channel mask (frequency ranges in Hz).
2. *Per-plane detection*, separately for cross-correlations and autocorrelations (autos carry
   ~SEFD, so they get their own statistics and thresholds). On the amplitude plane A(t, f):

   - a smooth background B(t, f) = s(f) * r(t): s is the per-channel median over time, smoothed
     in frequency with a running median (``freq_window`` channels; 1 = no smoothing, used for
     autos); r is the per-time median over frequency of A/s, smoothed in time by a local
     robust line fit (``time_window`` integrations) after dropping outliers. Medians ignore
     narrow lines and short bursts, so RFI does not leak into the background. Flagged samples
     are excluded from every median.
   - the relative residual x = A/B - 1, and its robust sigma (1.4826 * MAD over unflagged
     samples); z = x / sigma.
   - SumThreshold (Offringa et al. 2010, MNRAS 405, 155) on z, positive excursions only (RFI adds
     power), in time and in frequency, for windows M = 1, 2, 4, ... with
     chi_M = chi_1 / rho**log2(M), rho = 1.5. Samples flagged earlier count as chi_M inside a
     window (as in the paper), so wide low-level RFI next to bright RFI is found.
   - ``iterations`` rounds: each round recomputes the background and sigma without the samples
     flagged so far.
3. *Across baselines* (the strong detector for RFI common to every baseline: broadband bursts,
   persistent narrowband channels). Within a block of baselines (a Dask chunk), per polarisation:

   a. time-variable RFI: each cross-correlation's z is recomputed against a per-channel
      background (``freq_window`` = 1: the bandpass is followed exactly, channel by channel,
      excluding the samples flagged in step 2) plus the masked box mean; S(t, f) = median over
      the block's cross-correlations of z (samples pre-flagged in step 1 excluded). S is
      re-centred and scaled robustly (median, MAD) and SumThreshold (windows up to
      ``combined_max_window``) runs on it. Its noise is ~1.25/sqrt(N_baselines) of one
      baseline's, so bursts far below the per-visibility noise are found.
   b. persistent RFI (present in every integration, which a per-channel background would
      absorb): per baseline the spectrum s(f) (median over time) against the median of its
      neighbouring channels (leave-one-out running median), scaled by its own robust scatter
      over channels; the median over baselines of that spectral excess goes through
      SumThreshold along frequency; a hit flags the channel at all times.

   A hit flags that (t, f, pol) on every baseline of the block, autos included (the autos'
   own per-channel background cannot see persistent lines). Blocks are ranges of about
   ``block_baselines`` baselines cut by :func:`baseline_blocks`, the Dataset's chunks in the Dask
   wrapper, so the statistic needs no reduction across chunks and the graph stays chunk-local;
   every path (Dataset, MS, the conversion's fused pass) cuts the same blocks, so they flag the
   same visibilities identically. Windows wider than
   ``combined_max_window`` are not used: the median is so precise that residual sky structure
   common to all baselines (a bright calibrator drifting through the beam) limits it, not noise.
4. *Extension*: a time (channel) flagged on more than ``time_fraction`` (``channel_fraction``) of
   a plane's samples is flagged whole; optional dilation by ``dilate_time``/``dilate_freq``
   samples.

Flags are True = bad (MS/UVH5 convention). Frequencies are ascending (the Dataset contract).
"""
from __future__ import annotations

from .blocks import baseline_blocks, flag_arrays, flag_block, flag_dataset
from .kernels import (
    background,
    dilate,
    extend_fraction,
    flag_invalid,
    flag_plane,
    masked_box_smooth,
    robust_sigma,
    running_median,
    sumthreshold,
)
from .ms import flag_ms
from .plots import plot_waterfall
from .strategy import DEFAULT_STRATEGY_PATH, Strategy, as_strategy, load_strategy
from .strategy import as_strategy as _as_strategy  # noqa: F401  (the name dsacont.convert uses)
from .summary import flag_summary, summarize

__all__ = [
    "DEFAULT_STRATEGY_PATH",
    "Strategy",
    "as_strategy",
    "background",
    "baseline_blocks",
    "dilate",
    "extend_fraction",
    "flag_arrays",
    "flag_block",
    "flag_dataset",
    "flag_invalid",
    "flag_ms",
    "flag_plane",
    "flag_summary",
    "load_strategy",
    "masked_box_smooth",
    "plot_waterfall",
    "robust_sigma",
    "running_median",
    "summarize",
    "sumthreshold",
]
