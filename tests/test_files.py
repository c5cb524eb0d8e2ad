"""Whole-or-nothing writes and the --out probe, including two writers sharing a folder."""

from concurrent.futures import ThreadPoolExecutor

import pytest

from tiec._files import atomic_path, write_atomic
from tiec._files import writable_folder


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
