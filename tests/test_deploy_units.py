"""The systemd unit passes `systemd-analyze verify` (with ExecStart pointed at this venv)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).parents[1] / "deploy" / "systemd"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not here")
@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_unit_verifies(tmp_path, unit):
    evfl = Path(sys.executable).parent / "evfl"
    text = (UNITS / unit).read_text().replace("/opt/evfl/bin/evfl", str(evfl))
    copy = tmp_path / unit
    copy.write_text(text)
    result = subprocess.run(
        ["systemd-analyze", "verify", str(copy)], capture_output=True, text=True, timeout=60
    )
    problems = [line for line in result.stderr.splitlines() if unit in line]
    assert result.returncode == 0 and not problems, result.stderr


def test_agent_unit_is_hardened():
    text = (UNITS / "evfl-agent.service").read_text()
    for setting in (
        "DynamicUser=yes",
        "StateDirectory=evfl-agent",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "Restart=always",
    ):
        assert setting in text


def test_fog_unit_is_hardened_and_keeps_keys_out_of_reach():
    text = (UNITS / "evfl-fog.service").read_text()
    for setting in (
        "DynamicUser=yes",
        "StateDirectory=evfl-fog",
        "ProtectSystem=strict",
        "NoNewPrivileges=yes",
        "CapabilityBoundingSet=\n",
        "Restart=always",
        "LoadCredential=signing.key.pem:",  # root-only key files, a private copy for the service
    ):
        assert setting in text
