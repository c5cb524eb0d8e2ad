"""Key schedules: which step indices run the encoder.

A :class:`KeySchedule` is a frozen description; :meth:`KeySchedule.key_steps` resolves it for a
given number of steps, validating it. Step 0 is always a key (the cache starts empty).

Presets from FasterDiffusion (tuned on Stable Diffusion with reuse):

=================  =====  ===============================
name               steps  key indices
=================  =====  ===============================
``ddim-50``        50     0, 1, 2, 3, 5, 10, 15, 25, 35
``dpm-solver-20``  20     0, 1, 2, 3, 5, 10, 15
=================  =====  ===============================

**Other step counts** (a decision, see docs/choosing-keys.md): a preset used with ``n`` steps is
rescaled -- each index ``i`` tuned for ``N`` steps maps to ``floor(i * n / N + 1/2)``, duplicates merged --
so the keys keep their place in the trajectory. Explicit index lists are never rescaled: an index
``>= n`` is an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Iterable, Optional, Sequence, Union

from ._errors import TiecTypeError, TiecValueError

__all__ = [
    "KeySchedule",
    "KeysLike",
    "uniform",
    "explicit",
    "preset",
    "every_step",
    "get_schedule",
    "PRESETS",
]

PRESETS: dict[str, tuple[int, tuple[int, ...]]] = {
    "ddim-50": (50, (0, 1, 2, 3, 5, 10, 15, 25, 35)),
    "dpm-solver-20": (20, (0, 1, 2, 3, 5, 10, 15)),
}


def _check_count(value: object, name: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TiecTypeError(f"{name} must be an int, got {type(value).__name__} {value!r}")
    if value < minimum:
        raise TiecValueError(f"{name} must be >= {minimum}, got {name}={value}")
    return value


@dataclass(frozen=True)
class KeySchedule:
    """Which steps are keys. Build one with :func:`uniform`, :func:`explicit` or :func:`preset`.

    Args:
        every: key every ``every`` steps (``every=1``: all steps, the exact default).
        offset: with ``every``, keys at ``offset, offset + every, ...`` (step 0 is always a key).
        indices: explicit key indices (used when ``every`` is ``None``).
        tuned_for: the step count ``indices`` were tuned for; when set, the indices are rescaled
            to other step counts instead of being rejected.
        warmup: the first ``warmup`` steps are all keys.
        tail: the last ``tail`` steps are all keys.

    Examples:
        >>> schedule = uniform(3, tail=2)
        >>> schedule.key_steps(10)
        (0, 3, 6, 8, 9)
        >>> schedule.is_key(4, 10)
        False
    """

    every: Optional[int] = 1
    offset: int = 0
    indices: Optional[tuple[int, ...]] = None
    tuned_for: Optional[int] = None
    warmup: int = 0
    tail: int = 0
    name: Optional[str] = field(default=None, compare=False)

    def __post_init__(self) -> None:
        if self.every is None and self.indices is None:
            raise TiecValueError("a KeySchedule needs `every` or `indices`, got neither")
        if self.every is not None:
            _check_count(self.every, "every", 1)
            _check_count(self.offset, "offset", 0)
        if self.indices is not None:
            if self.every is not None:
                raise TiecValueError("give `every` or `indices`, not both")
            indices = tuple(self.indices)
            for i in indices:
                _check_count(i, "key index", 0)
            if 0 not in indices:
                raise TiecValueError(
                    f"step 0 must be a key (the cache starts empty), got indices={list(indices)}; "
                    "add 0"
                )
            object.__setattr__(self, "indices", tuple(sorted(set(indices))))
        if self.tuned_for is not None:
            _check_count(self.tuned_for, "tuned_for", 1)
        _check_count(self.warmup, "warmup", 0)
        _check_count(self.tail, "tail", 0)

    def key_steps(self, num_steps: int) -> tuple[int, ...]:
        """The sorted key indices for a run of ``num_steps`` steps (model evaluations).

        Raises:
            ValueError: ``num_steps < 1``, or an explicit index is ``>= num_steps``.
        """
        _check_count(num_steps, "num_steps", 1)
        if self.every is not None:
            keys = set(range(self.offset % self.every, num_steps, self.every))
        else:
            assert self.indices is not None
            if self.tuned_for is not None:
                keys = {(2 * i * num_steps + self.tuned_for) // (2 * self.tuned_for) for i in self.indices}
                keys = {i for i in keys if i < num_steps}
            else:
                bad = [i for i in self.indices if i >= num_steps]
                if bad:
                    raise TiecValueError(
                        f"key indices {bad} are out of range for num_steps={num_steps}: "
                        f"indices must be in [0, {num_steps - 1}]"
                    )
                keys = set(self.indices)
        keys.add(0)
        keys.update(range(min(self.warmup, num_steps)))
        keys.update(range(max(num_steps - self.tail, 0), num_steps))
        return tuple(sorted(keys))

    def is_key(self, index: int, num_steps: int) -> bool:
        """Whether step ``index`` of a ``num_steps``-step run is a key."""
        _check_count(index, "index", 0)
        if index >= num_steps:
            raise TiecValueError(f"index must be < num_steps={num_steps}, got index={index}")
        return index in self.key_steps(num_steps)

    def is_key_open_ended(self, index: int) -> bool:
        """Whether step ``index`` is a key when the run's length is not known in advance.

        Works for uniform schedules, explicit lists and presets (taken at the step count they were
        tuned for); a ``tail`` needs the length and raises.
        """
        _check_count(index, "index", 0)
        if self.tail:
            raise TiecValueError(
                f"a schedule with tail={self.tail} needs the number of steps; pass the sampler's "
                "timesteps so the run's length is known"
            )
        if index < max(self.warmup, 1):
            return True
        if self.every is not None:
            return index % self.every == self.offset % self.every
        assert self.indices is not None
        return index in self.indices

    def key_fraction(self, num_steps: int) -> float:
        """Fraction of the ``num_steps`` steps that are keys."""
        return len(self.key_steps(num_steps)) / num_steps

    def __str__(self) -> str:
        if self.name is not None:
            base = self.name
        elif self.every is not None:
            base = f"every:{self.every}" + (f"+{self.offset}" if self.offset else "")
        else:
            base = ",".join(str(i) for i in self.indices or ())
        extras = [f"warmup={self.warmup}"] * bool(self.warmup) + [f"tail={self.tail}"] * bool(self.tail)
        return " ".join([base, *extras])


def every_step() -> KeySchedule:
    """Every step is a key: reproduces the uncached model exactly."""
    return KeySchedule(every=1)


def uniform(every: int, *, offset: int = 0, warmup: int = 0, tail: int = 0) -> KeySchedule:
    """A key every ``every`` steps, starting at ``offset`` (step 0 always a key).

    Examples:
        >>> uniform(4).key_steps(10)
        (0, 4, 8)
        >>> uniform(4, offset=2, warmup=2).key_steps(10)
        (0, 1, 2, 6)
    """
    return KeySchedule(every=every, offset=offset, warmup=warmup, tail=tail)


def explicit(indices: Iterable[int], *, warmup: int = 0, tail: int = 0) -> KeySchedule:
    """Exactly these key indices (0 must be among them); validated against the step count.

    Examples:
        >>> explicit([0, 2, 7]).key_steps(10)
        (0, 2, 7)
    """
    return KeySchedule(every=None, indices=tuple(indices), warmup=warmup, tail=tail)


def preset(name: str, *, warmup: int = 0, tail: int = 0) -> KeySchedule:
    """A FasterDiffusion preset by name, rescaled to other step counts.

    Examples:
        >>> preset("ddim-50").key_steps(50)
        (0, 1, 2, 3, 5, 10, 15, 25, 35)
        >>> preset("ddim-50").key_steps(25)
        (0, 1, 2, 3, 5, 8, 13, 18)
    """
    key = name.strip().lower()
    if key not in PRESETS:
        raise TiecValueError(f"key preset {name!r} is unknown; expected one of {sorted(PRESETS)}")
    tuned_for, indices = PRESETS[key]
    return KeySchedule(
        every=None, indices=indices, tuned_for=tuned_for, warmup=warmup, tail=tail, name=key
    )


KeysLike = Union[KeySchedule, int, str, Sequence[int], None]

_EVERY_SPEC = re.compile(r"^every:\s*(\d+)(?:\+(\d+))?$")


def get_schedule(spec: KeysLike) -> KeySchedule:
    """Turn a key specification into a :class:`KeySchedule`.

    Accepted: a :class:`KeySchedule`; ``None`` (every step); an int ``n`` (``uniform(n)``); a
    preset name; ``"every:N"`` or ``"every:N+OFFSET"``; ``"all"``; a comma-separated list such
    as ``"0,1,5"``; or a sequence of ints.

    Examples:
        >>> get_schedule("every:3").key_steps(7)
        (0, 3, 6)
        >>> get_schedule("0, 2, 5").key_steps(6)
        (0, 2, 5)
    """
    if spec is None:
        return every_step()
    if isinstance(spec, KeySchedule):
        return spec
    if isinstance(spec, bool):
        raise TiecTypeError(f"keys must be a schedule, int, str or list of ints, got {spec!r}")
    if isinstance(spec, int):
        return uniform(spec)
    if isinstance(spec, str):
        text = spec.strip().lower()
        if text == "all":
            return every_step()
        if text in PRESETS:
            return preset(text)
        match = _EVERY_SPEC.match(text)
        if match:
            return uniform(int(match.group(1)), offset=int(match.group(2) or 0))
        parts = [p.strip() for p in text.split(",")]
        if all(p.isdigit() for p in parts):
            return explicit(int(p) for p in parts)
        raise TiecValueError(
            f"keys {spec!r} is not understood; expected 'all', 'every:N', a preset "
            f"({', '.join(sorted(PRESETS))}) or a comma-separated list of step indices like '0,1,5'"
        )
    if isinstance(spec, Sequence):
        for item in spec:
            if isinstance(item, bool) or not isinstance(item, int):
                raise TiecTypeError(f"key indices must be ints, got {item!r} in {list(spec)}")
        return explicit(spec)
    raise TiecTypeError(
        f"keys must be a KeySchedule, int, str or list of ints, got {type(spec).__name__} {spec!r}"
    )
