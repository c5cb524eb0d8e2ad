"""Peer caching methods for the benchmark, run from their own packages on the demo models (their
rows are picked in :func:`tiec.bench.grid.peer_methods`).

- UNet: DeepCache (``DeepCache`` on PyPI), its ``DeepCacheSDHelper`` on a
  ``StableDiffusionPipeline`` built around the demo UNet (class tokens as prompt embeddings, the
  same DDIM/DPM scheduler, guidance, noise and labels as every other row).
- DiT: diffusers' own cache hooks on a copy of the transformer (``apply_first_block_cache``,
  ``apply_taylorseer_cache``, ``apply_pyramid_attention_broadcast``), called by tiec's loop with
  every step evaluated in full, inside the cache context the hooks need.

Whatever a peer raises becomes its row's error text in the benchmark.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any, Sequence

import torch

from .grid import GUIDANCE, Method

__all__ = ["run_peer"]


def _noise(runner: Any, seeds: Sequence[int]) -> torch.Tensor:
    demo = runner.demo
    shape = (1, demo.transformer.config.in_channels, demo.resolution, demo.resolution)
    return torch.cat([torch.randn(shape, generator=torch.Generator().manual_seed(s)) for s in seeds]).to(runner.device)


@torch.no_grad()
def run_peer(runner: Any, method: Method, labels: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, Any, int]:
    """(images in [0, 1], encoder calls (``None``: the peer has no such notion), model calls)."""
    if method.peer == "deepcache":
        return _deepcache(runner, method, labels, seeds)
    return _diffusers_hook(runner, method, labels, seeds)


def _deepcache(runner: Any, method: Method, labels: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, Any, int]:
    from DeepCache import DeepCacheSDHelper
    from diffusers import StableDiffusionPipeline

    from ..demo.sampling import to_unit

    demo = runner.demo
    with warnings.catch_warnings():  # the pipeline would rewrite steps_offset; the scheduler is replaced below
        warnings.filterwarnings("ignore", message="(?s).*steps_offset", category=FutureWarning)
        pipe = StableDiffusionPipeline(vae=None, text_encoder=None, tokenizer=None, unet=demo.transformer,
                                       scheduler=demo.scheduler(runner.scheduler_name), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.scheduler = demo.scheduler(runner.scheduler_name)  # the same timesteps as every other row
    pipe.set_progress_bar_config(disable=True)
    label_tensor = torch.tensor(list(labels), device=runner.device)
    embeds = demo.tokens(label_tensor)[:, None]
    negative = demo.tokens(torch.full_like(label_tensor, demo.null_label))[:, None]
    calls = [0]
    helper = DeepCacheSDHelper(pipe=pipe)
    helper.set_params(**dict(method.peer_options))
    helper.enable()
    inner = pipe.unet.forward

    def counted(*args: Any, **kwargs: Any) -> Any:
        calls[0] += 1
        return inner(*args, **kwargs)

    pipe.unet.forward = counted
    try:
        out = pipe(prompt_embeds=embeds, negative_prompt_embeds=negative, latents=_noise(runner, seeds),
                   num_inference_steps=method.steps, guidance_scale=GUIDANCE, output_type="latent")
    finally:
        pipe.unet.forward = inner
        helper.disable()
    return to_unit(out.images).cpu(), None, calls[0]


class _FullModel:
    """A split whose decoder runs the whole hooked transformer inside a diffusers cache context."""

    def __init__(self, transformer: Any, num_steps: int, timesteps: list[float]) -> None:
        self.transformer = transformer
        self.num_steps = num_steps
        self.timesteps = timesteps
        self.calls = 0

    def encode(self, x: torch.Tensor, t: Any, **cond: Any) -> tuple[torch.Tensor]:
        return (x,)

    def decode(self, features: Any, t: Any, *, class_labels: torch.Tensor) -> torch.Tensor:
        from diffusers.hooks.hooks import CacheContext, _set_cache_context

        context = CacheContext("cond", step_index=self.calls, num_inference_steps=self.num_steps, timestep=t)
        _set_cache_context(self.transformer, context)
        try:
            time = torch.as_tensor(t, device=features[0].device).reshape(-1).expand(features[0].shape[0])
            out = self.transformer(features[0], timestep=time, class_labels=class_labels).sample
        finally:
            _set_cache_context(self.transformer, None)
        self.calls += 1
        return out


def _diffusers_hook(runner: Any, method: Method, labels: Sequence[int], seeds: Sequence[int]) -> tuple[torch.Tensor, Any, int]:
    from diffusers import hooks

    from ..demo.sampling import to_unit
    from ..loop import sample

    demo = runner.demo
    transformer = copy.deepcopy(demo.transformer)
    scheduler = demo.scheduler(runner.scheduler_name)
    scheduler.set_timesteps(method.steps)
    timesteps = [float(t) for t in scheduler.timesteps]
    model = _FullModel(transformer, method.steps, timesteps)
    options = dict(method.peer_options)
    if method.peer == "first-block-cache":
        hooks.apply_first_block_cache(transformer, hooks.FirstBlockCacheConfig(**options))
    elif method.peer == "taylorseer":
        # Whole DiT blocks are hooked: the default patterns name attention modules "...attn", which
        # DiT's "attn1" does not match in full.
        options["cache_identifiers"] = list(options.get("cache_identifiers", ()))
        hooks.apply_taylorseer_cache(transformer, hooks.TaylorSeerCacheConfig(taylor_factors_dtype=torch.float32,
                                                                             **options))
    elif method.peer == "pyramid-attention-broadcast":
        current = {"t": timesteps[0]}
        config = hooks.PyramidAttentionBroadcastConfig(current_timestep_callback=lambda: current["t"], **options)
        hooks.apply_pyramid_attention_broadcast(transformer, config)
        decode = model.decode

        def tracking(features: Any, t: Any, **cond: Any) -> torch.Tensor:
            current["t"] = float(torch.as_tensor(t).reshape(-1)[0])
            return decode(features, t, **cond)

        model.decode = tracking  # type: ignore[method-assign]
    else:
        raise ValueError(f"unknown peer {method.peer!r}")
    label_tensor = torch.tensor(list(labels), device=runner.device)
    result = sample(model, scheduler, _noise(runner, seeds), num_inference_steps=method.steps,
                    cond={"class_labels": label_tensor}, guidance=GUIDANCE,
                    uncond={"class_labels": torch.tensor([demo.null_label], device=runner.device)})
    return to_unit(result.sample).cpu(), None, model.calls
