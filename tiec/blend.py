"""Weighted sums of feature tuples: the only place where cached tensors are combined.

A *features* value is a flat tuple of tensors that all carry the batch in dim 0 (see
:class:`tiec.Split`). Blending runs in float32 -- float64 when the features are float64 -- and each
result is cast back to its input's dtype and device, so fp16 and bf16 features keep their precision
during the sum.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ._errors import TiecTypeError, TiecValueError

__all__ = ["Features", "check_features", "relative_error", "weighted_sum"]

Features = tuple[torch.Tensor, ...]


def check_features(features: object, name: str = "features") -> Features:
    """Validate that ``features`` is a non-empty tuple of floating-point tensors and return it.

    Examples:
        >>> check_features((torch.zeros(2, 3),))[0].shape
        torch.Size([2, 3])
    """
    if not isinstance(features, tuple):
        raise TiecTypeError(
            f"{name} must be a tuple of tensors, got {type(features).__name__}; "
            "wrap a single tensor as (tensor,)"
        )
    if not features:
        raise TiecValueError(f"{name} must hold at least one tensor, got an empty tuple")
    for i, tensor in enumerate(features):
        if not isinstance(tensor, torch.Tensor):
            raise TiecTypeError(f"{name}[{i}] must be a torch.Tensor, got {type(tensor).__name__}")
        if not tensor.is_floating_point():
            raise TiecTypeError(
                f"{name}[{i}] must be a floating-point tensor to be blended, got dtype {tensor.dtype}"
            )
        if tensor.dim() == 0:
            raise TiecValueError(f"{name}[{i}] must carry the batch in dim 0, got a 0-d tensor")
    return features


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def weighted_sum(stack: Sequence[Features], weights: Sequence[float]) -> Features:
    """Return ``sum_j weights[j] * stack[j]``, tensor by tensor.

    Entries with weight exactly 0 are skipped; a one-hot weight vector returns that entry's tensors
    themselves (bit for bit, no copy).

    Args:
        stack: feature tuples of identical structure (same length, shapes, dtypes).
        weights: one float per entry of ``stack``.

    Returns:
        A feature tuple with each tensor in its original dtype and on its original device.

    Examples:
        >>> a, b = (torch.zeros(1, 2),), (torch.ones(1, 2),)
        >>> weighted_sum([a, b], [0.25, 0.75])[0]
        tensor([[0.7500, 0.7500]])
    """
    if len(stack) != len(weights):
        raise TiecValueError(
            f"weights must have one entry per feature tuple: {len(weights)} weights for "
            f"{len(stack)} tuples"
        )
    used = [(w, feats) for w, feats in zip(weights, stack) if w != 0.0]
    if not used:
        raise TiecValueError(f"weights must not all be zero, got {list(weights)}")
    if len(used) == 1 and used[0][0] == 1.0:
        return used[0][1]
    result = []
    for position, reference in enumerate(used[0][1]):
        accumulation = _accumulation_dtype(reference.dtype)
        total = torch.zeros(reference.shape, dtype=accumulation, device=reference.device)
        for w, feats in used:
            total.add_(feats[position].to(accumulation), alpha=w)
        result.append(total.to(reference.dtype))
    return tuple(result)


def relative_error(predicted: Features, actual: Features) -> float:
    """``‖predicted − actual‖ / ‖actual‖`` over all tensors of two feature tuples, in float64.

    The quality monitor's measure: at a key step, the blend's prediction for that step against the
    features the encoder really computed there (0 for a perfect prediction, 1 for predicting zeros).
    ``inf`` when ``actual`` is all zeros and ``predicted`` is not.

    Examples:
        >>> relative_error((torch.tensor([3.0, 4.0]),), (torch.tensor([3.0, 4.0]),))
        0.0
        >>> relative_error((torch.tensor([3.0, 0.0]),), (torch.tensor([3.0, 4.0]),))
        0.8
    """
    if len(predicted) != len(actual):
        raise TiecValueError(f"feature tuples of {len(predicted)} and {len(actual)} tensors cannot be compared")
    squared_error = squared_norm = 0.0
    for p, a in zip(predicted, actual):
        if p.shape != a.shape:
            raise TiecValueError(f"feature tensors of shapes {tuple(p.shape)} and {tuple(a.shape)} cannot be compared")
        a64 = a.detach().to(torch.float64)
        squared_error += float((p.detach().to(device=a.device, dtype=torch.float64) - a64).pow(2).sum())
        squared_norm += float(a64.pow(2).sum())
    if squared_norm == 0.0:
        return 0.0 if squared_error == 0.0 else float("inf")
    return (squared_error / squared_norm) ** 0.5
