"""A tiny stand-in for the full-size architectures of ``tiec bench --speed`` (same code path)."""

import torch
from diffusers import DiTTransformer2DModel

from tiec.adapters.diffusers import DiTSplit


def tiny_full_size(arch):
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=3, sample_size=32, patch_size=4, num_embeds_ada_norm=1000).eval()
    depths = {None: 3, 18: 2}  # the full stack, and a stand-in for FasterDiffusion's 18 of 28 blocks
    return (dit, lambda depth: DiTSplit(dit, encoder_blocks=depths[depth]), {"class_labels": torch.tensor([207])},
            {"class_labels": torch.tensor([1000])}, lambda out: out[:, :4], "tiny DiT")
