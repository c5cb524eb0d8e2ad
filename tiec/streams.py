"""Cache streams: one :class:`~tiec.CachedModel` per conditioning.

A caller that evaluates its conditionings in separate model calls -- a pipeline or loop that does
not batch classifier-free guidance, k-diffusion samplers called once per prompt -- must not blend
the features one conditioning stored into the other's steps. :class:`CacheStreams` routes each
call to the stream of its conditioning, told apart by *content* (callers often rebuild the same
tensors every step), so streams never mix; with batched guidance there is one stream.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from typing import Any, Callable, Hashable, Mapping, Optional, Sequence

import torch

from ._errors import TiecValueError
from .cached_model import CachedModel

__all__ = ["CacheStreams", "fingerprint"]


def fingerprint(value: Any) -> Hashable:
    """A hashable summary of conditioning by content: tensors by shape, dtype and a hash of their
    bytes; mappings and sequences item by item; anything else by ``repr``.

    Examples:
        >>> fingerprint({"y": torch.tensor([1, 2])}) == fingerprint({"y": torch.tensor([1, 2])})
        True
        >>> fingerprint(torch.tensor([1, 2])) == fingerprint(torch.tensor([1, 3]))
        False
    """
    if isinstance(value, torch.Tensor):
        data = value.detach().contiguous().cpu()
        digest = hashlib.blake2b(data.view(torch.uint8).numpy().tobytes() if data.numel() else b"",
                                 digest_size=16).hexdigest()
        return ("tensor", tuple(value.shape), str(value.dtype), digest)
    if isinstance(value, Mapping):
        return tuple(sorted((str(k), fingerprint(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return tuple(fingerprint(v) for v in value)
    return repr(value)


class CacheStreams:
    """Cached models by conditioning, the least recently used dropped past ``max_streams``.

    Args:
        make: builds the :class:`~tiec.CachedModel` of a new stream.
        max_streams: streams kept at once (a caller alternates conditional and unconditional
            calls: 2; more for several prompts sampled one after another).

    Examples:
        >>> class Split:
        ...     def encode(self, x, t, *, y): return (x + y,)
        ...     def decode(self, features, t, *, y): return features[0]
        >>> streams = CacheStreams(lambda: CachedModel(Split(), keys="every:2", policy="hold"))
        >>> for t in (3.0, 2.0, 1.0):  # conditional and unconditional in separate calls
        ...     cond, uncond = (streams.get({"y": y})(torch.zeros(1), t, y=y)
        ...                     for y in (torch.ones(1), torch.zeros(1)))
        >>> len(streams), float(cond), float(uncond), streams.encoder_calls, streams.decoder_calls
        (2, 1.0, 0.0, 4, 6)
    """

    def __init__(self, make: Callable[[], CachedModel], *, max_streams: int = 4) -> None:
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise TiecValueError(f"max_streams must be an int >= 1, got {max_streams!r}")
        self.make = make
        self.max_streams = max_streams
        self._streams: "OrderedDict[Hashable, CachedModel]" = OrderedDict()
        self._timesteps: Optional[list[float]] = None
        self._retired = [0, 0]

    def __len__(self) -> int:
        return len(self._streams)

    def __repr__(self) -> str:
        return (f"CacheStreams({len(self)} of at most {self.max_streams}, "
                f"encoder_calls={self.encoder_calls}, decoder_calls={self.decoder_calls})")

    @property
    def streams(self) -> tuple[CachedModel, ...]:
        """The streams, least recently used first."""
        return tuple(self._streams.values())

    @property
    def latest(self) -> Optional[CachedModel]:
        """The stream of the latest call (``None`` before any)."""
        return next(reversed(self._streams.values()), None)

    @property
    def encoder_calls(self) -> int:
        return self._retired[0] + sum(s.encoder_calls for s in self._streams.values())

    @property
    def decoder_calls(self) -> int:
        return self._retired[1] + sum(s.decoder_calls for s in self._streams.values())

    def get(self, cond: Mapping[str, Any]) -> CachedModel:
        """The stream of this conditioning, made (with the current timesteps) if new."""
        key = fingerprint(cond)
        stream = self._streams.get(key)
        if stream is None:
            stream = self.make()
            if self._timesteps is not None:
                stream.set_timesteps(self._timesteps)
            self._streams[key] = stream
            while len(self._streams) > self.max_streams:
                _, old = self._streams.popitem(last=False)
                self._retired[0] += old.encoder_calls
                self._retired[1] += old.decoder_calls
        self._streams.move_to_end(key)
        return stream

    def set_timesteps(self, timesteps: Optional[Sequence[Any]]) -> None:
        """The times of the next runs, for every stream now and later; each starts a new run."""
        self._timesteps = None if timesteps is None else [float(t) for t in timesteps]
        for stream in self._streams.values():
            stream.set_timesteps(self._timesteps)

    def reset(self) -> None:
        """Drop every stream and zero the counters (the timesteps are kept)."""
        self._streams.clear()
        self._retired = [0, 0]
