import inspect

import pytest
import tiec.adapters.diffusers as tiec_diffusers
import torch
from diffusers import (
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from tiny_pipelines import PIPELINES, ddim, if_ddpm


def images(pipe, kwargs, steps=4, seed=0, **extra):
    out = pipe(**kwargs, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed), **extra)
    return out.images if hasattr(out, "images") else out[0]


def encoder_probe(pipe):
    """Counts real encoder runs independently of tiec: a hook on a module only the encoder runs."""
    module = pipe.unet.mid_block if hasattr(pipe, "unet") else pipe.transformer.transformer_blocks[0]
    counter = {"n": 0}
    handle = module.register_forward_hook(lambda *_: counter.__setitem__("n", counter["n"] + 1))
    return counter, handle


@pytest.fixture(scope="module", params=sorted(PIPELINES))
def pipeline(request):
    return request.param, *PIPELINES[request.param]()


@torch.no_grad()
def test_every_step_a_key_equals_the_pipeline_and_disable_restores_it(pipeline):
    name, pipe, kwargs = pipeline
    reference = images(pipe, kwargs())
    state = tiec_diffusers.enable(pipe)
    try:
        assert torch.equal(images(pipe, kwargs()), reference)
        assert state.model.encoder_calls == state.model.decoder_calls == 4
    finally:
        tiec_diffusers.disable(pipe)
    assert torch.equal(images(pipe, kwargs()), reference)


@torch.no_grad()
def test_sparse_keys_run_the_encoder_and_controlnet_only_at_keys(pipeline):
    name, pipe, kwargs = pipeline
    reference = images(pipe, kwargs(), steps=6)
    counter, handle = encoder_probe(pipe)
    controlnet_runs = {"n": 0}
    hooks = [handle]
    if name == "controlnet":
        hooks.append(pipe.controlnet.controlnet_cond_embedding.register_forward_hook(
            lambda *_: controlnet_runs.__setitem__("n", controlnet_runs["n"] + 1)))
    try:
        with tiec_diffusers.cached(pipe, keys=3, policy="linear") as state:
            got = images(pipe, kwargs(), steps=6)
            assert counter["n"] == state.model.encoder_calls == 2  # steps 0 and 3 of 6
            assert state.model.decoder_calls == 6
            if name == "controlnet":
                assert controlnet_runs["n"] == state.controlnet_calls == 2
                assert state.controlnet_skips == 4
    finally:
        for h in hooks:
            h.remove()
    assert got.shape == reference.shape and torch.isfinite(got).all()
    assert not torch.equal(got, reference)


SCHEDULERS = [DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, HeunDiscreteScheduler,
              UniPCMultistepScheduler]


def swap(pipe, scheduler_cls):
    pipe.scheduler = scheduler_cls.from_config(ddim().config) if scheduler_cls is not DDIMScheduler else ddim()


@torch.no_grad()
@pytest.mark.parametrize("first, second", list(zip(SCHEDULERS, SCHEDULERS[1:] + SCHEDULERS[:1])),
                         ids=lambda c: c.__name__)
def test_consecutive_calls_do_not_influence_each_other(first, second):
    pipe, kwargs = PIPELINES["sd"]()
    results = []
    for fresh in (False, True):
        with tiec_diffusers.cached(pipe, keys=2):
            if not fresh:
                swap(pipe, first)
                images(pipe, kwargs(batch=1), steps=5)
            swap(pipe, second)
            results.append(images(pipe, kwargs(batch=2), steps=4, seed=3))
    assert torch.equal(results[0], results[1])


@torch.no_grad()
def test_if_with_ddpm_consecutive_calls():
    pipe, kwargs = PIPELINES["if-1"]()
    with tiec_diffusers.cached(pipe, keys=2):
        images(pipe, kwargs(batch=2), steps=5)
        pipe.scheduler = if_ddpm()
        second = images(pipe, kwargs(), steps=4, seed=9)
    with tiec_diffusers.cached(pipe, keys=2):
        assert torch.equal(images(pipe, kwargs(), steps=4, seed=9), second)


@torch.no_grad()
def test_heun_repeated_timesteps():
    pipe, kwargs = PIPELINES["sd"]()
    swap(pipe, HeunDiscreteScheduler)
    reference = images(pipe, kwargs(), steps=4)
    with tiec_diffusers.cached(pipe) as state:
        assert torch.equal(images(pipe, kwargs(), steps=4), reference)
    counter, handle = encoder_probe(pipe)
    try:
        with tiec_diffusers.cached(pipe, keys=2) as state:
            images(pipe, kwargs(), steps=4)
            times = pipe.scheduler.timesteps.tolist()
            distinct = list(dict.fromkeys(times))
            key_times = {distinct[i] for i in range(0, len(distinct), 2)}
            assert counter["n"] == state.model.encoder_calls == sum(t in key_times for t in times)
    finally:
        handle.remove()


@torch.no_grad()
@pytest.mark.parametrize("config", [dict(timesteps=[999, 750, 500, 250, 50]), dict(karras=True)],
                         ids=["keyword-timesteps", "fractional-timesteps"])
def test_keyword_and_fractional_timesteps(config):
    pipe, kwargs = PIPELINES["sd"]()
    pipe.scheduler = EulerDiscreteScheduler.from_config(ddim().config, use_karras_sigmas=config.get("karras", False))
    call = dict(timesteps=config["timesteps"]) if "timesteps" in config else {}
    steps = None if call else 5
    reference = images(pipe, kwargs(), steps=steps, **call)
    with tiec_diffusers.cached(pipe):
        assert torch.equal(images(pipe, kwargs(), steps=steps, **call), reference)
    if "karras" in config:
        assert any(t != int(t) for t in pipe.scheduler.timesteps.tolist())
    counter, handle = encoder_probe(pipe)
    try:
        with tiec_diffusers.cached(pipe, keys=[0, 3]) as state:
            images(pipe, kwargs(), steps=steps, **call)
            assert counter["n"] == state.model.encoder_calls == 2
    finally:
        handle.remove()


def switch_off_guidance(at):
    def callback(pipe, i, t, callback_kwargs):
        if i == at:
            pipe._guidance_scale = 0.0
            callback_kwargs["prompt_embeds"] = callback_kwargs["prompt_embeds"].chunk(2)[-1]
        return callback_kwargs

    return callback


@torch.no_grad()
def test_guidance_switched_off_by_a_callback():
    pipe, kwargs = PIPELINES["sd"]()
    extra = dict(callback_on_step_end=switch_off_guidance(1), callback_on_step_end_tensor_inputs=["prompt_embeds"])
    reference = images(pipe, kwargs(), steps=5, **extra)
    with tiec_diffusers.cached(pipe):
        assert torch.equal(images(pipe, kwargs(), steps=5, **extra), reference)
    with tiec_diffusers.cached(pipe, keys=3) as state:
        images(pipe, kwargs(), steps=5, **extra)
        # the unguided conditioning is a stream of its own, started fresh at step 2
        assert len(state.streams) == 2 and [m.trajectories for m in state.streams.streams] == [1, 1]
        assert state.encoder_calls == 3  # step 0, step 2 (new stream), step 3


@torch.no_grad()
def test_an_interrupted_call_leaves_nothing_behind():
    pipe, kwargs = PIPELINES["sd"]()

    def boom(pipe, i, t, callback_kwargs):
        if i == 2:
            raise RuntimeError("interrupted")
        return callback_kwargs

    with tiec_diffusers.cached(pipe, keys=2):
        expected = images(pipe, kwargs(), steps=4, seed=5)
    with tiec_diffusers.cached(pipe, keys=2):
        with pytest.raises(RuntimeError, match="interrupted"):
            images(pipe, kwargs(batch=2), steps=6, callback_on_step_end=boom)
        assert torch.equal(images(pipe, kwargs(), steps=4, seed=5), expected)


def fingerprint(module):
    return (sorted(module.__dict__), sorted(module.state_dict()), inspect.signature(module.forward),
            type(module).forward is getattr(module.forward, "__func__", None))


def test_patching_is_reversible_and_refuses_double_entry():
    pipe, kwargs = PIPELINES["controlnet"]()
    pristine = [fingerprint(pipe.unet), fingerprint(pipe.controlnet)]
    state = tiec_diffusers.enable(pipe, keys=2)
    assert inspect.signature(pipe.unet.forward) == pristine[0][2]
    assert tiec_diffusers.is_enabled(pipe)
    with pytest.raises(Exception, match="already enabled .* call tiec.adapters.diffusers.disable"):
        tiec_diffusers.enable(pipe)
    tiec_diffusers.disable(pipe)
    tiec_diffusers.disable(pipe)  # a no-op
    assert [fingerprint(pipe.unet), fingerprint(pipe.controlnet)] == pristine
    with pytest.raises(ValueError, match="boom"):
        with tiec_diffusers.cached(pipe, keys=2):
            raise ValueError("boom")
    assert [fingerprint(pipe.unet), fingerprint(pipe.controlnet)] == pristine
    assert not tiec_diffusers.is_enabled(pipe)
    assert "PipelineCache(pipeline=StableDiffusionControlNetPipeline" in repr(state)


def test_a_patch_on_top_is_not_clobbered():
    pipe, _ = PIPELINES["sd"]()
    pristine = fingerprint(pipe.unet)
    tiec_diffusers.enable(pipe)
    theirs = pipe.unet.forward
    pipe.unet.forward = lambda *a, **k: theirs(*a, **k)
    with pytest.raises(Exception, match="forward was replaced after tiec patched it"):
        tiec_diffusers.disable(pipe)
    pipe.unet.forward = theirs
    tiec_diffusers.disable(pipe)
    assert fingerprint(pipe.unet) == pristine


def test_unsupported_pipelines_and_options():
    class NotAPipeline:
        unet = torch.nn.Linear(1, 1)

    with pytest.raises(NotImplementedError, match="NotAPipeline is not supported: tiec patches a UNet2DConditionModel"):
        tiec_diffusers.enable(NotAPipeline())
    pipe, _ = PIPELINES["sd"]()
    with pytest.raises(ValueError, match="coordinate 'sigma' is unknown"):
        tiec_diffusers.enable(pipe, coordinate="sigma")
    with pytest.raises(ValueError, match=r"decoder_start must be an int in \[0, 3\]"):
        tiec_diffusers.enable(pipe, decoder_start=7)
    assert not tiec_diffusers.is_enabled(pipe)
    with tiec_diffusers.cached(pipe, coordinate="log_sigma", decoder_start=1, keys=2) as state:
        images(pipe, PIPELINES["sd"]()[1](), steps=4)
        assert state.model.encoder_calls == 2
