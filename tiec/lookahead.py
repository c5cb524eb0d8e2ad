"""Lookahead: predict the next key's latent with a one-step jump, so the cache can *interpolate*.

At a key step ``i`` the model output gives the clean image ``x0`` and the noise ``eps``. The latent at
the next key ``j`` is predicted by moving ``x0`` back to ``j``'s noise level along the same noise,
``x̂_j = x0 + σ_j·eps`` (in σ-space; scaled by ``1/sqrt(1+σ_j²)`` in the variance-preserving space
of DDIM, DDPM, DPM-Solver and UniPC). The encoder runs on ``x̂_j`` and the steps between the two keys
blend between real and predicted features instead of extrapolating past the newest key.

σ is the variance-exploding noise level, ``σ = sqrt((1 - ᾱ) / ᾱ)``, read from the scheduler as
:func:`tiec.scheduler_log_sigmas` does.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._errors import TiecValueError

__all__ = ["predict_latent", "model_input_scale", "is_sigma_space"]


def is_sigma_space(scheduler: Any) -> bool:
    """Whether the scheduler's latent is ``x0 + σ·eps`` (Euler, Heun, LMS: ``init_noise_sigma > 1``)
    rather than variance preserving ``(x0 + σ·eps) / sqrt(1 + σ²)`` (DDIM, DDPM, DPM-Solver, UniPC)."""
    return float(getattr(scheduler, "init_noise_sigma", 1.0)) > 1.0


def model_input_scale(scheduler: Any, sigma: float) -> float:
    """The factor ``scheduler.scale_model_input`` applies at noise level ``sigma``.

    Computed here instead of calling the scheduler, whose Euler-type classes scale by the σ of
    their *current* step whatever timestep they are given.
    """
    return 1.0 / math.sqrt(sigma * sigma + 1.0) if is_sigma_space(scheduler) else 1.0


def predict_latent(scheduler: Any, x: torch.Tensor, output: torch.Tensor, sigma_from: float,
                   sigma_to: float) -> torch.Tensor:
    """The latent at noise level ``sigma_to`` predicted from the model ``output`` at ``(x, sigma_from)``.

    Args:
        scheduler: the run's scheduler: its space (see :func:`is_sigma_space`) and its
            ``config.prediction_type`` (``"epsilon"``, ``"v_prediction"`` or ``"sample"``).
        x: the latent the model was evaluated at (before ``scale_model_input``).
        output: the model output; extra channels (a learned variance) are dropped.
        sigma_from: σ of the evaluated step (> 0).
        sigma_to: σ of the target step (>= 0).

    Examples:
        >>> from diffusers import DDIMScheduler
        >>> x0, eps = torch.ones(1, 1, 2, 2), torch.full((1, 1, 2, 2), 0.5)
        >>> vp = lambda sigma: (x0 + sigma * eps) / math.sqrt(1 + sigma**2)
        >>> x_hat = predict_latent(DDIMScheduler(), vp(3.0), eps, 3.0, 1.0)
        >>> torch.allclose(x_hat, vp(1.0))
        True
    """
    if not (sigma_from > 0 and sigma_to >= 0 and math.isfinite(sigma_from) and math.isfinite(sigma_to)):
        raise TiecValueError(f"lookahead needs finite noise levels, got sigma_from={sigma_from}, sigma_to={sigma_to}")
    config = getattr(scheduler, "config", None)
    prediction = getattr(config, "prediction_type", "epsilon") if config is not None else "epsilon"
    sigma_space = is_sigma_space(scheduler)
    out = output[:, : x.shape[1]].to(torch.float32)
    xf = x.to(torch.float32)
    scale = 1.0 if sigma_space else 1.0 / math.sqrt(1.0 + sigma_from**2)  # x = scale · (x0 + σ·eps)
    if prediction == "epsilon":
        eps = out
        x0 = xf / scale - sigma_from * eps
    elif prediction == "sample":
        x0 = out
        eps = (xf / scale - x0) / sigma_from
    elif prediction == "v_prediction" and not sigma_space:
        a, b = scale, scale * sigma_from  # x = a·x0 + b·eps, v = a·eps - b·x0
        x0 = a * xf - b * out
        eps = b * xf + a * out
    else:
        raise TiecValueError(
            f"lookahead supports prediction_type 'epsilon', 'sample' and (variance preserving) 'v_prediction'; "
            f"{type(scheduler).__name__} has {prediction!r}"
        )
    target = x0 + sigma_to * eps
    if not sigma_space:
        target = target / math.sqrt(1.0 + sigma_to**2)
    return target.to(x.dtype)
