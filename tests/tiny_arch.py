"""A tiny stand-in for the full-size architectures of ``tiec bench --speed`` (same code path)."""

import torch
from diffusers import DiTTransformer2DModel, UNet2DConditionModel

from tiec.adapters.diffusers import DiTSplit, UNet2DConditionSplit
from tiec.bench.grid import split_options


def tiny_full_size(arch):
    torch.manual_seed(0)
    if arch == "sd15-unet":
        unet = UNet2DConditionModel(
            sample_size=32, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4).eval()

        def split(depth):
            return UNet2DConditionSplit(unet, **split_options(depth or 0, "decoder_start"))

        text = torch.randn(1, 3, 8, generator=torch.Generator().manual_seed(1))
        return unet, split, {"encoder_hidden_states": text}, {"encoder_hidden_states": -text}, None, "tiny UNet"
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=3, sample_size=32, patch_size=4, num_embeds_ada_norm=1000).eval()
    depths = {None: 3, 18: 2}  # the full stack, and a stand-in for FasterDiffusion's 18 of 28 blocks
    return (dit, lambda depth: DiTSplit(dit, encoder_blocks=depths[depth]), {"class_labels": torch.tensor([207])},
            {"class_labels": torch.tensor([1000])}, lambda out: out[:, :4], "tiny DiT")
