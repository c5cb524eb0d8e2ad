"""Quickstart: sample with encoder caching and compare with the uncached run.

Runs on CPU in a few seconds:

    python examples/quickstart.py

The denoiser here is a small randomly initialised conv UNet written as a tiec split (an encoder
that returns the skip and bottleneck tensors, a decoder that reads only those and the time), so the
numbers show the mechanics -- exactness with every step a key, fewer encoder calls with sparse
keys -- not image quality. Trained demo models come with `tiec generate`.
"""

from __future__ import annotations

import math
import time

import torch
from diffusers import DDIMScheduler
from torch import nn
from torch.nn import functional as F

import tiec


class TinyUNet(nn.Module):
    """conv_in -> down -> mid (the encoder) | up + skip -> conv_out (the decoder)."""

    def __init__(self, channels: int = 4, width: int = 64) -> None:
        super().__init__()
        self.width = width
        self.conv_in = nn.Conv2d(channels, width, 3, padding=1)
        self.down = nn.Conv2d(width, 2 * width, 3, stride=2, padding=1)
        self.mid = nn.Sequential(*[nn.Conv2d(2 * width, 2 * width, 3, padding=1) for _ in range(4)])
        self.time = nn.Linear(width, 2 * width)
        self.up = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1)
        self.conv_out = nn.Conv2d(2 * width, channels, 3, padding=1)

    def embed(self, t, batch: int) -> torch.Tensor:
        t = torch.as_tensor(t, dtype=torch.float32).expand(batch) if torch.as_tensor(t).dim() == 0 \
            else torch.as_tensor(t, dtype=torch.float32)
        freqs = torch.exp(-math.log(1e4) * torch.arange(self.width // 2) / (self.width // 2))
        args = t[:, None] * freqs[None]
        return torch.cat([args.cos(), args.sin()], dim=1)  # (B, width)

    def encode(self, x: torch.Tensor, t) -> tuple[torch.Tensor, ...]:
        skip = self.conv_in(x)  # (B, W, H, W)
        h = F.silu(self.down(skip))  # (B, 2W, H/2, W/2)
        for conv in self.mid:
            h = F.silu(conv(h)) + h
        return (skip, h)

    def decode(self, features: tuple[torch.Tensor, ...], t) -> torch.Tensor:
        skip, h = features
        h = h + self.time(self.embed(t, h.shape[0]))[:, :, None, None]
        h = F.silu(self.up(h))  # (B, W, H, W)
        return self.conv_out(torch.cat([h, skip], dim=1))


def main() -> None:
    torch.manual_seed(0)
    model = TinyUNet().eval()
    noise = torch.randn(2, 4, 32, 32, generator=torch.Generator().manual_seed(42))
    runs = {}
    with torch.no_grad():
        for name, keys, policy in [("every step a key", None, "linear"),
                                   ("hold, key every 3rd step", 3, "hold"),
                                   ("linear, key every 3rd step", 3, "linear")]:
            start = time.perf_counter()
            result = tiec.sample(model, DDIMScheduler(), noise, num_inference_steps=50, keys=keys,
                                 policy=policy)
            runs[name] = (result, time.perf_counter() - start)
    reference = runs["every step a key"][0].sample
    print(f"{'run':<28} {'encoder calls':>13} {'seconds':>8} {'max |diff|':>10}")
    for name, (result, seconds) in runs.items():
        diff = (result.sample - reference).abs().max().item()
        print(f"{name:<28} {result.encoder_calls:>13} {seconds:>8.2f} {diff:>10.2e}")
    print("(random weights: the differences show the mechanics, not the quality of trained models)")


if __name__ == "__main__":
    main()
