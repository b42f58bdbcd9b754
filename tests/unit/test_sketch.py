"""Quantile sketch: index tables, merge and accuracy properties, retraction."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from deskpulse.streams import sketch as sketch_module
from deskpulse.streams.sketch import (
    GAMMA,
    INDEX_OFFSET,
    MIN_VALUE,
    RELATIVE_ACCURACY,
    Sketch,
    index_of,
    quantiles_of,
    value_of,
)

PROMISE = 0.01  # docs/kpis.md, Quantile accuracy: at most 1 % relative error
QUANTILES = (0.5, 0.9, 0.95, 0.0, 1.0)


def test_public_surface() -> None:
    assert sorted(sketch_module.__all__) == [
        "GAMMA",
        "INDEX_OFFSET",
        "MIN_VALUE",
        "RELATIVE_ACCURACY",
        "Sketch",
        "ZERO_INDEX",
        "index_of",
        "quantiles_of",
        "value_of",
    ]


def test_persisted_constants_never_change() -> None:
    # Indexes are stored in Redis: changing any of these silently corrupts old state.
    assert RELATIVE_ACCURACY == 0.0075
    assert MIN_VALUE == 1e-3
    assert INDEX_OFFSET == 461
    assert math.ceil(math.log(MIN_VALUE) / math.log(GAMMA)) + INDEX_OFFSET == 1


# fmt: off
INDEX_OF_CASES = [
    (0.0, 0),               # the zero bucket
    (5e-324, 0),            # smallest subnormal
    (1e-4, 0),              # sub-millisecond
    (0.000999999, 0),       # just under MIN_VALUE
    (MIN_VALUE, 1),         # MIN_VALUE is the first non-zero bucket
    (0.0010076, 1),         # still inside bucket 1 (upper bound ~0.00100767)
    (0.0010077, 2),         # just past it
    (1.0, INDEX_OFFSET),    # log(1) = 0: one second is exactly the offset
    (1.01, INDEX_OFFSET + 1),
    (60.0, 734),            # pinned: indexes are persisted
    (3600.0, 1007),
    (86400.0, 1219),
    (1e7, 1536),
]
# fmt: on


@pytest.mark.parametrize(("value_s", "expected"), INDEX_OF_CASES)
def test_index_of(value_s: float, expected: int) -> None:
    assert index_of(value_s) == expected


@pytest.mark.parametrize("value_s", [-1e-9, -1.0, math.nan, math.inf, -math.inf])
def test_index_of_rejects(value_s: float) -> None:
    with pytest.raises(ValueError):
        index_of(value_s)


# fmt: off
VALUE_OF_CASES = [
    (0, 0.0),                                   # the zero bucket is represented by 0
    (1, 2 * GAMMA ** -460 / (GAMMA + 1)),       # just above MIN_VALUE
    (INDEX_OFFSET, 2 / (GAMMA + 1)),            # the bucket (1/GAMMA, 1]
    (100_000, math.inf),                        # past the float range
]
# fmt: on


@pytest.mark.parametrize(("index", "expected"), VALUE_OF_CASES)
def test_value_of(index: int, expected: float) -> None:
    assert value_of(index) == expected


def test_value_of_rejects_a_negative_index() -> None:
    with pytest.raises(ValueError):
        value_of(-1)


def test_index_and_value_are_monotone() -> None:
    values = [0.0, 1e-4, MIN_VALUE, 0.002, 0.5, 1.0, 1.5, 60.0, 3600.0, 86400.0, 1e7, 1e300]
    indexes = [index_of(v) for v in values]
    assert indexes == sorted(indexes)
    assert all(index >= 1 for v, index in zip(values, indexes, strict=True) if v >= MIN_VALUE)
    representatives = [value_of(i) for i in range(0, 2000)]
    assert representatives == sorted(set(representatives))  # strictly increasing


durations_at_least_min = st.floats(min_value=MIN_VALUE, max_value=1e12, allow_nan=False)


@given(value_s=durations_at_least_min)
def test_representative_is_within_the_relative_accuracy(value_s: float) -> None:
    estimate = value_of(index_of(value_s))
    assert abs(estimate - value_s) <= RELATIVE_ACCURACY * value_s * (1 + 1e-9)


@given(value_s=st.floats(min_value=0, max_value=MIN_VALUE, exclude_max=True))
def test_sub_millisecond_values_go_to_the_zero_bucket(value_s: float) -> None:
    assert index_of(value_s) == 0


# Durations as support data has them: zeros, sub-millisecond, a body of seconds to hours,
# a heavy right tail up to 1e7 s, and exact repeats.
durations = st.one_of(
    st.just(0.0),
    st.floats(min_value=0, max_value=MIN_VALUE, exclude_max=True),
    st.floats(min_value=0, max_value=3600),
    st.floats(min_value=-3, max_value=7).map(lambda exponent: 10.0**exponent),  # log-uniform
    st.sampled_from([MIN_VALUE, 1.0, 20.0, 3600.0, 1e7]),
)
samples = st.lists(durations, min_size=1, max_size=300).flatmap(
    lambda values: st.lists(st.sampled_from(values), max_size=50).map(lambda dup: values + dup)
)


def sketch_of(values: list[float]) -> Sketch:
    sketch = Sketch()
    for value in values:
        sketch.add(value)
    return sketch


@given(a=st.lists(durations, max_size=100), b=st.lists(durations, max_size=100))
def test_merge_equals_sketch_of_the_union(a: list[float], b: list[float]) -> None:
    merged = sketch_of(a)
    merged.merge(sketch_of(b))
    assert merged.to_counts() == sketch_of(a + b).to_counts()
    assert merged == sketch_of(b + a)


@given(values=samples)
def test_quantiles_are_within_one_percent_of_the_order_statistic(values: list[float]) -> None:
    sketch = sketch_of(values)
    ordered = sorted(values)
    assert sketch.count == len(values)
    for q in QUANTILES:
        exact = ordered[math.floor(q * (len(values) - 1))]
        estimate = sketch.quantile(q)
        assert estimate is not None
        if exact < MIN_VALUE:
            assert abs(estimate - exact) < MIN_VALUE
        else:
            assert abs(estimate - exact) <= PROMISE * exact


@given(values=samples, data=st.data())
def test_quantiles_merge_across_partitions(values: list[float], data: st.DataObject) -> None:
    # Split the samples over "partitions", sketch each, store and read back, and merge.
    parts = data.draw(st.lists(st.integers(0, 3), min_size=len(values), max_size=len(values)))
    merged = Sketch()
    for part in range(4):
        mine = [v for v, p in zip(values, parts, strict=True) if p == part]
        merged.merge(Sketch.from_counts(sketch_of(mine).to_counts()))
    assert merged == sketch_of(values)


@given(values=st.lists(durations, max_size=100), data=st.data())
def test_add_then_remove_in_any_order_returns_to_empty(
    values: list[float], data: st.DataObject
) -> None:
    sketch = sketch_of(values)
    for value in data.draw(st.permutations(values)):
        sketch.remove(value)
    assert sketch == Sketch()
    assert sketch.to_counts() == {}
    assert sketch.count == 0
    assert sketch.quantile(0.5) is None


def test_retraction_ahead_of_its_addition_merges_to_zero() -> None:
    retraction = Sketch()
    retraction.remove(12.0)  # processed on another worker before the addition
    assert retraction.to_counts() == {index_of(12.0): -1}
    assert retraction.count == 0
    assert retraction.quantile(0.9) is None
    addition = Sketch()
    addition.add(12.0)
    addition.merge(retraction)
    assert addition.to_counts() == {}


def test_empty_sketch() -> None:
    sketch = Sketch()
    assert sketch.count == 0
    assert sketch.to_counts() == {}
    for q in QUANTILES:
        assert sketch.quantile(q) is None


# fmt: off
FROM_COUNTS_IS_DEFENSIVE_CASES = [
    ({}, 0, None),
    ({0: 0, 5: 0}, 0, None),                        # zero entries are dropped
    ({index_of(10.0): -2}, 0, None),                # only retractions: empty, no crash
    ({index_of(10.0): 3, index_of(1.0): -5}, 3, value_of(index_of(10.0))),  # ignored
    ({0: 2, index_of(10.0): 1}, 3, 0.0),            # the zero bucket
    ({index_of(1.0): 1, index_of(10.0): 1}, 2, value_of(index_of(1.0))),  # lower median
]
# fmt: on


@pytest.mark.parametrize(("counts", "count", "p50"), FROM_COUNTS_IS_DEFENSIVE_CASES)
def test_from_counts_is_defensive(counts: dict[int, int], count: int, p50: float | None) -> None:
    sketch = Sketch.from_counts(counts)
    assert sketch.count == count
    assert sketch.quantile(0.5) == p50
    assert 0 not in sketch.to_counts().values()


def test_from_counts_rejects_a_negative_index() -> None:
    with pytest.raises(ValueError):
        Sketch.from_counts({-1: 1})


def test_add_and_remove_with_counts() -> None:
    sketch = Sketch()
    sketch.add(30.0, count=5)
    sketch.remove(30.0, count=2)
    assert sketch.to_counts() == {index_of(30.0): 3}
    with pytest.raises(ValueError):
        sketch.add(30.0, count=0)
    with pytest.raises(ValueError):
        sketch.remove(30.0, count=-1)


@pytest.mark.parametrize("q", [-0.1, 1.1, math.nan])
def test_quantile_rejects_out_of_range(q: float) -> None:
    sketch = sketch_of([1.0])
    with pytest.raises(ValueError):
        sketch.quantile(q)


def test_to_counts_is_a_copy() -> None:
    sketch = sketch_of([1.0])
    sketch.to_counts().clear()
    assert sketch.count == 1


@given(
    counts=st.dictionaries(st.integers(0, 3000), st.integers(-3, 50), max_size=60),
    qs=st.lists(st.floats(0, 1), min_size=1, max_size=5),
)
def test_quantiles_in_one_pass_equal_each_quantile(counts: dict[int, int], qs: list[float]) -> None:
    merged = Sketch.from_counts(counts)
    assert merged.quantiles(qs) == [merged.quantile(q) for q in qs]
    assert quantiles_of(counts, qs) == merged.quantiles(qs)


def test_quantiles_of_rejects_a_negative_index_and_answers_no_quantile_with_none() -> None:
    with pytest.raises(ValueError, match="index is >= 0"):
        quantiles_of({-1: 2, 5: 1}, [0.5])
    assert quantiles_of({3: 1}, []) == []
    assert quantiles_of({3: -1, 4: 0}, [0.5, 0.9]) == [None, None]


@pytest.mark.parametrize("q", [-0.01, 1.01, math.nan])
def test_quantiles_reject_out_of_range(q: float) -> None:
    with pytest.raises(ValueError, match="between 0 and 1"):
        Sketch().quantiles([0.5, q])


@given(
    st.lists(st.floats(min_value=0, max_value=1e7, allow_nan=False), max_size=200),
    st.lists(st.floats(min_value=0, max_value=1), min_size=1, max_size=5),
)
def test_quantiles_at_once_equal_each_quantile(values: list[float], qs: list[float]) -> None:
    sketch = Sketch()
    for value in values:
        sketch.add(value)
    assert sketch.quantiles(qs) == [sketch.quantile(q) for q in qs]
