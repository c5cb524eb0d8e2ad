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

A split may recompute a *shallow branch* at every step (the UNet's outermost layers, as in
DeepCache): then its features end with ``fresh_features`` tensors computed from the current input,
and it defines ``refresh(x, t, **cond)`` returning just those, equal to ``encode(x, t, **cond)``'s
last ``fresh_features`` entries. Only the leading entries are cached and blended; at a non-key step
the decoder reads the blended leading entries followed by ``refresh``'s fresh ones
(:func:`cached_part`, :func:`with_fresh`). Such a decoder reads each step's own input, so its
non-key steps cannot be decoded in one batch.
"""

from __future__ import annotations

from typing import Any, Mapping, Protocol, Sequence, runtime_checkable

import torch

from ._errors import TiecValueError
from .blend import Features

__all__ = ["Split", "cached_part", "decode_batch", "fresh_features", "repeat_batch", "with_fresh"]


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


def fresh_features(split: Any) -> int:
    """How many trailing features ``split`` recomputes at every step (its ``fresh_features``; 0
    for a split without a shallow branch).

    Examples:
        >>> class Plain:
        ...     def encode(self, x, t): return (x,)
        ...     def decode(self, features, t): return features[0]
        >>> fresh_features(Plain())
        0
    """
    count = getattr(split, "fresh_features", 0)
    if isinstance(count, bool) or not isinstance(count, int) or count < 0:
        raise TiecValueError(
            f"{type(split).__name__}.fresh_features must be an int >= 0 (the trailing features "
            f"recomputed every step), got {count!r}"
        )
    if count and not callable(getattr(split, "refresh", None)):
        raise TiecValueError(
            f"{type(split).__name__} has fresh_features={count} but no refresh(x, t, **cond) to compute them"
        )
    return count


def cached_part(split: Any, features: Features) -> Features:
    """The entries of ``features`` a cache stores: all but the split's fresh trailing ones."""
    count = fresh_features(split)
    if not count:
        return features
    if len(features) <= count:
        raise TiecValueError(
            f"{type(split).__name__}.encode returned {len(features)} features, but fresh_features={count} "
            "leaves none to cache"
        )
    return features[:-count]


def with_fresh(split: Any, cached: Features, x: torch.Tensor, t: Any, cond: Mapping[str, Any]) -> Features:
    """The decoder's input at a non-key step: ``cached`` (blended) features, then the split's fresh
    ones computed from this step's ``x`` (``cached`` itself for a split without a shallow branch)."""
    count = fresh_features(split)
    if not count:
        return cached
    fresh = tuple(split.refresh(x, t, **cond))
    if len(fresh) != count:
        raise TiecValueError(
            f"{type(split).__name__}.refresh returned {len(fresh)} features, expected fresh_features={count}"
        )
    return (*cached, *fresh)


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
    if fresh_features(split) and len(features_seq) > 1:
        raise TiecValueError(
            f"{type(split).__name__} recomputes a shallow branch from each step's input, so its steps "
            "cannot be decoded in one batch; decode them one by one (parallel_decode=False)"
        )
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
