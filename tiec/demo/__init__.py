"""Small demo models trained here on scikit-learn's digits, shipped inside the package.

``load("dit-digits")`` returns a class-conditional DiT (diffusers' ``DiTTransformer2DModel``,
2.8 M parameters, 16x16 single-channel images) with its scheduler; ``load("unet-digits")`` a
class-conditional ``UNet2DConditionModel`` with cross-attention on learned class tokens (when its
weights are in this installation); ``load("digits-classifier")`` the small CNN that scores
samples. Needs the ``demo`` extra (diffusers, safetensors).

Training commands and measured quality: docs/demo-models.md.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch

from .._errors import TiecValueError
from .data import NUM_CLASSES, RESOLUTION

__all__ = ["DemoDiT", "DemoUNet", "ClassTokenSplit", "load", "calibrated_config", "stochastic_result", "MODELS",
           "WEIGHTS"]

WEIGHTS = Path(__file__).resolve().parent / "weights"
MODELS = ("dit-digits", "unet-digits", "digits-classifier")


@dataclass
class DemoDiT:
    """The demo DiT, its training schedule and helpers to sample it with tiec.

    Attributes:
        transformer: the ``DiTTransformer2DModel`` (eval mode, float32).
        scheduler_config: the DDPM training schedule (diffusers scheduler config keys).
        null_label: the class label of the unconditional embedding (classifier-free guidance).
    """

    transformer: Any
    scheduler_config: dict
    num_classes: int = NUM_CLASSES
    resolution: int = RESOLUTION

    @property
    def null_label(self) -> int:
        return self.num_classes

    def split(self, encoder_blocks: Optional[int] = None) -> Any:
        """A :class:`tiec.adapters.diffusers.DiTSplit`; ``None`` caches the whole stack."""
        from ..adapters.diffusers import DiTSplit

        depth = len(self.transformer.transformer_blocks)
        return DiTSplit(self.transformer, encoder_blocks=depth if encoder_blocks is None else encoder_blocks)

    def scheduler(self, kind: str = "ddim") -> Any:
        """A diffusers scheduler of ``kind`` (a name in :data:`tiec.adapters.diffusers.SCHEDULERS`)."""
        from ..adapters.diffusers import make_scheduler

        extra = {"clip_sample": False} if kind in ("ddim", "ddpm") else {}
        return make_scheduler(kind, {**self.scheduler_config, **extra})


class ClassTokenSplit:
    """A UNet split conditioned on class labels through one learned cross-attention token each."""

    def __init__(self, split: Any, tokens: torch.nn.Embedding) -> None:
        self.split = split
        self.tokens = tokens

    def _context(self, class_labels: torch.Tensor) -> torch.Tensor:
        return self.tokens(class_labels)[:, None]  # (B, 1, D)

    def encode(self, x: torch.Tensor, t: Any, *, class_labels: torch.Tensor) -> Any:
        return self.split.encode(x, t, encoder_hidden_states=self._context(class_labels))

    def decode(self, features: Any, t: Any, *, class_labels: torch.Tensor) -> torch.Tensor:
        return self.split.decode(features, t, encoder_hidden_states=self._context(class_labels))

    @property
    def fresh_features(self) -> int:
        return self.split.fresh_features

    def refresh(self, x: torch.Tensor, t: Any, *, class_labels: torch.Tensor) -> Any:
        return self.split.refresh(x, t, encoder_hidden_states=self._context(class_labels))

    def __repr__(self) -> str:
        return f"ClassTokenSplit({self.split!r})"


@dataclass
class DemoUNet(DemoDiT):
    """The demo UNet: ``transformer`` holds the ``UNet2DConditionModel``; ``tokens`` the class tokens."""

    tokens: Optional[torch.nn.Embedding] = None

    def split(self, decoder_start: Optional[int] = None, branch_depth: Optional[int] = None  # type: ignore[override]
              ) -> Any:
        """A class-label split over :class:`tiec.adapters.diffusers.UNet2DConditionSplit`: a
        decoder from up block ``decoder_start``, or a shallow branch of ``branch_depth`` layers."""
        from ..adapters.diffusers import UNet2DConditionSplit

        assert self.tokens is not None
        split = UNet2DConditionSplit(self.transformer, decoder_start=decoder_start or 0, branch_depth=branch_depth)
        return ClassTokenSplit(split, self.tokens)


def calibrated_config(name: str, scheduler: str = "ddim", steps: int = 50) -> Optional[Path]:
    """The shipped configuration for a demo model, sampler and step count
    (``weights/<name>/calibrated-<scheduler>.json``: ``tiec calibrate``'s pick for DDIM 50,
    weights fitted by ``tiec fit`` for DPM-Solver++ 20), or ``None`` when none was shipped for them.

    ``tiec generate`` uses it on a demo model when no caching option is given; its
    ``provenance`` holds the command that produced it and the PSNRs it reached.

    Examples:
        >>> calibrated_config("dit-digits").name
        'calibrated-ddim.json'
        >>> calibrated_config("dit-digits", "ddim", 20) is None  # calibrated for 50 steps only
        True
    """
    path = WEIGHTS / name / f"calibrated-{scheduler}.json"
    if not path.is_file():
        return None
    from ..config import load_config

    return path if load_config(path).steps == steps else None


def stochastic_result(name: str, scheduler: str) -> list[dict]:
    """What ``tiec bench --study stochastic`` measured for a demo model with a stochastic scheduler
    (``weights/<name>/<name>-stochastic.json``): one row per step count, key set and policy, with
    the PSNR to every step a key; ``[]`` when nothing was measured.

    Examples:
        >>> stochastic_result("dit-digits", "ddim")  # a deterministic scheduler: nothing to measure
        []
    """
    import json

    try:
        rows = json.loads((WEIGHTS / name / f"{name}-stochastic.json").read_text())["rows"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [row for row in rows if row.get("scheduler") == scheduler]


def _require_weights(name: str) -> Path:
    path = WEIGHTS / name
    if not path.is_dir():
        raise TiecValueError(
            f"the weights of demo model {name!r} are not in this installation ({path}); train them with "
            f"python -m tiec.demo.train {name} --out {path}"
        )
    return path


def load(name: str, *, device: Union[str, torch.device] = "cpu", dtype: torch.dtype = torch.float32,
         path: Optional[Path] = None) -> Any:
    """Load a demo model by name: ``"dit-digits"`` (:class:`DemoDiT`), ``"unet-digits"``
    (:class:`DemoUNet`) or ``"digits-classifier"``; ``path`` overrides the shipped weights' folder.
    ``dtype`` applies to the diffusion models (the classifier stays float32).

    Examples:
        >>> from tiec.demo import load
        >>> classifier = load("digits-classifier")
        >>> classifier(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """
    if name not in MODELS:
        raise TiecValueError(f"demo model {name!r} is unknown; expected one of {list(MODELS)}")
    path = _require_weights(name) if path is None else Path(path)
    if name == "digits-classifier":
        from safetensors.torch import load_file

        from .classifier import DigitClassifier

        model = DigitClassifier()
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval().to(device)
    scheduler_config = json.loads((path / "scheduler_config.json").read_text())
    if name == "unet-digits":
        from diffusers import UNet2DConditionModel
        from safetensors.torch import load_file

        unet = UNet2DConditionModel.from_pretrained(path, torch_dtype=dtype).eval().to(device)
        weight = load_file(str(path / "class_tokens.safetensors"))["weight"]
        tokens = torch.nn.Embedding.from_pretrained(weight.to(dtype), freeze=True).to(device)
        return DemoUNet(unet, scheduler_config, tokens=tokens)
    from diffusers import DiTTransformer2DModel

    transformer = DiTTransformer2DModel.from_pretrained(path, torch_dtype=dtype).eval().to(device)
    return DemoDiT(transformer, scheduler_config)
