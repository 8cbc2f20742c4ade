"""JSON for records and QA files: numpy scalars and arrays, and paths, serialise as plain JSON."""
from __future__ import annotations

import os

import numpy as np


def json_default(obj):
    """``json.dumps(..., default=json_default)``: numpy scalar -> number, ndarray -> list,
    path -> str; anything else raises ``TypeError`` naming its type."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
