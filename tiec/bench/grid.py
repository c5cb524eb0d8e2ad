"""Which rows ``tiec bench`` runs: the grid of :class:`Method` s for a demo model and sampler, the
fewer-steps rows that match the cached rows' MACs, the peers' rows, and the ``--part`` cuts that
split a grid into pieces.

The grid: the reference (every step a key); the same sampler with fewer steps at the MACs of each
cached run; FasterDiffusion's reuse (``hold``) and TIEC's ``linear``, ``polynomial(2)``,
``lookahead`` and ``lookahead-accept`` on the FasterDiffusion preset and on uniform keys every 2, 3
and 5 steps; blend weights fitted for each of those key sets; prior noise injection; parallel decoding (wall time only); and peers from their own
packages (run by :mod:`tiec.bench.peers`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Sequence, Union

from .._errors import TiecValueError

__all__ = ["BRANCH_CUTS", "GUIDANCE", "PARTS", "SAMPLERS", "Method", "branch", "branch_methods", "config_method",
           "fewer_steps", "fitted_methods", "method_grid", "part_filter", "peer_methods", "split_options"]

#: ``--sampler`` name: (scheduler name, reference step count, FasterDiffusion preset).
SAMPLERS = {"ddim": ("ddim", 50, "ddim-50"), "dpm": ("dpm", 20, "dpm-solver-20")}
GUIDANCE = 2.0

#: A split depth label: an int (DiT encoder blocks, UNet decoder start) or ``"branch:<layers>"``
#: for a UNet shallow branch; calibration candidates and the speed run's rows carry one.
Depth = Union[int, str]


def branch(depth: int) -> str:
    """The depth label of a UNet shallow branch of ``depth`` layers: ``"branch:<depth>"``."""
    return f"branch:{depth}"


def split_options(depth: Depth, depth_option: str) -> dict[str, Optional[int]]:
    """The split keywords of a depth label: ``{depth_option: depth}`` for an int, and
    ``{"branch_depth": d}`` for a UNet shallow branch ``"branch:d"``.

    Examples:
        >>> split_options(1, "decoder_start"), split_options("branch:2", "decoder_start")
        ({'decoder_start': 1}, {'branch_depth': 2})
    """
    if isinstance(depth, str):
        kind, _, value = depth.partition(":")
        if kind != "branch" or not value.isdigit():
            raise TiecValueError(f"a split depth is an int or 'branch:<layers>', got {depth!r}")
        return {"branch_depth": int(value)}
    return {depth_option: depth}


@dataclass(frozen=True)
class Method:
    """One row of the benchmark."""

    name: str
    family: str  # reference | fewer-steps | fasterdiffusion | tiec | fitted | branch | configured | peer
    steps: int
    keys: str = "all"
    policy: str = "linear"
    noise_injection: bool = False
    parallel_decode: bool = False
    peer: Optional[str] = None
    peer_options: tuple[tuple[str, Any], ...] = ()
    quality: bool = True  # False: a wall-time row (its images equal another row's)
    coordinate: str = "auto"
    depth: Optional[int] = None  # split depth: DiT encoder blocks / UNet decoder start (None: the default)
    branch_depth: Optional[int] = None  # UNet shallow branch (instead of depth)


def config_method(config: Any, steps: int, label: str) -> Method:
    """A row for a :class:`tiec.TiecConfig` (``tiec bench --config``)."""
    from ..config import load_config

    loaded = load_config(config)
    depth = loaded.encoder_blocks if loaded.encoder_blocks is not None else loaded.decoder_start
    return Method(f"configured ({label}): keys {loaded.keys}, {loaded.policy}", "configured", steps, loaded.keys,
                  loaded.policy, coordinate=loaded.coordinate, depth=depth, branch_depth=loaded.branch_depth)


def method_grid(sampler: str, *, model: str, quick: bool = False) -> list[Method]:
    """The methods of a run, before the fewer-steps rows (those need the cached runs' MACs)."""
    _, steps, preset = SAMPLERS[sampler]
    if quick:
        steps = 10
    key_sets = ["every:3"] if quick else [preset, "every:2", "every:3", "every:5"]
    policies = ["linear", "lookahead"] if quick else ["linear", "polynomial(2)", "lookahead", "lookahead-accept"]
    methods = [Method("reference (every step a key)", "reference", steps)]
    for keys in key_sets:
        methods.append(Method(f"FasterDiffusion hold, keys {keys}", "fasterdiffusion", steps, keys, "hold"))
        methods += [Method(f"TIEC {policy}, keys {keys}", "tiec", steps, keys, policy) for policy in policies]
    if not quick:
        for policy in ("hold", "linear"):
            family = "fasterdiffusion" if policy == "hold" else "tiec"
            methods.append(Method(f"{'FasterDiffusion hold' if policy == 'hold' else 'TIEC linear'}, keys every:3, "
                                  "noise injection", family, steps, "every:3", policy, noise_injection=True))
    methods.append(Method("TIEC linear, keys every:3, parallel decoding", "tiec", steps, "every:3", "linear",
                          parallel_decode=True, quality=False))
    methods += fitted_methods(steps, ["every:3"] if quick else [preset, "every:2", "every:3", "every:5"])
    if model == "unet-digits":
        methods += branch_methods(steps, quick=quick)
    methods += peer_methods(model, steps, quick=quick)
    return methods


def fitted_methods(steps: int, key_sets: Sequence[str]) -> list[Method]:
    """The ``fitted`` rows: blend weights fitted for each key set on this sampler's own trajectories
    (:func:`tiec.calibrate.fit.fit_demo`, inputs disjoint from the benchmark's), over ``t``."""
    return [Method(f"TIEC fitted, keys {keys}", "fitted", steps, keys, "fitted", coordinate="t") for keys in key_sets]


#: The demo UNet's shallow-branch cuts: ``conv_in`` and the last up layer (the finest), and the
#: whole outermost block each side (``conv_in`` and down block 0's layer; up block 1).
BRANCH_CUTS = {1: "finest cut", 2: "block cut"}


def branch_methods(steps: int, *, quick: bool = False) -> list[Method]:
    """The UNet shallow-branch rows: each cut with ``hold`` (DeepCache's rule), ``linear`` and
    ``lookahead-accept`` on keys every 2, 3 and 5 steps, and weights fitted for the finest cut.
    ``linear`` blends over the step index and the lookahead over log σ, the coordinates each
    measured best on this UNet (docs/choosing-keys.md)."""
    key_sets = ["every:3"] if quick else ["every:2", "every:3", "every:5"]
    policies = ["hold", "linear"] if quick else ["hold", "linear", "lookahead-accept", "fitted"]
    coordinates = {"lookahead-accept": "auto", "fitted": "t"}
    return [Method(f"TIEC branch {depth} ({cut}) {policy}, keys {keys}", "branch", steps, keys, policy,
                   branch_depth=depth, coordinate=coordinates.get(policy, "step"))
            for depth, cut in BRANCH_CUTS.items() for keys in key_sets for policy in policies
            if policy != "fitted" or depth == 1]


def fewer_steps(methods_macs: Sequence[tuple[Method, int]], reference_macs: int, steps: int) -> list[Method]:
    """The same sampler with ``round(steps · macs / reference_macs)`` steps for each cached run's MACs."""
    counts = sorted({max(1, round(steps * macs / reference_macs)) for method, macs in methods_macs
                     if method.family in ("fasterdiffusion", "tiec", "fitted", "branch", "configured", "peer")
                     and method.quality})
    return [Method(f"fewer steps: {n}", "fewer-steps", n) for n in counts if n < steps]


def peer_methods(model: str, steps: int, *, quick: bool = False) -> list[Method]:
    """The peer rows for a demo model."""
    if model == "unet-digits":
        intervals = [3] if quick else [2, 3, 5]
        return [Method(f"DeepCache, interval {k}, branch 0", "peer", steps, peer="deepcache",
                       peer_options=(("cache_interval", k), ("cache_branch_id", 0))) for k in intervals]
    rows = [Method("diffusers First Block Cache, threshold 0.1", "peer", steps, peer="first-block-cache",
                   peer_options=(("threshold", 0.1),))]
    if not quick:
        rows.insert(0, Method("diffusers First Block Cache, threshold 0.05", "peer", steps, peer="first-block-cache",
                              peer_options=(("threshold", 0.05),)))
    intervals = [3] if quick else [2, 3, 4, 5]
    rows += [Method(f"diffusers TaylorSeer, interval {k}, order 1", "peer", steps, peer="taylorseer",
                    peer_options=(("cache_interval", k), ("max_order", 1), ("disable_cache_before_step", 1),
                                  ("cache_identifiers", (r"transformer_blocks\.\d+",))))
             for k in intervals]
    if not quick:
        rows.append(Method("diffusers Pyramid Attention Broadcast, skip 2", "peer", steps,
                           peer="pyramid-attention-broadcast",
                           peer_options=(("spatial_attention_block_skip_range", 2),
                                         ("spatial_attention_timestep_skip_range", (100, 800)))))
    return rows


#: ``--part`` names and the families each runs (the reference row is in every part).
PARTS = {"fasterdiffusion": "fasterdiffusion", "tiec": "tiec", "configured": "configured", "peers": "peer",
         "fewer-steps": "fewer-steps", "branch": "branch", "fitted": "fitted"}


def part_filter(part: str, grid: Sequence[Method]) -> Callable[[Method], bool]:
    """Which rows a ``part`` runs: a name of :data:`PARTS` (a family), or a cut of a family too long
    for one sitting: ``family/keys`` for its rows on one key set of the grid (``tiec/every:3``),
    ``family/keys/policy`` for those of one policy (``tiec/every:3/lookahead``; the noise-injection and
    parallel-decoding rows go with their policy), ``peers/<peer>`` for one package's rows
    (``peers/taylorseer``), and ``fewer-steps/A-B`` (or ``/N``) for the
    fewer-steps rows of ``A`` to ``B`` steps.

    Examples:
        >>> grid = method_grid("ddim", model="dit-digits")
        >>> keep = part_filter("tiec/every:5", grid)
        >>> [m.policy for m in grid if keep(m)]
        ['linear', 'polynomial(2)', 'lookahead', 'lookahead-accept']
        >>> keep = part_filter("tiec/every:3/linear", grid)
        >>> [m.name for m in grid if keep(m)]  # doctest: +NORMALIZE_WHITESPACE
        ['TIEC linear, keys every:3', 'TIEC linear, keys every:3, noise injection',
         'TIEC linear, keys every:3, parallel decoding']
        >>> [m.name for m in grid if part_filter("peers/pyramid-attention-broadcast", grid)(m)]
        ['diffusers Pyramid Attention Broadcast, skip 2']
        >>> keep = part_filter("fewer-steps/20-39", grid)
        >>> [m.steps for m in fewer_steps([(grid[1], 500)], 1000, 50) if keep(m)]
        [25]
    """
    name, _, cut = part.partition("/")
    if name not in PARTS:
        raise TiecValueError(f"part {part!r} is unknown; expected one of {sorted(PARTS)}, optionally with "
                             "/<key set> (e.g. tiec/every:3) and /<policy> (tiec/every:3/linear), or "
                             "fewer-steps/<steps> (e.g. fewer-steps/20-39)")
    family = PARTS[name]
    if family == "fewer-steps" and cut:
        low, _, high = cut.partition("-")
        high = high or low  # fewer-steps/N: N to N
        if not (low.isdigit() and high.isdigit()) or int(low) > int(high):
            raise TiecValueError(f"part {part!r}: cut the fewer-steps rows by step count, as fewer-steps/A-B "
                                 f"(A <= B) or fewer-steps/N, e.g. fewer-steps/20-39; got {cut!r}")
        steps = range(int(low), int(high) + 1)
        return lambda method: method.family == family and method.steps in steps
    if family == "peer" and cut:  # peers/<peer>: one package's rows (peers/taylorseer)
        known = sorted({m.peer for m in grid if m.family == "peer"})
        if cut not in known:
            raise TiecValueError(f"part {part!r}: the peers of this grid are {known}, not {cut!r}")
        return lambda method: method.family == "peer" and method.peer == cut
    keys, _, policy = cut.partition("/")
    if keys or policy:  # a policy needs its key set: tiec//linear names the empty one
        known = sorted({m.keys for m in grid if m.family == family})
        if keys not in known:
            raise TiecValueError(f"part {part!r}: the {name} rows of this grid have the key sets {known}, "
                                 f"not {keys!r}")
    if policy:
        known = sorted({m.policy for m in grid if m.family == family and m.keys == keys})
        if policy not in known:
            raise TiecValueError(f"part {part!r}: the {name} rows on keys {keys} have the policies {known}, "
                                 f"not {policy!r}")
    return lambda method: (method.family == family and (not keys or method.keys == keys)
                           and (not policy or method.policy == policy))
