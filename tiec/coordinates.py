"""The time coordinate τ the cache blends over: the model's timestep, log σ, or the step index.

``"auto"`` follows the policy (:func:`auto_coordinate`): ``t`` for the policies that blend cached
keys (``hold``, ``linear``, ``polynomial(k)``, fitted weights), log σ for the lookahead, whose
predicted key comes from a jump in σ. Measured on both demo models (``tiec bench --study
coordinates``, docs/choosing-keys.md): over ``t``, ``linear`` scored up to 15 dB above log σ
(and at most 0.4 dB below) with DDIM 50 and DPM-Solver++ 20 (evenly spaced timesteps, where ``t``
is the step index up to scale) and above it on a Karras schedule with keys every 3; the
lookahead scored higher over log σ in most runs, by up to 8 dB.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch

from ._errors import TiecTypeError, TiecValueError

__all__ = ["Coordinate", "COORDINATES", "auto_coordinate", "log_sigma_at", "scheduler_log_sigmas",
           "coordinate_values"]

Coordinate = Literal["auto", "t", "log_sigma", "step"]
COORDINATES = ("auto", "t", "log_sigma", "step")


def auto_coordinate(policy: Any) -> str:
    """What ``coordinate="auto"`` means for ``policy`` (a spec or a :class:`~tiec.Policy`):
    ``"log_sigma"`` for the lookahead policies, ``"t"`` for the others.

    Examples:
        >>> auto_coordinate("linear"), auto_coordinate("lookahead-accept")
        ('t', 'log_sigma')
    """
    from .policies import Lookahead, get_policy

    return "log_sigma" if isinstance(get_policy(policy if policy is not None else "linear"), Lookahead) else "t"


def log_sigma_at(alphas_cumprod: torch.Tensor, t: float) -> float:
    """log σ(t) of a training schedule, σ = sqrt((1 - ᾱ) / ᾱ), at a possibly fractional ``t``:
    log σ is interpolated linearly between the neighbouring training timesteps (the inverse of
    diffusers' ``_sigma_to_t``, which places Karras and midpoint sigmas at fractional t), ``t``
    clamped to the schedule; NaN where ᾱ is 0 or 1.

    Examples:
        >>> round(log_sigma_at(torch.tensor([0.8, 0.5, 0.2]), 1.0), 6)  # ᾱ = 0.5: σ = 1
        0.0
        >>> round(log_sigma_at(torch.tensor([0.8, 0.5, 0.2]), 1.5), 4)  # halfway from log 1 to log 2
        0.3466
    """
    last = alphas_cumprod.shape[0] - 1
    t = min(max(t, 0.0), float(last))
    low = int(math.floor(t))
    high = min(low + 1, last)
    frac = t - low
    values = []
    for index in (low, high):
        alpha = float(alphas_cumprod[index])
        if not 0.0 < alpha < 1.0:
            return math.nan
        values.append(0.5 * math.log((1.0 - alpha) / alpha))
    return (1 - frac) * values[0] + frac * values[1]


def scheduler_log_sigmas(scheduler: Any, timesteps: Sequence[Any]) -> list[float] | None:
    """log σ for each entry of ``timesteps``, or ``None`` when the scheduler cannot tell σ.

    Derived from each time *value*: from ``scheduler.alphas_cumprod`` (:func:`log_sigma_at`)
    wherever the scheduler has its training schedule -- every diffusers scheduler tiec's command
    line offers, and DPM-Solver SDE, whose midpoint evaluations have no entry of their own in
    ``sigmas``. Only a scheduler without ``alphas_cumprod`` falls back on ``scheduler.sigmas``, and
    only where it holds one decreasing σ per evaluation (plus the final one).

    Examples:
        >>> from diffusers import DPMSolverSDEScheduler
        >>> sde = DPMSolverSDEScheduler()
        >>> sde.set_timesteps(4)
        >>> [round(v, 2) for v in scheduler_log_sigmas(sde, sde.timesteps)[:3]]  # the midpoint is 2.36
        [3.22, 2.36, 1.5]
    """
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if isinstance(alphas, torch.Tensor) and alphas.dim() == 1:
        values = [log_sigma_at(alphas, float(t)) for t in timesteps]
        if all(math.isfinite(v) for v in values):
            return values
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.dim() == 1 and len(sigmas) == len(timesteps) + 1:
        values = [float(s) for s in sigmas[: len(timesteps)]]
        decreasing = all(b < a for a, b in zip(values, values[1:]))
        if decreasing and all(v > 0 and math.isfinite(v) for v in values):
            return [math.log(v) for v in values]
    return None


def coordinate_values(coordinate: str, scheduler: Any, timesteps: Sequence[Any],
                      policy: Any = None) -> tuple[str, list[float]]:
    """τ for each model evaluation of a run; returns the coordinate actually used and the values.

    ``"auto"`` is :func:`auto_coordinate` of ``policy`` (``None``: ``linear``), falling back on
    ``t`` where the scheduler cannot tell σ.

    Examples:
        >>> coordinate_values("step", None, [999, 500, 1])
        ('step', [0.0, 1.0, 2.0])
        >>> coordinate_values("auto", None, [999, 500, 1], policy="hold")
        ('t', [999.0, 500.0, 1.0])
    """
    if not isinstance(coordinate, str):
        raise TiecTypeError(f"coordinate must be a str, got {type(coordinate).__name__}")
    if coordinate not in COORDINATES:
        raise TiecValueError(f"coordinate {coordinate!r} is unknown; expected one of {COORDINATES}")
    if coordinate == "step":
        return "step", [float(i) for i in range(len(timesteps))]
    if coordinate == "auto" and auto_coordinate(policy) == "t":
        return "t", [float(t) for t in timesteps]
    if coordinate in ("auto", "log_sigma"):
        values = scheduler_log_sigmas(scheduler, timesteps)
        if values is not None:
            return "log_sigma", values
        if coordinate == "log_sigma":
            raise TiecValueError(
                f"coordinate='log_sigma' needs a scheduler with `sigmas` or `alphas_cumprod`; "
                f"{type(scheduler).__name__} has neither; use coordinate='t' or 'step'"
            )
    return "t", [float(t) for t in timesteps]
