"""tiec for k-diffusion: a denoiser wrapper that keeps your sampler and caches the encoder.

k-diffusion samplers call ``model(x, sigma, **extra_args)`` and expect the denoised ``x0``. This
wrapper composes k-diffusion's own ``DiscreteEpsDDPMDenoiser`` / ``DiscreteVDDPMDenoiser`` (so the
σ→t conversion and the input/output scalings are k-diffusion's, bit for bit) around a
:class:`tiec.CachedModel` over your split.

Key decisions. After :meth:`KDiffusionDenoiser.set_sigmas` with the schedule you sample with,
each call is placed on it by value (a tolerant match on the model time ``t``): a schedule sigma is
its own step, a sigma between two schedule sigmas (the midpoints of ``dpm_2``, ``dpmpp_2s_ancestral``,
``dpmpp_sde``, Heun's corrector at the next sigma) is a sub-step of the step before it, and runs the
encoder exactly when that step is a key. **Adaptive samplers** (``dpm_fast``, ``dpm_adaptive``) take
no sigma list: call ``set_sigmas(None)``; then every new distinct sigma is the next step and keys
follow the schedule open-ended (``keys="every:3"`` encodes every third distinct sigma). A step that
``dpm_adaptive`` rejects evaluates a sigma above the last one, which starts a fresh trajectory: it
costs one encoder call and never blends features across the rejected step.

Guidance. ``extra_args={"cond": c, "uncond": u, "cond_scale": s}`` evaluates ``[uncond, cond]`` in
one batch and caches both halves together; callers that send cond and uncond in separate calls get
separate cache streams, told apart by the content of their conditioning tensors.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from tiec._errors import TiecTypeError, TiecValueError
from tiec.blend import Features
from tiec.cached_model import CachedModel
from tiec.config import ConfigLike, merge_config
from tiec.coordinates import auto_coordinate
from tiec.policies import Linear, PolicyLike
from tiec.protocol import Split, fresh_features
from tiec.schedules import KeysLike
from tiec.streams import CacheStreams

from ._lazy import require

__all__ = ["KDiffusionDenoiser", "PREDICTIONS"]

PREDICTIONS = ("eps", "v", "eps_learned_sigma")


class _Renamed:
    """The split seen through k-diffusion's keyword names (``cond`` -> the split's own keyword)."""

    def __init__(self, split: Split, cond_key: Optional[str]) -> None:
        self.split = split
        self.cond_key = cond_key

    def _kwargs(self, cond: dict[str, Any]) -> dict[str, Any]:
        if self.cond_key is not None and "cond" in cond:
            cond = dict(cond)
            cond[self.cond_key] = cond.pop("cond")
        return cond

    def encode(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        return self.split.encode(x, t, **self._kwargs(cond))

    def decode(self, features: Features, t: Any, **cond: Any) -> torch.Tensor:
        return self.split.decode(features, t, **self._kwargs(cond))

    @property
    def fresh_features(self) -> int:
        return fresh_features(self.split)

    def refresh(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        return self.split.refresh(x, t, **self._kwargs(cond))


class KDiffusionDenoiser(torch.nn.Module):
    """A k-diffusion denoiser ``(x, sigma, **extra_args) -> denoised`` over a split, with caching.

    Args:
        split: the model as a :class:`tiec.Split`; it receives the model's own timestep ``t``
            (fractional by default, as ``DiscreteSchedule.sigma_to_t`` gives it).
        alphas_cumprod: the model's training schedule ``ᾱ_t``, shape ``(T,)``.
        prediction: ``"eps"``, ``"v"``, or ``"eps_learned_sigma"`` (the output's first half of the
            channels is eps, as k-diffusion's ``OpenAIDenoiser`` reads it).
        quantize: round t to the nearest training timestep (k-diffusion's ``quantize``).
        keys: key schedule over steps (``None``: every step, exact).
        policy: blend policy (``None``: linear).
        coordinate: ``"t"`` (``None``, ``"auto"``: :func:`tiec.coordinates.auto_coordinate`),
            ``"log_sigma"`` or ``"step"``.
        cond_key: the split's keyword for k-diffusion's ``cond`` (e.g. ``"encoder_hidden_states"``,
            ``"class_labels"``); ``None`` passes ``cond`` under its own name.
        max_streams: cache streams kept for separately called conditionings (least recently used
            first out).
        config: a :class:`tiec.TiecConfig` or the path of its JSON file giving keys, policy and
            coordinate (then leave those unset); its split depth is for whoever builds ``split``.

    Examples:
        >>> import torch, k_diffusion as K
        >>> class Split:
        ...     def encode(self, x, t): return (x * 0.5,)
        ...     def decode(self, features, t): return features[0] + 0 * t.reshape(-1, 1, 1, 1)
        >>> alphas = torch.linspace(0.9999, 0.01, 1000)
        >>> model = KDiffusionDenoiser(Split(), alphas, keys="every:2")
        >>> sigmas = K.sampling.get_sigmas_karras(6, 0.1, 10.0)
        >>> model.set_sigmas(sigmas)
        >>> x = K.sampling.sample_euler(model, torch.randn(1, 1, 4, 4) * sigmas[0], sigmas, disable=True)
        >>> model.encoder_calls, model.decoder_calls
        (3, 6)
    """

    def __init__(self, split: Split, alphas_cumprod: torch.Tensor, *, prediction: str = "eps",
                 quantize: bool = False, keys: KeysLike = None, policy: Optional[PolicyLike] = None,
                 coordinate: Optional[str] = None, cond_key: Optional[str] = None, max_streams: int = 4,
                 config: Optional[ConfigLike] = None) -> None:
        super().__init__()
        options = merge_config(config, keys=keys, policy=policy, coordinate=coordinate)
        keys, policy = options["keys"], Linear() if options["policy"] is None else options["policy"]
        coordinate = options["coordinate"] or "auto"
        coordinate = auto_coordinate(policy) if coordinate == "auto" else coordinate
        external = require("k_diffusion.external", "k-diffusion")
        if not (hasattr(split, "encode") and hasattr(split, "decode")):
            raise TiecTypeError(f"split must have encode() and decode(), got {type(split).__name__}")
        if prediction not in PREDICTIONS:
            raise TiecValueError(f"prediction {prediction!r} is unknown; expected one of {PREDICTIONS}")
        if coordinate not in ("log_sigma", "t", "step"):
            raise TiecValueError(f"coordinate {coordinate!r} is unknown; expected 'log_sigma', 't' or 'step'")
        if isinstance(max_streams, bool) or not isinstance(max_streams, int) or max_streams < 1:
            raise TiecValueError(f"max_streams must be an int >= 1, got {max_streams!r}")
        if not isinstance(alphas_cumprod, torch.Tensor) or alphas_cumprod.dim() != 1:
            raise TiecTypeError("alphas_cumprod must be a 1-D tensor of the training schedule's ᾱ_t")
        base = external.DiscreteVDDPMDenoiser if prediction == "v" else external.DiscreteEpsDDPMDenoiser
        self.inner = base(self._model_output, alphas_cumprod, quantize)  # k-diffusion's own scalings
        self.split = _Renamed(split, cond_key)
        self.prediction = prediction
        self.keys = keys
        self.policy = policy
        self.coordinate = coordinate
        self.max_streams = max_streams
        self._sigmas: Optional[list[float]] = None
        self.streams = CacheStreams(self._make_stream, max_streams=max_streams)

    # -- k-diffusion's DiscreteSchedule interface ----------------------------------------------
    @property
    def sigma_min(self) -> torch.Tensor:
        return self.inner.sigma_min

    @property
    def sigma_max(self) -> torch.Tensor:
        return self.inner.sigma_max

    def get_sigmas(self, n: Optional[int] = None) -> torch.Tensor:
        """The model-native schedule (k-diffusion's ``DiscreteSchedule.get_sigmas``)."""
        return self.inner.get_sigmas(n)

    def sigma_to_t(self, sigma: torch.Tensor, quantize: Optional[bool] = None) -> torch.Tensor:
        return self.inner.sigma_to_t(sigma, quantize)

    # -- state ---------------------------------------------------------------------------------
    def set_sigmas(self, sigmas: Optional[Sequence[float] | torch.Tensor]) -> None:
        """The schedule the next runs sample with (the final 0 is ignored); ``None`` for adaptive
        samplers. Starts a new trajectory in every stream."""
        if sigmas is None:
            self._sigmas = None
        else:
            values = torch.as_tensor(sigmas, dtype=torch.float32).reshape(-1)
            positive = values[values > 0]
            if positive.numel() == 0:
                raise TiecValueError(f"sigmas must hold at least one positive sigma, got {values.tolist()}")
            self._sigmas = self.inner.sigma_to_t(positive.to(self.inner.sigmas.device)).tolist()
        self.streams.set_timesteps(self._sigmas)

    def reset(self) -> None:
        """Drop every stream and zero the counters (the sigma schedule is kept)."""
        self.streams.reset()

    @property
    def encoder_calls(self) -> int:
        return self.streams.encoder_calls

    @property
    def decoder_calls(self) -> int:
        return self.streams.decoder_calls

    def extra_repr(self) -> str:
        schedule = "open-ended" if self._sigmas is None else f"{len(self._sigmas)} sigmas"
        return (f"prediction={self.prediction!r}, keys={self.keys!r}, policy={self.policy!r}, "
                f"coordinate={self.coordinate!r}, {schedule}, streams={len(self.streams)}")

    def _make_stream(self) -> CachedModel:
        if self.coordinate == "log_sigma":
            coordinate: Any = lambda t: float(self.inner.t_to_sigma(torch.tensor(t)).log())  # noqa: E731
        else:
            coordinate = self.coordinate
        return CachedModel(self.split, keys=self.keys, policy=self.policy, coordinate=coordinate)

    def _model_output(self, x: torch.Tensor, t: torch.Tensor, **cond: Any) -> torch.Tensor:
        out = self.streams.get(cond)(x, t, **cond)
        return out.chunk(2, dim=1)[0] if self.prediction == "eps_learned_sigma" else out

    # -- the call ------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, sigma: torch.Tensor, **extra_args: Any) -> torch.Tensor:
        """Denoise: ``cond``/``uncond``/``cond_scale`` in ``extra_args`` turn on batched guidance."""
        if "cond_scale" in extra_args or "uncond" in extra_args:
            missing = {"cond", "uncond", "cond_scale"} - set(extra_args)
            if missing:
                raise TiecValueError(
                    f"classifier-free guidance needs cond, uncond and cond_scale in extra_args; missing "
                    f"{sorted(missing)}"
                )
            extra = dict(extra_args)
            cond, uncond, scale = extra.pop("cond"), extra.pop("uncond"), extra.pop("cond_scale")
            x_in = torch.cat([x] * 2)
            sigma_in = torch.cat([sigma] * 2)
            cond_in = torch.cat([uncond, cond])
            uncond_out, cond_out = self.inner(x_in, sigma_in, cond=cond_in, **extra).chunk(2)
            return uncond_out + (cond_out - uncond_out) * scale
        return self.inner(x, sigma, **extra_args)
