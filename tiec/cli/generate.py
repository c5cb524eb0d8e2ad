"""``tiec generate``: options and summary; the run itself is :func:`tiec.generate.generate`."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path
from typing import Any

from .._errors import UsageError
from ..generate import DEMO_DEFAULTS, DEMO_MODELS, DTYPES, GenerateOptions, generate, write_record

__all__ = ["add_parser", "run"]


def add_parser(commands: Any) -> None:
    """Add ``generate`` to the ``tiec`` subcommands."""
    from tiec.adapters.diffusers import SCHEDULERS

    parser = commands.add_parser(
        "generate", help="sample images with an accelerated sampler",
        description="Sample images with TIEC: a demo model shipped with tiec, or a diffusers pipeline folder.")
    model = parser.add_argument_group("model and inputs")
    model.add_argument("--model", default="dit-digits",
                       help=f"a demo model ({', '.join(DEMO_MODELS)}) or a local diffusers pipeline folder "
                            "(Stable Diffusion, SDXL, DeepFloyd-IF stage I, DiT); default: dit-digits")
    model.add_argument("--prompt", help="text prompt (text-to-image pipelines)")
    model.add_argument("--negative-prompt", help="negative prompt (text-to-image pipelines)")
    model.add_argument("--class-labels", help="comma-separated class labels (demo models: default every class; "
                                              "DiT pipelines: default 0)")
    model.add_argument("--num-images", type=int, default=1, help="images per label or prompt (default 1)")
    model.add_argument("--seed", type=int, default=0, help="image i starts from the noise of seed + i (default 0)")
    model.add_argument("--device", default="cpu", help="torch device (default cpu)")
    model.add_argument("--dtype", default="float32", choices=sorted(DTYPES), help="model dtype (default float32)")
    sampler = parser.add_argument_group("sampler and caching")
    sampler.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    sampler.add_argument("--scheduler", choices=sorted(SCHEDULERS),
                         help="diffusers scheduler (default: ddim for demo models, the pipeline's own otherwise)")
    sampler.add_argument("--config", type=Path,
                         help="a tiec configuration file (tiec calibrate's output) setting keys, policy, time "
                              "coordinate and split depth (default on a demo model given none of --keys, --policy, "
                              "--encoder-blocks, --decoder-start: the calibrated configuration shipped for its "
                              "sampler and step count, when there is one)")
    sampler.add_argument("--keys", help="key steps: 'every:N', a preset name, 'all' or a list like 0,1,5 "
                                        f"(default {DEMO_DEFAULTS['keys']})")
    sampler.add_argument("--policy", help="hold, linear, polynomial(k), lookahead or lookahead-accept "
                                          f"(default {DEMO_DEFAULTS['policy']})")
    sampler.add_argument("--encoder-blocks", type=int,
                         help="DiT only: transformer blocks in the encoder (default: demo all, pipelines half)")
    sampler.add_argument("--decoder-start", type=int, help="UNet only: first up block the decoder runs (default 0)")
    sampler.add_argument("--parallel-decode", action="store_true",
                         help="decode the steps between keys in one batch (demo models)")
    sampler.add_argument("--guidance-scale", type=float,
                         help=f"classifier-free guidance (default: demo {DEMO_DEFAULTS['guidance_scale']}, "
                              "the pipeline's own otherwise)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default outputs)")
    output.add_argument("--batch-size", type=int,
                        help="images sampled together (default: 250 for demo models, 4 for pipelines); "
                             "part of the settings, since batching can change the last bits of an image")
    output.add_argument("--npz", action="store_true",
                        help="also write samples.npz (arr_0, uint8 NHWC) for FID tools (ADM/DiT layout)")
    output.add_argument("--compare", action="store_true", help="also run every step a key and report the speed-up")
    output.add_argument("--count-macs", action=argparse.BooleanOptionalAction, default=True,
                        help="count MACs with FlopCounterMode in a second, untimed run (default on)")
    output.add_argument("--quiet", action="store_true", help="no progress bars, no summary")


def run(args: argparse.Namespace) -> int:
    """Run ``tiec generate`` with parsed options; the main process prints the summary."""
    for name in ("num_images", "steps", "batch_size"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    options = GenerateOptions(**{f.name: getattr(args, f.name) for f in fields(GenerateOptions)})
    record = generate(options)
    if record is None:  # a process other than the main one
        return 0
    write_record(options.out, record)
    if not options.quiet:
        print(summary(record, options.out))
    return 0


def summary(record: dict, out: Path) -> str:
    """The lines ``tiec generate`` prints after a run."""
    line = f"{record['images_generated']} images made in {record['seconds']:.2f} s"
    if record["images_skipped"]:
        line += f" ({record['images_skipped']} already done)"
    line += f", {record['encoder_calls']} encoder / {record['decoder_calls']} decoder calls"
    if record["macs"]:
        line += f", {record['macs'] / 1e9:.3g} GMACs"
    if "compare" in record:
        c = record["compare"]
        line += f"; every step a key took {c['seconds']:.2f} s"
        if c["speedup"] is not None:
            line += f": speed-up {c['speedup']:.2f}x"
        line += f", PSNR {c['psnr_db']} dB"
        if c["mac_ratio"] is not None:
            line += f", {c['mac_ratio']:.2f} of the MACs"
    lines = [line]
    if record["config"]:
        lines.append(f"keys {record['keys']}, {record['policy']}, from {record['config']}")
    lines.append(f"wrote {out / 'grid.png'}, {record['num_images']} images in {out / 'images'}, "
                 f"{out / 'index.json'} and {out / 'record.json'}")
    return "\n".join(lines)
