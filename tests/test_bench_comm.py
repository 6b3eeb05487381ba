"""bench.comm --quick end to end on the real Dundee data: its tables' numbers hang together."""

from __future__ import annotations

import json

import pytest

from bench import comm


@pytest.mark.slow
def test_quick_run_writes_consistent_results(tmp_path) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "comm.json"
    returned = comm.main(["--quick", "--topk", "0.01", "--out", str(out)])
    results = json.loads(out.read_text())
    assert results["quick"] is True and set(results) == set(returned)
    names = ["float32", "float16", "int8", "int8+sr", "topk-int8@0.01"]
    up = results["uplink_update_bytes"]
    assert list(up) == names
    # Smaller encodings give fewer bytes; float32 is today's ~4 bytes per parameter.
    assert up["topk-int8@0.01"] < up["int8"] < up["float16"] < up["float32"]
    assert 3.5 * results["parameters"] < up["float32"] < 4.5 * results["parameters"]
    assert results["downlink_bytes"] > up["float32"]  # announcements carry full weights
    for granularity in ("week", "month"):
        rounds = results["rounds"][granularity]
        assert rounds["station_rounds"] > 0
        assert rounds["sessions_per_round"]["p10"] >= results["min_samples"]
        saved = {n: rounds["encodings"][n]["saved_all_bytes"] for n in names}
        assert saved["topk-int8@0.01"] > saved["int8"] > saved["float16"] > saved["float32"]
    # Accuracy: every encoding was evaluated; float16 and int8 stay close to float32.
    acc = results["accuracy"]
    cloud = {n: acc[n]["per_round"][-1]["cloud"]["mae"] for n in names}
    assert abs(cloud["float16"] - cloud["float32"]) < 0.01
    assert abs(cloud["int8"] - cloud["float32"]) < 0.05
    assert acc["float32"]["delta_error_mean"] == 0.0
    assert 0 < acc["int8"]["delta_error_mean"] < 0.05
