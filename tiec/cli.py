"""The ``tiec`` command line. ``tiec generate`` samples images with an accelerated sampler.

Errors in arguments print one line naming the argument and the fix and exit with code 2; nothing
half-written is left behind (files are written to a temporary name and renamed).
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, Optional, Sequence

import torch

from ._errors import TiecError
from ._files import write_atomic
from ._generate import DEMO_MODELS, DTYPES, Images, UsageError, check_device, check_keys_and_policy, make_job
from ._processes import process_state
from ._store import ImageStore, batches, pending
from .config import load_config
from .flops import count_flops
from .progress import progress_bar
from .schedules import get_schedule

__all__ = ["main"]

DEMO_DEFAULTS = dict(keys="every:3", policy="linear", guidance_scale=2.0)


def _output_dir(path: Path) -> Path:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):  # a name of its own: runs sharing --out do not collide
            pass
    except OSError as error:
        raise UsageError(f"--out {str(path)!r} cannot be written ({error.strerror}); choose a writable folder") from None
    return path


def _write_json(path: Path, record: dict) -> None:
    write_atomic(path, json.dumps(record, indent=2) + "\n")


def _measure(job: Any, keys: Any, batch: list[int], *, progress: bool, count_macs: bool) -> tuple[Images, dict]:
    """Run ``job`` on ``batch`` timed. With ``count_macs``, first run it under ``FlopCounterMode``
    (untimed, so the counter's overhead stays out of the time; it also warms the model up) and
    check that both runs agree."""
    macs = counted = None
    if count_macs:
        flops, counted = count_flops(job, keys, batch, progress=progress)
        macs = flops // 2
    start = time.perf_counter()
    images = job(keys, batch, progress=progress)
    seconds = time.perf_counter() - start
    if counted is not None and not torch.equal(counted.pixels, images.pixels):
        raise TiecError("the MAC-counting run made other images than the timed run; is the model deterministic?")
    return images, dict(encoder_calls=images.encoder_calls, decoder_calls=images.decoder_calls, macs=macs,
                        seconds=seconds)


def _add(total: dict, part: dict) -> None:
    for name, value in part.items():
        total[name] = None if value is None or total.get(name, 0) is None else total.get(name, 0) + value


def _work(job: Any, store: ImageStore, todo: list[list[int]], done: Mapping[int, Any], args: argparse.Namespace,
          keys: str) -> dict:
    """Make this process's batches; write the images not in ``done``. Returns summed statistics."""
    stats: dict[str, Any] = dict(images_generated=0, batches=len(todo))
    reference: dict[str, Any] = {}
    squared_error = pixels = 0.0
    key_steps: list[int] = []
    show_steps = not args.quiet and len(todo) == 1
    with progress_bar(total=sum(map(len, todo)), enabled=not args.quiet and len(todo) > 1, desc="images") as bar:
        for batch in todo:
            images, measured = _measure(job, keys, batch, progress=show_steps, count_macs=args.count_macs)
            _add(stats, measured)
            key_steps = list(images.key_steps)
            for k, index in enumerate(batch):
                if index not in done:
                    store.write(index, images.pixels[k])
                    stats["images_generated"] += 1
            if args.compare:
                ref_images, ref = _measure(job, None, batch, progress=show_steps, count_macs=args.count_macs)
                _add(reference, ref)
                squared_error += (images.pixels.double() - ref_images.pixels.double()).pow(2).sum().item()
                pixels += images.pixels.numel()
            bar.update(len(batch))
    stats["key_steps"] = key_steps
    if args.compare:
        stats["compare"] = dict(reference, squared_error=squared_error, pixels=pixels)
    return stats


def _merge(parts: list[dict]) -> dict:
    """One record from the processes' statistics; ``seconds`` is the slowest process's time."""
    merged: dict[str, Any] = {}
    for part in parts:
        _add(merged, {k: part[k] for k in ("images_generated", "encoder_calls", "decoder_calls", "macs")
                      if k in part})
    merged["seconds"] = max((part.get("seconds", 0.0) for part in parts), default=0.0)
    merged["key_steps"] = next((part["key_steps"] for part in parts if part["key_steps"]), [])
    compares = [part["compare"] for part in parts if "compare" in part]
    if compares:
        reference: dict[str, Any] = {}
        for c in compares:
            _add(reference, {k: c.get(k, 0) for k in ("encoder_calls", "decoder_calls", "macs")})
        seconds = max(c.get("seconds", 0.0) for c in compares)
        error = sum(c["squared_error"] for c in compares) / max(1.0, sum(c["pixels"] for c in compares))
        merged["compare"] = dict(
            seconds=round(seconds, 3), **reference,
            speedup=round(seconds / merged["seconds"], 3) if merged["seconds"] else None,
            mac_ratio=round(merged["macs"] / reference["macs"], 4) if merged.get("macs") and reference.get("macs") else None,
            psnr_db=round(10 * math.log10(1.0 / error), 2) if error > 0 else float("inf"),
        )
    merged["seconds"] = round(merged["seconds"], 3)
    return merged


def _caching_options(args: argparse.Namespace) -> dict[str, Any]:
    """keys, policy, coordinate, split depth and the configuration file they came from: --config;
    on a demo model with no caching option, the shipped calibrated configuration for its sampler
    and step count; otherwise the options and the uniform defaults."""
    explicit = {"--keys": args.keys, "--policy": args.policy, "--encoder-blocks": args.encoder_blocks,
                "--decoder-start": args.decoder_start}
    clash = [name for name, value in explicit.items() if value is not None]
    path = args.config
    if path is None and not clash and args.model in DEMO_MODELS:
        from .demo import calibrated_config

        path = calibrated_config(args.model, args.scheduler or "ddim", args.steps)
    if path is None:
        return dict(keys=args.keys or DEMO_DEFAULTS["keys"], policy=args.policy or DEMO_DEFAULTS["policy"],
                    coordinate="auto", encoder_blocks=args.encoder_blocks, decoder_start=args.decoder_start,
                    config=None)
    if clash:
        raise UsageError(f"--config {str(path)!r} sets keys, policy and split depth; drop {', '.join(clash)}")
    try:
        config = load_config(path)
    except TiecError as error:
        raise UsageError(f"--config: {error}") from None
    return dict(keys=config.keys, policy=config.policy, coordinate=config.coordinate,
                encoder_blocks=config.encoder_blocks, decoder_start=config.decoder_start, config=str(path))


def _generate(args: argparse.Namespace) -> Optional[dict]:
    """Run ``tiec generate`` in this process; the main process returns the record, the others ``None``."""
    state = process_state(args.device)
    is_demo = args.model in DEMO_MODELS
    caching = _caching_options(args)
    keys, policy = caching["keys"], caching["policy"]
    guidance = args.guidance_scale
    if guidance is None and is_demo:
        guidance = DEMO_DEFAULTS["guidance_scale"]
    check_keys_and_policy(keys, policy, args.steps)
    check_device(args.device)
    device = state.device_for(args.device)
    try:
        job = make_job(args.model, class_labels=args.class_labels, num_images=args.num_images, prompt=args.prompt,
                       negative_prompt=args.negative_prompt, steps=args.steps, scheduler=args.scheduler,
                       policy=policy, coordinate=caching["coordinate"], guidance_scale=guidance,
                       encoder_blocks=caching["encoder_blocks"], decoder_start=caching["decoder_start"],
                       parallel_decode=args.parallel_decode, seed=args.seed, device=device, dtype=args.dtype,
                       progress=not args.quiet and state.is_main_process)
    except UsageError as error:
        if args.config and str(error).startswith(("--encoder-blocks", "--decoder-start")):
            raise UsageError(f"--config {str(args.config)!r} sets a split depth of the other architecture: {error}") from None
        raise
    out = _output_dir(args.out)
    batch_size = args.batch_size or (250 if is_demo else 4)
    settings = {**job.settings, "device": args.device, "keys": str(get_schedule(keys)), "batch_size": batch_size}
    store = ImageStore(out, {k: v for k, v in settings.items() if k not in ("device",)})
    count = len(job)
    if state.is_main_process:
        store.prepare()
        for old in out.glob("stats-*.json"):
            old.unlink()
    state.wait_for_everyone()
    done = store.done()  # reads and checksums every finished image: once per process
    todo = pending(batches(count, batch_size), done)
    skipped = count - sum(len(batch) for batch in todo)
    with state.split(todo) as mine:
        stats = _work(job, store, mine, done, args, keys)
    _write_json(out / f"stats-{state.process_index}.json", stats)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    parts = [json.loads(path.read_text()) for path in sorted(out.glob("stats-*.json"))]
    for path in out.glob("stats-*.json"):
        path.unlink()
    merged = _merge(parts)
    record = {**settings, "config": caching["config"], "num_images": count, "processes": state.num_processes,
              "images_skipped": skipped,
              **merged, "index": "index.json", "grid": "grid.png"}
    store.write_index(count, record=record)
    store.write_grid(count, columns=10 if is_demo else 4)
    if args.npz:
        store.export_npz(count, out / "samples.npz")
        record["npz"] = "samples.npz"
    return record


def _run(args: argparse.Namespace) -> int:
    record = _generate(args)
    if record is None:
        return 0
    _write_json(args.out / "record.json", record)
    if not args.quiet:
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
        print(line)
        if record["config"]:
            print(f"keys {record['keys']}, {record['policy']}, from {record['config']}")
        print(f"wrote {args.out / 'grid.png'}, {record['num_images']} images in {args.out / 'images'}, "
              f"{args.out / 'index.json'} and {args.out / 'record.json'}")
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
    output = generate.add_argument_group("output")
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
    _add_bench(commands)
    _add_calibrate(commands)
    return parser


def _add_calibrate(commands: Any) -> None:
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
    calibrate.add_argument("--out", type=Path, default=Path("calibration"), help="output folder")
    calibrate.add_argument("--quiet", action="store_true")


def _calibrate(args: argparse.Namespace) -> int:
    from .calibrate import calibrate, recommend, write_calibration

    if not 0 < args.budget <= 1:
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
        _report_calibration(results, write_calibration(results, _output_dir(args.out)), args)
        return 0

    for name in ("calibration", "held_out", "batch_size"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
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
    out = _output_dir(args.out)
    results = calibrate(args.model, args.sampler, steps=args.steps, calibration=args.calibration,
                        held_out=args.held_out, budget=args.budget, time_budget=args.time_budget, quick=args.quick,
                        progress=not args.quiet, prompts=args.prompt, negative_prompt=args.negative_prompt,
                        class_labels=args.class_labels, guidance_scale=args.guidance_scale, device=args.device,
                        dtype=args.dtype, batch_size=args.batch_size)
    results["command"] = "tiec " + " ".join(args.argv)
    results["config"]["provenance"]["command"] = results["command"]
    _report_calibration(results, write_calibration(results, out), args)
    return 0


def _report_calibration(results: dict, paths: list[Path], args: argparse.Namespace) -> None:
    if args.quiet:
        return
    pick = results["recommended"]
    depth = "encoder blocks" if results["config"].get("encoder_blocks") is not None else "decoder start"
    fits = "within" if pick["mac_ratio"] <= results["budget"] else "(none fits: the cheapest) for"
    print(f"{results['evaluations']} evaluations in {results['seconds']} s; recommended {fits} "
          f"{results['budget']} of the MACs: keys {','.join(map(str, pick['keys']))}, {pick['policy']}, "
          f"{pick['coordinate']}, {depth} {pick['depth']}: {pick['mac_ratio']:.3f} of the MACs, PSNR "
          f"{pick['psnr_db']:.2f} dB (held out: {pick['held_out_psnr_db']:.2f} dB)")
    print("wrote " + ", ".join(str(p) for p in paths))


def _add_bench(commands: Any) -> None:
    bench = commands.add_parser(
        "bench", help="measure quality against compute, side by side with peers",
        description="Run the benchmark grid on a demo model (or time a full-size architecture with --speed) and "
                    "write <out>/<name>.json, .md and .png.")
    bench.add_argument("--model", default="dit-digits", choices=list(DEMO_MODELS), help="demo model (default dit-digits)")
    bench.add_argument("--sampler", default="ddim", choices=["ddim", "dpm"],
                       help="ddim: DDIM 50 steps; dpm: DPM-Solver++ 20 steps (default ddim)")
    bench.add_argument("--num-samples", type=int, default=1000, help="samples per method for the quality metrics")
    bench.add_argument("--timing-batch", type=int, default=10, help="images per timed run (default 10)")
    bench.add_argument("--repeats", type=int, default=5, help="timed runs per method (default 5)")
    bench.add_argument("--batch-size", type=int, default=250, help="images sampled together (default 250)")
    bench.add_argument("--part",
                       help="run one family of rows (and the reference): fasterdiffusion, tiec, configured, peers "
                            "or fewer-steps, or one key set of a family, e.g. tiec/every:3, or one policy on it, "
                            "e.g. tiec/every:3/linear, or fewer-steps rows by step count, e.g. fewer-steps/20-39; "
                            "the pieces in --out are joined into <model>-<sampler>.json/.md/.png after each piece")
    bench.add_argument("--config", type=Path, action="append", default=[],
                       help="add a row for this tiec configuration file (repeatable; --part configured runs only "
                            "these rows)")
    bench.add_argument("--speed", choices=["sd15-unet", "dit-xl-2"],
                       help="instead: wall time per step of a full-size architecture with random weights")
    bench.add_argument("--steps", type=int, default=10, help="--speed only: sampling steps per timed run (default 10)")
    bench.add_argument("--quick", action="store_true",
                       help="a small grid: 10 steps, 20 samples, 1 timed run of 4 images (minutes -> seconds)")
    bench.add_argument("--out", type=Path, default=Path("bench-results"), help="output folder (default bench-results)")
    bench.add_argument("--quiet", action="store_true", help="no progress bars, no summary")


def _load_bench_config(path: Path) -> Any:
    try:
        return load_config(path)
    except TiecError as error:
        raise UsageError(f"--config: {error}") from None


def _bench(args: argparse.Namespace) -> int:
    from .bench import bench_demo, bench_speed, combine, markdown_table, write_results

    for name in ("num_samples", "timing_batch", "repeats", "batch_size", "steps"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    out = _output_dir(args.out)
    command = "tiec " + " ".join(args.argv)
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
                             configs=[(path.stem, _load_bench_config(path)) for path in args.config])
        stem = f"{args.model}-{args.sampler}" + ("-quick" if args.quick else "")
    results["command"] = command
    if getattr(args, "part", None):
        write_results(results, out, f"{stem}-part-{re.sub(r'[^A-Za-z0-9-]', '', args.part.replace('/', '-'))}")
        pieces = [json.loads(path.read_text()) for path in sorted(out.glob(f"{stem}-part-*.json"))]
        results = combine([p for p in pieces if p["num_samples"] == results["num_samples"]])
    paths = write_results(results, out, stem)
    if not args.quiet:
        print(markdown_table(results))
        print("wrote " + ", ".join(str(p) for p in paths))
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the ``tiec`` command line; returns the exit code (2 for bad input)."""
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in ("generate", "bench", "calibrate", "-h", "--help"):
        argv = ["generate", *argv]  # generate is the default command
    args = parser.parse_args(argv)
    args.argv = argv
    if args.command in ("bench", "calibrate"):
        try:
            return _bench(args) if args.command == "bench" else _calibrate(args)
        except TiecError as error:
            parser.exit(2, f"tiec: error: {error}\n")
    for name in ("num_images", "steps", "batch_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            parser.exit(2, f"tiec: error: --{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}\n")
    try:
        return _run(args)
    except TiecError as error:
        parser.exit(2, f"tiec: error: {error}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
