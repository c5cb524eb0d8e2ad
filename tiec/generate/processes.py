"""Which process of a run this is: accelerate's ``PartialState`` when launched by ``accelerate launch``.

``tiec generate`` runs the same code in one process or many; this wrapper is the one place that
knows about accelerate, so a plain run needs neither accelerate nor a process group.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Iterator, Sequence

from .._errors import UsageError

__all__ = ["ProcessState", "process_state"]


def _launched() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


class ProcessState:
    """This process's place in the run: index, count, a barrier and a share of the work.

    ``state`` is accelerate's ``PartialState`` in a launched run, ``None`` in a plain one.
    """

    def __init__(self, state: Any = None) -> None:
        self._state = state
        self.num_processes = 1 if state is None else state.num_processes
        self.process_index = 0 if state is None else state.process_index
        self.is_main_process = self.process_index == 0

    def __repr__(self) -> str:
        return f"ProcessState(process_index={self.process_index}, num_processes={self.num_processes})"

    def wait_for_everyone(self) -> None:
        if self._state is not None:
            self._state.wait_for_everyone()

    @contextlib.contextmanager
    def split(self, items: Sequence[Any]) -> Iterator[list[Any]]:
        """This process's contiguous share of ``items`` (accelerate's ``split_between_processes``)."""
        if self._state is None or self.num_processes == 1:
            yield list(items)
            return
        with self._state.split_between_processes(list(items)) as mine:
            yield list(mine)

    def device_for(self, requested: str) -> str:
        """``requested``, except that a GPU run with several processes uses each process's own device."""
        if self._state is not None and self.num_processes > 1 and requested.split(":")[0] != "cpu":
            return str(self._state.device)
        return requested


def process_state(device: str = "cpu") -> ProcessState:
    """The state of this process; accelerate is imported only when the run was launched by it.

    With ``device="cpu"`` the processes talk over gloo (accelerate's ``MULTI_CPU``), whatever
    launcher started them.
    """
    if not _launched():
        return ProcessState()
    try:
        from accelerate import PartialState
    except ImportError:
        raise UsageError("this run has several processes (WORLD_SIZE > 1) but accelerate is not installed: "
                         "pip install accelerate") from None
    return ProcessState(PartialState(cpu=device.split(":")[0] == "cpu"))
