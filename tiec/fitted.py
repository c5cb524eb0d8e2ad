"""Blend weights fitted on the sampler's own trajectory: the ``fitted`` policy and its fit.

A fixed rule (``linear``, ``polynomial(k)``) blends the cached keys with weights that depend on the
times only. :class:`Fitted` stores one weight vector per non-key evaluation instead, each over the
newest ``m`` keys, found by :func:`fit_blend` in closed form:

* the *target* at a non-key evaluation ``i`` is the encoder's output there in the run with every
  step a key (the features the cache stands in for);
* the *regressors* are the key features of the **cached run itself**, on-policy: a cached run
  drifts from the reference, and weights fitted on the reference's own keys (teacher forcing) do
  not see that drift -- on the demo DiT with DPM-Solver++ that fit was 14 dB worse;
* the weights minimise ``Σ ‖Σ_j w_j K_j − F_i‖² + λ ‖w − w_linear‖²`` over all calibration
  samples: ridge regression toward the ``linear`` weights, so a few trajectories suffice; ``λ`` is
  ``ridge`` times the mean of the Gram matrix's diagonal, so ``ridge`` has no units;
* refitting changes the trajectory the next fit sees, so the fit runs a few rounds, each scored
  (PSNR of the final samples against the reference's), and keeps the best; it stops at the first
  round that does not improve.

The weights are keyed by time: each entry holds the query time, the key times it blends and the
weights, so a run at other times (another sampler, step count or key schedule) is refused with an
error instead of silently blending with wrong weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Optional, Sequence

import torch

from ._errors import TiecTypeError, TiecValueError
from .blend import Features
from .cached_model import _scalar_time
from .policies import Hold, Linear, Policy
from .progress import progress_bar
from .protocol import cached_part, fresh_features
from .schedules import KeysLike, get_schedule

__all__ = ["FitResult", "Fitted", "FittedStep", "fit_blend", "ridge_weights"]

#: Relative tolerance when a run's times are matched to the fitted ones (the times are stored as
#: JSON floats, which round-trip exactly; the tolerance only absorbs float32 timestep tensors).
TOLERANCE = 1e-6


def _close(a: float, b: float) -> bool:
    return abs(a - b) <= TOLERANCE * max(1.0, abs(a), abs(b))


@dataclass(frozen=True)
class FittedStep:
    """The weights of one non-key evaluation: at time ``tau``, over the keys at ``knots`` (oldest first)."""

    tau: float
    knots: tuple[float, ...]
    weights: tuple[float, ...]

    def __post_init__(self) -> None:
        values = (self.tau, *self.knots, *self.weights)
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
            raise TiecValueError(f"a fitted step needs finite numbers, got tau={self.tau!r}, knots={self.knots!r}, "
                                 f"weights={self.weights!r}")
        if not self.knots or len(self.weights) != len(self.knots):
            raise TiecValueError(f"a fitted step needs one weight per key time, got knots={list(self.knots)}, "
                                 f"weights={list(self.weights)}")
        if len(set(self.knots)) != len(self.knots) or self.tau in self.knots:
            raise TiecValueError(f"a fitted step's key times must be distinct and differ from its time, got "
                                 f"tau={self.tau}, knots={list(self.knots)}")


@dataclass(frozen=True, repr=False)
class Fitted(Policy):
    """Per-evaluation blend weights fitted on the sampler's trajectory (:func:`fit_blend`).

    At a stored key's time the weights are one-hot (that key, bit for bit), as for every policy;
    elsewhere the query time must be one the weights were fitted for, with the same newest keys,
    or :meth:`weights` raises naming both.

    Args:
        steps: one :class:`FittedStep` per non-key evaluation.

    Examples:
        >>> policy = Fitted((FittedStep(700.0, (900.0, 800.0), (-0.9, 1.9)),))
        >>> policy.weights([900.0, 800.0], 700.0)
        (-0.9, 1.9)
        >>> policy.weights([900.0, 800.0], 800.0)  # a key: exact
        (0.0, 1.0)
        >>> policy
        Fitted(steps=1, keys_needed=2, times=700.0..700.0)
    """

    steps: tuple[FittedStep, ...]
    name: ClassVar[str] = "fitted"

    def __post_init__(self) -> None:
        if not isinstance(self.steps, tuple) or not all(isinstance(s, FittedStep) for s in self.steps):
            raise TiecTypeError(f"steps must be a tuple of FittedStep, got {type(self.steps).__name__}")
        if not self.steps:
            raise TiecValueError("a fitted policy needs the weights of at least one step, got none")

    @property
    def keys_needed(self) -> int:
        return max(len(step.knots) for step in self.steps)

    def __repr__(self) -> str:
        taus = [step.tau for step in self.steps]
        return f"Fitted(steps={len(self.steps)}, keys_needed={self.keys_needed}, times={max(taus)}..{min(taus)})"

    def __str__(self) -> str:
        return self.name

    def covers(self, query: float) -> bool:
        return any(_close(step.tau, float(query)) for step in self.steps)

    def weights(self, knots: Sequence[float], query: float) -> tuple[float, ...]:
        if not knots:
            raise TiecValueError("knots must hold at least one time, got an empty sequence")
        knots = [float(k) for k in knots]
        query = float(query)
        if query in knots:
            return tuple(1.0 if k == query else 0.0 for k in knots)
        near = [step for step in self.steps if _close(step.tau, query)]
        for step in near:
            used = knots[len(knots) - len(step.knots):]
            if len(used) == len(step.knots) and all(_close(a, b) for a, b in zip(used, step.knots)):
                return (0.0,) * (len(knots) - len(used)) + step.weights
        if near:
            raise TiecValueError(f"the fitted weights at tau={query} blend keys at {[list(s.knots) for s in near]}, "
                                 f"but the cache holds keys at {knots}: they were fitted for another key schedule; "
                                 "refit for this one")
        taus = sorted({step.tau for step in self.steps}, reverse=True)
        raise TiecValueError(f"the fitted weights have no entry for tau={query} (they cover {len(taus)} times from "
                             f"{taus[0]} to {taus[-1]}): they were fitted for another sampler, step count or key "
                             "schedule, or the run blends over another time coordinate than 't'; refit for this run")

    def to_list(self) -> list[dict]:
        """The weights as JSON-ready rows ``{"tau", "keys", "weights"}`` (a configuration's ``weights``)."""
        return [{"tau": s.tau, "keys": list(s.knots), "weights": list(s.weights)} for s in self.steps]

    @classmethod
    def from_list(cls, rows: Any) -> "Fitted":
        """The inverse of :meth:`to_list`; a malformed row is an error naming it."""
        if not isinstance(rows, list):
            raise TiecTypeError(f"fitted weights must be a list of {{'tau', 'keys', 'weights'}} rows, got "
                                f"{type(rows).__name__}")
        steps = []
        for i, row in enumerate(rows):
            if not isinstance(row, dict) or set(row) != {"tau", "keys", "weights"}:
                raise TiecValueError(f"weights[{i}] must be an object with 'tau', 'keys' and 'weights', got {row!r}")
            if not isinstance(row["keys"], list) or not isinstance(row["weights"], list):
                raise TiecValueError(f"weights[{i}]: 'keys' and 'weights' must be lists, got {row!r}")
            try:
                steps.append(FittedStep(row["tau"], tuple(row["keys"]), tuple(row["weights"])))
            except TiecValueError as error:
                raise TiecValueError(f"weights[{i}]: {error}") from None
        return cls(tuple(steps))


def ridge_weights(gram: torch.Tensor, cross: torch.Tensor, prior: Sequence[float], ridge: float) -> tuple[float, ...]:
    """``argmin_w  wᵀ G w − 2 wᵀ c + λ ‖w − prior‖²`` with ``λ = ridge · mean(diag G)``.

    ``gram`` is ``G[a, b] = Σ <K_a, K_b>`` and ``cross`` ``c[a] = Σ <K_a, F>`` (float64). With
    ``ridge=0`` this is plain least squares; as ``ridge`` grows the weights tend to ``prior``.

    Examples:
        >>> g = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.float64)
        >>> ridge_weights(g, torch.tensor([0.2, 0.8], dtype=torch.float64), [0.5, 0.5], 0.0)
        (0.2, 0.8)
        >>> ridge_weights(g, torch.tensor([0.2, 0.8], dtype=torch.float64), [0.5, 0.5], 1.0)
        (0.35, 0.65)
    """
    prior_t = torch.tensor(list(prior), dtype=torch.float64)
    scale = float(torch.diagonal(gram).mean())
    if not scale > 0:
        return tuple(float(w) for w in prior_t)
    lam = ridge * scale
    system = gram + lam * torch.eye(len(prior_t), dtype=torch.float64)
    solution = torch.linalg.lstsq(system, (cross + lam * prior_t)[:, None]).solution[:, 0]
    return tuple(round(float(w), 15) for w in solution)


def _time(t: Any) -> float:
    time = _scalar_time(t)
    if time is None:
        raise TiecValueError("fitting needs one time per evaluation; the samples of a call carry different times")
    return time


class _Recorder:
    """A split that passes through and records what the cache sees: each encoder call's cached
    features and time, and each decoder call's time (one per evaluation)."""

    def __init__(self, split: Any) -> None:
        self.split = split
        self.events: list[tuple[str, float, Optional[Features]]] = []

    def encode(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        features = self.split.encode(x, t, **cond)
        self.events.append(("encode", _time(t), tuple(f.detach().double() for f in cached_part(self.split, features))))
        return features

    def decode(self, features: Features, t: Any, **cond: Any) -> torch.Tensor:
        self.events.append(("decode", _time(t), None))
        return self.split.decode(features, t, **cond)

    @property
    def fresh_features(self) -> int:
        return fresh_features(self.split)

    def refresh(self, x: torch.Tensor, t: Any, **cond: Any) -> Features:
        return self.split.refresh(x, t, **cond)

    def evaluations(self) -> list[tuple[float, Optional[Features]]]:
        """``(time, features of the key computed for it or None)`` per evaluation, in order."""
        out, pending = [], None
        for kind, tau, features in self.events:
            if kind == "encode":
                pending = features
            else:
                out.append((tau, pending))
                pending = None
        return out


def _dot(a: Features, b: Features) -> float:
    return float(sum(torch.dot(x.reshape(-1), y.reshape(-1)) for x, y in zip(a, b)))


@dataclass(frozen=True)
class FitResult:
    """What :func:`fit_blend` found: the best weights, and every candidate tried (its label, score
    and weights, in order), with the index of the winner."""

    labels: tuple[str, ...]
    scores: tuple[float, ...]
    best: int
    candidates: tuple[Fitted, ...]

    @property
    def policy(self) -> Fitted:
        """The best candidate's weights."""
        return self.candidates[self.best]

    @property
    def chosen(self) -> str:
        """The best candidate's label (``"hold"``, ``"linear"``, ``"teacher forcing, refit 1"``, ...)."""
        return self.labels[self.best]

    def __repr__(self) -> str:
        return f"FitResult(best={self.chosen!r}, score={self.scores[self.best]:.2f}, policy={self.policy!r})"

    def table(self) -> dict[str, float]:
        """``{label: score}`` of every candidate."""
        return dict(zip(self.labels, self.scores))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float((a.double() - b.double()).pow(2).mean())
    peak = float(b.double().abs().max()) or 1.0
    return math.inf if mse == 0 else 10 * math.log10(peak**2 / mse)


def _gram(key_features: dict[int, Features], used: list[int], target: Features) -> tuple[torch.Tensor, torch.Tensor]:
    gram = torch.tensor([[_dot(key_features[a], key_features[b]) for b in used] for a in used], dtype=torch.float64)
    cross = torch.tensor([_dot(key_features[a], target) for a in used], dtype=torch.float64)
    return gram, cross


@torch.no_grad()
def fit_blend(
    run: Callable[..., torch.Tensor],
    split: Any,
    *,
    keys: KeysLike,
    num_keys: int = 3,
    ridge: float = 1e-4,
    rounds: int = 3,
    score: Optional[Callable[[Fitted], float]] = None,
    progress: bool = False,
) -> FitResult:
    """Fit :class:`Fitted` weights for ``keys`` on the trajectories that ``run`` samples.

    ``run(split, keys=..., policy=...)`` samples the calibration inputs with ``split`` (a wrapper
    of the one given, which records the features), blending over the model time ``t`` -- e.g.
    ``lambda split, **kw: tiec.sample(split, scheduler, noise, num_inference_steps=20,
    coordinate="t", **kw).sample`` -- and returns the final samples. The key schedule is laid
    over the run's model evaluations, as :func:`tiec.sample` does; a loop whose steps make several
    evaluations at different times (Heun through :class:`tiec.CachedModel`, which keys steps,
    not evaluations) is refused with an error. The reference run's features at every evaluation
    are kept in float64 for the fit (on the demo models a few hundred MB for 32 inputs); on a large
    model, fit on a few inputs.

    The candidates, each scored: three starts -- the ``hold`` and ``linear`` weights, and the
    weights fitted to the reference run's own keys (teacher forcing) -- then from each start a
    line of on-policy refits, each on the key features of a cached run with the line's previous
    weights, continuing while the score improves, at most ``rounds`` refits per line. The
    best-scored weights win, so the fit is never worse than ``hold`` or ``linear`` on the
    scoring inputs. On the demo DiT with DPM-Solver++ 20 and keys every 3, teacher forcing alone
    scored far below ``linear``, but its on-policy refit scored best of all.

    Args:
        run: samples the calibration inputs, as above; must give the same trajectory for the same
            policy (fixed noise and, for a stochastic sampler, fixed generators).
        split: the model as an encoder/decoder split (guidance, if any, is ``run``'s business).
        keys: the key schedule to fit for.
        num_keys: ``m``, the newest keys each evaluation blends (at least 2).
        ridge: the pull toward the ``linear`` weights (see :func:`ridge_weights`).
        rounds: at most this many on-policy refits from each start.
        score: a policy's score, higher is better (e.g. PSNR on held-out inputs); by default the
            PSNR of ``run``'s final samples against the reference's.
        progress: show a bar over the runs.

    Returns:
        The best weights and every candidate's score, in the order above.

    Examples:
        >>> import torch, tiec
        >>> from diffusers import DDIMScheduler
        >>> class Split:
        ...     def encode(self, x, t):
        ...         return (torch.sin(x + float(t) / 300),)
        ...     def decode(self, features, t):
        ...         return features[0] * 0.1
        >>> noise = torch.randn(4, 1, 4, 4, generator=torch.Generator().manual_seed(0))
        >>> run = lambda split, **kw: tiec.sample(split, DDIMScheduler(), noise, num_inference_steps=10,
        ...                                       coordinate="t", **kw).sample
        >>> result = fit_blend(run, Split(), keys="every:3", rounds=1)
        >>> result.policy.keys_needed, len(result.policy.steps), result.labels[:3]
        (3, 6, ('hold', 'linear', 'teacher forcing'))
    """
    if isinstance(num_keys, bool) or not isinstance(num_keys, int) or num_keys < 2:
        raise TiecValueError(f"num_keys must be an int >= 2 (the keys each step blends), got {num_keys!r}")
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or not ridge >= 0 or not math.isfinite(ridge):
        raise TiecValueError(f"ridge must be a finite number >= 0, got {ridge!r}")
    if isinstance(rounds, bool) or not isinstance(rounds, int) or rounds < 0:
        raise TiecValueError(f"rounds must be an int >= 0, got {rounds!r}")
    schedule = get_schedule(keys)
    with progress_bar(total=4 + 6 * rounds, enabled=progress, desc="tiec fit") as bar:
        recorder = _Recorder(split)
        reference = run(recorder, keys="all", policy="hold")
        evaluations = recorder.evaluations()
        bar.update(1)
        if any(features is None for _, features in evaluations):
            raise TiecValueError("run(split, keys='all', ...) must run the encoder at every evaluation")
        key_steps = schedule.key_steps(len(evaluations))
        targets = {i: f for i, (_, f) in enumerate(evaluations) if i not in key_steps}
        teacher = {i: evaluations[i][1] for i in key_steps}
        times = [tau for tau, _ in evaluations]
        if not targets:
            raise TiecValueError(f"keys={keys!r} makes every one of the {len(times)} evaluations a key: nothing to fit")
        del evaluations, recorder

        def table(key_features: Optional[dict[int, Features]], rule: Policy = Linear()) -> Fitted:
            """The weights fitted on ``key_features`` toward ``linear``'s (``None``: ``rule``'s own)."""
            steps = []
            for i in sorted(targets):
                used = [k for k in key_steps if k < i][-num_keys:]
                knots = [times[k] for k in used]
                if key_features is None or len(used) < 2:
                    weights = rule.weights(knots, times[i])
                else:
                    weights = ridge_weights(*_gram(key_features, used, targets[i]), Linear().weights(knots, times[i]),
                                            ridge)
                steps.append(FittedStep(times[i], tuple(knots), weights))
            return Fitted(tuple(steps))

        def on_policy(policy: Fitted) -> Fitted:
            recorder = _Recorder(split)
            run(recorder, keys=keys, policy=policy)
            key_features = {i: f for i, (_, f) in enumerate(recorder.evaluations()) if f is not None}
            if sorted(key_features) != list(key_steps):
                raise TiecValueError("the cached run's keys differ from the schedule's: run must pass keys and "
                                     "policy through to the sampler")
            bar.update(1)
            return table(key_features)

        def scored(label: str, policy: Fitted) -> tuple[str, float, Fitted]:
            value = float(score(policy)) if score is not None else _psnr(run(split, keys=keys, policy=policy),
                                                                         reference)
            bar.update(1)
            return label, value, policy

        starts = [scored("hold", table(None, Hold())), scored("linear", table(None)),
                  scored("teacher forcing", table(teacher))]
        candidates = list(starts)
        for start in starts:
            line = start
            for r in range(1, rounds + 1):
                refit = scored(f"{start[0]}, refit {r}", on_policy(line[2]))
                candidates.append(refit)
                if not refit[1] > line[1]:
                    break
                line = refit
    best = max(range(len(candidates)), key=lambda n: candidates[n][1])
    return FitResult(tuple(c[0] for c in candidates), tuple(c[1] for c in candidates), best,
                     tuple(c[2] for c in candidates))
