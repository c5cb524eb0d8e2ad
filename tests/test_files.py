"""Whole-or-nothing writes and the --out probe, including two writers sharing a folder."""

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from tiec._files import atomic_path, writable_folder, write_atomic


def test_two_writers_of_one_file_do_not_collide(tmp_path):
    """Two benchmark pieces joining into one table: each write renames its own ``.part`` file."""
    target = tmp_path / "table.md"
    with atomic_path(target) as first:
        first.write_text("first")
        with atomic_path(target) as second:
            second.write_text("second")
        assert target.read_text() == "second"
    assert target.read_text() == "first"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_part(tmp_path):
    target = tmp_path / "results.json"
    write_atomic(target, "old")
    with pytest.raises(RuntimeError, match="cut off"):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("cut off")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]
    write_atomic(target, b"new")  # the next write works
    assert target.read_bytes() == b"new"


def test_output_dir_probes_without_touching_the_folder(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")

    def probe(_):
        return writable_folder(out)

    with ThreadPoolExecutor(max_workers=8) as pool:  # runs sharing --out probe it at the same time
        assert set(pool.map(probe, range(400))) == {out}
    assert [p.name for p in out.iterdir()] == ["mine.txt"]
    assert writable_folder(tmp_path / "new" / "deep").is_dir()


def test_every_committed_json_file_is_strict_json():
    """What tiec wrote and the repository keeps (results, calibrations, configurations) reads in
    jq and browsers: no Infinity or NaN (an infinite PSNR is null with a flag)."""
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]

    def refuse(name):
        raise ValueError(f"{name} is not JSON")

    paths = [p for folder in ("benchmarks", "tiec", "docs") for p in (root / folder).rglob("*.json")]
    assert len(paths) > 40
    for path in paths:
        try:
            json.loads(path.read_text(), parse_constant=refuse)
        except ValueError as error:
            raise AssertionError(f"{path.relative_to(root)}: {error}") from None


def test_json_text_writes_infinity_as_null_with_a_flag():
    from tiec._files import json_text

    assert json.loads(json_text({"a": [{"psnr_db": float("-inf")}], "b": float("nan")})) == {
        "a": [{"psnr_db": None, "psnr_db_is_infinite": True}], "b": None}
