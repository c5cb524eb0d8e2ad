"""``tiec bench --speed``: wall time per step on full-size architectures with random weights (speed
does not depend on weights), against the MAC-count bound
``1 / (1 - encoder_share · (1 - key_fraction))``.
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import torch

from .._errors import TiecValueError
from ..progress import progress_bar
from .grid import GUIDANCE, Method, branch, split_options
from .report import machine

__all__ = ["SPEED_ARCHS", "bench_speed", "cache_bytes", "speed_methods", "split_shares", "unet_splits"]

SPEED_ARCHS = ("sd15-unet", "dit-xl-2")


def unet_splits(unet: Any) -> list[Any]:
    """The UNet splits whose MAC shares and cache sizes the SD 1.5 speed run reports: the decoder
    from each up block (``0`` is FasterDiffusion's), and the shallow branch's finest cut and
    outermost block (``conv_in`` and the first down block's layers)."""
    return [*range(len(unet.up_blocks)), branch(1), branch(1 + len(unet.down_blocks[0].resnets))]


def _millions(model: torch.nn.Module) -> int:
    return round(sum(p.numel() for p in model.parameters()) / 1e6)


def _full_size(arch: str) -> tuple[Any, Any, dict, dict, Any, str]:
    """(model, split builder, cond, uncond, output_fn, description) with random weights."""
    import diffusers

    from ..adapters.diffusers import DiTSplit, UNet2DConditionSplit

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
        return (unet, lambda depth: UNet2DConditionSplit(unet, **split_options(depth or 0, "decoder_start")),
                cond, uncond, None,
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


def cache_bytes(features: Any, split: Any, policy: Any) -> int:
    """Bytes a cache holds at most for ``features`` (the encoder's output on one input): the
    cached part (:func:`tiec.protocol.cached_part`) times the keys ``policy`` keeps."""
    from ..policies import get_policy
    from ..protocol import cached_part

    per_key = sum(f.numel() * f.element_size() for f in cached_part(split, features))
    return per_key * get_policy(policy).keys_needed


@torch.no_grad()
def split_shares(make_split: Any, depths: Any, cond: dict, uncond: dict, latent: int) -> list[dict]:
    """For each split depth, on one image with guidance at a ``latent`` x ``latent`` latent: the
    encoder's share of a key step's MACs, the share a non-key step saves, and the bytes a
    ``linear`` cache holds (two keys)."""
    from ..flops import encoder_share
    from ..guidance import ClassifierFreeGuidance

    x = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(2))
    rows = []
    for depth in depths:
        guided = ClassifierFreeGuidance(make_split(depth), GUIDANCE, uncond)
        share = encoder_share(guided, x, 999, **cond)
        (option, value), = split_options(depth, "decoder_start").items()
        rows.append(dict(split=f"{option}={value}",
                         latent=latent, encoder_share=share.share, saved_share=share.saved_share,
                         key_step_macs=(share.encoder_flops + share.decoder_flops) // 2,
                         non_key_step_macs=(share.decoder_flops + share.refresh_flops) // 2,
                         cache_bytes=cache_bytes(guided.encode(x, 999, **cond), guided, "linear")))
    return rows


def speed_methods(arch: str) -> list[Method]:
    methods = [Method("reference (every step a key)", "reference", 0)]
    for every in (2, 3, 5):
        methods.append(Method(f"TIEC linear, keys every:{every}", "tiec", 0, f"every:{every}", "linear"))
    methods += [Method("FasterDiffusion hold, keys every:3", "fasterdiffusion", 0, "every:3", "hold"),
                Method("TIEC lookahead, keys every:3", "tiec", 0, "every:3", "lookahead"),
                Method("TIEC lookahead-accept, keys every:3", "tiec", 0, "every:3", "lookahead-accept"),
                Method("TIEC linear, keys every:3, parallel decoding", "tiec", 0, "every:3", "linear",
                       parallel_decode=True)]
    if arch == "sd15-unet":  # the shallow branch: the finest cut (conv_in) and the outermost block each side
        for every in (2, 3, 5):
            methods.append(Method(f"TIEC branch 1 (finest cut) linear, keys every:{every}", "branch", 0,
                                  f"every:{every}", "linear", peer_options=(("depth", branch(1)),)))
        methods.append(Method("TIEC branch 3 (block cut) linear, keys every:3", "branch", 0, "every:3", "linear",
                              peer_options=(("depth", branch(3)),)))
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

    from ..flops import encoder_share
    from ..guidance import ClassifierFreeGuidance
    from ..loop import sample

    start = time.perf_counter()
    model, make_split, cond, uncond, output_fn, description = _full_size(arch)
    noise = torch.randn(1, 4, 32, 32, generator=torch.Generator().manual_seed(1))
    rows = []
    shares: dict[Any, Any] = {}
    features: dict[Any, Any] = {}
    with progress_bar(total=len(speed_methods(arch)) * repeats, enabled=progress, desc=arch) as bar:
        for method in speed_methods(arch):
            depth = dict(method.peer_options).get("depth")
            split = make_split(depth)
            if depth not in shares:
                guided = ClassifierFreeGuidance(split, GUIDANCE, uncond)
                shares[depth] = encoder_share(guided, noise, 999, **cond)
                features[depth] = guided.encode(noise, 999, **cond)
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
            work = (result.encoder_calls * share.encoder_flops + steps * share.decoder_flops
                    + result.refresh_calls * share.refresh_flops)
            rows.append(dict(name=method.name, family=method.family, keys=method.keys, policy=method.policy,
                             parallel_decode=method.parallel_decode, split_depth=depth,
                             encoder_calls=result.encoder_calls, decoder_calls=result.decoder_calls,
                             seconds_per_step_median=statistics.median(seconds) / steps,
                             seconds_per_step_min=min(seconds) / steps, seconds_per_step_max=max(seconds) / steps,
                             encoder_share=share.share, saved_share=share.saved_share,
                             refresh_calls=result.refresh_calls,
                             cache_bytes=cache_bytes(features[depth], split, method.policy),
                             mac_bound=steps * (share.encoder_flops + share.decoder_flops) / work))
    reference = rows[0]["seconds_per_step_median"]
    for row in rows:
        row["speedup"] = reference / row["seconds_per_step_median"]
    splits = []
    if arch == "sd15-unet":  # each UNet split at the timed size and at SD 1.5's own 512 px
        splits = [row for latent in (noise.shape[-1], 64)
                  for row in split_shares(make_split, unet_splits(model), cond, uncond, latent)]
    return dict(arch=arch, description=description, steps=steps, repeats=repeats, scheduler="ddim",
                guidance_scale=GUIDANCE, machine=machine(), seconds=round(time.perf_counter() - start, 1),
                rows=rows, splits=splits)
