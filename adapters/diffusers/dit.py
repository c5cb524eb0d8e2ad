"""The encoder/decoder split of diffusers' ``DiTTransformer2DModel``, after any block ``k``.

The encoder is the patch embedding and the first ``k`` transformer blocks; the decoder is the
remaining blocks and the final adaLN layer, conditioned on the current ``t`` and class. Features
are the hidden tokens after block ``k``: ``(tokens,)`` with shape ``(B, N, D)``.

The forward mirrors ``DiTTransformer2DModel.forward`` of diffusers 0.42.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
from torch.nn import functional as F

from tiec._errors import TiecTypeError
from tiec.blend import Features

from .._lazy import encoder_depth, require

__all__ = ["DiTSplit", "FASTER_DIFFUSION_DIT_BLOCKS"]

FASTER_DIFFUSION_DIT_BLOCKS = 18
"""FasterDiffusion's split of DiT-XL/2: the first 18 of 28 blocks are the encoder (one preset)."""


def batch_timesteps(t: Any, batch: int, device: torch.device) -> torch.Tensor:
    """``t`` as a 1-D tensor of ``batch`` entries, the way ``DiTPipeline`` prepares it."""
    if not torch.is_tensor(t):
        dtype = torch.float64 if isinstance(t, float) else torch.int64
        t = torch.tensor([t], dtype=dtype, device=device)
    elif t.dim() == 0:
        t = t[None].to(device)
    return t.expand(batch)


class DiTSplit:
    """Split a ``DiTTransformer2DModel`` after block ``encoder_blocks``.

    Args:
        transformer: the model.
        encoder_blocks: how many transformer blocks the encoder runs, from 1 to the depth. The depth
            itself leaves only the final adaLN layer in the decoder; ``None`` takes half the depth
            (rounded down, at least 1). FasterDiffusion used 18 of 28 for DiT-XL/2.

    ``encode``/``decode`` take the model's keywords ``class_labels`` and ``cross_attention_kwargs``.
    ``t`` may be a number, a 0-d or a 1-D tensor; it is expanded to the batch as ``DiTPipeline`` does
    (the model's own forward needs the 1-D form).

    Examples:
        >>> import torch
        >>> from diffusers import DiTTransformer2DModel
        >>> dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4,
        ...     out_channels=8, num_layers=4, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
        >>> split = DiTSplit(dit, encoder_blocks=4)  # cache the whole stack
        >>> x, labels = torch.randn(2, 4, 8, 8), torch.tensor([1, 7])
        >>> with torch.no_grad():
        ...     out = split.decode(split.encode(x, 500, class_labels=labels), 500, class_labels=labels)
        ...     torch.equal(out, dit(x, torch.tensor([500, 500]), class_labels=labels).sample)
        True
    """

    def __init__(self, transformer: Any, *, encoder_blocks: Optional[int] = None) -> None:
        diffusers = require("diffusers", "diffusers")
        if not isinstance(transformer, diffusers.DiTTransformer2DModel):
            raise TiecTypeError(
                f"transformer must be a diffusers DiTTransformer2DModel, got {type(transformer).__name__}"
            )
        self.transformer = transformer
        self.encoder_blocks = encoder_depth(encoder_blocks, len(transformer.transformer_blocks))

    def __repr__(self) -> str:
        return f"DiTSplit(encoder_blocks={self.encoder_blocks} of {len(self.transformer.transformer_blocks)})"

    def _blocks(self, hidden_states: torch.Tensor, blocks: Any, t: Any, cond: dict[str, Any]) -> torch.Tensor:
        for block in blocks:
            hidden_states = block(
                hidden_states,
                attention_mask=None,
                encoder_hidden_states=None,
                encoder_attention_mask=None,
                timestep=t,
                cross_attention_kwargs=cond.get("cross_attention_kwargs"),
                class_labels=cond.get("class_labels"),
            )
        return hidden_states

    def encode(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        """Patch embedding and the first ``encoder_blocks`` blocks; returns ``(tokens,)``."""
        model = self.transformer
        t = batch_timesteps(t, x.shape[0], x.device)
        hidden_states = model.pos_embed(x)  # (B, N, D)
        blocks = model.transformer_blocks[: self.encoder_blocks]
        return (self._blocks(hidden_states, blocks, t, cond),)

    def decode(self, features: Features, t: Any, **cond: Any) -> torch.Tensor:
        """The remaining blocks and the final adaLN layer; returns ``(B, C_out, H, W)``."""
        model = self.transformer
        (hidden_states,) = features
        t = batch_timesteps(t, hidden_states.shape[0], hidden_states.device)
        blocks = model.transformer_blocks[self.encoder_blocks :]
        hidden_states = self._blocks(hidden_states, blocks, t, cond)  # (B, N, D)
        conditioning = model.transformer_blocks[0].norm1.emb(
            t, cond.get("class_labels"), hidden_dtype=hidden_states.dtype
        )
        shift, scale = model.proj_out_1(F.silu(conditioning)).chunk(2, dim=1)
        hidden_states = model.norm_out(hidden_states) * (1 + scale[:, None]) + shift[:, None]
        hidden_states = model.proj_out_2(hidden_states)  # (B, N, p*p*C_out)
        p, c = model.patch_size, model.out_channels
        side = int(hidden_states.shape[1] ** 0.5)
        hidden_states = hidden_states.reshape(shape=(-1, side, side, p, p, c))
        hidden_states = torch.einsum("nhwpqc->nchpwq", hidden_states)
        return hidden_states.reshape(shape=(-1, c, side * p, side * p))
