"""A caching configuration in one file: keys, policy, time coordinate and split depth.

``tiec calibrate`` writes one; ``tiec.sample``, the diffusers pipeline ``enable``, the k-diffusion
wrapper, ``tiec generate --config`` and ``tiec bench --config`` read one. The file is JSON::

    {
      "keys": "0,1,2,4,7,10,14,19,25,31,38,45",
      "policy": "linear",
      "coordinate": "log_sigma",
      "encoder_blocks": 8,
      "steps": 50,
      "provenance": {"command": "tiec calibrate ...", "psnr_db": 41.2, "mac_ratio": 0.31}
    }

Only ``keys`` is required. ``steps`` is the step count the configuration was chosen for; explicit
key lists are not rescaled, so a run with another count is refused by the schedule itself.

A configuration with ``"policy": "fitted"`` carries its blend weights in ``weights``: one row
``{"tau", "keys", "weights"}`` per non-key evaluation (:class:`tiec.Fitted`, written by
:func:`tiec.fit_blend` through ``tiec fit``); its coordinate is ``"t"``, the times the rows name.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Optional, Union

from ._errors import TiecTypeError, TiecValueError
from ._files import json_text, write_atomic
from .coordinates import COORDINATES
from .fitted import Fitted
from .policies import Policy, get_policy
from .schedules import get_schedule

__all__ = ["TiecConfig", "load_config", "merge_config", "ConfigLike"]


@dataclass(frozen=True)
class TiecConfig:
    """What to cache and how, for one model and sampler.

    Attributes:
        keys: a key schedule spec (see :func:`tiec.get_schedule`), as text.
        policy: a policy spec (``"hold"``, ``"linear"``, ``"polynomial(k)"``, ``"lookahead"``, ...).
        coordinate: the time coordinate (``"auto"``, ``"t"``, ``"log_sigma"``, ``"step"``).
        encoder_blocks: DiT split depth (blocks in the encoder); ``None``: the caller's default.
        decoder_start: UNet split depth (first up block the decoder runs); ``None``: the default.
        branch_depth: UNet shallow branch (outermost layers recomputed every step, DeepCache's
            topology) instead of ``decoder_start``; ``None``: no branch.
        steps: the step count the configuration was chosen for (``None``: any); ``tiec generate``
            refuses it at another step count.
        scheduler: the sampler it was chosen for, a ``--scheduler`` name such as ``"ddim"`` or
            ``"dpm"`` (``None``: not recorded); ``tiec generate`` refuses it with another.
        weights: with ``policy="fitted"``, the fitted weights (:meth:`tiec.Fitted.to_list`);
            ``None`` otherwise.
        provenance: how it was made (command, scores); never read by tiec.

    Examples:
        >>> config = TiecConfig(keys="every:3", policy="linear", encoder_blocks=8)
        >>> TiecConfig.from_dict(config.to_dict()) == config
        True
        >>> config.sample_options()
        {'keys': 'every:3', 'policy': 'linear', 'coordinate': 'auto'}
    """

    keys: str
    policy: str = "linear"
    coordinate: str = "auto"
    encoder_blocks: Optional[int] = None
    decoder_start: Optional[int] = None
    branch_depth: Optional[int] = None
    steps: Optional[int] = None
    scheduler: Optional[str] = None
    weights: Optional[list] = None
    provenance: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        if not isinstance(self.keys, str):
            raise TiecTypeError(f"keys must be a schedule spec as text, got {type(self.keys).__name__} {self.keys!r}")
        get_schedule(self.keys)  # raises naming the problem
        if (self.policy == "fitted") != (self.weights is not None):
            raise TiecValueError(f"weights come with policy 'fitted' and only with it; got policy={self.policy!r} "
                                 f"and {'no ' if self.weights is None else ''}weights")
        if self.weights is not None:
            if self.coordinate != "t":
                raise TiecValueError(f"fitted weights are keyed by the model time: coordinate must be 't', got "
                                     f"{self.coordinate!r}")
            Fitted.from_list(self.weights)
        else:
            get_policy(self.policy)
        if self.coordinate not in COORDINATES:
            raise TiecValueError(f"coordinate {self.coordinate!r} is unknown; expected one of {COORDINATES}")
        for name in ("encoder_blocks", "decoder_start", "branch_depth", "steps"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 0):
                raise TiecValueError(f"{name} must be a non-negative int or null, got {value!r}")
        if self.branch_depth is not None and (self.branch_depth < 1 or self.decoder_start):
            raise TiecValueError(
                f"branch_depth must be >= 1 and comes instead of decoder_start, got branch_depth={self.branch_depth}, "
                f"decoder_start={self.decoder_start}"
            )
        if self.steps is not None:
            get_schedule(self.keys).key_steps(self.steps)
        if self.scheduler is not None and (not isinstance(self.scheduler, str) or not self.scheduler):
            raise TiecValueError(f"scheduler must be a scheduler name such as 'ddim', or null; got {self.scheduler!r}")

    @classmethod
    def from_dict(cls, data: dict) -> "TiecConfig":
        """Build from a mapping; unknown fields are an error naming them."""
        if not isinstance(data, dict):
            raise TiecTypeError(f"a tiec configuration must be a JSON object, got {type(data).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TiecValueError(f"unknown configuration fields {unknown}; expected some of {sorted(known)}")
        if "keys" not in data:
            raise TiecValueError("a tiec configuration needs 'keys'")
        return cls(**data)

    def to_dict(self) -> dict:
        return asdict(self)

    def save(self, path: Union[str, Path]) -> Path:
        """Write the configuration as JSON (to a temporary name, then renamed)."""
        path = Path(path)
        write_atomic(path, json_text(self.to_dict()))
        return path

    def blend_policy(self) -> Union[str, Policy]:
        """The policy to run: its spec, or the :class:`tiec.Fitted` weights of a fitted configuration."""
        return Fitted.from_list(self.weights) if self.weights is not None else self.policy

    def sample_options(self) -> dict[str, Any]:
        """``keys``, ``policy`` and ``coordinate`` as keywords for :func:`tiec.sample`."""
        return dict(keys=self.keys, policy=self.blend_policy(), coordinate=self.coordinate)


ConfigLike = Union[TiecConfig, str, Path]


def load_config(config: ConfigLike) -> TiecConfig:
    """A :class:`TiecConfig` from itself or from a JSON file path."""
    if isinstance(config, TiecConfig):
        return config
    if not isinstance(config, (str, Path)):
        raise TiecTypeError(f"config must be a TiecConfig or a path to its JSON file, got {type(config).__name__}")
    path = Path(config)
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise TiecValueError(f"config {str(path)!r} cannot be read ({error.strerror})") from None
    except ValueError as error:
        raise TiecValueError(f"config {str(path)!r} is not valid JSON ({error})") from None
    try:
        return TiecConfig.from_dict(data)
    except (TiecValueError, TiecTypeError) as error:
        raise type(error)(f"config {str(path)!r}: {error}") from None


def merge_config(config: Optional[ConfigLike], **explicit: Any) -> dict[str, Any]:
    """The options an entry point runs with: ``explicit`` ones, or, with a ``config``, the config's.

    Giving both a config and an explicit (non-``None``) option is an error naming the options, so a
    configuration is never silently half overridden.

    Examples:
        >>> merge_config(None, keys="every:2", policy=None)
        {'keys': 'every:2', 'policy': None}
        >>> merge_config(TiecConfig(keys="0,4"), keys=None, policy=None)
        {'keys': '0,4', 'policy': 'linear'}
    """
    if config is None:
        return dict(explicit)
    loaded = load_config(config)
    clash = sorted(name for name, value in explicit.items() if value is not None)
    if clash:
        raise TiecValueError(f"pass either config or {', '.join(clash)}, not both (the config sets them)")
    return {name: loaded.blend_policy() if name == "policy" else getattr(loaded, name) for name in explicit}
