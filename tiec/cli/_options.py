"""Checks shared by the commands' options, each raising one line that names the option."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Optional

from .._errors import UsageError

__all__ = ["folder", "finite"]


def folder(text: str, option: str = "--out") -> Path:
    """An output folder option as a path; an empty one is refused (it would mean the current folder).

    Examples:
        >>> folder("runs/a")
        PosixPath('runs/a')
    """
    if not text.strip():
        raise UsageError(f"{option} {text!r} is empty; name a folder, e.g. {option} outputs")
    return Path(text)


def finite(value: Optional[float], option: str) -> Optional[float]:
    """A number option that must be finite (``nan`` and ``inf`` parse as floats)."""
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{option} {value} is not a finite number")
    return value
