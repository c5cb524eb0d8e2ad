"""The quality monitor (the blend's error at key steps) and flow-matching schedulers in ``tiec.sample``."""

import pytest
import torch
from diffusers import DDIMScheduler, FlowMatchEulerDiscreteScheduler
from toy import make_toy

from tiec import CachedModel, relative_error, sample

STEPS = 9


class AffineInTime:
    """Features that are affine in t and independent of x: ``linear`` predicts them exactly."""

    def encode(self, x, t):
        t = torch.as_tensor(t, dtype=torch.float64)
        return (torch.ones_like(x, dtype=torch.float64) * (3.0 + 0.01 * t),)

    def decode(self, features, t):
        return features[0].to(torch.float32) * 0


def noise(seed=0):
    return torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


def test_relative_error():
    a = (torch.tensor([3.0, 4.0]), torch.zeros(2))
    assert relative_error(a, a) == 0.0
    assert relative_error((torch.zeros(2), torch.zeros(2)), a) == 1.0
    assert relative_error((torch.tensor([3.0, 4.0]), torch.tensor([0.0, 5.0])), a) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="cannot be compared"):
        relative_error(a, a[:1])


@torch.no_grad()
def test_the_monitor_sees_what_the_blend_misses_at_keys():
    linear = sample(AffineInTime(), DDIMScheduler(), noise(), num_inference_steps=STEPS, keys="every:3",
                    policy="linear", coordinate="t")
    hold = sample(AffineInTime(), DDIMScheduler(), noise(), num_inference_steps=STEPS, keys="every:3",
                  policy="hold", coordinate="t")
    assert sorted(linear.key_errors) == sorted(hold.key_errors) == [3, 6]
    # after the second key, linear extrapolates affine features exactly; hold is off by the change
    assert linear.key_errors[6] == pytest.approx(0.0, abs=1e-12)
    assert hold.key_errors[6] > 0.01 and hold.key_error > linear.key_error


@torch.no_grad()
def test_the_monitor_reaches_the_callback_and_costs_nothing_with_every_step_a_key():
    model = make_toy()
    seen = {}
    result = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, keys="every:2",
                    callback=lambda info: seen.update({info.index: info.key_error}))
    assert {i: e for i, e in seen.items() if e is not None} == result.key_errors
    assert set(result.key_errors) == {2, 4, 6, 8} and all(e > 0 for e in result.key_errors.values())
    every = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS)
    assert every.key_errors == {} and every.key_error is None


@torch.no_grad()
def test_the_cached_model_monitors_too():
    model = CachedModel(make_toy(), keys="every:2", policy="hold")
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(6)
    model.set_timesteps(scheduler.timesteps)
    x = noise()
    for t in scheduler.timesteps:
        x = scheduler.step(model(x, t), t, x).prev_sample
    assert sorted(model.key_errors) == [2, 4]
    model.reset()
    assert model.key_errors == {}


@torch.no_grad()
def test_flow_matching_with_every_step_a_key_equals_the_plain_loop():
    model = make_toy()
    scheduler = FlowMatchEulerDiscreteScheduler()
    scheduler.set_timesteps(STEPS)
    x = noise()
    for t in scheduler.timesteps:  # a flow-matching pipeline's loop: no input scaling, no initial sigma
        x = scheduler.step(model(x, t), t, x).prev_sample
    result = sample(model, FlowMatchEulerDiscreteScheduler(), noise(), num_inference_steps=STEPS)
    assert torch.equal(result.sample, x)
    cached = sample(model, FlowMatchEulerDiscreteScheduler(), noise(), num_inference_steps=STEPS, keys="every:3")
    assert cached.encoder_calls == 3 and torch.isfinite(cached.sample).all()


def test_lookahead_refuses_a_flow_matching_scheduler():
    with pytest.raises(ValueError, match="has no init_noise_sigma .* use policy='linear'"):
        sample(make_toy(), FlowMatchEulerDiscreteScheduler(), noise(), num_inference_steps=STEPS, keys="every:3",
               policy="lookahead")
