"""checks/trend.py on synthetic series whose truth is known."""

from __future__ import annotations

import math
import random
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from checks.trend import (
    TrendKind,
    classify_memory,
    largest_jump,
    linear_fit,
    seconds_to_limit,
    sparkline,
)

MiB = 2**20
T0 = 1_700_000_000.0  # realistic unix timestamps, so precision problems would show


def series(values, step=10.0):
    return [(T0 + i * step, float(v)) for i, v in enumerate(values)]


def make_leak(*, base=200 * MiB, per_s=0.5 * MiB, n=60, step=10.0, noise=0.0, seed=7):
    rng = random.Random(seed)
    return series([base + per_s * i * step + rng.gauss(0, noise) for i in range(n)], step)


def make_step(*, base=200 * MiB, jump=150 * MiB, n=60, at=30, noise=0.2 * MiB, seed=3):
    rng = random.Random(seed)
    return series([base + (jump if i >= at else 0) + rng.gauss(0, noise) for i in range(n)])


def test_linear_fit_recovers_an_exact_line():
    fit = linear_fit(series([5 + 2 * i for i in range(10)], step=1.0))
    assert fit.slope == pytest.approx(2.0)
    assert fit.intercept == pytest.approx(5.0)
    assert fit.r2 == pytest.approx(1.0)
    assert fit.at(T0 + 100) == pytest.approx(205.0)
    assert fit.growth == pytest.approx(18.0)
    assert fit.n == 10


def test_linear_fit_of_a_constant_is_flat_and_perfect():
    fit = linear_fit(series([42.0] * 5))
    assert fit.slope == 0.0
    assert fit.r2 == 1.0


def test_linear_fit_refuses_an_empty_series():
    with pytest.raises(ValueError, match="empty"):
        linear_fit([])


def test_largest_jump_names_where_and_how_big():
    jump = largest_jump(series([1, 1.1, 1.0, 9.0, 9.1, 9.0], step=5.0))
    assert jump is not None
    assert jump.index == 3
    assert jump.at == T0 + 15.0
    assert jump.size == pytest.approx(8.0)
    assert jump.ratio > 50
    assert largest_jump(series([1, 2])) is None


def test_seconds_to_limit_edges():
    rising = linear_fit(series([0, 10, 20], step=1.0))
    assert seconds_to_limit(rising, 100) == pytest.approx(8.0)
    assert seconds_to_limit(rising, 10) == 0.0
    assert seconds_to_limit(rising, 100, now=T0) == pytest.approx(10.0)
    falling = linear_fit(series([20, 10, 0], step=1.0))
    assert seconds_to_limit(falling, 100) is None


def test_a_steady_leak_is_a_leak_with_an_accurate_projection():
    limit = 1024 * MiB
    points = make_leak()
    truth = (limit - points[-1][1]) / (0.5 * MiB)
    trend = classify_memory(points, limit=limit)
    assert trend.kind is TrendKind.LEAK
    assert trend.fit is not None and trend.fit.r2 > 0.99
    assert trend.seconds_to_limit == pytest.approx(truth, rel=0.05)
    assert "steady growth of +30.0 MiB/min" in trend.reason


@pytest.mark.parametrize("seed", range(10))
def test_a_noisy_leak_is_still_a_leak_within_five_percent(seed):
    limit = 1024 * MiB
    per_s = 0.5 * MiB
    points = make_leak(per_s=per_s, noise=10 * MiB, seed=seed)  # noise twice a sample's growth
    truth = (limit - (200 * MiB + per_s * (points[-1][0] - T0))) / per_s  # noiseless line
    trend = classify_memory(points, limit=limit)
    assert trend.kind is TrendKind.LEAK, trend.reason
    assert trend.jumps == 0
    assert 0.8 <= trend.fit.r2 < 0.995
    assert trend.seconds_to_limit == pytest.approx(truth, rel=0.05)


def test_a_sudden_step_is_a_spike_not_a_leak():
    trend = classify_memory(make_step(), limit=1024 * MiB)
    assert trend.kind is TrendKind.SPIKE, trend.reason
    assert trend.jump is not None and trend.jump.index == 30
    assert trend.jump.size == pytest.approx(150 * MiB, rel=0.02)
    assert trend.seconds_to_limit is None
    # A readable UTC time (1700000300 is 2023-11-14 22:18:20 UTC), never an epoch number.
    assert re.search(r"largest \+150\.\d MiB at 22:18:20 UTC \(sample 30", trend.reason)
    assert "t=" not in trend.reason and "1700000" not in trend.reason


def test_a_spike_that_is_released_again_is_a_spike():
    values = [200 * MiB] * 20 + [400 * MiB] * 5 + [200 * MiB] * 20
    trend = classify_memory(series(values))
    assert trend.kind is TrendKind.SPIKE
    assert trend.jumps == 2


def test_flat_memory_is_flat():
    rng = random.Random(5)
    trend = classify_memory(series([300 * MiB + rng.gauss(0, 0.3 * MiB) for _ in range(60)]))
    assert trend.kind is TrendKind.FLAT, trend.reason
    assert abs(trend.relative_growth) < 0.02
    assert trend.jumps == 0


def test_a_leak_through_restarts_is_still_a_leak():
    # sawtooth: grows 1 MiB per sample, restarts back to the base twice
    values = [100 * MiB + (i % 20) * MiB for i in range(60)]
    trend = classify_memory(series(values))
    assert trend.kind is TrendKind.LEAK, trend.reason
    assert trend.jumps == 2
    assert "restarts" in trend.reason


def test_too_few_points_is_unknown_not_a_guess():
    trend = classify_memory(series([1.0, 2.0, 3.0]))
    assert trend.kind is TrendKind.UNKNOWN
    assert "only 3 samples" in trend.reason


def test_noise_without_a_trend_is_unknown():
    rng = random.Random(9)
    trend = classify_memory(series([rng.uniform(100, 200) * MiB for _ in range(60)]))
    assert trend.kind is TrendKind.UNKNOWN


def test_sparkline_shapes():
    assert sparkline(range(8)) == "▁▂▃▄▅▆▇█"
    assert sparkline([3, 3, 3]) == "▁▁▁"
    assert sparkline([1, math.nan, 2]) == "▁ █"
    assert sparkline([]) == ""
    line = sparkline(range(1000), width=40)
    assert len(line) == 40 and line[0] == "▁" and line[-1] == "█"


@given(st.lists(st.floats(-1e12, 1e12), max_size=300), st.integers(1, 80))
def test_sparkline_is_never_wider_than_asked(values, width):
    line = sparkline(values, width=width)
    assert len(line) == min(len(values), width)
    assert set(line) <= set("▁▂▃▄▅▆▇█ ")
