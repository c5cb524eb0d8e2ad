"""The encoder cache: key features stored by time, blended on demand.

Notation
--------

==========  ================  ===============================================================
code        paper             meaning
==========  ================  ===============================================================
``tau``     τ                 the scalar coordinate the cache blends over: the model's timestep
                              ``t``, ``log σ`` or the step index -- whatever the caller pushes
``features``  E(x_τ, τ)       the encoder's output at a key: a flat tuple of tensors, batch in dim 0
``keys``    {τ_k}             the key times currently stored, oldest first
``get(s)``  Ê(s)              ``Σ_k w_k(s) · E(x_τk, τ_k)`` with weights from the policy
==========  ================  ===============================================================

Semantics (each pinned down by a test):

1. ``get(τ_k)`` for a stored key returns that key's tensors bit for bit, whatever the policy.
2. Times are monotone: pushes continue the direction set by the first two distinct pushes; a push
   that goes back raises :class:`ValueError` naming both times; a push at the newest key's time
   replaces it (second-order solvers evaluate one time twice with different inputs).
3. Between two keys ``linear`` is a convex blend; past the newest key it extrapolates.
4. Weights are float64 numbers; ``linear`` reproduces affine features, ``polynomial(k)`` degree-k.
5. Blending runs in float32 (float64 for float64 features); results keep each tensor's dtype/device.
6. Only ``policy.keys_needed`` keys are kept.
7. A push whose tensors differ in count, shape, dtype or device from the stored keys raises.
"""

from __future__ import annotations

import math

import torch

from ._errors import TiecValueError
from .blend import Features, check_features, weighted_sum
from .policies import Linear, PolicyLike, get_policy

__all__ = ["EncoderCache"]


def _as_time(value: object, name: str) -> float:
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise TiecValueError(
                f"{name} must be a scalar time, got a tensor of shape {tuple(value.shape)}"
            )
        value = value.item()
    try:
        time = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise TiecValueError(f"{name} must be a real number, got {value!r}") from None
    if not math.isfinite(time):
        raise TiecValueError(f"{name} must be finite, got {time}")
    return time


def _signature(features: Features) -> tuple[tuple[tuple[int, ...], torch.dtype, torch.device], ...]:
    return tuple((tuple(t.shape), t.dtype, t.device) for t in features)


class EncoderCache:
    """Stores encoder features at key times and blends them at any query time.

    Args:
        policy: ``"hold"``, ``"linear"`` (default), ``"polynomial(k)"`` or a :class:`~tiec.Policy`.
        check_finite: when true, :meth:`push` rejects features holding NaN or infinity (costs one
            reduction per tensor).
        direction: ``-1`` or ``+1`` when the direction of time is known in advance (``-1`` for t
            and log σ in sampling order, ``+1`` for a step index); ``0`` (default) infers it from
            the first two distinct pushes.

    Examples:
        >>> import torch
        >>> cache = EncoderCache("linear")
        >>> cache.push(900, (torch.full((1, 2), 1.0),))
        >>> cache.push(800, (torch.full((1, 2), 2.0),))
        >>> cache.get(700)[0]  # extrapolated past the newest key
        tensor([[3., 3.]])
        >>> cache
        EncoderCache(policy=Linear(), keys=[900.0, 800.0], direction='decreasing', tensors=1)
    """

    def __init__(self, policy: PolicyLike = Linear(), *, check_finite: bool = False, direction: int = 0) -> None:
        if direction not in (-1, 0, 1):
            raise TiecValueError(f"direction must be -1, 0 or +1, got {direction!r}")
        self.policy = get_policy(policy)
        self.check_finite = bool(check_finite)
        self._initial_direction = direction
        self._times: list[float] = []
        self._features: list[Features] = []
        self._direction = direction  # +1 increasing, -1 decreasing, 0 not known yet

    # -- state ---------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every key (and an inferred direction): the cache is as freshly built."""
        self._times = []
        self._features = []
        self._direction = self._initial_direction

    def __len__(self) -> int:
        """Number of keys stored (at most ``policy.keys_needed``)."""
        return len(self._times)

    @property
    def times(self) -> tuple[float, ...]:
        """Stored key times, oldest first."""
        return tuple(self._times)

    @property
    def direction(self) -> int:
        """``-1`` when times decrease (t, σ), ``+1`` when they increase (step index), ``0`` unknown."""
        return self._direction

    @property
    def capacity(self) -> int:
        """Maximum number of keys kept: the policy's ``keys_needed``."""
        return self.policy.keys_needed

    def __repr__(self) -> str:
        direction = {-1: "decreasing", 0: "unknown", 1: "increasing"}[self._direction]
        tensors = len(self._features[-1]) if self._features else 0
        return (
            f"EncoderCache(policy={self.policy!r}, keys={self._times}, "
            f"direction={direction!r}, tensors={tensors})"
        )

    # -- writing -------------------------------------------------------------------------------
    def push(self, tau: float | torch.Tensor, features: Features) -> None:
        """Store the encoder ``features`` computed at key time ``tau``.

        Raises:
            ValueError: ``tau`` goes back against the direction of earlier pushes, is not finite,
                or the features' structure, shapes, dtypes or devices differ from the stored keys'
                (or hold NaN/inf with ``check_finite``). The cache is unchanged after an error.
            TypeError: ``features`` is not a tuple of floating-point tensors.
        """
        time = _as_time(tau, "tau")
        features = check_features(features)
        if self._features:
            self._check_compatible(features)
        if self.check_finite:
            for i, tensor in enumerate(features):
                if not bool(torch.isfinite(tensor).all()):
                    raise TiecValueError(
                        f"features[{i}] pushed at tau={time} holds NaN or infinity "
                        "(check_finite=True); check the model's inputs and dtype"
                    )
        if self._times and time == self._times[-1]:
            self._features[-1] = features  # same time evaluated again: the newest input wins
            return
        direction = self._direction
        if self._times:
            step = 1 if time > self._times[-1] else -1
            if direction and step != direction:
                raise TiecValueError(
                    f"tau={time} goes back past the newest key tau={self._times[-1]}: times must keep "
                    f"{'de' if direction < 0 else 'in'}creasing within a trajectory; call reset() "
                    "to start a new one"
                )
            direction = step
        self._direction = direction
        self._times.append(time)
        self._features.append(features)
        excess = len(self._times) - self.capacity
        if excess > 0:
            del self._times[:excess]
            del self._features[:excess]

    def rewind(self, tau: float | torch.Tensor) -> None:
        """Drop the keys that lie past ``tau`` in the trajectory's direction (none if ``tau`` is ahead).

        For callers that re-evaluate an earlier time after a look past it; the next push at ``tau``
        then continues the trajectory. The direction is kept.
        """
        time = _as_time(tau, "tau")
        while self._times and self._direction and (self._times[-1] - time) * self._direction > 0:
            self._times.pop()
            self._features.pop()

    def accepts(self, features: Features) -> bool:
        """Whether ``features`` match the stored keys' structure (always true when empty)."""
        return not self._features or _signature(features) == _signature(self._features[-1])

    def _check_compatible(self, features: Features) -> None:
        expected = _signature(self._features[-1])
        got = _signature(features)
        if len(got) != len(expected):
            raise TiecValueError(
                f"features must keep the same number of tensors between keys: stored keys have "
                f"{len(expected)}, got {len(got)}; call reset() to start a new trajectory"
            )
        for i, (old, new) in enumerate(zip(expected, got)):
            if old != new:
                raise TiecValueError(
                    f"features[{i}] changed between keys: stored (shape, dtype, device) {old}, got "
                    f"{new}; a batch or resolution change starts a new trajectory: call reset()"
                )

    # -- reading -------------------------------------------------------------------------------
    def weights(self, tau: float | torch.Tensor) -> tuple[float, ...]:
        """The policy's weights for the stored keys (oldest first) at ``tau``; float64 numbers."""
        time = _as_time(tau, "tau")
        if not self._times:
            raise TiecValueError(
                f"get(tau={time}) on an empty EncoderCache: push a key's features first "
                "(the first step of a trajectory must be a key)"
            )
        return self.policy.weights(self._times, time)

    def get(self, tau: float | torch.Tensor) -> Features:
        """Blended features at time ``tau``.

        At a stored key's time, returns that key's tensors themselves (bit for bit, not copies:
        treat them as read-only). Elsewhere returns new tensors.

        Raises:
            ValueError: the cache is empty, or ``tau`` is not finite.
        """
        return weighted_sum(self._features, self.weights(tau))
