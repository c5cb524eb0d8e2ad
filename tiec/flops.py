"""Compute counted with ``torch.utils.flop_counter.FlopCounterMode`` (no estimates).

FLOPs here are torch's count: a multiply-add is 2 FLOPs, so MACs = FLOPs / 2. Only operations
torch has a formula for are counted (matmuls, convolutions, attention); element-wise work is not.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

from .protocol import Split, fresh_features

__all__ = ["count_flops", "EncoderShare", "encoder_share"]


def count_flops(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> tuple[int, Any]:
    """Run ``fn(*args, **kwargs)`` under ``FlopCounterMode``; return ``(flops, result)``.

    Examples:
        >>> layer = torch.nn.Linear(8, 4, bias=False)
        >>> flops, _ = count_flops(layer, torch.zeros(3, 8))
        >>> flops == 2 * 3 * 8 * 4
        True
    """
    with FlopCounterMode(display=False) as counter:
        result = fn(*args, **kwargs)
    return counter.get_total_flops(), result


@dataclass(frozen=True)
class EncoderShare:
    """Counted FLOPs of one encoder and one decoder call, and the encoder's share of their sum.

    For a split with a shallow branch (:class:`tiec.Split`'s ``refresh``), ``refresh_flops`` is
    what a non-key step spends recomputing it: such a step costs ``refresh_flops + decoder_flops``.
    """

    encoder_flops: int
    decoder_flops: int
    refresh_flops: int = 0

    @property
    def share(self) -> float:
        """The encoder's share of a key step."""
        return self.encoder_flops / (self.encoder_flops + self.decoder_flops)

    @property
    def saved_share(self) -> float:
        """The share of a key step that a non-key step saves (``share`` without a shallow branch)."""
        return (self.encoder_flops - self.refresh_flops) / (self.encoder_flops + self.decoder_flops)

    def speedup_bound(self, key_fraction: float) -> float:
        """``1 / (1 - saved_share * (1 - key_fraction))``: the most caching can save on compute-bound hardware."""
        return 1.0 / (1.0 - self.saved_share * (1.0 - key_fraction))


@torch.no_grad()
def encoder_share(split: Split, x: torch.Tensor, t: Any, **cond: Any) -> EncoderShare:
    """Count the FLOPs of ``split.encode``, ``split.decode`` and (with a shallow branch)
    ``split.refresh`` on one input.

    Examples:
        >>> class Split:
        ...     enc, dec = torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)
        ...     def encode(self, x, t): return (self.enc(self.enc(self.enc(x))),)
        ...     def decode(self, f, t): return self.dec(f[0])
        >>> encoder_share(Split(), torch.zeros(2, 4), 0).share
        0.75
    """
    encoder_flops, features = count_flops(split.encode, x, t, **cond)
    decoder_flops, _ = count_flops(split.decode, features, t, **cond)
    refresh_flops = count_flops(split.refresh, x, t, **cond)[0] if fresh_features(split) else 0
    return EncoderShare(encoder_flops, decoder_flops, refresh_flops)
