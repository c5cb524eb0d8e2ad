"""Deprecated alias of :mod:`tiec.bench.metrics` (the benchmark's metrics moved into its package);
importing it warns once and gives the same functions. It will be removed in tiec 0.2."""

import warnings

from .bench.metrics import PeakMemory, frechet_distance, max_abs_error, psnr, ssim

__all__ = ["PeakMemory", "frechet_distance", "max_abs_error", "psnr", "ssim"]

warnings.warn("tiec.metrics moved to tiec.bench.metrics; import it from there "
              "(the alias goes in tiec 0.2)", DeprecationWarning, stacklevel=2)
