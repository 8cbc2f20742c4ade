"""Calibration: calibrator transits, a drifting-beam sky model, B and G solves, apply, registry.

One calibrator group goes through::

    find_calibrator_transits(start, end, dec)     which groups hold a usable calibrator transit
                                                  (transits.py)
    solve_calibration(ms, "0834+555")             flag autocorrelations and zeros, model the
                                                  calibrator (model.py: time-dependent beam), solve
                                                  G0 -> B -> G (solve.py; by default our own solver,
                                                  fastsolve.py + solve_kernels.py, or CASA's)
    apply_calibration(target_ms)                  applycal with the valid tables, check
                                                  CORRECTED_DATA (apply.py)

Every group, before anything is solved or applied::

    assess_and_flag(ms)                           dead receptors and bad antennas found in the data
                                                  (health.py), flagged, drawn (plots.py)

After a solve, ``table_gates`` (gates.py) rejects a table referenced to an unhealthy antenna, near
the noise, or with a scattered bandpass phase.

Every other group, around the clock::

    choose_tables(records, mjd, dec)              the calibrator pair of the group's strip, and how
                                                  it is used: transit / transferred / borrowed
                                                  (select.py)
    solve_field_gains(ms, [B, G])                 a gain correction on the field itself against the
                                                  sky model, QA-gated, applied (field.py)

Sky models come from :mod:`~dsacont.calibration.skymodel` (the shipped NVSS subset, catalogue
files), the tables' validity windows from :mod:`~dsacont.calibration.registry`, pictures from
:mod:`~dsacont.calibration.plots`, the ``dsacont calibrate`` / ``applycal`` commands from
:mod:`~dsacont.calibration.cli`.
"""
from __future__ import annotations

from dsacont.calibration.apply import (  # noqa: F401
    apply_calibration,
    calibrated_flux_ratio,
    check_corrected,
)
from dsacont.calibration.field import FieldQA, field_sky, model_flux_ratio, solve_field_gains  # noqa: F401
from dsacont.calibration.gates import bandpass_phase_scatter, table_gates  # noqa: F401
from dsacont.calibration.health import (  # noqa: F401
    AntennaHealth,
    antenna_health,
    assess_and_flag,
    flag_unhealthy,
    require_healthy,
)
from dsacont.calibration.model import (  # noqa: F401
    MODEL_SIGN,
    beam_offsets,
    lmn,
    model_amplitudes,
    point_model,
    pointing_dec,
    pointing_dec_from_phase_centre,
    select_calibrator,
    sidelobe_sources,
    source_model,
    source_shape,
    write_model,
)
from dsacont.calibration.msinfo import MSInfo, read_ms_info  # noqa: F401
from dsacont.calibration.plots import plot_antenna_health, plot_bandpass, plot_gains  # noqa: F401
from dsacont.calibration.select import Choice, choose_tables  # noqa: F401
from dsacont.calibration.skymodel import (  # noqa: F401
    SkySource,
    load_sky_csv,
    nvss_catalogue,
    read_catalogue,
    sky_from_arrays,
    sources_near,
)
from dsacont.calibration.solve import (  # noqa: F401
    MAX_FLAGGED_SOLUTIONS,
    choose_refant,
    flag_for_calibration,
    solve_calibration,
)
from dsacont.calibration.tables import caltable_metrics, complete_spws, missing_spws, read_caltable  # noqa: F401
from dsacont.calibration.transits import (  # noqa: F401
    DEFAULT_MIN_FLUX_JY,
    DEFAULT_MIN_PB,
    GROUP_DURATION_S,
    CalibratorTransit,
    find_calibrator_transits,
)
from dsacont.casa import casatasks  # noqa: F401  (CASA tasks, configured offline)
