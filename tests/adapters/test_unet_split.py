import pytest
import torch
from tiec.adapters.diffusers import UNet2DConditionSplit
from tiny_unets import FAMILIES

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning")


def generator(seed=0):
    return torch.Generator().manual_seed(seed)


def clone(value):
    if isinstance(value, torch.Tensor):
        return value.clone()
    if isinstance(value, dict):
        return {k: clone(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(clone(v) for v in value)
    return value


def assert_same(a, b):
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            assert_same(a[k], b[k])
    elif isinstance(a, (list, tuple)):
        for x, y in zip(a, b, strict=True):
            assert_same(x, y)
    else:
        assert a == b


@pytest.fixture(scope="module", params=sorted(FAMILIES))
def family(request):
    return FAMILIES[request.param]()


@torch.no_grad()
@pytest.mark.parametrize("size", [8, 9], ids=["even", "odd"])
def test_split_reproduces_forward_at_every_depth(family, size):
    unet, make_inputs = family
    x, cond = make_inputs(2, generator(), size=size)
    t = torch.tensor(417)
    try:
        expected = unet(x, t, **cond).sample
    except RuntimeError as error:  # IF's ResnetUpsampleBlock2D ignores upsample_size upstream
        assert size % 2, error
        pytest.skip(f"the model's own forward does not support size {size}: {error}")
    for start in range(len(unet.up_blocks) + 1):
        split = UNet2DConditionSplit(unet, decoder_start=start)
        inputs = clone((x, cond))
        features = split.encode(x, t, **cond)
        kept = clone(features)
        out = split.decode(features, t, **cond)
        assert torch.equal(out, expected), f"decoder_start={start}"
        assert_same((x, cond), inputs)  # inputs are never modified
        assert_same(features, kept)  # nor are the cached features
        assert out.shape[1] == unet.config.out_channels


@torch.no_grad()
def test_features_shrink_as_the_decoder_starts_later(family):
    unet, make_inputs = family
    x, cond = make_inputs(1, generator())
    counts = [len(UNet2DConditionSplit(unet, decoder_start=j).encode(x, 3, **cond))
              for j in range(len(unet.up_blocks) + 1)]
    assert counts == sorted(counts, reverse=True) and counts[-1] == 1


@torch.no_grad()
@pytest.mark.parametrize("timestep", [417, 417.5, torch.tensor([417, 12])], ids=["int", "float", "per-sample"])
def test_timestep_kinds(timestep):
    unet, make_inputs = FAMILIES["sd1"]()
    x, cond = make_inputs(2, generator())
    split = UNet2DConditionSplit(unet, decoder_start=1)
    assert torch.equal(split.decode(split.encode(x, timestep, **cond), timestep, **cond),
                       unet(x, timestep, **cond).sample)


@torch.no_grad()
def test_controlnet_and_mid_residuals_act_in_the_encoder():
    unet, make_inputs = FAMILIES["sd1"]()
    x, cond = make_inputs(2, generator())
    plain = UNet2DConditionSplit(unet).encode(x, 100, **cond)
    g = generator(3)
    residuals = {"down_block_additional_residuals": tuple(torch.randn(f.shape, generator=g) for f in plain[:-1]),
                 "mid_block_additional_residual": torch.randn(plain[-1].shape, generator=g)}
    expected = unet(x, 100, **cond, **residuals).sample
    for start in range(len(unet.up_blocks) + 1):
        split = UNet2DConditionSplit(unet, decoder_start=start)
        assert torch.equal(split.decode(split.encode(x, 100, **cond, **residuals), 100, **cond), expected)


@torch.no_grad()
def test_t2i_adapter_residuals_and_the_callers_list_is_kept():
    unet, make_inputs = FAMILIES["sd1"]()
    x, cond = make_inputs(1, generator())
    shapes, h = [], unet.conv_in(x)
    emb = unet.time_embedding(unet.get_time_embed(x, 5))
    for block in unet.down_blocks:
        kwargs = {"encoder_hidden_states": cond["encoder_hidden_states"]} if getattr(block, "has_cross_attention", False) else {}
        h, res = block(h, emb, **kwargs)
        # Cross-attention blocks add the residual before their downsampler, the others after.
        inside = kwargs and block.downsamplers is not None
        shapes.append(res[-2].shape if inside else h.shape)
    g = generator(4)
    adapter = [torch.randn(s, generator=g) for s in shapes]
    expected = unet(x, 5, **cond, down_intrablock_additional_residuals=list(adapter)).sample
    split = UNet2DConditionSplit(unet)
    mine = list(adapter)
    got = split.decode(split.encode(x, 5, **cond, down_intrablock_additional_residuals=mine), 5, **cond)
    assert torch.equal(got, expected)
    assert len(mine) == len(adapter)


@torch.no_grad()
def test_masks_and_cross_attention_kwargs():
    unet, make_inputs = FAMILIES["sd1"]()
    x, cond = make_inputs(2, generator())
    cond["encoder_attention_mask"] = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    cond["cross_attention_kwargs"] = {"scale": 0.5}
    expected = unet(x, 7, **cond).sample
    split = UNet2DConditionSplit(unet, decoder_start=2)
    assert torch.equal(split.decode(split.encode(x, 7, **cond), 7, **cond), expected)
    assert cond["cross_attention_kwargs"] == {"scale": 0.5}


@torch.no_grad()
def test_a_peft_lora_adapter_at_any_scale():
    """LoRA through diffusers' PEFT backend: the split applies ``cross_attention_kwargs["scale"]``
    as the model's forward does, and undoes it after every call."""
    pytest.importorskip("peft")
    from diffusers.utils import USE_PEFT_BACKEND
    from peft import LoraConfig

    assert USE_PEFT_BACKEND
    unet, make_inputs = FAMILIES["sd1"]()
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    x, cond = make_inputs(2, generator())
    split = UNet2DConditionSplit(unet, decoder_start=1)
    outputs = {}
    for scale in (None, 0.5, 0.0):
        kwargs = dict(cond) if scale is None else {**cond, "cross_attention_kwargs": {"scale": scale}}
        expected = unet(x, 7, **kwargs).sample
        outputs[scale] = split.decode(split.encode(x, 7, **kwargs), 7, **kwargs)
        assert torch.equal(outputs[scale], expected), scale
    unet.disable_adapters()
    assert torch.equal(unet(x, 7, **cond).sample, outputs[0.0])  # scale 0 is the model without LoRA
    unet.enable_adapters()
    assert not torch.equal(outputs[None], outputs[0.5])
    assert torch.equal(split.decode(split.encode(x, 7, **cond), 7, **cond), outputs[None])  # scale undone


def test_bad_arguments():
    unet, _ = FAMILIES["sd1"]()
    with pytest.raises(ValueError, match=r"decoder_start must be an int in \[0, 3\] .* got 4"):
        UNet2DConditionSplit(unet, decoder_start=4)
    with pytest.raises(ValueError, match="decoder_start must be an int"):
        UNet2DConditionSplit(unet, decoder_start=-1)
    with pytest.raises(TypeError, match="unet must be a diffusers UNet2DConditionModel, got Linear"):
        UNet2DConditionSplit(torch.nn.Linear(2, 2))
    assert repr(UNet2DConditionSplit(unet, decoder_start=1)) == "UNet2DConditionSplit(decoder_start=1 of 3 up blocks)"


def test_the_latent_upscalers_k_block_unet_is_refused_in_one_line():
    """Its K-blocks put None among the skips and its timestep is log(σ)/4 (issue #18, item 7)."""
    import diffusers
    import tiec.adapters.diffusers as tiec_diffusers

    unet = diffusers.UNet2DConditionModel(
        act_fn="gelu", attention_head_dim=8, norm_num_groups=None, block_out_channels=[32, 32],
        time_cond_proj_dim=16, conv_in_kernel=1, conv_out_kernel=1, cross_attention_dim=32, in_channels=8,
        down_block_types=("KDownBlock2D", "KCrossAttnDownBlock2D"), mid_block_type=None, out_channels=5,
        resnet_time_scale_shift="scale_shift", time_embedding_type="fourier", timestep_post_act="gelu",
        up_block_types=("KCrossAttnUpBlock2D", "KUpBlock2D"))
    message = r"UNets with k-diffusion blocks \(KCrossAttnDownBlock2D, .*\), as in StableDiffusionLatentUpscalePipeline"
    with pytest.raises(NotImplementedError, match=message):
        UNet2DConditionSplit(unet)

    class LatentUpscaler:  # what enable() sees of the pipeline: a UNet and a scheduler
        scheduler = diffusers.EulerDiscreteScheduler()

    pipe = LatentUpscaler()
    pipe.unet = unet
    forward = unet.forward
    with pytest.raises(NotImplementedError, match=message):
        tiec_diffusers.enable(pipe)
    assert not tiec_diffusers.is_enabled(pipe) and unet.forward == forward and "forward" not in unet.__dict__
