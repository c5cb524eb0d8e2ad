"""Shared adapter helpers: lazy imports that name the extra to install, split-depth checks."""

from __future__ import annotations

import importlib
from types import ModuleType

from typing import Optional

from tiec._errors import MissingDependencyError, TiecValueError

__all__ = ["MissingDependencyError", "require", "encoder_depth"]


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install 'tiec[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"this adapter needs {module.split('.')[0]} ({error}); install it with "
            f"pip install 'tiec[{extra}]'"
        ) from error


def encoder_depth(encoder_blocks: Optional[int], depth: int) -> int:
    """Validate a transformer split depth: ``1..depth`` blocks in the encoder, ``None`` for half."""
    value = max(depth // 2, 1) if encoder_blocks is None else encoder_blocks
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= depth:
        raise TiecValueError(f"encoder_blocks must be an int in [1, {depth}] (the model's depth), got {value!r}")
    return value
