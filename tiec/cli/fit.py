"""``tiec fit``: fit blend weights for one key schedule on a demo model and write the configuration.

The fit is :func:`tiec.fit_blend` (through :func:`tiec.calibrate.fit.fit_demo`): calibration and
held-out inputs of their own, every candidate's held-out PSNR printed, the best written as a
``TiecConfig`` with ``"policy": "fitted"`` that ``tiec generate --config`` and every adapter read.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any

from .._errors import TiecError, UsageError
from .._files import writable_folder
from ..generate import DEMO_MODELS

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``fit`` to the ``tiec`` subcommands."""
    fit = commands.add_parser(
        "fit", help="fit blend weights for a key schedule on a demo model's own trajectories",
        description="Fit per-step blend weights over the newest cached keys (ridge least squares toward linear, "
                    "on-policy refits, the best held-out candidate kept) and write a tiec configuration.")
    fit.add_argument("--model", default="dit-digits", choices=list(DEMO_MODELS), help="demo model (default dit-digits)")
    fit.add_argument("--scheduler", default="dpm", choices=["ddim", "dpm"], help="sampler (default dpm)")
    fit.add_argument("--steps", type=int, help="sampling steps (default 20 for dpm, 50 for ddim)")
    fit.add_argument("--keys", default="every:3", help="the key schedule to fit for (default every:3)")
    depth = fit.add_mutually_exclusive_group()
    depth.add_argument("--encoder-blocks", type=int, help="DiT: blocks in the encoder (default all)")
    depth.add_argument("--decoder-start", type=int, help="UNet: the first up block the decoder runs (default 0)")
    depth.add_argument("--branch-depth", type=int, help="UNet: a shallow branch of this many layers instead")
    fit.add_argument("--calibration", type=int, default=32, help="inputs the weights are fitted on (default 32)")
    fit.add_argument("--held-out", type=int, default=64, help="inputs each candidate is scored on (default 64)")
    fit.add_argument("--num-keys", type=int, default=3, help="newest keys each step blends (default 3)")
    fit.add_argument("--ridge", type=float, default=1e-4, help="pull toward the linear weights (default 1e-4)")
    fit.add_argument("--rounds", type=int, default=3, help="on-policy refits per start at most (default 3)")
    fit.add_argument("--out", type=Path, required=True, help="the configuration file to write (JSON)")
    fit.add_argument("--quiet", action="store_true", help="no progress bar, no summary")


def run(args: argparse.Namespace) -> int:
    """Run ``tiec fit`` with parsed options."""
    from ..calibrate.fit import fitted_config
    from ..schedules import get_schedule

    steps = args.steps or (20 if args.scheduler == "dpm" else 50)
    for name in ("calibration", "held_out"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if steps < 2:
        raise UsageError(f"--steps must be >= 2, got {steps}")
    if not (math.isfinite(args.ridge) and args.ridge >= 0):
        raise UsageError(f"--ridge {args.ridge} must be a finite number >= 0, e.g. 1e-4")
    try:
        key_steps = get_schedule(args.keys).key_steps(steps)
    except TiecError as error:
        raise UsageError(f"--keys {args.keys!r}: {error}") from None
    if len(key_steps) == steps:
        raise UsageError(f"--keys {args.keys!r} makes every one of the {steps} steps a key: there is nothing to fit")
    is_dit = args.model == "dit-digits"
    wrong = (args.decoder_start, "--decoder-start") if is_dit else (args.encoder_blocks, "--encoder-blocks")
    if wrong[0] is not None or (is_dit and args.branch_depth is not None):
        option = wrong[1] if wrong[0] is not None else "--branch-depth"
        raise UsageError(f"{option} does not apply to the demo model {args.model!r}")
    depth = (args.encoder_blocks if is_dit else args.decoder_start) if args.branch_depth is None \
        else f"branch:{args.branch_depth}"
    if args.out.suffix != ".json":
        raise UsageError(f"--out {str(args.out)!r} must name a .json file")
    writable_folder(args.out.parent if str(args.out.parent) else Path("."))
    try:
        config = fitted_config(args.model, args.scheduler, steps, args.keys, depth=depth,
                               command="tiec " + " ".join(args.argv), progress=not args.quiet,
                               num_inputs=args.calibration, held_out=args.held_out, num_keys=args.num_keys,
                               ridge=args.ridge, rounds=args.rounds)
    except TiecError as error:
        raise UsageError(str(error)) from None
    config.save(args.out)
    if not args.quiet:
        scores = config.provenance["held_out_psnr_db"]
        for label, value in scores.items():
            mark = "  <- written" if label == config.provenance["chosen"] else ""
            print(f"{label:>28}: {value:6.2f} dB held out{mark}")
        what = f"{len(config.weights)} fitted steps" if config.weights else f"no fit beat {config.policy}: policy {config.policy}"
        print(f"wrote {args.out} ({what}, {config.provenance['seconds']} s)")
    return 0
