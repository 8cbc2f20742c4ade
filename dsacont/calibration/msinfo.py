"""What calibration reads of a Measurement Set: :func:`dsacont.io.ms.read_ms_info`, checked.
"""
from __future__ import annotations

from dsacont.errors import BadInputError
from dsacont.io.ms import MSInfo
from dsacont.io.ms import read_ms_info as _read_ms_info

__all__ = ["MSInfo", "read_ms_info"]



def read_ms_info(ms) -> MSInfo:
    """:func:`dsacont.io.ms.read_ms_info`, refusing what calibration cannot use.

    Raises
    ------
    BadInputError
        No such MS, no rows, or phase centres in a frame other than J2000/ICRS (the model's
        positions are ICRS).
    """
    info = _read_ms_info(ms, require_rows=True)
    if info.field_frame not in ("J2000", "ICRS"):
        raise BadInputError(ms, f"phase centres are in {info.field_frame}; J2000/ICRS expected")
    return info
