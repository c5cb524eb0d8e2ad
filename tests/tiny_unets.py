"""Tiny ``UNet2DConditionModel`` configs that exercise each model family's code path.

Each builder returns ``(unet, make_inputs)``; ``make_inputs(batch, generator)`` gives ``(x, cond)``
with every conditioning keyword that family's pipeline passes.
"""

from __future__ import annotations

import torch
from diffusers import UNet2DConditionModel


def _randn(*shape, g):
    return torch.randn(*shape, generator=g)


def sd1(seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16, 16),
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4,
    ).eval()

    def inputs(batch, g, size=8):
        return _randn(batch, 4, size, size, g=g), {"encoder_hidden_states": _randn(batch, 5, 12, g=g)}

    return unet, inputs


def sd2(seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=4,
        upcast_attention=True,
    ).eval()

    def inputs(batch, g, size=8):
        return _randn(batch, 4, size, size, g=g), {"encoder_hidden_states": _randn(batch, 5, 32, g=g)}

    return unet, inputs


def sdxl(seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=16, attention_head_dim=(2, 4), use_linear_projection=True, norm_num_groups=4,
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time", addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 10,
    ).eval()

    def inputs(batch, g, size=8):
        cond = {
            "encoder_hidden_states": _randn(batch, 5, 16, g=g),
            "added_cond_kwargs": {"text_embeds": _randn(batch, 10, g=g),
                                  "time_ids": torch.tensor([[size * 8, size * 8, 0, 0, size * 8, size * 8]] * batch,
                                                           dtype=torch.float32)},
        }
        return _randn(batch, 4, size, size, g=g), cond

    return unet, inputs


def _if_kwargs():
    return dict(
        layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn", cross_attention_dim=16, encoder_hid_dim=24,
        encoder_hid_dim_type="text_proj", addition_embed_type="text", addition_embed_type_num_heads=2,
        attention_head_dim=4, resnet_time_scale_shift="scale_shift", norm_num_groups=4, act_fn="gelu",
    )


def if_stage_1(seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=3, out_channels=6, **_if_kwargs()).eval()

    def inputs(batch, g, size=8):
        return _randn(batch, 3, size, size, g=g), {"encoder_hidden_states": _randn(batch, 5, 24, g=g)}

    return unet, inputs


def if_stage_2(seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(sample_size=8, in_channels=6, out_channels=6, class_embed_type="timestep",
                                **_if_kwargs()).eval()

    def inputs(batch, g, size=8):
        cond = {"encoder_hidden_states": _randn(batch, 5, 24, g=g),
                "class_labels": torch.full((batch,), 250, dtype=torch.long)}
        return _randn(batch, 6, size, size, g=g), cond

    return unet, inputs


def class_conditional(seed=0):
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=1, out_channels=1, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=8, attention_head_dim=2, norm_num_groups=4, num_class_embeds=10,
        time_cond_proj_dim=6,
    ).eval()

    def inputs(batch, g, size=8):
        cond = {"encoder_hidden_states": _randn(batch, 1, 8, g=g),
                "class_labels": torch.arange(batch) % 10, "timestep_cond": _randn(batch, 6, g=g)}
        return _randn(batch, 1, size, size, g=g), cond

    return unet, inputs


FAMILIES = {
    "sd1": sd1,
    "sd2": sd2,
    "sdxl": sdxl,
    "if-1": if_stage_1,
    "if-2": if_stage_2,
    "class-conditional": class_conditional,
}
