"""Encoder caching inside unmodified diffusers pipelines: ``enable``, ``disable`` and ``cached``.

Supported: ``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``,
``StableDiffusionControlNetPipeline`` (ControlNet runs at key steps only), ``IFPipeline``,
``IFSuperResolutionPipeline``, ``DiTPipeline`` -- any pipeline whose denoiser is a
``UNet2DConditionModel`` (``pipe.unet``) or a ``DiTTransformer2DModel`` (``pipe.transformer``).

How it works: the denoiser's ``forward`` is replaced *on the instance* (never the class) by a
wrapper with the same signature that routes each call through a :class:`tiec.CachedModel`. Key
decisions come from the time *value* of each call, matched against ``pipe.scheduler.timesteps``
(not looked up by index), so keyword timesteps, repeated timesteps (Heun, DPM-Solver SDE) and
fractional timesteps work. A pipeline call is detected by the scheduler's new ``timesteps``
tensor (every ``set_timesteps`` makes one), by time going up, or by a batch or shape change
(guidance switched off by a callback), so no state survives from one call -- or from an
interrupted one -- into the next. The key schedule is laid over the steps a call runs, from the
timestep of its first evaluation: img2img, inpainting and SDXL's refiner (``strength``,
``denoising_start``) skip the first timesteps, and keys and presets count the steps that remain.
``disable`` restores the original ``forward`` exactly.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import math
import weakref
from typing import Any, Callable, Iterator, Optional

import torch

from tiec._errors import TiecError, TiecNotImplementedError, TiecTypeError, TiecValueError
from tiec.cached_model import CachedModel
from tiec.config import ConfigLike, merge_config
from tiec.coordinates import auto_coordinate, log_sigma_at
from tiec.policies import Linear, PolicyLike
from tiec.schedules import KeysLike
from tiec.streams import CacheStreams

from .._lazy import require
from .dit import DiTSplit
from .unet import UNet2DConditionSplit

__all__ = ["PipelineCache", "enable", "disable", "cached", "is_enabled"]

#: The denoiser arguments that tell conditionings apart (the cache stream of a call). ControlNet
#: and T2I residuals are left out: they change every step (and matter at keys and fresh skips).
STREAM_ARGUMENTS = ("encoder_hidden_states", "class_labels", "added_cond_kwargs", "timestep_cond",
                    "encoder_attention_mask", "attention_mask")

_PATCHES: "weakref.WeakKeyDictionary[Any, PipelineCache]" = weakref.WeakKeyDictionary()


def _denoiser(pipe: Any) -> tuple[str, Any]:
    diffusers = require("diffusers", "diffusers")
    for name, kind in (("unet", diffusers.UNet2DConditionModel), ("transformer", diffusers.DiTTransformer2DModel)):
        module = getattr(pipe, name, None)
        if isinstance(module, kind):
            return name, module
    found = {n: type(getattr(pipe, n, None)).__name__ for n in ("unet", "transformer")}
    raise TiecNotImplementedError(
        f"{type(pipe).__name__} is not supported: tiec patches a UNet2DConditionModel at pipe.unet or a "
        f"DiTTransformer2DModel at pipe.transformer, found {found}"
    )


def _first_time(t: Any) -> float:
    """The call's timestep as a float (pipelines pass a number, a 0-d or a per-sample tensor)."""
    return float(t.reshape(-1)[0]) if isinstance(t, torch.Tensor) else float(t)


class _ForwardPatch:
    """Replace the module's forward on the instance; undo exactly, refusing if someone wrapped on top.

    Accelerate's hooks (``enable_model_cpu_offload``, ``enable_sequential_cpu_offload``) replace
    ``module.forward`` with a function that runs the hook's ``pre_forward`` (which moves the module
    to its device), then ``module._old_forward``. When such a hook is on the module, the patch goes
    into ``_old_forward``, under the hook, so the hook still runs on every call; accelerate moves
    it back to ``forward`` when diffusers removes its hooks after a call, and under the next hook
    when they are reinstalled, so the patch survives both. :meth:`remove` restores the original
    wherever the patch is.
    """

    SLOTS = ("forward", "_old_forward")

    def __init__(self, module: torch.nn.Module, make: Callable[[Callable[..., Any]], Callable[..., Any]]) -> None:
        self.module = module
        hooked = getattr(module, "_hf_hook", None) is not None and "_old_forward" in module.__dict__
        slot = "_old_forward" if hooked else "forward"
        self.saved = module.__dict__.get(slot)
        original = getattr(module, slot)
        self.original = original
        wrapper = make(original)
        functools.update_wrapper(wrapper, original)
        wrapper.__signature__ = inspect.signature(original)  # type: ignore[attr-defined]
        self.wrapper = wrapper
        setattr(module, slot, wrapper)

    def _is_class_forward(self, value: Any) -> bool:
        return getattr(value, "__func__", None) is type(self.module).forward and getattr(value, "__self__", None) \
            is self.module

    def remove(self) -> None:
        slot = next((name for name in self.SLOTS if self.module.__dict__.get(name) is self.wrapper), None)
        if slot is None:
            raise TiecError(
                f"{type(self.module).__name__}.forward was replaced after tiec patched it; remove the "
                "other patch first, then call disable() again"
            )
        if slot == "forward" and (self.saved is None or self._is_class_forward(self.saved)):
            del self.module.forward  # the class's own forward again, no instance attribute left
        else:
            setattr(self.module, slot, self.saved if self.saved is not None else self.original)


class PipelineCache:
    """What :func:`enable` installed on a pipeline: the cached model and the forward patches.

    Each conditioning has a stream of its own (:class:`tiec.streams.CacheStreams`, told apart by
    the content of :data:`STREAM_ARGUMENTS`), so a pipeline or loop that evaluates the conditional
    and unconditional halves of guidance in separate calls never blends one into the other; with
    batched guidance there is one stream.

    Attributes:
        streams: the :class:`tiec.streams.CacheStreams` the denoiser calls go through.
        model: the :class:`tiec.CachedModel` of the latest call's stream (with batched guidance,
            the only one); ``encoder_calls``/``decoder_calls`` sum every stream.
        controlnet_calls: ControlNet evaluations actually run (key steps only).
        controlnet_skips: ControlNet calls answered from the last key's outputs.
        foreign_calls: denoiser calls run uncached because they came from another pipeline or
            loop sharing the denoiser with a scheduler of its own (a new run that this
            pipeline's scheduler did not start).
    """

    def __init__(self, pipe: Any, *, keys: KeysLike, policy: PolicyLike, coordinate: str,
                 decoder_start: int, encoder_blocks: Optional[int], check_finite: bool,
                 branch_depth: Optional[int] = None) -> None:
        self._pipe = weakref.ref(pipe)
        self.denoiser_name, self.denoiser = _denoiser(pipe)
        if self.denoiser_name == "unet":
            split: Any = UNet2DConditionSplit(self.denoiser, decoder_start=decoder_start, branch_depth=branch_depth)
        elif branch_depth is None:
            split = DiTSplit(self.denoiser, encoder_blocks=encoder_blocks)
        else:
            raise TiecValueError(f"branch_depth={branch_depth} is a UNet split (a shallow branch recomputed every "
                                 f"step); this pipeline's denoiser is a {type(self.denoiser).__name__}")
        if coordinate not in ("t", "step", "log_sigma"):
            raise TiecValueError(f"coordinate {coordinate!r} is unknown; expected 't', 'step' or 'log_sigma'")
        tau: Any = self._log_sigma if coordinate == "log_sigma" else coordinate
        self.streams = CacheStreams(lambda: CachedModel(split, keys=keys, policy=policy, coordinate=tau,
                                                        check_finite=check_finite), max_streams=4)
        self.coordinate = coordinate
        self._timesteps: Optional[torch.Tensor] = None
        self.controlnet_calls = 0
        self.controlnet_skips = 0
        self.foreign_calls = 0
        self._controlnet_last: Optional[tuple[Any, ...]] = None
        self._patches: list[_ForwardPatch] = []
        self._sample_name, self._time_name = list(inspect.signature(self.denoiser.forward).parameters)[:2]
        self._patches.append(_ForwardPatch(self.denoiser, self._denoiser_forward))
        controlnet = getattr(pipe, "controlnet", None)
        if isinstance(controlnet, torch.nn.Module):
            self._patches.append(_ForwardPatch(controlnet, self._controlnet_forward))

    @property
    def model(self) -> CachedModel:
        return self.streams.latest or self.streams.get({})  # before any call: an empty stream

    @property
    def encoder_calls(self) -> int:
        return self.streams.encoder_calls

    @property
    def decoder_calls(self) -> int:
        return self.streams.decoder_calls

    def __repr__(self) -> str:
        pipe = self._pipe()
        return (f"PipelineCache(pipeline={type(pipe).__name__}, streams={self.streams!r}, "
                f"controlnet_calls={self.controlnet_calls}, controlnet_skips={self.controlnet_skips})")

    # -- time bookkeeping ----------------------------------------------------------------------
    def _log_sigma(self, t: float) -> float:
        alphas = getattr(self._scheduler(), "alphas_cumprod", None)
        value = log_sigma_at(alphas, t) if isinstance(alphas, torch.Tensor) else math.nan
        return value if math.isfinite(value) else -t  # decreasing like log σ where σ is unknown

    def _scheduler(self) -> Any:
        pipe = self._pipe()
        return getattr(pipe, "scheduler", None)

    def _sync(self, t: Any) -> bool:
        """Follow the scheduler's timesteps; a new tensor means a new pipeline call. False: unknown.

        The key schedule is laid over the steps the call runs: from the scheduler's timestep that
        the call's first evaluation ``t`` matches (img2img ``strength`` and SDXL's
        ``denoising_start`` skip the first ones), so keys and presets count run steps.
        """
        timesteps = getattr(self._scheduler(), "timesteps", None)
        if not isinstance(timesteps, torch.Tensor) or timesteps.numel() == 0:
            return False
        if timesteps is not self._timesteps:
            self._timesteps = timesteps
            self._lay_out(_first_time(t))
        return True

    def _lay_out(self, time: float) -> None:
        """Start a run whose first evaluation is at ``time``: keys over the timesteps from there."""
        times = self._timesteps.tolist() if self._timesteps is not None else []
        start = next((i for i, value in enumerate(times) if value <= time * (1 + 1e-5) + 1e-9), 0)
        self.streams.set_timesteps(times[start:])
        self._controlnet_last = None

    def _stream(self, arguments: Any) -> CachedModel:
        """The cache stream of a call's conditioning."""
        extra = arguments.get("kwargs") or {}
        return self.streams.get({name: value for name, value in {**arguments, **extra}.items()
                                 if name in STREAM_ARGUMENTS and value is not None})

    def _on_schedule(self, time: float) -> bool:
        times = self._timesteps.tolist() if self._timesteps is not None else []
        return any(math.isclose(time, value, rel_tol=1e-5, abs_tol=1e-9) for value in times)

    def _in_schedule(self, t: Any) -> bool:
        time = _first_time(t)
        return self._timesteps is not None and time <= float(self._timesteps.max()) * (1 + 1e-5)

    # -- the patched forwards ------------------------------------------------------------------
    def _denoiser_forward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(original)

        def forward(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            arguments = dict(bound.arguments)
            extra = arguments.pop("kwargs", None) or {}
            return_dict = arguments.pop("return_dict", True)
            sample = arguments.pop(self._sample_name)
            t = arguments.pop(self._time_name)
            if not self._sync(t) or not self._in_schedule(t):
                return original(*args, **kwargs)  # a call this cache cannot place: run it as it is
            model = self._stream({**arguments, **extra})
            if model.in_trajectory and model.starts_over(t):
                # A new run although this pipeline's scheduler set no new timesteps: a loop that
                # reuses them (it starts on one of them), or another pipeline sharing this
                # denoiser with a scheduler of its own, whose times this schedule cannot place:
                # its calls run as they are, exactly.
                if not self._on_schedule(_first_time(t)):
                    self.foreign_calls += 1
                    return original(*args, **kwargs)
                self._lay_out(_first_time(t))
            cond = {k: v for k, v in {**arguments, **extra}.items() if v is not None}
            out = model(sample, t, **cond)
            return _wrap_output(self.denoiser_name, out, return_dict)

        return forward

    def _controlnet_forward(self, original: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(original)

        def forward(*args: Any, **kwargs: Any) -> Any:
            bound = signature.bind(*args, **kwargs)
            sample, t = list(bound.arguments.values())[:2]
            time = _first_time(t)
            batch = (tuple(sample.shape), sample.dtype, sample.device)
            last = self._controlnet_last
            if (self._sync(t) and self._in_schedule(t) and last is not None and last[0] == batch
                    and not self._stream(bound.arguments).will_encode(time)):
                self.controlnet_skips += 1
                return last[1]  # the last key's residuals (a shallow branch adds them to fresh skips)
            result = original(*args, **kwargs)
            self.controlnet_calls += 1
            self._controlnet_last = (batch, result)
            return result

        return forward

    def remove(self) -> None:
        for patch in reversed(self._patches):
            patch.remove()
        self._patches = []
        self._controlnet_last = None
        self.streams.reset()


def _wrap_output(name: str, out: torch.Tensor, return_dict: bool) -> Any:
    if not return_dict:
        return (out,)
    if name == "unet":
        return require("diffusers.models.unets.unet_2d_condition", "diffusers").UNet2DConditionOutput(sample=out)
    return require("diffusers.models.modeling_outputs", "diffusers").Transformer2DModelOutput(sample=out)


def enable(
    pipe: Any,
    *,
    keys: KeysLike = None,
    policy: Optional[PolicyLike] = None,
    coordinate: Optional[str] = None,
    decoder_start: Optional[int] = None,
    encoder_blocks: Optional[int] = None,
    branch_depth: Optional[int] = None,
    config: Optional[ConfigLike] = None,
    check_finite: bool = False,
) -> PipelineCache:
    """Run the pipeline's denoiser encoder only at key steps, blending cached features in between.

    Args:
        pipe: a diffusers pipeline with ``pipe.unet`` (UNet2DConditionModel) or ``pipe.transformer``
            (DiTTransformer2DModel), and ``pipe.scheduler``.
        keys: key schedule over the distinct timesteps of each call (``None``: every step, which
            reproduces the pipeline exactly).
        policy: ``"hold"``, ``"linear"`` (``None``: linear), ``"polynomial(k)"`` or fitted weights.
        coordinate: blend over ``"t"`` (``None``, ``"auto"``), the step position ``"step"``, or
            ``"log_sigma"`` (σ from the scheduler's ``alphas_cumprod``).
        decoder_start: UNet only: the first up block the decoder runs (``None``: 0).
        encoder_blocks: DiT only: blocks in the encoder (``None``: half the depth).
        branch_depth: UNet only, instead of ``decoder_start``: recompute this many outermost
            layers every step and cache only the deep feature between them (DeepCache's topology;
            ``1`` is the finest cut). See :class:`UNet2DConditionSplit`.
        config: a :class:`tiec.TiecConfig` or the path of its JSON file, giving keys, policy,
            coordinate and split depth; then leave those unset.
        check_finite: reject non-finite encoder features.

    Returns:
        The :class:`PipelineCache`, with the call counters.

    Raises:
        TiecError: caching is already enabled on this pipeline (call :func:`disable` first).
        NotImplementedError: the pipeline has no supported denoiser.

    Examples:
        >>> import tiec.adapters.diffusers as tiec_diffusers
        >>> # cache = tiec_diffusers.enable(pipe, keys="every:3", policy="linear")
        >>> # images = pipe(prompt).images; tiec_diffusers.disable(pipe)
        >>> # tiec_diffusers.enable(pipe, config="calibrated.json")
    """
    options = merge_config(config, keys=keys, policy=policy, coordinate=coordinate, decoder_start=decoder_start,
                           encoder_blocks=encoder_blocks, branch_depth=branch_depth)
    keys, policy = options["keys"], Linear() if options["policy"] is None else options["policy"]
    coordinate = {None: "t", "auto": auto_coordinate(policy)}.get(options["coordinate"], options["coordinate"])
    decoder_start = options["decoder_start"] or 0
    encoder_blocks = options["encoder_blocks"]
    branch_depth = options["branch_depth"]
    _, denoiser = _denoiser(pipe)
    if denoiser in _PATCHES:
        other = _PATCHES[denoiser]._pipe()
        if other is not None and other is not pipe and getattr(other, "scheduler", None) is not pipe.scheduler:
            raise TiecError(
                f"this {type(pipe).__name__}'s {type(denoiser).__name__} is shared with a {type(other).__name__} that "
                "has tiec enabled with a scheduler of its own; disable it there first, or build this pipeline with "
                "the same scheduler (from_pipe shares it)"
            )
        raise TiecError(
            f"tiec caching is already enabled on this {type(pipe).__name__}'s {type(denoiser).__name__}; "
            "call tiec.adapters.diffusers.disable(pipe) before enabling it again"
        )
    if not hasattr(pipe, "scheduler"):
        raise TiecTypeError(f"pipe must have a scheduler, got {type(pipe).__name__} without one")
    state = PipelineCache(pipe, keys=keys, policy=policy, coordinate=coordinate, decoder_start=decoder_start,
                          encoder_blocks=encoder_blocks, check_finite=check_finite, branch_depth=branch_depth)
    _PATCHES[denoiser] = state
    return state


def is_enabled(pipe: Any) -> bool:
    """Whether :func:`enable` is in effect for ``pipe``: on its denoiser, through this pipeline or
    one that shares its scheduler (another pipeline's calls with a scheduler of their own run
    uncached)."""
    _, denoiser = _denoiser(pipe)
    state = _PATCHES.get(denoiser)
    if state is None:
        return False
    owner = state._pipe()
    return owner is pipe or getattr(owner, "scheduler", None) is getattr(pipe, "scheduler", None)


def disable(pipe: Any) -> None:
    """Restore the pipeline's original ``forward`` methods exactly. A no-op when not enabled."""
    _, denoiser = _denoiser(pipe)
    state = _PATCHES.get(denoiser)
    if state is None:
        return
    state.remove()
    del _PATCHES[denoiser]


@contextlib.contextmanager
def cached(pipe: Any, **options: Any) -> Iterator[PipelineCache]:
    """``enable`` for the duration of a ``with`` block; ``disable`` however the block ends.

    Examples:
        >>> import tiec.adapters.diffusers as tiec_diffusers
        >>> # with tiec_diffusers.cached(pipe, keys=3) as cache:
        >>> #     images = pipe(prompt).images
    """
    state = enable(pipe, **options)
    try:
        yield state
    finally:
        disable(pipe)
