"""The CUSUM detector on synthetic series: detection delay after a step, false alarms on
stable series, over many seeds (the figures the audit's trend alerts rely on)."""

from __future__ import annotations

import random

from include.audit.changepoint import cusum

SEEDS = 300
STEP_AT = 60


def series(seed: int, n: int = 120, step: float = 0.0, noise: float = 1.0) -> list[float]:
    rng = random.Random(seed)
    return [10.0 + rng.gauss(0, noise) + (step if i >= STEP_AT else 0.0) for i in range(n)]


def first_detection(values: list[float]) -> int | None:
    points = cusum(values)
    return points[0].index if points else None


def test_a_two_sigma_step_is_found_within_two_weeks():
    delays, missed = [], 0
    for seed in range(SEEDS):
        found = [p for p in cusum(series(seed, step=2.0)) if p.index >= STEP_AT]
        if not found or found[0].direction != "up":
            missed += 1  # e.g. a false alarm just before the step made it re-learn across it
            continue
        delays.append(found[0].index - STEP_AT)
    delays.sort()
    assert missed / SEEDS <= 0.02
    assert delays[len(delays) // 2] <= 8  # median delay, days
    assert delays[int(len(delays) * 0.95)] <= 14  # 95th percentile


def test_a_downward_one_sigma_step_is_found_too():
    missed = 0
    for seed in range(SEEDS):
        found = [p for p in cusum(series(seed, n=160, step=-1.0)) if p.index >= STEP_AT]
        if not found or found[0].direction != "down" or found[0].index - STEP_AT > 40:
            missed += 1
    assert missed / SEEDS <= 0.15


def test_stable_series_rarely_alarm():
    """Under 5% of 120-day stable series (92 monitored days each) raise any alarm."""
    alarmed = sum(1 for seed in range(SEEDS) if cusum(series(seed)))
    assert alarmed / SEEDS < 0.05


def test_too_short_or_flat_series():
    assert cusum([1.0] * 28) == []
    assert cusum([5.0] * 40) == []
    flat_then_up = [5.0] * 30 + [6.0] * 5
    assert [p.direction for p in cusum(flat_then_up)] == ["up"]
