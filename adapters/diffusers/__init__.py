"""tiec for diffusers: splits for ``UNet2DConditionModel`` and ``DiTTransformer2DModel``.

Importing this package does not import diffusers; each class imports it when built.
"""

from .dit import FASTER_DIFFUSION_DIT_BLOCKS, DiTSplit
from .pipelines import PipelineCache, cached, disable, enable, is_enabled
from .schedulers import SCHEDULERS, make_scheduler
from .unet import UNet2DConditionSplit

__all__ = [
    "DiTSplit",
    "FASTER_DIFFUSION_DIT_BLOCKS",
    "PipelineCache",
    "SCHEDULERS",
    "UNet2DConditionSplit",
    "cached",
    "disable",
    "enable",
    "is_enabled",
    "make_scheduler",
]
