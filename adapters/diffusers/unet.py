"""The encoder/decoder split of diffusers' ``UNet2DConditionModel`` (SD 1.x/2.x, SDXL, DeepFloyd-IF).

Two topologies, both bit-exact to the model's forward when every step is a key:

* *Deep decoder start* (``decoder_start``): the encoder is the embeddings, ``conv_in``, every down
  block (with ControlNet and T2I-Adapter residuals) and the mid block, plus the first
  ``decoder_start`` up blocks; the decoder is the remaining up blocks and
  ``conv_norm_out``/``conv_act``/``conv_out``, with the embeddings recomputed for the current ``t``.
  Features are the skip tensors the remaining up blocks will read, followed by the hidden state,
  ``(*skips, hidden)``; all of them are cached.
* *Shallow branch* (``branch_depth``, DeepCache's topology): the ``branch_depth`` outermost skips --
  ``conv_in``'s output and the down layers after it, one skip each -- are recomputed from the
  current input at every step (``refresh``), and the decoder is the up layers that read them plus
  the output layers. Only the deep part's output, the hidden state entering those up layers, is
  cached. Features are ``(hidden, *fresh_skips)`` with ``fresh_features = branch_depth``.

A *layer* is one resnet (with its attention) or one down/upsampler: the unit that writes or reads
one skip. Cuts inside a block run its layers one by one, as the block's forward does; diffusers'
standard blocks (``DownBlock2D``, ``CrossAttnDownBlock2D``, ``ResnetDownsampleBlock2D``,
``SimpleCrossAttnDownBlock2D`` and their up counterparts) support it, and other blocks can be cut
at their boundaries.

The block iteration mirrors ``UNet2DConditionModel.forward`` of diffusers 0.42; the embeddings use
the model's own helpers (``get_time_embed``, ``get_class_embed``, ``get_aug_embed``,
``process_encoder_hidden_states``), so only the loop over blocks is re-implemented here.
"""

from __future__ import annotations

from typing import Any, Optional

import torch

from tiec._errors import TiecNotImplementedError, TiecTypeError, TiecValueError
from tiec.blend import Features

from .._lazy import require
from ._unet_context import Context, lora_scale as _lora_scale, unet_context

__all__ = ["UNet2DConditionSplit", "skip_count"]


_LAYERED_DOWN = ("DownBlock2D", "CrossAttnDownBlock2D", "ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D")
_LAYERED_UP = ("UpBlock2D", "CrossAttnUpBlock2D", "ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")


def _down_layers_of(block: Any) -> int:
    """The layers of a down block, one skip each: its resnets and its downsampler."""
    return len(block.resnets) + (block.downsamplers is not None)


def skip_count(unet: Any) -> int:
    """The number of skip tensors of ``unet``'s down path (``conv_in``'s output included): the
    largest ``branch_depth``."""
    return 1 + sum(_down_layers_of(block) for block in unet.down_blocks)


def _uncuttable_block(unet: Any, depth: int) -> Optional[str]:
    """``None`` when ``branch_depth=depth`` cuts only blocks that can run layer by layer, else the
    name of the first block it would cut inside that cannot."""
    remaining = depth - 1  # down layers after conv_in
    for block in unet.down_blocks:
        size = _down_layers_of(block)
        if 0 < remaining < size and type(block).__name__ not in _LAYERED_DOWN:
            return type(block).__name__
        remaining -= size
        if remaining <= 0:
            break
    remaining = depth  # the last up layers, counted from the output
    for block in reversed(unet.up_blocks):
        size = len(block.resnets)
        if 0 < remaining < size and type(block).__name__ not in _LAYERED_UP:
            return type(block).__name__
        remaining -= size
        if remaining <= 0:
            break
    return None


class UNet2DConditionSplit:
    """Split a ``UNet2DConditionModel`` between its encoder and decoder.

    Args:
        unet: the model (SD 1.x/2.x, SDXL, DeepFloyd-IF stage I/II, class-conditional UNets).
        decoder_start: the first up block the decoder runs. ``0`` is FasterDiffusion's split (the
            decoder is every up block); larger values also cache the first up blocks, whose output
            is then blended like the skips; ``len(unet.up_blocks)`` leaves only the output layers.
        branch_depth: instead, a shallow branch of this many outermost layers recomputed at every
            step (see the module docs): ``1`` is ``conv_in`` and the last up layer (the finest
            cut), ``layers_per_block + 1`` the whole outermost block each side (``conv_in`` and the
            first down block's resnets), up to :func:`skip_count`. ``None``: no branch.

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

    def __init__(self, unet: Any, *, decoder_start: int = 0, branch_depth: Optional[int] = None) -> None:
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
        skips = skip_count(unet)
        if branch_depth is not None:
            if isinstance(branch_depth, bool) or not isinstance(branch_depth, int) or not 1 <= branch_depth <= skips:
                raise TiecValueError(
                    f"branch_depth must be None or an int in [1, {skips}] (the skips of the down path), "
                    f"got {branch_depth!r}"
                )
            if decoder_start:
                raise TiecValueError(
                    f"give either decoder_start ({decoder_start}) or branch_depth ({branch_depth}), not both: "
                    "they are two topologies"
                )
            blocked = _uncuttable_block(unet, branch_depth)
            if blocked is not None:
                raise TiecNotImplementedError(
                    f"branch_depth={branch_depth} cuts inside a {blocked}, which tiec cannot run layer by "
                    f"layer; choose a depth at that block's boundary"
                )
        self.unet = unet
        self.decoder_start = decoder_start
        self.branch_depth = branch_depth
        self.fresh_features = branch_depth or 0
        """How many trailing features are recomputed every step (``branch_depth``, or 0)."""
        self._skips = skips
        up_layers = [len(block.resnets) for block in unet.up_blocks]
        self._up_total = sum(up_layers)
        # Up-layer positions: the encoder runs [0, cut), the decoder [cut, total).
        self._up_cut = (self._up_total - branch_depth if branch_depth is not None
                        else sum(up_layers[:decoder_start]))

    def __repr__(self) -> str:
        if self.branch_depth is not None:
            return f"UNet2DConditionSplit(branch_depth={self.branch_depth} of {self._skips} skips)"
        return (
            f"UNet2DConditionSplit(decoder_start={self.decoder_start} of {len(self.unet.up_blocks)} "
            f"up blocks)"
        )

    # -- shared --------------------------------------------------------------------------------
    def _context(self, like: torch.Tensor, timestep: Any, cond: dict[str, Any],
                 cross_attention_kwargs: Optional[dict[str, Any]]) -> Context:
        return unet_context(self.unet, like, timestep, cond, cross_attention_kwargs)

    def _block_kwargs(self, block: Any, ctx: Context) -> dict[str, Any]:
        if getattr(block, "has_cross_attention", False):
            return dict(
                encoder_hidden_states=ctx.encoder_hidden_states,
                attention_mask=ctx.attention_mask,
                cross_attention_kwargs=ctx.cross_attention_kwargs,
                encoder_attention_mask=ctx.encoder_attention_mask,
            )
        return {}

    def _attend(self, block: Any, attention: Any, sample: torch.Tensor, ctx: Context) -> torch.Tensor:
        """One attention layer of ``block``, called as the block's forward calls it."""
        if type(block).__name__.startswith("SimpleCrossAttn"):
            mask = ctx.attention_mask
            if mask is None:
                mask = None if ctx.encoder_hidden_states is None else ctx.encoder_attention_mask
            return attention(sample, encoder_hidden_states=ctx.encoder_hidden_states, attention_mask=mask,
                             **(ctx.cross_attention_kwargs or {}))
        return attention(sample, encoder_hidden_states=ctx.encoder_hidden_states,
                         cross_attention_kwargs=ctx.cross_attention_kwargs, attention_mask=ctx.attention_mask,
                         encoder_attention_mask=ctx.encoder_attention_mask, return_dict=False)[0]

    def _up_layers(self, block: Any, first: int, stop: int, sample: torch.Tensor, skips: tuple[torch.Tensor, ...],
                   ctx: Context, upsample_size: Any) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Layers ``[first, stop)`` of an up block (its upsampler too when ``stop`` is its end)."""
        attentions = getattr(block, "attentions", None)
        freeu = all(getattr(block, name, None) for name in ("s1", "s2", "b1", "b2"))
        for j in range(first, stop):
            skip, skips = skips[-1], skips[:-1]
            if freeu:
                apply_freeu = require("diffusers.utils.torch_utils", "diffusers").apply_freeu
                sample, skip = apply_freeu(block.resolution_idx, sample, skip,
                                           s1=block.s1, s2=block.s2, b1=block.b1, b2=block.b2)
            sample = block.resnets[j](torch.cat([sample, skip], dim=1), ctx.emb)
            if attentions is not None:
                sample = self._attend(block, attentions[j], sample, ctx)
        if stop == len(block.resnets) and block.upsamplers is not None:
            with_temb = type(block).__name__ in ("ResnetUpsampleBlock2D", "SimpleCrossAttnUpBlock2D")
            for upsampler in block.upsamplers:
                sample = upsampler(sample, ctx.emb) if with_temb else upsampler(sample, upsample_size)
        return sample, skips

    def _up(self, start: int, stop: int, sample: torch.Tensor, skips: tuple[torch.Tensor, ...],
            ctx: Context, forward_upsample_size: bool) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """Up layers at positions ``[start, stop)`` (position = index of the layer over all up blocks):
        whole blocks through their own forward, the parts of cut blocks layer by layer."""
        blocks = self.unet.up_blocks
        position = 0
        for i, block in enumerate(blocks):
            size = len(block.resnets)
            first, last = max(start, position) - position, min(stop, position + size) - position
            position += size
            if first >= last:
                continue
            upsample_size = None
            if i != len(blocks) - 1 and forward_upsample_size and last == size:
                upsample_size = skips[-1 - size + first].shape[2:]
            if first == 0 and last == size:
                res_samples, skips = skips[-size:], skips[:-size]
                sample = block(hidden_states=sample, temb=ctx.emb, res_hidden_states_tuple=res_samples,
                               upsample_size=upsample_size, **self._block_kwargs(block, ctx))
            else:
                sample, skips = self._up_layers(block, first, last, sample, skips, ctx, upsample_size)
        return sample, skips

    def _down(self, sample: torch.Tensor, ctx: Context, intrablock: Optional[list[torch.Tensor]],
              stop: Optional[int] = None) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The down blocks from ``conv_in``'s output until ``stop`` skips are made (``None``: all):
        whole blocks through their own forward, a cut block layer by layer. Pops ``intrablock``."""
        skips: tuple[torch.Tensor, ...] = (sample,)
        for block in self.unet.down_blocks:
            if stop is not None and len(skips) >= stop:
                break
            if stop is not None and len(skips) + _down_layers_of(block) > stop:
                return self._down_layers(block, stop - len(skips), sample, skips, ctx, intrablock)
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
        return sample, skips

    def _down_layers(self, block: Any, count: int, sample: torch.Tensor, skips: tuple[torch.Tensor, ...],
                     ctx: Context, intrablock: Optional[list[torch.Tensor]]
                     ) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
        """The first ``count`` layers of a down block (fewer than all of them)."""
        attentions = getattr(block, "attentions", None)
        last = len(block.resnets) - 1
        for j in range(min(count, len(block.resnets))):
            sample = block.resnets[j](sample, ctx.emb)
            if attentions is not None:
                sample = self._attend(block, attentions[j], sample, ctx)
                if j == last and intrablock:  # cross-attention blocks add it before their downsampler
                    sample = sample + intrablock.pop(0)
            skips += (sample,)
        return sample, skips

    def _needs_upsample_size(self, spatial: torch.Size) -> bool:
        factor = 2**self.unet.num_upsamplers
        return any(dim % factor != 0 for dim in spatial)

    # -- the split -----------------------------------------------------------------------------
    def _stem(self, x: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, bool]:
        """``conv_in`` on the (centred, hinted) input; and whether upsamplers need explicit sizes."""
        sample = 2 * x - 1.0 if self.unet.config.center_input_sample else x
        if ctx.hint is not None:
            sample = torch.cat([sample, ctx.hint], dim=1)
        return self.unet.conv_in(sample), self._needs_upsample_size(sample.shape[-2:])

    @staticmethod
    def _residuals(cond: dict[str, Any]) -> tuple[Any, Any, Optional[list[torch.Tensor]]]:
        """ControlNet's down and mid residuals (``None`` unless both are given) and a copy of the
        T2I-Adapter's intrablock residuals, as the model's forward reads them."""
        down_residuals = cond.get("down_block_additional_residuals")
        mid_residual = cond.get("mid_block_additional_residual")
        intrablock = cond.get("down_intrablock_additional_residuals")
        if intrablock is None and mid_residual is None and down_residuals is not None:
            intrablock = down_residuals  # the deprecated T2I-Adapter spelling, as upstream
        intrablock = list(intrablock) if intrablock is not None else None  # never pop the caller's
        if mid_residual is None or down_residuals is None:
            return None, None, intrablock
        return down_residuals, mid_residual, intrablock

    def encode(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        """Embeddings, ``conv_in``, down blocks, mid block and the up layers before the decoder's.

        Returns ``(*skips, hidden)``, or with a shallow branch ``(hidden, *fresh_skips)``.
        """
        unet = self.unet
        with _lora_scale(unet, cond.get("cross_attention_kwargs")) as cross_attention_kwargs:
            ctx = self._context(x, t, cond, cross_attention_kwargs)
            sample, forward_upsample_size = self._stem(x, ctx)
            down_residuals, mid_residual, intrablock = self._residuals(cond)
            sample, skips = self._down(sample, ctx, intrablock)
            if down_residuals is not None:
                skips = tuple(s + r for s, r in zip(skips, down_residuals))
            if unet.mid_block is not None:
                if getattr(unet.mid_block, "has_cross_attention", False):
                    sample = unet.mid_block(sample, ctx.emb, **self._block_kwargs(unet.mid_block, ctx))
                else:
                    sample = unet.mid_block(sample, ctx.emb)
                if intrablock and sample.shape == intrablock[0].shape:
                    sample += intrablock.pop(0)
            if mid_residual is not None:
                sample = sample + mid_residual
            sample, skips = self._up(0, self._up_cut, sample, skips, ctx, forward_upsample_size)
        if self.branch_depth is not None:
            return (sample, *skips)
        return (*skips, sample)

    def refresh(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        """The shallow branch: the ``branch_depth`` outermost skips from the current ``x``, equal to
        the last ``branch_depth`` entries of :meth:`encode` (ControlNet residuals included)."""
        if self.branch_depth is None:
            raise TiecValueError("refresh() computes a shallow branch; this split was built without branch_depth")
        with _lora_scale(self.unet, cond.get("cross_attention_kwargs")) as cross_attention_kwargs:
            ctx = self._context(x, t, cond, cross_attention_kwargs)
            sample, _ = self._stem(x, ctx)
            down_residuals, _, intrablock = self._residuals(cond)
            _, skips = self._down(sample, ctx, intrablock, stop=self.branch_depth)
            if down_residuals is not None:
                skips = tuple(s + r for s, r in zip(skips, down_residuals))
        return skips

    def decode(self, features: Features, t: Any, **cond: Any) -> torch.Tensor:
        """The remaining up layers and the output layers, with embeddings for the current ``t``."""
        unet = self.unet
        if self.branch_depth is not None:
            sample, *skips = features
        else:
            *skips, sample = features
        skips_tuple = tuple(skips)
        forward_upsample_size = bool(skips_tuple) and self._needs_upsample_size(skips_tuple[0].shape[-2:])
        with _lora_scale(unet, cond.get("cross_attention_kwargs")) as cross_attention_kwargs:
            ctx = self._context(sample, t, cond, cross_attention_kwargs)
            sample, _ = self._up(self._up_cut, self._up_total, sample, skips_tuple, ctx, forward_upsample_size)
            if unet.conv_norm_out:
                sample = unet.conv_act(unet.conv_norm_out(sample))
            return unet.conv_out(sample)
