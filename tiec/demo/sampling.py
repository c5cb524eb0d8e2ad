"""Sampling the demo DiT with tiec, and turning samples into pictures."""

from __future__ import annotations

import inspect
from typing import Any, Optional, Sequence

import torch

from .._errors import TiecValueError
from ..loop import SampleResult, sample

__all__ = ["sample_digits", "to_unit"]


@torch.no_grad()
def sample_digits(demo: Any, labels: Sequence[int], *, steps: int = 50, scheduler: str = "ddim",
                  keys: Any = None, policy: Any = "linear", guidance_scale: float = 1.0,
                  encoder_blocks: Optional[int] = None, parallel_decode: bool = False, seed: int = 0,
                  seeds: Optional[Sequence[int]] = None, progress: bool = False,
                  coordinate: str = "auto", noise_injection: bool = False,
                  branch_depth: Optional[int] = None, split: Any = None) -> SampleResult:
    """Sample one image per label from a demo model; the noise of image ``i`` comes from ``seed + i``,
    or from ``seeds[i]`` when given.

    Each image has a generator of its own, seeded with its seed: it draws the starting noise, then
    the step noise of a stochastic scheduler (DDPM, Euler ancestral), so an image does not depend
    on the batch it is sampled in, and two runs give the same images.

    ``encoder_blocks`` is the split depth: DiT blocks in the encoder, or the UNet's first decoder
    up block (``None``: the model's default); ``branch_depth`` (UNet only) gives a shallow branch
    instead (:class:`tiec.adapters.diffusers.UNet2DConditionSplit`). ``split`` replaces the split
    those two would build (a wrapper of it, e.g. :func:`tiec.fit_blend`'s recorder).

    Returns the :class:`tiec.SampleResult`; its ``sample`` is ``(N, 1, 16, 16)`` in about [-1, 1].
    """
    labels_t = torch.as_tensor(list(labels), dtype=torch.long)
    shape = (1, demo.transformer.config.in_channels, demo.resolution, demo.resolution)  # (1, C, H, W)
    weight = next(demo.transformer.parameters())
    seeds = [seed + i for i in range(len(labels_t))] if seeds is None else list(seeds)
    if len(seeds) != len(labels_t):
        raise TiecValueError(f"seeds must hold one seed per label ({len(labels_t)}), got {len(seeds)}")
    generators = [torch.Generator().manual_seed(s) for s in seeds]
    noise = torch.cat([torch.randn(shape, generator=g) for g in generators]).to(weight.device, weight.dtype)
    labels_t = labels_t.to(weight.device)
    guided = guidance_scale != 1.0
    scheduler_ = demo.scheduler(scheduler)
    stochastic = "generator" in inspect.signature(scheduler_.step).parameters
    if split is not None:
        pass
    elif branch_depth is not None:
        if not hasattr(demo, "tokens"):
            raise TiecValueError(f"branch_depth={branch_depth} is a UNet split; this demo model is a DiT")
        split = demo.split(encoder_blocks, branch_depth=branch_depth)
    else:
        split = demo.split(encoder_blocks)
    return sample(
        split, scheduler_, noise, num_inference_steps=steps, keys=keys,
        step_kwargs={"generator": generators} if stochastic else None,
        policy=policy, coordinate=coordinate, cond={"class_labels": labels_t},
        guidance=guidance_scale if guided else None,
        uncond={"class_labels": torch.tensor([demo.null_label], device=weight.device)} if guided else None,
        parallel_decode=parallel_decode, noise_injection=noise_injection, progress=progress,
    )


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """Model space [-1, 1] to [0, 1], clamped."""
    return (images.float() / 2 + 0.5).clamp(0, 1)
