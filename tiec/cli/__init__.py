"""The ``tiec`` command line: one module per command, each parsing its options and calling its
application (:mod:`tiec.generate`, :mod:`tiec.bench`, :mod:`tiec.calibrate`).

``tiec generate`` is the default command. Bad input prints one line naming the option and the fix
and exits with code 2; nothing half-written is left behind (files are written to a temporary name
and renamed).
"""

from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from .._errors import TiecError
from . import bench, calibrate, generate

__all__ = ["build_parser", "main"]

COMMANDS = {"generate": generate, "bench": bench, "calibrate": calibrate}


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


if __name__ == "__main__":
    sys.exit(main())
