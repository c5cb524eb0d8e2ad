"""The time coordinate τ the cache blends over: the model's timestep, log σ, or the step index.

On a small trained DiT with a Karras schedule, blending over log σ beat blending over ``t`` by
2-4 dB; with uniform DDIM steps the choices coincide up to scale. ``"auto"`` picks log σ whenever
the scheduler tells σ, and ``t`` otherwise.
"""

from __future__ import annotations

import math
from typing import Any, Literal, Sequence

import torch

from ._errors import TiecTypeError, TiecValueError

__all__ = ["Coordinate", "COORDINATES", "log_sigma_at", "scheduler_log_sigmas", "coordinate_values"]

Coordinate = Literal["auto", "t", "log_sigma", "step"]
COORDINATES = ("auto", "t", "log_sigma", "step")


def log_sigma_at(alphas_cumprod: torch.Tensor, t: float) -> float:
    """log σ(t) with σ = sqrt((1 - ᾱ) / ᾱ), ᾱ linearly interpolated at fractional ``t`` (clamped to
    the schedule); NaN where ᾱ is 0 or 1.

    Examples:
        >>> round(log_sigma_at(torch.tensor([0.8, 0.5, 0.2]), 1.0), 6)  # ᾱ = 0.5: σ = 1
        0.0
        >>> round(log_sigma_at(torch.tensor([0.8, 0.5, 0.2]), 1.5), 4)  # ᾱ = 0.35
        0.3095
    """
    last = alphas_cumprod.shape[0] - 1
    t = min(max(t, 0.0), float(last))
    low = int(math.floor(t))
    high = min(low + 1, last)
    frac = t - low
    alpha = (1 - frac) * float(alphas_cumprod[low]) + frac * float(alphas_cumprod[high])
    if not 0.0 < alpha < 1.0:
        return math.nan
    return 0.5 * math.log((1.0 - alpha) / alpha)


def scheduler_log_sigmas(scheduler: Any, timesteps: Sequence[Any]) -> list[float] | None:
    """log σ for each entry of ``timesteps``, or ``None`` when the scheduler cannot tell σ.

    Uses ``scheduler.sigmas`` when it is aligned with ``timesteps`` (one more entry, the final σ, as
    in diffusers' Euler, Heun, DPM-Solver, UniPC and LMS schedulers); otherwise derives σ from
    ``scheduler.alphas_cumprod`` at each (possibly fractional) timestep (DDIM, DDPM).
    """
    sigmas = getattr(scheduler, "sigmas", None)
    if isinstance(sigmas, torch.Tensor) and sigmas.dim() == 1 and len(sigmas) == len(timesteps) + 1:
        values = [float(s) for s in sigmas[: len(timesteps)]]
        if all(v > 0 and math.isfinite(v) for v in values):
            return [math.log(v) for v in values]
    alphas = getattr(scheduler, "alphas_cumprod", None)
    if isinstance(alphas, torch.Tensor) and alphas.dim() == 1:
        values = [log_sigma_at(alphas, float(t)) for t in timesteps]
        if all(math.isfinite(v) for v in values):
            return values
    return None


def coordinate_values(coordinate: str, scheduler: Any, timesteps: Sequence[Any]) -> tuple[str, list[float]]:
    """τ for each model evaluation of a run; returns the coordinate actually used and the values.

    Examples:
        >>> coordinate_values("step", None, [999, 500, 1])
        ('step', [0.0, 1.0, 2.0])
    """
    if not isinstance(coordinate, str):
        raise TiecTypeError(f"coordinate must be a str, got {type(coordinate).__name__}")
    if coordinate not in COORDINATES:
        raise TiecValueError(f"coordinate {coordinate!r} is unknown; expected one of {COORDINATES}")
    if coordinate == "step":
        return "step", [float(i) for i in range(len(timesteps))]
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
