import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from tiec import Hold, Linear, Polynomial, get_policy, lagrange_weights
from tiec.policies import Policy

times = st.floats(min_value=-1000, max_value=1000, allow_nan=False, allow_infinity=False)


def distinct_knots(min_size=1, max_size=5):
    return st.lists(times, min_size=min_size, max_size=max_size, unique=True).filter(
        lambda ks: all(abs(a - b) > 1e-2 for i, a in enumerate(ks) for b in ks[i + 1 :])
    )


@given(knots=distinct_knots(), query=times)
def test_weights_sum_to_one(knots, query):
    span = max(knots) - min(knots) + 1.0
    assume(abs(query - sum(knots) / len(knots)) < 2 * span)  # keep extrapolation moderate
    weights = lagrange_weights(knots, query)
    scale = max(1.0, max(abs(w) for w in weights))
    assert math.fsum(weights) == pytest.approx(1.0, abs=1e-9 * scale)


@given(knots=distinct_knots(), data=st.data())
def test_weights_are_one_hot_at_knots(knots, data):
    j = data.draw(st.integers(0, len(knots) - 1))
    weights = lagrange_weights(knots, knots[j])
    assert weights == tuple(1.0 if i == j else 0.0 for i in range(len(knots)))


@given(
    knots=st.lists(st.floats(0, 10), min_size=2, max_size=5, unique=True).filter(
        lambda ks: min(abs(a - b) for i, a in enumerate(ks) for b in ks[i + 1 :]) > 0.5
    ),
    query=st.floats(0, 10),
    coefficients=st.lists(st.floats(-3, 3), min_size=5, max_size=5),
    data=st.data(),
)
def test_polynomials_up_to_the_degree_are_reproduced(knots, query, coefficients, data):
    degree = data.draw(st.integers(0, len(knots) - 1))

    def f(s):
        return sum(c * s**p for p, c in enumerate(coefficients[: degree + 1]))

    weights = lagrange_weights(knots, query)
    value = sum(w * f(k) for w, k in zip(weights, knots))
    assert value == pytest.approx(f(query), rel=1e-7, abs=1e-6)


@given(knots=distinct_knots(min_size=2), query=times, data=st.data())
def test_weights_do_not_depend_on_knot_order(knots, query, data):
    order = data.draw(st.permutations(range(len(knots))))
    weights = lagrange_weights(knots, query)
    permuted = lagrange_weights([knots[i] for i in order], query)
    for position, i in enumerate(order):
        assert permuted[position] == pytest.approx(weights[i], rel=1e-9, abs=1e-9)


@given(a=times, b=times, fraction=st.floats(0, 1))
def test_linear_between_two_keys_is_convex(a, b, fraction):
    assume(abs(a - b) > 1e-3)
    query = a + fraction * (b - a)
    for w in Linear().weights([a, b], query):
        assert -1e-12 <= w <= 1 + 1e-12


@given(older=times, gap=st.floats(0.01, 100), past=st.floats(0.01, 100))
def test_linear_past_the_newest_key_extrapolates(older, gap, past):
    newer = older - gap  # decreasing times, as in sampling
    w_older, w_newer = Linear().weights([older, newer], newer - past)
    assert w_older < 0 < 1 < w_newer
    # The design notes' seed formula w = (t1 - s) / (t1 - t0) gives w < 0 here.
    assert w_older == pytest.approx((newer - (newer - past)) / (newer - older) * 1, rel=1e-9)


def test_hold_uses_the_newest_key_only():
    assert Hold().weights([5.0, 4.0], 1.0) == (0.0, 1.0)


@pytest.mark.parametrize("policy", [Linear(), Polynomial(2), Polynomial(3)])
def test_one_key_falls_back_to_hold(policy):
    assert policy.weights([7.0], 3.0) == (1.0,)


def test_polynomial_uses_the_newest_keys_when_more_are_given():
    assert Polynomial(1).weights([3.0, 2.0, 1.0], 0.0) == (0.0, -1.0, 2.0)


@pytest.mark.parametrize(
    "spec, expected",
    [("hold", Hold()), ("linear", Linear()), ("polynomial(2)", Polynomial(2)),
     ("polynomial:3", Polynomial(3)), (" Poly(1) ", Polynomial(1)), (Linear(), Linear())],
)
def test_get_policy(spec, expected):
    assert get_policy(spec) == expected


def test_keys_needed():
    assert [p.keys_needed for p in (Hold(), Linear(), Polynomial(3))] == [1, 2, 4]


@pytest.mark.parametrize("spec", ["cubic", "polynomial()", ""])
def test_unknown_policy_is_a_value_error_naming_it(spec):
    with pytest.raises(ValueError, match="policy .* is unknown; expected 'hold', 'linear'"):
        get_policy(spec)


def test_policy_of_wrong_kind_is_a_type_error():
    with pytest.raises(TypeError, match="policy must be a str or a tiec Policy, got int 3"):
        get_policy(3)


@pytest.mark.parametrize("degree", [0, -1])
def test_degree_below_one_is_rejected(degree):
    with pytest.raises(ValueError, match=rf"degree must be >= 1 .*got degree={degree}"):
        Polynomial(degree)
    with pytest.raises(ValueError, match="degree must be >= 1"):
        get_policy(f"polynomial({degree})")


def test_degree_must_be_an_int():
    with pytest.raises(TypeError, match="degree must be an int, got float 2.0"):
        Polynomial(2.0)


def test_bad_knots():
    with pytest.raises(ValueError, match="knots must be distinct"):
        lagrange_weights([1.0, 1.0], 0.5)
    with pytest.raises(ValueError, match="at least one time"):
        lagrange_weights([], 0.5)
    with pytest.raises(ValueError, match="must be finite"):
        lagrange_weights([1.0, math.inf], 0.5)
    with pytest.raises(ValueError, match="at least one time"):
        Linear().weights([], 0.0)


def test_policies_are_frozen_and_hashable():
    assert len({Hold(), Hold(), Linear(), Polynomial(2), Polynomial(2)}) == 3
    assert isinstance(Polynomial(2), Policy)


def test_order_of_accuracy():
    """Empirical order: interpolating sin at the midpoint of knots spaced h errs as h^(degree+1)."""
    for degree in (1, 2, 3):
        errors = []
        for h in (0.1, 0.05):
            knots = [1.0 + i * h for i in range(degree + 1)]
            query = knots[0] + 0.5 * h
            value = sum(w * math.sin(k) for w, k in zip(lagrange_weights(knots, query), knots))
            errors.append(abs(value - math.sin(query)))
        observed = math.log2(errors[0] / errors[1])
        assert observed == pytest.approx(degree + 1, abs=0.25), (degree, observed)
