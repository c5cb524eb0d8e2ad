"""``tiec bench``: quality against compute on the demo models, side by side with peers.

For one demo model and one sampler, :func:`bench_demo` runs a grid of :class:`Method` s on the same
noise and labels and measures, for each:

- compute: MACs per image counted with ``FlopCounterMode``, encoder and decoder calls, wall time
  (median, min and max of ``repeats`` runs on a small batch), peak memory;
- fidelity to the reference (every step a key, same noise): PSNR, SSIM, max abs error;
- sample quality: Fréchet distance in the demo classifier's 64-d penultimate features against the
  1,797 real digits, and the classifier's accuracy on the requested class.

The grid: the reference; the same sampler with fewer steps at the MACs of each cached run;
FasterDiffusion's reuse (``hold``) and TIEC's ``linear``, ``polynomial(2)``, ``lookahead`` and
``lookahead-accept`` on the FasterDiffusion preset and on uniform keys every 2, 3 and 5 steps;
prior noise injection; parallel decoding (wall time only); and peers from their own packages
(:mod:`tiec._peers`). A peer that cannot run gets a row with its error text.

:func:`bench_speed` times full-size architectures with random weights (speed does not depend on
weights) against the MAC-count bound ``1 / (1 - encoder_share · (1 - key_fraction))``.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from ._errors import TiecValueError
from ._files import atomic_path, save_figure, write_atomic
from .flops import count_flops
from .metrics import PeakMemory, frechet_distance, max_abs_error, psnr, ssim
from .progress import progress_bar

__all__ = ["Method", "method_grid", "bench_demo", "bench_speed", "combine", "write_results", "markdown_table", "PARTS",
           "SAMPLERS"]

#: ``--sampler`` name: (scheduler name, reference step count, FasterDiffusion preset).
SAMPLERS = {"ddim": ("ddim", 50, "ddim-50"), "dpm": ("dpm", 20, "dpm-solver-20")}
GUIDANCE = 2.0


@dataclass(frozen=True)
class Method:
    """One row of the benchmark."""

    name: str
    family: str  # reference | fewer-steps | fasterdiffusion | tiec | configured | peer
    steps: int
    keys: str = "all"
    policy: str = "linear"
    noise_injection: bool = False
    parallel_decode: bool = False
    peer: Optional[str] = None
    peer_options: tuple[tuple[str, Any], ...] = ()
    quality: bool = True  # False: a wall-time row (its images equal another row's)
    coordinate: str = "auto"
    depth: Optional[int] = None  # split depth: DiT encoder blocks / UNet decoder start (None: the default)


def config_method(config: Any, steps: int, label: str) -> Method:
    """A row for a :class:`tiec.TiecConfig` (``tiec bench --config``)."""
    from .config import load_config

    loaded = load_config(config)
    depth = loaded.encoder_blocks if loaded.encoder_blocks is not None else loaded.decoder_start
    return Method(f"configured ({label}): keys {loaded.keys}, {loaded.policy}", "configured", steps, loaded.keys,
                  loaded.policy, coordinate=loaded.coordinate, depth=depth)


def method_grid(sampler: str, *, model: str, quick: bool = False) -> list[Method]:
    """The methods of a run, before the fewer-steps rows (those need the cached runs' MACs)."""
    _, steps, preset = SAMPLERS[sampler]
    if quick:
        steps = 10
    key_sets = ["every:3"] if quick else [preset, "every:2", "every:3", "every:5"]
    policies = ["linear", "lookahead"] if quick else ["linear", "polynomial(2)", "lookahead", "lookahead-accept"]
    methods = [Method("reference (every step a key)", "reference", steps)]
    for keys in key_sets:
        methods.append(Method(f"FasterDiffusion hold, keys {keys}", "fasterdiffusion", steps, keys, "hold"))
        methods += [Method(f"TIEC {policy}, keys {keys}", "tiec", steps, keys, policy) for policy in policies]
    if not quick:
        for policy in ("hold", "linear"):
            family = "fasterdiffusion" if policy == "hold" else "tiec"
            methods.append(Method(f"{'FasterDiffusion hold' if policy == 'hold' else 'TIEC linear'}, keys every:3, "
                                  "noise injection", family, steps, "every:3", policy, noise_injection=True))
    methods.append(Method("TIEC linear, keys every:3, parallel decoding", "tiec", steps, "every:3", "linear",
                          parallel_decode=True, quality=False))
    from ._peers import peer_methods

    methods += peer_methods(model, steps, quick=quick)
    return methods


def fewer_steps(methods_macs: Sequence[tuple[Method, int]], reference_macs: int, steps: int) -> list[Method]:
    """The same sampler with ``round(steps · macs / reference_macs)`` steps for each cached run's MACs."""
    counts = sorted({max(1, round(steps * macs / reference_macs)) for method, macs in methods_macs
                     if method.family in ("fasterdiffusion", "tiec", "configured", "peer") and method.quality})
    return [Method(f"fewer steps: {n}", "fewer-steps", n) for n in counts if n < steps]


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
    error: Optional[str] = None

    def as_dict(self, reference_macs: Optional[int]) -> dict:
        row = {k: v for k, v in asdict(self).items() if k != "method"}
        row.update(name=self.method.name, family=self.method.family, steps=self.method.steps,
                   keys=self.method.keys, policy=self.method.policy if self.method.peer is None else None,
                   coordinate=self.method.coordinate, split_depth=self.method.depth,
                   noise_injection=self.method.noise_injection, parallel_decode=self.method.parallel_decode,
                   peer=self.method.peer, peer_options=dict(self.method.peer_options))
        if self.seconds:
            row.update(seconds_median=statistics.median(self.seconds), seconds_min=min(self.seconds),
                       seconds_max=max(self.seconds))
        if self.macs_per_image is not None and reference_macs:
            row["mac_ratio"] = self.macs_per_image / reference_macs
        return row


class DemoRunner:
    """Samples a demo model with one method: tiec's loop, or a peer through :mod:`tiec._peers`."""

    def __init__(self, model: str, sampler: str, device: str = "cpu") -> None:
        from .demo import load

        self.model_name = model
        self.demo = load(model, device=device)
        self.classifier = load("digits-classifier", device=device)
        self.scheduler_name = SAMPLERS[sampler][0]
        self.device = device

    @torch.no_grad()
    def sample(self, method: Method, labels: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, int, int]:
        """Images in [0, 1] and the encoder and decoder calls."""
        from .demo.sampling import sample_digits, to_unit

        if method.peer is not None:
            from ._peers import run_peer

            return run_peer(self, method, labels, seeds)
        result = sample_digits(self.demo, labels, steps=method.steps, scheduler=self.scheduler_name,
                               keys=method.keys, policy=method.policy, guidance_scale=GUIDANCE, seeds=seeds,
                               parallel_decode=method.parallel_decode, noise_injection=method.noise_injection,
                               coordinate=method.coordinate, encoder_blocks=method.depth)
        return to_unit(result.sample).cpu(), result.encoder_calls, result.decoder_calls

    @torch.no_grad()
    def classify(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(features, predicted labels) of images in [0, 1]."""
        x = images.to(self.device) * 2 - 1
        features = self.classifier.features(x)
        return features.cpu().double(), self.classifier.head(features).argmax(1).cpu()


def _machine() -> dict:
    return dict(platform=platform.platform(), processor=platform.processor() or platform.machine(),
                python=platform.python_version(), torch=torch.__version__, threads=torch.get_num_threads())


#: ``--part`` names and the families each runs (the reference row is in every part).
PARTS = {"fasterdiffusion": "fasterdiffusion", "tiec": "tiec", "configured": "configured", "peers": "peer",
         "fewer-steps": "fewer-steps"}


def part_filter(part: str, grid: Sequence[Method]) -> Any:
    """Which rows a ``part`` runs: a name of :data:`PARTS` (a family), or a cut of a family too long
    for one sitting: ``family/keys`` for its rows on one key set of the grid (``tiec/every:3``),
    ``family/keys/policy`` for those of one policy (``tiec/every:3/lookahead``; the noise-injection and
    parallel-decoding rows go with their policy), and ``fewer-steps/A-B`` (or ``/N``) for the
    fewer-steps rows of ``A`` to ``B`` steps.

    Examples:
        >>> grid = method_grid("ddim", model="dit-digits")
        >>> keep = part_filter("tiec/every:5", grid)
        >>> [m.policy for m in grid if keep(m)]
        ['linear', 'polynomial(2)', 'lookahead', 'lookahead-accept']
        >>> keep = part_filter("tiec/every:3/linear", grid)
        >>> [m.name for m in grid if keep(m)]  # doctest: +NORMALIZE_WHITESPACE
        ['TIEC linear, keys every:3', 'TIEC linear, keys every:3, noise injection',
         'TIEC linear, keys every:3, parallel decoding']
        >>> keep = part_filter("fewer-steps/20-39", grid)
        >>> [m.steps for m in fewer_steps([(grid[1], 500)], 1000, 50) if keep(m)]
        [25]
    """
    name, _, cut = part.partition("/")
    if name not in PARTS:
        raise TiecValueError(f"part {part!r} is unknown; expected one of {sorted(PARTS)}, optionally with "
                             "/<key set> (e.g. tiec/every:3) and /<policy> (tiec/every:3/linear), or "
                             "fewer-steps/<steps> (e.g. fewer-steps/20-39)")
    family = PARTS[name]
    if family == "fewer-steps" and cut:
        low, _, high = cut.partition("-")
        high = high or low  # fewer-steps/N: N to N
        if not (low.isdigit() and high.isdigit()) or int(low) > int(high):
            raise TiecValueError(f"part {part!r}: cut the fewer-steps rows by step count, as fewer-steps/A-B "
                                 f"(A <= B) or fewer-steps/N, e.g. fewer-steps/20-39; got {cut!r}")
        steps = range(int(low), int(high) + 1)
        return lambda method: method.family == family and method.steps in steps
    keys, _, policy = cut.partition("/")
    if keys or policy:  # a policy needs its key set: tiec//linear names the empty one
        known = sorted({m.keys for m in grid if m.family == family})
        if keys not in known:
            raise TiecValueError(f"part {part!r}: the {name} rows of this grid have the key sets {known}, "
                                 f"not {keys!r}")
    if policy:
        known = sorted({m.policy for m in grid if m.family == family and m.keys == keys})
        if policy not in known:
            raise TiecValueError(f"part {part!r}: the {name} rows on keys {keys} have the policies {known}, "
                                 f"not {policy!r}")
    return lambda method: (method.family == family and (not keys or method.keys == keys)
                           and (not policy or method.policy == policy))


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
    from .demo.data import NUM_CLASSES, load_digits

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
    runner = DemoRunner(model, sampler)
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
                quick=quick, part=part, real_digits=len(real), machine=_machine(),
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
    images = _samples(runner, method, labels, seeds, batch_size, progress=progress, desc="reference")
    if path is not None:
        with atomic_path(path) as tmp:
            save_file({"images": images.contiguous()}, str(tmp), metadata=meta)
    return images


def combine(pieces: Sequence[dict]) -> dict:
    """Join the pieces of one grid (``part`` runs) into one result: the first piece's reference
    row and settings, then every piece's other rows, in the order of :data:`PARTS`."""
    if not pieces:
        raise TiecValueError("combine needs at least one piece")
    keys = ("model", "sampler", "steps", "num_samples", "guidance_scale")
    first = pieces[0]
    for piece in pieces[1:]:
        if any(piece[k] != first[k] for k in keys):
            raise TiecValueError(f"pieces of different grids cannot be combined: {[{k: p[k] for k in keys} for p in pieces]}")
    order = list(PARTS)

    def rank(piece: dict) -> int:
        name = (piece.get("part") or "").partition("/")[0]
        return order.index(name) if name in order else -1

    ordered = sorted(pieces, key=rank)
    rows = {first["rows"][0]["name"]: first["rows"][0]}
    for piece in ordered:  # a row measured by two pieces (a family and one of its key sets) counts once
        for row in piece["rows"]:
            rows.setdefault(row["name"], row)
    rows = list(rows.values())
    return {**first, "part": None, "pieces": [p.get("command") for p in ordered],
            "seconds": round(sum(p["seconds"] for p in pieces), 1), "rows": rows}


def _error_text(error: Exception) -> str:
    """The error in one line (for a table cell): type and message, whitespace collapsed, at most 300 characters."""
    text = " ".join(f"{type(error).__name__}: {error}".split())
    return text if len(text) <= 300 else text[:297] + "..."


def _count(runner: DemoRunner, row: _Row, labels: Sequence[int], seeds: Sequence[int]) -> None:
    try:
        flops, (_, enc, dec) = count_flops(runner.sample, row.method, labels[:2], seeds[:2])
    except Exception as error:  # a peer that cannot run: its row says why
        row.error = _error_text(error)
        return
    row.macs_per_image, row.encoder_calls, row.decoder_calls = flops // 4, enc, dec


def _samples(runner: DemoRunner, method: Method, labels: Sequence[int], seeds: Sequence[int],
             batch_size: int, *, progress: bool = False, desc: str = "samples") -> torch.Tensor:
    parts = []
    with progress_bar(total=len(labels), enabled=progress, desc=desc) as bar:
        for i in range(0, len(labels), batch_size):
            parts.append(runner.sample(method, labels[i:i + batch_size], seeds[i:i + batch_size])[0])
            bar.update(len(parts[-1]))
    return torch.cat(parts)


def _measure(runner: DemoRunner, row: _Row, labels: Sequence[int], seeds: Sequence[int],
             reference_images: torch.Tensor, real_features: torch.Tensor, timing_batch: int, repeats: int,
             batch_size: int, reference: Optional[tuple] = None) -> None:
    method = row.method
    try:
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
            images = _samples(runner, method, labels, seeds, batch_size)
            features, predicted = runner.classify(images)
    except Exception as error:
        row.error = _error_text(error)
        return
    row.psnr_db = psnr(images, reference_images)
    row.ssim = ssim(images, reference_images)
    row.max_abs_error = max_abs_error(images, reference_images)
    row.frechet_distance = frechet_distance(features, real_features)
    row.accuracy = (predicted == torch.tensor(labels)).double().mean().item()


# -- speed on full-size architectures ------------------------------------------------------------

SPEED_ARCHS = ("sd15-unet", "dit-xl-2")


def _millions(model: torch.nn.Module) -> int:
    return round(sum(p.numel() for p in model.parameters()) / 1e6)


def _full_size(arch: str) -> tuple[Any, Any, dict, dict, Any, str]:
    """(model, split builder, cond, uncond, output_fn, description) with random weights."""
    import diffusers

    from .adapters.diffusers import DiTSplit, UNet2DConditionSplit

    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    if arch == "sd15-unet":
        unet = diffusers.UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=2,
            block_out_channels=(320, 640, 1280, 1280), cross_attention_dim=768, attention_head_dim=8,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        ).eval()
        cond = {"encoder_hidden_states": torch.randn(1, 77, 768, generator=g)}
        uncond = {"encoder_hidden_states": torch.randn(1, 77, 768, generator=g)}
        return (unet, lambda depth: UNet2DConditionSplit(unet, decoder_start=depth or 0), cond, uncond, None,
                f"SD 1.5 UNet ({_millions(unet)} M parameters), 256x256 (32x32 latent), batch 2 (one image, guidance)")
    if arch == "dit-xl-2":
        dit = diffusers.DiTTransformer2DModel(num_attention_heads=16, attention_head_dim=72, in_channels=4,
                                              out_channels=8, num_layers=28, sample_size=32, patch_size=2,
                                              num_embeds_ada_norm=1000).eval()
        return (dit, lambda depth: DiTSplit(dit, encoder_blocks=depth or 28), {"class_labels": torch.tensor([207])},
                {"class_labels": torch.tensor([1000])}, lambda out: out[:, :4],
                f"DiT-XL/2 as diffusers' DiTTransformer2DModel ({_millions(dit)} M parameters: an adaLN class and "
                "time embedder in every block), 256x256 (32x32 latent), batch 2 (one image, guidance)")
    raise TiecValueError(f"architecture {arch!r} is unknown; expected one of {SPEED_ARCHS}")


def speed_methods(arch: str) -> list[Method]:
    methods = [Method("reference (every step a key)", "reference", 0)]
    for every in (2, 3, 5):
        methods.append(Method(f"TIEC linear, keys every:{every}", "tiec", 0, f"every:{every}", "linear"))
    methods += [Method("FasterDiffusion hold, keys every:3", "fasterdiffusion", 0, "every:3", "hold"),
                Method("TIEC lookahead, keys every:3", "tiec", 0, "every:3", "lookahead"),
                Method("TIEC lookahead-accept, keys every:3", "tiec", 0, "every:3", "lookahead-accept"),
                Method("TIEC linear, keys every:3, parallel decoding", "tiec", 0, "every:3", "linear",
                       parallel_decode=True)]
    if arch == "dit-xl-2":
        methods.append(Method("TIEC linear, keys every:3, FasterDiffusion split (18 of 28 blocks)", "tiec", 0,
                              "every:3", "linear", peer_options=(("depth", 18),)))
    return methods


@torch.no_grad()
def bench_speed(arch: str, *, steps: int = 10, repeats: int = 5, progress: bool = True) -> dict:
    """Wall time per step of each cached method on a full-size architecture (random weights, CPU or
    wherever torch runs), next to the MAC-count bound from the counted encoder and decoder MACs;
    ``seconds`` is the whole run's, building the model included."""
    import diffusers

    from .flops import encoder_share
    from .guidance import ClassifierFreeGuidance
    from .loop import sample

    start = time.perf_counter()
    model, make_split, cond, uncond, output_fn, description = _full_size(arch)
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    rows = []
    shares: dict[Any, Any] = {}
    with progress_bar(total=len(speed_methods(arch)) * repeats, enabled=progress, desc=arch) as bar:
        for method in speed_methods(arch):
            depth = dict(method.peer_options).get("depth")
            split = make_split(depth)
            if depth not in shares:
                guided = ClassifierFreeGuidance(split, GUIDANCE, uncond)
                shares[depth] = encoder_share(guided, noise, 999, **cond)
            seconds = []
            for _ in range(repeats):
                scheduler = diffusers.DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1)
                begin = time.perf_counter()
                result = sample(split, scheduler, noise, num_inference_steps=steps, keys=method.keys,
                                policy=method.policy, cond=cond, guidance=GUIDANCE, uncond=uncond,
                                output_fn=output_fn, parallel_decode=method.parallel_decode)
                seconds.append(time.perf_counter() - begin)
                bar.update(1)
            share = shares[depth]
            work = result.encoder_calls * share.encoder_flops + steps * share.decoder_flops
            rows.append(dict(name=method.name, family=method.family, keys=method.keys, policy=method.policy,
                             parallel_decode=method.parallel_decode, split_depth=depth,
                             encoder_calls=result.encoder_calls, decoder_calls=result.decoder_calls,
                             seconds_per_step_median=statistics.median(seconds) / steps,
                             seconds_per_step_min=min(seconds) / steps, seconds_per_step_max=max(seconds) / steps,
                             encoder_share=share.share,
                             mac_bound=steps * (share.encoder_flops + share.decoder_flops) / work))
    reference = rows[0]["seconds_per_step_median"]
    for row in rows:
        row["speedup"] = reference / row["seconds_per_step_median"]
    return dict(arch=arch, description=description, steps=steps, repeats=repeats, scheduler="ddim",
                guidance_scale=GUIDANCE, machine=_machine(), seconds=round(time.perf_counter() - start, 1),
                rows=rows)


# -- reporting ---------------------------------------------------------------------------------

def _fmt(value: Any, spec: str) -> str:
    if value is None:
        return "–"
    if isinstance(value, float) and value == float("inf"):
        return "∞"
    return format(value, spec)


def markdown_table(results: dict) -> str:
    """The results as a markdown table, one row per method, errors spelled out."""
    if "arch" in results:
        lines = [f"{results['description']}; DDIM, {results['steps']} steps a run, median (min–max) of "
                 f"{results['repeats']} runs", "",
                 "| method | encoder/decoder calls | s/step | speed-up | MAC bound | encoder share |",
                 "|---|---|---|---|---|---|"]
        for row in results["rows"]:
            lines.append(f"| {row['name']} | {row['encoder_calls']}/{row['decoder_calls']} "
                         f"| {row['seconds_per_step_median']:.3f} ({row['seconds_per_step_min']:.3f}–"
                         f"{row['seconds_per_step_max']:.3f}) | {row['speedup']:.2f}x | {row['mac_bound']:.2f}x "
                         f"| {row['encoder_share']:.3f} |")
        return "\n".join(lines) + "\n"
    lines = [
        f"{results['model']}, {results['scheduler']} {results['steps']} steps, guidance {results['guidance_scale']}, "
        f"{results['num_samples']} samples; wall time: median (min–max) of {results['repeats']} runs of "
        f"{results['timing_batch']} images",
        "",
        "| method | MACs/image | MAC ratio | enc/dec calls | wall s | PSNR dB | SSIM | max err | FD | accuracy |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        if row["error"]:
            lines.append(f"| {row['name']} | could not run: `{row['error']}` | | | | | | | | |")
            continue
        wall = (f"{row['seconds_median']:.2f} ({row['seconds_min']:.2f}–{row['seconds_max']:.2f})"
                if "seconds_median" in row else "–")
        lines.append(
            f"| {row['name']} | {_fmt(row['macs_per_image'] / 1e6 if row['macs_per_image'] else None, '.1f')} M "
            f"| {_fmt(row.get('mac_ratio'), '.3f')} | {_fmt(row['encoder_calls'], 'd')}/{row['decoder_calls']} | {wall} "
            f"| {_fmt(row['psnr_db'], '.2f')} | {_fmt(row['ssim'], '.4f')} | {_fmt(row['max_abs_error'], '.3f')} "
            f"| {_fmt(row['frechet_distance'], '.3f')} | {_fmt(row['accuracy'], '.3f')} |")
    return "\n".join(lines) + "\n"


FAMILY_STYLE = {"reference": ("k", "*"), "fewer-steps": ("tab:gray", "o"), "fasterdiffusion": ("tab:orange", "s"),
                "tiec": ("tab:blue", "^"), "configured": ("tab:red", "P"), "peer": ("tab:green", "D")}


def plot(results: dict, path: Path) -> None:
    """PSNR to the reference and FD to the real digits against MACs, one marker style per family
    (speed results: measured speed-up against the MAC bound)."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    if "arch" in results:
        figure, axis = plt.subplots(figsize=(8, 4.5))
        names = [row["name"] for row in results["rows"]]
        ys = range(len(names))
        axis.barh([y + 0.2 for y in ys], [row["mac_bound"] for row in results["rows"]], 0.4, label="MAC bound",
                  color="tab:gray")
        axis.barh([y - 0.2 for y in ys], [row["speedup"] for row in results["rows"]], 0.4, label="measured",
                  color="tab:blue")
        axis.set_yticks(list(ys), names, fontsize=7)
        axis.invert_yaxis()
        axis.set_xlabel("speed-up over every step a key")
        axis.legend()
        axis.set_title(results["description"], fontsize=8)
        save_figure(figure, path)
        return

    rows = [r for r in results["rows"] if r.get("mac_ratio") is not None and r["psnr_db"] is not None]
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for axis, metric, label in ((axes[0], "psnr_db", "PSNR to the reference (dB), higher is better"),
                                (axes[1], "frechet_distance", "FD to real digits, lower is better")):
        for family, (color, marker) in FAMILY_STYLE.items():
            points = sorted((r["mac_ratio"], r[metric]) for r in rows if r["family"] == family
                            and r[metric] not in (None, float("inf")))
            if not points:
                continue
            xs, ys = zip(*points)
            axis.plot(xs, ys, color=color, marker=marker, linestyle="-" if family == "fewer-steps" else "none",
                      label=family)
        axis.set_xlabel("MACs per image / reference")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
    axes[1].set_yscale("log")  # a run that breaks down sits orders of magnitude above the rest
    axes[0].legend()
    figure.suptitle(f"{results['model']}, {results['scheduler']} {results['steps']} steps")
    save_figure(figure, path)


def write_results(results: dict, out: Path, stem: str) -> list[Path]:
    """Write ``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / f"{stem}.json", out / f"{stem}.md", out / f"{stem}.png"]
    for path, text in ((paths[0], json.dumps(results, indent=2) + "\n"), (paths[1], markdown_table(results))):
        write_atomic(path, text)
    plot(results, paths[2])
    return paths
