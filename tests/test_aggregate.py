"""Aggregation strategies, their shared numeric helpers and update screening: property-tested."""

from __future__ import annotations

import copy
import importlib
import tracemalloc
from unittest.mock import patch

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays

from models.aggregate import (
    STRATEGIES,
    AggregationError,
    ClientResult,
    FedAdam,
    FedAvg,
    FedAvgM,
    Median,
    NDArrays,
    NonFiniteRefusal,
    ShapeMismatchRefusal,
    Strategy,
    StrategyConfigError,
    StrategyState,
    StrategyStateError,
    TrimmedMean,
    UpdateRefused,
    check_update,
    coordinatewise_median,
    fedavg,
    global_norm,
    make_strategy,
    norm_outliers,
    trimmed_mean,
    weighted_average,
)

# The module, not the function `models.aggregate.fedavg` the package exports under its name.
fedavg_module = importlib.import_module("models.aggregate.fedavg")

FAST = settings(max_examples=60, deadline=None)
FLOAT_DTYPES = st.sampled_from([np.dtype(np.float32), np.dtype(np.float64)])
SHAPES = array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=4)


def values(dtype: np.dtype, bound: float = 1e3) -> st.SearchStrategy[float]:
    return st.floats(-bound, bound, width=8 * dtype.itemsize, allow_subnormal=False)


@st.composite
def rounds(draw, min_clients: int = 1, max_clients: int = 6, equal_counts: bool = False):
    """A global model (1-3 arrays of one float dtype) and client results of the same shapes."""
    dtype = draw(FLOAT_DTYPES)
    shapes = draw(st.lists(SHAPES, min_size=1, max_size=3))

    def model() -> NDArrays:
        return [draw(arrays(dtype, shape, elements=values(dtype))) for shape in shapes]

    n = draw(st.integers(min_clients, max_clients))
    counts = st.just(7) if equal_counts else st.integers(1, 1000)
    results = [ClientResult(f"c{i}", model(), draw(counts)) for i in range(n)]
    return model(), results


def assert_close(actual: NDArrays, expected: NDArrays) -> None:
    """Equal up to float rounding of the arrays' dtype, relative to inputs of magnitude 1e3."""
    assert len(actual) == len(expected)
    for a, e in zip(actual, expected, strict=True):
        tight = a.dtype == np.float64
        np.testing.assert_allclose(a, e, rtol=1e-9 if tight else 1e-5, atol=1e-9 if tight else 2e-4)


def stacked(results: list[ClientResult], layer: int) -> np.ndarray:
    return np.stack([r.weights[layer] for r in results], dtype=np.float64)


def run(strategy: Strategy, current: NDArrays, results: list[ClientResult]) -> NDArrays:
    return strategy.aggregate(current, results, strategy.initial_state())[0]


# --- FedAvg -------------------------------------------------------------------------------


@FAST
@given(rounds())
def test_fedavg_is_the_sample_weighted_average(case):
    current, results = case
    counts = [r.num_examples for r in results]
    expected = [
        np.average(stacked(results, i), axis=0, weights=counts).astype(a.dtype)
        for i, a in enumerate(current)
    ]
    assert_close(run(FedAvg(), current, results), expected)


@FAST
@given(rounds(), st.randoms(use_true_random=False))
def test_fedavg_ignores_the_order_of_clients(case, rnd):
    current, results = case
    shuffled = list(results)
    rnd.shuffle(shuffled)
    assert_close(run(FedAvg(), current, shuffled), run(FedAvg(), current, results))


@FAST
@given(rounds(min_clients=1, max_clients=1))
def test_fedavg_of_one_client_is_its_weights(case):
    current, results = case
    for got, want in zip(run(FedAvg(), current, results), results[0].weights, strict=True):
        np.testing.assert_array_equal(got, want)


@FAST
@given(rounds(equal_counts=True))
def test_fedavg_with_equal_counts_is_the_plain_mean(case):
    current, results = case
    expected = [stacked(results, i).mean(axis=0).astype(a.dtype) for i, a in enumerate(current)]
    assert_close(run(FedAvg(), current, results), expected)


@FAST
@given(rounds(), st.integers(2, 10_000))
def test_fedavg_is_unchanged_by_scaling_all_counts(case, factor):
    current, results = case
    scaled = [ClientResult(r.client_id, r.weights, r.num_examples * factor) for r in results]
    assert_close(run(FedAvg(), current, scaled), run(FedAvg(), current, results))


def test_fedavg_refuses_a_round_without_examples_or_results():
    w = [np.ones(3, np.float32)]
    with pytest.raises(AggregationError, match="no client trained"):
        run(FedAvg(), w, [ClientResult("a", w, 0), ClientResult("b", w, 0)])
    with pytest.raises(AggregationError, match="no client results"):
        run(FedAvg(), w, [])
    with pytest.raises(AggregationError, match=r"'b'.*do not match"):
        run(FedAvg(), w, [ClientResult("a", w, 1), ClientResult("b", [np.ones(4)], 1)])
    with pytest.raises(AggregationError, match="num_examples"):
        ClientResult("a", w, -1)


@settings(max_examples=80, deadline=None)
@given(
    rounds(max_clients=9),
    st.integers(1, 5),
    st.integers(1, 4),
    st.sampled_from([np.float16, np.float32, np.float64, np.int32]),
)
def test_fedavg_tiles_add_up_to_the_float64_average(case, slice_, group, other):
    """Whatever the tiling (slices of a layer × groups of clients), and with one client's
    arrays in another dtype, fedavg is the float64 average of the inputs as given."""
    _, results = case
    first = results[0]
    results = [
        ClientResult(first.client_id, [a.astype(other) for a in first.weights], first.num_examples),
        *results[1:],
    ]
    counts = [r.num_examples for r in results]
    expected = [
        np.average(stacked(results, i), axis=0, weights=counts) for i in range(len(first.weights))
    ]
    with (
        patch.object(fedavg_module, "SLICE", slice_),
        patch.object(fedavg_module, "BLOCK_BYTES", 8 * slice_ * group),
    ):
        got = fedavg(results)
    for a, e in zip(got, expected, strict=True):
        assert a.dtype == np.float64 and a.shape == e.shape
        np.testing.assert_allclose(a, e, rtol=1e-12, atol=1e-9)


def test_fedavg_skips_clients_without_examples():
    w = [np.ones(3, np.float32)]
    nan = [np.full(3, np.nan, np.float32)]
    out = fedavg([ClientResult("a", w, 5), ClientResult("idle", nan, 0)])
    np.testing.assert_array_equal(out[0], np.ones(3))


def test_fedavg_never_holds_all_clients_of_a_layer():
    layers = [np.ones(250_000, np.float32), np.ones(1000, np.float32)]
    results = [ClientResult(f"c{i}", layers, 3) for i in range(40)]  # inputs cost ~nothing
    tracemalloc.start()
    try:
        out = fedavg(results)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(out[0], 1.0)
    # the float64 result (2 MB), one tile and one partial sum; stacking 40 clients: 80 MB
    tile = fedavg_module.BLOCK_BYTES + 8 * fedavg_module.SLICE
    assert peak < 2_008_000 + tile + 50_000


# --- Every strategy -----------------------------------------------------------------------


ALL = [FedAvg(), FedAvgM(), FedAdam(), Median(), TrimmedMean(0.2)]


@settings(max_examples=40, deadline=None)
@given(st.data())
def test_every_strategy_keeps_dtypes_and_leaves_inputs_alone(data):
    dtypes = [np.float16, np.float32, np.float64, np.int32]
    shapes = data.draw(st.lists(SHAPES, min_size=len(dtypes), max_size=len(dtypes)))
    current = [np.ones(s, dt) for s, dt in zip(shapes, dtypes, strict=True)]
    results = [
        ClientResult(f"c{i}", [np.full(s, i, dt) for s, dt in zip(shapes, dtypes, strict=True)], 3)
        for i in range(data.draw(st.integers(1, 5)))
    ]
    before = copy.deepcopy((current, results))
    for strategy in ALL:
        state = strategy.aggregate(current, results, strategy.initial_state())[1]
        saved_state = copy.deepcopy(state)
        new, _ = strategy.aggregate(current, results, state)
        assert [a.dtype for a in new] == [a.dtype for a in current], strategy
        assert [a.shape for a in new] == [a.shape for a in current], strategy
        for inp in [*current, *(a for r in results for a in r.weights)]:
            assert not any(np.shares_memory(inp, a) for a in new)
        for key, arrs in saved_state.arrays.items():
            for kept, orig in zip(state.arrays[key], arrs, strict=True):
                np.testing.assert_array_equal(kept, orig)
    for got, want in zip(
        [*current, *(a for r in results for a in r.weights)],
        [*before[0], *(a for r in before[1] for a in r.weights)],
        strict=True,
    ):
        np.testing.assert_array_equal(got, want)


def test_state_step_counts_rounds():
    w = [np.zeros(2)]
    state = FedAvg().initial_state()
    for _ in range(3):
        w, state = FedAvg().aggregate(w, [ClientResult("a", [np.ones(2)], 1)], state)
    assert state.step == 3


# --- Server optimizers --------------------------------------------------------------------


@FAST
@given(rounds())
def test_fedavgm_without_momentum_at_lr_one_is_fedavg(case):
    current, results = case
    plain = FedAvgM(server_lr=1.0, momentum=0.0)
    assert_close(run(plain, current, results), run(FedAvg(), current, results))


def client_rounds(seed: int, n_rounds: int) -> list[list[ClientResult]]:
    rng = np.random.default_rng(seed)
    return [
        [
            ClientResult(
                f"c{i}",
                [rng.normal(size=(3, 2)).astype(np.float32), rng.normal(size=4)],
                int(rng.integers(1, 100)),
            )
            for i in range(int(rng.integers(1, 5)))
        ]
        for _ in range(n_rounds)
    ]


def through_codec(state: StrategyState) -> StrategyState:
    """What a registry does: named arrays to raw bytes and back."""
    return StrategyState.from_named_arrays(
        (name, np.frombuffer(arr.tobytes(), arr.dtype).reshape(arr.shape).copy())
        for name, arr in state.to_named_arrays()
    )


@FAST
@given(st.sampled_from(["fedavgm", "fedadam"]), st.floats(0.05, 1.0), st.integers(0, 2**32 - 1))
def test_a_resumed_run_equals_an_uninterrupted_one(name, lr, seed):
    per_round = client_rounds(seed, 4)
    start = [np.zeros((3, 2), np.float32), np.zeros(4)]

    strategy = make_strategy(name, server_lr=lr)
    weights, state = start, strategy.initial_state()
    for results in per_round:
        weights, state = strategy.aggregate(weights, results, state)

    # Each round a fresh process: a new strategy object, the state read back from the registry.
    resumed_w, resumed = start, make_strategy(name, server_lr=lr).initial_state()
    for results in per_round:
        resumed = through_codec(resumed)
        resumed_w, resumed = make_strategy(name, server_lr=lr).aggregate(
            resumed_w, results, resumed
        )

    for a, b in zip(weights, resumed_w, strict=True):
        np.testing.assert_array_equal(a, b)
    named, resumed_named = state.to_named_arrays(), resumed.to_named_arrays()
    assert [n for n, _ in named] == [n for n, _ in resumed_named]
    for (_, a), (_, b) in zip(named, resumed_named, strict=True):
        np.testing.assert_array_equal(a, b)


def test_state_names_are_stable():
    results = client_rounds(0, 1)[0]
    current = [np.zeros((3, 2), np.float32), np.zeros(4)]
    _, state = FedAdam().aggregate(current, results, FedAdam().initial_state())
    named = state.to_named_arrays()
    assert [n for n, _ in named] == ["step", "m/0", "m/1", "v/0", "v/1"]
    assert named[0][1].dtype == np.int64 and named[0][1].shape == ()
    assert through_codec(state).step == 1


@pytest.mark.parametrize(
    ("named", "match"),
    [
        ([("m/0", np.zeros(2))], "no 'step'"),
        ([("step", np.array(1)), ("m0", np.zeros(2))], "not '<key>/<index>'"),
        ([("step", np.array(1)), ("m/1", np.zeros(2))], "gaps"),
        ([("step", np.array(1.5))], "0-d integer"),
    ],
)
def test_malformed_state_is_refused(named, match):
    with pytest.raises(StrategyStateError, match=match):
        StrategyState.from_named_arrays(named)


def test_state_from_another_model_is_refused():
    state = StrategyState(step=1, arrays={"m": [np.zeros(5)]})
    with pytest.raises(StrategyStateError, match="another model"):
        FedAvgM().aggregate([np.zeros(3)], [ClientResult("a", [np.ones(3)], 1)], state)


def test_fedadam_moves_each_coordinate_by_about_the_server_lr_on_the_first_round():
    current = [np.zeros(3)]
    results = [ClientResult("a", [np.array([1.0, -2.0, 1e-6])], 1)]
    new = run(FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=1e-3), current, results)[0]
    # m = 0.1·(-g), v ≈ 0.01·g²: the step is lr·0.1·|g|/(0.1·|g| + tau) in the sign of -g.
    assert new[0] == pytest.approx(0.1, rel=0.02) and new[1] == pytest.approx(-0.1, rel=0.02)
    assert abs(new[2]) < 1e-3  # tau keeps a tiny pseudo-gradient from taking a full step


# --- Robust strategies --------------------------------------------------------------------


@FAST
@given(
    arrays(np.float64, (4, 6), elements=st.floats(-1, 1)),
    st.integers(0, 4),
    st.sampled_from([1e6, -1e6]),
)
def test_robust_strategies_ignore_one_wild_client_among_five(honest, position, wild):
    weights = [[row.astype(np.float32)] for row in honest]
    weights.insert(position, [np.full(6, wild, np.float32)])
    results = [ClientResult(f"c{i}", w, 10) for i, w in enumerate(weights)]
    current = [np.zeros(6, np.float32)]
    for strategy in (Median(), TrimmedMean(beta=0.2)):
        new = run(strategy, current, results)[0]
        assert np.all(new >= honest.min(axis=0) - 1e-6), strategy
        assert np.all(new <= honest.max(axis=0) + 1e-6), strategy
    assert np.all(np.abs(run(FedAvg(), current, results)[0]) > 1e5)


@FAST
@given(rounds(max_clients=7))
def test_trimmed_mean_of_zero_is_the_mean_and_median_is_the_median(case):
    _, results = case
    clients = [r.weights for r in results]
    for i, (mean, med) in enumerate(
        zip(trimmed_mean(clients, 0.0), coordinatewise_median(clients), strict=True)
    ):
        np.testing.assert_allclose(mean, stacked(results, i).mean(axis=0), rtol=1e-12, atol=1e-9)
        np.testing.assert_array_equal(med, np.median(stacked(results, i), axis=0))


def test_trimmed_mean_says_when_beta_leaves_nothing():
    clients = [[np.full(2, float(i))] for i in range(4)]
    with pytest.raises(AggregationError, match="leaving none"):
        trimmed_mean(clients, 0.5)
    np.testing.assert_array_equal(trimmed_mean(clients, 0.25)[0], [1.5, 1.5])
    with pytest.raises(StrategyConfigError, match="beta"):
        TrimmedMean(beta=0.5)


# --- Numeric helpers ----------------------------------------------------------------------


def test_weighted_average_accumulates_one_layer_at_a_time():
    layer = np.ones(250_000, np.float32)  # 2 MB per layer in float64
    clients = [[layer, layer]] * 40  # the same arrays: the inputs themselves cost ~nothing
    tracemalloc.start()
    try:
        out = weighted_average(clients, [1.0] * 40)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    np.testing.assert_allclose(out[1], 1.0)
    assert peak < 12e6  # stacking the 40 clients of one layer alone would take 80 MB


def test_global_norm_treats_all_arrays_as_one_vector():
    assert global_norm([np.array([3.0], np.float32), np.array([[4.0]])]) == 5.0
    assert global_norm([]) == 0.0


# --- Screening ----------------------------------------------------------------------------


MODEL = [np.zeros((2, 3), np.float32), np.zeros(3, np.float32)]


@pytest.mark.parametrize(
    "update",
    [
        [np.zeros((2, 3), np.float32)],
        [*MODEL, np.zeros(1, np.float32)],
        [np.zeros((3, 2), np.float32), np.zeros(3, np.float32)],
        [np.zeros((2, 3), np.int32), np.zeros(3, np.float32)],
        [np.zeros((2, 3), np.float32), np.zeros(3, bool)],
    ],
    ids=["too_few", "too_many", "transposed", "int_dtype", "bool_dtype"],
)
def test_screening_refuses_wrong_shapes_and_dtypes(update):
    with pytest.raises(ShapeMismatchRefusal, match="'c7'") as info:
        check_update(MODEL, update, client_id="c7")
    assert info.value.reason == "shape_mismatch" and info.value.client_id == "c7"
    assert isinstance(info.value, UpdateRefused) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_screening_refuses_non_finite_values(bad):
    update = [np.zeros((2, 3), np.float32), np.array([0.0, bad, 0.0], np.float32)]
    with pytest.raises(NonFiniteRefusal, match="array 1") as info:
        check_update(MODEL, update)
    assert info.value.reason == "non_finite"


def test_screening_accepts_a_good_update_in_another_float_width():
    check_update(MODEL, [np.ones((2, 3), np.float64), np.ones(3, np.float16)])


@FAST
@given(FLOAT_DTYPES, st.integers(0, 2**32 - 1), st.integers(0, 10), st.floats(3, 1e6))
def test_norm_outliers_flag_a_scaled_update_among_ten_honest_ones(dtype, seed, position, norm):
    """Honest update norms spread over 1.00-1.18 (random directions); one update of norm >= 3."""
    rng = np.random.default_rng(seed)
    current = [rng.normal(size=(20, 10)).astype(dtype), rng.normal(size=10).astype(dtype)]

    def update(client_id: str, size: float) -> ClientResult:
        direction = [rng.normal(size=a.shape) for a in current]
        unit = size / global_norm(direction)
        return ClientResult(
            client_id, [a + unit * d for a, d in zip(current, direction, strict=True)], 5
        )

    honest = [update(f"honest{i}", 1.0 + 0.02 * i) for i in range(10)]
    assert norm_outliers(current, honest) == []
    results = [*honest[:position], update("scaled", norm), *honest[position:]]
    assert norm_outliers(current, results) == ["scaled"]


def test_norm_outliers_need_enough_clients_and_spare_identical_ones():
    current = [np.zeros(4)]
    few = [ClientResult(c, [np.full(4, v)], 1) for c, v in (("a", 0.1), ("b", 0.1), ("x", 1e6))]
    assert norm_outliers(current, few) == []
    same = [ClientResult(f"c{i}", [np.full(4, 0.1)], 1) for i in range(10)]
    assert norm_outliers(current, same) == []


# --- make_strategy ------------------------------------------------------------------------


def test_make_strategy_builds_every_strategy_and_defaults_to_fedavg():
    assert isinstance(make_strategy(), FedAvg)
    assert set(STRATEGIES) == {"fedavg", "fedavgm", "fedadam", "median", "trimmed_mean"}
    assert make_strategy("FedAvgM", momentum="0.5") == FedAvgM(momentum=0.5)
    assert repr(make_strategy("trimmed_mean", beta=0.2)).startswith("TrimmedMean(beta=0.2)")
    assert "\n" not in "".join(repr(make_strategy(name)) for name in STRATEGIES)


@pytest.mark.parametrize(
    ("name", "params", "match"),
    [
        ("fedprox", {}, "choose one of fedadam, fedavg, fedavgm, median, trimmed_mean"),
        ("fedavg", {"momentum": 0.9}, r"unknown parameter.*valid: none"),
        ("fedadam", {"lr": 0.1}, r"unknown parameter\(s\) \['lr'\]; valid: server_lr, beta1"),
        ("fedavgm", {"momentum": "fast"}, "not a number"),
        ("fedavgm", {"momentum": 1.0}, r"momentum must be in \[0, 1\)"),
        ("fedadam", {"tau": 0}, "tau must be > 0"),
    ],
)
def test_make_strategy_errors_name_the_valid_choices(name, params, match):
    with pytest.raises(StrategyConfigError, match=match):
        make_strategy(name, **params)
