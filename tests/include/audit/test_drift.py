"""PSI drift with sample-size-calibrated thresholds: rare false alarms on same-distribution
samples of any size, and real shifts found."""

from __future__ import annotations

import numpy as np
import pytest

from include.audit.drift import drift, psi, psi_threshold

SEEDS = 200


@pytest.mark.parametrize("n", [100, 1_000, 20_000])
def test_same_distribution_rarely_drifts_at_any_sample_size(n):
    alarms = sum(
        drift(rng.normal(size=5_000), rng.normal(size=n)).drifted
        for rng in (np.random.default_rng(seed) for seed in range(SEEDS))
    )
    assert alarms / SEEDS <= 0.03  # alpha is 0.01; binning on the sample adds a little


def test_a_fixed_rule_of_thumb_would_fire_on_noise_for_small_samples():
    rng = np.random.default_rng(1)
    noisy = [psi(rng.normal(size=5_000), rng.normal(size=100)) for _ in range(SEEDS)]
    assert np.mean(np.array(noisy) > 0.05) > 0.2  # why the threshold depends on n
    assert psi_threshold(5_000, 100) > 0.2 and psi_threshold(50_000, 50_000) == pytest.approx(0.02)


@pytest.mark.parametrize(("n", "shift"), [(1_000, 0.3), (20_000, 0.2)])
def test_a_mean_shift_is_found(n, shift):
    found = sum(
        drift(rng.normal(size=5_000), rng.normal(loc=shift, size=n)).drifted
        for rng in (np.random.default_rng(seed) for seed in range(SEEDS))
    )
    assert found / SEEDS >= 0.95


def test_too_few_values_is_a_clear_error():
    with pytest.raises(ValueError, match="at least 50 values on each side; got 1000 and 10"):
        drift(np.zeros(1000), np.zeros(10))
