"""Image metrics of the benchmark, all computed (none estimated): PSNR, SSIM, max abs error,
Fréchet distance between feature sets, and peak memory of a block of code.

Images are ``(N, C, H, W)`` tensors in [0, 1]; per-image values are averaged over the set.
"""

from __future__ import annotations

import math
import threading
from typing import Optional

import torch
from torch.nn import functional as F

from .._errors import TiecValueError

__all__ = ["psnr", "ssim", "max_abs_error", "frechet_distance", "PeakMemory"]


def _check_pair(a: torch.Tensor, b: torch.Tensor) -> None:
    if a.shape != b.shape or a.dim() != 4:
        raise TiecValueError(f"images must be two (N, C, H, W) tensors of one shape, got {tuple(a.shape)} and {tuple(b.shape)}")


def psnr(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0) -> float:
    """Mean over images of ``10 log10(range² / MSE)`` in dB; ``inf`` when every image is identical.

    Examples:
        >>> x = torch.zeros(2, 1, 4, 4)
        >>> psnr(x, x)
        inf
        >>> round(psnr(x, x + 0.1), 2)
        20.0
    """
    _check_pair(a, b)
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    values = [math.inf if m == 0 else 10 * math.log10(data_range**2 / m) for m in mse.tolist()]
    return sum(values) / len(values)


def max_abs_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest absolute difference between any two corresponding pixels."""
    _check_pair(a, b)
    return (a.double() - b.double()).abs().max().item()


def _gaussian_window(size: int, sigma: float) -> torch.Tensor:
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(coords**2) / (2 * sigma**2))
    g = g / g.sum()
    return g[:, None] * g[None, :]


def ssim(a: torch.Tensor, b: torch.Tensor, *, data_range: float = 1.0, window: int = 11, sigma: float = 1.5) -> float:
    """Structural similarity (Wang et al. 2004): Gaussian window (11, σ 1.5), ``K1 = 0.01``,
    ``K2 = 0.03``, valid positions only, averaged over channels, positions and images.

    Images smaller than the window use a window of their size.

    Examples:
        >>> x = torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(0))
        >>> ssim(x, x)
        1.0
        >>> ssim(x, 1 - x) < 0
        True
    """
    _check_pair(a, b)
    size = min(window, a.shape[-1], a.shape[-2])
    kernel = _gaussian_window(size, sigma)[None, None].expand(a.shape[1], 1, size, size)
    x, y = a.double(), b.double()

    def blur(z: torch.Tensor) -> torch.Tensor:
        return F.conv2d(z, kernel, groups=a.shape[1])

    mu_x, mu_y = blur(x), blur(y)
    var_x = blur(x * x) - mu_x**2
    var_y = blur(y * y) - mu_y**2
    cov = blur(x * y) - mu_x * mu_y
    c1, c2 = (0.01 * data_range) ** 2, (0.03 * data_range) ** 2
    value = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return value.mean().item()


def _sqrtm_trace(a: torch.Tensor, b: torch.Tensor) -> float:
    """``trace(sqrt(A B))`` for symmetric positive semi-definite ``A``, ``B``: the eigenvalues of
    ``A^{1/2} B A^{1/2}`` (symmetric PSD) are those of ``A B``."""
    values, vectors = torch.linalg.eigh(a)
    root = vectors @ torch.diag(values.clamp(min=0).sqrt()) @ vectors.T
    middle = root @ b @ root
    return torch.linalg.eigvalsh((middle + middle.T) / 2).clamp(min=0).sqrt().sum().item()


def frechet_distance(x: torch.Tensor, y: torch.Tensor) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets ``(N, D)`` and ``(M, D)``:
    ``|μx - μy|² + tr(Σx) + tr(Σy) - 2 tr((Σx Σy)^{1/2})``, computed in float64 (the formula of FID).

    Examples:
        >>> f = torch.randn(500, 8, generator=torch.Generator().manual_seed(0))
        >>> abs(frechet_distance(f, f)) < 1e-6
        True
        >>> round(frechet_distance(f, f + 1.0), 6)  # a shift by 1 in each of 8 dimensions
        8.0
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[1] != y.shape[1] or min(len(x), len(y)) < 2:
        raise TiecValueError(f"features must be (N, D) and (M, D) with N, M >= 2, got {tuple(x.shape)} and {tuple(y.shape)}")
    x, y = x.double(), y.double()
    mu = (x.mean(0) - y.mean(0)).pow(2).sum().item()
    cov_x, cov_y = torch.cov(x.T), torch.cov(y.T)
    return mu + cov_x.trace().item() + cov_y.trace().item() - 2 * _sqrtm_trace(cov_x, cov_y)


def _rss_bytes() -> Optional[int]:
    try:
        with open("/proc/self/statm") as statm:
            return int(statm.read().split()[1]) * 4096
    except (OSError, ValueError, IndexError):
        return None


class PeakMemory:
    """Peak memory of a block: CUDA's ``max_memory_allocated`` on a GPU, otherwise the growth of the
    process's resident set over the block, sampled every millisecond from ``/proc/self/statm``
    (``None`` where that file does not exist). On the CPU, memory the process freed earlier and
    reuses inside the block does not show as growth: compare runs made in the same order.

    Examples:
        >>> with PeakMemory() as peak:
        ...     block = torch.ones(4_000_000)  # 16 MB
        >>> peak.bytes is None or peak.bytes >= 0
        True
    """

    def __init__(self, device: str | torch.device = "cpu", interval: float = 0.001) -> None:
        self.device = torch.device(device)
        self.interval = interval
        self.bytes: Optional[int] = None
        self._stop = threading.Event()

    def __repr__(self) -> str:
        return f"PeakMemory(device='{self.device}', bytes={self.bytes})"

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._start = torch.cuda.memory_allocated(self.device)
            return self
        self._start = _rss_bytes()
        self._peak = self._start
        if self._start is not None:
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(self.interval):
            now = _rss_bytes()
            if now is not None and self._peak is not None:
                self._peak = max(self._peak, now)

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device) - self._start
            return
        if self._start is None:
            return
        self._stop.set()
        self._thread.join()
        now = _rss_bytes()
        peak = max(self._peak or 0, now or 0)
        self.bytes = max(0, peak - self._start)
