"""``tiec bench``: options, pieces and summary; the grid itself is :mod:`tiec.bench`."""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from .._errors import TiecError, UsageError
from .._files import writable_folder
from ..config import TiecConfig, load_config
from ..generate import DEMO_MODELS
from ._options import folder

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``bench`` to the ``tiec`` subcommands."""
    bench = commands.add_parser(
        "bench", help="measure quality against compute, side by side with peers",
        description="Run the benchmark grid on a demo model (or time a full-size architecture with --speed) and "
                    "write <out>/<name>.json, .md and .png.")
    bench.add_argument("--model", default="dit-digits", choices=list(DEMO_MODELS),
                       help="demo model (default dit-digits)")
    bench.add_argument("--sampler", default="ddim", choices=["ddim", "dpm"],
                       help="ddim: DDIM 50 steps; dpm: DPM-Solver++ 20 steps (default ddim)")
    bench.add_argument("--num-samples", type=int,
                       help="samples per method for the quality metrics (default 1000; --study: 64)")
    bench.add_argument("--timing-batch", type=int, default=10, help="images per timed run (default 10)")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per method (default 5)")
    bench.add_argument("--batch-size", type=int, default=250, help="images sampled together (default 250)")
    bench.add_argument("--part",
                       help="run one family of rows (and the reference): fasterdiffusion, tiec, fitted (blend "
                            "weights fitted per key set), branch (the demo UNet's shallow branch), configured, peers "
                            "or fewer-steps, or one key set of a family, "
                            "e.g. tiec/every:3, or one policy on it, e.g. tiec/every:3/linear, or one peer's rows, e.g. "
                            "peers/taylorseer, or fewer-steps rows by step count, e.g. fewer-steps/20-39; the pieces in --out are joined into <model>-<sampler>.json/.md/.png after each piece")
    bench.add_argument("--config", type=Path, action="append", default=[],
                       help="add a row for this tiec configuration file (repeatable; --part configured runs only "
                            "these rows)")
    bench.add_argument("--speed", choices=["sd15-unet", "dit-xl-2"],
                       help="instead: wall time per step of a full-size architecture with random weights")
    bench.add_argument("--steps", type=int, default=10, help="--speed only: sampling steps per timed run (default 10)")
    bench.add_argument("--study", choices=["stochastic", "monitor", "coordinates"],
                       help="instead, a measurement on the demo model, written to <out>/<model>-<study>.json and "
                            ".md: stochastic: caching with euler-a, ddpm (50 steps) and dpm-sde (20), keys every "
                            "2, 3 and 5 with each policy, against every step a key (tiec generate reads it beside "
                            "the demo weights); monitor: the quality monitor's key error against PSNR over DDIM "
                            "50 and DPM-Solver++ 20 runs, with their rank correlation; coordinates: each policy "
                            "blended over t, log sigma and the step index (DDIM 50, DPM-Solver++ 20, and on a "
                            "Karras schedule; keys every 3 and 5)")
    bench.add_argument("--quick", action="store_true",
                       help="a small grid: 10 steps, 20 samples, 1 timed run of 4 images (minutes -> seconds)")
    bench.add_argument("--out", default=Path("bench-results"), help="output folder (default bench-results)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars, no summary")


def _load_config(path: Path) -> TiecConfig:
    try:
        return load_config(path)
    except TiecError as error:
        raise UsageError(f"--config: {error}") from None


def piece_stem(stem: str, part: str) -> str:
    """The file name of one ``--part`` piece: only letters, digits and ``-`` from the part.

    Examples:
        >>> piece_stem("dit-digits-ddim", "tiec/every:3/polynomial(2)")
        'dit-digits-ddim-part-tiec-every3-polynomial2'
    """
    return f"{stem}-part-{re.sub(r'[^A-Za-z0-9-]', '', part.replace('/', '-'))}"


def run(args: argparse.Namespace) -> int:
    """Run ``tiec bench`` with parsed options: one grid, one piece of it (joined with the pieces
    already in ``--out``), or a speed run."""
    from ..bench import bench_demo, bench_speed, join_pieces, markdown_table, write_results

    for name in ("num_samples", "timing_batch", "repeats", "batch_size", "steps"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.study and (args.speed or args.part or args.config):
        raise UsageError(f"--study {args.study} is a run of its own; drop --speed, --part and --config")
    if args.part == "configured" and not args.config:
        raise UsageError("--part configured runs the rows of --config files; pass at least one --config FILE")
    out = writable_folder(folder(args.out))
    command = "tiec " + " ".join(args.argv)
    if args.study:
        from ..bench.studies import STUDIES, write_study
        from ..bench.studies import markdown_table as study_table

        quick = dict(steps=10, keys=("every:3",), policies=("hold", "linear")) if args.quick else {}
        results = STUDIES[args.study](args.model, num_samples=args.num_samples or (8 if args.quick else 64),
                                      progress=not args.quiet, **quick)
        results["command"] = command
        paths = write_study(results, out)
        if not args.quiet:
            print(study_table(results))
            print("wrote " + ", ".join(str(p) for p in paths))
        return 0
    args.num_samples = args.num_samples or 1000
    if args.speed:
        results = bench_speed(args.speed, steps=args.steps if not args.quick else 2,
                              repeats=args.repeats if not args.quick else 1, progress=not args.quiet)
        stem = f"speed-{args.speed}" + ("-quick" if args.quick else "")
    else:
        if args.quick:
            args.num_samples, args.timing_batch, args.repeats = 20, 4, 1
        results = bench_demo(args.model, args.sampler, num_samples=args.num_samples, timing_batch=args.timing_batch,
                             repeats=args.repeats, batch_size=args.batch_size, quick=args.quick,
                             progress=not args.quiet, part=args.part, cache=out / ".cache" if args.part else None,
                             configs=[(path.stem, _load_config(path)) for path in args.config])
        stem = f"{args.model}-{args.sampler}" + ("-quick" if args.quick else "")
    results["command"] = command
    if getattr(args, "part", None):
        # Each set of configuration files is a piece of its own, so that a new file adds rows
        # beside the earlier configured pieces instead of replacing them.
        piece = "/".join([args.part, *(path.stem for path in args.config)]) if args.part == "configured" else args.part
        write_results(results, out, piece_stem(stem, piece))
        results = join_pieces(out, stem, results["num_samples"])
    paths = write_results(results, out, stem)
    if not args.quiet:
        print(markdown_table(results))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0
