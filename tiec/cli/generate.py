"""``tiec generate``: options and summary; the run itself is :func:`tiec.generate.generate`."""

from __future__ import annotations

import argparse
import time
from dataclasses import fields
from pathlib import Path
from typing import Any

from ..generate import DEMO_DEFAULTS, DEMO_MODELS, DTYPES, GenerateOptions, generate
from ..loop import KEY_ERROR_WARNING
from ._options import finite, folder

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
    sampler.add_argument("--steps", type=int,
                         help="sampling steps (default 20 for dpm, dpm-karras, dpm-sde and unipc, 50 otherwise)")
    sampler.add_argument("--scheduler", choices=sorted(SCHEDULERS),
                         help="diffusers scheduler (default: ddim for demo models, the pipeline's own otherwise)")
    sampler.add_argument("--config", type=Path,
                         help="a tiec configuration file (tiec calibrate's output) setting keys, policy, time "
                              "coordinate and split depth (default on a demo model given none of --keys, --policy, "
                              "--encoder-blocks, --decoder-start, --branch-depth: the calibrated configuration "
                              "shipped for its sampler and step count, when there is one)")
    sampler.add_argument("--keys", help="key steps: 'every:N', a preset name, 'all' or a list like 0,1,5 "
                                        "(default: on a demo model, the calibrated configuration shipped for its "
                                        f"sampler and step count; otherwise {DEMO_DEFAULTS['keys']})")
    sampler.add_argument("--policy", help="hold, linear, polynomial(k), lookahead or lookahead-accept "
                                          "(default: the calibrated configuration's, as for --keys; otherwise "
                                          f"{DEMO_DEFAULTS['policy']})")
    sampler.add_argument("--encoder-blocks", type=int,
                         help="DiT only: transformer blocks in the encoder (default: demo all, pipelines half)")
    sampler.add_argument("--decoder-start", type=int, help="UNet only: first up block the decoder runs (default 0)")
    sampler.add_argument("--branch-depth", type=int,
                         help="UNet only, instead of --decoder-start: recompute this many outermost layers every "
                              "step and cache only the deep feature between them (DeepCache's topology; 1 is the "
                              "finest cut)")
    sampler.add_argument("--parallel-decode", action="store_true",
                         help="decode the steps between keys in one batch (demo models)")
    sampler.add_argument("--guidance-scale", type=float,
                         help=f"classifier-free guidance (default: demo {DEMO_DEFAULTS['guidance_scale']}, "
                              "the pipeline's own otherwise)")
    output = parser.add_argument_group("output")
    output.add_argument("--out", default=Path("outputs"), help="output folder (default outputs)")
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
    start = time.perf_counter()
    given = {f.name: getattr(args, f.name) for f in fields(GenerateOptions)}
    options = GenerateOptions(**{**given, "out": folder(args.out),
                                 "guidance_scale": finite(args.guidance_scale, "--guidance-scale")})
    record = generate(options)
    if record is not None and not options.quiet:  # None: a process other than the main one
        print(summary(record, options.out, time.perf_counter() - start))
    return 0


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def summary(record: dict, out: Path, seconds: float) -> str:
    """The lines ``tiec generate`` prints after a run that took ``seconds`` in all."""
    images = _count(record["num_images"], "image")
    steps = ",".join(map(str, record["key_steps"]))
    keys = record["keys"] if record["keys"] == steps else f"{record['keys']} (steps {steps})"
    caching = f"keys {keys}, {record['policy']}, coordinate {record['coordinate']}" + (
        f", from {record['config']}" if record["config"] else "")
    if record.get("already_done"):
        return "\n".join([f"nothing to do: the {images} in {out} were made by an earlier run of this command "
                          "(its record.json is kept)", caching])
    line = f"{_count(record['images_generated'], 'image')} made in {seconds:.1f} s (sampling {record['seconds']:.2f} s)"
    if record["images_skipped"]:
        line += f", {record['images_skipped']} already done"
    if record["encoder_calls"] is not None:
        line += f"; {record['encoder_calls']} encoder / {record['decoder_calls']} decoder calls"
    if record["macs"]:
        line += f", {record['macs'] / 1e9:.3g} GMACs"
    lines = [line]
    if "compare" in record:
        c = record["compare"]
        psnr = "∞ (identical)" if c["psnr_db"] is None else f"{c['psnr_db']}"
        text = f"every step a key took {c['seconds']:.2f} s"
        if c["speedup"] is not None:
            text += f": speed-up {c['speedup']:.2f}x"
        text += f", PSNR {psnr} dB"
        if c["mac_ratio"] is not None:
            text += f", {c['mac_ratio']:.2f} of the MACs"
        lines.append(text)
    lines.append(caching)
    error = record.get("key_error")
    if error is not None and error > KEY_ERROR_WARNING:
        lines.append(f"warning: the blend missed the encoder's features by {error:.0%} on average at the key steps "
                     f"(above {KEY_ERROR_WARNING:.0%}: expect images far from every step a key); use more keys or "
                     "another --policy, and check with --compare")
    lines.append(f"wrote {out / 'grid.png'}, {images} in {out / 'images'}, {out / 'index.json'} and "
                 f"{out / 'record.json'}")
    return "\n".join(lines)
