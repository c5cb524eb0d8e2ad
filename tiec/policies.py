"""Blend policies: how cached key features are combined at a query time.

A policy is a small frozen object with two things: how many keys it needs
(:attr:`Policy.keys_needed`, which bounds the cache's memory) and the interpolation weights it
assigns to the stored keys for a query time (:meth:`Policy.weights`). The weights are plain Python
floats (float64) computed from scalar times only; applying them to tensors is
:func:`tiec.blend.weighted_sum`'s job.

=================  ===========  ==============================================================
policy             keys needed  weights for keys ``τ_0 < … < τ_n`` (any direction) and query ``s``
=================  ===========  ==============================================================
``hold``           1            ``1`` on the newest key (FasterDiffusion's encoder propagation)
``linear``         2            Lagrange line through the two newest keys (TIEC)
``polynomial(k)``  k + 1        Lagrange polynomial of degree ``k`` through the ``k+1`` newest keys
``lookahead``      2            ``linear``, between the key and a *predicted* next key (:class:`Lookahead`)
=================  ===========  ==============================================================

With fewer keys stored than a policy needs, it uses the highest degree the stored keys allow; with
one key every policy falls back to ``hold``.

Between two keys the linear weights are a convex blend (both in ``[0, 1]``). Past the newest key --
the usual case in a causal sampling loop, where the next key's features do not exist yet -- they
*extrapolate*: with keys ``τ_0, τ_1`` and ``w = (τ_1 - s) / (τ_1 - τ_0)`` the older key gets ``w < 0``
and the newer ``1 - w > 1``.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import ClassVar, Sequence, Union

from ._errors import TiecTypeError, TiecValueError

__all__ = ["Policy", "Hold", "Linear", "Lookahead", "Polynomial", "PolicyLike", "get_policy", "lagrange_weights"]


def lagrange_weights(knots: Sequence[float], query: float) -> tuple[float, ...]:
    """Weights of the Lagrange polynomial through ``knots`` evaluated at ``query``.

    ``sum(w[j] * f(knots[j]))`` is the value at ``query`` of the unique polynomial of degree
    ``len(knots) - 1`` through the points ``(knots[j], f(knots[j]))``, so polynomials up to that
    degree are reproduced exactly. Computed in float64 (Python floats). When ``query`` equals a
    knot, the weights are exactly one-hot, so that key is returned bit for bit.

    Args:
        knots: distinct finite times, in any order.
        query: the time to evaluate at.

    Returns:
        One weight per knot, in the order of ``knots``.

    Examples:
        >>> lagrange_weights([0.0, 1.0], 0.25)
        (0.75, 0.25)
        >>> lagrange_weights([0.0, 1.0], 2.0)  # extrapolation: the older key gets a negative weight
        (-1.0, 2.0)
    """
    taus = [float(k) for k in knots]
    s = float(query)
    if not taus:
        raise TiecValueError("knots must hold at least one time, got an empty sequence")
    if not all(math.isfinite(v) for v in (*taus, s)):
        raise TiecValueError(f"knots and query must be finite, got knots={taus}, query={s}")
    if len(set(taus)) != len(taus):
        raise TiecValueError(f"knots must be distinct, got {taus}")
    if s in taus:
        return tuple(1.0 if tau == s else 0.0 for tau in taus)
    weights = []
    for j, tau_j in enumerate(taus):
        w = 1.0
        for m, tau_m in enumerate(taus):
            if m != j:
                w *= (s - tau_m) / (tau_j - tau_m)
        weights.append(w)
    return tuple(weights)


class Policy:
    """Base class of blend policies. Subclasses are frozen dataclasses."""

    name: ClassVar[str]

    @property
    def keys_needed(self) -> int:
        """How many of the newest keys the cache must keep for this policy."""
        raise NotImplementedError

    def covers(self, query: float) -> bool:
        """Whether the policy has weights at ``query`` besides the keys' own times: always, except for
        weights fitted for certain times (:class:`tiec.Fitted`). The quality monitor skips the keys
        a policy does not cover."""
        return True

    def weights(self, knots: Sequence[float], query: float) -> tuple[float, ...]:
        """Weights for the stored keys at ``knots`` (oldest first) evaluated at ``query``.

        Uses the newest ``min(len(knots), keys_needed)`` keys; the others get weight 0.
        """
        if not knots:
            raise TiecValueError("knots must hold at least one time, got an empty sequence")
        used = min(len(knots), self.keys_needed)
        head = (0.0,) * (len(knots) - used)
        return head + lagrange_weights(knots[len(knots) - used :], query)


@dataclass(frozen=True)
class Hold(Policy):
    """Reuse the newest key's features unchanged (FasterDiffusion's encoder propagation).

    Examples:
        >>> Hold().weights([3.0, 2.0], 1.5)
        (0.0, 1.0)
    """

    name: ClassVar[str] = "hold"

    @property
    def keys_needed(self) -> int:
        return 1


@dataclass(frozen=True)
class Linear(Policy):
    """Linear blend through the two newest keys: interpolation between them, extrapolation past them.

    Examples:
        >>> Linear().weights([800.0, 600.0], 700.0)  # halfway between: a convex blend
        (0.5, 0.5)
        >>> Linear().weights([800.0, 600.0], 500.0)  # past the newest key: extrapolation
        (-0.5, 1.5)
    """

    name: ClassVar[str] = "linear"

    @property
    def keys_needed(self) -> int:
        return 2


@dataclass(frozen=True)
class Polynomial(Policy):
    """Lagrange (equivalently Newton) polynomial of ``degree`` through the ``degree + 1`` newest keys.

    ``Polynomial(1)`` equals :class:`Linear`. Higher degrees reproduce smoother trajectories but
    extrapolate wildly across long gaps between keys; measure before using them.

    Args:
        degree: polynomial degree (the "order" of the design notes), at least 1.

    Examples:
        >>> Polynomial(2).weights([2.0, 1.0, 0.0], -1.0)
        (1.0, -3.0, 3.0)
    """

    degree: int = 2
    name: ClassVar[str] = "polynomial"

    def __post_init__(self) -> None:
        if isinstance(self.degree, bool) or not isinstance(self.degree, int):
            raise TiecTypeError(
                f"degree must be an int, got {type(self.degree).__name__} {self.degree!r}"
            )
        if self.degree < 1:
            raise TiecValueError(
                f"degree must be >= 1 (degree 0 is the 'hold' policy), got degree={self.degree}"
            )

    @property
    def keys_needed(self) -> int:
        return self.degree + 1


@dataclass(frozen=True)
class Lookahead(Linear):
    """Interpolate toward the *next* key, whose features come from a predicted latent.

    At each key the sampling loop predicts the next key's latent with a one-step jump from the
    model output (:func:`tiec.lookahead.predict_latent`), encodes it and stores it as the next key,
    so the steps in between blend two keys linearly instead of extrapolating past the newest.
    At the next key, ``accept=False`` (``"lookahead"``) re-encodes the real latent: one extra
    encoder pass per interval. ``accept=True`` (``"lookahead-accept"``) keeps the predicted
    features: no extra pass, but the real latent is encoded only at step 0.

    Only :func:`tiec.sample` can predict latents; :class:`tiec.CachedModel` and the adapters built
    on it refuse this policy.

    Examples:
        >>> get_policy("lookahead-accept")
        Lookahead(accept=True)
        >>> Lookahead().weights([800.0, 600.0], 700.0)  # a plain linear blend once both keys exist
        (0.5, 0.5)
    """

    accept: bool = False
    name: ClassVar[str] = "lookahead"

    def __post_init__(self) -> None:
        if not isinstance(self.accept, bool):
            raise TiecTypeError(f"accept must be a bool, got {type(self.accept).__name__} {self.accept!r}")


PolicyLike = Union[str, Policy]

_POLYNOMIAL_SPEC = re.compile(r"^poly(?:nomial)?[(:]\s*(-?\d+)\s*\)?$")


def get_policy(spec: PolicyLike) -> Policy:
    """Turn a policy name or object into a :class:`Policy`.

    Accepted strings: ``"hold"``, ``"linear"``, ``"polynomial(k)"`` or ``"polynomial:k"``
    (``"poly"`` works too), ``"lookahead"`` and ``"lookahead-accept"``. A :class:`Policy` instance is
    returned unchanged.

    Examples:
        >>> get_policy("polynomial(3)")
        Polynomial(degree=3)
        >>> get_policy("linear")
        Linear()
    """
    if isinstance(spec, Policy):
        return spec
    if not isinstance(spec, str):
        raise TiecTypeError(
            f"policy must be a str or a tiec Policy, got {type(spec).__name__} {spec!r}"
        )
    text = spec.strip().lower()
    if text == "hold":
        return Hold()
    if text == "linear":
        return Linear()
    if text in ("lookahead", "lookahead-accept"):
        return Lookahead(accept=text.endswith("accept"))
    match = _POLYNOMIAL_SPEC.match(text)
    if match:
        return Polynomial(int(match.group(1)))
    if text == "fitted":
        raise TiecValueError("policy 'fitted' needs its weights: pass a tiec.Fitted (tiec.fit_blend's result) or a "
                             "configuration file written by `tiec fit`")
    raise TiecValueError(
        f"policy {spec!r} is unknown; expected 'hold', 'linear', 'polynomial(k)' with k >= 1, "
        "'lookahead' or 'lookahead-accept'"
    )
