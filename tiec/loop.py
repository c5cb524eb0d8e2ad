"""``tiec.sample``: a scheduler-agnostic sampling loop over a split, with encoder caching.

The loop drives any object with diffusers' scheduler interface -- ``set_timesteps``, ``timesteps``,
``init_noise_sigma``, ``scale_model_input(x, t)`` and ``step(output, t, x, **kw).prev_sample`` --
without importing diffusers. All per-run state (the cache, counters) is local to one call, so
nothing leaks between runs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import torch

from ._errors import TiecTypeError, TiecValueError
from .blend import relative_error
from .cache import EncoderCache
from .config import ConfigLike, merge_config
from .coordinates import coordinate_values, scheduler_log_sigmas
from .guidance import ClassifierFreeGuidance
from .lookahead import model_input_scale, predict_latent
from .policies import Linear, Lookahead, PolicyLike
from .progress import progress_bar
from .protocol import Split, cached_part, decode_batch, fresh_features, with_fresh
from .schedules import KeysLike, get_schedule

__all__ = ["KEY_ERROR_WARNING", "sample", "SampleResult", "StepInfo", "NoiseInjection"]

#: The quality monitor's warning threshold: a mean relative error of the blend at key steps above
#: this went with broken-down samples on the demo DiT (docs/choosing-keys.md, "Quality monitor").
KEY_ERROR_WARNING = 0.2


@dataclass(frozen=True)
class NoiseInjection:
    """FasterDiffusion's prior noise injection: before each scheduler step with ``t < t_max``, add
    ``alpha * x_T`` to the latent, where ``x_T`` is the starting noise as passed to :func:`sample`.

    Args:
        alpha: the injection strength (FasterDiffusion's code uses 0.003).
        t_max: inject only at model timesteps strictly below this (500 of 1000 by default).
    """

    alpha: float = 0.003
    t_max: float = 500.0

    def __post_init__(self) -> None:
        for name in ("alpha", "t_max"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise TiecValueError(f"NoiseInjection.{name} must be a finite number, got {value!r}")


@dataclass(frozen=True)
class StepInfo:
    """What the ``callback`` of :func:`sample` receives after each scheduler step."""

    index: int
    """Position in ``scheduler.timesteps`` (one model evaluation)."""
    timestep: Any
    """The scheduler's timestep for this evaluation."""
    sample: torch.Tensor
    """The latent after the scheduler step."""
    model_output: torch.Tensor
    """The (guided) model output the scheduler stepped with."""
    is_key: bool
    """Whether the encoder ran at this step."""
    key_error: Optional[float] = None
    """At a key step with keys before it: the quality monitor's relative error of the blend's
    prediction for this step against the encoder's real features (see :class:`SampleResult`)."""


@dataclass(frozen=True)
class SampleResult:
    """The final latent of :func:`sample` and what it cost."""

    sample: torch.Tensor
    key_steps: tuple[int, ...]
    encoder_calls: int
    decoder_calls: int
    coordinate: str
    num_steps: int
    key_errors: Mapping[int, float] = field(default_factory=dict)
    """The quality monitor: for each key step after the first whose encoder ran on the real
    latent, ``‖blend − real‖ / ‖real‖`` of the features -- what the cache would have given at that
    step, against what the encoder computed (free: the key's features are computed anyway)."""
    refresh_calls: int = 0
    """Decoder calls that recomputed the split's shallow branch from the step's input (the non-key
    steps of a split with ``refresh``, see :class:`~tiec.Split`; 0 without one)."""

    @property
    def key_fraction(self) -> float:
        """Fraction of the model evaluations that ran the encoder."""
        return len(self.key_steps) / self.num_steps

    @property
    def key_error(self) -> Optional[float]:
        """The mean of :attr:`key_errors` (``None`` without any): above :data:`KEY_ERROR_WARNING`,
        expect samples far from those of every step a key."""
        return sum(self.key_errors.values()) / len(self.key_errors) if self.key_errors else None


def _noise_injection(value: NoiseInjection | bool | None) -> Optional[NoiseInjection]:
    if value is None or value is False:
        return None
    if value is True:
        return NoiseInjection()
    if isinstance(value, NoiseInjection):
        return value
    raise TiecTypeError(
        f"noise_injection must be None, a bool or a NoiseInjection, got {type(value).__name__}"
    )


def _lookahead_sigmas(scheduler: Any, timesteps: list[Any]) -> list[float]:
    log_sigmas = scheduler_log_sigmas(scheduler, timesteps)
    if log_sigmas is None:
        raise TiecValueError(
            f"the lookahead policy needs the noise level of every step; {type(scheduler).__name__} has "
            "neither aligned `sigmas` nor `alphas_cumprod`; use policy='linear'"
        )
    return [math.exp(v) for v in log_sigmas]


def sample(
    split: Split,
    scheduler: Any,
    latents: torch.Tensor,
    *,
    num_inference_steps: Optional[int] = None,
    keys: KeysLike = None,
    policy: Optional[PolicyLike] = None,
    coordinate: Optional[str] = None,
    config: Optional[ConfigLike] = None,
    cond: Optional[Mapping[str, Any]] = None,
    guidance: Optional[float] = None,
    uncond: Optional[Mapping[str, Any]] = None,
    guided_channels: Optional[int] = None,
    parallel_decode: bool = False,
    max_parallel: int = 8,
    noise_injection: NoiseInjection | bool | None = None,
    step_kwargs: Optional[Mapping[str, Any]] = None,
    output_fn: Optional[Callable[[torch.Tensor], torch.Tensor]] = None,
    callback: Optional[Callable[[StepInfo], None]] = None,
    progress: bool | str = False,
) -> SampleResult:
    """Sample with a diffusers-style scheduler, running the encoder only at key steps.

    Non-key steps decode features blended from the cached keys (:class:`~tiec.EncoderCache`). With
    every step a key (the default, ``keys=None``) the result equals the plain loop
    ``x = scheduler.step(model(scheduler.scale_model_input(x, t), t), t, x).prev_sample`` bit for bit.

    Args:
        split: the model as an encoder/decoder :class:`~tiec.Split`.
        scheduler: a diffusers-style scheduler (duck typed).
        latents: starting noise ``x_T`` with unit variance, batch in dim 0; it is multiplied by
            ``scheduler.init_noise_sigma`` as diffusers' ``prepare_latents`` does.
        num_inference_steps: when given, ``scheduler.set_timesteps(num_inference_steps)`` is called;
            otherwise the scheduler's current ``timesteps`` are used.
        keys: the key schedule over positions in ``scheduler.timesteps`` (model evaluations):
            ``None``/"all" (every step), an int ``n`` (every n-th), ``"every:N"``, a preset name, a
            list of indices, or a :class:`~tiec.KeySchedule`.
        policy: ``"hold"``, ``"linear"`` (``None``: linear), ``"polynomial(k)"``, ``"lookahead"``,
            ``"lookahead-accept"`` or a :class:`~tiec.Policy`. The lookahead policies encode a
            predicted latent of the next key at each key (:class:`~tiec.Lookahead`); those encoder
            passes count in ``encoder_calls``.
        coordinate: what the cache blends over: ``"t"``, ``"log_sigma"``, ``"step"``, or ``"auto"``
            (``None``): log σ for the lookahead policies when the scheduler tells σ, else ``t``
            (:func:`tiec.coordinates.auto_coordinate`).
        config: a :class:`~tiec.TiecConfig` or the path of its JSON file (``tiec calibrate``'s
            output) giving ``keys``, ``policy`` and ``coordinate``; then leave those three unset.
            Its split depth is for entry points that build the split; here the split is given.
        cond: keyword conditioning passed to ``encode`` and ``decode`` (batch ``B`` tensors).
        guidance: classifier-free guidance scale; needs ``uncond``. Both halves are cached together.
        uncond: the unconditional counterparts of ``cond``'s entries (see
            :class:`~tiec.ClassifierFreeGuidance`).
        guided_channels: guide only the first channels (learned-variance models).
        parallel_decode: decode all non-key steps of a segment in one batched decoder call, then
            step the scheduler through them in order. Equal to sequential decoding up to float
            rounding; pays off where one evaluation leaves the device idle.
        max_parallel: at most this many steps per batched decoder call.
        noise_injection: ``True`` for FasterDiffusion's defaults, or a :class:`NoiseInjection`.
        step_kwargs: extra keywords for ``scheduler.step`` (``generator``, ``eta``, ...).
        output_fn: applied to the (guided) model output before the scheduler step, e.g.
            ``lambda out: out[:, :4]`` to drop a learned variance the scheduler does not use (DiT).
        callback: called with a :class:`StepInfo` after every scheduler step.
        progress: show a progress bar of the steps (needs ``tqdm``), labelled ``tiec`` or, when a
            string, with that label.

    Returns:
        A :class:`SampleResult` with the final latent and the counts of encoder and decoder calls.

    Examples:
        >>> import torch
        >>> from diffusers import DDIMScheduler
        >>> class Split:  # a tiny denoiser: encoder = conv, decoder = linear head with time
        ...     def __init__(self):
        ...         self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        ...     def encode(self, x, t):
        ...         return (self.conv(x),)
        ...     def decode(self, features, t):
        ...         t = torch.as_tensor(t).reshape(-1, 1, 1, 1) / 1000
        ...         return features[0].mean(1, keepdim=True) * (1 - t)
        >>> scheduler = DDIMScheduler()
        >>> noise = torch.randn(2, 1, 8, 8, generator=torch.Generator().manual_seed(0))
        >>> with torch.no_grad():
        ...     result = sample(Split(), scheduler, noise, num_inference_steps=10, keys="every:3")
        >>> result.key_steps, result.encoder_calls, result.decoder_calls
        ((0, 3, 6, 9), 4, 10)
    """
    if not (hasattr(split, "encode") and hasattr(split, "decode")):
        raise TiecTypeError(f"split must have encode() and decode(), got {type(split).__name__}")
    if not isinstance(latents, torch.Tensor):
        raise TiecTypeError(f"latents must be a torch.Tensor, got {type(latents).__name__}")
    if isinstance(max_parallel, bool) or not isinstance(max_parallel, int) or max_parallel < 1:
        raise TiecValueError(f"max_parallel must be an int >= 1, got {max_parallel!r}")
    options = merge_config(config, keys=keys, policy=policy, coordinate=coordinate)
    schedule = get_schedule(options["keys"])
    coordinate = options["coordinate"] or "auto"
    injection = _noise_injection(noise_injection)
    cache = EncoderCache(Linear() if options["policy"] is None else options["policy"])
    cond = dict(cond or {})
    step_kwargs = dict(step_kwargs or {})
    if guidance is not None:
        if uncond is None:
            raise TiecValueError("guidance needs `uncond`, the unconditional conditioning")
        split = ClassifierFreeGuidance(split, guidance, uncond, guided_channels=guided_channels)
    elif uncond is not None:
        raise TiecValueError("uncond was given without `guidance`; pass guidance=<scale>")
    if parallel_decode and fresh_features(split):
        raise TiecValueError(
            f"parallel_decode=True needs a decoder that reads only cached features; {split!r} recomputes "
            "a shallow branch from each step's input, so its steps decode one by one (parallel_decode=False)"
        )

    if num_inference_steps is not None:
        scheduler.set_timesteps(num_inference_steps)
    timesteps = list(scheduler.timesteps)
    if not timesteps:
        raise TiecValueError("scheduler.timesteps is empty: call scheduler.set_timesteps(n) first")
    num_steps = len(timesteps)
    key_steps = schedule.key_steps(num_steps)
    key_set = set(key_steps)
    used_coordinate, taus = coordinate_values(coordinate, scheduler, timesteps, cache.policy)

    noise = latents
    # Flow-matching schedulers have neither: they start from the noise itself and take the latent
    # as it is.
    x = latents * getattr(scheduler, "init_noise_sigma", 1.0)
    scale_model_input = getattr(scheduler, "scale_model_input", lambda sample, t: sample)
    encoder_calls = decoder_calls = refresh_calls = 0
    has_branch = fresh_features(split) > 0
    key_errors: dict[int, float] = {}
    monitor = len(key_set) < num_steps  # with every step a key nothing is blended: nothing to monitor

    def advance(i: int, output: torch.Tensor) -> None:
        nonlocal x
        t = timesteps[i]
        if output_fn is not None:
            output = output_fn(output)
        if injection is not None and float(t) < injection.t_max:
            x = x + injection.alpha * noise
        x = scheduler.step(output, t, x, **step_kwargs).prev_sample
        if callback is not None:
            callback(StepInfo(i, t, x, output, i in key_set, key_errors.get(i)))

    lookahead = cache.policy if isinstance(cache.policy, Lookahead) else None
    if lookahead is not None and not hasattr(scheduler, "init_noise_sigma"):
        raise TiecValueError(
            f"the lookahead policy's one-step jump assumes a VP or sigma schedule; {type(scheduler).__name__} "
            "has no init_noise_sigma (a flow-matching scheduler?); use policy='linear'"
        )
    sigmas = _lookahead_sigmas(scheduler, timesteps) if lookahead is not None else []

    def look_ahead(i: int, x_key: torch.Tensor, output: torch.Tensor) -> int:
        """Encode the predicted latent of the next key (or the last step) into the cache; 1 if done."""
        target = next((j for j in range(i + 1, num_steps) if j in key_set), num_steps - 1)
        if target <= i + 1 and target in key_set:
            return 0  # no step between the keys to blend for
        x_hat = predict_latent(scheduler, x_key, output, sigmas[i], sigmas[target])
        x_hat_in = x_hat * model_input_scale(scheduler, sigmas[target])
        cache.push(taus[target], cached_part(split, split.encode(x_hat_in, timesteps[target], **cond)))
        return 1

    label = progress if isinstance(progress, str) else "tiec"
    with progress_bar(total=num_steps, enabled=bool(progress), desc=label) as bar:
        i = 0
        while i < num_steps:
            t = timesteps[i]
            x_in = scale_model_input(x, t)
            if i in key_set:
                if lookahead is not None and lookahead.accept and cache.times[-1:] == (taus[i],):
                    # the predicted key, stored when the last key ran
                    features = with_fresh(split, cache.get(taus[i]), x_in, t, cond)
                    refresh_calls += has_branch
                else:
                    features = split.encode(x_in, t, **cond)
                    cached = cached_part(split, features)
                    if monitor and len(cache) and cache.accepts(cached) and cache.policy.covers(taus[i]):
                        # what the blend would give
                        key_errors[i] = relative_error(cache.get(taus[i]), cached)
                    cache.push(taus[i], cached)
                    encoder_calls += 1
                output = split.decode(features, t, **cond)
                decoder_calls += 1
                if lookahead is not None:
                    encoder_calls += look_ahead(i, x, output if output_fn is None else output_fn(output))
                advance(i, output)
                i += 1
                bar.update(1)
                continue
            end = i
            limit = max_parallel if parallel_decode else 1
            while end < num_steps and end not in key_set and end - i < limit:
                end += 1
            segment = range(i, end)
            blended = [cache.get(taus[j]) for j in segment]
            if len(segment) == 1:  # a shallow branch, if any, is recomputed from this step's input
                blended = [with_fresh(split, blended[0], x_in, t, cond)]
                refresh_calls += has_branch
            outputs = decode_batch(split, blended, [timesteps[j] for j in segment], cond)
            decoder_calls += 1
            for j, output in zip(segment, outputs):
                if j != i:  # keep the scheduler's own bookkeeping identical to the plain loop
                    scale_model_input(x, timesteps[j])
                advance(j, output)
                bar.update(1)
            i = end
    return SampleResult(x, key_steps, encoder_calls, decoder_calls, used_coordinate, num_steps,
                        key_errors, refresh_calls)
