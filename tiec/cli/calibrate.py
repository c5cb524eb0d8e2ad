"""``tiec calibrate``: options and summary; the search itself is :mod:`tiec.calibrate`."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

from .._errors import UsageError
from .._files import writable_folder
from ..generate import DEMO_MODELS, DTYPES
from ..generate.jobs import check_device
from ._options import finite, folder

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``calibrate`` to the ``tiec`` subcommands."""
    from tiec.adapters.diffusers import SCHEDULERS

    calibrate = commands.add_parser(
        "calibrate", help="search key steps, policy, time coordinate and split depth for a compute budget",
        description="Search configurations on calibration inputs, validate the Pareto front on held-out inputs and "
                    "write <out>/<name>-calibration.json/.png and the recommended <name>-config.json "
                    "(<name>: the model and the sampler).")
    model = calibrate.add_argument_group("model and inputs")
    model.add_argument("--model", default="dit-digits",
                       help=f"a demo model ({', '.join(DEMO_MODELS)}) or a local diffusers pipeline folder "
                            "(Stable Diffusion, SDXL, DeepFloyd-IF stage I, DiT); default: dit-digits")
    model.add_argument("--prompt", action="append", default=[],
                       help="a calibration prompt (text-to-image pipelines; repeat it: inputs cycle through them)")
    model.add_argument("--negative-prompt", help="negative prompt (text-to-image pipelines)")
    model.add_argument("--class-labels", help="comma-separated class labels to cycle through (DiT pipelines)")
    model.add_argument("--guidance-scale", type=float,
                       help="classifier-free guidance (pipelines; default the pipeline's own; demo models: 2)")
    model.add_argument("--device", default="cpu", help="torch device (default cpu)")
    model.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype (default float32)")
    search = calibrate.add_argument_group("search")
    search.add_argument("--sampler", choices=sorted(SCHEDULERS),
                        help="scheduler (demo models: ddim or dpm, default ddim; pipelines: default their own)")
    search.add_argument("--steps", type=int, help="sampling steps (default 20 for dpm and unipc, 50 otherwise)")
    search.add_argument("--calibration", type=int, default=8, help="calibration inputs (default 8)")
    search.add_argument("--held-out", type=int, default=16, help="held-out inputs for validation (default 16)")
    search.add_argument("--budget", type=float, default=0.4,
                        help="MAC ratio the recommended configuration must stay within (default 0.4)")
    search.add_argument("--time-budget", type=float, default=1800.0,
                        help="seconds for the search; refinement stops when spent (default 1800)")
    search.add_argument("--batch-size", type=int, default=4, help="pipelines: images per pipeline call (default 4)")
    search.add_argument("--quick", action="store_true", help="a small search for tests (10 steps, 4 + 4 inputs)")
    search.add_argument("--from-results", type=Path, metavar="JSON",
                        help="no search: pick again within --budget from a finished search's "
                             "<name>-calibration.json and write its files to --out")
    calibrate.add_argument("--out", default=Path("calibration"), help="output folder")
    calibrate.add_argument("--quiet", action="store_true")


def _check(args: argparse.Namespace) -> None:
    """Every option of a search, before anything is loaded or written."""
    for name in ("calibration", "held_out", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not (math.isfinite(args.time_budget) and args.time_budget > 0):
        raise UsageError(f"--time-budget {args.time_budget} must be a positive number of seconds, e.g. 1800")
    if args.steps is not None and args.steps < 2:
        raise UsageError(f"--steps must be >= 2, got {args.steps}")
    check_device(args.device)
    if args.model in DEMO_MODELS:
        given = {"--prompt": args.prompt or None, "--negative-prompt": args.negative_prompt,
                 "--class-labels": args.class_labels, "--guidance-scale": args.guidance_scale}
        for option, value in given.items():
            if value is not None:
                raise UsageError(f"{option} does not apply to the demo model {args.model!r}: its inputs are the "
                                 "labels 0-9 with guidance 2")
        if args.sampler not in (None, "ddim", "dpm"):
            raise UsageError(f"--sampler {args.sampler!r} does not apply to the demo model {args.model!r}; "
                             "use ddim or dpm")
    elif not Path(args.model).is_dir():
        raise UsageError(f"--model {args.model!r} is neither a demo model ({', '.join(DEMO_MODELS)}) nor a folder")


def run(args: argparse.Namespace) -> int:
    """Run ``tiec calibrate`` with parsed options: a search, or a new pick from a finished one."""
    from ..calibrate import calibrate, recommend, write_calibration

    if not (math.isfinite(args.budget) and 0 < args.budget <= 1):
        raise UsageError(f"--budget {args.budget} is not a MAC ratio in (0, 1], e.g. 0.4")
    if args.from_results is not None:
        try:
            search = json.loads(args.from_results.read_text())
            results = recommend(search, args.budget)
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise UsageError(f"--from-results {str(args.from_results)!r} is not a tiec calibrate result "
                             f"({type(error).__name__}: {error})") from None
        results["picked_by"] = "tiec " + " ".join(args.argv)
        results["config"]["provenance"].update(command=results["command"], picked_by=results["picked_by"])
        _report(results, write_calibration(results, writable_folder(folder(args.out))), args)
        return 0

    _check(args)
    finite(args.guidance_scale, "--guidance-scale")
    out = writable_folder(folder(args.out))
    results = calibrate(args.model, args.sampler, steps=args.steps, calibration=args.calibration,
                        held_out=args.held_out, budget=args.budget, time_budget=args.time_budget, quick=args.quick,
                        progress=not args.quiet, prompts=args.prompt, negative_prompt=args.negative_prompt,
                        class_labels=args.class_labels, guidance_scale=args.guidance_scale, device=args.device,
                        dtype=args.dtype, batch_size=args.batch_size)
    results["command"] = "tiec " + " ".join(args.argv)
    results["config"]["provenance"]["command"] = results["command"]
    _report(results, write_calibration(results, out), args)
    return 0


def _report(results: dict, paths: list[Path], args: argparse.Namespace) -> None:
    if args.quiet:
        return
    pick = results["recommended"]
    config = results["config"]
    depth = ("encoder blocks" if config.get("encoder_blocks") is not None
             else "shallow branch" if config.get("branch_depth") is not None else "decoder start")
    fits = "within" if pick["mac_ratio"] <= results["budget"] else "(none fits: the cheapest) for"
    print(f"{results['evaluations']} evaluations in {results['seconds']} s; recommended {fits} "
          f"{results['budget']} of the MACs: keys {','.join(map(str, pick['keys']))}, {pick['policy']}, "
          f"{pick['coordinate']}, {depth} {pick['depth']}: {pick['mac_ratio']:.3f} of the MACs, PSNR "
          + (f"{pick['psnr_db']:.2f} dB (held out: " if "psnr_db" in pick else "held out ")
          + f"{pick['held_out_psnr_db']:.2f} dB" + (")" if "psnr_db" in pick else ""))
    print("wrote " + ", ".join(str(p) for p in paths))
