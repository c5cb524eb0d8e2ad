"""The README's and the docs' Python examples run as written, print what their comments say, and
CI installs what the README says.

Blocks marked ``# requires: model weights`` name real checkpoints; they run here on tiny stand-ins
saved in the same format (:data:`STAND_INS`): a placeholder path becomes a tiny pipeline folder
saved with ``save_pretrained``, and an official DiT checkpoint a tiny one of the same layout.
"""

import inspect
import re
from dataclasses import replace
from pathlib import Path

import pytest
import saved_pipelines

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
NEEDS_WEIGHTS = "# requires: model weights"
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
#: ``print(...)  # expected``: what the line prints, up to a ``;`` or `` (`` that starts an
#: explanation; quotes around it are dropped and ``...`` stands for anything.
COMMENTED_PRINT = re.compile(r"^\s*print\(.*\)\s+# (.+)$")
#: The placeholders the docs load weights from, and the tiny saved pipeline that stands in.
STAND_INS = {"path/to/stable-diffusion-v1-5": saved_pipelines.sd, "path/to/IF-I-XL-v1.0": saved_pipelines.if_stage_1,
             "path/to/IF-II-L-v1.0": saved_pipelines.if_stage_2}
DIT_CHECKPOINT = "DiT-XL-2-256x256.pt"


def python_blocks(page: Path) -> list[str]:
    return BLOCK.findall(page.read_text())


def expected_output(comment: str) -> re.Pattern:
    text = re.split(r";| \(", comment, maxsplit=1)[0].strip().strip('"')
    return re.compile(".*".join(re.escape(part) for part in text.split("...")))


def stand_ins(block: str, folder: Path, monkeypatch) -> str:
    """The block with each placeholder path replaced by a tiny saved pipeline (and, for the official
    DiT checkpoint, a tiny checkpoint of that layout under the config name the block uses)."""
    for placeholder, save in STAND_INS.items():
        if placeholder in block:
            block = block.replace(placeholder, str(save(folder / placeholder.rpartition("/")[2])))
    if DIT_CHECKPOINT in block:
        import torch
        from tiec.adapters import reference_dit

        tiny = replace(reference_dit.DIT_CONFIGS["DiT-XL/2"], input_size=8, hidden_size=32, depth=2, num_heads=2,
                       num_classes=10)
        monkeypatch.setitem(reference_dit.DIT_CONFIGS, "DiT-XL/2", tiny)
        torch.save(reference_dit.ReferenceDiT(tiny).state_dict(), folder / DIT_CHECKPOINT)
        block = block.replace(DIT_CHECKPOINT, str(folder / DIT_CHECKPOINT))
    assert "path/to/" not in block, "a '# requires: model weights' block loads a path with no stand-in in STAND_INS"
    return block


def run_page(page: Path, folder: Path, monkeypatch) -> None:
    """Run a page's blocks in one namespace (as a reader pastes them in order), checking every
    commented print against what it printed."""
    printed: dict[int, str] = {}

    def recording_print(*args, **kwargs):
        print(*args, **kwargs)
        printed[inspect.currentframe().f_back.f_lineno] = " ".join(str(a) for a in args)

    namespace: dict = {"__name__": f"docs_{page.stem}", "print": recording_print}
    for block in python_blocks(page):
        printed.clear()
        code = stand_ins(block, folder, monkeypatch) if block.startswith(NEEDS_WEIGHTS) else block
        exec(compile(code, str(page), "exec"), namespace)
        for number, line in enumerate(block.splitlines(), start=1):
            match = COMMENTED_PRINT.match(line)
            if match:
                assert number in printed, f"{page.name}: {line.strip()!r} printed nothing"
                assert expected_output(match[1]).fullmatch(printed[number]), (
                    f"{page.name}: {line.strip()!r} printed {printed[number]!r}")


@pytest.mark.parametrize("page", [p for p in PAGES if python_blocks(p)], ids=lambda p: str(p.relative_to(ROOT)))
def test_examples_run_and_print_what_they_say(page, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run_page(page, tmp_path, monkeypatch)


def test_a_commented_print_that_drifted_fails(tmp_path, monkeypatch):
    page = tmp_path / "page.md"
    page.write_text("```python\nx = 16\nprint(x)  # 17 (of 50 steps)\n```\n")
    with pytest.raises(AssertionError, match="printed '16'"):
        run_page(page, tmp_path, monkeypatch)
    page.write_text("```python\nprint('CachedModel(a=1, b=2)')  # CachedModel(a=1, ...)\n```\n")
    run_page(page, tmp_path, monkeypatch)


def test_readme_has_exactly_two_setup_commands_and_ci_runs_the_test_one():
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up on a fresh machine", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"^```bash\n(.*?)\n```", setup, re.S | re.M)
    assert len(commands) == 2, commands
    ci = (ROOT / ".ci" / "run").read_text()
    test_command = commands[1]
    for part in test_command.split(" && ")[1:]:  # everything after creating the venv
        assert part in ci, f"{part!r} from the README's test command is missing in .ci/run"
