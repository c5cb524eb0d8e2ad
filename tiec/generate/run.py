"""One ``tiec generate`` run: resolve the caching options, make the images batch by batch (in one
process or several), write them into the run folder and return the run's record.

The console front end (:mod:`tiec.cli.generate`) parses the options into a
:class:`GenerateOptions` and calls :func:`generate`; everything that decides what is sampled, and
how it is timed, counted and written, is here.
"""

from __future__ import annotations

import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .._errors import TiecError, UsageError
from .._files import json_text, writable_folder, write_atomic
from ..config import load_config
from ..flops import count_flops
from ..progress import progress_bar
from ..schedules import get_schedule
from .jobs import DEMO_MODELS, Images, check_device, check_keys_and_policy, is_stochastic, make_job
from .processes import process_state
from .run_folder import ImageStore, batches, pending

__all__ = ["DEMO_DEFAULTS", "GenerateOptions", "caching_options", "check_options", "generate", "write_record"]

#: What a demo model samples with when neither a configuration nor an option says otherwise.
DEMO_DEFAULTS = dict(keys="every:3", policy="linear", guidance_scale=2.0)
#: A cached run with a stochastic scheduler that measured below this PSNR to every step a key
#: (``tiec bench --stochastic``) is refused: its images are noise or other digits.
USABLE_PSNR_DB = 20.0


@dataclass(frozen=True)
class GenerateOptions:
    """The options of one run, as ``tiec generate`` takes them (``None``: the default the
    command's help names). ``out`` is the run folder."""

    model: str = "dit-digits"
    prompt: Optional[str] = None
    negative_prompt: Optional[str] = None
    class_labels: Optional[str] = None
    num_images: int = 1
    seed: int = 0
    device: str = "cpu"
    dtype: str = "float32"
    steps: Optional[int] = None  # None: 20 for the DPM-Solver++ schedulers and UniPC, else 50
    scheduler: Optional[str] = None
    config: Optional[Path] = None
    keys: Optional[str] = None
    policy: Optional[str] = None
    encoder_blocks: Optional[int] = None
    decoder_start: Optional[int] = None
    branch_depth: Optional[int] = None
    parallel_decode: bool = False
    guidance_scale: Optional[float] = None
    out: Path = Path("outputs")
    batch_size: Optional[int] = None
    npz: bool = False
    compare: bool = False
    count_macs: bool = True
    quiet: bool = False


def _measure(job: Any, keys: Any, batch: list[int], *, label: Optional[str], count_macs: bool) -> tuple[Images, dict]:
    """Run ``job`` on ``batch`` timed. With ``count_macs``, first run it under ``FlopCounterMode``
    (untimed, so the counter's overhead stays out of the time; it also warms the model up) and
    check that both runs agree. ``label`` names the step bars (``None``: no bars)."""
    macs = counted = None
    if count_macs:
        flops, counted = count_flops(job, keys, batch, progress=f"{label}: MACs" if label else False)
        macs = flops // 2
    start = time.perf_counter()
    images = job(keys, batch, progress=label or False)
    seconds = time.perf_counter() - start
    if counted is not None and not torch.equal(counted.pixels, images.pixels):
        raise TiecError("the MAC-counting run made other images than the timed run; is the model deterministic?")
    return images, dict(encoder_calls=images.encoder_calls, decoder_calls=images.decoder_calls, macs=macs,
                        seconds=seconds, key_error_sum=sum(images.key_errors.values()),
                        key_error_count=len(images.key_errors))


def _add(total: dict, part: dict) -> None:
    for name, value in part.items():
        total[name] = None if value is None or total.get(name, 0) is None else total.get(name, 0) + value


def _work(job: Any, store: ImageStore, todo: list[list[int]], done: Mapping[int, Any], options: GenerateOptions,
          keys: str) -> dict:
    """Make this process's batches; write the images not in ``done``. Returns summed statistics."""
    stats: dict[str, Any] = dict(images_generated=0, batches=len(todo))
    reference: dict[str, Any] = {}
    squared_error = pixels = 0.0
    key_steps: list[int] = []
    show_steps = not options.quiet and len(todo) == 1
    with progress_bar(total=sum(map(len, todo)), enabled=not options.quiet and len(todo) > 1, desc="images") as bar:
        for batch in todo:
            images, measured = _measure(job, keys, batch, label="cached" if show_steps else None,
                                        count_macs=options.count_macs)
            _add(stats, measured)
            key_steps = list(images.key_steps)
            for k, index in enumerate(batch):
                if index not in done:
                    store.write(index, images.pixels[k])
                    stats["images_generated"] += 1
            if options.compare:
                ref_images, ref = _measure(job, None, batch, label="every step a key" if show_steps else None,
                                           count_macs=options.count_macs)
                _add(reference, {k: v for k, v in ref.items() if not k.startswith("key_error")})
                squared_error += (images.pixels.double() - ref_images.pixels.double()).pow(2).sum().item()
                pixels += images.pixels.numel()
            bar.update(len(batch))
    stats["key_steps"] = key_steps
    if options.compare:
        stats["compare"] = dict(reference, squared_error=squared_error, pixels=pixels)
    return stats


def _merge(parts: list[dict]) -> dict:
    """One record from the processes' statistics; ``seconds`` is the slowest process's time."""
    merged: dict[str, Any] = {}
    for part in parts:
        _add(merged, {k: part[k] for k in ("images_generated", "encoder_calls", "decoder_calls", "macs",
                                           "key_error_sum", "key_error_count") if k in part})
    for name in ("encoder_calls", "decoder_calls", "macs"):  # None: nothing was sampled by this run
        merged.setdefault(name, None)
    merged["images_generated"] = merged.get("images_generated", 0)
    error_sum, error_count = merged.pop("key_error_sum", None), merged.pop("key_error_count", None)
    merged["key_error"] = round(error_sum / error_count, 6) if error_count else None
    merged["seconds"] = max((part.get("seconds", 0.0) for part in parts), default=0.0)
    merged["key_steps"] = next((part["key_steps"] for part in parts if part["key_steps"]), [])
    compares = [part["compare"] for part in parts if "compare" in part]
    if compares:
        reference: dict[str, Any] = {}
        for c in compares:
            _add(reference, {k: c.get(k, 0) for k in ("encoder_calls", "decoder_calls", "macs")})
        seconds = max(c.get("seconds", 0.0) for c in compares)
        error = sum(c["squared_error"] for c in compares) / max(1.0, sum(c["pixels"] for c in compares))
        macs, reference_macs = merged.get("macs"), reference.get("macs")
        merged["compare"] = dict(
            seconds=round(seconds, 3), **reference,
            speedup=round(seconds / merged["seconds"], 3) if merged["seconds"] else None,
            mac_ratio=round(macs / reference_macs, 4) if macs and reference_macs else None,
            psnr_db=round(10 * math.log10(1.0 / error), 2) if error > 0 else float("inf"),
        )
    merged["seconds"] = round(merged["seconds"], 3)
    return merged


def check_options(options: GenerateOptions) -> None:
    """The options that need no model, checked before anything is loaded or written."""
    for name in ("num_images", "steps", "batch_size"):
        value = getattr(options, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    for name in ("keys", "policy", "prompt"):
        value = getattr(options, name)
        if value is not None and not value.strip():
            raise UsageError(f"--{name} is empty; leave it out for the default, or give a value")
    if options.guidance_scale is not None and not math.isfinite(options.guidance_scale):
        raise UsageError(f"--guidance-scale {options.guidance_scale} is not a finite number; e.g. 2.0")


def caching_options(options: GenerateOptions) -> dict[str, Any]:
    """keys, policy, coordinate, split depth and the configuration file they came from: ``config``;
    on a demo model with no caching option, the shipped calibrated configuration for its sampler
    and step count; otherwise the options and the uniform defaults.

    A configuration made for another step count or sampler is refused (its key steps and blend
    belong to those times).
    """
    explicit = {"--keys": options.keys, "--policy": options.policy, "--encoder-blocks": options.encoder_blocks,
                "--decoder-start": options.decoder_start, "--branch-depth": options.branch_depth}
    clash = [name for name, value in explicit.items() if value is not None]
    path = options.config
    if path is None and not clash and options.model in DEMO_MODELS:
        from ..demo import calibrated_config

        path = calibrated_config(options.model, options.scheduler or "ddim", options.steps)
    if path is None:
        return dict(keys=options.keys or DEMO_DEFAULTS["keys"], policy=options.policy or DEMO_DEFAULTS["policy"],
                    coordinate="auto", encoder_blocks=options.encoder_blocks, decoder_start=options.decoder_start,
                    branch_depth=options.branch_depth, config=None)
    if clash:
        raise UsageError(f"--config {str(path)!r} sets keys, policy and split depth; drop {', '.join(clash)}")
    try:
        config = load_config(path)
    except TiecError as error:
        raise UsageError(f"--config: {error}") from None
    if config.steps is not None and config.steps != options.steps:
        remake = "fit" if config.weights is not None else "calibrate"  # tiec fit / tiec calibrate
        raise UsageError(f"--config {str(path)!r} was made for {config.steps} steps, not --steps {options.steps}; "
                         f"run with --steps {config.steps}, or {remake} for {options.steps} steps")
    scheduler = options.scheduler or ("ddim" if options.model in DEMO_MODELS else None)
    if config.scheduler is not None and scheduler is not None and config.scheduler != scheduler:
        raise UsageError(f"--config {str(path)!r} was made for the {config.scheduler} scheduler, not {scheduler}; "
                         f"run with --scheduler {config.scheduler}, or calibrate for {scheduler}")
    return dict(keys=config.keys, policy=config.blend_policy(), coordinate=config.coordinate,
                encoder_blocks=config.encoder_blocks, decoder_start=config.decoder_start,
                branch_depth=config.branch_depth, config=str(path))


def generate(options: GenerateOptions) -> Optional[dict]:
    """Run ``tiec generate`` in this process; the main process writes the run's record
    (``record.json``, also in ``index.json``) and returns it, the others return ``None``.

    A rerun of a finished run changes nothing and returns the earlier record with
    ``"already_done": True`` -- unless it asks for ``compare`` and the earlier run did not, then
    every batch is sampled again (no image is rewritten) to measure the comparison.

    Raises:
        UsageError: bad options, before any model is loaded or any file written.
    """
    from ..calibrate.search import default_steps

    start = time.perf_counter()
    check_options(options)
    options = replace(options, steps=options.steps or default_steps(options.scheduler))
    state = process_state(options.device)
    is_demo = options.model in DEMO_MODELS
    caching = caching_options(options)
    keys, policy = caching["keys"], caching["policy"]
    guidance = options.guidance_scale
    if guidance is None and is_demo:
        guidance = DEMO_DEFAULTS["guidance_scale"]
    check_keys_and_policy(keys, policy, options.steps)
    check_device(options.device)
    device = state.device_for(options.device)
    try:
        job = make_job(options.model, class_labels=options.class_labels, num_images=options.num_images,
                       prompt=options.prompt, negative_prompt=options.negative_prompt, steps=options.steps,
                       scheduler=options.scheduler, policy=policy, coordinate=caching["coordinate"],
                       guidance_scale=guidance, encoder_blocks=caching["encoder_blocks"],
                       decoder_start=caching["decoder_start"], branch_depth=caching["branch_depth"],
                       parallel_decode=options.parallel_decode,
                       seed=options.seed, device=device, dtype=options.dtype,
                       progress=not options.quiet and state.is_main_process)
    except UsageError as error:
        if options.config and str(error).startswith(("--encoder-blocks does not apply",
                                                      "--decoder-start does not apply",
                                                      "--branch-depth does not apply")):
            raise UsageError(f"--config {str(options.config)!r} sets a split depth of the other architecture: "
                             f"{error}") from None
        raise
    warning = stochastic_check(options, job, keys, policy)
    if warning and not options.quiet and state.is_main_process:
        print(f"tiec: warning: {warning}", file=sys.stderr)
    out = writable_folder(options.out)
    batch_size = options.batch_size or (250 if is_demo else 4)
    settings = {**job.settings, "device": options.device, "keys": str(get_schedule(keys)), "batch_size": batch_size}
    store = ImageStore(out, {k: v for k, v in settings.items() if k not in ("device",)})
    count = len(job)
    if state.is_main_process:
        store.prepare()
        for old in out.glob("stats-*.json"):
            old.unlink()
    state.wait_for_everyone()
    done = store.done()  # reads and checksums every finished image: once per process
    todo = pending(batches(count, batch_size), done)
    earlier = _finished_record(out, store.settings) if not todo else None
    if earlier is not None and not (options.compare and "compare" not in earlier):
        if not state.is_main_process:
            return None
        if options.npz and "npz" not in earlier:
            store.export_npz(count, out / "samples.npz")
            earlier["npz"] = "samples.npz"
            write_record(out, earlier)
        return {**earlier, "already_done": True}
    if not todo and options.compare:
        todo = batches(count, batch_size)  # measure the comparison; every image is kept as it is
    skipped = sum(1 for i in range(count) if i in done)
    with state.split(todo) as mine:
        stats = _work(job, store, mine, done, options, keys)
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
    record["wall_seconds"] = round(time.perf_counter() - start, 3)  # loading the model included
    store.write_index(count, record=record)
    store.write_grid(count, columns=10 if is_demo else 4)
    if options.npz:
        store.export_npz(count, out / "samples.npz")
        record["npz"] = "samples.npz"
    write_record(out, record)
    return record


def stochastic_check(options: GenerateOptions, job: Any, keys: str, policy: str) -> Optional[str]:
    """A cached run with a scheduler that draws new noise every step (DDPM, Euler ancestral).

    On a demo model, refused when ``tiec bench --study stochastic`` measured these steps, keys and
    policy below :data:`USABLE_PSNR_DB`; a warning line (returned) when it did not measure them, or
    on a pipeline. ``None`` when there is nothing to say.
    """
    steps = options.steps
    if not is_stochastic(job.scheduler) or len(get_schedule(keys).key_steps(steps)) == steps:
        return None
    name, schedule = job.settings["scheduler"], str(get_schedule(keys))
    news = f"--scheduler {name} draws new noise at every step, which features cached at earlier steps do not hold"
    if options.model not in DEMO_MODELS:
        return f"{news}; check the images with --compare (docs/benchmarks.md, stochastic schedulers)"
    from ..demo import stochastic_result

    rows = stochastic_result(options.model, name)
    exact = [r for r in rows if (r["steps"], r["keys"], r["policy"]) == (steps, schedule, policy)]
    if exact and exact[0]["psnr_db"] >= USABLE_PSNR_DB:
        return None
    if exact:
        raise UsageError(f"{news}: on {options.model}, {steps} steps with keys {schedule} and {policy} measured "
                         f"{exact[0]['psnr_db']:.1f} dB to every step a key (tiec bench --study stochastic); use "
                         "denser keys, --policy hold, --keys all, or a deterministic scheduler (ddim, dpm, euler)")
    best = max(rows, key=lambda r: r["psnr_db"], default=None)
    measured = "" if best is None else (f"; not measured for these settings (at {best['steps']} steps, keys "
                                        f"{best['keys']} with {best['policy']} measured {best['psnr_db']:.1f} dB)")
    return f"{news}{measured}; check the images with --compare"


def _finished_record(out: Path, settings: Mapping[str, Any]) -> Optional[dict]:
    """The ``record.json`` an earlier run with these settings left, or ``None``."""
    try:
        record = json.loads((out / "record.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or any(record.get(k) != v for k, v in json.loads(json.dumps(settings)).items()):
        return None
    return record


def write_record(out: Path, record: dict) -> Path:
    """Write a run's ``record.json`` into its folder."""
    path = out / "record.json"
    _write_json(path, record)
    return path


def _write_json(path: Path, record: dict) -> None:
    write_atomic(path, json_text(record))
