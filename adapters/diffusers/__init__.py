"""tiec for diffusers: splits for ``UNet2DConditionModel`` and ``DiTTransformer2DModel``.

Importing this package does not import diffusers; each class imports it when built.
"""

from .dit import FASTER_DIFFUSION_DIT_BLOCKS, DiTSplit
from .unet import UNet2DConditionSplit

__all__ = ["DiTSplit", "FASTER_DIFFUSION_DIT_BLOCKS", "UNet2DConditionSplit"]
