"""A reference DiT (Peebles & Xie, 2023) on timm layers, and its encoder/decoder split.

The module tree and parameter names match the official ``facebookresearch/DiT`` checkpoints
(``x_embedder``, ``t_embedder``, ``y_embedder``, ``pos_embed``, ``blocks.N.{attn,mlp,adaLN_modulation}``,
``final_layer``), so ``DiT-XL-2-256x256.pt`` loads with :func:`load_reference_dit`, which reads plain
state dicts only (``torch.load(weights_only=True)`` or safetensors) and never unpickles code.

Notation: ``B`` batch, ``N`` tokens ``(H/p)*(W/p)``, ``D`` hidden size, ``p`` patch size.
"""

from __future__ import annotations

import math
import re
import warnings
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


#: The official sizes (facebookresearch/DiT ``models.py``): XL, L, B, S at patch sizes 2, 4, 8.
DIT_CONFIGS = {
    f"DiT-{size}/{patch}": DiTConfig(depth=depth, hidden_size=hidden, patch_size=patch, num_heads=heads)
    for size, (depth, hidden, heads) in {"XL": (28, 1152, 16), "L": (24, 1024, 16), "B": (12, 768, 12),
                                         "S": (12, 384, 6)}.items()
    for patch in (2, 4, 8)
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
        #: which weights :func:`load_reference_dit` took: "ema", "model" or "state dict" (None: built here)
        self.checkpoint_weights: Optional[str] = None
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


def _read_state(path: Path) -> dict:
    """A checkpoint's tensors: safetensors, or ``torch.load(weights_only=True)`` (never a full unpickle)."""
    if not path.is_file():
        raise TiecValueError(f"checkpoint {str(path)!r} does not exist (or is not a file)")
    if path.suffix == ".safetensors":
        return require("safetensors.torch", "dit").load_file(str(path))
    try:
        with warnings.catch_warnings():  # torch notes the pickle protocol before it refuses or loads
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # UnpicklingError and friends: never fall back to a full unpickle
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(error))  # torch colours its message for terminals
        detail = re.search(r"WeightsUnpickler error:\s*([^\n]+)", text)  # what torch refused: "Unsupported global: ..."
        reason = detail.group(1).split(". ")[0].strip().rstrip(".") if detail else " ".join(text.split())[:200]
        raise TiecValueError(
            f"refusing to load {path}: torch.load(weights_only=True) does not accept it ({type(error).__name__}: "
            f"{reason}); it is not a plain state dict: re-save the weights as a state dict or safetensors"
        ) from None


def _shape_of(state: dict) -> dict[str, Any]:
    """What a state dict says about its DiT: depth, hidden size, patch size, input size, learn_sigma."""
    blocks = {k.split(".")[1] for k in state if k.startswith("blocks.")}
    found: dict[str, Any] = {"depth": len(blocks)} if blocks else {}
    weight = state.get("x_embedder.proj.weight")
    if isinstance(weight, torch.Tensor) and weight.dim() == 4:
        found.update(hidden_size=weight.shape[0], in_channels=weight.shape[1], patch_size=weight.shape[2])
        final = state.get("final_layer.linear.weight")
        if isinstance(final, torch.Tensor):
            found["learn_sigma"] = final.shape[0] == 2 * weight.shape[1] * weight.shape[2] ** 2
    pos = state.get("pos_embed")
    if isinstance(pos, torch.Tensor) and "patch_size" in found:
        found["input_size"] = round(math.sqrt(pos.shape[1])) * found["patch_size"]
    return found


def load_reference_dit(path: Union[str, Path], config: Union[DiTConfig, str] = "DiT-XL/2",
                       **overrides: Any) -> ReferenceDiT:
    """Build a :class:`ReferenceDiT` and load a plain state dict into it (strictly).

    ``.safetensors`` files are read with safetensors; anything else with
    ``torch.load(weights_only=True)``, which refuses pickles that carry code. A training
    checkpoint (``{"model", "ema", "opt", ...}``) gives its EMA weights, as the official sampler
    takes them, else its ``"model"``; ``model.checkpoint_weights`` says which (``"ema"``,
    ``"model"`` or ``"state dict"``).

    Args:
        path: the checkpoint (e.g. the official ``DiT-XL-2-256x256.pt``).
        config: a :class:`DiTConfig` or a name in :data:`DIT_CONFIGS`.
        overrides: config fields to change (``input_size=64`` for 512x512 checkpoints, ...).

    Raises:
        ValueError: a missing file, a pickle that is not a plain state dict (naming what it holds),
            or a checkpoint that does not fit the config, in one line naming what differs.
    """
    if isinstance(config, str):
        if config not in DIT_CONFIGS:
            raise TiecValueError(f"config {config!r} is unknown; expected one of {sorted(DIT_CONFIGS)}")
        name, config = config, DIT_CONFIGS[config]
    else:
        name = "the config"
    config = DiTConfig(**{**asdict(config), **overrides})
    path = Path(path)
    state = _read_state(path)
    taken = "state dict"
    if isinstance(state, dict):
        for key in ("ema", "model"):  # training checkpoints: the official sampler takes "ema"
            if isinstance(state.get(key), dict):
                state, taken = state[key], key
                break
    if not isinstance(state, dict):
        raise TiecTypeError(f"{path} holds a {type(state).__name__}, expected a state dict")
    expected = {"depth": config.depth, "hidden_size": config.hidden_size, "in_channels": config.in_channels,
                "patch_size": config.patch_size, "input_size": config.input_size, "learn_sigma": config.learn_sigma}
    found = _shape_of(state)
    differ = [f"{k} {found[k]} (config: {expected[k]})" for k in expected if k in found and found[k] != expected[k]]
    if differ:
        fits = [n for n, c in DIT_CONFIGS.items() if (c.depth, c.hidden_size, c.patch_size) ==
                (found.get("depth"), found.get("hidden_size"), found.get("patch_size"))]
        hint = f"; it looks like {fits[0]}" if fits else ""
        raise TiecValueError(f"{path} does not fit {name}: its {', '.join(differ)}{hint} (pass that config, or "
                             "input_size=/learn_sigma= overrides)")
    model = ReferenceDiT(config)
    missing, unexpected = (sorted(set(model.state_dict()) - set(state)), sorted(set(state) - set(model.state_dict())))
    if missing or unexpected:
        parts = [f"{len(keys)} {what} (first: {keys[0]})" for what, keys in (("missing", missing),
                                                                             ("unexpected", unexpected)) if keys]
        raise TiecValueError(f"{path} does not fit {name}: {', '.join(parts)} parameters; is it a DiT checkpoint?")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as error:  # a shape the checks above do not see (mlp_ratio, num_classes, ...)
        first = next((line.strip() for line in str(error).splitlines() if "size mismatch" in line), str(error))
        raise TiecValueError(f"{path} does not fit {name}: {first[:300]}") from None
    model.checkpoint_weights = taken
    return model.eval()
