import gc
import weakref

import pytest
import torch
from diffusers import DDIMScheduler, HeunDiscreteScheduler
from toy import CountingSplit, make_toy

from tiec import CachedModel, uniform


@pytest.fixture(scope="module")
def model():
    return make_toy()


def x(batch=2, seed=0):
    return torch.randn(batch, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


def run(model_fn, scheduler, steps, latents):
    scheduler.set_timesteps(steps)
    sample = latents * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        out = model_fn(scheduler.scale_model_input(sample, t), t)
        sample = scheduler.step(out, t, sample).prev_sample
    return sample


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, HeunDiscreteScheduler], ids=lambda c: c.__name__)
@torch.no_grad()
def test_every_step_a_key_equals_the_model(model, scheduler_cls):
    expected = run(model, scheduler_cls(), 6, x())
    cached = CachedModel(model)
    assert torch.equal(run(cached, scheduler_cls(), 6, x()), expected)
    assert cached.encoder_calls == cached.decoder_calls


@torch.no_grad()
def test_sparse_keys_from_timesteps(model):
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(10)
    split = CountingSplit(model)
    cached = CachedModel(split, keys="every:3", timesteps=scheduler.timesteps)
    run(cached, scheduler, 10, x())
    assert split.encode_calls == cached.encoder_calls == 4  # steps 0, 3, 6, 9
    assert split.decode_calls == 10
    assert cached.key_steps == (0, 3, 6, 9)


@torch.no_grad()
def test_heun_repeated_times_share_a_step(model):
    scheduler = HeunDiscreteScheduler()
    scheduler.set_timesteps(6)
    split = CountingSplit(model)
    cached = CachedModel(split, keys="every:2", timesteps=scheduler.timesteps)
    run(cached, scheduler, 6, x())
    # 6 distinct times, keys at 0, 2, 4; every call at a key time encodes (11 calls in all).
    times = scheduler.timesteps.tolist()
    distinct = sorted(set(times), reverse=True)
    key_times = {distinct[i] for i in (0, 2, 4)}
    assert split.encode_calls == sum(t in key_times for t in times)
    assert split.decode_calls == len(times)


@torch.no_grad()
def test_sub_steps_between_scheduled_times(model):
    split = CountingSplit(model)
    cached = CachedModel(split, keys=[0, 2], timesteps=[900, 600, 300, 100], coordinate="step")
    for t in (900, 750, 600, 450, 300, 200, 100):
        cached(x(), torch.tensor(float(t)))
    # 900 key, 750 sub-step of key step 0, 600/450 non-key, 300 key, 200 sub-step of key 2, 100 not.
    assert split.encode_calls == 4
    assert cached.cache.times == (2.0, 2.5)
    cached(x(), 950.0)  # above the schedule (a churn sampler's first step): a new run, its first step, a key
    assert split.encode_calls == 5 and cached.cache.times == (0.0,) and cached.trajectories == 2


@torch.no_grad()
def test_open_ended_counts_distinct_times(model):
    split = CountingSplit(model)
    cached = CachedModel(split, keys="every:2", policy="hold")
    for t in (9.0, 8.0, 8.0, 7.0, 6.0):
        cached(x(), t)
    assert split.encode_calls == 2  # 9 is step 0, both calls at 8 are step 1, 7 is step 2
    assert cached.cache.times == (7.0,)
    assert cached.key_steps is None  # open-ended: no step count to place keys in


@torch.no_grad()
def test_new_trajectory_when_time_goes_up_or_shape_changes(model):
    split = CountingSplit(model)
    cached = CachedModel(split, keys="every:100")
    cached(x(), 900.0)
    cached(x(), 800.0)
    assert split.encode_calls == 1
    cached(x(), 950.0)  # time jumps back up: a new run
    assert split.encode_calls == 2 and cached.trajectories == 2
    cached(x(batch=3), 900.0)  # batch change
    assert split.encode_calls == 3
    cached(x(batch=3)[..., :4, :4], 800.0)  # resolution change
    assert split.encode_calls == 4 and cached.trajectories == 4


@torch.no_grad()
def test_consecutive_runs_equal_fresh_models(model):
    shared = CachedModel(model, keys=3, policy="linear")
    first = run(shared, DDIMScheduler(), 10, x())
    second = run(shared, DDIMScheduler(), 7, x(batch=3, seed=4))
    assert torch.equal(first, run(CachedModel(model, keys=3), DDIMScheduler(), 10, x()))
    assert torch.equal(second, run(CachedModel(model, keys=3), DDIMScheduler(), 7, x(batch=3, seed=4)))


@torch.no_grad()
def test_mixed_times_in_one_batch_run_uncached(model):
    split = CountingSplit(model)
    cached = CachedModel(split, keys=100)
    out = cached(x(), torch.tensor([500.0, 400.0]))
    assert torch.equal(out, model(x(), torch.tensor([500.0, 400.0])))
    assert len(cached.cache) == 0 and split.encode_calls == 1


@torch.no_grad()
def test_reset_returns_the_fresh_state_and_releases_tensors(model):
    cached = CachedModel(model, keys=2)
    fresh = repr(cached)
    cached(x(), 900.0)
    ref = weakref.ref(cached.cache.get(900.0)[0])
    cached.reset()
    gc.collect()
    assert ref() is None
    assert repr(cached) == fresh
    assert cached.encoder_calls == cached.decoder_calls == cached.trajectories == 0


@torch.no_grad()
def test_coordinate_function(model):
    cached = CachedModel(model, keys=2, coordinate=lambda t: t / 1000)
    cached(x(), 900.0)
    assert cached.cache.times == (0.9,)


def test_errors_leave_the_model_working(model):
    with pytest.raises(ValueError, match="coordinate must be 't', 'step' or a function of t, got 'sigma'"):
        CachedModel(model, coordinate="sigma")
    with pytest.raises(TypeError, match="split must have encode"):
        CachedModel(object())
    with pytest.raises(ValueError, match="timesteps must decrease"):
        CachedModel(model, timesteps=[1, 2])
    with pytest.raises(ValueError, match="tail=2 needs the number of steps"):
        with torch.no_grad():
            CachedModel(model, keys=uniform(2, tail=2))(x(), 5.0)
    cached = CachedModel(model, keys=2)
    with pytest.raises(TypeError, match="t must be a number or a tensor, got str"):
        cached(x(), "5")
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        cached([1.0], 5.0)
    with torch.no_grad():
        assert torch.equal(cached(x(), 5.0), model(x(), 5.0))


def test_repr():
    cached = CachedModel(make_toy(), keys="every:2", policy="hold", timesteps=[3, 2, 1])
    assert repr(cached) == (
        "CachedModel(split=ToyUNet, keys='every:2', policy=Hold(), coordinate='t', 3 steps, "
        "encoder_calls=0, decoder_calls=0)"
    )


@torch.no_grad()
def test_a_midpoint_past_the_next_time_is_not_a_new_run(model):
    """Ancestral samplers evaluate a midpoint below the next scheduled time, then that time."""
    split = CountingSplit(model)
    cached = CachedModel(split, keys=[0, 1, 3], timesteps=[900, 600, 300, 100])
    for t in (900.0, 500.0, 600.0, 350.0, 300.0, 100.0):  # 500 lies in step 1, then 600 is step 1
        cached(x(), t)
    assert cached.trajectories == 1
    # keys: 900 (step 0); 500, 600 and 350 (all in key step 1; 600 drops the key at 500);
    # 300 is step 2, not a key; 100 (step 3)
    assert split.encode_calls == 5
    assert cached.cache.times == (350.0, 100.0)
    cached(x(), 900.0)  # back to step 0: a new run
    assert cached.trajectories == 2


@torch.no_grad()
def test_cache_streams_keep_conditionings_apart_and_share_the_timesteps(model):
    from tiec.streams import CacheStreams

    streams = CacheStreams(lambda: CachedModel(CountingSplit(model), keys="every:2", policy="hold"), max_streams=2)
    streams.set_timesteps([900, 600, 300])
    labels = [torch.tensor([1]), torch.tensor([2]), torch.tensor([1])]  # the first label again, same content
    for t in (900.0, 600.0, 300.0):
        for y in labels:
            streams.get({"y": y.clone()})(x(batch=1), t)
    assert len(streams) == 2 and [s.key_steps for s in streams.streams] == [(0, 2), (0, 2)]
    assert streams.encoder_calls == 6 and streams.decoder_calls == 9  # the first label's stream ran twice a step
    streams.get({"y": torch.tensor([3])})  # a third conditioning: the least recently used stream goes
    assert len(streams) == 2 and streams.encoder_calls == 6
    with pytest.raises(ValueError, match="max_streams must be an int >= 1, got 0"):
        CacheStreams(lambda: None, max_streams=0)
    streams.reset()
    assert len(streams) == 0 and streams.encoder_calls == 0 and streams.latest is None


class LabelSplit:
    """Elementwise, so a batch of two gives each half exactly what a batch of one gives it."""

    def encode(self, x, t, *, y):
        return (torch.sin(x * (1 + float(t) / 1000)) + y,)

    def decode(self, features, t, *, y):
        return features[0] * 0.5 - y


TIMES = [900.0, 700.0, 500.0, 300.0, 100.0]


@torch.no_grad()
def test_a_second_conditioning_at_the_same_step_is_refused_not_mixed():
    """Issue #18, item 1 for CachedModel: guidance's halves in separate calls made the second call
    replace the first's key features, and both decoded them at the next steps. Refused now, before
    anything changes; fails without the check (the second call returned without an error)."""
    sample, cond, uncond = torch.ones(1, 2), torch.ones(1, 2), torch.zeros(1, 2)
    model = CachedModel(LabelSplit(), keys="every:2", policy="linear", timesteps=TIMES)
    reference = CachedModel(LabelSplit(), keys="every:2", policy="linear", timesteps=TIMES)
    model(sample, 900.0, y=cond)
    with pytest.raises(ValueError, match=r"second call at t=900 on the same input with other conditioning \(y\)"
                                         r".*tiec.streams.CacheStreams"):
        model(sample, 900.0, y=uncond)
    reference(sample, 900.0, y=cond)
    for t in TIMES[1:4]:  # the refused call changed nothing
        assert torch.equal(model(sample, t, y=cond), reference(sample, t, y=cond))
    assert (model.encoder_calls, model.decoder_calls) == (reference.encoder_calls, reference.decoder_calls)
    model(sample, 300.0, y=cond.clone())  # the same conditioning again: a repeated evaluation
    model(sample + 1, 300.0, y=uncond)  # a new input at the same time: a second-order solver's correction
    inplace = CachedModel(LabelSplit(), keys="every:2", timesteps=TIMES)
    z = sample.clone()
    inplace(z, 900.0, y=cond)
    inplace(z.add_(1), 900.0, y=uncond)  # changed in place: a new input too
    exact = CachedModel(LabelSplit(), timesteps=TIMES)  # every step a key: nothing shared, nothing refused
    for t in TIMES:
        exact(sample, t, y=cond)
        exact(sample, t, y=uncond)


@pytest.mark.parametrize("policy", ["hold", "linear", "polynomial(2)"])
@torch.no_grad()
def test_streams_give_separate_calls_what_batched_guidance_gives_bit_for_bit(policy):
    """Issue #18's acceptance for CachedModel: on a model that is batch-invariant, guidance's
    halves in separate calls through CacheStreams equal one batched call, bit for bit."""
    from tiec.streams import CacheStreams

    def make():
        return CachedModel(LabelSplit(), keys="every:3", policy=policy)

    start, conds = torch.randn(1, 2, 4, generator=torch.Generator().manual_seed(1)), torch.randn(2, 2, 4)
    batched, streams = make(), CacheStreams(make)
    batched.set_timesteps(TIMES)
    streams.set_timesteps(TIMES)
    x_batched = x_separate = start
    for t in TIMES:
        uncond, cond = batched(torch.cat([x_batched, x_batched]), t, y=conds).chunk(2)
        x_batched = x_batched - 0.1 * (uncond + 3 * (cond - uncond))
        uncond, cond = (streams.get({"y": y})(x_separate, t, y=y) for y in conds.split(1))
        x_separate = x_separate - 0.1 * (uncond + 3 * (cond - uncond))
    assert torch.equal(x_separate, x_batched)
    assert batched.encoder_calls == 2 and streams.encoder_calls == 4 and len(streams) == 2
