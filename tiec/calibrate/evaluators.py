"""How ``tiec calibrate`` samples a candidate: on a demo model with tiec's own loop, or on a
diffusers pipeline from a local folder through ``tiec generate``'s job; each returns the images and
the MACs per image.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .candidates import Candidate, branch, split_options

__all__ = ["GUIDANCE", "DemoEvaluator", "PipelineEvaluator", "dit_depths"]

GUIDANCE = 2.0


def dit_depths(blocks: int, quick: bool) -> list[int]:
    """DiT split depths to search: half, three quarters and all of the blocks (quick: all).

    Examples:
        >>> dit_depths(8, quick=False), dit_depths(3, quick=False), dit_depths(8, quick=True)
        ([4, 6, 8], [1, 2, 3], [8])
    """
    return [blocks] if quick else sorted({max(1, blocks // 2), max(1, 3 * blocks // 4), blocks})


class DemoEvaluator:
    """Samples a demo model with a candidate; inputs are ``(labels, seeds)``.

    MACs per image come from the counted MACs of one encoder and one decoder call at the
    candidate's depth (guidance included) times the calls the run made.
    """

    policies = ("hold", "linear", "polynomial(2)", "lookahead", "lookahead-accept")

    def __init__(self, model: str, sampler: str, steps: int, device: str = "cpu") -> None:
        from ..demo import load

        self.model = model
        self.name = f"{model}-{sampler}"
        self.demo = load(model, device=device)
        self.scheduler = sampler
        self.steps = steps
        self.guidance_scale = GUIDANCE
        self.depth_option = "encoder_blocks" if model == "dit-digits" else "decoder_start"
        self.default_depth = (len(self.demo.transformer.transformer_blocks)  # what generate and bench use
                              if model == "dit-digits" else 0)
        self.unit_macs: dict[int, tuple[int, int]] = {}
        self.evaluations = 0

    def depths(self, quick: bool) -> list[Any]:
        """Split depths to search (quick: the model's default only): DiT blocks in the encoder; for
        the UNet the decoder from up block 0 or 1, and shallow branches of 1 and 2 layers."""
        if self.model == "dit-digits":
            return dit_depths(len(self.demo.transformer.transformer_blocks), quick)
        return [0] if quick else [0, 1, branch(1), branch(2)]

    def inputs(self, count: int, *, held_out: bool) -> tuple[list[int], list[int]]:
        """Calibration: labels cycling 0-9, seeds ``0..count-1``; held out: labels shifted by 3,
        seeds from 10,000."""
        if held_out:
            return [(i + 3) % 10 for i in range(count)], list(range(10_000, 10_000 + count))
        return [i % 10 for i in range(count)], list(range(count))

    def macs(self, candidate: Candidate, encoder_calls: int, decoder_calls: int, refresh_calls: int = 0) -> int:
        if candidate.depth not in self.unit_macs:
            from ..flops import encoder_share
            from ..guidance import ClassifierFreeGuidance

            split = self.demo.split(**split_options(candidate.depth, self.depth_option))
            guided = ClassifierFreeGuidance(split, GUIDANCE, {"class_labels": torch.tensor([self.demo.null_label])})
            x = torch.zeros(1, self.demo.transformer.config.in_channels, self.demo.resolution, self.demo.resolution)
            with torch.no_grad():
                share = encoder_share(guided, x, 500, class_labels=torch.tensor([0]))
            self.unit_macs[candidate.depth] = (share.encoder_flops // 2, share.decoder_flops // 2,
                                               share.refresh_flops // 2)
        e, d, r = self.unit_macs[candidate.depth]
        return encoder_calls * e + decoder_calls * d + refresh_calls * r

    def fit(self, keys: Sequence[int], depth: Any, calibration: tuple[list[int], list[int]],
            held_out: tuple[list[int], list[int]]) -> Any:
        """Blend weights fitted for ``keys`` at ``depth`` on the calibration inputs, each candidate
        scored on the held-out ones (:func:`tiec.calibrate.fit.fit_demo`)."""
        from .fit import fit_demo

        self.evaluations += 1
        return fit_demo(self.demo, self.scheduler, self.steps, list(keys), depth=depth,
                        calibration_inputs=calibration, held_out_inputs=held_out)

    @torch.no_grad()
    def images(self, candidate: Candidate, inputs: tuple[list[int], list[int]],
               steps: Optional[int] = None) -> tuple[torch.Tensor, int]:
        """``(pixels in [0, 1], MACs per image)`` of the candidate on ``inputs``."""
        from ..demo.sampling import sample_digits, to_unit

        self.evaluations += 1
        labels, seeds = inputs
        split = split_options(candidate.depth, self.depth_option)
        result = sample_digits(self.demo, labels, steps=steps or self.steps, scheduler=self.scheduler,
                               keys=list(candidate.keys), policy=candidate.policy, coordinate=candidate.coordinate,
                               encoder_blocks=split.get(self.depth_option), branch_depth=split.get("branch_depth"),
                               guidance_scale=GUIDANCE, seeds=seeds)
        return to_unit(result.sample).cpu(), self.macs(candidate, result.encoder_calls, result.decoder_calls,
                                                       result.refresh_calls)


class PipelineEvaluator:
    """Runs a diffusers pipeline from a local folder (through ``tiec generate``'s job) with a
    candidate; inputs are image indices (image ``i``: prompt or label ``i``, cycling, and the noise
    of seed ``i``).

    MACs per image are those of the whole pipeline call (text encoder and VAE included), counted
    with ``FlopCounterMode`` on one image: every step a key, and step 0 alone a key, at each depth
    and step count; a candidate's MACs follow from its encoder calls, since blending costs no
    counted operation.
    """

    policies = ("hold", "linear", "polynomial(2)")

    def __init__(self, path: Path, sampler: Optional[str], steps: int, *, prompts: Sequence[str] = (),
                 negative_prompt: Optional[str] = None, class_labels: Optional[str] = None,
                 guidance_scale: Optional[float] = None, device: str = "cpu", dtype: str = "float32",
                 batch_size: int = 4, progress: bool = True) -> None:
        from ..generate.jobs import PipelineJob

        self.job = PipelineJob(path, class_labels=class_labels, num_images=1, prompt=list(prompts) or None,
                               negative_prompt=negative_prompt, steps=steps, scheduler=sampler, policy="linear",
                               guidance_scale=guidance_scale, encoder_blocks=None, decoder_start=None,
                               parallel_decode=False, seed=0, device=device, dtype=dtype, progress=progress)
        self.model = str(path)
        self.name = f"{path.name}-{sampler or 'own'}"
        self.steps = steps
        self.guidance_scale = self.job.settings["guidance_scale"]
        self.depth_option = next(iter(self.job.depth))
        self.default_depth = (max(len(self.job.pipe.transformer.transformer_blocks) // 2, 1)  # tiec's defaults
                              if self.depth_option == "encoder_blocks" else 0)
        self.batch_size = batch_size
        self.counted: dict[tuple[int, int], tuple[int, int, int, int]] = {}
        self.evaluations = 0

    def depths(self, quick: bool) -> list[Any]:
        """DiT: half, three quarters and all of the blocks in the encoder (quick: all); UNet: the
        decoder from up block 0 or 1, and the shallow branch's finest cut and outermost block
        (quick: 0)."""
        pipe = self.job.pipe
        if self.depth_option == "encoder_blocks":
            return dit_depths(len(pipe.transformer.transformer_blocks), quick)
        if quick:
            return [0]
        outer = pipe.unet.down_blocks[0]
        return [*([0, 1] if len(pipe.unet.up_blocks) >= 2 else [0]), branch(1), branch(1 + len(outer.resnets))]

    def inputs(self, count: int, *, held_out: bool) -> list[int]:
        return list(range(10_000, 10_000 + count)) if held_out else list(range(count))

    def _run(self, candidate: Candidate, indices: list[int], steps: int) -> Any:
        return self.job(list(candidate.keys), indices, progress=False, steps=steps, policy=candidate.policy,
                        coordinate=candidate.coordinate, **split_options(candidate.depth, self.depth_option))

    def macs(self, candidate: Candidate, steps: int, encoder_calls: int) -> int:
        if (candidate.depth, steps) not in self.counted:
            from ..flops import count_flops

            every, first = (replace(candidate, keys=keys, policy="hold") for keys in (tuple(range(steps)), (0,)))
            flops_all, images_all = count_flops(self._run, every, [0], steps)
            flops_one, images_one = count_flops(self._run, first, [0], steps)
            self.counted[(candidate.depth, steps)] = (flops_all // 2, images_all.encoder_calls,
                                                      flops_one // 2, images_one.encoder_calls)
        macs_all, calls_all, macs_one, calls_one = self.counted[(candidate.depth, steps)]
        per_call = (macs_all - macs_one) // max(1, calls_all - calls_one)
        return macs_all - (calls_all - encoder_calls) * per_call

    @torch.no_grad()
    def images(self, candidate: Candidate, inputs: list[int], steps: Optional[int] = None) -> tuple[torch.Tensor, int]:
        """``(pixels in [0, 1], MACs per image)`` of the candidate on ``inputs``."""
        self.evaluations += 1
        steps = steps or self.steps
        parts = [self._run(candidate, inputs[i:i + self.batch_size], steps)
                 for i in range(0, len(inputs), self.batch_size)]
        calls = parts[0].encoder_calls  # the same schedule in every batch
        return torch.cat([part.pixels for part in parts]), self.macs(candidate, steps, calls)
