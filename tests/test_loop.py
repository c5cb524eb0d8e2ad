import math

import pytest
import torch
from diffusers import (
    DDIMScheduler,
    DDPMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
)
from toy import CountingSplit, make_toy

import tiec
from tiec import CachedModel, NoiseInjection, sample, scheduler_log_sigmas

SCHEDULERS = [
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerDiscreteScheduler,
    HeunDiscreteScheduler,
    UniPCMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    DDPMScheduler,
]
STEPS = 8


def noise(batch=2, seed=0):
    return torch.randn(batch, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


def step_kwargs(seed=1):
    return {"generator": torch.Generator().manual_seed(seed)}


def stochastic(scheduler_cls):
    return scheduler_cls in (EulerAncestralDiscreteScheduler, DDPMScheduler)


def reference_loop(model, scheduler, x_T, steps, *, cond=None, guidance=None, uncond=None,
                   injection=None, step_kw=None):
    """The plain loop of a diffusers pipeline, written out."""
    cond, step_kw = cond or {}, step_kw or {}
    scheduler.set_timesteps(steps)
    x = x_T * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        x_in = scheduler.scale_model_input(x, t)
        if guidance is None:
            out = model(x_in, t, **cond)
        else:
            both = {k: torch.cat([uncond[k], v]) for k, v in cond.items()}
            out_uncond, out_cond = model(torch.cat([x_in, x_in]), t, **both).chunk(2)
            out = out_uncond + guidance * (out_cond - out_uncond)
        if injection is not None and float(t) < injection.t_max:
            x = x + injection.alpha * x_T
        x = scheduler.step(out, t, x, **step_kw).prev_sample
    return x


@pytest.fixture(scope="module")
def model():
    return make_toy()


@pytest.fixture(scope="module")
def conditional():
    return make_toy(seed=1, num_classes=10)


def test_split_reproduces_forward_bit_for_bit(model, conditional):
    x, t = noise(), torch.tensor(321)
    with torch.no_grad():
        assert torch.equal(model.decode(model.encode(x, t), t), model(x, t))
        labels = torch.tensor([3, 7])
        got = conditional.decode(conditional.encode(x, t, class_labels=labels), t, class_labels=labels)
        assert torch.equal(got, conditional(x, t, class_labels=labels))


@pytest.mark.parametrize("scheduler_cls", SCHEDULERS, ids=lambda c: c.__name__)
@torch.no_grad()
def test_all_keys_equal_the_plain_loop_bit_for_bit(model, scheduler_cls):
    kw = step_kwargs() if stochastic(scheduler_cls) else {}
    expected = reference_loop(model, scheduler_cls(), noise(), STEPS, step_kw=kw)
    kw = step_kwargs() if stochastic(scheduler_cls) else {}
    result = sample(model, scheduler_cls(), noise(), num_inference_steps=STEPS, step_kwargs=kw)
    assert torch.equal(result.sample, expected)
    assert result.encoder_calls == result.decoder_calls == result.num_steps


@pytest.mark.parametrize("scheduler_cls", SCHEDULERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("policy", ["hold", "linear", "polynomial(2)"])
@torch.no_grad()
def test_sparse_keys_run_the_encoder_only_at_keys(model, scheduler_cls, policy):
    split = CountingSplit(model)
    kw = step_kwargs() if stochastic(scheduler_cls) else {}
    result = sample(split, scheduler_cls(), noise(), num_inference_steps=STEPS, keys="every:3",
                    policy=policy, step_kwargs=kw)
    n = result.num_steps
    assert result.key_steps == tuple(range(0, n, 3))
    assert split.encode_calls == result.encoder_calls == len(result.key_steps)
    assert split.decode_calls == result.decoder_calls == n
    assert torch.isfinite(result.sample).all()
    kw = step_kwargs() if stochastic(scheduler_cls) else {}
    full = sample(model, scheduler_cls(), noise(), num_inference_steps=STEPS, step_kwargs=kw)
    assert not torch.equal(result.sample, full.sample)  # the cache was really used


@pytest.mark.parametrize("scheduler_cls", SCHEDULERS, ids=lambda c: c.__name__)
@pytest.mark.parametrize("policy", ["hold", "linear"])
@torch.no_grad()
def test_parallel_decoding_equals_sequential(model, scheduler_cls, policy):
    runs = []
    for parallel in (False, True):
        split = CountingSplit(model)
        kw = step_kwargs() if stochastic(scheduler_cls) else {}
        result = sample(split, scheduler_cls(), noise(), num_inference_steps=STEPS, keys="every:4",
                        policy=policy, parallel_decode=parallel, max_parallel=2, step_kwargs=kw)
        runs.append((result, split))
    (seq, seq_split), (par, par_split) = runs
    torch.testing.assert_close(par.sample, seq.sample, rtol=1e-5, atol=1e-5)
    assert par.encoder_calls == seq.encoder_calls
    assert par.decoder_calls < seq.decoder_calls
    assert max(par_split.decode_batches) == 2 * 2  # two steps of batch 2 in one call, capped
    assert max(seq_split.decode_batches) == 2


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler], ids=lambda c: c.__name__)
@torch.no_grad()
def test_guidance_all_keys_equals_the_pipeline_loop(conditional, scheduler_cls):
    cond = {"class_labels": torch.tensor([1, 2])}
    uncond = {"class_labels": torch.tensor([10, 10])}
    expected = reference_loop(conditional, scheduler_cls(), noise(), STEPS, cond=cond, guidance=4.0,
                              uncond=uncond)
    result = sample(conditional, scheduler_cls(), noise(), num_inference_steps=STEPS, cond=cond,
                    guidance=4.0, uncond={"class_labels": torch.tensor([10])})
    assert torch.equal(result.sample, expected)


@torch.no_grad()
def test_guidance_caches_both_halves_and_decodes_them_in_parallel(conditional):
    cond = {"class_labels": torch.tensor([1, 2])}
    uncond = {"class_labels": torch.tensor([10, 10])}
    split = CountingSplit(conditional)
    seq = sample(split, DDIMScheduler(), noise(), num_inference_steps=STEPS, cond=cond, guidance=3.0,
                 uncond=uncond, keys=4)
    assert set(split.decode_batches) == {4}
    split = CountingSplit(conditional)
    par = sample(split, DDIMScheduler(), noise(), num_inference_steps=STEPS, cond=cond, guidance=3.0,
                 uncond=uncond, keys=4, parallel_decode=True)
    assert max(split.decode_batches) == 4 * 3
    torch.testing.assert_close(par.sample, seq.sample, rtol=1e-5, atol=1e-5)


@torch.no_grad()
def test_noise_injection_matches_the_reference(model):
    injection = NoiseInjection(alpha=0.01, t_max=500)
    expected = reference_loop(model, DDIMScheduler(), noise(), STEPS, injection=injection)
    got = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, noise_injection=injection)
    assert torch.equal(got.sample, expected)
    plain = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS)
    assert not torch.equal(got.sample, plain.sample)
    default = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, noise_injection=True)
    assert torch.equal(default.sample, reference_loop(model, DDIMScheduler(), noise(), STEPS,
                                                      injection=NoiseInjection()))


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler],
                         ids=lambda c: c.__name__)
@pytest.mark.parametrize("keys", ["every:2", "every:3", [0, 1, 5]])
@torch.no_grad()
def test_loop_and_cached_model_agree(model, scheduler_cls, keys):
    """Two implementations of the same decisions: tiec.sample and CachedModel in a plain loop."""
    scheduler = scheduler_cls()
    scheduler.set_timesteps(STEPS)
    cached = CachedModel(model, keys=keys, policy="linear", timesteps=scheduler.timesteps)
    expected = reference_loop(cached, scheduler_cls(), noise(), STEPS)
    got = sample(model, scheduler_cls(), noise(), num_inference_steps=STEPS, keys=keys, coordinate="t")
    assert torch.equal(got.sample, expected)
    assert cached.encoder_calls == got.encoder_calls


@torch.no_grad()
def test_heun_repeated_timesteps_with_sparse_keys(model):
    split = CountingSplit(model)
    result = sample(split, HeunDiscreteScheduler(), noise(), num_inference_steps=STEPS, keys=2,
                    policy="linear")
    assert result.num_steps == 2 * STEPS - 1
    assert split.encode_calls == len(range(0, result.num_steps, 2))
    assert torch.isfinite(result.sample).all()


@torch.no_grad()
def test_runs_do_not_influence_each_other(model):
    scheduler = DPMSolverMultistepScheduler()
    first = sample(model, scheduler, noise(), num_inference_steps=STEPS, keys=3)
    sample(model, scheduler, noise(batch=3, seed=5), num_inference_steps=5, keys=2, policy="hold")
    again = sample(model, scheduler, noise(), num_inference_steps=STEPS, keys=3)
    assert torch.equal(first.sample, again.sample)


@torch.no_grad()
def test_callback_sees_every_step(model):
    seen = []
    result = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, keys=3,
                    callback=lambda info: seen.append((info.index, info.is_key, info.sample.shape)))
    assert [i for i, _, _ in seen] == list(range(STEPS))
    assert [i for i, key, _ in seen if key] == list(result.key_steps)
    assert result.key_fraction == len(result.key_steps) / STEPS


@torch.no_grad()
def test_preset_timesteps_are_used_when_num_inference_steps_is_omitted(model):
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(6)
    assert sample(model, scheduler, noise()).num_steps == 6


@torch.no_grad()
def test_progress_bar(model, capsys):
    sample(model, DDIMScheduler(), noise(), num_inference_steps=3, progress=True)
    assert "3/3" in capsys.readouterr().err


def test_coordinates():
    euler = EulerDiscreteScheduler()
    euler.set_timesteps(5)
    # Euler places its fractional timesteps by interpolating σ linearly, tiec reads them back
    # through log σ: the two agree to a few 1e-6
    assert scheduler_log_sigmas(euler, euler.timesteps) == pytest.approx(
        [math.log(float(s)) for s in euler.sigmas[:5]], abs=1e-5)
    ddim = DDIMScheduler()
    ddim.set_timesteps(5)
    expected = [0.5 * math.log((1 - float(ddim.alphas_cumprod[t])) / float(ddim.alphas_cumprod[t]))
                for t in ddim.timesteps]
    assert scheduler_log_sigmas(ddim, ddim.timesteps) == pytest.approx(expected)
    assert scheduler_log_sigmas(object(), [3, 2]) is None


@torch.no_grad()
def test_coordinate_choice(model):
    # "auto" follows the policy: t for blending cached keys, log sigma for the lookahead's jump
    for policy, expected in (("linear", "t"), ("hold", "t"), ("polynomial(2)", "t"), ("lookahead", "log_sigma"),
                             ("lookahead-accept", "log_sigma")):
        result = sample(model, DDIMScheduler(), noise(), num_inference_steps=6, keys=3, policy=policy)
        assert result.coordinate == expected, policy
    for coordinate in ("t", "step", "log_sigma"):
        result = sample(model, DDIMScheduler(), noise(), num_inference_steps=6, keys=2, coordinate=coordinate)
        assert result.coordinate == coordinate

    class Bare:
        init_noise_sigma = 1.0
        timesteps = torch.tensor([3, 2, 1])

        def scale_model_input(self, x, t):
            return x

        def step(self, output, t, x):
            return type("Out", (), {"prev_sample": x - 0.1 * output})()

    assert sample(model, Bare(), noise()).coordinate == "t"
    with pytest.raises(ValueError, match="coordinate='log_sigma' needs a scheduler with `sigmas`"):
        sample(model, Bare(), noise(), coordinate="log_sigma")


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        (dict(keys=[0, 99]), ValueError, r"key indices \[99\] are out of range for num_steps=8"),
        (dict(keys=[1, 2]), ValueError, "step 0 must be a key"),
        (dict(policy="cubic"), ValueError, "policy 'cubic' is unknown"),
        (dict(policy="polynomial(0)"), ValueError, "degree must be >= 1"),
        (dict(guidance=2.0), ValueError, "guidance needs `uncond`"),
        (dict(uncond={}), ValueError, "uncond was given without `guidance`"),
        (dict(max_parallel=0), ValueError, "max_parallel must be an int >= 1, got 0"),
        (dict(coordinate="sigma"), ValueError, "coordinate 'sigma' is unknown"),
        (dict(noise_injection=0.5), TypeError, "noise_injection must be None, a bool or a NoiseInjection"),
    ],
)
@torch.no_grad()
def test_bad_arguments_raise_and_the_next_call_works(model, kwargs, error, match):
    scheduler = DDIMScheduler()
    with pytest.raises(error, match=match):
        sample(model, scheduler, noise(), num_inference_steps=STEPS, **kwargs)
    expected = reference_loop(model, DDIMScheduler(), noise(), STEPS)
    assert torch.equal(sample(model, scheduler, noise(), num_inference_steps=STEPS).sample, expected)


def test_bad_split_and_latents():
    with pytest.raises(TypeError, match="split must have encode\\(\\) and decode\\(\\), got int"):
        sample(3, DDIMScheduler(), noise())
    with pytest.raises(TypeError, match="latents must be a torch.Tensor, got list"):
        sample(make_toy(), DDIMScheduler(), [0.0])
    with pytest.raises(ValueError, match="NoiseInjection.alpha must be a finite number"):
        NoiseInjection(alpha=float("nan"))


def test_no_tensor_stays_reachable_after_a_run(model):
    import gc
    import weakref

    captured = []

    class Spy(CountingSplit):
        def encode(self, x, t, **cond):
            features = super().encode(x, t, **cond)
            captured.extend(weakref.ref(f) for f in features)
            return features

    with torch.no_grad():
        result = sample(Spy(model), DDIMScheduler(), noise(), num_inference_steps=STEPS, keys=3)
    del result
    gc.collect()
    assert captured and all(ref() is None for ref in captured)


def test_public_names_are_exported():
    for name in tiec.__all__:
        assert hasattr(tiec, name), name


@pytest.mark.parametrize("kind", ["ddim", "ddpm", "dpm", "euler", "euler-a", "heun", "unipc", "karras-euler", "sde"])
def test_log_sigma_of_every_evaluation_is_the_schedulers_own(kind):
    """From the time value, never from a position in ``sigmas`` (issue #18, item 2): DPM-Solver
    SDE's midpoints have no entry of their own in ``sigmas``."""
    from diffusers import DPMSolverSDEScheduler
    from tiec.adapters.diffusers import make_scheduler

    if kind == "sde":
        scheduler = DPMSolverSDEScheduler()
    elif kind == "karras-euler":
        scheduler = EulerDiscreteScheduler(use_karras_sigmas=True)
    else:
        scheduler = make_scheduler(kind, {})
    scheduler.set_timesteps(7)
    timesteps = list(scheduler.timesteps)
    got = scheduler_log_sigmas(scheduler, timesteps)
    alphas = scheduler.alphas_cumprod.double()
    if kind in ("ddim", "ddpm"):  # integer timesteps of the training schedule
        own = [0.5 * math.log((1 - float(alphas[int(t)])) / float(alphas[int(t)])) for t in timesteps]
    elif kind == "sde":  # keys at the scheduler's sigmas, midpoints at their geometric mean
        sigmas = [float(s) for s in scheduler.sigmas]
        own = []
        for i in range(len(timesteps)):
            step, mid = divmod(i, 2)
            low, high = sigmas[2 * step], sigmas[min(2 * step + 1, len(sigmas) - 1)]
            own.append(math.log(low) if not mid else 0.5 * (math.log(low) + math.log(high)))
    else:
        own = [math.log(float(s)) for s in scheduler.sigmas[: len(timesteps)]]
    assert got == pytest.approx(own, abs=2e-4)
