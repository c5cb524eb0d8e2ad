"""The candidates ``tiec calibrate`` searches: a configuration (:class:`Candidate`), the Pareto
front of MACs against PSNR, the schedules one edit away from a candidate's, and the comparisons
the search reports.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Optional, Sequence

from ..bench.grid import Depth, branch, split_options
from ..config import TiecConfig

__all__ = ["Candidate", "best_uniform", "branch", "carried", "decibels", "front_of", "neighbours", "pareto_front",
           "split_options"]

@dataclass(frozen=True)
class Candidate:
    """One configuration: explicit key steps, policy, time coordinate, split depth (an int for
    ``encoder_blocks``/``decoder_start``, or ``"branch:<layers>"`` for a UNet shallow branch)."""

    keys: tuple[int, ...]
    policy: str
    coordinate: str
    depth: Depth

    def config(self, steps: int, *, depth_option: str, scheduler: Optional[str] = None,
               weights: Optional[list] = None, **provenance: Any) -> TiecConfig:
        """This candidate as a :class:`TiecConfig` for ``steps`` steps of ``scheduler`` (a
        ``--scheduler`` name; ``None``: a pipeline's own); ``depth_option`` is ``encoder_blocks`` or
        ``decoder_start`` (a ``"branch:<layers>"`` depth sets ``branch_depth`` instead);
        ``weights``: a fitted candidate's (:meth:`tiec.Fitted.to_list`)."""
        return TiecConfig(keys=",".join(map(str, self.keys)), policy=self.policy, coordinate=self.coordinate,
                          steps=steps, scheduler=scheduler, weights=weights, provenance=dict(provenance),
                          **split_options(self.depth, depth_option))


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points ``(cost, score)`` that no other point beats: lower or equal cost and
    higher score, or lower cost and equal score. Sorted by cost.

    Examples:
        >>> pareto_front([(1.0, 10.0), (2.0, 12.0), (2.0, 11.0), (3.0, 12.0), (0.5, 5.0)])
        [4, 0, 1]
    """
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front, best = [], -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def decibels(row: dict, key: str) -> float:
    """A PSNR from a result row: ``inf`` where the JSON holds null with ``<key>_is_infinite``."""
    return math.inf if row.get(f"{key}_is_infinite") else row[key]


def best_uniform(rows: Iterable[dict], macs: int) -> Optional[dict]:
    """The validated uniform-grid row with the best held-out PSNR at ``macs`` or fewer."""
    return max((r for r in rows if r.get("grids") and "held_out_psnr_db" in r and r["macs"] <= macs),
               key=lambda r: decibels(r, "held_out_psnr_db"), default=None)


def carried(ranked: list[tuple], count: int, fronts: Sequence[Sequence[tuple]] = ()) -> list[tuple]:
    """The combinations stage 1 sends on: the ``count`` best ranked; the best that does not look
    ahead when all of those do; and every combination on the front of MACs against PSNR of each
    probe schedule (``fronts``, cheapest first), in that order, each once. Ranks compare PSNR on
    the same key schedules, where lookahead has paid for extra encoder passes and a deeper split
    for more encoder work; a probe's front keeps the combination that is best at its cost, so a
    plain blend that wins at low MACs is carried even when it ranks last.

    Examples:
        >>> carried([("lookahead", "t", 1), ("lookahead-accept", "t", 1), ("linear", "t", 1)], 2)
        [('lookahead', 't', 1), ('lookahead-accept', 't', 1), ('linear', 't', 1)]
        >>> carried([("linear", "t", 1), ("lookahead", "t", 1)], 1)
        [('linear', 't', 1)]
        >>> ranked = [("lookahead", "t", 8), ("linear", "t", 8), ("hold", "t", 8)]
        >>> carried(ranked, 1, fronts=[[("hold", "t", 8), ("lookahead", "t", 8)], [("linear", "t", 8)]])
        [('lookahead', 't', 8), ('linear', 't', 8), ('hold', 't', 8)]
    """
    kept = ranked[:count]
    plain = next((combo for combo in ranked if not combo[0].startswith("lookahead")), None)
    if plain is not None and all(policy.startswith("lookahead") for policy, *_ in kept):
        kept.append(plain)
    return list(dict.fromkeys([*kept, *(combo for front in fronts for combo in front)]))


def front_of(scores: dict[Candidate, dict]) -> list[Candidate]:
    """The candidates on the Pareto front of MACs against calibration PSNR, cheapest first."""
    candidates = list(scores)
    return [candidates[i] for i in pareto_front([(scores[c]["macs"], scores[c]["psnr_db"]) for c in candidates])]


def neighbours(keys: tuple[int, ...], steps: int) -> list[tuple[int, ...]]:
    """Schedules one edit away: a key moved by 1 or 2 steps, a key removed (never step 0)."""
    out = []
    for i, k in enumerate(keys):
        if k == 0:
            continue
        for delta in (-2, -1, 1, 2):
            moved = k + delta
            if 0 < moved < steps and moved not in keys:
                out.append(tuple(sorted(keys[:i] + (moved,) + keys[i + 1:])))
        out.append(keys[:i] + keys[i + 1:])
    return list(dict.fromkeys(out))
