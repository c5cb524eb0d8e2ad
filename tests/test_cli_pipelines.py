"""``tiec generate --model PATH`` on tiny diffusers pipelines saved with ``save_pretrained``."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from saved_pipelines import SAVED

from tiec.cli import main


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipelines")
    return {name: build(root) for name, build in SAVED.items()}


def generate(path, out, *argv):
    assert main(["generate", "--model", str(path), "--out", str(out), "--quiet", *argv]) == 0
    record = json.loads((out / "record.json").read_text())
    record["images"] = [entry["file"] for entry in json.loads((out / "index.json").read_text())["images"]]
    return record


INPUTS = {"sd": ["--prompt", "a red cat", "--negative-prompt", "blurry"], "sdxl": ["--prompt", "a red cat"],
          "if-1": ["--prompt", "a red cat"], "dit": ["--class-labels", "1,7"]}
CLASSES = {"sd": "StableDiffusionPipeline", "sdxl": "StableDiffusionXLPipeline", "if-1": "IFPipeline",
           "dit": "DiTPipeline"}


@pytest.mark.parametrize("name", list(SAVED))
def test_generate_runs_a_saved_pipeline_and_records_it(saved, tmp_path, name):
    record = generate(saved[name], tmp_path, *INPUTS[name], "--steps", "6", "--keys", "every:2",
                      "--num-images", "2", "--compare")
    count = 4 if name == "dit" else 2
    assert record["pipeline"] == CLASSES[name] and record["model"] == str(saved[name])
    assert record["key_steps"] == [0, 2, 4] and record["steps"] == 6
    # Guidance doubles the batch but not the calls: one encoder call per key step, one decoder call per step.
    assert (record["encoder_calls"], record["decoder_calls"]) == (3, 6)
    assert (record["compare"]["encoder_calls"], record["compare"]["decoder_calls"]) == (6, 6)
    assert 0 < record["macs"] < record["compare"]["macs"] and 0 < record["compare"]["mac_ratio"] < 1
    assert len(record["images"]) == count
    for relative in record["images"]:
        with Image.open(tmp_path / relative) as image:
            assert image.size == (8, 8) and image.mode == "RGB"
    assert (tmp_path / "grid.png").is_file() and not list(tmp_path.rglob("*.part"))


def test_every_step_a_key_reproduces_the_pipeline_exactly(saved, tmp_path):
    from diffusers import StableDiffusionPipeline

    record = generate(saved["sd"], tmp_path, *INPUTS["sd"], "--steps", "5", "--keys", "all", "--num-images", "2",
                      "--seed", "7", "--no-count-macs")
    assert record["macs"] is None and record["seed"] == 7
    pipe = StableDiffusionPipeline.from_pretrained(saved["sd"], local_files_only=True)
    pipe.set_progress_bar_config(disable=True)
    expected = pipe("a red cat", negative_prompt="blurry", num_images_per_prompt=2, num_inference_steps=5,
                    generator=[torch.Generator().manual_seed(7 + i) for i in range(2)], output_type="pil").images
    for relative, want in zip(record["images"], expected):
        with Image.open(tmp_path / relative) as got:
            assert np.array_equal(np.asarray(got), np.asarray(want))


def test_scheduler_and_depth_options_reach_the_pipeline(saved, tmp_path):
    record = generate(saved["dit"], tmp_path, "--steps", "4", "--scheduler", "dpm", "--encoder-blocks", "1",
                      "--keys", "0,2", "--policy", "hold", "--guidance-scale", "1.5", "--no-count-macs")
    assert record["scheduler"] == "dpm" and record["encoder_blocks"] == 1
    assert record["policy"] == "hold" and record["guidance_scale"] == 1.5
    assert record["key_steps"] == [0, 2] and record["class_labels"] == [0]


def test_a_pipeline_with_its_own_scheduler_records_the_class(saved, tmp_path):
    record = generate(saved["sd"], tmp_path, "--prompt", "x", "--steps", "3", "--no-count-macs")
    assert record["scheduler"] == "DDIMScheduler" and record["guidance_scale"] == 7.5  # the pipeline's default


def _fails(capsys, *argv):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", "--quiet", *argv])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(
    "name, argv, message",
    [
        ("sd", [], "--prompt is required for a StableDiffusionPipeline"),
        ("sd", ["--prompt", "x", "--class-labels", "1"], "--class-labels does not apply to a StableDiffusionPipeline"),
        ("sd", ["--prompt", "x", "--encoder-blocks", "2"], "--encoder-blocks does not apply to a StableDiffusionPipeline"),
        ("dit", ["--prompt", "x"], "--prompt does not apply to a DiTPipeline; use --class-labels"),
        ("dit", ["--decoder-start", "1"], "--decoder-start does not apply to a DiTPipeline"),
        ("dit", ["--class-labels", "1000"], "--class-labels '1000': labels must be in [0, 999], got [1000]"),
        ("dit", ["--parallel-decode"], "--parallel-decode does not apply to a DiTPipeline"),
        ("dit", ["--policy", "lookahead"], "--policy 'lookahead' does not apply to a DiTPipeline"),
    ],
)
def test_inputs_that_do_not_fit_the_pipeline(saved, tmp_path, capsys, name, argv, message):
    err = _fails(capsys, "--model", str(saved[name]), "--out", str(tmp_path / "out"), *argv)
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_a_folder_without_model_index(tmp_path, capsys):
    err = _fails(capsys, "--model", str(tmp_path), "--out", str(tmp_path / "out"))
    assert f"--model '{tmp_path}' is not a diffusers pipeline folder (no model_index.json)" in err


def test_a_pipeline_class_tiec_does_not_run(tmp_path, capsys):
    (tmp_path / "model_index.json").write_text(json.dumps({"_class_name": "StableVideoDiffusionPipeline"}))
    err = _fails(capsys, "--model", str(tmp_path), "--out", str(tmp_path / "out"))
    assert "holds a StableVideoDiffusionPipeline, which tiec generate does not run" in err


def test_a_broken_pipeline_folder(saved, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model_index.json").write_text((saved["dit"] / "model_index.json").read_text())
    err = _fails(capsys, "--model", str(broken), "--out", str(tmp_path / "out"))
    assert f"--model '{broken}': diffusers could not load the DiTPipeline" in err


@pytest.mark.parametrize("name, argv, message", [
    ("dit", ["--scheduler", "ddpm"], "--scheduler ddpm: DiTPipeline does not pass its generators to the scheduler"),
    ("dit", ["--encoder-blocks", "9"], "--encoder-blocks 9: must be an int in [1, 3]"),
    ("sd", ["--prompt", "x", "--decoder-start", "9"], "--decoder-start 9: must be an int in [0, 3]"),
    ("sd", ["--prompt", "x", "--steps", "1001"], "--steps 1001 is more than the model was trained with (1000"),
])
def test_pipeline_options_are_checked_before_anything_is_written(saved, tmp_path, capsys, name, argv, message):
    err = _fails(capsys, "--model", str(saved[name]), "--out", str(tmp_path / "out"), *argv)
    assert message in err, err
    assert not (tmp_path / "out").exists()


def test_a_pipeline_runs_in_float16_and_a_stochastic_scheduler_after_one_warning_line(saved, tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "tiec", "generate", "--model", str(saved["sd"]), "--prompt", "x",
                             "--steps", "4", "--scheduler", "euler-a", "--dtype", "float16", "--no-count-macs",
                             "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "cannot run with `cpu`" not in result.stderr  # diffusers' fp16 warning: torch runs fp16 on the CPU
    warnings = [line for line in result.stderr.splitlines() if "warning" in line.lower()]
    assert len(warnings) == 1 and warnings[0].startswith("tiec: warning: --scheduler euler-a draws new noise")
