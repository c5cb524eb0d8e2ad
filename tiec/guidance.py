"""Classifier-free guidance as a split wrapper, so the cache holds both halves of the batch."""

from __future__ import annotations

from typing import Any, Mapping, Optional, Sequence

import torch

from ._errors import TiecTypeError, TiecValueError
from .blend import Features
from .protocol import Split, decode_batch, fresh_features

__all__ = ["ClassifierFreeGuidance"]


def _pair(uncond: Any, cond: Any, name: str) -> Any:
    """Batch ``[uncond, cond]`` like diffusers pipelines do."""
    if isinstance(cond, torch.Tensor):
        if not isinstance(uncond, torch.Tensor):
            raise TiecTypeError(f"uncond[{name!r}] must be a tensor like cond, got {type(uncond).__name__}")
        if uncond.dim() >= 1 and cond.dim() >= 1 and uncond.shape[0] == 1 != cond.shape[0]:
            uncond = uncond.expand(cond.shape[0], *uncond.shape[1:])
        if uncond.shape[1:] != cond.shape[1:] or uncond.dim() == 0:
            raise TiecValueError(
                f"uncond[{name!r}] must match cond's shape {tuple(cond.shape)} (or have batch 1), "
                f"got {tuple(uncond.shape)}"
            )
        return torch.cat([uncond, cond])
    if isinstance(cond, Mapping):
        if not isinstance(uncond, Mapping):
            raise TiecTypeError(f"uncond[{name!r}] must be a mapping like cond, got {type(uncond).__name__}")
        return {k: _pair(uncond.get(k, v), v, f"{name}.{k}") for k, v in cond.items()}
    if uncond != cond:
        raise TiecValueError(
            f"non-tensor conditioning {name!r} must be the same for both halves, got uncond={uncond!r}, "
            f"cond={cond!r}"
        )
    return cond


class ClassifierFreeGuidance:
    """Wrap a split so that each call evaluates ``[uncond, cond]`` in one batch and combines
    ``uncond + scale * (cond - uncond)``, in the operation order of diffusers pipelines.

    The features it returns hold both halves (batch ``2B``), so one cache serves both.

    Args:
        split: the conditional split.
        scale: the guidance scale ``w`` (1 gives the conditional output, computed through the batch).
        uncond: the unconditional conditioning: for each keyword of the call's ``cond`` that differs
            for the unconditional half (negative prompt embeddings, the null class label). Keywords
            missing here are used for both halves. Tensors may have batch 1.
        guided_channels: guide only the first ``guided_channels`` output channels and take the rest
            from the conditional half (learned-variance models such as DeepFloyd-IF, DiT).

    Examples:
        >>> class Toy:
        ...     def encode(self, x, t, *, label):
        ...         return (x + label[:, None],)
        ...     def decode(self, features, t, *, label):
        ...         return features[0] * 2
        >>> guided = ClassifierFreeGuidance(Toy(), scale=3.0, uncond={"label": torch.zeros(1)})
        >>> features = guided.encode(torch.zeros(2, 1), 0, label=torch.ones(2))
        >>> features[0].shape  # both halves cached together
        torch.Size([4, 1])
        >>> guided.decode(features, 0, label=torch.ones(2))  # 0 + 3 * (2 - 0)
        tensor([[6.],
                [6.]])
    """

    def __init__(
        self,
        split: Split,
        scale: float,
        uncond: Optional[Mapping[str, Any]] = None,
        *,
        guided_channels: Optional[int] = None,
    ) -> None:
        if not (hasattr(split, "encode") and hasattr(split, "decode")):
            raise TiecTypeError(f"split must have encode() and decode(), got {type(split).__name__}")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TiecTypeError(f"scale must be a number, got {type(scale).__name__} {scale!r}")
        if guided_channels is not None and guided_channels < 1:
            raise TiecValueError(f"guided_channels must be >= 1 or None, got {guided_channels}")
        self.split = split
        self.scale = float(scale)
        self.uncond = dict(uncond or {})
        self.guided_channels = guided_channels

    def __repr__(self) -> str:
        return (
            f"ClassifierFreeGuidance(split={self.split!r}, scale={self.scale}, "
            f"uncond={sorted(self.uncond)}, guided_channels={self.guided_channels})"
        )

    def _inputs(self, t: Any, cond: Mapping[str, Any]) -> tuple[Any, dict[str, Any]]:
        unknown = set(self.uncond) - set(cond)
        if unknown:
            raise TiecValueError(
                f"uncond has keywords {sorted(unknown)} that the call's cond lacks ({sorted(cond)}); "
                "pass them as conditioning too"
            )
        paired = {k: _pair(self.uncond.get(k, v), v, k) for k, v in cond.items()}
        if isinstance(t, torch.Tensor) and t.dim() == 1:
            t = torch.cat([t, t])
        return t, paired

    def combine(self, output: torch.Tensor) -> torch.Tensor:
        """``uncond + scale * (cond - uncond)`` on an output of batch ``2B`` laid out ``[uncond, cond]``."""
        uncond, cond = output.chunk(2)
        if self.guided_channels is None:
            return uncond + self.scale * (cond - uncond)
        c = self.guided_channels
        guided = uncond[:, :c] + self.scale * (cond[:, :c] - uncond[:, :c])
        return torch.cat([guided, cond[:, c:]], dim=1)

    def encode(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        t, paired = self._inputs(t, cond)
        return self.split.encode(torch.cat([x, x]), t, **paired)

    def decode(self, features: Features, t: Any, **cond: Any) -> torch.Tensor:
        t, paired = self._inputs(t, cond)
        return self.combine(self.split.decode(features, t, **paired))

    @property
    def fresh_features(self) -> int:
        """The wrapped split's count of features recomputed every step (see :class:`tiec.Split`)."""
        return fresh_features(self.split)

    def refresh(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        """The wrapped split's shallow branch on both halves (see :class:`tiec.Split`)."""
        t, paired = self._inputs(t, cond)
        return self.split.refresh(torch.cat([x, x]), t, **paired)

    def decode_batch(
        self, features_seq: Sequence[Features], times: Sequence[Any], **cond: Any
    ) -> list[torch.Tensor]:
        paired_times = []
        paired: dict[str, Any] = {}
        for t in times:
            t, paired = self._inputs(t, cond)
            paired_times.append(t)
        outputs = decode_batch(self.split, features_seq, paired_times, paired)
        return [self.combine(output) for output in outputs]
