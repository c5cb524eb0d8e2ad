"""TiecConfig: one file with keys, policy, coordinate and split depth, accepted by every entry point."""

import json
import re

import pytest
import torch
from diffusers import DDIMScheduler

import tiny_pipelines
from tiec import TiecConfig, load_config, sample
from tiec.cli import main
from toy import make_toy


def test_a_config_round_trips_through_its_file(tmp_path):
    config = TiecConfig(keys="0,1,4,9", policy="polynomial(2)", coordinate="log_sigma", encoder_blocks=6, steps=10,
                        provenance={"command": "tiec calibrate --quick", "psnr_db": 40.1})
    path = config.save(tmp_path / "c.json")
    assert load_config(path) == config and load_config(path).provenance["psnr_db"] == 40.1
    assert json.loads(path.read_text())["keys"] == "0,1,4,9"


@pytest.mark.parametrize(
    "data, message",
    [
        ({"policy": "linear"}, "needs 'keys'"),
        ({"keys": "every:3", "speed": 2}, "unknown configuration fields ['speed']"),
        ({"keys": "every:0"}, "every"),
        ({"keys": "every:3", "policy": "cubic"}, "policy 'cubic' is unknown"),
        ({"keys": "every:3", "coordinate": "sigma"}, "coordinate 'sigma' is unknown"),
        ({"keys": "0,3,12", "steps": 10}, "out of range"),
        ({"keys": "every:3", "encoder_blocks": -1}, "encoder_blocks must be a non-negative int"),
        ({"keys": 3}, "keys must be a schedule spec as text"),
        # fitted weights: only with policy "fitted", keyed by t, well-formed rows
        ({"keys": "every:3", "policy": "fitted"}, "weights come with policy 'fitted' and only with it"),
        ({"keys": "every:3", "policy": "linear", "weights": []}, "weights come with policy 'fitted' and only with it"),
        ({"keys": "every:3", "policy": "fitted", "coordinate": "log_sigma",
          "weights": [{"tau": 1.0, "keys": [2.0], "weights": [1.0]}]}, "coordinate must be 't'"),
        ({"keys": "every:3", "policy": "fitted", "coordinate": "t", "weights": [{"tau": 1.0}]}, "weights[0] must be"),
    ],
)
def test_bad_files_are_refused_naming_the_problem(tmp_path, data, message):
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(data))
    with pytest.raises((ValueError, TypeError), match=re.escape(message)):
        load_config(path)


def test_unreadable_and_invalid_json(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        load_config(tmp_path / "missing.json")
    (tmp_path / "broken.json").write_text("{keys")
    with pytest.raises(ValueError, match="is not valid JSON"):
        load_config(tmp_path / "broken.json")


@torch.no_grad()
def test_sample_with_a_config_equals_the_same_options(tmp_path):
    model = make_toy()
    noise = torch.randn(2, 2, 8, 8, generator=torch.Generator().manual_seed(0))
    config = TiecConfig(keys="0,2,5", policy="hold", coordinate="step")
    by_options = sample(model, DDIMScheduler(), noise, num_inference_steps=8, **config.sample_options())
    by_config = sample(model, DDIMScheduler(), noise, num_inference_steps=8, config=config.save(tmp_path / "c.json"))
    assert torch.equal(by_config.sample, by_options.sample) and by_config.key_steps == (0, 2, 5)
    assert by_config.coordinate == "step"
    with pytest.raises(ValueError, match="pass either config or keys, policy, not both"):
        sample(model, DDIMScheduler(), noise, num_inference_steps=8, config=config, keys="all", policy="linear")


def test_pipeline_enable_takes_keys_policy_and_depth_from_a_config():
    import tiec.adapters.diffusers as tiec_diffusers

    pipe, kwargs = tiny_pipelines.sd()
    config = TiecConfig(keys="every:2", policy="hold", coordinate="auto", decoder_start=1)
    with tiec_diffusers.cached(pipe, config=config) as cache:
        pipe(num_inference_steps=4, **kwargs())
        assert cache.model.split.decoder_start == 1 and cache.model.policy.name == "hold"
        assert cache.coordinate == "t" and cache.model.key_steps == (0, 2)  # "auto" for hold
        assert (cache.model.encoder_calls, cache.model.decoder_calls) == (2, 4)
    with pytest.raises(ValueError, match="pass either config or decoder_start"):
        tiec_diffusers.enable(pipe, config=config, decoder_start=0)
    assert not tiec_diffusers.is_enabled(pipe)


def test_pipeline_enable_takes_a_shallow_branch_from_a_config():
    import tiec.adapters.diffusers as tiec_diffusers

    pipe, kwargs = tiny_pipelines.sd()
    config = TiecConfig(keys="every:2", policy="linear", branch_depth=1)
    assert TiecConfig.from_dict(config.to_dict()) == config
    with tiec_diffusers.cached(pipe, config=config) as cache:
        pipe(num_inference_steps=4, **kwargs())
        assert cache.model.split.branch_depth == 1 and cache.model.split.fresh_features == 1
        assert (cache.model.encoder_calls, cache.model.decoder_calls) == (2, 4)
    with pytest.raises(ValueError, match="pass either config or branch_depth"):
        tiec_diffusers.enable(pipe, config=config, branch_depth=2)
    assert not tiec_diffusers.is_enabled(pipe)


def test_k_diffusion_wrapper_takes_a_config():
    pytest.importorskip("k_diffusion")
    from tiec.adapters.k_diffusion import KDiffusionDenoiser

    denoiser = KDiffusionDenoiser(make_toy(), torch.linspace(0.999, 0.01, 1000),
                                  config=TiecConfig(keys="every:4", policy="polynomial(2)", coordinate="t"))
    assert (denoiser.keys, denoiser.policy, denoiser.coordinate) == ("every:4", "polynomial(2)", "t")
    with pytest.raises(ValueError, match="pass either config or keys"):
        KDiffusionDenoiser(make_toy(), torch.linspace(0.999, 0.01, 1000), keys=2, config=TiecConfig(keys="all"))


def test_generate_with_a_config_file(tmp_path, capsys):
    config = TiecConfig(keys="0,2,5", policy="hold", coordinate="t").save(tmp_path / "c.json")
    out = tmp_path / "out"
    assert main(["generate", "--config", str(config), "--steps", "8", "--class-labels", "3", "--quiet",
                 "--no-count-macs", "--out", str(out)]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["key_steps"] == [0, 2, 5] and record["policy"] == "hold" and record["coordinate"] == "t"
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--config", str(config), "--keys", "all", "--out", str(tmp_path / "x"), "--quiet"])
    assert exit_info.value.code == 2
    assert "sets keys, policy and split depth; drop --keys" in capsys.readouterr().err
    unet_config = TiecConfig(keys="every:2", encoder_blocks=4).save(tmp_path / "dit.json")
    with pytest.raises(SystemExit):
        main(["generate", "--model", "unet-digits", "--config", str(unet_config), "--out", str(tmp_path / "y"),
              "--quiet"])
    assert "sets a split depth of the other architecture" in capsys.readouterr().err
