"""The encoder/decoder split of diffusers' ``UNet2DConditionModel`` (SD 1.x/2.x, SDXL, DeepFloyd-IF).

The encoder is the embeddings, ``conv_in``, every down block (with ControlNet and T2I-Adapter
residuals) and the mid block, plus the first ``decoder_start`` up blocks; the decoder is the
remaining up blocks and ``conv_norm_out``/``conv_act``/``conv_out``, with the embeddings recomputed
for the current ``t``. Features are the skip tensors the remaining up blocks will read, followed by
the hidden state, ``(*skips, hidden)``.

The block iteration mirrors ``UNet2DConditionModel.forward`` of diffusers 0.42; the embeddings use
the model's own helpers (``get_time_embed``, ``get_class_embed``, ``get_aug_embed``,
``process_encoder_hidden_states``), so only the loop over blocks is re-implemented here.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Iterator, Optional

import torch

from tiec._errors import TiecNotImplementedError, TiecTypeError, TiecValueError
from tiec.blend import Features

from .._lazy import require

__all__ = ["UNet2DConditionSplit"]


@dataclass
class _Context:
    """Everything both halves derive from ``t`` and the conditioning (recomputed in each half)."""

    emb: torch.Tensor
    encoder_hidden_states: Any
    attention_mask: Optional[torch.Tensor]
    encoder_attention_mask: Optional[torch.Tensor]
    cross_attention_kwargs: Optional[dict[str, Any]]
    hint: Optional[torch.Tensor]


@contextlib.contextmanager
def _lora_scale(unet: Any, cross_attention_kwargs: Optional[dict[str, Any]]) -> Iterator[Optional[dict]]:
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


class UNet2DConditionSplit:
    """Split a ``UNet2DConditionModel`` between its encoder and decoder.

    Args:
        unet: the model (SD 1.x/2.x, SDXL, DeepFloyd-IF stage I/II, class-conditional UNets).
        decoder_start: the first up block the decoder runs. ``0`` is FasterDiffusion's split (the
            decoder is every up block); larger values also cache the first up blocks, whose output
            is then blended like the skips; ``len(unet.up_blocks)`` leaves only the output layers.

    ``encode``/``decode`` accept the model's own keywords: ``encoder_hidden_states``,
    ``class_labels``, ``timestep_cond``, ``attention_mask``, ``cross_attention_kwargs`` (LoRA
    ``scale`` included), ``added_cond_kwargs``, ``down_block_additional_residuals``,
    ``mid_block_additional_residual``, ``down_intrablock_additional_residuals`` and
    ``encoder_attention_mask``. Residuals act in the encoder only; the decoder ignores them.

    Examples:
        >>> import torch
        >>> from diffusers import UNet2DConditionModel
        >>> unet = UNet2DConditionModel(
        ...     sample_size=8, block_out_channels=(8, 16), layers_per_block=1, cross_attention_dim=8,
        ...     down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        ...     up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"), norm_num_groups=4,
        ...     attention_head_dim=2).eval()
        >>> split = UNet2DConditionSplit(unet, decoder_start=1)
        >>> x, text = torch.randn(1, 4, 8, 8), torch.randn(1, 3, 8)
        >>> with torch.no_grad():
        ...     features = split.encode(x, 10, encoder_hidden_states=text)
        ...     out = split.decode(features, 10, encoder_hidden_states=text)
        ...     expected = unet(x, 10, encoder_hidden_states=text).sample
        >>> torch.equal(out, expected)
        True
    """

    def __init__(self, unet: Any, *, decoder_start: int = 0) -> None:
        diffusers = require("diffusers", "diffusers")
        if not isinstance(unet, diffusers.UNet2DConditionModel):
            raise TiecTypeError(f"unet must be a diffusers UNet2DConditionModel, got {type(unet).__name__}")
        depth = len(unet.up_blocks)
        if isinstance(decoder_start, bool) or not isinstance(decoder_start, int) or not 0 <= decoder_start <= depth:
            raise TiecValueError(
                f"decoder_start must be an int in [0, {depth}] (the number of up blocks), got {decoder_start!r}"
            )
        if unet.config.addition_embed_type in ("text_image", "image") or unet.config.encoder_hid_dim_type in (
            "text_image_proj", "image_proj"
        ):
            raise TiecNotImplementedError(
                f"Kandinsky-style UNets (addition_embed_type={unet.config.addition_embed_type!r}, "
                f"encoder_hid_dim_type={unet.config.encoder_hid_dim_type!r}) are not supported yet"
            )
        k_blocks = sorted({type(b).__name__ for b in [*unet.down_blocks, *unet.up_blocks]
                           if type(b).__name__.startswith("K")})
        if k_blocks:  # the latent upscaler's: their skips hold None, and its timestep is log(σ)/4
            raise TiecNotImplementedError(
                f"UNets with k-diffusion blocks ({', '.join(k_blocks)}), as in StableDiffusionLatentUpscalePipeline, "
                "are not supported; run that pipeline without tiec"
            )
        self.unet = unet
        self.decoder_start = decoder_start

    def __repr__(self) -> str:
        return (
            f"UNet2DConditionSplit(decoder_start={self.decoder_start} of {len(self.unet.up_blocks)} "
            f"up blocks)"
        )

    # -- shared --------------------------------------------------------------------------------
    def _context(self, like: torch.Tensor, timestep: Any, cond: dict[str, Any],
                 cross_attention_kwargs: Optional[dict[str, Any]]) -> _Context:
        unet = self.unet
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
        return _Context(emb, encoder_hidden_states, attention_mask, encoder_attention_mask,
                        cross_attention_kwargs, hint)

    def _block_kwargs(self, block: Any, ctx: _Context) -> dict[str, Any]:
        if getattr(block, "has_cross_attention", False):
            return dict(
                encoder_hidden_states=ctx.encoder_hidden_states,
                attention_mask=ctx.attention_mask,
                cross_attention_kwargs=ctx.cross_attention_kwargs,
                encoder_attention_mask=ctx.encoder_attention_mask,
            )
        return {}

    def _up(self, start: int, stop: int, sample: torch.Tensor, skips: tuple[torch.Tensor, ...],
            ctx: _Context, forward_upsample_size: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        blocks = self.unet.up_blocks
        for i in range(start, stop):
            block = blocks[i]
            is_final_block = i == len(blocks) - 1
            res_samples = skips[-len(block.resnets):]
            skips = skips[: -len(block.resnets)]
            upsample_size = None
            if not is_final_block and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            sample = block(hidden_states=sample, temb=ctx.emb, res_hidden_states_tuple=res_samples,
                           upsample_size=upsample_size, **self._block_kwargs(block, ctx))
        return sample, skips

    def _needs_upsample_size(self, spatial: torch.Size) -> bool:
        factor = 2**self.unet.num_upsamplers
        return any(dim % factor != 0 for dim in spatial)

    # -- the split -----------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        """Embeddings, ``conv_in``, down blocks, mid block and the first ``decoder_start`` up blocks."""
        unet = self.unet
        with _lora_scale(unet, cond.get("cross_attention_kwargs")) as cross_attention_kwargs:
            ctx = self._context(x, t, cond, cross_attention_kwargs)
            sample = 2 * x - 1.0 if unet.config.center_input_sample else x
            if ctx.hint is not None:
                sample = torch.cat([sample, ctx.hint], dim=1)
            forward_upsample_size = self._needs_upsample_size(sample.shape[-2:])
            sample = unet.conv_in(sample)
            down_residuals = cond.get("down_block_additional_residuals")
            mid_residual = cond.get("mid_block_additional_residual")
            intrablock = cond.get("down_intrablock_additional_residuals")
            is_controlnet = mid_residual is not None and down_residuals is not None
            if intrablock is None and mid_residual is None and down_residuals is not None:
                intrablock = down_residuals  # the deprecated T2I-Adapter spelling, as upstream
            intrablock = list(intrablock) if intrablock is not None else None  # never pop the caller's
            skips: tuple[torch.Tensor, ...] = (sample,)
            for block in unet.down_blocks:
                kwargs = self._block_kwargs(block, ctx)
                if kwargs:
                    if intrablock:
                        kwargs["additional_residuals"] = intrablock.pop(0)
                    sample, res_samples = block(hidden_states=sample, temb=ctx.emb, **kwargs)
                else:
                    sample, res_samples = block(hidden_states=sample, temb=ctx.emb)
                    if intrablock:
                        # In place, as upstream: the block's last skip is this same tensor and
                        # receives the residual too.
                        sample += intrablock.pop(0)
                skips += res_samples
            if is_controlnet:
                skips = tuple(s + r for s, r in zip(skips, down_residuals))
            if unet.mid_block is not None:
                if getattr(unet.mid_block, "has_cross_attention", False):
                    sample = unet.mid_block(sample, ctx.emb, **self._block_kwargs(unet.mid_block, ctx))
                else:
                    sample = unet.mid_block(sample, ctx.emb)
                if intrablock and sample.shape == intrablock[0].shape:
                    sample += intrablock.pop(0)
            if is_controlnet:
                sample = sample + mid_residual
            sample, skips = self._up(0, self.decoder_start, sample, skips, ctx, forward_upsample_size)
        return (*skips, sample)

    def decode(self, features: Features, t: Any, **cond: Any) -> torch.Tensor:
        """The remaining up blocks and the output layers, with embeddings for the current ``t``."""
        unet = self.unet
        *skips, sample = features
        skips_tuple = tuple(skips)
        forward_upsample_size = bool(skips_tuple) and self._needs_upsample_size(skips_tuple[0].shape[-2:])
        with _lora_scale(unet, cond.get("cross_attention_kwargs")) as cross_attention_kwargs:
            ctx = self._context(sample, t, cond, cross_attention_kwargs)
            sample, _ = self._up(self.decoder_start, len(unet.up_blocks), sample, skips_tuple, ctx,
                                 forward_upsample_size)
            if unet.conv_norm_out:
                sample = unet.conv_act(unet.conv_norm_out(sample))
            return unet.conv_out(sample)
