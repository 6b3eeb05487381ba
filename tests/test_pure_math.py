"""Splits, normalisation, metrics and the exit policy: pure functions, property-tested."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from models.exit_policy import ExitPolicy, calibrate
from models.metrics import Z_90, exit_metrics
from models.normalization import Normalization
from models.splits import by_station, random_split, time_split


@given(st.integers(2, 500), st.floats(0.05, 0.95), st.integers(0, 10))
def test_random_split_partitions_every_row_once(n, ratio, seed):
    train, test = random_split(n, ratio, seed)
    assert np.array_equal(np.sort(np.concatenate([train, test])), np.arange(n))
    assert len(train) == round(n * ratio)


@given(arrays(np.int64, st.integers(2, 300), elements=st.integers(0, 10**6)), st.floats(0.1, 0.9))
def test_time_split_never_trains_on_the_future(times, ratio):
    train, test = time_split(times, ratio)
    if len(train) and len(test):
        assert times[train].max() <= times[test].min()


def test_by_station_groups_indices():
    groups = by_station(np.array(["a", "b", "a", "c"]), np.array([0, 1, 2]))
    assert {k: v.tolist() for k, v in groups.items()} == {"a": [0, 2], "b": [1]}


def test_split_rejects_bad_ratio():
    with pytest.raises(ValueError, match="train_ratio"):
        random_split(10, 1.0, 0)


@given(arrays(np.float64, (40, 3), elements=st.floats(-1e3, 1e3)))
def test_normalization_inverts(x):
    y = x[:, 0] * 2 + 1
    norm = Normalization.fit(x, y, np.array([True, False, True]))
    z = norm.transform_x(x)
    np.testing.assert_allclose(z[:, 1], x[:, 1], rtol=1e-6, atol=1e-3)  # unscaled column kept
    mean, std = norm.inverse(np.column_stack([norm.transform_y(y), np.zeros_like(y)]))
    np.testing.assert_allclose(mean, y, rtol=1e-4, atol=1e-3)
    assert np.allclose(std, norm.y_std)
    assert Normalization.from_dict(norm.to_dict()).y_std == norm.y_std


def test_metrics_known_values():
    m = exit_metrics(np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.0, 2.0, 3.0, 6.0]), np.ones(4))
    assert (m.mse, m.mae, m.rmse) == (1.0, 0.5, 1.0)
    assert m.coverage90 == 0.75  # the 2.0 miss is outside ±1.645


def test_coverage_of_a_calibrated_gaussian_is_ninety_percent():
    rng = np.random.default_rng(0)
    y = rng.normal(0, 2.0, 200_000)
    assert exit_metrics(y, np.zeros_like(y), np.full_like(y, 2.0)).coverage90 == pytest.approx(
        0.90, abs=0.005
    )
    assert pytest.approx(1.6449, abs=1e-4) == Z_90


def test_policy_takes_first_confident_exit():
    policy = ExitPolicy((1.0, 2.0))
    stds = np.array([[0.5, 9, 9], [1.5, 1.9, 9], [1.5, 2.5, 0.1]])
    assert policy.choose(stds).tolist() == [0, 1, 2]
    assert policy.confident(0, 1.0) and not policy.confident(1, 2.1) and policy.confident(2, 99)


def test_calibration_opens_an_exit_as_good_as_the_last_and_closes_a_bad_one():
    rng = np.random.default_rng(1)
    y = rng.normal(size=500)
    good = y + rng.normal(scale=0.1, size=500)
    means = np.column_stack([good, y + 5.0, good])
    stds = np.column_stack([rng.uniform(0.1, 1, 500), rng.uniform(0.1, 1, 500), np.ones(500)])
    policy = calibrate(y, means, stds, tolerance=0.05)
    assert policy.thresholds[0] == pytest.approx(stds[:, 0].max())  # answers everything
    assert policy.thresholds[1] == float("-inf")  # never answers
    assert ExitPolicy.from_dict(policy.to_dict()) == policy
