from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pytest_minerva.stats.summary import FIELDS, Stats, percentile

finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
samples = st.lists(finite, min_size=1, max_size=60)


def test_hand_computed_values_for_five_samples() -> None:
    stats = Stats([5.0, 1.0, 4.0, 2.0, 3.0])
    assert stats.n == 5
    assert (stats.min, stats.max) == (1.0, 5.0)
    assert stats.mean == 3.0
    assert stats.median == stats.p50 == 3.0
    # sample stddev: squared deviations 4+1+0+1+4 = 10, / (5-1) = 2.5
    assert stats.stddev == pytest.approx(math.sqrt(2.5))
    # type 7: q1 at h = 4 * 0.25 = 1 -> x[1] = 2; q3 at h = 3 -> x[3] = 4
    assert (stats.q1, stats.q3, stats.iqr) == (2.0, 4.0, 2.0)
    # p90: h = 3.6 -> 4 + 0.6 * (5 - 4) = 4.6; p99: h = 3.96 -> 4.96
    assert stats.p90 == pytest.approx(4.6)
    assert stats.p99 == pytest.approx(4.96)


def test_hand_computed_values_for_four_samples_interpolate() -> None:
    stats = Stats([10.0, 20.0, 30.0, 40.0])
    # median: h = 1.5 -> 20 + 0.5 * 10 = 25; q1: h = 0.75 -> 17.5; q3: h = 2.25 -> 32.5
    assert stats.median == 25.0
    assert stats.q1 == 17.5
    assert stats.q3 == 32.5
    assert stats.iqr == 15.0
    assert stats.p90 == pytest.approx(37.0)  # h = 2.7 -> 30 + 0.7 * 10
    assert stats.mean == 25.0


def test_single_sample_has_zero_spread() -> None:
    stats = Stats([7.5])
    assert stats.as_dict() == {
        "n": 1,
        "min": 7.5,
        "max": 7.5,
        "mean": 7.5,
        "median": 7.5,
        "stddev": 0.0,
        "q1": 7.5,
        "q3": 7.5,
        "iqr": 0.0,
        "p50": 7.5,
        "p90": 7.5,
        "p99": 7.5,
    }


def test_as_dict_has_every_field_and_no_samples() -> None:
    data = Stats([3.0, 1.0, 2.0]).as_dict()
    assert tuple(data) == FIELDS
    assert "data" not in data


def test_samples_are_kept_in_order_and_not_mutated() -> None:
    given_samples = [3.0, 1.0, 2.0]
    stats = Stats(given_samples)
    assert stats.data == (3.0, 1.0, 2.0)
    assert stats.sorted == [1.0, 2.0, 3.0]
    assert given_samples == [3.0, 1.0, 2.0]


@pytest.mark.parametrize(
    ("values", "message"),
    [([], "at least one sample"), ([1.0, math.nan], "finite"), ([math.inf], "finite")],
)
def test_rejects_empty_and_non_finite_samples(values: list[float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Stats(values)


def test_percentile_rejects_out_of_range_p() -> None:
    with pytest.raises(ValueError, match=r"outside 0\.\.100"):
        percentile([1.0], 101)


@given(samples)
def test_order_of_figures(values: list[float]) -> None:
    s = Stats(values)
    assert s.min <= s.q1 <= s.p50 <= s.q3 <= s.max
    assert s.min <= s.p50 <= s.p90 <= s.p99 <= s.max
    assert s.min <= s.mean <= s.max
    assert s.iqr >= 0
    assert s.stddev >= 0


@given(samples, st.randoms())
def test_invariant_under_reordering(values: list[float], rng: object) -> None:
    shuffled = list(values)
    rng.shuffle(shuffled)  # type: ignore[attr-defined]
    a, b = Stats(values).as_dict(), Stats(shuffled).as_dict()
    for key in FIELDS:
        assert a[key] == pytest.approx(b[key], rel=1e-9, abs=1e-9), key


@given(samples, st.floats(min_value=0.001, max_value=1000))
def test_scaling_by_a_positive_factor_scales_every_figure(values: list[float], factor: float) -> None:
    a, b = Stats(values), Stats(x * factor for x in values)
    for key in ("min", "max", "mean", "median", "q1", "q3", "p90", "p99", "stddev", "iqr"):
        assert getattr(b, key) == pytest.approx(getattr(a, key) * factor, rel=1e-6, abs=1e-6), key


@given(samples, st.floats(min_value=-1e6, max_value=1e6))
def test_shifting_moves_location_and_keeps_spread(values: list[float], shift: float) -> None:
    a, b = Stats(values), Stats(x + shift for x in values)
    for key in ("min", "max", "mean", "median", "p90", "p99"):
        assert getattr(b, key) == pytest.approx(getattr(a, key) + shift, rel=1e-6, abs=1e-3), key
    assert b.stddev == pytest.approx(a.stddev, rel=1e-6, abs=1e-3)
    assert b.iqr == pytest.approx(a.iqr, rel=1e-6, abs=1e-3)


@given(st.lists(finite, min_size=2, max_size=60))
def test_stddev_matches_the_statistics_module(values: list[float]) -> None:
    import statistics

    assert Stats(values).stddev == pytest.approx(statistics.stdev(values), rel=1e-6, abs=1e-6)


@given(samples, st.floats(min_value=0, max_value=100))
def test_percentile_matches_numpy_linear(values: list[float], p: float) -> None:
    import numpy as np

    assert percentile(sorted(values), p) == pytest.approx(
        float(np.percentile(values, p, method="linear")), rel=1e-9, abs=1e-6
    )
