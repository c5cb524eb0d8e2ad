"""``tiec bench --study``: three measurements beside the benchmark grid, on a demo model.

``stochastic``: does caching survive a sampler that draws new noise every step? DDPM, Euler
ancestral (50 steps) and DPM-Solver++ SDE (20 steps) add fresh noise at every step. The encoder sees it only at key steps; a
non-key step decodes features of an earlier latent, so the model's prediction cannot remove noise
added since the last key. This measures, on a demo model, each stochastic scheduler with keys every
2, 3 and 5 steps under every blend policy, against the same scheduler with every step a key (same
per-image generators, so the same noise): PSNR, and the quality monitor's mean error at the keys.

``tiec generate`` reads the result shipped beside the demo model's weights
(``tiec/demo/weights/<model>/<model>-stochastic.json``, :func:`tiec.demo.stochastic_result`) and refuses
a cached run with a stochastic scheduler that measured too far from every step a key, quoting it.

``monitor``: does the quality monitor (the blend's error at key steps, free to compute) tell good
runs from bad ones? DDIM 50 and DPM-Solver++ 20, keys every 2, 3 and 5, four policies: each run's
mean key error against its PSNR to every step a key, and their Spearman rank correlation.

``coordinates``: which time coordinate should each policy blend over? DDIM 50, DPM-Solver++ 20
and DPM-Solver++ 20 on a Karras schedule, keys every 3 and 5, ``linear`` and ``polynomial(2)`` over
``t``, log σ and the step index, ``lookahead-accept`` over ``t`` and log σ.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Optional, Sequence

import torch

from .._files import json_text, write_atomic
from ..progress import progress_bar
from .grid import GUIDANCE
from .metrics import psnr
from .report import machine

__all__ = ["SCHEDULERS", "STUDIES", "bench_coordinates", "bench_monitor", "bench_stochastic", "markdown_table", "write_study"]

#: The stochastic ``--scheduler`` names measured, and their step counts.
SCHEDULERS = {"euler-a": 50, "ddpm": 50, "dpm-sde": 20}
KEYS = ("every:2", "every:3", "every:5")
POLICIES = ("hold", "linear", "polynomial(2)")


def _runs(model: str, num_samples: int, batch_size: int):
    """A demo model and a function sampling it: ``(scheduler, steps, keys, policy) -> (images in
    [0, 1], the monitor's key errors)``, on held-out seeds and labels cycling 0-9."""
    from ..demo import load
    from ..demo.sampling import sample_digits, to_unit

    demo = load(model)
    labels = [i % 10 for i in range(num_samples)]
    seeds = list(range(20_000, 20_000 + num_samples))

    def images(scheduler: str, n: int, key_set: Optional[str], policy: str,
               coordinate: str = "auto") -> tuple[torch.Tensor, list[float]]:
        parts, errors = [], []
        for i in range(0, num_samples, batch_size):
            result = sample_digits(demo, labels[i:i + batch_size], steps=n, scheduler=scheduler, keys=key_set,
                                   policy=policy, coordinate=coordinate, guidance_scale=GUIDANCE,
                                   seeds=seeds[i:i + batch_size])
            parts.append(to_unit(result.sample).cpu())
            errors += list(result.key_errors.values())
        return torch.cat(parts), errors

    return images


def _rows(images, samplers: dict[str, int], keys: Sequence[str], policies: Sequence[str], *, progress: bool,
          desc: str, coordinates: Optional[dict[str, Sequence[str]]] = None) -> list[dict]:
    """Every sampler (name: steps) x key set x policy against that sampler with every step a key:
    PSNR, and the quality monitor's mean error at the keys. With ``coordinates`` (policy: the time
    coordinates to blend over) each policy runs over each of its coordinates, and rows name it."""
    runs = [(policy, coordinate) for policy in policies for coordinate in (coordinates or {}).get(policy, [None])]
    rows = []
    with progress_bar(total=len(samplers) * (1 + len(keys) * len(runs)), enabled=progress, desc=desc) as bar:
        for sampler, n in samplers.items():
            reference, _ = images(sampler, n, None, "linear")
            bar.update(1)
            for key_set in keys:
                for policy, coordinate in runs:
                    cached, errors = images(sampler, n, key_set, policy, coordinate or "auto")
                    rows.append(dict(scheduler=sampler, steps=n, keys=key_set, policy=policy,
                                     **({"coordinate": coordinate} if coordinate else {}),
                                     psnr_db=psnr(cached, reference),
                                     key_error=sum(errors) / len(errors) if errors else None))
                    bar.update(1)
    return rows


@torch.no_grad()
def bench_stochastic(model: str = "dit-digits", *, num_samples: int = 64, batch_size: int = 64,
                     schedulers: Sequence[str] = tuple(SCHEDULERS), keys: Sequence[str] = KEYS,
                     policies: Sequence[str] = POLICIES, steps: Optional[int] = None,
                     progress: bool = True) -> dict:
    """Every stochastic scheduler x key set x policy on a demo model, against every step a key."""
    start = time.perf_counter()
    rows = _rows(_runs(model, num_samples, batch_size), {s: steps or SCHEDULERS[s] for s in schedulers}, keys,
                 policies, progress=progress, desc=f"{model} stochastic")
    return dict(study="stochastic", model=model, num_samples=num_samples, guidance_scale=GUIDANCE,
                machine=machine(), seconds=round(time.perf_counter() - start, 1), rows=rows)


#: The monitor study's samplers: ``--sampler`` name and step count.
MONITOR_SAMPLERS = {"ddim": 50, "dpm": 20}
# lookahead, not lookahead-accept: the accepting variant never encodes a real key to compare with
MONITOR_POLICIES = ("hold", "linear", "polynomial(2)", "lookahead")


def spearman(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Spearman's rank correlation (ties get their mean rank).

    Examples:
        >>> spearman([1, 2, 3, 4], [10, 20, 30, 40]), spearman([1, 2, 3], [3, 2, 1])
        (1.0, -1.0)
    """
    def ranks(values: Sequence[float]) -> list[float]:
        order = sorted(range(len(values)), key=lambda i: values[i])
        out = [0.0] * len(values)
        i = 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in range(i, j + 1):
                out[order[k]] = (i + j) / 2
            i = j + 1
        return out

    rx, ry = ranks(xs), ranks(ys)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    cov = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    return cov / (sum((a - mx) ** 2 for a in rx) * sum((b - my) ** 2 for b in ry)) ** 0.5


@torch.no_grad()
def bench_monitor(model: str = "dit-digits", *, num_samples: int = 64, batch_size: int = 64,
                  samplers: Sequence[str] = tuple(MONITOR_SAMPLERS), keys: Sequence[str] = KEYS,
                  policies: Sequence[str] = MONITOR_POLICIES, steps: Optional[int] = None,
                  progress: bool = True) -> dict:
    """Each sampler x key set x policy on a demo model: the quality monitor's mean error at the keys
    beside the PSNR to every step a key; Spearman's correlation of the two, overall and per sampler."""
    start = time.perf_counter()
    rows = _rows(_runs(model, num_samples, batch_size), {s: steps or MONITOR_SAMPLERS[s] for s in samplers}, keys,
                 policies, progress=progress, desc=f"{model} monitor")
    measured = [r for r in rows if r["key_error"] is not None]
    correlation = {name: spearman([r["key_error"] for r in group], [r["psnr_db"] for r in group])
                   for name, group in [("all", measured)] + [(s, [r for r in measured if r["scheduler"] == s])
                                                             for s in samplers] if len(group) > 2}
    return dict(study="monitor", model=model, num_samples=num_samples, guidance_scale=GUIDANCE,
                machine=machine(), seconds=round(time.perf_counter() - start, 1), spearman=correlation, rows=rows)


#: The coordinate study's samplers and step counts: two on evenly spaced timesteps, where ``t`` is
#: the step index up to scale, and one on a Karras schedule, where it is not.
COORDINATE_SAMPLERS = {"ddim": 50, "dpm": 20, "dpm-karras": 20}
#: Each policy of the coordinate study and the coordinates it is measured over (``hold`` does not
#: depend on the coordinate).
COORDINATE_RUNS = {"linear": ("t", "log_sigma", "step"), "polynomial(2)": ("t", "log_sigma", "step"),
                   "lookahead-accept": ("t", "log_sigma")}


@torch.no_grad()
def bench_coordinates(model: str = "dit-digits", *, num_samples: int = 64, batch_size: int = 64,
                      samplers: Sequence[str] = tuple(COORDINATE_SAMPLERS), keys: Sequence[str] = ("every:3", "every:5"),
                      policies: Sequence[str] = tuple(COORDINATE_RUNS), steps: Optional[int] = None,
                      progress: bool = True) -> dict:
    """Each sampler x key set x policy over each time coordinate, against every step a key: the
    measurement behind ``coordinate="auto"`` (:func:`tiec.coordinates.auto_coordinate`)."""
    start = time.perf_counter()
    rows = _rows(_runs(model, num_samples, batch_size), {s: steps or COORDINATE_SAMPLERS[s] for s in samplers}, keys,
                 policies, progress=progress, desc=f"{model} coordinates", coordinates=COORDINATE_RUNS)
    return dict(study="coordinates", model=model, num_samples=num_samples, guidance_scale=GUIDANCE,
                machine=machine(), seconds=round(time.perf_counter() - start, 1), rows=rows)


STUDIES = {"stochastic": bench_stochastic, "monitor": bench_monitor, "coordinates": bench_coordinates}


def _column(row: dict) -> str:
    return f"{row['policy']} over {row['coordinate']}" if "coordinate" in row else row["policy"]


def markdown_table(results: dict) -> str:
    """One row per scheduler and key set, one column per policy: PSNR to every step a key (dB) and
    the monitor's mean error at the keys; the monitor study adds its rank correlations."""
    columns = list(dict.fromkeys(_column(row) for row in results["rows"]))
    lines = [f"{results['model']}, guidance {results['guidance_scale']}, {results['num_samples']} samples: PSNR "
             "to the same scheduler with every step a key (dB), and the quality monitor's mean error at the keys",
             "", "| scheduler | keys | " + " | ".join(columns) + " |", "|---|---|" + "---|" * len(columns)]
    groups = dict.fromkeys((row["scheduler"], row["steps"], row["keys"]) for row in results["rows"])
    for scheduler, steps, key_set in groups:
        cells = []
        for column in columns:
            row = next(r for r in results["rows"] if (r["scheduler"], r["keys"], _column(r)) ==
                       (scheduler, key_set, column))
            error = "–" if row["key_error"] is None else f"{row['key_error']:.2f}"
            cells.append(f"{row['psnr_db']:.1f} ({error})")
        lines.append(f"| {scheduler} {steps} | {key_set} | " + " | ".join(cells) + " |")
    if "spearman" in results:
        lines += ["", "Spearman rank correlation of the mean key error with PSNR: " + ", ".join(
            f"{name} {value:+.2f}" for name, value in results["spearman"].items())]
    return "\n".join(lines) + "\n"


def write_study(results: dict, out: Path) -> list[Path]:
    """``<out>/<model>-<study>.json`` and ``.md``."""
    out.mkdir(parents=True, exist_ok=True)
    stem = f"{results['model']}-{results['study']}"
    paths = [out / f"{stem}.json", out / f"{stem}.md"]
    write_atomic(paths[0], json_text(results))
    write_atomic(paths[1], markdown_table(results))
    return paths
