"""``tiec bench`` on a demo model: quality against compute, side by side with peers.

For one demo model and one sampler, :func:`bench_demo` runs the grid of :mod:`tiec.bench.grid` on
the same noise and labels and measures, for each row:

- compute: MACs per image counted with ``FlopCounterMode``, encoder and decoder calls, wall time
  (median, min and max of ``repeats`` runs on a small batch), peak memory;
- fidelity to the reference (every step a key, same noise): PSNR, SSIM, max abs error;
- sample quality: Fréchet distance in the demo classifier's 64-d penultimate features against the
  1,797 real digits, and the classifier's accuracy on the requested class.

A peer that cannot run gets a row with its error text.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .._errors import TiecValueError
from .._files import atomic_path
from ..coordinates import auto_coordinate
from ..flops import count_flops
from ..progress import progress_bar
from .grid import GUIDANCE, SAMPLERS, Method, branch, config_method, fewer_steps, method_grid, part_filter
from .metrics import PeakMemory, frechet_distance, max_abs_error, psnr, ssim
from .report import machine

__all__ = ["DemoRunner", "bench_demo"]


@dataclass
class _Row:
    method: Method
    macs_per_image: Optional[int] = None
    encoder_calls: Optional[int] = None
    decoder_calls: Optional[int] = None
    seconds: list[float] = field(default_factory=list)
    peak_memory_bytes: Optional[int] = None
    psnr_db: Optional[float] = None
    ssim: Optional[float] = None
    max_abs_error: Optional[float] = None
    frechet_distance: Optional[float] = None
    accuracy: Optional[float] = None
    key_error: Optional[float] = None  # the quality monitor's mean over the quality samples' key steps
    fit: Optional[dict] = None  # a fitted row: the candidate chosen and every candidate's held-out PSNR
    error: Optional[str] = None

    def as_dict(self, reference_macs: Optional[int]) -> dict:
        row = {k: v for k, v in asdict(self).items() if k != "method"}
        row.update(name=self.method.name, family=self.method.family, steps=self.method.steps,
                   keys=self.method.keys, policy=self.method.policy if self.method.peer is None else None,
                   coordinate=None if self.method.peer else (auto_coordinate(self.method.policy)
                                                             if self.method.coordinate == "auto" else self.method.coordinate),
                   split_depth=self.method.depth,
                   branch_depth=self.method.branch_depth,
                   noise_injection=self.method.noise_injection, parallel_decode=self.method.parallel_decode,
                   peer=self.method.peer, peer_options=dict(self.method.peer_options))
        if self.seconds:
            row.update(seconds_median=statistics.median(self.seconds), seconds_min=min(self.seconds),
                       seconds_max=max(self.seconds))
        if self.macs_per_image is not None and reference_macs:
            row["mac_ratio"] = self.macs_per_image / reference_macs
        return row


class DemoRunner:
    """Samples a demo model with one method: tiec's loop, or a peer through :mod:`tiec.bench.peers`."""

    def __init__(self, model: str, sampler: str, device: str = "cpu", *, quick: bool = False) -> None:
        from ..demo import load

        self.model_name = model
        self.demo = load(model, device=device)
        self.classifier = load("digits-classifier", device=device)
        self.scheduler_name = SAMPLERS[sampler][0]
        self.device = device
        self.fits: dict[Method, Any] = {}
        self.fit_options = dict(num_inputs=8, held_out=8, rounds=1) if quick else {}

    def policy(self, method: Method) -> Any:
        """The method's blend policy: its spec, or for a ``fitted`` row the weights fitted (once per
        runner) for its keys on inputs the benchmark never measures (:func:`tiec.calibrate.fit.fit_demo`)."""
        if method.policy != "fitted":
            return method.policy
        if method not in self.fits:
            from ..calibrate.fit import fit_demo

            depth = method.depth if method.branch_depth is None else branch(method.branch_depth)
            self.fits[method] = fit_demo(self.demo, self.scheduler_name, method.steps, method.keys, depth=depth,
                                         **self.fit_options)
        return self.fits[method].policy

    @torch.no_grad()
    def sample(self, method: Method, labels: Sequence[int],
               seeds: Sequence[int]) -> tuple[torch.Tensor, Optional[int], int, list[float]]:
        """Images in [0, 1], the encoder and decoder calls, and the quality monitor's errors at the
        key steps (:attr:`tiec.SampleResult.key_errors`; none for a peer)."""
        from ..demo.sampling import sample_digits, to_unit

        if method.peer is not None:
            from .peers import run_peer

            return (*run_peer(self, method, labels, seeds), [])
        result = sample_digits(self.demo, labels, steps=method.steps, scheduler=self.scheduler_name,
                               keys=method.keys, policy=self.policy(method), guidance_scale=GUIDANCE, seeds=seeds,
                               parallel_decode=method.parallel_decode, noise_injection=method.noise_injection,
                               coordinate=method.coordinate, encoder_blocks=method.depth,
                               branch_depth=method.branch_depth)
        return to_unit(result.sample).cpu(), result.encoder_calls, result.decoder_calls, list(result.key_errors.values())

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, predicted labels) of images in [0, 1]."""
        x = images.to(self.device) * 2 - 1
        features = self.classifier.features(x)
        return features.cpu().double(), self.classifier.head(features).argmax(1).cpu()


def bench_demo(model: str = "dit-digits", sampler: str = "ddim", *, num_samples: int = 1000, timing_batch: int = 10,
               repeats: int = 5, batch_size: int = 250, quick: bool = False, progress: bool = True,
               methods: Optional[Sequence[Method]] = None, part: Optional[str] = None,
               cache: Optional[Path] = None, configs: Sequence[tuple[str, Any]] = ()) -> dict:
    """Run the grid on a demo model; returns the results (rows, settings, machine) as a dict.

    ``part`` runs only one family of rows, or one key set of it (:func:`part_filter`), plus the
    reference, so a grid too long for one sitting
    runs in pieces that :func:`combine` joins; ``cache`` is a folder where the reference samples are
    kept between pieces (they depend only on the model, sampler, step count and samples).
    ``configs`` adds a row per ``(label, config)`` (:class:`tiec.TiecConfig` or its file), of the
    family ``configured`` (``part="configured"`` runs only those).
    """
    from ..demo.data import NUM_CLASSES, load_digits

    if sampler not in SAMPLERS:
        raise TiecValueError(f"sampler {sampler!r} is unknown; expected one of {sorted(SAMPLERS)}")
    for name, value, minimum in (("num_samples", num_samples, 2), ("timing_batch", timing_batch, 1),
                                 ("repeats", repeats, 1), ("batch_size", batch_size, 1)):
        if value < minimum:
            raise TiecValueError(f"{name} must be >= {minimum}, got {value}")
    grid = list(methods) if methods is not None else method_grid(sampler, model=model, quick=quick)
    steps = next(m.steps for m in grid if m.family == "reference")
    grid += [config_method(config, steps, label) for label, config in configs]
    keep = part_filter(part, grid) if part is not None else None
    runner = DemoRunner(model, sampler, quick=quick)
    labels = [i % NUM_CLASSES for i in range(num_samples)]
    seeds = list(range(num_samples))
    real, _ = load_digits()
    real_features, _ = runner.classify(real / 2 + 0.5)
    start = time.perf_counter()

    rows = [_Row(m) for m in grid]
    with progress_bar(total=len(rows), enabled=progress, desc="MACs") as bar:
        for row in rows:
            _count(runner, row, labels, seeds)
            bar.update(1)
    reference = next(row for row in rows if row.method.family == "reference")
    if methods is None:
        extra = fewer_steps([(row.method, row.macs_per_image) for row in rows if row.macs_per_image],
                            reference.macs_per_image or 1, reference.method.steps)
        for method in extra:
            rows.append(_Row(method))
            _count(runner, rows[-1], labels, seeds)
    if keep is not None:
        kept = [row for row in rows if row is reference or keep(row.method)]
        if len(kept) == 1 and part.startswith("fewer-steps/"):  # a step range is checked once the rows exist
            counts = sorted(row.method.steps for row in rows if row.method.family == "fewer-steps")
            raise TiecValueError(f"part {part!r} selects no rows; the fewer-steps rows of this grid have the step "
                                 f"counts {counts}")
        rows = kept

    reference_images = _reference_samples(runner, reference.method, labels, seeds, batch_size, cache, progress)
    reference_features, reference_predicted = runner.classify(reference_images)
    with progress_bar(total=len(rows), enabled=progress, desc="methods") as bar:
        for row in rows:
            if row.error is None:
                _measure(runner, row, labels, seeds, reference_images, real_features, timing_batch, repeats, batch_size,
                         reference=(reference_images, reference_features, reference_predicted)
                         if row is reference else None)
            bar.update(1)
    return dict(model=model, sampler=sampler, steps=reference.method.steps, scheduler=runner.scheduler_name,
                guidance_scale=GUIDANCE, num_samples=num_samples, timing_batch=timing_batch, repeats=repeats,
                quick=quick, part=part, real_digits=len(real), machine=machine(),
                seconds=round(time.perf_counter() - start, 1),
                rows=[row.as_dict(reference.macs_per_image) for row in rows])


def _reference_samples(runner: DemoRunner, method: Method, labels: Sequence[int], seeds: Sequence[int],
                       batch_size: int, cache: Optional[Path], progress: bool = False) -> torch.Tensor:
    """The reference images, from ``cache`` when an earlier piece of the same grid stored them."""
    import diffusers
    from safetensors.torch import load_file, save_file

    meta = dict(model=runner.model_name, scheduler=runner.scheduler_name, steps=str(method.steps),
                samples=str(len(labels)), guidance=str(GUIDANCE), torch=torch.__version__,
                diffusers=diffusers.__version__)
    path = None
    if cache is not None:
        cache.mkdir(parents=True, exist_ok=True)
        path = cache / f"{runner.model_name}-{runner.scheduler_name}-{method.steps}-{len(labels)}-reference.safetensors"
        if path.is_file():
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as stored:
                if stored.metadata() == meta:
                    return load_file(str(path))["images"]
    images, _ = _samples(runner, method, labels, seeds, batch_size, progress=progress, desc="reference")
    if path is not None:
        with atomic_path(path) as tmp:
            save_file({"images": images.contiguous()}, str(tmp), metadata=meta)
    return images


def _error_text(error: Exception) -> str:
    """The error in one line (for a table cell): type and message, whitespace collapsed, at most 300 characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def _count(runner: DemoRunner, row: _Row, labels: Sequence[int], seeds: Sequence[int]) -> None:
    # blending costs no counted operation: a fitted row makes its linear twin's calls (and is fitted later)
    method = replace(row.method, policy="linear") if row.method.policy == "fitted" else row.method
    try:
        flops, (_, enc, dec, _) = count_flops(runner.sample, method, labels[:2], seeds[:2])
    except Exception as error:  # a peer that cannot run: its row says why
        row.error = _error_text(error)
        return
    row.macs_per_image, row.encoder_calls, row.decoder_calls = flops // 4, enc, dec


def _samples(runner: DemoRunner, method: Method, labels: Sequence[int], seeds: Sequence[int],
             batch_size: int, *, progress: bool = False, desc: str = "samples") -> tuple[torch.Tensor, list[float]]:
    """The images of ``method`` in batches, and the quality monitor's errors of every batch."""
    parts, errors = [], []
    with progress_bar(total=len(labels), enabled=progress, desc=desc) as bar:
        for i in range(0, len(labels), batch_size):
            images, _, _, batch_errors = runner.sample(method, labels[i:i + batch_size], seeds[i:i + batch_size])
            parts.append(images)
            errors += batch_errors
            bar.update(len(images))
    return torch.cat(parts), errors


def _measure(runner: DemoRunner, row: _Row, labels: Sequence[int], seeds: Sequence[int],
             reference_images: torch.Tensor, real_features: torch.Tensor, timing_batch: int, repeats: int,
             batch_size: int, reference: Optional[tuple] = None) -> None:
    method = row.method
    try:
        runner.policy(method)  # a fitted row's fit is not timed
        if method in runner.fits:
            result = runner.fits[method]
            row.fit = dict(chosen=result.chosen, held_out_psnr_db=result.table())
        for i in range(repeats):
            with PeakMemory() as peak:
                begin = time.perf_counter()
                runner.sample(method, labels[:timing_batch], seeds[:timing_batch])
                row.seconds.append(time.perf_counter() - begin)
            if i == 0:
                row.peak_memory_bytes = peak.bytes
        if not method.quality:
            return
        if reference is not None:
            images, features, predicted = reference
        else:
            images, errors = _samples(runner, method, labels, seeds, batch_size)
            features, predicted = runner.classify(images)
            row.key_error = sum(errors) / len(errors) if errors else None
    except Exception as error:
        row.error = _error_text(error)
        return
    row.psnr_db = psnr(images, reference_images)
    row.ssim = ssim(images, reference_images)
    row.max_abs_error = max_abs_error(images, reference_images)
    row.frechet_distance = frechet_distance(features, real_features)
    row.accuracy = (predicted == torch.tensor(labels)).double().mean().item()
