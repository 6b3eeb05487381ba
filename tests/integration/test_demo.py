"""The README's first command, in its quick form, as a new user would run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{entry.name}: {cmdline[:200]}")
    return found


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    out = tmp_path / "runs"
    result = subprocess.run(
        [sys.executable, "-m", "evfl.cli", "demo", "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (run,) = list(out.iterdir())
    summary = json.loads((run / "summary.json").read_text())
    versions = summary["versions"]
    assert [v["version"] for v in versions] == list(range(len(versions)))
    assert versions[-1]["metrics"]["cloud"]["mae"] < versions[0]["metrics"]["cloud"]["mae"]

    # Every vehicle ends on the latest edge partition (one sha256 for all).
    latest = versions[-1]["version"]
    models = summary["agent_models"]
    assert models and all(len(m) == 1 and m[0][0] == latest for m in models.values())
    assert len({m[0][1] for m in models.values()}) == 1

    # Every uploaded session is stored exactly once across the stations.
    assert sum(summary["station_sessions"].values()) == summary["uploaded"] > 0
    assert summary["failed"] == 0
    answers = [json.loads(line) for line in (run / "answers.jsonl").read_text().splitlines()]
    assert answers and not any(a.get("degraded") for a in answers)

    for name in (
        "report.md",
        "metrics.csv",
        "per_exit_mse.png",
        "per_exit_mae.png",
        "latency_per_exit.png",
        "exit_rates.png",
    ):
        assert (run / name).stat().st_size > 0
    assert str(run / "report.md") in result.stdout
    assert _processes_mentioning(str(run)) == []
