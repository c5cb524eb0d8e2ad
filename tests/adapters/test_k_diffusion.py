import bisect
import types

import pytest
import torch

K = pytest.importorskip("k_diffusion", reason="the k-diffusion extra is not installed: pip install 'tiec[k-diffusion]'")

from tiec.adapters.k_diffusion import KDiffusionDenoiser  # noqa: E402
from toy import make_toy  # noqa: E402

SAMPLERS = ["euler", "euler_ancestral", "heun", "dpm_2", "dpm_2_ancestral", "lms", "dpm_fast", "dpm_adaptive",
            "dpmpp_2s_ancestral", "dpmpp_sde", "dpmpp_2m", "dpmpp_2m_sde", "dpmpp_3m_sde"]
ADAPTIVE = {"dpm_fast", "dpm_adaptive"}
SCHEDULES = ["karras", "exponential", "native"]
ALPHAS = torch.cumprod(1 - torch.linspace(1e-4, 0.02, 1000), 0)
STEPS = 6


@pytest.fixture(scope="module")
def model():
    return make_toy(num_classes=10)


def sigmas_for(name, denoiser, n=STEPS):
    lo, hi = float(denoiser.sigma_min), float(denoiser.sigma_max)
    if name == "karras":
        return K.sampling.get_sigmas_karras(n, lo, hi)
    if name == "exponential":
        return K.sampling.get_sigmas_exponential(n, lo, hi)
    return denoiser.get_sigmas(n)


def run(sampler, denoiser, sigmas, batch=2, seed=0, extra_args=None):
    torch.manual_seed(seed)
    x = torch.randn(batch, 2, 8, 8) * sigmas[0]
    fn = getattr(K.sampling, f"sample_{sampler}")
    extra_args = extra_args or {}
    if sampler == "dpm_fast":
        return fn(denoiser, x, float(sigmas[-2]), float(sigmas[0]), len(sigmas) - 1, extra_args=extra_args, disable=True)
    if sampler == "dpm_adaptive":
        return fn(denoiser, x, float(sigmas[-2]), float(sigmas[0]), extra_args=extra_args, disable=True, rtol=0.2, atol=0.05)
    return fn(denoiser, x, sigmas, extra_args=extra_args, disable=True)


class CFGDenoiser(torch.nn.Module):
    """Classifier-free guidance the way k-diffusion users write it (the reference to match)."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        self.sigma_min, self.sigma_max, self.get_sigmas = inner.sigma_min, inner.sigma_max, inner.get_sigmas

    def forward(self, x, sigma, cond, uncond=None, cond_scale=None):
        if uncond is None:
            return self.inner(x, sigma, cond=cond)
        x_in = torch.cat([x] * 2)
        sigma_in = torch.cat([sigma] * 2)
        cond_in = torch.cat([uncond, cond])
        u, c = self.inner(x_in, sigma_in, cond=cond_in).chunk(2)
        return u + (c - u) * cond_scale


def reference(model, prediction="eps"):
    def forward(x, t, cond=None):
        return model(x, t, class_labels=cond)

    if prediction == "v":
        return CFGDenoiser(K.external.DiscreteVDDPMDenoiser(forward, ALPHAS, quantize=False))
    return CFGDenoiser(K.external.DiscreteEpsDDPMDenoiser(forward, ALPHAS, quantize=False))


def ours(model, sampler=None, sigmas=None, **kwargs):
    denoiser = KDiffusionDenoiser(model, ALPHAS, cond_key="class_labels", **kwargs)
    denoiser.set_sigmas(None if sampler in ADAPTIVE else sigmas)
    return denoiser


def guidance(batch=2):
    return {"cond": torch.arange(batch) % 10, "uncond": torch.full((batch,), 10), "cond_scale": 3.0}


@torch.no_grad()
@pytest.mark.parametrize("schedule", SCHEDULES)
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_every_sigma_a_key_equals_k_diffusions_own_denoiser(model, sampler, schedule):
    ref = reference(model)
    sigmas = sigmas_for(schedule, ref)
    expected = run(sampler, ref, sigmas, extra_args=guidance())
    got = run(sampler, ours(model, sampler, sigmas), sigmas, extra_args=guidance())
    assert torch.equal(got, expected)


@torch.no_grad()
@pytest.mark.parametrize("sampler", ["euler", "heun", "dpmpp_2m"])
def test_v_prediction_equals_k_diffusions_v_denoiser(model, sampler):
    ref = reference(model, "v")
    sigmas = sigmas_for("karras", ref)
    expected = run(sampler, ref, sigmas, extra_args={"cond": torch.tensor([1, 2])})
    got = run(sampler, ours(model, sampler, sigmas, prediction="v"), sigmas, extra_args={"cond": torch.tensor([1, 2])})
    assert torch.equal(got, expected)


@torch.no_grad()
def test_learned_sigma_reads_the_first_half_like_openai_denoiser(model):
    class LearnedSigma:
        def encode(self, x, t, class_labels=None):
            return model.encode(x, t, class_labels=class_labels)

        def decode(self, features, t, class_labels=None):
            out = model.decode(features, t, class_labels=class_labels)
            return torch.cat([out, out.exp()], dim=1)  # eps, then a "variance" half

    diffusion = types.SimpleNamespace(alphas_cumprod=ALPHAS.numpy())
    ref = CFGDenoiser(K.external.OpenAIDenoiser(lambda x, t, cond=None: torch.cat(
        [model(x, t, class_labels=cond), model(x, t, class_labels=cond).exp()], dim=1), diffusion))
    sigmas = sigmas_for("karras", ref)
    wrapper = KDiffusionDenoiser(LearnedSigma(), ALPHAS, prediction="eps_learned_sigma", cond_key="class_labels")
    wrapper.set_sigmas(sigmas)
    extra = {"cond": torch.tensor([4, 5])}
    assert torch.equal(run("euler", wrapper, sigmas, extra_args=extra), run("euler", ref, sigmas, extra_args=extra))


class Spy:
    """Records the model time of every encoder call."""

    def __init__(self, model):
        self.model, self.encoded, self.calls = model, [], 0

    def encode(self, x, t, **cond):
        self.encoded.append(float(torch.as_tensor(t).reshape(-1)[0]))
        return self.model.encode(x, t, **cond)

    def decode(self, features, t, **cond):
        self.calls += 1
        return self.model.decode(features, t, **cond)


@torch.no_grad()
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_sparse_keys_encode_only_at_key_steps(model, sampler):
    spy = Spy(model)
    denoiser = KDiffusionDenoiser(spy, ALPHAS, cond_key="class_labels", keys="every:2")
    sigmas = sigmas_for("karras", denoiser, n=8)
    denoiser.set_sigmas(None if sampler in ADAPTIVE else sigmas)
    out = run(sampler, denoiser, sigmas, extra_args=guidance())
    assert torch.isfinite(out).all()
    assert denoiser.encoder_calls == len(spy.encoded) < spy.calls == denoiser.decoder_calls
    if sampler in ADAPTIVE:
        return
    times = denoiser.sigma_to_t(sigmas[:-1]).tolist()  # decreasing model times, one per step
    ascending = [-t for t in times]
    for t in spy.encoded:  # each encoder call lies in a key step (even index), or is a sub-step of one
        match = [i for i, ref in enumerate(times) if abs(ref - t) <= 1e-5 * max(1.0, abs(ref))]
        step = match[0] if match else bisect.bisect_right(ascending, -t) - 1
        assert step % 2 == 0, (t, step)


@torch.no_grad()
def test_one_wrapper_for_consecutive_runs_equals_fresh_wrappers(model):
    shared = KDiffusionDenoiser(model, ALPHAS, cond_key="class_labels", keys=2)
    outputs = []
    for sampler, n, batch in (("dpmpp_2m", 6, 1), ("heun", 5, 3), ("dpm_fast", 5, 2)):
        sigmas = sigmas_for("karras", shared, n=n)
        shared.set_sigmas(None if sampler in ADAPTIVE else sigmas)
        outputs.append(run(sampler, shared, sigmas, batch=batch, extra_args=guidance(batch)))
    for (sampler, n, batch), got in zip((("dpmpp_2m", 6, 1), ("heun", 5, 3), ("dpm_fast", 5, 2)), outputs):
        fresh = KDiffusionDenoiser(model, ALPHAS, cond_key="class_labels", keys=2)
        sigmas = sigmas_for("karras", fresh, n=n)
        fresh.set_sigmas(None if sampler in ADAPTIVE else sigmas)
        assert torch.equal(run(sampler, fresh, sigmas, batch=batch, extra_args=guidance(batch)), got)


@torch.no_grad()
def test_separate_cond_and_uncond_calls_get_separate_streams(model):
    def separate_cfg(inner):
        def denoise(x, sigma, cond, uncond, cond_scale):
            u = inner(x, sigma, cond=uncond)
            c = inner(x, sigma, cond=cond)
            return u + (c - u) * cond_scale
        return denoise

    sigmas = sigmas_for("karras", reference(model))
    extra = guidance()
    expected = run("euler", separate_cfg(reference(model)), sigmas, extra_args=extra)
    exact = ours(model, "euler", sigmas)
    assert torch.equal(run("euler", separate_cfg(exact), sigmas, extra_args=extra), expected)
    sparse = ours(model, "euler", sigmas, keys=3)
    run("euler", separate_cfg(sparse), sigmas, extra_args=extra)
    assert len(sparse.streams) == 2
    assert sparse.encoder_calls == 2 * 2  # keys at steps 0 and 3, in each stream


def test_bad_arguments(model):
    with pytest.raises(ValueError, match="prediction 'x0' is unknown"):
        KDiffusionDenoiser(model, ALPHAS, prediction="x0")
    with pytest.raises(ValueError, match="coordinate 'sigma' is unknown"):
        KDiffusionDenoiser(model, ALPHAS, coordinate="sigma")
    with pytest.raises(TypeError, match="alphas_cumprod must be a 1-D tensor"):
        KDiffusionDenoiser(model, [0.5])
    denoiser = KDiffusionDenoiser(model, ALPHAS, cond_key="class_labels")
    with pytest.raises(ValueError, match=r"guidance needs cond, uncond and cond_scale .* missing \['uncond'\]"):
        denoiser(torch.zeros(1, 2, 8, 8), torch.ones(1), cond=torch.tensor([1]), cond_scale=2.0)
    with pytest.raises(ValueError, match="at least one positive sigma"):
        denoiser.set_sigmas([0.0])
    with torch.no_grad():
        assert denoiser(torch.zeros(1, 2, 8, 8), torch.ones(1), cond=torch.tensor([1])).shape == (1, 2, 8, 8)


@pytest.mark.parametrize("sampler", ["euler", "heun", "dpm_2"])
@torch.no_grad()
def test_churn_on_a_schedule_that_starts_below_sigma_max_is_exact(model, sampler):
    """img2img-style: a Karras schedule with its first steps dropped; churn evaluates just above its
    first sigma, which belongs to the first step (issue #18, item 3)."""
    ref = reference(model)
    sigmas = sigmas_for("karras", ref, n=10)[4:]
    fn = getattr(K.sampling, f"sample_{sampler}")

    def sample(denoiser):
        torch.manual_seed(3)
        x = torch.randn(2, 2, 8, 8) * sigmas[0]
        return fn(denoiser, x, sigmas, extra_args={"cond": torch.arange(2)}, disable=True, s_churn=1.0)

    expected = sample(ref)
    denoiser = ours(model, sampler, sigmas)
    assert torch.equal(sample(denoiser), expected)
    cached = ours(model, sampler, sigmas, keys="every:2")
    assert torch.isfinite(sample(cached)).all() and cached.encoder_calls < cached.decoder_calls
