"""tiec for diffusers: splits for ``UNet2DConditionModel`` and ``DiTTransformer2DModel``.

Importing this package does not import diffusers; each class imports it when built.
"""

from .unet import UNet2DConditionSplit

__all__ = ["UNet2DConditionSplit"]
