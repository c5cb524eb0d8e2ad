"""The files of a ``tiec generate`` run, written so that a run can be sharded and resumed.

Layout under ``--out``::

    run.json                 the settings every image depends on (written first, checked on rerun)
    images/00000.png ...     image i of the run (global index), written to a .part name, then renamed
    manifest-<host>-<pid>.jsonl   one line per finished image: index, file, bytes, sha256
    index.json               all images in index order, written by the main process at the end

An image counts as done only when a manifest line names it *and* the file on disk has that size and
checksum, so an interrupted write (a .part file, a renamed file without its line, a cut-off line)
is never taken for a finished image. Manifests are per process, so any number of processes can
write side by side, and a rerun with another process count reads them all.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import zipfile
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from .._errors import UsageError
from .._files import atomic_path, json_text, write_atomic

__all__ = ["ImageStore", "to_uint8", "png_bytes", "batches", "pending"]

#: What tiec writes into a run folder besides ``run.json`` (and its manifests).
RUN_FILES = ("images", "index.json", "record.json", "grid.png", "samples.npz")

#: The ``tiec generate`` option behind each setting of ``run.json``, for messages.
OPTIONS = {"model": "--model", "pipeline": "--model", "class_labels": "--class-labels", "prompt": "--prompt",
           "negative_prompt": "--negative-prompt", "images_per_input": "--num-images", "steps": "--steps",
           "scheduler": "--scheduler", "policy": "--policy", "coordinate": "--config", "keys": "--keys",
           "guidance_scale": "--guidance-scale", "parallel_decode": "--parallel-decode", "seed": "--seed",
           "dtype": "--dtype", "encoder_blocks": "--encoder-blocks", "decoder_start": "--decoder-start",
           "branch_depth": "--branch-depth", "batch_size": "--batch-size", "clean_caption": "--prompt"}


def to_uint8(pixels: torch.Tensor) -> np.ndarray:
    """``(C, H, W)`` in [0, 1] to an ``(H, W, C)`` uint8 array (rounded, as PNG stores it)."""
    return (pixels.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def png_bytes(array: np.ndarray) -> bytes:
    """PNG bytes of an ``(H, W, C)`` uint8 array (C = 1 is saved as grayscale)."""
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(array[..., 0] if array.shape[-1] == 1 else array).save(buffer, format="PNG")
    return buffer.getvalue()


class ImageStore:
    """Images of one run under ``out``; see the module docstring for the layout."""

    def __init__(self, out: Path, settings: Mapping[str, Any]) -> None:
        self.out = out
        self.images = out / "images"
        self.settings = dict(settings)
        self._manifest = out / f"manifest-{socket.gethostname()}-{os.getpid()}.jsonl"

    def __repr__(self) -> str:
        return f"ImageStore(out={str(self.out)!r}, manifest={self._manifest.name!r})"

    def prepare(self) -> None:
        """Create the folders and ``run.json``, refusing a folder that holds finished images made
        with other settings, or files tiec did not write (no ``run.json`` beside them).

        A ``run.json`` with no finished image beside it (a run refused or stopped before its first
        image) is replaced. Called by the main process before the others start writing.
        """
        run = self.out / "run.json"
        settings = json.loads(json.dumps(self.settings))
        if run.exists():
            try:
                previous = json.loads(run.read_text())
            except ValueError:
                previous = None
            if not isinstance(previous, dict):
                raise UsageError(f"--out {str(self.out)!r} holds a run.json tiec cannot read; choose another --out")
            changed = sorted({OPTIONS.get(k, k) for k in set(previous) | set(settings)
                              if previous.get(k) != settings.get(k)})
            if not changed:
                self.images.mkdir(parents=True, exist_ok=True)
                return
            if self.done():
                raise UsageError(f"--out {str(self.out)!r} holds images made with other settings "
                                 f"({', '.join(changed)}); rerun with the same arguments to resume, or choose "
                                 "another --out")
        else:
            foreign = [name for name in RUN_FILES if (self.out / name).exists()
                       and not (name == "images" and not any((self.out / name).iterdir()))]
            if foreign:
                raise UsageError(f"--out {str(self.out)!r} holds {', '.join(foreign)} but no run.json, so tiec did "
                                 "not write them; choose an empty or new folder")
        self.images.mkdir(parents=True, exist_ok=True)
        write_atomic(run, json_text(self.settings))

    def done(self) -> dict[int, dict]:
        """Finished images, verified against their manifest lines: ``{index: entry}``."""
        entries: dict[int, dict] = {}
        for manifest in sorted(self.out.glob("manifest-*.jsonl")):
            for line in manifest.read_text().splitlines():
                try:
                    entry = json.loads(line)
                    entries[int(entry["index"])] = entry
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut off by an interrupted write
        verified = {}
        for index, entry in entries.items():
            path = self.out / entry["file"]
            if path.is_file() and path.stat().st_size == entry["bytes"] and _sha256(path) == entry["sha256"]:
                verified[index] = entry
        return verified

    def write(self, index: int, pixels: torch.Tensor) -> dict:
        """Write image ``index`` (``(C, H, W)`` in [0, 1]) and record it in this process's manifest."""
        data = png_bytes(to_uint8(pixels))
        path = self.images / f"{index:05d}.png"
        write_atomic(path, data)
        entry = dict(index=index, file=str(path.relative_to(self.out)), bytes=len(data),
                     sha256=hashlib.sha256(data).hexdigest())
        with self._manifest.open("a") as manifest:
            manifest.write(json.dumps(entry) + "\n")
            manifest.flush()
            os.fsync(manifest.fileno())
        return entry

    def write_index(self, count: int, **extra: Any) -> dict:
        """Write ``index.json`` listing images ``0..count-1``; every one must be done."""
        done = self.done()
        missing = [i for i in range(count) if i not in done]
        if missing:
            raise UsageError(f"--out {str(self.out)!r} misses {len(missing)} images (first: {missing[:5]}); rerun to finish")
        index = dict(settings=self.settings, count=count, **extra, images=[done[i] for i in range(count)])
        write_atomic(self.out / "index.json", json_text(index))
        return index

    def read(self, index: int) -> np.ndarray:
        """Image ``index`` as an ``(H, W, C)`` uint8 array."""
        from PIL import Image

        with Image.open(self.images / f"{index:05d}.png") as image:
            array = np.asarray(image)
        return array[..., None] if array.ndim == 2 else array

    def write_grid(self, count: int, *, columns: int, limit: int = 100) -> Path:
        """``grid.png`` of the first ``min(count, limit)`` images, 1-pixel white lines between them;
        images smaller than 64 pixels are enlarged (nearest neighbour) so digits stay visible."""
        from PIL import Image

        arrays = [self.read(i) for i in range(min(count, limit))]
        h, w, c = arrays[0].shape
        columns = max(1, min(columns, len(arrays)))
        rows = (len(arrays) + columns - 1) // columns
        sheet = np.full((rows * (h + 1) + 1, columns * (w + 1) + 1, c), 255, dtype=np.uint8)
        for i, array in enumerate(arrays):
            r, col = divmod(i, columns)
            sheet[1 + r * (h + 1): 1 + r * (h + 1) + h, 1 + col * (w + 1): 1 + col * (w + 1) + w] = array
        picture = Image.fromarray(sheet[..., 0] if c == 1 else sheet)
        scale = max(1, 64 // w)
        if scale > 1:
            picture = picture.resize((picture.width * scale, picture.height * scale), Image.NEAREST)
        path = self.out / "grid.png"
        with atomic_path(path) as tmp:
            picture.save(tmp, format="PNG")
        return path

    def export_npz(self, count: int, path: Path) -> None:
        """Write images ``0..count-1`` as ``arr_0`` (uint8, NHWC), the layout of the ADM/DiT evaluation suite.

        Streamed image by image into the archive, so a 50,000-image run does not need them in memory.
        """
        first = self.read(0)
        with atomic_path(path) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED,
                                                        allowZip64=True) as archive:
            with archive.open("arr_0.npy", "w", force_zip64=True) as member:
                header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.uint8)), "fortran_order": False,
                          "shape": (count, *first.shape)}
                np.lib.format.write_array_header_1_0(member, header)
                for i in range(count):
                    array = first if i == 0 else self.read(i)
                    if array.shape != first.shape:
                        raise UsageError(f"image {i} is {array.shape}, image 0 {first.shape}: one .npz needs one size")
                    member.write(np.ascontiguousarray(array).tobytes())


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def batches(count: int, size: int) -> list[list[int]]:
    """Global image indices cut into batches of ``size``; a batch's images are always made together."""
    return [list(range(start, min(start + size, count))) for start in range(0, count, size)]


def pending(all_batches: Iterable[list[int]], done: Mapping[int, Any]) -> list[list[int]]:
    """The batches with at least one image not done."""
    return [batch for batch in all_batches if any(i not in done for i in batch)]
