"""The pipeline patch under the call patterns real callers use (issue #18): img2img's partial
schedules, a UNet shared between pipelines, conditional and unconditional halves in separate
calls, accelerate's offload hooks, DPM-Solver SDE's midpoints."""

import pytest
import tiec.adapters.diffusers as tiec_diffusers
import torch
from test_pipelines import encoder_probe, images
from tiny_pipelines import PIPELINES, ddim

from tiec import TiecError


@pytest.mark.parametrize("name", ["sd", "sdxl"])
@torch.no_grad()
def test_img2img_keys_count_the_steps_the_call_runs(name):
    """strength 0.6 of 10 steps runs the last 6: keys every 3 are run steps 0 and 3, and a preset is
    rescaled to the 6 (was: the full schedule's keys, 3 encoder calls; issue #18, item 6)."""
    import diffusers

    pipe, kwargs = PIPELINES[name]()
    cls = {"sd": diffusers.StableDiffusionImg2ImgPipeline, "sdxl": diffusers.StableDiffusionXLImg2ImgPipeline}[name]
    img = cls(**pipe.components)
    img.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def run(steps=10):
        return img(**kwargs(), image=image, strength=0.6, num_inference_steps=steps,
                   generator=torch.Generator().manual_seed(0)).images

    reference = run()
    with tiec_diffusers.cached(img) as cache:
        assert torch.equal(run(), reference)
    counter, handle = encoder_probe(img)
    try:
        with tiec_diffusers.cached(img, keys="every:3") as cache:
            run()
            assert cache.model.key_steps == (0, 3) and cache.model.decoder_calls == 6
            assert cache.model.encoder_calls == counter["n"] == 2
        with tiec_diffusers.cached(img, keys="ddim-50") as cache:
            run(50)  # 30 run steps: the DDIM-50 preset rescaled to them, dense early keys kept
            assert cache.model.key_steps[:4] == (0, 1, 2, 3) and len(cache.model.key_steps) > 5
    finally:
        handle.remove()


@torch.no_grad()
def test_a_unet_shared_with_a_pipeline_that_has_its_own_scheduler():
    """One UNet, two pipelines (issue #18, item 8): the one with a scheduler of its own runs its
    calls uncached and exact, is not reported enabled, and cannot be enabled on top; one built
    with the same scheduler (from_pipe) is cached."""
    import diffusers

    pipe, kwargs = PIPELINES["sd"]()
    other = diffusers.StableDiffusionImg2ImgPipeline(**{**pipe.components, "scheduler": ddim()})
    other.set_progress_bar_config(disable=True)
    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))

    def img2img(steps=12):
        return other(**kwargs(), image=image, strength=0.7, num_inference_steps=steps,
                     generator=torch.Generator().manual_seed(0)).images

    expected = img2img()
    run_times = other.scheduler.timesteps.tolist()[-8:]  # strength 0.7 of 12 steps
    with tiec_diffusers.cached(pipe, keys="every:3") as cache:
        images(pipe, kwargs(), steps=30)
        own_times = pipe.scheduler.timesteps.tolist()
        assert torch.equal(img2img(), expected)
        # every call whose time is not on the first pipeline's schedule ran uncached (here all but
        # the last, t=1, which both schedules share: a new run's first step there, a key)
        assert cache.foreign_calls == sum(t not in own_times for t in run_times) == 7
        assert not tiec_diffusers.is_enabled(other)
        with pytest.raises(TiecError, match="shared with a StableDiffusionPipeline that has "
                           "tiec enabled with a scheduler of its own"):
            tiec_diffusers.enable(other)
        shared = diffusers.StableDiffusionImg2ImgPipeline.from_pipe(pipe)
        shared.set_progress_bar_config(disable=True)
        assert tiec_diffusers.is_enabled(shared)
        shared(**kwargs(), image=image, strength=0.5, num_inference_steps=12, generator=torch.Generator().manual_seed(0))
        assert cache.model.key_steps == (0, 3) and cache.foreign_calls == 7  # shared: cached, none foreign


def _guided_loop(pipe, kwargs, *, separate, steps=8):
    """A user's loop over a pipeline's denoiser with guidance 5: one batched call per step, or the
    unconditional and conditional halves in separate calls."""
    denoiser = pipe.unet if hasattr(pipe, "unet") else pipe.transformer
    scheduler = pipe.scheduler
    scheduler.set_timesteps(steps)
    if hasattr(pipe, "unet"):
        conds = [{"encoder_hidden_states": kwargs["negative_prompt_embeds"]},
                 {"encoder_hidden_states": kwargs["prompt_embeds"]}]
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    else:
        conds = [{"class_labels": torch.tensor([10])}, {"class_labels": torch.tensor([3])}]
        x = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    for t in scheduler.timesteps:
        time = t.reshape(1)
        if separate:
            uncond, cond = (denoiser(x, time, **c).sample[:, :4] for c in conds)
        else:
            both = {k: torch.cat([conds[0][k], conds[1][k]]) for k in conds[0]}
            uncond, cond = denoiser(torch.cat([x, x]), time.expand(2), **both).sample[:, :4].chunk(2)
        x = scheduler.step(uncond + 5.0 * (cond - uncond), t, x).prev_sample
    return x


@pytest.mark.parametrize("name", ["sd", "dit"])
@torch.no_grad()
def test_separate_conditional_and_unconditional_calls_keep_separate_streams(name):
    """Issue #18, item 1: with one cache, the unconditional call decoded the conditional call's
    features (off by several units). Each conditioning now has its stream: separate calls give what
    batched guidance gives, up to the model's own batching rounding, which is not bitwise here
    (a batch of 2 and two of 1 differ by ~1e-6 relative even with every step a key)."""
    pipe, kwargs = PIPELINES[name]()
    kwargs = kwargs() if name == "sd" else {}
    with tiec_diffusers.cached(pipe):
        exact_gap = (_guided_loop(pipe, kwargs, separate=False) - _guided_loop(pipe, kwargs, separate=True)).abs().max()
    with tiec_diffusers.cached(pipe, keys=3, policy="linear") as cache:
        batched = _guided_loop(pipe, kwargs, separate=False)
        assert len(cache.streams) == 1 and cache.encoder_calls == 3
    with tiec_diffusers.cached(pipe, keys=3, policy="linear") as cache:
        separate = _guided_loop(pipe, kwargs, separate=True)
        assert len(cache.streams) == 2 and cache.encoder_calls == 6 and cache.decoder_calls == 16
    assert (separate - batched).abs().max() <= 4 * exact_gap + 1e-6


def _batch_invariant(denoiser):
    """Forward hooks that recompute every weight layer, norm and attention of ``denoiser`` one
    sample at a time: CPU kernels choose their blocking by batch size, so a batch of two and two
    batches of one differ in the last bits, and only a batch-invariant model can show that separate
    calls equal batched guidance bit for bit."""
    from diffusers.models.attention_processor import Attention

    def hook(module, args, kwargs, out):
        n = args[0].shape[0] if args and isinstance(args[0], torch.Tensor) and args[0].dim() else 1
        if n < 2:
            return out
        cut = lambda v, i: v[i:i + 1] if isinstance(v, torch.Tensor) and v.dim() and v.shape[0] == n else v  # noqa: E731
        return torch.cat([module.forward(*(cut(a, i) for a in args), **{k: cut(v, i) for k, v in kwargs.items()})
                          for i in range(n)])

    layers = (torch.nn.Linear, torch.nn.Conv2d, torch.nn.GroupNorm, torch.nn.LayerNorm, Attention)
    return [m.register_forward_hook(hook, with_kwargs=True) for m in denoiser.modules() if isinstance(m, layers)]


@pytest.mark.parametrize("name", ["sd", "dit"])
@torch.no_grad()
def test_separate_calls_equal_batched_guidance_bit_for_bit_on_a_batch_invariant_model(name):
    """Issue #18's acceptance: with sparse keys, separate conditional and unconditional calls give
    the images of batched guidance bit for bit -- the same cache streams -- wherever the model
    itself gives a batch of two what it gives two batches of one."""
    if name == "sd":
        pipe, make_kwargs = PIPELINES["sd"]()
        kwargs = make_kwargs()
    else:  # hidden size 32: elementwise CPU kernels treat a vector-width remainder apart (16 is not invariant)
        pipe, kwargs = PIPELINES["dit"](attention_head_dim=16)[0], {}
    handles = _batch_invariant(pipe.unet if name == "sd" else pipe.transformer)
    try:
        with tiec_diffusers.cached(pipe):
            if not torch.equal(_guided_loop(pipe, kwargs, separate=False), _guided_loop(pipe, kwargs, separate=True)):
                pytest.skip("this CPU's kernels are not batch-invariant for the model even sample by sample")
        with tiec_diffusers.cached(pipe, keys=3, policy="linear") as cache:
            batched = _guided_loop(pipe, kwargs, separate=False)
            assert len(cache.streams) == 1 and cache.encoder_calls == 3
        with tiec_diffusers.cached(pipe, keys=3, policy="linear") as cache:
            separate = _guided_loop(pipe, kwargs, separate=True)
            assert len(cache.streams) == 2 and cache.encoder_calls == 6
        assert torch.equal(separate, batched)
    finally:
        for handle in handles:
            handle.remove()


def _counting_hook():
    from accelerate.hooks import ModelHook

    class Counting(ModelHook):  # what offload's hook does first on every call: pre_forward
        calls = 0

        def pre_forward(self, module, *args, **kwargs):
            Counting.calls += 1
            return args, kwargs

    return Counting()


@pytest.mark.parametrize("order", ["offload first", "tiec first"])
@torch.no_grad()
def test_accelerate_offload_hooks_keep_running_and_survive_their_reinstallation(order):
    """Issue #18, item 4: model CPU offload's hook moves the UNet to its device in pre_forward; the
    patch reached the submodules directly, so it never ran, and diffusers' removal and
    reinstallation of the hooks after each call dropped the patch and broke disable()."""
    pytest.importorskip("accelerate")
    from accelerate.hooks import add_hook_to_module, remove_hook_from_module

    pipe, kwargs = PIPELINES["sd"]()
    reference = images(pipe, kwargs(), steps=6)
    hook = _counting_hook()
    if order == "offload first":
        add_hook_to_module(pipe.unet, hook)
    cache = tiec_diffusers.enable(pipe, keys=3)
    if order == "tiec first":
        add_hook_to_module(pipe.unet, hook)
    for _ in range(2):
        before = type(hook).calls
        fast = images(pipe, kwargs(), steps=6)
        assert type(hook).calls - before == 6  # the hook ran on every denoiser call
        remove_hook_from_module(pipe.unet)  # what diffusers does after each call with offload on ...
        add_hook_to_module(pipe.unet, hook)  # ... and again before the next
    assert cache.encoder_calls == 2 * 2 and not torch.equal(fast, reference)  # still cached
    tiec_diffusers.disable(pipe)
    assert torch.equal(images(pipe, kwargs(), steps=6), reference)
    remove_hook_from_module(pipe.unet)
    assert pipe.unet.forward.__func__ is type(pipe.unet).forward  # (accelerate leaves it as an attribute)
    assert torch.equal(images(pipe, kwargs(), steps=6), reference)


@pytest.mark.parametrize("order", ["offload first", "tiec first"])
@torch.no_grad()
def test_diffusers_model_cpu_offload_in_either_order(order):
    """diffusers' own enable_model_cpu_offload (to the CPU here: the same hooks, installed, removed
    and reinstalled around each call as on a GPU): two calls give the cached images of a pipeline
    without offload, and disable() gives the original ones back."""
    pytest.importorskip("accelerate")
    pipe, kwargs = PIPELINES["sd"]()
    reference = images(pipe, kwargs(), steps=6)
    with tiec_diffusers.cached(pipe, keys=3):
        cached = images(pipe, kwargs(), steps=6)
    pipe, kwargs = PIPELINES["sd"]()
    if order == "offload first":
        pipe.enable_model_cpu_offload(device="cpu")
    cache = tiec_diffusers.enable(pipe, keys=3)
    if order == "tiec first":
        pipe.enable_model_cpu_offload(device="cpu")
    for _ in range(2):
        assert torch.equal(images(pipe, kwargs(), steps=6), cached)
    assert cache.encoder_calls == 2 * 2
    tiec_diffusers.disable(pipe)
    assert torch.equal(images(pipe, kwargs(), steps=6), reference)


@pytest.mark.parametrize("order", ["offload first", "tiec first"])
@torch.no_grad()
def test_accelerate_hooks_on_every_submodule_run_whenever_their_module_runs(order):
    """Where enable_sequential_cpu_offload puts its hooks (every submodule; on this stack the call
    itself fails before tiec is involved): each hook's pre_forward runs every time its module
    runs, cached or not, and the images equal the cached ones without hooks."""
    pytest.importorskip("accelerate")
    from accelerate.hooks import ModelHook, add_hook_to_module

    pipe, kwargs = PIPELINES["sd"]()
    leaves = [m for m in pipe.unet.modules() if not list(m.children())]
    hooked, ran = {}, {}

    class Counting(ModelHook):
        def pre_forward(self, module, *args, **kwargs):
            hooked[id(module)] = hooked.get(id(module), 0) + 1
            return args, kwargs

    for module in leaves:
        module.register_forward_pre_hook(lambda m, args: ran.__setitem__(id(m), ran.get(id(m), 0) + 1))
    with tiec_diffusers.cached(pipe, keys=3):
        expected = images(pipe, kwargs(), steps=6)
    runs, ran = ran, {}  # which modules a cached call runs, and how often
    if order == "offload first":
        for module in leaves:
            add_hook_to_module(module, Counting())
    cache = tiec_diffusers.enable(pipe, keys=3)
    if order == "tiec first":
        for module in leaves:
            add_hook_to_module(module, Counting())
    assert torch.equal(images(pipe, kwargs(), steps=6), expected) and cache.encoder_calls == 2
    assert runs and hooked == ran == runs
    tiec_diffusers.disable(pipe)


@torch.no_grad()
def test_dpm_solver_sde_with_its_midpoints():
    """DPM-Solver SDE evaluates midpoints between its steps; every step a key stays exact, sparse
    keys blend at each midpoint's own log sigma (tests/test_loop.py checks the coordinate)."""
    from diffusers import DPMSolverSDEScheduler

    pipe, kwargs = PIPELINES["sd"]()
    pipe.scheduler = DPMSolverSDEScheduler.from_config(ddim().config, noise_sampler_seed=0)
    reference = images(pipe, kwargs(), steps=4)
    with tiec_diffusers.cached(pipe, coordinate="log_sigma") as cache:
        assert torch.equal(images(pipe, kwargs(), steps=4), reference)
    with tiec_diffusers.cached(pipe, keys=2, coordinate="log_sigma") as cache:
        fast = images(pipe, kwargs(), steps=4)
        assert cache.decoder_calls == len(pipe.scheduler.timesteps) and cache.encoder_calls < cache.decoder_calls
    assert torch.isfinite(fast).all()


@torch.no_grad()
def test_a_peft_lora_fused_and_unfused_around_a_cached_pipeline():
    """A LoRA on the UNet (diffusers' PEFT backend), fused into the weights and unfused again while
    the pipeline is cached: every step a key equals the uncached pipeline in each state, and the
    patch never gets in the way of fusing (it touches forward only, never the weights)."""
    pytest.importorskip("peft")
    from peft import LoraConfig

    pipe, kwargs = PIPELINES["sd"]()
    torch.manual_seed(0)
    pipe.unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                     init_lora_weights=False))
    with_lora = images(pipe, kwargs(), steps=4)

    def cached_then_plain():
        with tiec_diffusers.cached(pipe) as cache:
            cached = images(pipe, kwargs(), steps=4)
            assert cache.encoder_calls == cache.decoder_calls == 4
        return cached, images(pipe, kwargs(), steps=4)

    cached, plain = cached_then_plain()
    assert torch.equal(cached, with_lora) and torch.equal(plain, with_lora)
    tiec_diffusers.enable(pipe, keys=2)
    pipe.unet.fuse_lora()  # while the pipeline is cached: the patch touches forward, never weights
    tiec_diffusers.disable(pipe)
    cached, plain = cached_then_plain()
    assert torch.equal(cached, plain)
    torch.testing.assert_close(plain, with_lora, rtol=1e-4, atol=1e-3)  # fusing rounds, nothing more
    tiec_diffusers.enable(pipe, keys=2)
    pipe.unet.unfuse_lora()
    tiec_diffusers.disable(pipe)
    cached, plain = cached_then_plain()
    assert torch.equal(cached, plain)
    with tiec_diffusers.cached(pipe, keys=2) as cache:
        images(pipe, kwargs(), steps=4)
        assert cache.encoder_calls == 2


def _img2img_style(name):
    """(pipeline, call keywords) of each img2img-style pipeline, built from a tiny pipeline's parts."""
    import diffusers

    image = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    if name == "sd-inpaint":
        pipe, kwargs = PIPELINES["sd"]()
        mask = torch.zeros(1, 1, 16, 16)
        mask[..., 4:12, 4:12] = 1
        return diffusers.StableDiffusionInpaintPipeline(**pipe.components), dict(
            kwargs(), image=image, mask_image=mask, strength=0.6, height=16, width=16)
    if name == "sdxl-refiner":
        pipe, kwargs = PIPELINES["sdxl"]()
        return diffusers.StableDiffusionXLImg2ImgPipeline(**pipe.components), dict(
            kwargs(), image=image, denoising_start=0.4)
    pipe, kwargs = PIPELINES["controlnet"]()
    control = kwargs()
    return diffusers.StableDiffusionControlNetImg2ImgPipeline(**pipe.components), dict(
        control, image=image, control_image=control["image"], strength=0.6)


@pytest.mark.parametrize("name", ["sd-inpaint", "sdxl-refiner", "controlnet-img2img"])
@torch.no_grad()
def test_every_img2img_style_pipeline_counts_its_run_steps(name):
    pipe, call = _img2img_style(name)
    pipe.set_progress_bar_config(disable=True)

    def run():
        return pipe(**call, num_inference_steps=10, generator=torch.Generator().manual_seed(0)).images

    reference = run()
    with tiec_diffusers.cached(pipe):
        assert torch.equal(run(), reference)
    with tiec_diffusers.cached(pipe, keys="every:3") as cache:
        run()
        steps = cache.decoder_calls
        assert 3 < steps < 10  # the call ran the tail of the schedule only
        assert cache.model.key_steps == tuple(range(0, steps, 3)) and cache.encoder_calls == len(range(0, steps, 3))
