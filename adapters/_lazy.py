"""Lazy imports of optional frameworks, with an error that names the extra to install."""

from __future__ import annotations

import importlib
from types import ModuleType

from tiec._errors import TiecError

__all__ = ["MissingDependencyError", "require"]


class MissingDependencyError(TiecError, ImportError):
    """An optional dependency is missing; the message names the extra that brings it."""


def require(module: str, extra: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming ``pip install 'tiec[extra]'``."""
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise MissingDependencyError(
            f"this adapter needs {module.split('.')[0]} ({error}); install it with "
            f"pip install 'tiec[{extra}]'"
        ) from error
