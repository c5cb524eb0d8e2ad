"""One ``tiec generate`` run: resolve the caching options, make the images batch by batch (in one
process or several), write them into the run folder and return the run's record.

The console front end (:mod:`tiec.cli.generate`) parses the options into a
:class:`GenerateOptions` and calls :func:`generate`; everything that decides what is sampled, and
how it is timed, counted and written, is here.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from .._errors import TiecError, UsageError
from .._files import writable_folder, write_atomic
from ..config import load_config
from ..flops import count_flops
from ..progress import progress_bar
from ..schedules import get_schedule
from .jobs import DEMO_MODELS, Images, check_device, check_keys_and_policy, make_job
from .processes import process_state
from .run_folder import ImageStore, batches, pending

__all__ = ["DEMO_DEFAULTS", "GenerateOptions", "generate", "write_record"]

#: What a demo model samples with when neither a configuration nor an option says otherwise.
DEMO_DEFAULTS = dict(keys="every:3", policy="linear", guidance_scale=2.0)


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
    steps: int = 50
    scheduler: Optional[str] = None
    config: Optional[Path] = None
    keys: Optional[str] = None
    policy: Optional[str] = None
    encoder_blocks: Optional[int] = None
    decoder_start: Optional[int] = None
    parallel_decode: bool = False
    guidance_scale: Optional[float] = None
    out: Path = Path("outputs")
    batch_size: Optional[int] = None
    npz: bool = False
    compare: bool = False
    count_macs: bool = True
    quiet: bool = False


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
            images, measured = _measure(job, keys, batch, progress=show_steps, count_macs=options.count_macs)
            _add(stats, measured)
            key_steps = list(images.key_steps)
            for k, index in enumerate(batch):
                if index not in done:
                    store.write(index, images.pixels[k])
                    stats["images_generated"] += 1
            if options.compare:
                ref_images, ref = _measure(job, None, batch, progress=show_steps, count_macs=options.count_macs)
                _add(reference, ref)
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
        macs, reference_macs = merged.get("macs"), reference.get("macs")
        merged["compare"] = dict(
            seconds=round(seconds, 3), **reference,
            speedup=round(seconds / merged["seconds"], 3) if merged["seconds"] else None,
            mac_ratio=round(macs / reference_macs, 4) if macs and reference_macs else None,
            psnr_db=round(10 * math.log10(1.0 / error), 2) if error > 0 else float("inf"),
        )
    merged["seconds"] = round(merged["seconds"], 3)
    return merged


def caching_options(options: GenerateOptions) -> dict[str, Any]:
    """keys, policy, coordinate, split depth and the configuration file they came from: ``config``;
    on a demo model with no caching option, the shipped calibrated configuration for its sampler
    and step count; otherwise the options and the uniform defaults."""
    explicit = {"--keys": options.keys, "--policy": options.policy, "--encoder-blocks": options.encoder_blocks,
                "--decoder-start": options.decoder_start}
    clash = [name for name, value in explicit.items() if value is not None]
    path = options.config
    if path is None and not clash and options.model in DEMO_MODELS:
        from ..demo import calibrated_config

        path = calibrated_config(options.model, options.scheduler or "ddim", options.steps)
    if path is None:
        return dict(keys=options.keys or DEMO_DEFAULTS["keys"], policy=options.policy or DEMO_DEFAULTS["policy"],
                    coordinate="auto", encoder_blocks=options.encoder_blocks, decoder_start=options.decoder_start,
                    config=None)
    if clash:
        raise UsageError(f"--config {str(path)!r} sets keys, policy and split depth; drop {', '.join(clash)}")
    try:
        config = load_config(path)
    except TiecError as error:
        raise UsageError(f"--config: {error}") from None
    return dict(keys=config.keys, policy=config.policy, coordinate=config.coordinate,
                encoder_blocks=config.encoder_blocks, decoder_start=config.decoder_start, config=str(path))


def generate(options: GenerateOptions) -> Optional[dict]:
    """Run ``tiec generate`` in this process; the main process returns the run's record (also
    written to ``index.json``, see :func:`write_record` for ``record.json``), the others ``None``.

    Raises:
        UsageError: bad options, before any model is loaded.
    """
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
        job = make_job(options.model, class_labels=options.class_labels, num_images=options.num_images, prompt=options.prompt,
                       negative_prompt=options.negative_prompt, steps=options.steps, scheduler=options.scheduler,
                       policy=policy, coordinate=caching["coordinate"], guidance_scale=guidance,
                       encoder_blocks=caching["encoder_blocks"], decoder_start=caching["decoder_start"],
                       parallel_decode=options.parallel_decode, seed=options.seed, device=device, dtype=options.dtype,
                       progress=not options.quiet and state.is_main_process)
    except UsageError as error:
        if options.config and str(error).startswith(("--encoder-blocks", "--decoder-start")):
            raise UsageError(f"--config {str(options.config)!r} sets a split depth of the other architecture: {error}") from None
        raise
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
    skipped = count - sum(len(batch) for batch in todo)
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
    store.write_index(count, record=record)
    store.write_grid(count, columns=10 if is_demo else 4)
    if options.npz:
        store.export_npz(count, out / "samples.npz")
        record["npz"] = "samples.npz"
    return record


def write_record(out: Path, record: dict) -> Path:
    """Write the run's ``record.json`` (what :func:`generate` returned) into the run folder."""
    path = out / "record.json"
    _write_json(path, record)
    return path


def _write_json(path: Path, record: dict) -> None:
    write_atomic(path, json.dumps(record, indent=2) + "\n")
