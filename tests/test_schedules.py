import pytest
from hypothesis import given
from hypothesis import strategies as st

from tiec import KeySchedule, every_step, explicit, get_schedule, preset, uniform
from tiec.schedules import PRESETS

schedules = st.one_of(
    st.builds(uniform, st.integers(1, 10), offset=st.integers(0, 9), warmup=st.integers(0, 5), tail=st.integers(0, 5)),
    st.builds(lambda name, w, t: preset(name, warmup=w, tail=t), st.sampled_from(sorted(PRESETS)), st.integers(0, 3), st.integers(0, 3)),
)


@given(schedule=schedules, num_steps=st.integers(1, 120))
def test_resolved_keys_are_valid(schedule, num_steps):
    keys = schedule.key_steps(num_steps)
    assert keys[0] == 0
    assert list(keys) == sorted(set(keys))
    assert all(0 <= k < num_steps for k in keys)
    assert set(range(min(schedule.warmup, num_steps))) <= set(keys)
    assert set(range(max(num_steps - schedule.tail, 0), num_steps)) <= set(keys)
    assert [i for i in range(num_steps) if schedule.is_key(i, num_steps)] == list(keys)
    assert schedule.key_fraction(num_steps) == len(keys) / num_steps


@given(every=st.integers(1, 10), offset=st.integers(0, 20), num_steps=st.integers(1, 80))
def test_uniform_and_open_ended_agree(every, offset, num_steps):
    schedule = uniform(every, offset=offset)
    keys = schedule.key_steps(num_steps)
    assert keys == tuple(sorted({0} | set(range(offset % every, num_steps, every))))
    assert [i for i in range(num_steps) if schedule.is_key_open_ended(i)] == list(keys)


def test_every_step_is_the_default():
    assert get_schedule(None) == every_step()
    assert every_step().key_steps(4) == (0, 1, 2, 3)


def test_presets_at_their_own_step_count():
    assert preset("ddim-50").key_steps(50) == (0, 1, 2, 3, 5, 10, 15, 25, 35)
    assert preset("DPM-Solver-20").key_steps(20) == (0, 1, 2, 3, 5, 10, 15)


@pytest.mark.parametrize(
    "name, steps, expected",
    [
        ("ddim-50", 100, (0, 2, 4, 6, 10, 20, 30, 50, 70)),
        ("ddim-50", 25, (0, 1, 2, 3, 5, 8, 13, 18)),
        ("dpm-solver-20", 10, (0, 1, 2, 3, 5, 8)),
        ("ddim-50", 3, (0, 1, 2)),
    ],
)
def test_presets_are_rescaled_to_other_step_counts(name, steps, expected):
    assert preset(name).key_steps(steps) == expected


def test_explicit_indices_are_validated_not_rescaled():
    assert explicit([5, 0, 2, 2]).key_steps(6) == (0, 2, 5)
    with pytest.raises(ValueError, match=r"key indices \[6, 9\] are out of range for num_steps=6"):
        explicit([0, 6, 9]).key_steps(6)


def test_warmup_and_tail():
    assert uniform(5, warmup=3, tail=2).key_steps(12) == (0, 1, 2, 5, 10, 11)
    assert explicit([0], tail=20).key_steps(4) == (0, 1, 2, 3)


@pytest.mark.parametrize(
    "spec, steps, expected",
    [
        ("every:3", 7, (0, 3, 6)),
        ("every:3+1", 7, (0, 1, 4)),
        ("0,2, 5", 6, (0, 2, 5)),
        ("ALL", 3, (0, 1, 2)),
        ("ddim-50", 50, (0, 1, 2, 3, 5, 10, 15, 25, 35)),
        (2, 5, (0, 2, 4)),
        ([0, 3], 5, (0, 3)),
        ((0, 1), 5, (0, 1)),
    ],
)
def test_get_schedule(spec, steps, expected):
    assert get_schedule(spec).key_steps(steps) == expected


@pytest.mark.parametrize(
    "call, error, match",
    [
        (lambda: explicit([1, 2]), ValueError, r"step 0 must be a key .* got indices=\[1, 2\]"),
        (lambda: explicit([0, -1]), ValueError, "key index must be >= 0, got key index=-1"),
        (lambda: uniform(0), ValueError, "every must be >= 1, got every=0"),
        (lambda: uniform(2, offset=-1), ValueError, "offset must be >= 0"),
        (lambda: uniform(2.5), TypeError, "every must be an int, got float 2.5"),
        (lambda: uniform(2, tail=-1), ValueError, "tail must be >= 0"),
        (lambda: uniform(2).key_steps(0), ValueError, "num_steps must be >= 1, got num_steps=0"),
        (lambda: uniform(2).is_key(5, 5), ValueError, "index must be < num_steps=5, got index=5"),
        (lambda: preset("ddim-25"), ValueError, r"key preset 'ddim-25' is unknown; expected one of"),
        (lambda: get_schedule("every:x"), ValueError, "keys 'every:x' is not understood"),
        (lambda: get_schedule("0,-1"), ValueError, "is not understood"),
        (lambda: get_schedule(True), TypeError, "keys must be"),
        (lambda: get_schedule(2.0), TypeError, "keys must be a KeySchedule, int, str or list of ints, got float"),
        (lambda: get_schedule([0, "1"]), TypeError, "key indices must be ints, got '1'"),
        (lambda: KeySchedule(every=None), ValueError, "needs `every` or `indices`"),
        (lambda: KeySchedule(every=2, indices=(0,)), ValueError, "not both"),
        (lambda: uniform(2, tail=1).is_key_open_ended(3), ValueError, "tail=1 needs the number of steps"),
    ],
)
def test_bad_schedules_raise_clear_errors(call, error, match):
    with pytest.raises(error, match=match):
        call()


def test_str_names_the_schedule():
    assert str(uniform(3, offset=1, tail=2)) == "every:3+1 tail=2"
    assert str(preset("ddim-50")) == "ddim-50"
    assert str(explicit([0, 4])) == "0,4"
