"""mkdocs hook: lay out the package as it is installed, for mkdocstrings to read statically.

The folder ``adapters/`` is installed as ``tiec.adapters`` (a package mapping in pyproject.toml),
so the source tree has no ``tiec/adapters``. This hook builds ``build/docs-src/tiec`` from symlinks
-- every entry of ``tiec/`` plus ``adapters`` -- before the docs are read.
"""

from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "build" / "docs-src"


def _lay_out() -> None:
    package = SOURCE / "tiec"
    if SOURCE.exists():
        shutil.rmtree(SOURCE)
    package.mkdir(parents=True)
    for entry in (ROOT / "tiec").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    (package / "adapters").symlink_to(ROOT / "adapters")


def on_startup(**_: object) -> None:
    _lay_out()


_lay_out()  # also at import: mkdocstrings reads its paths before on_startup in some versions
