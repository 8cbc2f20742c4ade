"""Errors for people: each names the file (or product) and what is wrong with it."""
from __future__ import annotations


class DsacontError(Exception):
    """Base class of every error dsacont raises on purpose."""


class BadInputError(DsacontError):
    """An input file is unusable. ``path`` names it, ``reason`` says what is wrong."""

    def __init__(self, path, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class ConfigError(DsacontError):
    """A configured path or setting is unusable (not writable, missing...)."""


class CalibrationUnavailable(DsacontError):
    """No valid calibration table covers the requested time (yet)."""
