"""A small real encoder/decoder denoiser, so the core is tested without diffusers.

``ToyUNet`` is a two-level conv UNet with a sinusoidal time embedding and optional class labels.
Its ``forward`` is written as one pass; ``encode``/``decode`` split the same computation at the
bottleneck (the skip tensor and the bottleneck are the features), so ``split reproduces forward``
is a real check.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
from torch import nn
from torch.nn import functional as F


def timestep_embedding(t: torch.Tensor | float | int, dim: int, batch: int) -> torch.Tensor:
    t = torch.as_tensor(t, dtype=torch.float32)
    if t.dim() == 0:
        t = t.expand(batch)
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=1)  # (B, dim)


class ToyUNet(nn.Module):
    def __init__(self, channels: int = 2, width: int = 8, num_classes: Optional[int] = None) -> None:
        super().__init__()
        self.width = width
        self.time_mlp = nn.Sequential(nn.Linear(width, width), nn.SiLU(), nn.Linear(width, width))
        self.class_embed = nn.Embedding(num_classes + 1, width) if num_classes else None
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.down = nn.Conv2d(width, width * 2, 3, stride=2, padding=1)
        self.mid = nn.Conv2d(width * 2, width * 2, 3, padding=1)
        self.dec_time = nn.Linear(width, width * 2)
        self.up = nn.ConvTranspose2d(width * 2, width, 4, stride=2, padding=1)
        self.conv_out = nn.Conv2d(width * 2, channels, 3, padding=1)

    def embed(self, t, batch: int, class_labels: Optional[torch.Tensor]) -> torch.Tensor:
        emb = self.time_mlp(timestep_embedding(t, self.width, batch))  # (B, W)
        if self.class_embed is not None:
            if class_labels is None:
                raise ValueError("class_labels are required for a class-conditional ToyUNet")
            emb = emb + self.class_embed(class_labels)
        return emb

    def forward(self, x: torch.Tensor, t, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        emb = self.embed(t, x.shape[0], class_labels)
        h = self.conv_in(x) + emb[:, :, None, None]  # (B, W, H, W)
        skip = h
        h = F.silu(self.down(h))  # (B, 2W, H/2, W/2)
        h = F.silu(self.mid(h))
        h = h + self.dec_time(emb)[:, :, None, None]
        h = F.silu(self.up(h))  # (B, W, H, W)
        return self.conv_out(torch.cat([h, skip], dim=1))

    # -- the split ------------------------------------------------------------------------------
    def encode(self, x: torch.Tensor, t, class_labels: Optional[torch.Tensor] = None):
        emb = self.embed(t, x.shape[0], class_labels)
        h = self.conv_in(x) + emb[:, :, None, None]
        skip = h
        h = F.silu(self.down(h))
        h = F.silu(self.mid(h))
        return (skip, h)

    def decode(self, features, t, class_labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        skip, h = features
        emb = self.embed(t, skip.shape[0], class_labels)
        h = h + self.dec_time(emb)[:, :, None, None]
        h = F.silu(self.up(h))
        return self.conv_out(torch.cat([h, skip], dim=1))


def make_toy(seed: int = 0, **kwargs) -> ToyUNet:
    torch.manual_seed(seed)
    return ToyUNet(**kwargs).eval()


class CountingSplit:
    """Wraps a split and counts encoder/decoder calls (and the batch each decoder call saw)."""

    def __init__(self, split) -> None:
        self.split = split
        self.encode_calls = 0
        self.decode_calls = 0
        self.decode_batches: list[int] = []

    def encode(self, x, t, **cond):
        self.encode_calls += 1
        return self.split.encode(x, t, **cond)

    def decode(self, features, t, **cond):
        self.decode_calls += 1
        self.decode_batches.append(features[0].shape[0])
        return self.split.decode(features, t, **cond)
