"""The lookahead policy: a predicted next key, so the steps between keys interpolate."""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler
from hypothesis import given
from hypothesis import strategies as st

from tiec import CachedModel, Lookahead, get_policy, sample
from tiec.lookahead import predict_latent
from toy import CountingSplit, make_toy

X0 = torch.linspace(-1, 1, 2 * 4 * 4).reshape(1, 2, 4, 4)  # the one image of the "data set"
NOISE = torch.randn(1, 2, 4, 4, generator=torch.Generator().manual_seed(0))


def vp(x0, eps, sigma):
    return (x0 + sigma * eps) / math.sqrt(1 + sigma**2)


sigmas = st.floats(0.01, 80.0)


@given(sigmas, sigmas)
def test_a_variance_preserving_jump_is_exact_for_an_exact_prediction(sigma_from, sigma_to):
    for prediction in ("epsilon", "sample", "v_prediction"):
        scheduler = DDIMScheduler(prediction_type=prediction)
        a = 1 / math.sqrt(1 + sigma_from**2)
        b = a * sigma_from
        output = {"epsilon": NOISE, "sample": X0, "v_prediction": a * NOISE - b * X0}[prediction]
        x_hat = predict_latent(scheduler, vp(X0, NOISE, sigma_from), output, sigma_from, sigma_to)
        torch.testing.assert_close(x_hat, vp(X0, NOISE, sigma_to), rtol=1e-4, atol=1e-4)


@given(sigmas, sigmas)
def test_a_sigma_space_jump_is_exact_for_an_exact_prediction(sigma_from, sigma_to):
    scheduler = EulerDiscreteScheduler()
    scheduler.set_timesteps(10)  # init_noise_sigma > 1: the latent is x0 + σ·eps
    x_hat = predict_latent(scheduler, X0 + sigma_from * NOISE, NOISE, sigma_from, sigma_to)
    torch.testing.assert_close(x_hat, X0 + sigma_to * NOISE, rtol=1e-4, atol=1e-4)


def test_extra_output_channels_are_a_learned_variance_and_dropped():
    x = vp(X0, NOISE, 2.0)
    with_variance = torch.cat([NOISE, torch.full_like(NOISE, 99.0)], dim=1)
    assert torch.equal(predict_latent(DDIMScheduler(), x, with_variance, 2.0, 1.0),
                       predict_latent(DDIMScheduler(), x, NOISE, 2.0, 1.0))


def test_unsupported_prediction_types_are_refused():
    scheduler = EulerDiscreteScheduler(prediction_type="v_prediction")
    scheduler.set_timesteps(10)
    with pytest.raises(ValueError, match="lookahead supports prediction_type"):
        predict_latent(scheduler, X0, NOISE, 2.0, 1.0)


class PerfectDenoiser:
    """The exact eps of a data set holding one image; the encoder is the identity on the input."""

    def __init__(self, scheduler):
        self.scheduler = scheduler

    def sigma(self, t):
        times = [float(v) for v in self.scheduler.timesteps]
        if isinstance(self.scheduler, EulerDiscreteScheduler):
            return float(self.scheduler.sigmas[times.index(float(t))])
        alpha = float(self.scheduler.alphas_cumprod[int(t)])
        return math.sqrt((1 - alpha) / alpha)

    def encode(self, x, t):
        return (x,)

    def decode(self, features, t):
        sigma = self.sigma(t)
        x = features[0] * math.sqrt(1 + sigma**2)  # both spaces: the model input is (x0 + σ·eps) / sqrt(1 + σ²)
        return (x - X0) / sigma


@pytest.mark.parametrize("scheduler_cls", [DDIMScheduler, EulerDiscreteScheduler, DPMSolverMultistepScheduler],
                         ids=lambda c: c.__name__)
@torch.no_grad()
def test_lookahead_beats_extrapolation_on_a_perfect_denoiser(scheduler_cls):
    def error(policy):
        scheduler = scheduler_cls()
        result = sample(PerfectDenoiser(scheduler), scheduler, NOISE, num_inference_steps=20, keys="every:5",
                        policy=policy)
        return (result.sample - reference).abs().max().item()

    scheduler = scheduler_cls()
    reference = sample(PerfectDenoiser(scheduler), scheduler, NOISE, num_inference_steps=20).sample
    assert (reference - X0).abs().max() < 0.05  # the full run lands on the one image
    best_causal = min(error("hold"), error("linear"))  # reuse or extrapolation past the newest key
    lookahead, accept = error("lookahead"), error("lookahead-accept")
    # Measured: DDIM 0.71/0.73, Euler 0.76/0.77, DPM-Solver++ 0.21/0.74 of the best causal error, which
    # is `linear` over t (the auto coordinate; over log sigma it was twice as large, and the ratios
    # 0.42/0.44, 0.35/0.35, 0.17/0.62).
    assert lookahead < 0.8 * best_causal and accept < 0.8 * best_causal, (best_causal, lookahead, accept)


@torch.no_grad()
def test_encoder_passes_of_both_variants():
    model = make_toy()
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(1))
    counts = {}
    for policy in ("lookahead", "lookahead-accept"):
        split = CountingSplit(model)
        result = sample(split, DDIMScheduler(), noise, num_inference_steps=10, keys="every:3", policy=policy)
        assert result.key_steps == (0, 3, 6, 9) and result.decoder_calls == 10
        assert result.encoder_calls == split.encode_calls
        counts[policy] = split.encode_calls
    # keys 0, 3, 6, 9: a predicted key for 3, 6 and 9; re-encoding adds the real latents at 3, 6, 9.
    assert counts == {"lookahead": 7, "lookahead-accept": 4}


@torch.no_grad()
def test_with_every_step_a_key_lookahead_is_the_plain_loop():
    model = make_toy()
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(2))
    plain = sample(model, DDIMScheduler(), noise, num_inference_steps=6)
    for policy in ("lookahead", "lookahead-accept"):
        result = sample(model, DDIMScheduler(), noise, num_inference_steps=6, policy=policy)
        assert torch.equal(result.sample, plain.sample) and result.encoder_calls == 6


def test_policy_names_and_the_cached_model_refusal():
    assert get_policy("lookahead") == Lookahead() and get_policy("Lookahead-Accept") == Lookahead(accept=True)
    with pytest.raises(TypeError, match="accept must be a bool"):
        Lookahead(accept="yes")
    with pytest.raises(ValueError, match="lookahead policy predicts latents inside tiec.sample"):
        CachedModel(make_toy(), policy="lookahead")
