"""``tiec calibrate``: search key steps, policy, time coordinate and split depth for a compute budget.

For a model (a demo model, or a diffusers pipeline saved in a folder) and a sampler,
:func:`calibrate` samples a few *calibration* inputs with every step a key once (the reference),
then scores candidate configurations by their counted MACs per image and their PSNR to the
reference on the same noise:

1. **policy, coordinate, depth**: every combination of the candidate policies, time coordinates and
   split depths on uniform keys every 2, 3 and 5; the best combinations by mean PSNR rank go on,
   and every combination on one of those schedules' fronts of MACs against PSNR;
2. **schedules**: for those, uniform keys every 2 to 10 steps, with and without warm-up keys and a
   final key;
3. **refinement**: the Pareto front's schedules are moved key by key (each key one or two steps
   earlier or later, keys added beside a key, keys removed) while that raises PSNR without raising
   MACs — a greedy search for non-uniform schedules, stopped early when a sweep finds nothing, or by
   the time budget;
4. **fitted weights** (demo models): for the front point the pick would be and for uniform keys
   every 2, 3 and 5, blend weights fitted on the calibration inputs (:func:`tiec.fit_blend`),
   scored on the held-out inputs.

The front (no candidate with fewer MACs and a higher PSNR) is then validated on *held-out* inputs
(other seeds and labels), beside the same sampler with fewer steps and the uniform grid, and the
best front point within ``budget`` (a MAC ratio to the reference) -- or a fitted candidate at the
same or lower MACs that scored higher on the held-out inputs -- is written as a
:class:`tiec.TiecConfig`.
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

from .._errors import TiecValueError
from ..bench.metrics import psnr
from ..progress import progress_bar
from ..schedules import uniform
from .candidates import Candidate, best_uniform, carried, decibels, front_of, neighbours
from .evaluators import GUIDANCE, DemoEvaluator, PipelineEvaluator

__all__ = ["calibrate", "default_steps", "recommend"]


def default_steps(sampler: Optional[str]) -> int:
    """DPM-Solver++ (``dpm``, ``dpm-karras``, ``dpm-sde``) and UniPC: 20 steps; every other sampler
    (and a pipeline's own): 50. ``tiec generate`` and ``tiec calibrate`` use it.

    Examples:
        >>> default_steps("dpm"), default_steps("ddim"), default_steps(None)
        (20, 50, 50)
    """
    return 20 if sampler in ("dpm", "dpm-karras", "dpm-sde", "unipc") else 50


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
    from ..generate.jobs import DEMO_MODELS

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
        evaluator = DemoEvaluator(model, sampler, steps, device=device)
    else:
        evaluator = PipelineEvaluator(Path(model), sampler, steps, prompts=prompts, negative_prompt=negative_prompt,
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

    # 1. policy x coordinate x depth on the probe schedules (each probe's front is carried too)
    policies = ["hold", "linear"] if quick else list(evaluator.policies)
    coordinates = ["t", "log_sigma"] if quick else ["t", "log_sigma", "step"]
    probes = [uniform(k).key_steps(steps) for k in ((2, 3) if quick else (2, 3, 5))]
    combos = list(itertools.product(policies, coordinates, depths))
    with progress_bar(total=len(combos) * len(probes), enabled=progress, desc="policies") as bar:
        ranks: dict[tuple, float] = {combo: 0.0 for combo in combos}
        fronts = []
        for keys in probes:
            results = []
            for combo in combos:
                results.append((score(Candidate(keys, *combo))["psnr_db"], combo))
                bar.update(1)
            for rank, (_, combo) in enumerate(sorted(results, reverse=True)):
                ranks[combo] += rank
            probed = [Candidate(keys, *combo) for combo in combos]
            fronts.append([(c.policy, c.coordinate, c.depth) for c in front_of({c: scores[c] for c in probed})])
    best = carried(sorted(combos, key=lambda combo: ranks[combo]), 1 if quick else 3, fronts)

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
            for candidate in front_of(scores)[: 2 if quick else None]:
                if time.perf_counter() >= deadline:
                    break
                current = candidate
                for neighbour in neighbours(current.keys, steps):
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
    front = front_of(scores)
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
    fitted = _fit(evaluator, front, scores, budget, best[0][2], steps, quick, cal, hold, progress, score)
    fewer = []
    # a coarse curve, and for each front point the most steps within its MACs (the fair comparison)
    counts = {max(1, round(steps * r)) for r in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.8)}
    counts |= {max(1, math.floor(steps * scores[c]["mac_ratio"] + 1e-9)) for c in front}
    for n in sorted(n for n in counts if n < steps):  # a lookahead front point can cost more than the reference
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
        uniform_best = best_uniform(rows.values(), scores[c]["macs"])
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
                depth_option=evaluator.depth_option, fitted=fitted)
    return recommend(results, budget)


def _fit(evaluator: Any, front: list[Candidate], scores: dict, budget: float, depth: Any, steps: int, quick: bool,
         cal: Any, hold: Any, progress: bool, score: Any) -> list[dict]:
    """4. Fitted weights (demo models): for the front point the pick would be and for uniform keys
    every 2, 3 and 5 at the best combination's depth, weights fitted on the calibration inputs,
    each candidate scored on the held-out inputs (:func:`tiec.fit_blend`)."""
    if not hasattr(evaluator, "fit"):
        return []
    within = [c for c in front if scores[c]["mac_ratio"] <= budget] or front[:1]
    provisional = max(within, key=lambda c: scores[c]["psnr_db"])
    targets = [(provisional.keys, provisional.depth)]
    targets += [(uniform(k).key_steps(steps), depth) for k in ((3,) if quick else (2, 3, 5))]
    targets = [target for target in dict.fromkeys(targets) if len(target[0]) < steps]
    rows = []
    with progress_bar(total=len(targets), enabled=progress, desc="fitting") as bar:
        for keys, at in targets:
            result = evaluator.fit(keys, at, cal, hold)
            cost = score(Candidate(keys, "linear", "t", at))  # blending costs no counted operation
            rows.append(dict(keys=list(keys), policy="fitted", coordinate="t", depth=at, macs=cost["macs"],
                             mac_ratio=cost["mac_ratio"], held_out_psnr_db=result.scores[result.best],
                             chosen=result.chosen, candidates=result.table(),
                             weights=result.policy.to_list()))
            bar.update(1)
    return rows


def recommend(results: dict, budget: float) -> dict:
    """Pick the configuration from a finished search: the front point with the best calibration
    PSNR within ``budget`` (a MAC ratio; the cheapest front point when none fits), replaced by the
    fitted candidate with the best held-out PSNR at the same or lower MACs where one beats it there;
    beside the
    uniform schedule with the best held-out PSNR at the same or lower MACs. Returns a copy of
    ``results`` with ``budget``, ``recommended``, ``best_uniform_within_budget`` and ``config``
    set, so another budget needs no new search (``tiec calibrate --from-results``).
    """
    if not 0 < budget <= 1:
        raise TiecValueError(f"budget must be a MAC ratio in (0, 1], got {budget}")
    front = [r for r in results["candidates"] if r["front"]]
    within = [r for r in front if r["mac_ratio"] <= budget]
    pick = max(within, key=lambda r: decibels(r, "psnr_db")) if within else min(front, key=lambda r: r["macs"])
    # fitted weights win where they score higher on the held-out inputs at the same or lower MACs
    better = [f for f in results.get("fitted", []) if f["macs"] <= pick["macs"]
              and decibels(f, "held_out_psnr_db") > decibels(pick, "held_out_psnr_db")]
    if better:
        pick = max(better, key=lambda f: decibels(f, "held_out_psnr_db"))
    best = best_uniform(results["candidates"], pick["macs"])
    depth_option = results.get("depth_option") or next(
        k for k in ("encoder_blocks", "decoder_start") if results["config"].get(k) is not None)
    chosen = Candidate(tuple(pick["keys"]), pick["policy"], pick["coordinate"], pick["depth"])
    config = chosen.config(results["steps"], depth_option=depth_option, scheduler=results.get("sampler"),
                           weights=pick.get("weights"), mac_ratio=pick["mac_ratio"],
                           calibration_psnr_db=pick.get("psnr_db"), held_out_psnr_db=pick.get("held_out_psnr_db"))
    return {**results, "budget": budget, "recommended": pick, "best_uniform_within_budget": best,
            "config": config.to_dict()}
