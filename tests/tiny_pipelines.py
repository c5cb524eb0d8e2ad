"""Tiny diffusers pipelines built from configs (no hub): SD, SDXL, ControlNet, IF-I, IF-II, DiT.

Text encoders and tokenizers are left out: every call passes prompt embeddings directly, which is
the path the pipelines take after encoding a prompt.
"""

from __future__ import annotations

import torch
from diffusers import (
    AutoencoderKL,
    ControlNetModel,
    DDIMScheduler,
    DDPMScheduler,
    DiTPipeline,
    DiTTransformer2DModel,
    IFPipeline,
    IFSuperResolutionPipeline,
    StableDiffusionControlNetPipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

import tiny_unets


def ddim():
    return DDIMScheduler(clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def if_ddpm():
    return DDPMScheduler(variance_type="learned_range", clip_sample=True, thresholding=False)


def _vae(latent_channels=4):
    torch.manual_seed(0)
    return AutoencoderKL(block_out_channels=(8,), in_channels=3, out_channels=3, latent_channels=latent_channels,
                         down_block_types=("DownEncoderBlock2D",), up_block_types=("UpDecoderBlock2D",),
                         norm_num_groups=4, sample_size=8)


def _embeds(batch, tokens, dim, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, tokens, dim, generator=g)


def _quiet(pipe):
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sd():
    unet, _ = tiny_unets.sd1()
    pipe = _quiet(StableDiffusionPipeline(vae=_vae(), text_encoder=None, tokenizer=None, unet=unet, scheduler=ddim(),
                                          safety_checker=None, feature_extractor=None, requires_safety_checker=False))

    def kwargs(batch=1):
        return dict(prompt_embeds=_embeds(batch, 5, 12, 1), negative_prompt_embeds=_embeds(batch, 5, 12, 2),
                    output_type="latent", guidance_scale=5.0)

    return pipe, kwargs


def sdxl():
    unet, _ = tiny_unets.sdxl()
    pipe = _quiet(StableDiffusionXLPipeline(vae=_vae(), text_encoder=None, text_encoder_2=None, tokenizer=None,
                                            tokenizer_2=None, unet=unet, scheduler=ddim()))

    def kwargs(batch=1):
        g = torch.Generator().manual_seed(3)
        return dict(prompt_embeds=_embeds(batch, 5, 16, 1), negative_prompt_embeds=_embeds(batch, 5, 16, 2),
                    pooled_prompt_embeds=torch.randn(batch, 10, generator=g),
                    negative_pooled_prompt_embeds=torch.randn(batch, 10, generator=g),
                    output_type="latent", guidance_scale=5.0, height=8, width=8)

    return pipe, kwargs


def controlnet():
    unet, _ = tiny_unets.sd1()
    torch.manual_seed(1)
    net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(4,)).eval()
    pipe = _quiet(StableDiffusionControlNetPipeline(vae=_vae(), text_encoder=None, tokenizer=None, unet=unet,
                                                    controlnet=net, scheduler=ddim(), safety_checker=None,
                                                    feature_extractor=None, requires_safety_checker=False))

    def kwargs(batch=1):
        image = torch.rand(batch, 3, 8, 8, generator=torch.Generator().manual_seed(4))
        return dict(prompt_embeds=_embeds(batch, 5, 12, 1), negative_prompt_embeds=_embeds(batch, 5, 12, 2),
                    image=image, output_type="latent", guidance_scale=5.0, height=8, width=8)

    return pipe, kwargs


def if_stage_1():
    unet, _ = tiny_unets.if_stage_1()
    pipe = _quiet(IFPipeline(tokenizer=None, text_encoder=None, unet=unet, scheduler=if_ddpm(), safety_checker=None,
                             feature_extractor=None, watermarker=None, requires_safety_checker=False))

    def kwargs(batch=1):
        return dict(prompt_embeds=_embeds(batch, 5, 24, 1), negative_prompt_embeds=_embeds(batch, 5, 24, 2),
                    output_type="pt", guidance_scale=5.0)

    return pipe, kwargs


def if_stage_2():
    unet, _ = tiny_unets.if_stage_2()
    pipe = _quiet(IFSuperResolutionPipeline(tokenizer=None, text_encoder=None, unet=unet, scheduler=if_ddpm(),
                                            image_noising_scheduler=DDPMScheduler(), safety_checker=None,
                                            feature_extractor=None, watermarker=None, requires_safety_checker=False))

    def kwargs(batch=1):
        image = torch.rand(batch, 3, 4, 4, generator=torch.Generator().manual_seed(5)) * 2 - 1
        return dict(prompt_embeds=_embeds(batch, 5, 24, 1), negative_prompt_embeds=_embeds(batch, 5, 24, 2),
                    image=image, output_type="pt", guidance_scale=5.0, noise_level=100)

    return pipe, kwargs


def dit(attention_head_dim=8):
    torch.manual_seed(0)
    transformer = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=attention_head_dim, in_channels=4,
                                        out_channels=8, num_layers=3, sample_size=8, patch_size=2,
                                        num_embeds_ada_norm=1000).eval()  # DiTPipeline's null label is 1000
    pipe = _quiet(DiTPipeline(transformer=transformer, vae=_vae(), scheduler=ddim()))

    def kwargs(batch=1):
        return dict(class_labels=list(range(batch)), output_type="pt", guidance_scale=4.0)

    return pipe, kwargs


PIPELINES = {"sd": sd, "sdxl": sdxl, "controlnet": controlnet, "if-1": if_stage_1, "if-2": if_stage_2, "dit": dit}
