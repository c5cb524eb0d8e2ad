"""tiec: Temporal-Interpolated Encoder Caching for diffusion sampling.

The encoder of a UNet or DiT runs only at *key* steps; the decoder runs every step from encoder
features blended in time (interpolation between keys, extrapolation past the newest). The core
needs torch only; adapters for diffusers, timm and k-diffusion live in :mod:`tiec.adapters` and are
imported lazily.
"""

from ._errors import (
    MissingDependencyError,
    TiecError,
    TiecNotImplementedError,
    TiecTypeError,
    TiecValueError,
)
from .blend import Features, relative_error, weighted_sum
from .cache import EncoderCache
from .cached_model import CachedModel
from .config import TiecConfig, load_config
from .coordinates import log_sigma_at, scheduler_log_sigmas
from .fitted import FitResult, Fitted, FittedStep, fit_blend
from .flops import EncoderShare, count_flops, encoder_share
from .guidance import ClassifierFreeGuidance
from .loop import KEY_ERROR_WARNING, NoiseInjection, SampleResult, StepInfo, sample
from .policies import Hold, Linear, Lookahead, Policy, Polynomial, get_policy, lagrange_weights
from .protocol import Split, decode_batch
from .schedules import KeySchedule, every_step, explicit, get_schedule, preset, uniform

__version__ = "0.1.0.dev0"

__all__ = [
    "CachedModel",
    "ClassifierFreeGuidance",
    "EncoderCache",
    "EncoderShare",
    "KEY_ERROR_WARNING",
    "Features",
    "FitResult",
    "Fitted",
    "FittedStep",
    "Hold",
    "KeySchedule",
    "Linear",
    "Lookahead",
    "MissingDependencyError",
    "NoiseInjection",
    "Policy",
    "Polynomial",
    "SampleResult",
    "Split",
    "StepInfo",
    "TiecConfig",
    "TiecError",
    "TiecNotImplementedError",
    "TiecTypeError",
    "TiecValueError",
    "count_flops",
    "decode_batch",
    "encoder_share",
    "every_step",
    "explicit",
    "fit_blend",
    "get_policy",
    "get_schedule",
    "lagrange_weights",
    "load_config",
    "log_sigma_at",
    "preset",
    "relative_error",
    "sample",
    "scheduler_log_sigmas",
    "uniform",
    "weighted_sum",
]
