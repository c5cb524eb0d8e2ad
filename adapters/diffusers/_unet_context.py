"""The per-call context of a ``UNet2DConditionModel``: embeddings, masks and LoRA scale.

Both halves of :class:`~tiec.adapters.diffusers.UNet2DConditionSplit` (and its shallow branch)
compute it for their own ``t``, with the model's own helpers, as ``UNet2DConditionModel.forward``
of diffusers 0.42 does.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from .._lazy import require

__all__ = ["Context", "lora_scale", "unet_context"]


@dataclass
class Context:
    """Everything both halves derive from ``t`` and the conditioning (recomputed in each half)."""

    emb: torch.Tensor
    encoder_hidden_states: Any
    attention_mask: Optional[torch.Tensor]
    encoder_attention_mask: Optional[torch.Tensor]
    cross_attention_kwargs: Optional[dict[str, Any]]
    hint: Optional[torch.Tensor]


@contextlib.contextmanager
def lora_scale(unet: Any, cross_attention_kwargs: Optional[dict[str, Any]]) -> Iterator[Optional[dict]]:
    """Apply the LoRA ``scale`` in ``cross_attention_kwargs`` as the model's forward does."""
    peft = require("diffusers.utils.peft_utils", "diffusers")
    utils = require("diffusers.utils", "diffusers")
    scale = 1.0
    if cross_attention_kwargs is not None:
        cross_attention_kwargs = dict(cross_attention_kwargs)
        scale = cross_attention_kwargs.pop("scale", 1.0)
    if utils.USE_PEFT_BACKEND:
        peft.scale_lora_layers(unet, scale)
    try:
        yield cross_attention_kwargs
    finally:
        if utils.USE_PEFT_BACKEND:
            peft.unscale_lora_layers(unet, scale)


def unet_context(unet: Any, like: torch.Tensor, timestep: Any, cond: dict[str, Any],
                 cross_attention_kwargs: Optional[dict[str, Any]]) -> Context:
    """The embeddings and attention inputs of one call, computed as the model's forward does."""
    encoder_hidden_states = cond.get("encoder_hidden_states")
    added_cond_kwargs = cond.get("added_cond_kwargs")
    attention_mask = cond.get("attention_mask")
    encoder_attention_mask = cond.get("encoder_attention_mask")
    if attention_mask is not None:
        attention_mask = ((1 - attention_mask.to(like.dtype)) * -10000.0).unsqueeze(1)
    if encoder_attention_mask is not None:
        encoder_attention_mask = ((1 - encoder_attention_mask.to(like.dtype)) * -10000.0).unsqueeze(1)
    t_emb = unet.get_time_embed(sample=like, timestep=timestep)
    emb = unet.time_embedding(t_emb, cond.get("timestep_cond"))
    class_emb = unet.get_class_embed(sample=like, class_labels=cond.get("class_labels"))
    if class_emb is not None:
        emb = torch.cat([emb, class_emb], dim=-1) if unet.config.class_embeddings_concat else emb + class_emb
    aug_emb = unet.get_aug_embed(
        emb=emb, encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    hint = None
    if unet.config.addition_embed_type == "image_hint":
        aug_emb, hint = aug_emb
    emb = emb + aug_emb if aug_emb is not None else emb
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    encoder_hidden_states = unet.process_encoder_hidden_states(
        encoder_hidden_states=encoder_hidden_states, added_cond_kwargs=added_cond_kwargs
    )
    if cross_attention_kwargs is not None and cross_attention_kwargs.get("gligen") is not None:
        cross_attention_kwargs = dict(cross_attention_kwargs)
        gligen_args = cross_attention_kwargs.pop("gligen")
        cross_attention_kwargs["gligen"] = {"objs": unet.position_net(**gligen_args)}
    return Context(emb, encoder_hidden_states, attention_mask, encoder_attention_mask,
                   cross_attention_kwargs, hint)
