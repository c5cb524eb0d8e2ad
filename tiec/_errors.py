"""Exceptions raised by tiec.

Every error tiec raises on bad input derives from :class:`TiecError` *and* from the built-in
exception a Python user expects (``TypeError`` for a wrong kind, ``ValueError`` for a wrong value,
``NotImplementedError`` for an unsupported model feature), so ``except ValueError`` keeps working.
Messages name the argument, the value received and what was expected.
"""

from __future__ import annotations

__all__ = [
    "MissingDependencyError",
    "TiecError",
    "TiecNotImplementedError",
    "TiecTypeError",
    "TiecValueError",
    "UsageError",
]


class TiecError(Exception):
    """Base class of every exception raised by tiec."""


class TiecTypeError(TiecError, TypeError):
    """An argument has the wrong kind (a list where a tuple of tensors was expected, ...)."""


class TiecValueError(TiecError, ValueError):
    """An argument has the right kind but a wrong value (a negative key index, a time going back, ...)."""


class TiecNotImplementedError(TiecError, NotImplementedError):
    """A model feature that tiec does not support (yet)."""


class MissingDependencyError(TiecError, ImportError):
    """An optional dependency is missing; the message names the extra that brings it."""


class UsageError(TiecValueError):
    """Bad input to a command (``tiec generate``, ``bench``, ``calibrate``) or to the job behind it:
    the message names the command-line option and the fix; the command line reports it in one
    line and exits with code 2."""
