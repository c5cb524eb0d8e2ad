"""The demo data set: scikit-learn's handwritten digits (1,797 images, 8x8, 10 classes).

The images ship inside scikit-learn, so nothing is downloaded. They are upsampled to 16x16 with
bilinear interpolation and scaled to [-1, 1]; 16x16 keeps a DiT with patch size 2 at 64 tokens,
small enough to train on a CPU in under an hour.
"""

from __future__ import annotations

import torch
from torch.nn import functional as F

__all__ = ["load_digits", "RESOLUTION", "NUM_CLASSES"]

RESOLUTION = 16
NUM_CLASSES = 10


def load_digits(resolution: int = RESOLUTION) -> tuple[torch.Tensor, torch.Tensor]:
    """All 1,797 digits as ``(images, labels)``: images ``(N, 1, R, R)`` in [-1, 1], labels ``(N,)``.

    Needs scikit-learn (``pip install 'tiec[demo]'``).
    """
    try:
        from sklearn.datasets import load_digits as sklearn_digits
    except ImportError:
        from .._errors import TiecError

        raise TiecError("the demo data needs scikit-learn: pip install 'tiec[demo]'") from None
    digits = sklearn_digits()
    images = torch.tensor(digits.images, dtype=torch.float32)[:, None] / 16.0  # (N, 1, 8, 8) in [0, 1]
    images = F.interpolate(images, size=(resolution, resolution), mode="bilinear", align_corners=False)
    images = images.clamp(0, 1) * 2 - 1
    labels = torch.tensor(digits.target, dtype=torch.long)
    return images, labels
