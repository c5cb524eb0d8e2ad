"""``tiec generate``: the main job on the shipped demo DiT, and one test per bad input."""

import json
import subprocess
import sys

import pytest
import torch

from tiec.cli import main


def run_cli(*argv):
    return subprocess.run([sys.executable, "-m", "tiec", *argv], capture_output=True, text=True, timeout=300)


def test_generate_with_defaults_writes_a_grid_a_record_and_recognisable_digits(tmp_path):
    out = tmp_path / "run"
    result = run_cli("generate", "--out", str(out), "--compare")
    assert result.returncode == 0, result.stderr
    assert "speed-up" in result.stdout and str(out / "grid.png") in result.stdout
    record = json.loads((out / "record.json").read_text())
    for field in ("model", "steps", "scheduler", "keys", "key_steps", "policy", "seed", "encoder_calls",
                  "decoder_calls", "macs", "seconds", "class_labels", "compare"):
        assert field in record, field
    assert record["class_labels"] == list(range(10)) and record["steps"] == 50
    # the shipped calibrated configuration (lookahead-accept may encode once more than it has keys)
    assert record["config"].endswith("calibrated-ddim.json")
    assert len(record["key_steps"]) <= record["encoder_calls"] < record["decoder_calls"] == 50
    assert 0 < record["compare"]["mac_ratio"] < 1
    assert (out / "grid.png").stat().st_size > 0
    assert not list(out.glob("*.part"))


def test_samples_are_classified_as_the_requested_class():
    from tiec.demo import load
    from tiec.demo.sampling import sample_digits
    from tiec.generate import DEMO_DEFAULTS

    demo, classifier = load("dit-digits"), load("digits-classifier")
    labels = [i % 10 for i in range(50)]
    result = sample_digits(demo, labels, keys=DEMO_DEFAULTS["keys"], policy=DEMO_DEFAULTS["policy"],
                           guidance_scale=DEMO_DEFAULTS["guidance_scale"], seed=1234)
    with torch.no_grad():
        predicted = classifier(result.sample.clamp(-1, 1)).argmax(1)
    accuracy = (predicted == torch.tensor(labels)).float().mean().item()
    assert accuracy >= 0.9, accuracy


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--scheduler", "karras"], "argument --scheduler: invalid choice: 'karras'"),
        (["--policy", "cubic"], "--policy 'cubic': policy 'cubic' is unknown"),
        (["--keys", "0,3,99"], "--keys '0,3,99': key indices [99] are out of range for num_steps=50"),
        (["--keys", "1,2"], "--keys '1,2': step 0 must be a key"),
        (["--model", "no/such/folder"], "--model 'no/such/folder' is neither a demo model"),
        (["--class-labels", "3,12"], "--class-labels '3,12': labels must be in [0, 9], got [12]"),
        (["--class-labels", "three"], "is not a comma-separated list of integers"),
        (["--steps", "0"], "--steps must be >= 1, got 0"),
        (["--num-images", "-1"], "--num-images must be >= 1, got -1"),
        (["--dtype", "int8"], "argument --dtype: invalid choice: 'int8'"),
        (["--device", "gpu0"], "--device 'gpu0' is not a torch device; use cpu, cuda, cuda:1 or mps"),
        (["--prompt", "a cat"], "--prompt does not apply to the class-conditional demo model 'dit-digits'"),
        (["--decoder-start", "1"], "--decoder-start does not apply to the demo model 'dit-digits'"),
        (["--model", "unet-digits", "--encoder-blocks", "2"],
         "--encoder-blocks does not apply to the demo model 'unet-digits'; use --decoder-start"),
    ],
)
def test_bad_input_is_one_line_with_exit_code_2(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--out", str(tmp_path / "out"), "--quiet", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert message in err, err
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "record.json").exists()


def test_the_demo_unet_with_a_deeper_decoder_in_bfloat16(tmp_path):
    assert main(["generate", "--model", "unet-digits", "--class-labels", "4,2", "--steps", "8", "--decoder-start", "1",
                 "--dtype", "bfloat16", "--out", str(tmp_path), "--quiet", "--compare"]) == 0
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["model"] == "unet-digits" and record["dtype"] == "bfloat16" and record["decoder_start"] == 1
    assert record["key_steps"] == [0, 3, 6] and (record["encoder_calls"], record["decoder_calls"]) == (3, 8)
    assert 0 < record["compare"]["mac_ratio"] < 1
    files = [entry["file"] for entry in json.loads((tmp_path / "index.json").read_text())["images"]]
    assert files == ["images/00000.png", "images/00001.png"]
    assert all((tmp_path / name).stat().st_size > 0 for name in files)


def test_the_demo_unet_with_a_shallow_branch_from_a_config(tmp_path):
    from tiec import TiecConfig

    config = TiecConfig(keys="every:3", policy="linear", coordinate="step", branch_depth=1, steps=8,
                        scheduler="dpm").save(tmp_path / "branch.json")
    out = tmp_path / "run"
    assert main(["generate", "--model", "unet-digits", "--class-labels", "4,2", "--steps", "8", "--scheduler", "dpm",
                 "--config", str(config), "--out", str(out), "--quiet", "--compare"]) == 0
    record = json.loads((out / "record.json").read_text())
    assert record["branch_depth"] == 1 and record["decoder_start"] is None
    assert (record["encoder_calls"], record["decoder_calls"]) == (3, 8)
    assert 0 < record["compare"]["mac_ratio"] < 1 and record["compare"]["psnr_db"] > 20
    with pytest.raises(ValueError, match="branch_depth must be >= 1 and comes instead of decoder_start"):
        TiecConfig(keys="every:3", decoder_start=1, branch_depth=1)


def test_generate_is_the_default_command(tmp_path):
    assert main(["--steps", "2", "--class-labels", "0", "--out", str(tmp_path), "--quiet", "--no-count-macs"]) == 0
    assert json.loads((tmp_path / "record.json").read_text())["macs"] is None


def test_an_output_path_that_cannot_be_written(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--out", str(blocker / "sub"), "--quiet"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"--out '{blocker / 'sub'}' cannot be written" in err and "Traceback" not in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_a_device_this_machine_lacks(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--device", "cuda", "--out", str(tmp_path / "out"), "--quiet"])
    assert exit_info.value.code == 2
    assert "--device 'cuda': this machine has no CUDA device torch can use; use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("model", ["dit-digits", "unet-digits"])
def test_a_demo_model_defaults_to_its_shipped_calibrated_configuration(tmp_path, model):
    from tiec import load_config
    from tiec.demo import calibrated_config

    path = calibrated_config(model, "ddim", 50)
    assert path is not None, "the package ships a calibrated configuration for DDIM 50 steps"
    config = load_config(path)
    assert config.provenance["command"].startswith(f"tiec calibrate --model {model}")
    argv = ["generate", "--model", model, "--class-labels", "3", "--quiet", "--no-count-macs"]
    assert main([*argv, "--out", str(tmp_path / "calibrated")]) == 0
    record = json.loads((tmp_path / "calibrated" / "record.json").read_text())
    assert record["config"] == str(path) and record["policy"] == config.policy
    assert record["key_steps"] == [int(k) for k in config.keys.split(",")]
    for other in (["--steps", "20"], ["--keys", "every:2"]):  # another step count, or any caching option
        assert main([*argv, *other, "--out", str(tmp_path / other[0])]) == 0
        record = json.loads((tmp_path / other[0] / "record.json").read_text())
        assert record["config"] is None and record["policy"] == "linear"
    assert record["key_steps"] == list(range(0, 50, 2))
