"""Optional progress bars (tqdm is an optional dependency of the core)."""

from __future__ import annotations

import contextlib
from typing import Any, Iterator, Optional

from ._errors import MissingDependencyError

__all__ = ["progress_bar"]


class _Silent:
    def update(self, n: int = 1) -> None:
        pass


@contextlib.contextmanager
def progress_bar(*, total: Optional[int], enabled: bool, desc: str) -> Iterator[Any]:
    """A tqdm bar when ``enabled`` (tqdm must be installed), otherwise a no-op with ``update``;
    ``total=None`` counts without an end."""
    if not enabled:
        yield _Silent()
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:
        raise MissingDependencyError(
            "progress=True needs tqdm: pip install 'tiec[progress]'"
        ) from None
    bar = tqdm(total=total, desc=desc)
    try:
        yield bar
    finally:
        bar.close()
