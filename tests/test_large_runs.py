"""Large runs: sharding over processes with accelerate, resuming an interrupted run, the .npz export."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from tiec.cli import main
from tiec.generate.run_folder import ImageStore

ARGS = ["--class-labels", "0,1,2,3,4,5,6,7,8,9", "--num-images", "2", "--steps", "12", "--batch-size", "2",
        "--quiet", "--no-count-macs"]


def images(out):
    return {path.name: path.read_bytes() for path in sorted((out / "images").glob("*.png"))}


def manifest_entries(out):
    return [json.loads(line) for path in out.glob("manifest-*.jsonl") for line in path.read_text().splitlines()]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    assert main(["generate", *ARGS, "--out", str(out), "--npz"]) == 0
    return out


def test_a_single_process_run_writes_every_image_once_with_an_index(single):
    index = json.loads((single / "index.json").read_text())
    assert index["count"] == 20 and [entry["index"] for entry in index["images"]] == list(range(20))
    assert sorted(e["index"] for e in manifest_entries(single)) == list(range(20))
    record = json.loads((single / "record.json").read_text())
    assert record["processes"] == 1 and record["images_generated"] == 20 and record["images_skipped"] == 0
    assert not list(single.rglob("*.part")) and not list(single.glob("stats-*.json"))


def test_two_processes_make_the_same_bytes(single, tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "tiec", "generate", *ARGS, "--out", str(tmp_path), "--npz"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["processes"] == 2 and record["images_generated"] == 20
    assert len(list(tmp_path.glob("manifest-*.jsonl"))) == 2  # each process wrote its own images
    assert images(tmp_path) == images(single)
    assert (tmp_path / "samples.npz").read_bytes() == (single / "samples.npz").read_bytes()


STOCHASTIC = ["--class-labels", "0,1,2,3", "--steps", "8", "--batch-size", "2", "--keys", "all", "--quiet",
              "--no-count-macs"]


@pytest.mark.parametrize("scheduler", ["dpm-sde"])
def test_a_stochastic_scheduler_makes_the_same_bytes_with_two_processes(tmp_path, scheduler):
    """Each image's step noise comes from its own generator, so sharding cannot change it.

    One scheduler here (DPM-Solver++ SDE: its Brownian-tree noise is the least obvious to keep per
    image); every stochastic scheduler is checked at other batch sizes in one process by
    ``test_generate_paths``, which is what sharding amounts to per image.
    """
    argv = [*STOCHASTIC, "--scheduler", scheduler]
    assert main(["generate", *argv, "--out", str(tmp_path / "one")]) == 0
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "tiec", "generate", *argv, "--out", str(tmp_path / "two")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "two" / "record.json").read_text())["processes"] == 2
    assert images(tmp_path / "two") == images(tmp_path / "one") and len(images(tmp_path / "one")) == 4


def test_the_cpu_launcher_runs_too(single, tmp_path):
    # accelerate's --cpu launcher starts one process unless MPI is set up (docs/large-runs.md); the
    # command must still work and give the same bytes.
    command = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "-m", "tiec", "generate", *ARGS, "--out", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((tmp_path / "record.json").read_text())["processes"] in (1, 2)
    assert images(tmp_path) == images(single)


@pytest.fixture(scope="module")
def single_dpm_sde(tmp_path_factory):
    out = tmp_path_factory.mktemp("single-dpm-sde")
    assert main(["generate", *ARGS, "--scheduler", "dpm-sde", "--keys", "all", "--out", str(out)]) == 0
    return out


@pytest.mark.parametrize("scheduler", ["ddim", "dpm-sde"])
def test_an_interrupted_run_resumes_without_redoing_finished_images(request, tmp_path, scheduler):
    """A deterministic and a stochastic scheduler (the per-image step noise that makes a resumed
    image equal is the same for ddpm and euler-a; their bytes at any batch size are checked in
    ``test_generate_paths``)."""
    single = request.getfixturevalue("single" if scheduler == "ddim" else f"single_{scheduler.replace('-', '_')}")
    argv = [*ARGS, *([] if scheduler == "ddim" else ["--scheduler", scheduler, "--keys", "all"])]
    process = subprocess.Popen([sys.executable, "-m", "tiec", "generate", *argv, "--out", str(tmp_path)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and len(manifest_entries(tmp_path) if tmp_path.exists() else []) < 6:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL, "the run finished before it could be interrupted"
    finished = ImageStore(tmp_path, {}).done()
    assert 6 <= len(finished) < 20
    before = {i: os.stat(tmp_path / entry["file"]) for i, entry in finished.items()}

    assert main(["generate", *argv, "--out", str(tmp_path)]) == 0
    for i, stat in before.items():  # never rewritten: same inode, same modification time
        after = os.stat(tmp_path / finished[i]["file"])
        assert (after.st_ino, after.st_mtime_ns) == (stat.st_ino, stat.st_mtime_ns)
    written = [entry["index"] for entry in manifest_entries(tmp_path)]
    assert sorted(written) == sorted(set(written)) and set(written) == set(range(20))
    record = json.loads((tmp_path / "record.json").read_text())
    assert record["images_generated"] == 20 - len(finished)
    assert record["images_skipped"] >= len(finished) - 1  # a half-written batch is remade, its done images kept
    assert images(tmp_path) == images(single)


def test_only_verified_files_count_as_done(tmp_path):
    store = ImageStore(tmp_path, {"seed": 0})
    store.prepare()
    pixels = torch.rand(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    entries = [store.write(i, pixels[i]) for i in range(4)]
    (tmp_path / entries[1]["file"]).write_bytes(b"truncated")  # a file that lost its content
    (tmp_path / entries[2]["file"]).unlink()  # a file that is gone
    with next(tmp_path.glob("manifest-*.jsonl")).open("a") as manifest:
        manifest.write('{"index": 4, "file": "images/000')  # a line cut off by a kill
    (tmp_path / "images" / "00005.png.part").write_bytes(b"half")  # a write cut off by a kill
    assert sorted(store.done()) == [0, 3]


def test_a_rerun_with_other_settings_is_refused(single, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["generate", *ARGS, "--out", str(single), "--seed", "5"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "holds images made with other settings (--seed); rerun with the same arguments" in err and "Traceback" not in err


def test_the_npz_export_has_the_adm_layout(single):
    array = np.load(single / "samples.npz")["arr_0"]
    assert array.shape == (20, 16, 16, 1) and array.dtype == np.uint8
    with Image.open(single / "images" / "00007.png") as image:
        assert np.array_equal(array[7, ..., 0], np.asarray(image))
