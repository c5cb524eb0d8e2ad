"""The ``tiec`` command line: one module per command, each parsing its options and calling its
application (:mod:`tiec.generate`, :mod:`tiec.bench`, :mod:`tiec.calibrate`; ``tiec fit``:
:func:`tiec.calibrate.fit.fitted_config`).

``tiec generate`` is the default command. Bad input prints one line naming the option and the fix
and exits with code 2; Ctrl-C (exit 130) and a failed write such as a full disk (exit 1) end in one
line too. Nothing half-written is left behind (files are written to a temporary name and renamed).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .._errors import TiecError
from . import bench, calibrate, fit, generate

__all__ = ["build_parser", "main"]

COMMANDS = {"generate": generate, "bench": bench, "calibrate": calibrate, "fit": fit}


def build_parser() -> argparse.ArgumentParser:
    """The ``tiec`` parser with every command."""
    parser = argparse.ArgumentParser(prog="tiec", description="Temporal-Interpolated Encoder Caching")
    commands = parser.add_subparsers(dest="command")
    for command in COMMANDS.values():
        command.add_parser(commands)
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``tiec`` command line; returns the exit code (2 for bad input)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in (*COMMANDS, "-h", "--help"):
        argv = ["generate", *argv]  # generate is the default command
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return COMMANDS[args.command].run(args)
    except TiecError as error:
        parser.exit(2, f"tiec: error: {error}\n")
    except KeyboardInterrupt:
        parser.exit(130, "tiec: interrupted; what was finished is kept (rerun the same command to resume)\n")
    except OSError as error:
        if error.errno is None:  # not the operating system's word on a file: a bug, keep its traceback
            raise
        where = f" ({error.filename})" if error.filename else ""
        parser.exit(1, f"tiec: error: {error.strerror or error}{where}; what was finished is kept: fix that and "
                       "rerun the same command to resume\n")


if __name__ == "__main__":
    sys.exit(main())
