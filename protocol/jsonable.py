"""The one JSON encoder hook for numbers the project produces (numpy arrays and scalars, bytes,
paths, enums)."""

from __future__ import annotations

import os
from enum import Enum
from typing import Any

import numpy as np


def json_default(obj: Any) -> Any:
    """``json.dumps(..., default=json_default)``: numpy arrays become lists, numpy scalars Python
    numbers, bytes hex, paths strings, enums their values; anything else raises ``TypeError``
    naming its type (nothing is silently stringified)."""
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, bytes):
        return obj.hex()
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, Enum):
        return obj.value
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
