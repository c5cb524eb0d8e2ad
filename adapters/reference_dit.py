"""A reference DiT (Peebles & Xie, 2023) on timm layers, and its encoder/decoder split.

The module tree and parameter names match the official ``facebookresearch/DiT`` checkpoints
(``x_embedder``, ``t_embedder``, ``y_embedder``, ``pos_embed``, ``blocks.N.{attn,mlp,adaLN_modulation}``,
``final_layer``), so ``DiT-XL-2-256x256.pt`` loads with :func:`load_reference_dit`, which reads plain
state dicts only (``torch.load(weights_only=True)`` or safetensors) and never unpickles code.

Notation: ``B`` batch, ``N`` tokens ``(H/p)*(W/p)``, ``D`` hidden size, ``p`` patch size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from tiec._errors import TiecTypeError, TiecValueError
from tiec.blend import Features

from ._lazy import encoder_depth, require

__all__ = ["DiTConfig", "ReferenceDiT", "ReferenceDiTSplit", "DIT_CONFIGS", "load_reference_dit"]


@dataclass(frozen=True)
class DiTConfig:
    """Hyper-parameters of a DiT; the defaults are DiT-XL/2 at 256x256 (32x32 latents)."""

    input_size: int = 32
    patch_size: int = 2
    in_channels: int = 4
    hidden_size: int = 1152
    depth: int = 28
    num_heads: int = 16
    mlp_ratio: float = 4.0
    class_dropout_prob: float = 0.1
    num_classes: int = 1000
    learn_sigma: bool = True

    @property
    def out_channels(self) -> int:
        return self.in_channels * 2 if self.learn_sigma else self.in_channels


DIT_CONFIGS = {
    "DiT-XL/2": DiTConfig(depth=28, hidden_size=1152, patch_size=2, num_heads=16),
    "DiT-L/2": DiTConfig(depth=24, hidden_size=1024, patch_size=2, num_heads=16),
    "DiT-B/2": DiTConfig(depth=12, hidden_size=768, patch_size=2, num_heads=12),
    "DiT-S/2": DiTConfig(depth=12, hidden_size=384, patch_size=2, num_heads=6),
}


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale.unsqueeze(1)) + shift.unsqueeze(1)


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (possibly fractional) timesteps: ``(B,) -> (B, dim)``."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t[:, None].float() * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        embedding = torch.cat([embedding, torch.zeros_like(embedding[:, :1])], dim=-1)
    return embedding


def sincos_pos_embed(dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sine-cosine position embedding, ``(grid*grid, dim)``, computed in float64."""
    coords = torch.arange(grid, dtype=torch.float64)
    grid_w, grid_h = torch.meshgrid(coords, coords, indexing="xy")  # w varies fastest

    def axis(values: torch.Tensor, d: int) -> torch.Tensor:
        omega = 1.0 / 10000 ** (torch.arange(d // 2, dtype=torch.float64) / (d / 2.0))
        out = values.reshape(-1)[:, None] * omega[None]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)

    return torch.cat([axis(grid_w, dim // 2), axis(grid_h, dim // 2)], dim=1).float()


class TimestepEmbedder(nn.Module):
    def __init__(self, hidden_size: int, frequency_embedding_size: int = 256) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(frequency_embedding_size, hidden_size), nn.SiLU(),
                                 nn.Linear(hidden_size, hidden_size))
        self.frequency_embedding_size = frequency_embedding_size

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequency_embedding_size))  # (B, D)


class LabelEmbedder(nn.Module):
    """Class embeddings; with dropout the extra last row is the null label used for guidance."""

    def __init__(self, num_classes: int, hidden_size: int, dropout_prob: float) -> None:
        super().__init__()
        self.embedding_table = nn.Embedding(num_classes + int(dropout_prob > 0), hidden_size)
        self.num_classes = num_classes
        self.dropout_prob = dropout_prob

    def forward(self, labels: torch.Tensor) -> torch.Tensor:
        if self.training and self.dropout_prob > 0:
            drop = torch.rand(labels.shape[0], device=labels.device) < self.dropout_prob
            labels = torch.where(drop, self.num_classes, labels)
        return self.embedding_table(labels)  # (B, D)


class DiTBlock(nn.Module):
    def __init__(self, hidden_size: int, num_heads: int, mlp_ratio: float) -> None:
        super().__init__()
        layers = require("timm.layers", "dit")
        vit = require("timm.models.vision_transformer", "dit")
        self.norm1 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.attn = vit.Attention(hidden_size, num_heads=num_heads, qkv_bias=True)
        self.norm2 = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.mlp = layers.Mlp(hidden_size, int(hidden_size * mlp_ratio),
                              act_layer=lambda: nn.GELU(approximate="tanh"))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 6 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = self.adaLN_modulation(c).chunk(6, dim=1)
        x = x + gate_msa.unsqueeze(1) * self.attn(modulate(self.norm1(x), shift_msa, scale_msa))  # (B, N, D)
        return x + gate_mlp.unsqueeze(1) * self.mlp(modulate(self.norm2(x), shift_mlp, scale_mlp))


class FinalLayer(nn.Module):
    def __init__(self, hidden_size: int, patch_size: int, out_channels: int) -> None:
        super().__init__()
        self.norm_final = nn.LayerNorm(hidden_size, elementwise_affine=False, eps=1e-6)
        self.linear = nn.Linear(hidden_size, patch_size * patch_size * out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(hidden_size, 2 * hidden_size))

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(c).chunk(2, dim=1)
        return self.linear(modulate(self.norm_final(x), shift, scale))  # (B, N, p*p*C_out)


class ReferenceDiT(nn.Module):
    """Class-conditional DiT with the official parameter names.

    ``forward(x, t, y)``: ``x`` ``(B, C, H, W)`` latents, ``t`` ``(B,)`` timesteps (0-999, fractional
    allowed), ``y`` ``(B,)`` class labels (``num_classes`` is the null label). Returns
    ``(B, C_out, H, W)``: eps, followed by the learned variance when ``learn_sigma``.

    Examples:
        >>> import torch
        >>> cfg = DiTConfig(input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10)
        >>> model = ReferenceDiT(cfg).eval()
        >>> model(torch.randn(2, 4, 8, 8), torch.tensor([10, 500]), torch.tensor([1, 10])).shape
        torch.Size([2, 8, 8, 8])
    """

    def __init__(self, config: DiTConfig = DiTConfig()) -> None:
        super().__init__()
        layers = require("timm.layers", "dit")
        self.config = config
        self.in_channels = config.in_channels
        self.out_channels = config.out_channels
        self.patch_size = config.patch_size
        self.num_classes = config.num_classes
        self.x_embedder = layers.PatchEmbed(config.input_size, config.patch_size, config.in_channels,
                                            config.hidden_size, bias=True)
        self.t_embedder = TimestepEmbedder(config.hidden_size)
        self.y_embedder = LabelEmbedder(config.num_classes, config.hidden_size, config.class_dropout_prob)
        grid = config.input_size // config.patch_size
        self.pos_embed = nn.Parameter(sincos_pos_embed(config.hidden_size, grid)[None], requires_grad=False)
        self.blocks = nn.ModuleList(
            DiTBlock(config.hidden_size, config.num_heads, config.mlp_ratio) for _ in range(config.depth)
        )
        self.final_layer = FinalLayer(config.hidden_size, config.patch_size, config.out_channels)

    @property
    def null_label(self) -> int:
        """The class label whose embedding is the unconditional one (classifier-free guidance)."""
        if self.config.class_dropout_prob <= 0:
            raise TiecValueError("this DiT was built with class_dropout_prob=0 and has no null label")
        return self.num_classes

    def condition(self, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.t_embedder(t) + self.y_embedder(y)  # (B, D)

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        p, c = self.patch_size, self.out_channels
        side = int(x.shape[1] ** 0.5)
        x = x.reshape(x.shape[0], side, side, p, p, c)
        x = torch.einsum("nhwpqc->nchpwq", x)
        return x.reshape(x.shape[0], c, side * p, side * p)  # (B, C_out, H, W)

    def forward(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = self.x_embedder(x) + self.pos_embed  # (B, N, D)
        c = self.condition(t, y)
        for block in self.blocks:
            x = block(x, c)
        return self.unpatchify(self.final_layer(x, c))


def _batch_times(t: Any, batch: int, device: torch.device) -> torch.Tensor:
    t = torch.as_tensor(t, device=device)
    return t.expand(batch) if t.dim() == 0 else t


class ReferenceDiTSplit:
    """Split a :class:`ReferenceDiT` after block ``encoder_blocks`` (1 to depth; ``None``: half).

    ``encode(x, t, y=labels)`` runs the patch embedding and the first blocks; ``decode`` the rest and
    the final layer, with the conditioning of the current ``t``. Features: ``(tokens,)``, ``(B, N, D)``.

    Examples:
        >>> import torch
        >>> model = ReferenceDiT(DiTConfig(input_size=8, hidden_size=32, depth=2, num_heads=2)).eval()
        >>> split = ReferenceDiTSplit(model, encoder_blocks=1)
        >>> x, t, y = torch.randn(1, 4, 8, 8), torch.tensor([250]), torch.tensor([3])
        >>> with torch.no_grad():
        ...     torch.equal(split.decode(split.encode(x, t, y=y), t, y=y), model(x, t, y))
        True
    """

    def __init__(self, model: ReferenceDiT, *, encoder_blocks: Optional[int] = None) -> None:
        if not isinstance(model, ReferenceDiT):
            raise TiecTypeError(f"model must be a ReferenceDiT, got {type(model).__name__}")
        self.model = model
        self.encoder_blocks = encoder_depth(encoder_blocks, len(model.blocks))

    def __repr__(self) -> str:
        return f"ReferenceDiTSplit(encoder_blocks={self.encoder_blocks} of {len(self.model.blocks)})"

    def encode(self, x: torch.Tensor, t: Any, *, y: torch.Tensor) -> Features:
        model = self.model
        c = model.condition(_batch_times(t, x.shape[0], x.device), y)
        h = model.x_embedder(x) + model.pos_embed  # (B, N, D)
        for block in model.blocks[: self.encoder_blocks]:
            h = block(h, c)
        return (h,)

    def decode(self, features: Features, t: Any, *, y: torch.Tensor) -> torch.Tensor:
        model = self.model
        (h,) = features
        c = model.condition(_batch_times(t, h.shape[0], h.device), y)
        for block in model.blocks[self.encoder_blocks :]:
            h = block(h, c)
        return model.unpatchify(model.final_layer(h, c))


def load_reference_dit(path: Union[str, Path], config: Union[DiTConfig, str] = "DiT-XL/2",
                       **overrides: Any) -> ReferenceDiT:
    """Build a :class:`ReferenceDiT` and load a plain state dict into it (strictly).

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``, which refuses pickles that carry code.

    Args:
        path: the checkpoint (e.g. the official ``DiT-XL-2-256x256.pt``).
        config: a :class:`DiTConfig` or a name in :data:`DIT_CONFIGS`.
        overrides: config fields to change (``input_size=64`` for 512x512 checkpoints, ...).
    """
    if isinstance(config, str):
        if config not in DIT_CONFIGS:
            raise TiecValueError(f"config {config!r} is unknown; expected one of {sorted(DIT_CONFIGS)}")
        config = DIT_CONFIGS[config]
    config = DiTConfig(**{**asdict(config), **overrides})
    path = Path(path)
    if path.suffix == ".safetensors":
        state = require("safetensors.torch", "dit").load_file(str(path))
    else:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as error:  # UnpicklingError and friends: never fall back to a full unpickle
            raise TiecValueError(
                f"refusing to load {path}: it is not a plain state dict that torch.load(weights_only=True) "
                f"accepts ({type(error).__name__}: {str(error).splitlines()[0]}); re-save the weights as "
                "a state dict or safetensors"
            ) from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]  # training checkpoints keep the weights under "model"
    if not isinstance(state, dict):
        raise TiecTypeError(f"{path} holds a {type(state).__name__}, expected a state dict")
    model = ReferenceDiT(config)
    model.load_state_dict(state, strict=True)
    return model.eval()
