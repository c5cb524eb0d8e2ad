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

from ._errors import TiecError

__all__ = ["main"]

DEMO_DEFAULTS = dict(keys="every:3", policy="linear", guidance_scale=2.0)


class UsageError(TiecError):
    """Bad command-line input: reported in one line with exit code 2."""


def _labels(text: Optional[str], num_classes: int) -> list[int]:
    if text is None:
        return list(range(num_classes))
    try:
        labels = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise UsageError(f"--class-labels {text!r} is not a comma-separated list of integers, e.g. 0,3,7") from None
    bad = [label for label in labels if not 0 <= label < num_classes]
    if bad or not labels:
        raise UsageError(f"--class-labels {text!r}: labels must be in [0, {num_classes - 1}], got {bad or 'none'}")
    return labels


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


def _generate_demo(args: argparse.Namespace) -> dict:
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from .demo import load
    from .demo.sampling import sample_digits, save_grid, to_unit
    from .policies import get_policy
    from .schedules import get_schedule

    from .demo.data import NUM_CLASSES

    labels = _labels(args.class_labels, NUM_CLASSES) * args.num_images
    keys = args.keys or DEMO_DEFAULTS["keys"]
    policy = args.policy or DEMO_DEFAULTS["policy"]
    guidance = DEMO_DEFAULTS["guidance_scale"] if args.guidance_scale is None else args.guidance_scale
    try:  # validate before any work, naming the option
        get_schedule(keys).key_steps(args.steps)
    except TiecError as error:
        raise UsageError(f"--keys {keys!r}: {error}") from None
    try:
        get_policy(policy)
    except TiecError as error:
        raise UsageError(f"--policy {policy!r}: {error}") from None
    out = _output_dir(args.out)
    demo = load(args.model, device=args.device)
    settings = dict(steps=args.steps, scheduler=args.scheduler, policy=policy, guidance_scale=guidance,
                    encoder_blocks=args.encoder_blocks, parallel_decode=args.parallel_decode, seed=args.seed)

    def run(run_keys: Any) -> tuple[Any, float, int]:
        with FlopCounterMode(display=False) as counter:
            start = time.perf_counter()
            result = sample_digits(demo, labels, keys=run_keys, progress=not args.quiet, **settings)
            seconds = time.perf_counter() - start
        return result, seconds, counter.get_total_flops()

    result, seconds, flops = run(keys)
    images = to_unit(result.sample)
    save_grid(images, out / "grid.png", columns=10 if len(labels) >= 10 else len(labels))
    record = dict(model=args.model, class_labels=labels, keys=str(get_schedule(keys)), key_steps=list(result.key_steps),
                  encoder_calls=result.encoder_calls, decoder_calls=result.decoder_calls, macs=flops // 2,
                  seconds=round(seconds, 3), coordinate=result.coordinate, **settings)
    if args.compare:
        reference, ref_seconds, ref_flops = run(None)
        error = (to_unit(reference.sample) - images).pow(2).mean().item()
        record["compare"] = dict(seconds=round(ref_seconds, 3), macs=ref_flops // 2,
                                 speedup=round(ref_seconds / seconds, 3), mac_ratio=round(flops / ref_flops, 4),
                                 psnr_db=round(10 * torch.log10(torch.tensor(1.0 / max(error, 1e-12))).item(), 2))
    return record


def _generate(args: argparse.Namespace) -> int:
    from .demo import MODELS

    if args.model in MODELS and args.model != "digits-classifier":
        record = _generate_demo(args)
    elif Path(args.model).is_dir():
        raise UsageError(f"--model {args.model!r}: diffusers pipeline folders are not supported by this "
                         "version yet; use the demo model 'dit-digits'")
    else:
        raise UsageError(f"--model {args.model!r} is neither a demo model ({', '.join(m for m in MODELS if m != 'digits-classifier')}) "
                         "nor a folder")
    _write_json(args.out / "record.json", record)
    if not args.quiet:
        line = f"{len(record['class_labels'])} images in {record['seconds']:.2f} s, " \
               f"{record['encoder_calls']} encoder / {record['decoder_calls']} decoder calls"
        if "compare" in record:
            c = record["compare"]
            line += f"; every step a key took {c['seconds']:.2f} s: speed-up {c['speedup']:.2f}x, PSNR {c['psnr_db']} dB"
        print(line)
        print(f"wrote {args.out / 'grid.png'} and {args.out / 'record.json'}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tiec", description="Temporal-Interpolated Encoder Caching")
    commands = parser.add_subparsers(dest="command")
    generate = commands.add_parser("generate", help="sample images with an accelerated sampler")
    generate.add_argument("--model", default="dit-digits", help="a demo model name (default: dit-digits)")
    generate.add_argument("--class-labels", help="comma-separated class labels (default: every class)")
    generate.add_argument("--num-images", type=int, default=1, help="images per label (default 1)")
    generate.add_argument("--steps", type=int, default=50)
    generate.add_argument("--scheduler", default="ddim", choices=["ddim", "dpm", "euler", "heun", "unipc", "ddpm"])
    generate.add_argument("--keys", help="'every:N', a preset name, 'all' or a list like 0,1,5")
    generate.add_argument("--policy", help="hold, linear or polynomial(k)")
    generate.add_argument("--encoder-blocks", type=int, help="DiT blocks in the encoder (default: all)")
    generate.add_argument("--parallel-decode", action="store_true")
    generate.add_argument("--guidance-scale", type=float)
    generate.add_argument("--seed", type=int, default=0)
    generate.add_argument("--out", type=Path, default=Path("outputs"))
    generate.add_argument("--device", default="cpu")
    generate.add_argument("--compare", action="store_true", help="also run every step a key and report the speed-up")
    generate.add_argument("--quiet", action="store_true")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["generate", *(argv or [])])
    if args.num_images < 1 or args.steps < 1:
        parser.exit(2, "tiec: error: --num-images and --steps must be >= 1\n")
    try:
        return _generate(args)
    except TiecError as error:
        parser.exit(2, f"tiec: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
