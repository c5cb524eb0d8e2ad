"""The demo models: loading by name, and the training commands on a reduced budget."""

import json

import pytest
import torch

from tiec.demo import MODELS, load
from tiec.demo.train import main as train


def test_load_by_name():
    demo = load("dit-digits")
    assert len(demo.transformer.transformer_blocks) == 8 and demo.null_label == 10
    assert demo.split().encoder_blocks == 8  # the whole stack cached by default
    assert demo.scheduler("dpm").config.num_train_timesteps == 1000
    with pytest.raises(ValueError, match=r"demo model 'sd-digits' is unknown; expected one of \['dit-digits', 'unet-digits'"):
        load("sd-digits")
    with pytest.raises(ValueError, match="scheduler 'lms' is unknown"):
        demo.scheduler("lms")
    assert set(MODELS) == {"dit-digits", "unet-digits", "digits-classifier"}


def test_shipped_training_records_match_the_documented_commands():
    from tiec.demo import WEIGHTS

    dit = json.loads((WEIGHTS / "dit-digits" / "train_log.json").read_text())
    assert (dit["steps"], dit["batch_size"], dit["seed"], dit["parameters"]) == (8000, 64, 0, 2815364)
    classifier = json.loads((WEIGHTS / "digits-classifier" / "train_log.json").read_text())
    assert classifier["steps"] == 1500 and classifier["held_out_accuracy"] >= 0.95


@pytest.mark.slow
@pytest.mark.parametrize("model", ["dit-digits", "unet-digits", "digits-classifier"])
def test_training_commands_run_on_a_reduced_budget(tmp_path, model, capsys):
    assert train([model, "--steps", "20", "--out", str(tmp_path), "--quiet"]) == 0
    record = json.loads((tmp_path / "train_log.json").read_text())
    assert record["steps"] == 20 and (tmp_path / "loss.png").stat().st_size > 0
    assert list(tmp_path.glob("*.safetensors"))
    if model == "dit-digits":
        from diffusers import DiTTransformer2DModel

        reloaded = DiTTransformer2DModel.from_pretrained(tmp_path)
        assert reloaded(torch.zeros(1, 1, 16, 16), torch.tensor([5]), class_labels=torch.tensor([3])).sample.shape == (1, 1, 16, 16)
    if model == "unet-digits":
        from diffusers import UNet2DConditionModel

        reloaded = UNet2DConditionModel.from_pretrained(tmp_path)
        assert reloaded.config.cross_attention_dim == 32 and (tmp_path / "class_tokens.safetensors").exists()


def test_the_demo_unet_draws_the_requested_digits_with_tiec():
    from tiec.demo.sampling import sample_digits
    from tiec.generate import DEMO_DEFAULTS

    demo, classifier = load("unet-digits"), load("digits-classifier")
    labels = [i % 10 for i in range(20)]
    result = sample_digits(demo, labels, keys=DEMO_DEFAULTS["keys"], policy=DEMO_DEFAULTS["policy"],
                           guidance_scale=DEMO_DEFAULTS["guidance_scale"], seed=77)
    assert result.encoder_calls == 17 and result.decoder_calls == 50
    with torch.no_grad():
        accuracy = (classifier(result.sample.clamp(-1, 1)).argmax(1) == torch.tensor(labels)).float().mean().item()
    assert accuracy >= 0.9, accuracy
