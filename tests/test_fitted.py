"""Fitted blend weights: exact at keys, Lagrange on polynomial trajectories, time-keyed, refused elsewhere."""

import json
import re

import pytest
import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler
from toy import make_toy

import tiec
from tiec import CachedModel, Fitted, FittedStep, TiecConfig, fit_blend, lagrange_weights, load_config, sample

STEPS = 10


def noise(batch=3, seed=0):
    return torch.randn(batch, 2, 8, 8, generator=torch.Generator().manual_seed(seed))


def runner(model, scheduler_cls=DDIMScheduler, seed=0, steps=STEPS):
    x = noise(seed=seed)
    return lambda split, **kw: sample(split, scheduler_cls(), x, num_inference_steps=steps, coordinate="t", **kw).sample


class PolynomialFeatures:
    """Encoder features that are a polynomial of ``degree`` in t (whatever the input); the decoder reads them."""

    def __init__(self, degree, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.coefficients = [torch.randn(3, 2, 8, 8, generator=g, dtype=torch.float64) for _ in range(degree + 1)]

    def encode(self, x, t):
        s = float(t) / 1000
        return (sum(c * s**d for d, c in enumerate(self.coefficients)),)

    def decode(self, features, t):
        return features[0].float() * 0.1


@pytest.fixture(scope="module")
def model():
    return make_toy()


@pytest.fixture(scope="module")
def fitted(model):
    return fit_blend(runner(model), model, keys="every:3", rounds=2)


def test_a_fitted_policy_is_exact_at_keys_and_reads_its_weights_elsewhere():
    policy = Fitted((FittedStep(700.0, (900.0, 800.0), (-0.75, 1.75)), FittedStep(500.0, (800.0, 600.0), (0.5, 0.5))))
    assert policy.weights([900.0, 800.0], 800.0) == (0.0, 1.0)  # a key: its features bit for bit
    assert policy.weights([900.0, 800.0], 700.0) == (-0.75, 1.75)
    assert policy.weights([900.0, 800.0, 600.0], 500.0) == (0.0, 0.5, 0.5)  # older keys weigh nothing
    assert policy.keys_needed == 2 and policy.covers(700.0) and not policy.covers(650.0)
    assert Fitted.from_list(json.loads(json.dumps(policy.to_list()))) == policy
    assert repr(policy) == "Fitted(steps=2, keys_needed=2, times=700.0..500.0)" and str(policy) == "fitted"
    with pytest.raises(ValueError, match=re.escape("no entry for tau=650.0 (they cover 2 times from 700.0 to 500.0)")):
        policy.weights([900.0, 800.0], 650.0)
    with pytest.raises(ValueError, match=re.escape("blend keys at [[900.0, 800.0]], but the cache holds keys at "
                                                   "[900.0, 750.0]: they were fitted for another key schedule")):
        policy.weights([900.0, 750.0], 700.0)


@pytest.mark.parametrize("rows, message", [
    ("weights", "fitted weights must be a list"),
    ([{"tau": 1.0, "keys": [2.0]}], "weights[0] must be an object with 'tau', 'keys' and 'weights'"),
    ([{"tau": 1.0, "keys": [2.0], "weights": [1.0, 0.0]}], "weights[0]: a fitted step needs one weight per key"),
    ([{"tau": 2.0, "keys": [2.0, 3.0], "weights": [1.0, 0.0]}], "must be distinct and differ from its time"),
    ([{"tau": 1.0, "keys": [2.0], "weights": [float("nan")]}], "needs finite numbers"),
    ([], "needs the weights of at least one step"),
])
def test_malformed_weights_are_refused_naming_the_row(rows, message):
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        Fitted.from_list(rows)


@torch.no_grad()
def test_fitted_weights_reproduce_the_all_keys_run_exactly(model, fitted):
    plain = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, keys="all")
    with_weights = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, keys="all", policy=fitted.policy,
                          coordinate="t")
    assert torch.equal(with_weights.sample, plain.sample)


@pytest.mark.parametrize("degree, num_keys", [(1, 2), (2, 3)])
@torch.no_grad()
def test_fitting_a_polynomial_trajectory_recovers_the_lagrange_weights(degree, num_keys):
    split = PolynomialFeatures(degree)
    result = fit_blend(lambda s, **kw: sample(s, DDIMScheduler(), noise(), num_inference_steps=12, coordinate="t",
                                              **kw).sample, split, keys="every:4", num_keys=num_keys, ridge=0.0,
                       rounds=1)
    # the least-squares candidates: fitted to the reference's keys, and on-policy (the features here
    # do not depend on the trajectory, so both see the same keys)
    for label in ("teacher forcing", "linear, refit 1", "hold, refit 1"):
        checked = 0
        for step in result.candidates[result.labels.index(label)].steps:
            if len(step.knots) == num_keys:  # with fewer keys than the degree needs, no blend is exact
                assert step.weights == pytest.approx(lagrange_weights(step.knots, step.tau), abs=1e-7)
                checked += 1
        assert checked >= 2, label


@torch.no_grad()
def test_the_fit_is_deterministic_and_never_below_hold_or_linear(model, fitted):
    again = fit_blend(runner(model), model, keys="every:3", rounds=2)
    assert again.policy == fitted.policy and again.scores == fitted.scores
    table = fitted.table()
    assert list(table)[:3] == ["hold", "linear", "teacher forcing"]
    assert table[fitted.labels[fitted.best]] == max(table.values()) >= max(table["hold"], table["linear"])
    assert fitted.policy.keys_needed == 3 and len(fitted.policy.steps) == STEPS - 4  # keys 0, 3, 6, 9


@torch.no_grad()
def test_a_fitted_config_runs_everywhere_and_is_refused_at_other_times(tmp_path, model, fitted):
    config = TiecConfig(keys="every:3", policy="fitted", coordinate="t", steps=STEPS, weights=fitted.policy.to_list())
    path = config.save(tmp_path / "fitted.json")
    assert load_config(path) == config and load_config(path).blend_policy() == fitted.policy
    by_config = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, config=path)
    by_policy = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, keys="every:3",
                       policy=fitted.policy, coordinate="t")
    assert torch.equal(by_config.sample, by_policy.sample) and by_config.encoder_calls == 4

    # a loop that is not tiec's, through CachedModel: the same times, the same weights
    scheduler = DDIMScheduler()
    scheduler.set_timesteps(STEPS)
    cached = CachedModel(model, keys="every:3", policy=fitted.policy, timesteps=scheduler.timesteps)
    x = noise()
    for t in scheduler.timesteps:
        x = scheduler.step(cached(x, t), t, x).prev_sample
    assert torch.allclose(x, by_policy.sample, atol=1e-6) and cached.encoder_calls == 4

    with pytest.raises(ValueError, match="no entry for tau=.* another sampler, step count or key schedule"):
        sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS + 2, keys="every:3", policy=fitted.policy,
               coordinate="t")
    with pytest.raises(ValueError, match="fitted for another key schedule"):
        sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, keys="0,2,3,6,9", policy=fitted.policy,
               coordinate="t")
    with pytest.raises(ValueError, match="no entry for tau=.* another time coordinate than 't'"):
        sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, keys="every:3", policy=fitted.policy,
               coordinate="log_sigma")
    with pytest.raises(ValueError, match="no entry for tau"):  # DPM-Solver++'s times are not DDIM's
        sample(model, DPMSolverMultistepScheduler(), noise(), num_inference_steps=STEPS, keys="every:3",
               policy=fitted.policy, coordinate="t")
    after = sample(model, DDIMScheduler(), noise(), num_inference_steps=STEPS, config=path)  # nothing corrupted
    assert torch.equal(after.sample, by_config.sample)


def test_policy_fitted_by_name_and_bad_fit_arguments_are_refused(model):
    with pytest.raises(ValueError, match="policy 'fitted' needs its weights"):
        tiec.get_policy("fitted")
    run = runner(model)
    for kwargs, message in [({"num_keys": 1}, "num_keys must be an int >= 2"), ({"ridge": -1.0}, "ridge must be"),
                            ({"rounds": -1}, "rounds must be an int >= 0"), ({"keys": "all"}, "nothing to fit")]:
        with pytest.raises(ValueError, match=re.escape(message)):
            fit_blend(run, model, **{"keys": "every:3", **kwargs})


def linear_weights_for(timesteps, keys):
    """A fitted policy holding the linear weights (over the two newest of three keys) at ``timesteps``."""
    times = [float(t) for t in timesteps]
    key_steps = tiec.get_schedule(keys).key_steps(len(times))
    steps = []
    for i, tau in enumerate(times):
        if i not in key_steps:
            knots = tuple(times[k] for k in key_steps if k < i)[-3:]
            steps.append(FittedStep(tau, knots, tiec.Linear().weights(knots, tau)))
    return Fitted(tuple(steps))


@torch.no_grad()
def test_a_pipeline_runs_a_fitted_config_with_its_weights_and_refuses_other_steps():
    import tiny_pipelines

    import tiec.adapters.diffusers as tiec_diffusers

    pipe, inputs = tiny_pipelines.sd()

    def kwargs():
        return dict(inputs(), generator=torch.Generator().manual_seed(0))

    pipe.scheduler.set_timesteps(6)
    policy = linear_weights_for(pipe.scheduler.timesteps, "every:3")
    config = TiecConfig(keys="every:3", policy="fitted", coordinate="t", weights=policy.to_list())
    # the same weights as linear over t: the pipeline must give the linear run's latents bit for bit
    with tiec_diffusers.cached(pipe, keys="every:3", policy="linear", coordinate="t"):
        linear = pipe(num_inference_steps=6, **kwargs()).images
    with tiec_diffusers.cached(pipe, config=config) as cache:
        fitted = pipe(num_inference_steps=6, **kwargs()).images
        assert cache.model.policy == policy and cache.encoder_calls == 2
        with pytest.raises(ValueError, match="no entry for tau"):
            pipe(num_inference_steps=8, **kwargs())
        assert torch.equal(pipe(num_inference_steps=6, **kwargs()).images, fitted)  # the error left no state
    assert torch.equal(fitted, linear)
    # and other weights give other images: the pipeline reads the weights, not the policy's name
    held = Fitted(tuple(FittedStep(s.tau, s.knots, (0.0,) * (len(s.knots) - 1) + (1.0,)) for s in policy.steps))
    with tiec_diffusers.cached(pipe, config=TiecConfig(keys="every:3", policy="fitted", coordinate="t",
                                                       weights=held.to_list())):
        assert not torch.equal(pipe(num_inference_steps=6, **kwargs()).images, linear)


def test_tiec_fit_writes_a_config_that_generate_runs(tmp_path, capsys):
    from tiec.cli import main

    out = tmp_path / "fitted.json"
    assert main(["fit", "--model", "dit-digits", "--scheduler", "dpm", "--steps", "6", "--keys", "every:3",
                 "--calibration", "2", "--held-out", "2", "--rounds", "1", "--out", str(out), "--quiet"]) == 0
    config = load_config(out)
    assert (config.coordinate, config.steps, config.scheduler) == ("t", 6, "dpm")
    chosen = config.provenance["chosen"]
    assert config.provenance["held_out_psnr_db"][chosen] == max(config.provenance["held_out_psnr_db"].values())
    if chosen in ("hold", "linear"):  # no fit beat the fixed rule: the rule is written
        assert config.policy == chosen and config.weights is None
    else:
        assert config.policy == "fitted" and len(config.weights) == 4
    assert "tiec fit --model dit-digits" in config.provenance["command"]
    assert main(["generate", "--model", "dit-digits", "--scheduler", "dpm", "--steps", "6", "--config", str(out),
                 "--class-labels", "1", "--out", str(tmp_path / "images"), "--quiet"]) == 0
    record = json.loads((tmp_path / "images" / "record.json").read_text())
    assert record["policy"] == config.policy and record["encoder_calls"] == 2
    for argv, message in [(["--keys", "all"], "makes every one of the 6 steps a key"),
                          (["--decoder-start", "1"], "--decoder-start does not apply to the demo model"),
                          (["--ridge", "-1"], "--ridge -1.0 must be a finite number >= 0"),
                          (["--keys", "every:0"], "--keys 'every:0'")]:
        with pytest.raises(SystemExit) as exit_info:
            main(["fit", "--steps", "6", "--out", str(tmp_path / "x.json"), *argv])
        assert exit_info.value.code == 2 and message in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a fitted config at another step count
        main(["generate", "--model", "dit-digits", "--scheduler", "dpm", "--steps", "8", "--config", str(out),
              "--out", str(tmp_path / "other"), "--quiet"])
    assert "was made for 6 steps" in capsys.readouterr().err
    fitted = TiecConfig(keys="every:3", policy="fitted", coordinate="t", steps=6,
                        weights=[{"tau": 500.0, "keys": [900.0], "weights": [1.0]}]).save(tmp_path / "w.json")
    with pytest.raises(SystemExit):  # a configuration with weights is remade by tiec fit
        main(["generate", "--steps", "8", "--config", str(fitted), "--out", str(tmp_path / "w"), "--quiet"])
    assert "run with --steps 6, or fit for 8 steps" in capsys.readouterr().err


@pytest.mark.parametrize("model", ["dit-digits", "unet-digits"])
def test_generate_with_dpm_runs_the_shipped_dpm_configuration(model, tmp_path):
    from tiec.cli import main
    from tiec.demo import calibrated_config

    shipped = calibrated_config(model, "dpm", 20)
    assert shipped is not None and shipped.name == "calibrated-dpm.json"
    assert main(["generate", "--model", model, "--scheduler", "dpm", "--class-labels", "7",
                 "--out", str(tmp_path), "--quiet", "--no-count-macs"]) == 0  # DPM-Solver++: 20 steps by default
    record = json.loads((tmp_path / "record.json").read_text())
    config = load_config(shipped)
    assert record["steps"] == 20 and record["config"] == str(shipped) and record["policy"] == config.policy
    assert record["encoder_calls"] == len(tiec.get_schedule(config.keys).key_steps(20))


@pytest.mark.parametrize("chosen, policy", [("linear", "linear"), ("hold", "hold"), ("linear, refit 1", "fitted")])
def test_a_fit_that_no_refit_improves_writes_the_fixed_rule(monkeypatch, chosen, policy):
    import tiec.calibrate.fit as fit_module

    weights = Fitted((FittedStep(500.0, (900.0, 700.0), (-1.0, 2.0)),))
    labels = ("hold", "linear", "teacher forcing", "linear, refit 1")
    result = tiec.FitResult(labels, (1.0, 2.0, 0.5, 1.5), labels.index(chosen), (weights,) * 4)
    monkeypatch.setattr(fit_module, "fit_demo", lambda *args, **kwargs: result)
    config = fit_module.fitted_config("dit-digits", "ddim", 10, "every:3")
    assert config.policy == policy and (config.weights is None) == (policy != "fitted")
    assert config.provenance["chosen"] == chosen and config.coordinate == "t"
