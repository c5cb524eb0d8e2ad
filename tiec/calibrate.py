"""``tiec calibrate``: search key steps, policy, time coordinate and split depth for a compute budget.

For a model (a demo model, or a diffusers pipeline saved in a folder) and a sampler,
:func:`calibrate` samples a few *calibration* inputs with every step a key once (the reference),
then scores candidate configurations by their counted MACs per image and their PSNR to the
reference on the same noise:

1. **policy, coordinate, depth**: every combination of the candidate policies, time coordinates and
   split depths on two uniform schedules; the best combinations (by mean PSNR rank) go on;
2. **schedules**: for those, uniform keys every 2 to 10 steps, with and without warm-up keys and a
   final key;
3. **refinement**: the Pareto front's schedules are moved key by key (each key one or two steps
   earlier or later, keys added beside a key, keys removed) while that raises PSNR without raising
   MACs — a greedy search for non-uniform schedules, stopped early when a sweep finds nothing, or by
   the time budget.

The front (no candidate with fewer MACs and a higher PSNR) is then validated on *held-out* inputs
(other seeds and labels), beside the same sampler with fewer steps and the uniform grid, and the
best front point within ``budget`` (a MAC ratio to the reference) is written as a
:class:`tiec.TiecConfig`.
"""

from __future__ import annotations

import itertools
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

import torch

from ._errors import TiecValueError
from ._files import save_figure, write_atomic
from .config import TiecConfig
from .metrics import psnr
from .progress import progress_bar
from .schedules import uniform

__all__ = ["Candidate", "calibrate", "markdown_table", "pareto_front", "recommend", "write_calibration"]

GUIDANCE = 2.0


@dataclass(frozen=True)
class Candidate:
    """One configuration: explicit key steps, policy, time coordinate, split depth."""

    keys: tuple[int, ...]
    policy: str
    coordinate: str
    depth: int

    def config(self, steps: int, *, depth_option: str, **provenance: Any) -> TiecConfig:
        """This candidate as a :class:`TiecConfig`; ``depth_option`` is ``encoder_blocks`` or ``decoder_start``."""
        return TiecConfig(keys=",".join(map(str, self.keys)), policy=self.policy, coordinate=self.coordinate,
                          steps=steps, provenance=dict(provenance), **{depth_option: self.depth})


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(cost, score)`` that no other point beats: lower or equal cost and
    higher score, or lower cost and equal score. Sorted by cost.

    Examples:
        >>> pareto_front([(1.0, 10.0), (2.0, 12.0), (2.0, 11.0), (3.0, 12.0), (0.5, 5.0)])
        [4, 0, 1]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def _dit_depths(blocks: int, quick: bool) -> list[int]:
    """DiT split depths to search: half, three quarters and all of the blocks (quick: all).

    Examples:
        >>> _dit_depths(8, quick=False), _dit_depths(3, quick=False), _dit_depths(8, quick=True)
        ([4, 6, 8], [1, 2, 3], [8])
    """
    return [blocks] if quick else sorted({max(1, blocks // 2), max(1, 3 * blocks // 4), blocks})


class _DemoEvaluator:
    """Samples a demo model with a candidate; inputs are ``(labels, seeds)``.

    MACs per image come from the counted MACs of one encoder and one decoder call at the
    candidate's depth (guidance included) times the calls the run made.
    """

    policies = ("hold", "linear", "polynomial(2)", "lookahead", "lookahead-accept")

    def __init__(self, model: str, sampler: str, steps: int, device: str = "cpu") -> None:
        from .demo import load

        self.model = model
        self.name = f"{model}-{sampler}"
        self.demo = load(model, device=device)
        self.scheduler = sampler
        self.steps = steps
        self.guidance_scale = GUIDANCE
        self.depth_option = "encoder_blocks" if model == "dit-digits" else "decoder_start"
        self.default_depth = (len(self.demo.transformer.transformer_blocks)  # what generate and bench use
                              if model == "dit-digits" else 0)
        self.unit_macs: dict[int, tuple[int, int]] = {}
        self.evaluations = 0

    def depths(self, quick: bool) -> list[int]:
        """Split depths to search (quick: the model's default only)."""
        if self.model == "dit-digits":
            return _dit_depths(len(self.demo.transformer.transformer_blocks), quick)
        return [0] if quick else [0, 1]

    def inputs(self, count: int, *, held_out: bool) -> tuple[list[int], list[int]]:
        """Calibration: labels cycling 0-9, seeds ``0..count-1``; held out: labels shifted by 3,
        seeds from 10,000."""
        if held_out:
            return [(i + 3) % 10 for i in range(count)], list(range(10_000, 10_000 + count))
        return [i % 10 for i in range(count)], list(range(count))

    def macs(self, candidate: Candidate, encoder_calls: int, decoder_calls: int) -> int:
        if candidate.depth not in self.unit_macs:
            from .flops import encoder_share
            from .guidance import ClassifierFreeGuidance

            split = self.demo.split(candidate.depth)
            guided = ClassifierFreeGuidance(split, GUIDANCE, {"class_labels": torch.tensor([self.demo.null_label])})
            x = torch.zeros(1, self.demo.transformer.config.in_channels, self.demo.resolution, self.demo.resolution)
            with torch.no_grad():
                share = encoder_share(guided, x, 500, class_labels=torch.tensor([0]))
            self.unit_macs[candidate.depth] = (share.encoder_flops // 2, share.decoder_flops // 2)
        e, d = self.unit_macs[candidate.depth]
        return encoder_calls * e + decoder_calls * d

    @torch.no_grad()
    def images(self, candidate: Candidate, inputs: tuple[list[int], list[int]],
               steps: Optional[int] = None) -> tuple[torch.Tensor, int]:
        """``(pixels in [0, 1], MACs per image)`` of the candidate on ``inputs``."""
        from .demo.sampling import sample_digits, to_unit

        self.evaluations += 1
        labels, seeds = inputs
        result = sample_digits(self.demo, labels, steps=steps or self.steps, scheduler=self.scheduler,
                               keys=list(candidate.keys), policy=candidate.policy, coordinate=candidate.coordinate,
                               encoder_blocks=candidate.depth, guidance_scale=GUIDANCE, seeds=seeds)
        return to_unit(result.sample).cpu(), self.macs(candidate, result.encoder_calls, result.decoder_calls)


class _PipelineEvaluator:
    """Runs a diffusers pipeline from a local folder (through ``tiec generate``'s job) with a
    candidate; inputs are image indices (image ``i``: prompt or label ``i``, cycling, and the noise
    of seed ``i``).

    MACs per image are those of the whole pipeline call (text encoder and VAE included), counted
    with ``FlopCounterMode`` on one image: every step a key, and step 0 alone a key, at each depth
    and step count; a candidate's MACs follow from its encoder calls, since blending costs no
    counted operation.
    """

    policies = ("hold", "linear", "polynomial(2)")

    def __init__(self, path: Path, sampler: Optional[str], steps: int, *, prompts: Sequence[str] = (),
                 negative_prompt: Optional[str] = None, class_labels: Optional[str] = None,
                 guidance_scale: Optional[float] = None, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 4, progress: bool = True) -> None:
        from ._generate import PipelineJob

        self.job = PipelineJob(path, class_labels=class_labels, num_images=1, prompt=list(prompts) or None,
                               negative_prompt=negative_prompt, steps=steps, scheduler=sampler, policy="linear",
                               guidance_scale=guidance_scale, encoder_blocks=None, decoder_start=None,
                               parallel_decode=False, seed=0, device=device, dtype=dtype, progress=progress)
        self.model = str(path)
        self.name = f"{path.name}-{sampler or 'own'}"
        self.steps = steps
        self.guidance_scale = self.job.settings["guidance_scale"]
        self.depth_option = next(iter(self.job.depth))
        self.default_depth = (max(len(self.job.pipe.transformer.transformer_blocks) // 2, 1)  # tiec's defaults
                              if self.depth_option == "encoder_blocks" else 0)
        self.batch_size = batch_size
        self.counted: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self.evaluations = 0

    def depths(self, quick: bool) -> list[int]:
        """DiT: half, three quarters and all of the blocks in the encoder (quick: all); UNet: the
        decoder from up block 0 or 1 (quick: 0)."""
        pipe = self.job.pipe
        if self.depth_option == "encoder_blocks":
            return _dit_depths(len(pipe.transformer.transformer_blocks), quick)
        return [0] if quick or len(pipe.unet.up_blocks) < 2 else [0, 1]

    def inputs(self, count: int, *, held_out: bool) -> list[int]:
        return list(range(10_000, 10_000 + count)) if held_out else list(range(count))

    def _run(self, candidate: Candidate, indices: list[int], steps: int) -> Any:
        return self.job(list(candidate.keys), indices, progress=False, steps=steps, policy=candidate.policy,
                        coordinate=candidate.coordinate, **{self.depth_option: candidate.depth})

    def macs(self, candidate: Candidate, steps: int, encoder_calls: int) -> int:
        if (candidate.depth, steps) not in self.counted:
            from .flops import count_flops

            every, first = (replace(candidate, keys=keys, policy="hold") for keys in (tuple(range(steps)), (0,)))
            flops_all, images_all = count_flops(self._run, every, [0], steps)
            flops_one, images_one = count_flops(self._run, first, [0], steps)
            self.counted[(candidate.depth, steps)] = (flops_all // 2, images_all.encoder_calls,
                                                      flops_one // 2, images_one.encoder_calls)
        macs_all, calls_all, macs_one, calls_one = self.counted[(candidate.depth, steps)]
        per_call = (macs_all - macs_one) // max(1, calls_all - calls_one)
        return macs_all - (calls_all - encoder_calls) * per_call

    @torch.no_grad()
    def images(self, candidate: Candidate, inputs: list[int], steps: Optional[int] = None) -> tuple[torch.Tensor, int]:
        """``(pixels in [0, 1], MACs per image)`` of the candidate on ``inputs``."""
        self.evaluations += 1
        steps = steps or self.steps
        parts = [self._run(candidate, inputs[i:i + self.batch_size], steps)
                 for i in range(0, len(inputs), self.batch_size)]
        calls = parts[0].encoder_calls  # the same schedule in every batch
        return torch.cat([part.pixels for part in parts]), self.macs(candidate, steps, calls)


def default_steps(sampler: Optional[str]) -> int:
    """DPM-Solver++ and UniPC: 20 steps; every other sampler (and a pipeline's own): 50."""
    return 20 if sampler in ("dpm", "unipc") else 50


def calibrate(model: str = "dit-digits", sampler: Optional[str] = None, *, steps: Optional[int] = None,
              calibration: int = 8, held_out: int = 16, budget: float = 0.4, time_budget: float = 1800.0,
              quick: bool = False, progress: bool = True, prompts: Sequence[str] = (),
              negative_prompt: Optional[str] = None, class_labels: Optional[str] = None,
              guidance_scale: Optional[float] = None, device: str = "cpu", dtype: str = "float32",
              batch_size: int = 4) -> dict:
    """Search configurations for a model; returns every evaluation, the front and the pick.

    Args:
        model: a demo model (``"dit-digits"``, ``"unet-digits"``) or the folder of a diffusers
            pipeline that ``tiec generate`` runs (Stable Diffusion, SDXL, DeepFloyd-IF stage I, DiT).
        sampler: a scheduler name of :data:`tiec.adapters.diffusers.SCHEDULERS` (demo models:
            ``"ddim"``, the default, or ``"dpm"``; pipelines: ``None`` keeps the pipeline's own).
        steps: sampling steps (default :func:`default_steps`: 20 for ``dpm`` and ``unipc``, else 50).
        calibration: calibration inputs (demo: labels cycle 0-9, seeds ``0..n-1``; pipelines: the
            prompts or labels cycle, seeds ``0..n-1``).
        held_out: held-out inputs for validation (seeds from 10,000; demo labels shifted), never
            searched on.
        budget: the MAC ratio (to the reference) the recommended configuration must stay within.
        time_budget: seconds for the whole search; refinement stops when it is spent.
        quick: a small search (10 steps, 4 + 4 inputs, two policies) for tests.
        progress: progress bars.
        prompts: pipelines with text: the calibration prompts (required); pass several, so the
            configuration is not fitted to one image.
        negative_prompt: pipelines with text: the negative prompt.
        class_labels: DiT pipelines: comma-separated labels to cycle through (default ``"0"``).
        guidance_scale: pipelines: classifier-free guidance (``None``: the pipeline's default).
        device: torch device.
        dtype: pipelines: ``"float32"``, ``"float16"`` or ``"bfloat16"``.
        batch_size: pipelines: images per pipeline call.
    """
    from ._generate import DEMO_MODELS

    if not 0 < budget <= 1:
        raise TiecValueError(f"budget must be a MAC ratio in (0, 1], got {budget}")
    if model in DEMO_MODELS:
        sampler = sampler or "ddim"
        if sampler not in ("ddim", "dpm"):
            raise TiecValueError(f"sampler {sampler!r} does not apply to the demo model {model!r}; "
                                 "expected 'ddim' or 'dpm'")
        for name, value in (("prompts", list(prompts) or None), ("negative_prompt", negative_prompt),
                            ("class_labels", class_labels), ("guidance_scale", guidance_scale)):
            if value is not None:
                raise TiecValueError(f"{name} does not apply to the demo model {model!r} (labels cycle 0-9, "
                                     f"guidance {GUIDANCE}); got {value!r}")
    elif not Path(model).is_dir():
        raise TiecValueError(f"model {model!r} is neither a demo model ({', '.join(DEMO_MODELS)}) nor a folder")
    if quick:
        steps, calibration, held_out = steps or 10, min(calibration, 4), min(held_out, 4)
    steps = steps or default_steps(sampler)
    start = time.perf_counter()
    evaluator: Any
    if model in DEMO_MODELS:
        evaluator = _DemoEvaluator(model, sampler, steps, device=device)
    else:
        evaluator = _PipelineEvaluator(Path(model), sampler, steps, prompts=prompts, negative_prompt=negative_prompt,
                                       class_labels=class_labels, guidance_scale=guidance_scale, device=device,
                                       dtype=dtype, batch_size=batch_size, progress=progress)
    cal, hold = evaluator.inputs(calibration, held_out=False), evaluator.inputs(held_out, held_out=True)
    depths = evaluator.depths(quick)
    full = Candidate(tuple(range(steps)), "linear", "t", depths[-1])
    (reference_cal, reference_macs), (reference_held, _) = (evaluator.images(full, inputs) for inputs in (cal, hold))
    reference = {"cal": reference_cal, "held": reference_held}
    scores: dict[Candidate, dict] = {}

    def score(candidate: Candidate) -> dict:
        if candidate not in scores:
            images, macs = evaluator.images(candidate, cal)
            scores[candidate] = dict(macs=macs, mac_ratio=macs / reference_macs, psnr_db=psnr(images, reference["cal"]))
        return scores[candidate]

    # 1. policy x coordinate x depth on two uniform schedules
    policies = ["hold", "linear"] if quick else list(evaluator.policies)
    coordinates = ["t", "log_sigma"] if quick else ["t", "log_sigma", "step"]
    probes = [uniform(k).key_steps(steps) for k in ((2, 3) if quick else (3, 5))]
    combos = list(itertools.product(policies, coordinates, depths))
    with progress_bar(total=len(combos) * len(probes), enabled=progress, desc="policies") as bar:
        ranks: dict[tuple, float] = {combo: 0.0 for combo in combos}
        for keys in probes:
            results = []
            for combo in combos:
                results.append((score(Candidate(keys, *combo))["psnr_db"], combo))
                bar.update(1)
            for rank, (_, combo) in enumerate(sorted(results, reverse=True)):
                ranks[combo] += rank
    best = _carried(sorted(combos, key=lambda combo: ranks[combo]), 1 if quick else 3)

    # 2. uniform schedules with warm-up and a final key
    everies = (2, 3) if quick else (2, 3, 4, 5, 6, 8, 10)
    schedules = sorted({uniform(k, warmup=w, tail=t).key_steps(steps)
                        for k in everies for w in ((0,) if quick else (0, 3)) for t in ((0,) if quick else (0, 1))})
    with progress_bar(total=len(schedules) * len(best), enabled=progress, desc="schedules") as bar:
        for combo in best:
            for keys in schedules:
                score(Candidate(keys, *combo))
                bar.update(1)

    # 3. greedy refinement of the front's schedules (no end known in advance: the bar counts trials)
    sweeps = 0
    deadline = start + time_budget
    improved = True
    with progress_bar(total=None, enabled=progress, desc="refinement") as bar:
        while improved and time.perf_counter() < deadline and sweeps < (1 if quick else 4):
            improved = False
            sweeps += 1
            for candidate in _front(scores)[: 2 if quick else None]:
                if time.perf_counter() >= deadline:
                    break
                current = candidate
                for neighbour in _neighbours(current.keys, steps):
                    if time.perf_counter() >= deadline:
                        break
                    trial = replace(current, keys=neighbour)
                    better = score(trial)["psnr_db"] > score(current)["psnr_db"]
                    if better and score(trial)["macs"] <= score(current)["macs"]:
                        current, improved = trial, True
                    bar.update(1)

    # validation on held-out inputs: the front, two uniform grids (the searched schedules with hold
    # and linear on the best combination; the benchmark's keys every 2, 3, 5 with every policy at
    # the default depth and coordinate), fewer steps
    front = _front(scores)
    grids = {
        "searched": [Candidate(keys, p, best[0][1], best[0][2]) for keys in schedules if len(keys) < steps
                     for p in ("hold", "linear")],
        "benchmark": [Candidate(uniform(k).key_steps(steps), p, "auto", evaluator.default_depth)
                      for k in ((2, 3) if quick else (2, 3, 5)) for p in policies],
    }
    grid = list(dict.fromkeys(grids["searched"] + grids["benchmark"]))
    validate = list(dict.fromkeys(front + grid))
    with progress_bar(total=len(validate), enabled=progress, desc="held-out") as bar:
        for candidate in validate:
            score(candidate)
            scores[candidate]["held_out_psnr_db"] = psnr(evaluator.images(candidate, hold)[0], reference["held"])
            bar.update(1)
    fewer = []
    # a coarse curve, and for each front point the most steps within its MACs (the fair comparison)
    counts = {max(1, round(steps * r)) for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)}
    counts |= {max(1, math.floor(steps * scores[c]["mac_ratio"] + 1e-9)) for c in front}
    for n in sorted(counts - {steps}):
        short = Candidate(tuple(range(n)), "linear", "t", depths[-1])
        row: dict[str, Any] = {}
        for name, inputs in (("psnr_db", cal), ("held_out_psnr_db", hold)):
            images, macs = evaluator.images(short, inputs, steps=n)
            row[name] = psnr(images, reference["cal" if name == "psnr_db" else "held"])
        fewer.append(dict(steps=n, macs=macs, mac_ratio=macs / reference_macs, **row))


    rows = {c: dict(keys=list(c.keys), policy=c.policy, coordinate=c.coordinate, depth=c.depth, **scores[c],
                    front=c in front, grids=[name for name, members in grids.items() if c in members])
            for c in scores}
    comparison = []  # each front point against the uniform grids and fewer steps at the same or lower MACs
    for c in front:
        uniform_best = _best_uniform(rows.values(), scores[c]["macs"])
        fewer_best = max((f for f in fewer if f["macs"] <= scores[c]["macs"]), key=lambda f: f["held_out_psnr_db"],
                         default=None)
        held = scores[c]["held_out_psnr_db"]
        comparison.append(dict(
            keys=list(c.keys), policy=c.policy, coordinate=c.coordinate, depth=c.depth,
            mac_ratio=scores[c]["mac_ratio"], held_out_psnr_db=held,
            best_uniform=uniform_best,
            margin_over_uniform_db=held - uniform_best["held_out_psnr_db"] if uniform_best else None,
            fewer_steps=fewer_best["steps"] if fewer_best else None,
            margin_over_fewer_steps_db=held - fewer_best["held_out_psnr_db"] if fewer_best else None))
    results = dict(model=model, name=evaluator.name, sampler=sampler, steps=steps,
                guidance_scale=evaluator.guidance_scale, calibration_inputs=calibration,
                held_out_inputs=held_out, budget=budget, quick=quick, reference_macs=reference_macs,
                evaluations=evaluator.evaluations, refinement_sweeps=sweeps,
                seconds=round(time.perf_counter() - start, 1), policy_rank=[list(c) for c in best],
                candidates=list(rows.values()), fewer_steps=fewer, front_comparison=comparison,
                depth_option=evaluator.depth_option)
    return recommend(results, budget)


def recommend(results: dict, budget: float) -> dict:
    """Pick the configuration from a finished search: the front point with the best calibration
    PSNR within ``budget`` (a MAC ratio; the cheapest front point when none fits), beside the
    uniform schedule with the best held-out PSNR at the same or lower MACs. Returns a copy of
    ``results`` with ``budget``, ``recommended``, ``best_uniform_within_budget`` and ``config``
    set, so another budget needs no new search (``tiec calibrate --from-results``).
    """
    if not 0 < budget <= 1:
        raise TiecValueError(f"budget must be a MAC ratio in (0, 1], got {budget}")
    front = [r for r in results["candidates"] if r["front"]]
    within = [r for r in front if r["mac_ratio"] <= budget]
    pick = max(within, key=lambda r: r["psnr_db"]) if within else min(front, key=lambda r: r["macs"])
    best = _best_uniform(results["candidates"], pick["macs"])
    depth_option = results.get("depth_option") or next(
        k for k in ("encoder_blocks", "decoder_start") if results["config"].get(k) is not None)
    chosen = Candidate(tuple(pick["keys"]), pick["policy"], pick["coordinate"], pick["depth"])
    config = chosen.config(results["steps"], depth_option=depth_option, mac_ratio=pick["mac_ratio"],
                           calibration_psnr_db=pick["psnr_db"], held_out_psnr_db=pick.get("held_out_psnr_db"))
    return {**results, "budget": budget, "recommended": pick, "best_uniform_within_budget": best,
            "config": config.to_dict()}


def _best_uniform(rows: Iterable[dict], macs: int) -> Optional[dict]:
    """The validated uniform-grid row with the best held-out PSNR at ``macs`` or fewer."""
    return max((r for r in rows if r.get("grids") and "held_out_psnr_db" in r and r["macs"] <= macs),
               key=lambda r: r["held_out_psnr_db"], default=None)


def _carried(ranked: list[tuple], count: int) -> list[tuple]:
    """The combinations stage 1 sends on: the ``count`` best ranked, and the best that does not
    look ahead when all of those do. Ranks compare PSNR on the same key schedules, where lookahead
    has paid for extra encoder passes; a plain blend with more keys can beat it at equal MACs.

    Examples:
        >>> _carried([("lookahead", "t", 1), ("lookahead-accept", "t", 1), ("linear", "t", 1)], 2)
        [('lookahead', 't', 1), ('lookahead-accept', 't', 1), ('linear', 't', 1)]
        >>> _carried([("linear", "t", 1), ("lookahead", "t", 1)], 1)
        [('linear', 't', 1)]
    """
    carried = ranked[:count]
    plain = next((combo for combo in ranked if not combo[0].startswith("lookahead")), None)
    if plain is not None and all(policy.startswith("lookahead") for policy, *_ in carried):
        carried.append(plain)
    return carried


def _front(scores: dict[Candidate, dict]) -> list[Candidate]:
    """The candidates on the Pareto front of MACs against calibration PSNR, cheapest first."""
    candidates = list(scores)
    return [candidates[i] for i in pareto_front([(scores[c]["macs"], scores[c]["psnr_db"]) for c in candidates])]


def _neighbours(keys: tuple[int, ...], steps: int) -> list[tuple[int, ...]]:
    """Schedules one edit away: a key moved by 1 or 2 steps, a key removed (never step 0)."""
    out = []
    for i, k in enumerate(keys):
        if k == 0:
            continue
        for delta in (-2, -1, 1, 2):
            moved = k + delta
            if 0 < moved < steps and moved not in keys:
                out.append(tuple(sorted(keys[:i] + (moved,) + keys[i + 1:])))
        out.append(keys[:i] + keys[i + 1:])
    return list(dict.fromkeys(out))


def markdown_table(results: dict) -> str:
    """The validated front as a markdown table: each point's held-out PSNR beside the best uniform
    schedule and the best fewer-steps run at the same or lower MACs."""
    def db(value: Optional[float]) -> str:
        return "–" if value is None else f"{value:.1f}"

    def margin(value: Optional[float]) -> str:
        return "–" if value is None else f"{value:+.1f}"

    lines = [f"Calibrated front of {results['name']}, {results['steps']} steps, on {results['held_out_inputs']} "
             f"held-out inputs (PSNR to every step a key, dB). Command: `{results.get('command', '')}`", "",
             "| MACs | keys | policy, coordinate, depth | held-out | best uniform at ≤ MACs | margin "
             "| fewer steps at ≤ MACs | margin |", "|---|---|---|---|---|---|---|---|"]
    fewer = {f["steps"]: f for f in results["fewer_steps"]}
    for point in results["front_comparison"]:
        uniform_best = point["best_uniform"]
        uniform_text = "–" if uniform_best is None else (
            f"{len(uniform_best['keys'])} keys, {uniform_best['policy']}, {uniform_best['coordinate']}, depth "
            f"{uniform_best['depth']} ({uniform_best['mac_ratio']:.2f}): {db(uniform_best['held_out_psnr_db'])}")
        n = point["fewer_steps"]
        fewer_text = "–" if n is None else f"{n} steps ({fewer[n]['mac_ratio']:.2f}): {db(fewer[n]['held_out_psnr_db'])}"
        lines.append(f"| {point['mac_ratio']:.3f} | {len(point['keys'])}: `{','.join(map(str, point['keys']))}` | "
                     f"{point['policy']}, {point['coordinate']}, {point['depth']} | {db(point['held_out_psnr_db'])} | "
                     f"{uniform_text} | {margin(point['margin_over_uniform_db'])} | {fewer_text} | "
                     f"{margin(point['margin_over_fewer_steps_db'])} |")
    return "\n".join(lines) + "\n"


def write_calibration(results: dict, out: Path) -> list[Path]:
    """``<name>-calibration.json``, ``.md`` (the front's table), ``.png`` and the recommended
    ``<name>-config.json``."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    stem = results["name"] + ("-quick" if results["quick"] else "")
    paths = [out / f"{stem}-calibration.json", out / f"{stem}-calibration.png", out / f"{stem}-config.json",
             out / f"{stem}-calibration.md"]
    write_atomic(paths[0], json.dumps(results, indent=2) + "\n")
    write_atomic(paths[3], markdown_table(results))
    TiecConfig.from_dict(results["config"]).save(paths[2])

    figure, axis = plt.subplots(figsize=(7.5, 4.8))
    validated = [r for r in results["candidates"] if "held_out_psnr_db" in r]
    front = sorted((r["mac_ratio"], r["held_out_psnr_db"]) for r in validated if r["front"])
    searched = [r for r in validated if "searched" in r["grids"]]
    for policy, color in (("hold", "tab:orange"), ("linear", "tab:blue")):
        points = [(r["mac_ratio"], r["held_out_psnr_db"]) for r in searched if r["policy"] == policy]
        if points:
            axis.scatter(*zip(*points), color=color, marker="s" if policy == "hold" else "^", s=16, alpha=0.6,
                         label=f"uniform schedules, {policy}")
    benchmark = [r for r in validated if "benchmark" in r["grids"]]
    for policy, marker in zip(dict.fromkeys(r["policy"] for r in benchmark), "xP+*1"):
        points = [(r["mac_ratio"], r["held_out_psnr_db"]) for r in benchmark if r["policy"] == policy]
        axis.scatter(*zip(*points), color="black", marker=marker, s=30, label=f"benchmark grid, {policy}")
    if front:
        axis.plot(*zip(*front), "-o", color="tab:red", label="calibrated front")
    fewer = sorted((r["mac_ratio"], r["held_out_psnr_db"]) for r in results["fewer_steps"])
    axis.plot(*zip(*fewer), "--", color="tab:gray", marker="o", label="fewer steps")
    axis.set_xlabel("MACs per image / every step a key")
    axis.set_ylabel("PSNR to every step a key, held-out inputs (dB)")
    axis.set_title(f"{results['name']}, {results['steps']} steps", fontsize=9)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    save_figure(figure, paths[1])
    return paths
