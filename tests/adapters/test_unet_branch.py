"""The UNet shallow branch (issue #21): exact at every cut, the branch recomputed from each step's
input, only the deep feature cached, and accepted by every entry point."""

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)

import tiec
from tiec.adapters.diffusers import UNet2DConditionSplit
from tiec.adapters.diffusers.unet import skip_count
from tiny_unets import FAMILIES

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def deep_sd(seed=0, freeu=False):
    """SD-like, two layers per block and three blocks: cuts inside every kind of block."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(8, 16, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4,
    ).eval()
    if freeu:
        unet.enable_freeu(s1=0.9, s2=0.2, b1=1.2, b2=1.4)

    def inputs(batch, g, size=8):
        return torch.randn(batch, 4, size, size, generator=g), {
            "encoder_hidden_states": torch.randn(batch, 5, 12, generator=g)}

    return unet, inputs


def check_every_cut(unet, x, t, cond, expected):
    for depth in range(1, skip_count(unet) + 1):
        split = UNet2DConditionSplit(unet, branch_depth=depth)
        features = split.encode(x, t, **cond)
        assert len(features) == depth + 1 and split.fresh_features == depth
        fresh = split.refresh(x, t, **cond)
        assert len(fresh) == depth
        for got, want in zip(fresh, features[1:], strict=True):
            assert torch.equal(got, want), f"refresh differs from encode at branch_depth={depth}"
        assert torch.equal(split.decode(features, t, **cond), expected), f"branch_depth={depth}"


@torch.no_grad()
@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("size", [8, 9], ids=["even", "odd"])
def test_every_cut_reproduces_the_forward_and_refresh_equals_the_encoders_tail(family, size):
    unet, make_inputs = FAMILIES[family]()
    x, cond = make_inputs(2, generator(), size=size)
    try:
        expected = unet(x, 417, **cond).sample
    except RuntimeError:  # IF's ResnetUpsampleBlock2D ignores upsample_size upstream
        pytest.skip(f"the model's own forward does not support size {size}")
    kept = (x.clone(), {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in cond.items()})
    check_every_cut(unet, x, 417, cond, expected)
    assert torch.equal(x, kept[0])


@torch.no_grad()
@pytest.mark.parametrize("freeu", [False, True], ids=["plain", "freeu"])
@pytest.mark.parametrize("size", [8, 9], ids=["even", "odd"])
def test_cuts_inside_two_layer_blocks_with_and_without_freeu(freeu, size):
    unet, make_inputs = deep_sd(freeu=freeu)
    x, cond = make_inputs(2, generator(), size=size)
    assert skip_count(unet) == 9
    check_every_cut(unet, x, torch.tensor(333), cond, unet(x, torch.tensor(333), **cond).sample)


@torch.no_grad()
def test_controlnet_and_t2i_residuals_at_every_cut():
    unet, make_inputs = deep_sd()
    x, cond = make_inputs(1, generator())
    plain = UNet2DConditionSplit(unet).encode(x, 100, **cond)
    g = generator(3)
    controlnet = {"down_block_additional_residuals": tuple(torch.randn(f.shape, generator=g) for f in plain[:-1]),
                  "mid_block_additional_residual": torch.randn(plain[-1].shape, generator=g)}
    check_every_cut(unet, x, 100, {**cond, **controlnet}, unet(x, 100, **cond, **controlnet).sample)
    # T2I-Adapter: one residual per down block, added where each block's forward adds it.
    shapes = [plain[2].shape, plain[6].shape, plain[8].shape]
    adapter = [torch.randn(s, generator=g) for s in shapes]
    expected = unet(x, 100, **cond, down_intrablock_additional_residuals=list(adapter)).sample
    mine = list(adapter)
    check_every_cut(unet, x, 100, {**cond, "down_intrablock_additional_residuals": mine}, expected)
    assert len(mine) == 3  # the caller's list is never popped


def test_bad_branch_arguments_are_refused_in_one_line():
    unet, _ = FAMILIES["sd1"]()
    for bad in (0, 7, True, 1.0):
        with pytest.raises(ValueError, match=rf"branch_depth must be None or an int in \[1, 6\].*got {bad!r}"):
            UNet2DConditionSplit(unet, branch_depth=bad)
    with pytest.raises(ValueError, match="either decoder_start \\(1\\) or branch_depth \\(2\\)"):
        UNet2DConditionSplit(unet, decoder_start=1, branch_depth=2)
    with pytest.raises(ValueError, match="built without branch_depth"):
        UNet2DConditionSplit(unet).refresh(torch.zeros(1, 4, 8, 8), 1, encoder_hidden_states=torch.zeros(1, 5, 12))
    assert repr(UNet2DConditionSplit(unet, branch_depth=2)) == "UNet2DConditionSplit(branch_depth=2 of 6 skips)"
    assert UNet2DConditionSplit(unet).fresh_features == 0


@torch.no_grad()
def test_blocks_that_cannot_run_layer_by_layer_are_cut_only_at_their_boundaries():
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("AttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "AttnUpBlock2D"),
        cross_attention_dim=12, attention_head_dim=2, norm_num_groups=4,
    ).eval()
    with pytest.raises(NotImplementedError, match="branch_depth=2 cuts inside a AttnDownBlock2D"):
        UNet2DConditionSplit(unet, branch_depth=2)
    x = torch.randn(1, 4, 8, 8, generator=generator())
    cond = {"encoder_hidden_states": torch.randn(1, 5, 12, generator=generator(1))}
    split = UNet2DConditionSplit(unet, branch_depth=3)  # the whole first block each side
    assert torch.equal(split.decode(split.encode(x, 9, **cond), 9, **cond), unet(x, 9, **cond).sample)


def plain_guided_loop(unet, scheduler, x_T, steps, cond, uncond, scale):
    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        both = {k: torch.cat([uncond[k], v]) for k, v in cond.items()}
        u, c = unet(torch.cat([x_in, x_in]), t, **both).sample.chunk(2)
        x = scheduler.step(u + scale * (c - u), t, x).prev_sample
    return x


@torch.no_grad()
@pytest.mark.parametrize("family, scheduler_cls", [("sd1", DPMSolverMultistepScheduler), ("sd1", EulerDiscreteScheduler),
                                                   ("if-2", DDIMScheduler)], ids=["sd1-dpm", "sd1-euler", "if2-ddim"])
def test_sample_all_keys_is_exact_and_sparse_keys_refresh_the_branch(family, scheduler_cls):
    unet, make_inputs = FAMILIES[family]()
    x, cond = make_inputs(2, generator())
    uncond = {"encoder_hidden_states": make_inputs(2, generator(1))[1]["encoder_hidden_states"]}
    expected = plain_guided_loop(unet, scheduler_cls(), x, 6, cond, {**cond, **uncond}, 3.0)
    split = UNet2DConditionSplit(unet, branch_depth=1)
    result = tiec.sample(split, scheduler_cls(), x, num_inference_steps=6, cond=cond, guidance=3.0, uncond=uncond)
    assert torch.equal(result.sample, expected)
    refreshed = []
    original = split.refresh
    split.refresh = lambda x_in, t, **c: refreshed.append(float(t)) or original(x_in, t, **c)
    for policy in ("hold", "linear", "lookahead", "lookahead-accept"):
        refreshed.clear()
        sparse = tiec.sample(split, scheduler_cls(), x, num_inference_steps=6, cond=cond, guidance=3.0,
                             uncond=uncond, keys=3, policy=policy)
        assert torch.isfinite(sparse.sample).all() and not torch.equal(sparse.sample, expected)
        # every non-key step, and the accepted key of lookahead-accept (its deep feature is predicted)
        assert sparse.decoder_calls == 6 and len(refreshed) == 6 - 2 + (policy == "lookahead-accept")
        assert sparse.refresh_calls == len(refreshed)
    with pytest.raises(ValueError, match="parallel_decode=True needs a decoder that reads only cached features"):
        tiec.sample(split, scheduler_cls(), x, num_inference_steps=6, cond=cond, keys=3, parallel_decode=True)


@torch.no_grad()
def test_the_cached_model_keeps_only_the_deep_feature_and_decodes_each_steps_input():
    unet, make_inputs = deep_sd()
    x, cond = make_inputs(1, generator())
    other = torch.randn(x.shape, generator=generator(5))
    outputs = {}
    for name, split in (("branch", UNet2DConditionSplit(unet, branch_depth=3)),
                        ("deep", UNet2DConditionSplit(unet, decoder_start=1))):
        model = tiec.CachedModel(split, keys=[0], timesteps=[900, 800], policy="hold")
        model(x, 900, **cond)
        assert len(model.cache.get(900.0)) == (1 if name == "branch" else len(split.encode(x, 900, **cond)))
        outputs[name] = (model(x, 800, **cond), model(other, 800, **cond))
        assert model.encoder_calls == 1 and model.decoder_calls == 3
    assert not torch.equal(*outputs["branch"])  # the branch reads this step's input
    assert torch.equal(*outputs["deep"])  # a decoder on cached features alone does not
    # With a key at every step the cached model is the plain UNet.
    model = tiec.CachedModel(UNet2DConditionSplit(unet, branch_depth=3), timesteps=[900, 800])
    for t in (900, 800):
        assert torch.equal(model(other, t, **cond), unet(other, t, **cond).sample)


@torch.no_grad()
@pytest.mark.parametrize("pipeline", ["sd", "sdxl", "controlnet", "if-1", "if-2"])
def test_pipelines_take_a_branch_depth(pipeline):
    import tiec.adapters.diffusers as tiec_diffusers
    from tiny_pipelines import PIPELINES

    pipe, kwargs = PIPELINES[pipeline]()

    def images(steps):
        out = pipe(**kwargs(), num_inference_steps=steps, generator=generator())
        return out.images if hasattr(out, "images") else out[0]

    reference = images(6)
    with tiec_diffusers.cached(pipe, branch_depth=1) as state:
        assert torch.equal(images(6), reference)
    calls = {"n": 0}
    hook = pipe.unet.mid_block.register_forward_hook(lambda *_: calls.__setitem__("n", calls["n"] + 1))
    try:
        with tiec_diffusers.cached(pipe, keys=3, branch_depth=2, policy="linear") as state:
            got = images(6)
            assert calls["n"] == state.model.encoder_calls == 2 and state.model.decoder_calls == 6
            assert len(state.model.cache.get(state.model.cache.times[-1])) == 1
    finally:
        hook.remove()
    assert torch.isfinite(got).all() and not torch.equal(got, reference)
    assert torch.equal(images(6), reference)  # disabled again


def test_a_dit_pipeline_refuses_a_branch_depth():
    import tiec.adapters.diffusers as tiec_diffusers
    from tiny_pipelines import PIPELINES

    pipe, _ = PIPELINES["dit"]()
    with pytest.raises(ValueError, match="branch_depth=1 is a UNet split.*DiTTransformer2DModel"):
        tiec_diffusers.enable(pipe, branch_depth=1)
    assert not tiec_diffusers.is_enabled(pipe)
    tiec_diffusers.disable(pipe) if tiec_diffusers.is_enabled(pipe) else None


@torch.no_grad()
@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_k_diffusion_over_a_branch(sampler):
    K = pytest.importorskip("k_diffusion")
    from tiec.adapters.k_diffusion import KDiffusionDenoiser

    unet, make_inputs = FAMILIES["sd1"]()
    _, cond = make_inputs(2, generator())
    alphas = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
    reference = K.external.DiscreteEpsDDPMDenoiser(
        lambda x, t, cond=None: unet(x, t, encoder_hidden_states=cond).sample, alphas, quantize=False)
    sigmas = K.sampling.get_sigmas_karras(6, float(reference.sigma_min), float(reference.sigma_max))

    def run(denoiser):
        torch.manual_seed(0)
        x = torch.randn(2, 4, 8, 8) * sigmas[0]
        return getattr(K.sampling, f"sample_{sampler}")(denoiser, x, sigmas, extra_args={
            "cond": cond["encoder_hidden_states"]}, disable=True)

    split = UNet2DConditionSplit(unet, branch_depth=2)
    ours = KDiffusionDenoiser(split, alphas, cond_key="encoder_hidden_states")
    ours.set_sigmas(sigmas)
    assert torch.equal(run(ours), run(reference))
    sparse = KDiffusionDenoiser(split, alphas, cond_key="encoder_hidden_states", keys=3)
    sparse.set_sigmas(sigmas)
    assert torch.isfinite(run(sparse)).all() and sparse.encoder_calls < sparse.decoder_calls


def test_ancestral_schedulers_run_over_a_branch():
    unet, make_inputs = FAMILIES["sd1"]()
    x, cond = make_inputs(1, generator())
    split = UNet2DConditionSplit(unet, branch_depth=1)
    result = tiec.sample(split, EulerAncestralDiscreteScheduler(), x, num_inference_steps=5, cond=cond, keys=2,
                         step_kwargs={"generator": generator(7)})
    assert torch.isfinite(result.sample).all() and result.encoder_calls == 3
