"""Fitting blend weights on a demo model: ``tiec fit``, the benchmark's ``fitted`` rows and the
shipped DPM-Solver++ configurations.

By default the inputs never meet the benchmark's: the fit samples ``num_inputs`` calibration images (seeds
from 30,000, labels cycling 0-9) and scores each candidate on ``held_out`` others (seeds from
40,000, labels shifted by 3), PSNR of the images against every step a key; the benchmark measures
seeds 0-999, ``tiec calibrate`` 0-N and 10,000+, the studies 20,000+.
"""

from __future__ import annotations

import time
from typing import Any, Optional

import torch

from ..bench.grid import GUIDANCE
from ..config import TiecConfig
from ..fitted import FitResult, fit_blend
from .candidates import split_options

__all__ = ["CALIBRATION_SEED", "HELD_OUT_SEED", "demo_inputs", "fit_demo", "fitted_config"]

CALIBRATION_SEED = 30_000
HELD_OUT_SEED = 40_000


def _split_keywords(demo: Any, depth: Any) -> dict[str, Any]:
    """The keywords of ``demo.split`` for a split depth label (``{}``: the model's default split)."""
    option = "decoder_start" if hasattr(demo, "tokens") else "encoder_blocks"
    return {} if depth is None else split_options(depth, option)


def demo_inputs(count: int, seed: int, shift: int = 0) -> tuple[list[int], list[int]]:
    """``(labels, seeds)``: labels cycling 0-9 from ``shift``, seeds from ``seed``."""
    return [(i + shift) % 10 for i in range(count)], list(range(seed, seed + count))


@torch.no_grad()
def fit_demo(demo: Any, scheduler: str, steps: int, keys: Any, *, depth: Any = None, num_inputs: int = 32,
             held_out: int = 64, num_keys: int = 3, ridge: float = 1e-4, rounds: int = 3,
             calibration_inputs: Optional[tuple[list[int], list[int]]] = None,
             held_out_inputs: Optional[tuple[list[int], list[int]]] = None, progress: bool = False) -> FitResult:
    """:func:`tiec.fit_blend` on a loaded demo model (``tiec.demo.load``) with guidance 2.

    ``depth`` is a split depth label (an int: DiT encoder blocks / UNet decoder start, or
    ``"branch:d"``; ``None``: the model's default). The inputs are ``num_inputs`` and
    ``held_out`` of this module's own, unless ``calibration_inputs`` / ``held_out_inputs``
    (``(labels, seeds)``, e.g. ``tiec calibrate``'s) are given.
    """
    from ..bench.metrics import psnr
    from ..demo.sampling import sample_digits, to_unit

    split = demo.split(**_split_keywords(demo, depth))

    def runner(inputs: tuple[list[int], list[int]]):
        labels, seeds = inputs

        def run(split_: Any, **kw: Any) -> torch.Tensor:
            return sample_digits(demo, labels, steps=steps, scheduler=scheduler, guidance_scale=GUIDANCE, seeds=seeds,
                                 split=split_, coordinate="t", **kw).sample
        return run

    held = runner(held_out_inputs or demo_inputs(held_out, HELD_OUT_SEED, 3))
    reference = to_unit(held(split, keys="all", policy="hold"))
    return fit_blend(runner(calibration_inputs or demo_inputs(num_inputs, CALIBRATION_SEED)), split, keys=keys,
                     num_keys=num_keys, ridge=ridge, rounds=rounds, progress=progress,
                     score=lambda policy: psnr(to_unit(held(split, keys=keys, policy=policy)), reference))


def fitted_config(model: str, scheduler: str, steps: int, keys: str, *, depth: Any = None,
                  command: Optional[str] = None, progress: bool = False, **fit: Any) -> TiecConfig:
    """Fit a demo model (by name) and return the configuration with the weights and how they scored.

    Where the best candidate is a start's fixed rule (``hold`` or ``linear``: no fit beat it on
    the held-out inputs), the configuration names that policy instead of listing its weights.
    """
    from ..demo import load

    start = time.perf_counter()
    demo = load(model)
    result = fit_demo(demo, scheduler, steps, keys, depth=depth, progress=progress, **fit)
    plain = result.chosen in ("hold", "linear")  # no fit beat the fixed rule: write the rule (the same weights)
    return TiecConfig(keys=keys, policy=result.chosen if plain else "fitted", coordinate="t", steps=steps,
                      scheduler=scheduler, weights=None if plain else result.policy.to_list(),
                      **_split_keywords(demo, depth),
                      provenance=dict(command=command, model=model, chosen=result.chosen,
                                      held_out_psnr_db={k: round(v, 3) for k, v in result.table().items()},
                                      seconds=round(time.perf_counter() - start, 1)))
