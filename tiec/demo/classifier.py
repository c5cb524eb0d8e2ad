"""A small CNN that classifies the 16x16 digits; the demo's quality metric.

Its penultimate features (64-d) serve the Fréchet distance of the benchmark, its predictions the
accuracy of class-conditional samples.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .data import NUM_CLASSES

__all__ = ["DigitClassifier"]


class DigitClassifier(nn.Module):
    """``(B, 1, 16, 16)`` images in [-1, 1] -> ``(B, 10)`` logits; ``features`` gives ``(B, 64)``."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)  # 8x8
        self.conv3 = nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1)  # 4x4
        self.head = nn.Linear(2 * width, NUM_CLASSES)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.conv1(x))
        h = F.relu(self.conv2(h))
        h = F.relu(self.conv3(h))
        return h.mean(dim=(2, 3))  # (B, 2W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))
