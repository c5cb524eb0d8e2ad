"""Short names for the diffusers schedulers tiec's command line offers."""

from __future__ import annotations

from typing import Any, Mapping

from tiec._errors import TiecValueError

from .._lazy import require

__all__ = ["SCHEDULERS", "make_scheduler"]

#: ``--scheduler`` names and the diffusers classes they stand for (``dpm-sde``: DPM-Solver++ with
#: its SDE variant, ``algorithm_type="sde-dpmsolver++"``; ``dpm-karras``: DPM-Solver++ on a Karras
#: σ schedule, "DPM++ 2M Karras"; see :data:`OPTIONS`).
SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "ddpm": "DDPMScheduler",
    "dpm": "DPMSolverMultistepScheduler",
    "dpm-karras": "DPMSolverMultistepScheduler",
    "dpm-sde": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler-a": "EulerAncestralDiscreteScheduler",
    "heun": "HeunDiscreteScheduler",
    "unipc": "UniPCMultistepScheduler",
}


#: Config entries a ``--scheduler`` name sets over the pipeline's own.
OPTIONS: dict[str, dict[str, Any]] = {"dpm-sde": {"algorithm_type": "sde-dpmsolver++"},
                                       "dpm-karras": {"use_karras_sigmas": True}}


def make_scheduler(kind: str, config: Mapping[str, Any]) -> Any:
    """A diffusers scheduler of ``kind`` (a key of :data:`SCHEDULERS`) built from ``config``.

    Keys of ``config`` the class does not know are ignored, as in diffusers' ``from_config``, so a
    pipeline's scheduler can be swapped: ``make_scheduler("dpm", pipe.scheduler.config)``.

    Examples:
        >>> make_scheduler("ddim", {"num_train_timesteps": 1000, "clip_sample": False}).config.clip_sample
        False
        >>> make_scheduler("dpm-sde", {}).config.algorithm_type
        'sde-dpmsolver++'
    """
    if kind not in SCHEDULERS:
        raise TiecValueError(f"scheduler {kind!r} is unknown; expected one of {sorted(SCHEDULERS)}")
    diffusers = require("diffusers", "diffusers")
    return getattr(diffusers, SCHEDULERS[kind]).from_config({**dict(config), **OPTIONS.get(kind, {})})
