"""The adapters through tiec.sample: all keys equal the plain loop bit for bit, parallel equals
sequential, and each adapter reports its encoder's share of the FLOPs."""

import pytest
import torch
from diffusers import DDIMScheduler, DiTTransformer2DModel, EulerDiscreteScheduler

import tiec
from tiec.adapters.diffusers import DiTSplit, UNet2DConditionSplit
from tiec.adapters.reference_dit import DiTConfig, ReferenceDiT, ReferenceDiTSplit
from tiny_unets import FAMILIES


def noise(shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def guided_loop(forward, scheduler, x_T, steps, cond, uncond, scale, output_fn=lambda o: o):
    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        both = {k: torch.cat([uncond[k], v]) for k, v in cond.items()}
        u, c = forward(torch.cat([x_in, x_in]), t, **both).chunk(2)
        x = scheduler.step(output_fn(u + scale * (c - u)), t, x).prev_sample
    return x


@torch.no_grad()
@pytest.mark.parametrize("family", ["sd1", "sdxl", "if-2"])
@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler], ids=lambda c: c.__name__)
def test_unet_all_keys_equal_the_guided_loop(family, scheduler_cls):
    unet, make_inputs = FAMILIES[family]()
    x, cond = make_inputs(2, torch.Generator().manual_seed(0))
    _, uncond_inputs = make_inputs(2, torch.Generator().manual_seed(1))
    uncond = {k: v for k, v in uncond_inputs.items() if k == "encoder_hidden_states"}
    cond_tensors = {k: v for k, v in cond.items() if isinstance(v, torch.Tensor)}
    extra = {k: v for k, v in cond.items() if not isinstance(v, torch.Tensor)}

    def forward(x_in, t, **c):
        return unet(x_in, t, **c, **{k: {n: torch.cat([v, v]) for n, v in d.items()} for k, d in extra.items()}).sample

    expected = guided_loop(forward, scheduler_cls(), x, 5, cond_tensors, {**cond_tensors, **uncond}, 3.0)
    split = UNet2DConditionSplit(unet, decoder_start=1)
    result = tiec.sample(split, scheduler_cls(), x, num_inference_steps=5, cond=cond, guidance=3.0, uncond=uncond)
    assert torch.equal(result.sample, expected)
    sequential = tiec.sample(split, scheduler_cls(), x, num_inference_steps=6, cond=cond, guidance=3.0,
                             uncond=uncond, keys=3)
    parallel = tiec.sample(split, scheduler_cls(), x, num_inference_steps=6, cond=cond, guidance=3.0,
                           uncond=uncond, keys=3, parallel_decode=True)
    torch.testing.assert_close(parallel.sample, sequential.sample, rtol=1e-5, atol=1e-5)
    assert parallel.decoder_calls == 4 and sequential.decoder_calls == 6


@torch.no_grad()
def test_dit_all_keys_equal_the_pipeline_loop_and_parallel_equals_sequential():
    torch.manual_seed(0)
    dit = DiTTransformer2DModel(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8,
                                num_layers=3, sample_size=8, patch_size=2, num_embeds_ada_norm=10).eval()
    x = noise((2, 4, 8, 8))
    labels, null = torch.tensor([1, 2]), torch.tensor([10, 10])

    def forward(x_in, t, class_labels):
        return dit(x_in, t.expand(x_in.shape[0]), class_labels=class_labels).sample

    eps_only = lambda out: out[:, :4]  # noqa: E731 (drop the learned variance, as DiTPipeline does)
    expected = guided_loop(forward, DDIMScheduler(), x, 5, {"class_labels": labels}, {"class_labels": null}, 4.0,
                           output_fn=eps_only)
    for k in (1, 3):
        split = DiTSplit(dit, encoder_blocks=k)
        kwargs = dict(cond={"class_labels": labels}, guidance=4.0, uncond={"class_labels": null},
                      output_fn=eps_only, num_inference_steps=5)
        assert torch.equal(tiec.sample(split, DDIMScheduler(), x, **kwargs).sample, expected)
        seq = tiec.sample(split, DDIMScheduler(), x, keys=2, **kwargs)
        par = tiec.sample(split, DDIMScheduler(), x, keys=2, parallel_decode=True, **kwargs)
        torch.testing.assert_close(par.sample, seq.sample, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_reference_dit_guidance_on_eps_channels():
    torch.manual_seed(0)
    model = ReferenceDiT(DiTConfig(input_size=8, hidden_size=32, depth=2, num_heads=2, num_classes=10)).eval()
    split = ReferenceDiTSplit(model, encoder_blocks=2)
    x = noise((2, 4, 8, 8))
    y = torch.tensor([3, 4])
    result = tiec.sample(split, DDIMScheduler(), x, num_inference_steps=4, cond={"y": y}, guidance=2.0,
                         uncond={"y": torch.tensor([model.null_label])}, guided_channels=4,
                         output_fn=lambda out: out[:, :4], keys=2)
    assert result.sample.shape == x.shape and result.encoder_calls == 2


@torch.no_grad()
def test_unet_encoder_share_grows_with_the_decoder_start():
    unet, make_inputs = FAMILIES["sd1"]()
    x, cond = make_inputs(1, torch.Generator().manual_seed(0))
    shares = [tiec.encoder_share(UNet2DConditionSplit(unet, decoder_start=j), x, 10, **cond).share
              for j in range(len(unet.up_blocks) + 1)]
    assert 0 < shares[0] < 0.6
    assert shares == sorted(shares) and shares[-1] > 0.9
    full, _ = tiec.count_flops(lambda: unet(x, 10, **cond))
    share = tiec.encoder_share(UNet2DConditionSplit(unet), x, 10, **cond)
    assert share.encoder_flops + share.decoder_flops >= full  # the decoder recomputes the small embeddings
    assert share.speedup_bound(1.0) == 1.0 and share.speedup_bound(0.0) > 1.0


@torch.no_grad()
def test_dit_encoder_share_follows_the_block_count():
    torch.manual_seed(0)
    model = ReferenceDiT(DiTConfig(input_size=8, hidden_size=32, depth=4, num_heads=2, num_classes=10)).eval()
    x, t, y = noise((1, 4, 8, 8)), torch.tensor([10]), torch.tensor([1])
    shares = [tiec.encoder_share(ReferenceDiTSplit(model, encoder_blocks=k), x, t, y=y).share for k in range(1, 5)]
    assert shares == sorted(shares)
    assert shares[1] == pytest.approx(0.5, abs=0.1)
