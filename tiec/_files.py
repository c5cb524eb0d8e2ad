"""Files written whole or not at all: to a ``.part`` name beside the target, then renamed onto it.

The ``.part`` name is unique to the write, so two processes writing the same file (two benchmark
pieces joining their results into one table) never rename each other's half-written file, and a
write that raises removes its ``.part`` file.
"""

from __future__ import annotations

import contextlib
import json
import math
import secrets
import tempfile
from pathlib import Path
from typing import Any, Iterator, Union

from ._errors import UsageError

__all__ = ["atomic_path", "json_text", "write_atomic", "save_figure", "writable_folder"]


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """The temporary name to write ``path`` under; renamed onto ``path`` when the block succeeds.

    Examples:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "out.txt"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("done")
        >>> target.read_text(), tmp.exists(), tmp.name.endswith(".part")
        ('done', False, True)
    """
    tmp = path.with_name(f"{path.name}.{secrets.token_hex(4)}.part")
    try:
        yield tmp
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(path: Path, data: Union[str, bytes]) -> None:
    """Write ``data`` (text or bytes) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        if isinstance(data, bytes):
            tmp.write_bytes(data)
        else:
            tmp.write_text(data)


def save_figure(figure: Any, path: Path) -> None:
    """Lay out a matplotlib figure, write it as PNG through :func:`atomic_path`, and close it."""
    from matplotlib import pyplot as plt

    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=120)
    plt.close(figure)


def writable_folder(path: Path, option: str = "--out") -> Path:
    """Create ``path`` if needed and check that files can be written in it, touching nothing that
    is there (the probe is an anonymous temporary file, so runs sharing a folder never collide).

    Raises:
        UsageError: naming ``option`` and the reason, when the folder cannot be written.
    """
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        raise UsageError(f"{option} {str(path)!r} cannot be written ({error.strerror}); "
                         "choose a writable folder") from None
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        out = {}
        for key, item in value.items():
            if isinstance(item, float) and math.isinf(item):
                out[key] = None
                out[f"{key}_is_infinite"] = True  # e.g. the PSNR of identical images
            else:
                out[key] = _finite(item)
        return out
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def json_text(data: Any) -> str:
    """``data`` as strict JSON text (indented, newline-terminated) that jq and browsers read:
    an infinite number ``x`` under key ``k`` is written as ``"k": null, "k_is_infinite": true``
    (the PSNR of identical images), NaN as ``null``.

    Examples:
        >>> print(json_text({"psnr_db": float("inf"), "rows": [1.5]}), end="")
        {
          "psnr_db": null,
          "psnr_db_is_infinite": true,
          "rows": [
            1.5
          ]
        }
    """
    return json.dumps(_finite(data), indent=2, allow_nan=False) + "\n"
