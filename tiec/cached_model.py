"""A cached model for sampling loops that are not tiec's (custom samplers, pipelines, k-diffusion).

:class:`CachedModel` is a stateful callable ``(x, t, **cond) -> output``. Each call decides from the
time *value* ``t`` -- never from a call counter -- whether it is a key (run the encoder, store the
features) or not (blend cached features), then runs the decoder.
"""

from __future__ import annotations

import bisect
import math
from typing import Any, Callable, Optional, Sequence, Union

import torch

from ._errors import TiecTypeError, TiecValueError
from .blend import Features, relative_error
from .cache import EncoderCache
from .policies import Linear, Lookahead, PolicyLike, get_policy
from .protocol import Split, cached_part, with_fresh
from .schedules import KeysLike, get_schedule

__all__ = ["CachedModel"]

CoordinateLike = Union[str, Callable[[float], float]]


def _scalar_time(t: Any) -> Optional[float]:
    """The call's time as a float, or ``None`` when samples carry different times."""
    if isinstance(t, torch.Tensor):
        if t.numel() == 0:
            raise TiecValueError("t must hold at least one time, got an empty tensor")
        flat = t.detach().reshape(-1)
        if flat.numel() > 1 and not bool((flat == flat[0]).all()):
            return None
        return float(flat[0])
    if isinstance(t, (int, float)) and not isinstance(t, bool):
        return float(t)
    raise TiecTypeError(f"t must be a number or a tensor, got {type(t).__name__} {t!r}")


def _same(a: Any, b: Any) -> bool:
    """Whether two call arguments hold the same content (tensors by value, containers item by item)."""
    if a is b:
        return True
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return (isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.shape == b.shape
                and a.dtype == b.dtype and a.device == b.device and torch.equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    try:
        return bool(a == b)
    except Exception:  # a comparison that does not reduce to one bool: treat as different
        return False


class CachedModel:
    """Wrap a :class:`~tiec.Split` as a model that runs the encoder only at key steps.

    Steps are *distinct time values*. With ``timesteps`` (the times the sampler will call, highest
    first) the step of a call is found by value, with a relative tolerance of ``1e-5``; a time
    between two scheduled times is a sub-step of the earlier (noisier) step, a key exactly when that
    step is; a time above the first scheduled one (k-diffusion's churn raises σ before the first step)
    belongs to the first step, always a key. Without ``timesteps``, each new distinct time is the
    next step. Calls at the same time (second-order solvers) share a step; a key call there
    replaces the stored features. While keys are sparse, a second call at the same time on the
    same input with other conditioning (guidance's halves in separate calls) raises: one cache
    cannot serve two conditionings; batch them into one call, or give each its own model with
    :class:`tiec.streams.CacheStreams`.

    A new trajectory starts -- the cache is emptied and the first call is a key -- when ``t`` goes
    back up to an earlier step (any rise without ``timesteps``), when the input's shape, dtype or
    device changes, or on :meth:`reset`. A rise within one step (an ancestral sampler's midpoint
    that overshot the next scheduled time) is not a new run; a key there drops the cached keys past
    it before it is stored.

    Calls whose samples carry different times cannot share cached features; they run the full model
    and leave the cache alone.

    Args:
        split: the model as an encoder/decoder split.
        keys: key schedule over steps (see :func:`tiec.get_schedule`); ``None`` means every step.
        policy: blend policy (``"hold"``, ``"linear"``, ``"polynomial(k)"``).
        timesteps: the sampler's times, highest first (e.g. ``scheduler.timesteps``). Needed for
            schedules with a ``tail`` and for the ``"step"`` coordinate at sub-steps.
        coordinate: what the cache blends over: ``"t"`` (the call's time), ``"step"`` (the step
            position, fractional at sub-steps), or an increasing function of ``t`` (e.g.
            ``t -> log σ(t)``).
        check_finite: reject non-finite features at keys.

    Examples:
        >>> class Split:
        ...     def encode(self, x, t):
        ...         return (x * 2,)
        ...     def decode(self, features, t):
        ...         return features[0] + t
        >>> model = CachedModel(Split(), keys="every:2", policy="hold")
        >>> [float(model(torch.ones(1), t)) for t in (3.0, 2.0, 1.0)]
        [5.0, 4.0, 3.0]
        >>> model.encoder_calls, model.decoder_calls
        (2, 3)
    """

    def __init__(
        self,
        split: Split,
        *,
        keys: KeysLike = None,
        policy: PolicyLike = Linear(),
        timesteps: Optional[Sequence[Any]] = None,
        coordinate: CoordinateLike = "t",
        check_finite: bool = False,
    ) -> None:
        if not (hasattr(split, "encode") and hasattr(split, "decode")):
            raise TiecTypeError(f"split must have encode() and decode(), got {type(split).__name__}")
        if not (callable(coordinate) or coordinate in ("t", "step")):
            raise TiecValueError(
                f"coordinate must be 't', 'step' or a function of t, got {coordinate!r}"
            )
        if isinstance(get_policy(policy), Lookahead):
            raise TiecValueError(
                "the lookahead policy predicts latents inside tiec.sample's loop; a CachedModel only sees "
                "model calls. Use policy='linear' here, or sample with tiec.sample"
            )
        self.split = split
        self.schedule = get_schedule(keys)
        self.coordinate = coordinate
        # τ runs down with t for "t" and for functions of t (which must increase with t, like
        # log σ(t)); the step position runs up.
        direction = 1 if coordinate == "step" else -1
        self.cache = EncoderCache(policy, check_finite=check_finite, direction=direction)
        self._times: Optional[list[float]] = None
        self._key_steps: frozenset[int] = frozenset()
        if timesteps is not None:
            self.set_timesteps(timesteps)
        self.reset()

    # -- configuration and state ---------------------------------------------------------------
    def set_timesteps(self, timesteps: Optional[Sequence[Any]]) -> None:
        """Tell the model the times of the next runs (highest first); starts a new trajectory.

        ``None`` makes the model open-ended again: each new distinct time is the next step.
        """
        if timesteps is None:
            self._times = None
            self._key_steps = frozenset()
            self.new_trajectory()
            return
        times = [float(t) for t in timesteps]
        distinct = [t for i, t in enumerate(times) if i == 0 or t != times[i - 1]]
        if not distinct:
            raise TiecValueError("timesteps must not be empty")
        if any(b >= a for a, b in zip(distinct, distinct[1:])):
            raise TiecValueError(
                f"timesteps must decrease (repeats allowed for second-order solvers), got {times}"
            )
        self._times = distinct
        self._key_steps = frozenset(self.schedule.key_steps(len(distinct)))
        self.new_trajectory()

    def new_trajectory(self) -> None:
        """Empty the cache and forget the last call; counters are kept."""
        self.cache.reset()
        self.key_errors: dict[int, float] = {}
        """The quality monitor of the current trajectory: at each key step after the first, the
        relative error of the blend against the encoder's features (see :class:`tiec.SampleResult`)."""
        self._last_time: Optional[float] = None
        self._last_input: Optional[tuple[Any, ...]] = None
        self._last_call: Optional[tuple[torch.Tensor, int, dict[str, Any]]] = None  # x, its version, cond
        self._distinct_seen = -1

    def reset(self) -> None:
        """Return to the freshly built state: empty cache, zero counters (the timesteps are kept)."""
        self.new_trajectory()
        self.encoder_calls = 0
        self.decoder_calls = 0
        self.trajectories = 0

    @property
    def policy(self) -> Any:
        return self.cache.policy

    @property
    def key_steps(self) -> Optional[tuple[int, ...]]:
        """The key steps of the current timesteps, ascending; ``None`` while open-ended."""
        return None if self._times is None else tuple(sorted(self._key_steps))

    def __repr__(self) -> str:
        steps = "open-ended" if self._times is None else f"{len(self._times)} steps"
        return (
            f"CachedModel(split={type(self.split).__name__}, keys='{self.schedule}', "
            f"policy={self.policy!r}, coordinate={self.coordinate!r}, {steps}, "
            f"encoder_calls={self.encoder_calls}, decoder_calls={self.decoder_calls})"
        )

    # -- decisions -----------------------------------------------------------------------------
    def _position(self, time: float) -> float:
        """Fractional step position of ``time`` in the known timesteps."""
        assert self._times is not None
        times = self._times
        for i, ref in enumerate(times):
            if math.isclose(time, ref, rel_tol=1e-5, abs_tol=1e-9):
                return float(i)
        if time > times[0]:
            return 0.0  # a churn sampler's first evaluation, just above the schedule: the first step
        ascending = [-v for v in times]
        k = bisect.bisect_right(ascending, -time) - 1  # times[k] > time > times[k + 1]
        if k == len(times) - 1:
            return float(k)
        return k + (times[k] - time) / (times[k] - times[k + 1])

    def _step(self, time: float) -> tuple[float, bool]:
        """(position, is_key) for a call at ``time`` in the current trajectory."""
        if self._times is not None:
            position = self._position(time)
            return position, math.floor(position) in self._key_steps
        index = self._distinct_seen + (time != self._last_time)
        return float(index), self.schedule.is_key_open_ended(index)

    def _tau(self, time: float, position: float) -> float:
        if self.coordinate == "t":
            return time
        if self.coordinate == "step":
            return position
        return float(self.coordinate(time))  # type: ignore[operator]

    def _goes_back(self, time: float) -> bool:
        """Whether a call at ``time`` starts over: it lies before the last call's step.

        With known timesteps, a time above the last call's but within the same step is not a new
        run: ancestral samplers evaluate a midpoint past the next scheduled time, then that time.
        """
        if self._last_time is None:
            return True
        if time <= self._last_time:
            return False
        if self._times is None or time > self._times[0]:
            return True
        return self._position(time) < math.floor(self._position(self._last_time))

    @property
    def in_trajectory(self) -> bool:
        """Whether the current trajectory has had a call (``False`` right after a reset)."""
        return self._last_time is not None

    def starts_over(self, t: Any) -> bool:
        """Whether a call at time ``t`` goes back to an earlier step of the current trajectory (or
        is the first call), so it would start a new one. Changes nothing."""
        time = _scalar_time(t)
        return time is None or self._goes_back(time)

    def will_encode(self, t: Any) -> bool:
        """Whether a call at time ``t`` (same input shape as the last call) would run the encoder.

        Changes nothing; lets a caller skip work only a key step needs (a ControlNet evaluation).
        """
        time = _scalar_time(t)
        if time is None or len(self.cache) == 0 or self._goes_back(time):
            return True
        return self._step(time)[1]

    # -- the call ------------------------------------------------------------------------------
    def __call__(self, x: torch.Tensor, t: Any, **cond: Any) -> torch.Tensor:
        """Evaluate the model at ``(x, t)``: encoder at keys, blended features otherwise."""
        if not isinstance(x, torch.Tensor):
            raise TiecTypeError(f"x must be a torch.Tensor, got {type(x).__name__}")
        time = _scalar_time(t)
        if time is None:  # mixed times in one batch: no shared features to cache
            self.encoder_calls += 1
            self.decoder_calls += 1
            return self.split.decode(self.split.encode(x, t, **cond), t, **cond)
        signature = (tuple(x.shape), x.dtype, x.device)
        fresh = signature != self._last_input or self._goes_back(time)
        if not fresh and time == self._last_time:
            self._check_one_conditioning(x, time, cond)
        if fresh:
            self.new_trajectory()
        position, is_key = self._step(time)
        tau = self._tau(time, position)
        if is_key or len(self.cache) == 0:
            features: Features = self.split.encode(x, t, **cond)
            cached = cached_part(self.split, features)
            if self._monitored() and len(self.cache) and self.cache.accepts(cached) and self.cache.policy.covers(tau):
                self.key_errors[math.floor(position)] = relative_error(self.cache.get(tau), cached)
            self._push(tau, cached)
            self.encoder_calls += 1
        else:
            features = with_fresh(self.split, self.cache.get(tau), x, t, cond)
        output = self.split.decode(features, t, **cond)
        self.decoder_calls += 1
        if fresh:
            self.trajectories += 1
        if time != self._last_time:
            self._distinct_seen += 1
        self._last_time = time
        self._last_input = signature
        self._last_call = (x, x._version, cond)
        return output

    def _check_one_conditioning(self, x: torch.Tensor, time: float, cond: dict[str, Any]) -> None:
        """Refuse a second call at the same time on the same input with other conditioning: a
        caller that evaluates guidance's halves in separate calls. One cache would hand one
        conditioning's features to the other's non-key steps (raised before anything changes)."""
        if self._last_call is None or not self._monitored():
            return  # with every step a key nothing is shared: such calls are exact
        last_x, version, last_cond = self._last_call
        same_input = x._version == version if x is last_x else _same(x, last_x)
        differing = sorted(set(cond) ^ set(last_cond) | {k for k in set(cond) & set(last_cond)
                                                        if not _same(cond[k], last_cond[k])})
        if same_input and differing:
            raise TiecValueError(
                f"a second call at t={time:g} on the same input with other conditioning ({', '.join(differing)}): "
                "one CachedModel keeps one cache, so with sparse keys each call would decode the other's "
                "features. Batch the conditionings into one call, or give each its own CachedModel with "
                "tiec.streams.CacheStreams")

    def _monitored(self) -> bool:
        """Whether keys are sparse (with every step a key nothing is blended: nothing to monitor)."""
        if self._times is not None:
            return len(self._key_steps) < len(self._times)
        return self.schedule.every != 1

    def _push(self, tau: float, features: Features) -> None:
        if not self.cache.accepts(features):
            # The features changed structure (a conditioning batch change): start over.
            self.cache.reset()
        self.cache.rewind(tau)  # a key behind newer ones (after an overshooting midpoint) replaces them
        self.cache.push(tau, features)
