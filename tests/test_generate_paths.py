"""Every documented path of ``tiec generate`` works or refuses in one line: stochastic schedulers,
reruns of finished runs, bad input that writes nothing, configurations made for other runs,
interruptions and failed writes, folders tiec did not write, strict JSON, the console."""

import errno
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tiec.cli import main

FAST = ["--class-labels", "0,1,2", "--steps", "6", "--quiet"]


def images(out: Path) -> dict:
    return {path.name: path.read_bytes() for path in sorted((out / "images").glob("*.png"))}


def folder_state(out: Path) -> dict:
    """Every file under ``out`` with its bytes (``{}`` when ``out`` does not exist)."""
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()} \
        if out.exists() else {}


def strict_json(path: Path):
    """Parse as JSON that jq or a browser reads: no NaN or Infinity."""
    def refuse(name):
        raise ValueError(f"{path.name} holds {name}, which is not JSON")
    return json.loads(path.read_text(), parse_constant=refuse)


def refused(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("tiec: error: ") and "Traceback" not in err, err
    return err


# -- stochastic schedulers ---------------------------------------------------------------------

@pytest.mark.parametrize("scheduler", ["ddpm", "euler-a", "dpm-sde"])
def test_a_stochastic_scheduler_gives_the_same_bytes_twice_and_at_any_batch_size(tmp_path, scheduler):
    argv = ["generate", *FAST, "--scheduler", scheduler, "--keys", "all"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0  # the MAC-counting and timed runs agree
    assert main([*argv, "--out", str(tmp_path / "b"), "--no-count-macs"]) == 0
    assert main([*argv, "--out", str(tmp_path / "c"), "--no-count-macs", "--batch-size", "1"]) == 0
    assert images(tmp_path / "a") == images(tmp_path / "b") == images(tmp_path / "c")
    assert len(images(tmp_path / "a")) == 3


@pytest.mark.parametrize("scheduler", ["ddpm", "euler-a"])
def test_caching_a_stochastic_scheduler_that_measured_badly_is_refused_with_its_psnr(tmp_path, capsys, scheduler):
    err = refused(["generate", "--class-labels", "0", "--quiet", "--scheduler", scheduler, "--steps", "50",
                   "--keys", "every:5", "--policy", "linear", "--out", str(tmp_path)], capsys)
    assert f"--scheduler {scheduler} draws new noise at every step" in err
    assert "50 steps with keys every:5 and linear measured " in err and " dB to every step a key" in err
    assert folder_state(tmp_path) == {}


def test_caching_a_stochastic_scheduler_that_was_not_measured_runs_after_a_warning(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tiec", "generate", "--class-labels", "0", "--steps", "6",
                             "--scheduler", "euler-a", "--no-count-macs", "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    warning = [line for line in result.stderr.splitlines() if line.startswith("tiec: warning: ")]
    assert len(warning) == 1 and "not measured for these settings" in warning[0] and " dB)" in warning[0]


# -- reruns ------------------------------------------------------------------------------------

def test_rerunning_a_finished_run_keeps_its_record_and_can_add_a_comparison(tmp_path, capsys):
    argv = ["generate", *FAST, "--out", str(tmp_path)]
    assert main(argv) == 0
    before = folder_state(tmp_path)
    assert main([a for a in argv if a != "--quiet"]) == 0
    assert "nothing to do: the 3 images" in capsys.readouterr().out
    assert folder_state(tmp_path) == before  # nothing rewritten

    assert main([*argv, "--compare"]) == 0  # measures the comparison, keeps every image
    record = strict_json(tmp_path / "record.json")
    assert record["images_generated"] == 0 and record["images_skipped"] == 3
    assert record["encoder_calls"] == 2 and 0 < record["compare"]["mac_ratio"] < 1
    assert images(tmp_path) == {k[len("images/"):]: v for k, v in before.items() if k.startswith("images/")}


# -- bad input writes nothing --------------------------------------------------------------------

@pytest.mark.parametrize("argv, message", [
    (["--encoder-blocks", "0"], "--encoder-blocks 0: must be an int in [1, 8]"),
    (["--model", "unet-digits", "--decoder-start", "9"], "--decoder-start 9: must be an int in [0, 2]"),
    (["--model", "unet-digits", "--branch-depth", "5"], "--branch-depth 5: must be None or an int in [1, 4]"),
    (["--model", "unet-digits", "--branch-depth", "1", "--decoder-start", "1"],
     "--branch-depth 1 and --decoder-start 1 are two UNet splits; give one of them"),
    (["--model", "unet-digits", "--branch-depth", "1", "--parallel-decode"],
     "--parallel-decode does not apply with --branch-depth 1"),
    (["--branch-depth", "1"], "--branch-depth does not apply to the demo model 'dit-digits'; use --encoder-blocks"),
    (["--steps", "1001"], "--steps 1001 is more than the model was trained with (1000 timesteps)"),
    (["--keys", ""], "--keys is empty"),
    (["--policy", " "], "--policy is empty"),
    (["--guidance-scale", "nan"], "--guidance-scale nan is not a finite number"),
    (["--guidance-scale", "inf"], "--guidance-scale inf is not a finite number"),
])
def test_bad_input_leaves_the_folder_as_it_was_and_the_next_valid_run_works(tmp_path, capsys, argv, message):
    out = tmp_path / "outputs"
    err = refused(["generate", "--out", str(out), *FAST, *argv], capsys)
    assert message in err
    assert folder_state(out) == {}
    assert main(["generate", "--out", str(out), *FAST]) == 0


def test_an_empty_out_is_refused(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert "--out '' is empty" in refused(["generate", *FAST, "--out", ""], capsys)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_left_by_a_run_that_made_no_image_is_taken_over(tmp_path):
    (tmp_path / "run.json").write_text(json.dumps({"model": "dit-digits", "steps": 99}))
    assert main(["generate", *FAST, "--out", str(tmp_path)]) == 0
    assert strict_json(tmp_path / "run.json")["steps"] == 6


def test_a_folder_with_files_tiec_did_not_write_is_refused(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "00000.png").write_bytes(b"my own picture")
    (tmp_path / "record.json").write_text("{}")
    before = folder_state(tmp_path)
    err = refused(["generate", *FAST, "--out", str(tmp_path)], capsys)
    assert "holds images, record.json but no run.json, so tiec did not write them" in err
    assert folder_state(tmp_path) == before


def test_a_changed_option_is_named_as_the_option(tmp_path, capsys):
    assert main(["generate", *FAST, "--out", str(tmp_path)]) == 0
    before = folder_state(tmp_path)
    err = refused(["generate", *FAST, "--num-images", "2", "--out", str(tmp_path)], capsys)
    assert "holds images made with other settings (--num-images)" in err
    assert folder_state(tmp_path) == before


# -- configurations ----------------------------------------------------------------------------

@pytest.mark.parametrize("fields, argv, message", [
    (dict(steps=10), ["--steps", "6"], "was made for 10 steps, not --steps 6; run with --steps 10"),
    (dict(steps=6, scheduler="dpm"), ["--steps", "6"], "was made for the dpm scheduler, not ddim"),
])
def test_a_configuration_made_for_another_run_is_refused(tmp_path, capsys, fields, argv, message):
    from tiec import TiecConfig

    path = TiecConfig(keys="0,3", policy="linear", **fields).save(tmp_path / "config.json")
    out = tmp_path / "out"
    err = refused(["generate", "--class-labels", "0", "--quiet", "--config", str(path), "--out", str(out), *argv],
                  capsys)
    assert message in err
    assert folder_state(out) == {}


# -- interruptions and failed writes -------------------------------------------------------------

def test_ctrl_c_ends_in_one_line_and_keeps_finished_images(tmp_path):
    argv = ["generate", "--class-labels", "0,1,2,3,4,5,6,7,8,9", "--num-images", "3", "--steps", "20",
            "--batch-size", "2", "--quiet", "--no-count-macs", "--out", str(tmp_path)]
    # a test run started in the background of a shell without job control inherits an ignored
    # SIGINT (and Python then installs no KeyboardInterrupt handler): give the child the default
    process = subprocess.Popen([sys.executable, "-m", "tiec", *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True,
                               preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 240
    while time.time() < deadline and len(list((tmp_path / "images").glob("*.png"))) < 4:
        time.sleep(0.02)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert err == "tiec: interrupted; what was finished is kept (rerun the same command to resume)\n"
    finished = images(tmp_path)
    assert 4 <= len(finished) < 30 and not list(tmp_path.rglob("*.part"))
    assert main(argv) == 0  # resumes
    assert {k: v for k, v in images(tmp_path).items() if k in finished} == finished


def test_a_full_disk_ends_in_one_line(tmp_path, capsys, monkeypatch):
    from tiec.generate import run_folder

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(run_folder, "write_atomic", full)
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *FAST, "--out", str(tmp_path)])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err.startswith("tiec: error: No space left on device (") and err.count("\n") == 1, err


# -- records and the console -------------------------------------------------------------------

def test_records_are_strict_json_with_the_quality_monitor(tmp_path):
    assert main(["generate", *FAST, "--keys", "all", "--compare", "--out", str(tmp_path / "all")]) == 0
    compare = strict_json(tmp_path / "all" / "record.json")["compare"]
    assert compare["psnr_db"] is None and compare["psnr_db_is_infinite"] is True  # identical images
    strict_json(tmp_path / "all" / "index.json")
    strict_json(tmp_path / "all" / "run.json")

    assert main(["generate", *FAST, "--keys", "every:2", "--policy", "hold", "--out", str(tmp_path / "hold")]) == 0
    record = strict_json(tmp_path / "hold" / "record.json")
    assert 0 < record["key_error"] < 1  # hold: the previous key's features, a little off


def test_the_console_labels_each_phase_and_prints_what_ran(tmp_path):
    result = subprocess.run([sys.executable, "-m", "tiec", "generate", "--class-labels", "0", "--steps", "4",
                             "--compare", "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    for label in ("cached: MACs", "cached:", "every step a key: MACs", "every step a key:"):
        assert label in result.stderr, label
    lines = result.stdout.splitlines()
    assert lines[0].startswith("1 image made in ") and "(sampling " in lines[0]
    assert any(line.startswith("keys every:3 (steps 0,3), linear, coordinate auto") for line in lines), lines
    assert "Warning" not in result.stderr and "warning" not in result.stderr


def test_the_help_names_the_defaults_that_apply(capsys):
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "--keys KEYS key steps" in text and "the calibrated configuration shipped for its sampler" in text
    assert "(default every:3)" not in text  # the calibrated configuration comes first on a demo model


@pytest.mark.parametrize("fields, message", [
    (dict(encoder_blocks=99), "--encoder-blocks 99: must be an int in [1, 8]"),
    (dict(decoder_start=1), "sets a split depth of the other architecture: --decoder-start does not apply"),
    (dict(branch_depth=1), "sets a split depth of the other architecture: --branch-depth does not apply"),
])
def test_a_configuration_with_a_split_depth_that_does_not_fit(tmp_path, capsys, fields, message):
    from tiec import TiecConfig

    path = TiecConfig(keys="0,3", steps=6, **fields).save(tmp_path / "config.json")
    err = refused(["generate", *FAST, "--config", str(path), "--out", str(tmp_path / "out")], capsys)
    assert message in err
    assert ("other architecture" in err) == ("encoder_blocks" not in fields)
