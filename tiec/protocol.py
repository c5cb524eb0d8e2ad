"""The encoder/decoder split protocol, and batched decoding over several time steps.

A *split* factors a denoiser as ``output = decode(encode(x, t, **cond), t, **cond)``. The decoder
never reads ``x``: only the encoder's features and its own embedding of the current ``t``. Adapters
(``tiec.adapters``) implement the protocol for real models; any object with these two methods works.

Calling conventions every split must accept:

* ``x``: the model input, batch in dim 0 (already scaled by the scheduler's ``scale_model_input``).
* ``t``: the model's own timestep (0-999 for SD; sigma-derived for k-diffusion), as a Python number,
  a 0-d tensor, or a 1-D tensor with one entry per sample.
* ``cond``: keyword conditioning (text embeddings, class labels, ...). Tensors in it carry the batch
  in dim 0 (or broadcast over it); nested dicts (``added_cond_kwargs``) are allowed.
* ``features``: a flat tuple of floating-point tensors, batch in dim 0.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch

from ._errors import TiecValueError
from .blend import Features

__all__ = ["Split", "decode_batch", "repeat_batch"]


@runtime_checkable
class Split(Protocol):
    """Anything with ``encode`` and ``decode`` such that ``decode(encode(x, t, **c), t, **c)`` equals
    the model's forward.

    A split may also define ``decode_batch(features_seq, times, **cond) -> list[Tensor]`` to decode
    several time steps at once in its own way (guidance wrappers do); :func:`decode_batch` uses it
    when present.
    """

    def encode(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        """Run the encoder on ``x`` at time ``t``; return the features tuple."""
        ...

    def decode(self, features: Features, t: Any, **cond: Any) -> torch.Tensor:
        """Run the decoder on ``features`` at time ``t``; return the model output."""
        ...


def repeat_batch(value: Any, batch: int, repeats: int) -> Any:
    """Repeat every tensor whose dim 0 equals ``batch`` ``repeats`` times along dim 0.

    Walks dicts, lists and tuples; everything else (numbers, strings, broadcast tensors) is returned
    as it is.

    Examples:
        >>> repeat_batch({"labels": torch.tensor([3, 5]), "scale": 1.0}, batch=2, repeats=2)
        {'labels': tensor([3, 5, 3, 5]), 'scale': 1.0}
    """
    if isinstance(value, torch.Tensor):
        if value.dim() >= 1 and value.shape[0] == batch and repeats != 1:
            return torch.cat([value] * repeats)
        return value
    if isinstance(value, Mapping):
        return {k: repeat_batch(v, batch, repeats) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(repeat_batch(v, batch, repeats) for v in value)
    return value


def _time_vector(t: Any, batch: int, like: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=like.device)
    if t.dim() == 0:
        return t.expand(batch)
    if t.shape != (batch,):
        raise TiecValueError(
            f"t must be a scalar or have one entry per sample ({batch}), got shape {tuple(t.shape)}"
        )
    return t


def decode_batch(
    split: Split,
    features_seq: Sequence[Features],
    times: Sequence[Any],
    cond: Mapping[str, Any] | None = None,
) -> list[torch.Tensor]:
    """Decode several time steps in one decoder call ("parallel decoding").

    Concatenates the feature tuples along the batch, gives each sample its own ``t`` and repeats the
    batched conditioning, then splits the output back. Equal to calling ``split.decode`` once per step
    up to float rounding (batched kernels may sum in another order).

    Args:
        split: the split (its ``decode_batch`` is used when it has one).
        features_seq: one feature tuple per step, all with the same structure.
        times: one time per step (numbers or 0-d tensors, or 1-D per-sample tensors).
        cond: conditioning for *one* step (batch ``B``); repeated here for every step.

    Returns:
        One output per step, each with batch ``B``.
    """
    cond = dict(cond or {})
    if len(features_seq) != len(times):
        raise TiecValueError(
            f"times must have one entry per feature tuple: {len(times)} times for "
            f"{len(features_seq)} tuples"
        )
    if not features_seq:
        return []
    own = getattr(split, "decode_batch", None)
    if callable(own):
        return list(own(features_seq, times, **cond))
    if len(features_seq) == 1:
        return [split.decode(features_seq[0], times[0], **cond)]
    count = len(features_seq)
    first = features_seq[0][0]
    batch = first.shape[0]
    stacked = tuple(torch.cat(parts) for parts in zip(*features_seq))
    t = torch.cat([_time_vector(t, batch, first) for t in times])
    output = split.decode(stacked, t, **repeat_batch(cond, batch, count))
    return list(output.chunk(count))
