import gc
import weakref

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, precondition, rule

from helpers import assert_close
from tiec import EncoderCache, Hold, Linear, Polynomial, lagrange_weights

# Keys each policy needs, written out (not read from the policy) so a wrong capacity fails.
KEYS_NEEDED = {Hold(): 1, Linear(): 2, Polynomial(2): 3, Polynomial(3): 4}
POLICIES = list(KEYS_NEEDED)
policies = st.sampled_from(POLICIES)


def feats(seed, shape=(2, 3), dtype=torch.float32, n=2):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(*shape, generator=g).to(dtype) for _ in range(n))


def decreasing_times(min_size=1, max_size=6):
    return st.lists(st.integers(0, 999), min_size=min_size, max_size=max_size, unique=True).map(
        lambda ts: [float(t) for t in sorted(ts, reverse=True)]
    )


@given(policy=policies, times=decreasing_times(), data=st.data())
def test_endpoints_are_exact(policy, times, data):
    cache = EncoderCache(policy)
    stored = {}
    for i, t in enumerate(times):
        stored[t] = feats(i)
        cache.push(t, stored[t])
    t = data.draw(st.sampled_from(cache.times))
    for got, want in zip(cache.get(t), stored[t]):
        assert torch.equal(got, want)


@given(times=decreasing_times(min_size=2), query=st.floats(-500, 1500), a=st.floats(-2, 2), b=st.floats(-2, 2))
def test_linear_reproduces_affine_features(times, query, a, b):
    base, slope = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, 3, dtype=torch.float64)
    cache = EncoderCache("linear")
    for t in times:
        cache.push(t, (base * a + slope * (b * t / 1000),))
    expected = base * a + slope * (b * query / 1000)
    assert_close(cache.get(query)[0], expected)


@given(degree=st.integers(1, 3), times=decreasing_times(min_size=4, max_size=6), query=st.floats(0, 999), data=st.data())
def test_polynomial_reproduces_its_degree(degree, times, query, data):
    coefficients = [torch.randn(1, 4, dtype=torch.float64) for _ in range(degree + 1)]

    def value(t):
        s = t / 1000
        return sum(c * s**p for p, c in enumerate(coefficients))

    cache = EncoderCache(Polynomial(degree))
    for t in times:
        cache.push(t, (value(t),))
    # Reproduction is exact up to rounding, which the weights amplify: Σ w_k F_k carries an error
    # of about eps · Σ|w_k| · max|F_k|, large when knots sit close together and the query far away
    # (knots 60, 2, 1, 0 queried at 999: Σ|w_k| ≈ 3e7). A fixed tolerance failed there.
    amplification = sum(abs(w) for w in lagrange_weights(cache.times, query))
    scale = max(float(value(t).abs().max()) for t in cache.times)
    atol = 8 * torch.finfo(torch.float64).eps * amplification * scale + 1e-12
    torch.testing.assert_close(cache.get(query)[0], value(query), rtol=1e-9, atol=atol)


@given(policy=policies, times=decreasing_times(max_size=8))
def test_memory_is_bounded_by_the_policy(policy, times):
    cache = EncoderCache(policy)
    for i, t in enumerate(times):
        cache.push(t, feats(i))
        assert len(cache) == min(i + 1, KEYS_NEEDED[policy])
    assert cache.times == tuple(times[-KEYS_NEEDED[policy]:])


def test_evicted_and_reset_tensors_are_released():
    cache = EncoderCache("linear")
    first = torch.randn(2, 3)
    ref = weakref.ref(first)
    cache.push(3.0, (first,))
    del first
    cache.push(2.0, feats(1, n=1))
    assert ref() is not None  # still one of the two keys linear needs
    cache.push(1.0, feats(2, n=1))
    gc.collect()
    assert ref() is None
    newest = cache.get(1.0)[0]
    ref = weakref.ref(newest)
    del newest
    cache.reset()
    gc.collect()
    assert ref() is None


@given(times=decreasing_times(min_size=2, max_size=2), fraction=st.floats(0, 1))
def test_between_two_keys_linear_is_a_convex_blend(times, fraction):
    cache = EncoderCache("linear")
    low, high = torch.zeros(1, 5), torch.ones(1, 5)
    cache.push(times[0], (low,))
    cache.push(times[1], (high,))
    query = times[0] + fraction * (times[1] - times[0])
    blended = cache.get(query)[0]
    assert bool((blended >= -1e-6).all() and (blended <= 1 + 1e-6).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("policy", POLICIES)
def test_dtypes_and_structure_are_preserved(dtype, policy):
    cache = EncoderCache(policy)
    for i, t in enumerate((900.0, 700.0, 500.0, 300.0)):
        cache.push(t, (torch.randn(2, 3).to(dtype), torch.randn(2, 4, 2, 2).to(dtype)))
    out = cache.get(100.0)
    assert isinstance(out, tuple) and len(out) == 2
    assert [o.shape for o in out] == [torch.Size([2, 3]), torch.Size([2, 4, 2, 2])]
    assert all(o.dtype == dtype for o in out)
    expected_weights = policy.weights(list(cache.times), 100.0)
    assert cache.weights(100.0) == expected_weights


def test_time_going_back_raises_naming_both_times_and_keeps_state():
    cache = EncoderCache("linear")
    cache.push(900, feats(0))
    cache.push(800, feats(1))
    before = repr(cache)
    with pytest.raises(ValueError, match=r"tau=850.0 goes back past the newest key tau=800.0"):
        cache.push(850, feats(2))
    assert repr(cache) == before
    cache.push(700, feats(3))  # the next call works
    assert cache.times == (800.0, 700.0)


def test_increasing_times_work_too():
    cache = EncoderCache("linear")
    cache.push(0, (torch.zeros(1, 1),))
    cache.push(1, (torch.ones(1, 1),))
    assert cache.direction == 1
    assert cache.get(2)[0].item() == 2.0
    with pytest.raises(ValueError, match="must keep increasing"):
        cache.push(0.5, (torch.ones(1, 1),))


def test_direction_is_kept_with_a_single_key_policy():
    cache = EncoderCache("hold")
    cache.push(3, feats(0))
    cache.push(2, feats(1))
    with pytest.raises(ValueError, match="goes back"):
        cache.push(2.5, feats(2))


def test_push_at_the_newest_time_replaces_it():
    cache = EncoderCache("linear")
    cache.push(900, feats(0))
    cache.push(800, feats(1))
    replacement = feats(2)
    cache.push(800, replacement)
    assert cache.times == (900.0, 800.0)
    assert cache.get(800)[0] is replacement[0]


@pytest.mark.parametrize(
    "bad, match",
    [
        (feats(1, shape=(3, 3)), r"features\[0\] changed between keys: stored .*\(2, 3\).* got .*\(3, 3\)"),
        (feats(1, n=3), "same number of tensors between keys: stored keys have 2, got 3"),
        (feats(1, dtype=torch.float64), r"features\[0\] changed between keys"),
    ],
)
def test_shape_batch_or_dtype_change_raises_and_keeps_state(bad, match):
    cache = EncoderCache("linear")
    cache.push(900, feats(0))
    with pytest.raises(ValueError, match=match):
        cache.push(800, bad)
    assert cache.times == (900.0,)
    assert not cache.accepts(bad) and cache.accepts(feats(5))
    cache.push(800, feats(2))
    assert len(cache) == 2


def test_get_before_any_push_raises():
    with pytest.raises(ValueError, match=r"get\(tau=5.0\) on an empty EncoderCache: push a key"):
        EncoderCache().get(5)


def test_bad_times():
    cache = EncoderCache()
    with pytest.raises(ValueError, match="tau must be finite, got nan"):
        cache.push(float("nan"), feats(0))
    with pytest.raises(ValueError, match=r"tau must be a scalar time, got a tensor of shape \(2,\)"):
        cache.push(torch.tensor([1.0, 2.0]), feats(0))
    with pytest.raises(ValueError, match="tau must be a real number, got 'x'"):
        cache.push("x", feats(0))
    assert len(cache) == 0
    cache.push(torch.tensor(5), feats(0))
    assert cache.times == (5.0,)


def test_check_finite():
    cache = EncoderCache(check_finite=True)
    bad = (torch.tensor([[1.0, float("nan")]]),)
    with pytest.raises(ValueError, match=r"features\[0\] pushed at tau=3.0 holds NaN or infinity"):
        cache.push(3, bad)
    assert len(cache) == 0
    EncoderCache().push(3, bad)  # off by default


def test_reset_returns_a_fresh_cache():
    cache = EncoderCache("polynomial(2)")
    fresh = repr(cache)
    cache.push(2, feats(0))
    cache.push(1, feats(1))
    cache.reset()
    assert repr(cache) == fresh and len(cache) == 0 and cache.direction == 0
    cache.push(5, feats(2))  # time may go up again after a reset


def test_repr():
    cache = EncoderCache("polynomial(2)")
    assert repr(cache) == (
        "EncoderCache(policy=Polynomial(degree=2), keys=[], direction='unknown', tensors=0)"
    )


class CacheMachine(RuleBasedStateMachine):
    """The cache against a float64 reference that stores every key and blends with exact weights."""

    @initialize(policy=policies)
    def start(self, policy):
        self.policy = policy
        self.cache = EncoderCache(policy)
        self.reference: list[tuple[float, torch.Tensor]] = []
        self.next_time = 1000.0

    @rule(gap=st.integers(1, 200), seed=st.integers(0, 2**16))
    def push(self, gap, seed):
        self.next_time -= gap
        value = torch.randn(2, 3, generator=torch.Generator().manual_seed(seed))
        self.cache.push(self.next_time, (value,))
        self.reference.append((self.next_time, value))

    @precondition(lambda self: self.reference)
    @rule(seed=st.integers(0, 2**16))
    def push_same_time(self, seed):
        value = torch.randn(2, 3, generator=torch.Generator().manual_seed(seed))
        self.cache.push(self.next_time, (value,))
        self.reference[-1] = (self.next_time, value)

    @precondition(lambda self: self.reference)
    @rule(gap=st.integers(1, 200))
    def push_backwards_fails(self, gap):
        if len(self.reference) < 2:
            return  # direction not known yet
        with pytest.raises(ValueError, match="goes back"):
            self.cache.push(self.next_time + gap, (torch.zeros(2, 3),))

    @precondition(lambda self: self.reference)
    @rule(offset=st.floats(-300, 300))
    def get(self, offset):
        query = self.next_time + offset
        used = self.reference[-KEYS_NEEDED[self.policy]:]
        weights = lagrange_weights([t for t, _ in used], query)
        expected = sum(w * v.double() for w, (_, v) in zip(weights, used))
        # float32 blending: the rounding error grows with the size of the (extrapolation) weights
        scale = sum(abs(w) for w in weights) * max(float(v.abs().max()) for _, v in used)
        torch.testing.assert_close(self.cache.get(query)[0].double(), expected, rtol=0, atol=1e-6 * scale + 1e-6)

    @rule()
    def reset(self):
        self.cache.reset()
        self.reference = []
        self.next_time = 1000.0

    @invariant()
    def bounded(self):
        assert len(self.cache) == min(len(self.reference), KEYS_NEEDED[self.policy])


TestCacheMachine = CacheMachine.TestCase


def test_rewind_drops_keys_past_a_time_and_a_known_direction_is_kept():
    cache = EncoderCache("linear", direction=-1)
    cache.push(9, feats(0))
    cache.rewind(10)  # 9 comes after 10 in a decreasing run: dropped
    assert cache.times == ()
    cache.push(9, feats(0))
    cache.push(7, feats(1))
    cache.rewind(8)
    assert cache.times == (9.0,)
    cache.push(8, feats(2))  # continues downwards
    assert cache.times == (9.0, 8.0)
    cache.reset()
    assert cache.direction == -1
    cache.push(5, feats(3))
    with pytest.raises(ValueError, match="must keep decreasing"):
        cache.push(6, feats(4))
    with pytest.raises(ValueError, match="direction must be -1, 0 or \\+1, got 2"):
        EncoderCache(direction=2)
