"""Small demo models trained here on scikit-learn's digits, shipped inside the package.

``load("dit-digits")`` returns a class-conditional DiT (diffusers' ``DiTTransformer2DModel``,
2.8 M parameters, 16x16 single-channel images) with its scheduler; ``load("digits-classifier")``
the small CNN that scores samples. Needs the ``demo`` extra (diffusers, safetensors).

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

__all__ = ["DemoDiT", "load", "MODELS", "WEIGHTS"]

WEIGHTS = Path(__file__).resolve().parent / "weights"
MODELS = ("dit-digits", "digits-classifier")


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
        """A diffusers scheduler of ``kind`` (``ddim``, ``dpm``, ``euler``, ``heun``, ``unipc``, ``ddpm``)."""
        import diffusers

        classes = {"ddim": diffusers.DDIMScheduler, "dpm": diffusers.DPMSolverMultistepScheduler,
                   "euler": diffusers.EulerDiscreteScheduler, "heun": diffusers.HeunDiscreteScheduler,
                   "unipc": diffusers.UniPCMultistepScheduler, "ddpm": diffusers.DDPMScheduler}
        if kind not in classes:
            raise TiecValueError(f"scheduler {kind!r} is unknown; expected one of {sorted(classes)}")
        extra = {"clip_sample": False} if kind in ("ddim", "ddpm") else {}
        return classes[kind](**self.scheduler_config, **extra)


def _require_weights(name: str) -> Path:
    path = WEIGHTS / name
    if not path.is_dir():
        raise TiecValueError(
            f"the weights of demo model {name!r} are not in this installation ({path}); train them with "
            f"python -m tiec.demo.train {name} --out {path}"
        )
    return path


def load(name: str, *, device: Union[str, torch.device] = "cpu") -> Any:
    """Load a demo model by name: ``"dit-digits"`` (a :class:`DemoDiT`) or ``"digits-classifier"``.

    Examples:
        >>> from tiec.demo import load
        >>> classifier = load("digits-classifier")
        >>> classifier(torch.zeros(2, 1, 16, 16)).shape
        torch.Size([2, 10])
    """
    if name not in MODELS:
        raise TiecValueError(f"demo model {name!r} is unknown; expected one of {list(MODELS)}")
    path = _require_weights(name)
    if name == "digits-classifier":
        from safetensors.torch import load_file

        from .classifier import DigitClassifier

        model = DigitClassifier()
        model.load_state_dict(load_file(str(path / "model.safetensors")))
        return model.eval().to(device)
    from diffusers import DiTTransformer2DModel

    transformer = DiTTransformer2DModel.from_pretrained(path, torch_dtype=torch.float32).eval().to(device)
    scheduler_config = json.loads((path / "scheduler_config.json").read_text())
    return DemoDiT(transformer, scheduler_config)
