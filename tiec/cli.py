"""The ``tiec`` command line. ``tiec generate`` samples images with an accelerated sampler.

Errors in arguments print one line naming the argument and the fix and exit with code 2; nothing
half-written is left behind (files are written to a temporary name and renamed).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ._errors import TiecError
from ._generate import DEMO_MODELS, DTYPES, Images, UsageError, check_keys_and_policy, make_job, psnr, write_images
from .flops import count_flops
from .schedules import get_schedule

__all__ = ["main"]

DEMO_DEFAULTS = dict(keys="every:3", policy="linear", guidance_scale=2.0)


def _output_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".tiec-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as error:
        raise UsageError(f"--out {str(path)!r} cannot be written ({error.strerror}); choose a writable folder") from None
    return path


def _write_json(path: Path, record: dict) -> None:
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    tmp.replace(path)


def _measure(job: Any, keys: Any, *, progress: bool, count_macs: bool) -> tuple[Images, dict]:
    """Run ``job`` timed. With ``count_macs``, first run it under ``FlopCounterMode`` (untimed, so the
    counter's overhead stays out of the time; it also warms the model up) and check both runs agree."""
    macs = counted = None
    if count_macs:
        flops, counted = count_flops(job, keys, progress=progress)
        macs = flops // 2
    start = time.perf_counter()
    images = job(keys, progress=progress)
    seconds = time.perf_counter() - start
    if counted is not None and not torch.equal(counted.pixels, images.pixels):
        raise TiecError("the MAC-counting run made other images than the timed run; is the model deterministic?")
    return images, dict(key_steps=list(images.key_steps), encoder_calls=images.encoder_calls,
                        decoder_calls=images.decoder_calls, macs=macs, seconds=round(seconds, 3))


def _generate(args: argparse.Namespace) -> dict:
    is_demo = args.model in DEMO_MODELS
    keys = args.keys or DEMO_DEFAULTS["keys"]
    policy = args.policy or DEMO_DEFAULTS["policy"]
    guidance = args.guidance_scale
    if guidance is None and is_demo:
        guidance = DEMO_DEFAULTS["guidance_scale"]
    check_keys_and_policy(keys, policy, args.steps)
    job = make_job(args.model, class_labels=args.class_labels, num_images=args.num_images, prompt=args.prompt,
                   negative_prompt=args.negative_prompt, steps=args.steps, scheduler=args.scheduler,
                   policy=policy, guidance_scale=guidance, encoder_blocks=args.encoder_blocks,
                   decoder_start=args.decoder_start, parallel_decode=args.parallel_decode, seed=args.seed,
                   device=args.device, dtype=args.dtype, progress=not args.quiet)
    out = _output_dir(args.out)
    progress = not args.quiet
    images, measured = _measure(job, keys, progress=progress, count_macs=args.count_macs)
    files = write_images(images.pixels, out, columns=10 if is_demo else 4)
    record = dict(**job.settings, keys=str(get_schedule(keys)), **measured,
                  images=[str(path.relative_to(out)) for path in files], grid="grid.png")
    if args.compare:
        reference, ref = _measure(job, None, progress=progress, count_macs=args.count_macs)
        record["compare"] = dict(
            seconds=ref["seconds"], macs=ref["macs"], encoder_calls=ref["encoder_calls"],
            decoder_calls=ref["decoder_calls"], speedup=round(ref["seconds"] / measured["seconds"], 3),
            mac_ratio=None if ref["macs"] is None else round(measured["macs"] / ref["macs"], 4),
            psnr_db=round(psnr(images.pixels, reference.pixels), 2),
        )
    return record


def _run(args: argparse.Namespace) -> int:
    record = _generate(args)
    _write_json(args.out / "record.json", record)
    if not args.quiet:
        line = f"{len(record['images'])} images in {record['seconds']:.2f} s, " \
               f"{record['encoder_calls']} encoder / {record['decoder_calls']} decoder calls"
        if record["macs"] is not None:
            line += f", {record['macs'] / 1e9:.3g} GMACs"
        if "compare" in record:
            c = record["compare"]
            line += (f"; every step a key took {c['seconds']:.2f} s: speed-up {c['speedup']:.2f}x, "
                     f"PSNR {c['psnr_db']} dB")
            if c["mac_ratio"] is not None:
                line += f", {c['mac_ratio']:.2f} of the MACs"
        print(line)
        print(f"wrote {args.out / 'grid.png'}, {len(record['images'])} images in {args.out / 'images'} "
              f"and {args.out / 'record.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from tiec.adapters.diffusers import SCHEDULERS

    parser = argparse.ArgumentParser(prog="tiec", description="Temporal-Interpolated Encoder Caching")
    commands = parser.add_subparsers(dest="command")
    generate = commands.add_parser(
        "generate", help="sample images with an accelerated sampler",
        description="Sample images with TIEC: a demo model shipped with tiec, or a diffusers pipeline folder.")
    model = generate.add_argument_group("model and inputs")
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
    sampler = generate.add_argument_group("sampler and caching")
    sampler.add_argument("--steps", type=int, default=50, help="sampling steps (default 50)")
    sampler.add_argument("--scheduler", choices=sorted(SCHEDULERS),
                         help="diffusers scheduler (default: ddim for demo models, the pipeline's own otherwise)")
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
    output = generate.add_argument_group("output")
    output.add_argument("--out", type=Path, default=Path("outputs"), help="output folder (default outputs)")
    output.add_argument("--compare", action="store_true", help="also run every step a key and report the speed-up")
    output.add_argument("--count-macs", action=argparse.BooleanOptionalAction, default=True,
                        help="count MACs with FlopCounterMode in a second, untimed run (default on)")
    output.add_argument("--quiet", action="store_true", help="no progress bars, no summary")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``tiec`` command line; returns the exit code (2 for bad input)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("generate", "-h", "--help"):
        argv = ["generate", *argv]  # generate is the default command
    args = parser.parse_args(argv)
    for name in ("num_images", "steps"):
        if getattr(args, name) < 1:
            parser.exit(2, f"tiec: error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}\n")
    try:
        return _run(args)
    except TiecError as error:
        parser.exit(2, f"tiec: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
