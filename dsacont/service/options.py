"""The per-group pipeline's options, and what a task's context carries.

:class:`PipelineOptions` is the schema of the ``[pipeline]`` table of ``dsacont stream --config``
and of ``--option KEY=VALUE`` (:func:`options_from` parses either, and rejects an unknown key or a
value of the wrong type before anything runs). The accessors (:func:`paths_of`, :func:`known_of`,
:func:`options_of`, :func:`threads_of`, :func:`takes_handoff`) read a task's context, a
:class:`dsacont.service.executor.ServiceContext` or a plain dict, the same way for the per-group
chain (:mod:`dsacont.service.pipeline`) and the mosaic trigger (:mod:`dsacont.service.mosaics`).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from dsacont.calibration.select import BORROW_DAYS, DEC_TOLERANCE_DEG, TRANSFER_H
from dsacont.config import Paths, get_paths
from dsacont.errors import ConfigError
from dsacont.imaging.flatten import DEFAULT_MIN_APPARENT_JY as FLATTEN_MIN_APPARENT_JY
from dsacont.options import from_mapping

TILES_PER_MOSAIC = 12
GROUP_CADENCE_S = 24 * 12.884902
CAL_MIN_FLUX_JY = 2.0
CAL_MIN_PB = 0.5
#: the directories a worker writes (never ``state``)
WORK_DIRS = ("ms", "caltables", "images", "mosaics", "tmp")


@dataclass
class PipelineOptions:
    """Knobs of the per-group chain (defaults are the operators').

    Attributes
    ----------
    tiles_per_mosaic : int
        Consecutive tiles (5-minute images) per mosaic; 12 = 60 minutes.
    calibrator : str or None
        Solve only on this calibrator's transits; None: any catalogue calibrator bright enough.
    cal_min_flux_jy : float
        A transit is used only for a calibrator at least this bright (catalogue 20 cm flux, Jy).
    cal_min_pb : float
        ... and with at least this primary-beam power response at transit.
    field_gains : bool
        Solve a gain correction on every group that has no calibrator transit, on the field itself
        against the sky model (:mod:`dsacont.calibration.field`); False: transfer the last
        calibrator's gains only.
    sky_catalogue : str or None
        Catalogue file for the field model (NVSS/FIRST/VLASS-style); None: the shipped NVSS subset.
    sky_models : str
        The field solve's sky models, in the order tried (comma separated; the next is tried only
        when the solve against the one before is rejected): ``strip``, the model dsacont keeps
        from earlier tiles of the strip (:mod:`dsacont.service.sky`), and ``catalogue``
        (``sky_catalogue`` or NVSS).
    calibrator_sky : bool
        Solve a calibrator transit against the calibrator *and* the field sources around it: the
        strip model's (``known["sky_model"]``), or, on a strip's first day (no model yet), the
        transit tile's own sources, found on a first image: the group is then solved, applied,
        imaged and catalogued a second time. Without them the bandpass and gains absorb the
        field: on the demo's transit tile (a 1.5 Jy source 0.45 deg from 0834+555, 17 % of it)
        the calibrator-only solve left 81 false detections >= 5 sigma in the tile and 1.20x the
        radiometer noise; with the field, 21 and 0.90x (``benchmarks/README.md``).
    field_image_nsigma : float
        On a strip's first day (``calibrator_sky``), the calibrator tile's first image, made only
        to find the field sources of its second solve, is cleaned down to this many sigma (one
        stage, no mask) instead of the tile's usual depth: the solve models only the sources
        brighter than 0.25 % of the calibrator in the tile
        (:func:`dsacont.calibration.model.significant_sky`, ~20 mJy for 0834+555, hundreds of
        sigma), and this image is on the critical path of every group of the hour (they wait for
        its tables). Its sources feed the strip model until the tile's final image replaces them.
    flatten_strip : bool
        Flatten the drifting-beam modulation (:mod:`dsacont.imaging.flatten`) of the strip
        model's sources bright in the tile (0.1 Jy apparent or more, :func:`dsacont.imaging.flatten.bright_among`)
        as well as the catalogue calibrators'; unless ``imaging`` sets ``flatten`` itself. On the
        full-size tile 12.9 min after the 0834+555 transit the residual noise went from 1.35x to
        1.14x the radiometer equation (``benchmarks/README.md``, Imaging).
    flatten_strip_min_jy : float
        The least apparent flux (Jy, in the tile) of a strip-model source to flatten.
    catalogue_tiles : bool
        Find the sources of every tile and mosaic (:func:`dsacont.sources.find_sources`, a
        ``<tile>.pbcor.sources.fits`` / ``<mosaic>.sources.fits`` beside it, with its NVSS
        cross-match QA); they are recorded, and the tiles' feed the strip model.
    photometry : bool
        Forced photometry of every tile and mosaic at the reference positions inside it
        (:func:`dsacont.sources.photometry.reference_photometry`), stored in the products
        database's ``photometry`` table for light curves.
    photometry_catalogue : str or None
        Catalogue file of the positions to measure (NVSS/FIRST/VLASS-style); None:
        ``sky_catalogue`` if given, else the shipped NVSS subset and the VLA calibrators.
    model_min_snr : float
        Tile sources enter the strip model from this S/N up (compact, clean Aegean fits only).
    model_max_noise_ratio : float
        ... and only from tiles whose noise is at most this many times the radiometer equation's
        (a tile striped by a bright source outside its field is not a model of the sky).
    cal_dec_tolerance_deg : float
        A table is applied only to groups whose pointing declination is within this of its own.
    cal_transfer_h : float
        Calibrator gains up to this many hours away are "transferred"; older ones "borrowed".
    bandpass_borrow_days : float
        With no calibrator on the strip for this long (days), groups wait for one.
    imaging : dict
        Keyword arguments of :func:`dsacont.imaging.image_ms` (e.g. ``niter``, ``fov_deg``).
    mosaic : dict
        Keyword arguments of :func:`dsacont.imaging.mosaic.make_mosaic` (e.g. ``pb_cutoff``).
    """

    tiles_per_mosaic: int = TILES_PER_MOSAIC
    calibrator: str | None = None
    cal_min_flux_jy: float = CAL_MIN_FLUX_JY
    cal_min_pb: float = CAL_MIN_PB
    field_gains: bool = True
    calibrator_sky: bool = True
    field_image_nsigma: float = 10.0
    sky_catalogue: str | None = None
    sky_models: str = "strip,catalogue"
    flatten_strip: bool = True
    flatten_strip_min_jy: float = FLATTEN_MIN_APPARENT_JY
    catalogue_tiles: bool = True
    photometry: bool = True
    photometry_catalogue: str | None = None
    model_min_snr: float = 7.0
    model_max_noise_ratio: float = 5.0
    cal_dec_tolerance_deg: float = DEC_TOLERANCE_DEG
    cal_transfer_h: float = TRANSFER_H
    bandpass_borrow_days: float = BORROW_DAYS
    imaging: dict = field(default_factory=dict)
    mosaic: dict = field(default_factory=dict)


def context_value(context, key: str):
    """``context[key]`` or ``context.key`` (a dict or a ServiceContext); None when it has none."""
    return context.get(key) if isinstance(context, dict) else getattr(context, key, None)


def paths_of(context) -> Paths:
    p = context_value(context, "paths")
    return p if p is not None else get_paths()


def known_of(context) -> dict:
    return context_value(context, "known") or {}


def options_from(o) -> PipelineOptions:
    """Build PipelineOptions from a PipelineOptions or a dict.

    The dict is the ``[pipeline]`` table of the ``--config`` file or ``--option KEY=VALUE``
    strings; keys ``imaging.X`` / ``mosaic.X`` go to those stages. Raises ValueError on an unknown
    key or a value of the wrong type.
    """
    if isinstance(o, PipelineOptions):
        return o
    values: dict = {"imaging": {}, "mosaic": {}}
    for key, value in (o or {}).items():
        value = parse_value(value)
        stage, dot, sub = key.partition(".")
        if dot and stage in ("imaging", "mosaic"):
            values[stage][sub] = value
        elif key in ("imaging", "mosaic") and isinstance(value, dict):
            values[key].update(value)
        else:
            values[key] = value
    try:
        return from_mapping(PipelineOptions, values, where="pipeline options")
    except ConfigError as exc:
        raise ValueError(str(exc)) from None


def options_of(context) -> PipelineOptions:
    return options_from(context_value(context, "options"))


def threads_of(context) -> int | None:
    """The worker's thread share (``context.threads``), None when the context does not say."""
    n = context_value(context, "threads")
    return int(n) if n else None


def takes_handoff(context) -> bool:
    """Whether the caller (the streaming service: ``context.requeue``) takes a hand-over."""
    return bool(context_value(context, "requeue"))


def parse_value(v):
    if not isinstance(v, str):
        return v
    for cast in (int, float):
        try:
            return cast(v)
        except ValueError:
            pass
    return {"true": True, "false": False, "none": None}.get(v.lower(), v)
