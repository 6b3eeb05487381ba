"""The settings the systemd units put in the environment are keys their programs accept."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from agent.config import load_config as load_agent
from fog_node.config import load_config as load_fog

ROOT = Path(__file__).parents[1]
UNITS = ROOT / "deploy" / "systemd"
EXAMPLES = ROOT / "deploy" / "config"


def _environment(unit: str) -> dict[str, str]:
    """Environment= lines, with %d (the credentials directory) as systemd would expand it."""
    pairs = re.findall(r"^Environment=(\w+)=(.*)$", (UNITS / unit).read_text(), re.MULTILINE)
    return {k: v.replace("%d", f"/run/credentials/{unit}") for k, v in pairs}


@pytest.mark.parametrize(
    ("unit", "example", "loader"),
    [
        ("evfl-agent.service", "agent.example.toml", load_agent),
        ("evfl-fog.service", "fog.example.toml", load_fog),
    ],
)
def test_unit_environment_loads_with_the_example_config(monkeypatch, unit, example, loader):
    env = _environment(unit)
    assert env
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    config = loader(EXAMPLES / example)
    dumped = config.model_dump()
    for key, value in env.items():  # every variable reached a field, none was ignored
        *sections, field = key.split("_", 2)[2].lower().split("__")
        node = dumped
        for section in sections:
            node = node[section]
        assert str(node[field]) == value, key


def test_fog_unit_hands_the_private_keys_over_as_credentials():
    text = (UNITS / "evfl-fog.service").read_text()
    credentials = dict(re.findall(r"^LoadCredential=([^:]+):(.+)$", text, re.MULTILINE))
    assert credentials
    key_files = {k: v for k, v in _environment("evfl-fog.service").items() if "KEY_FILE" in k}
    assert "EVFL_FOG_SIGNING__KEY_FILE" in key_files
    for key, value in key_files.items():
        path = Path(value)
        assert path.parent == Path("/run/credentials/evfl-fog.service"), key
        assert path.name in credentials, key
    for source in credentials.values():  # read by systemd as root from the config directory
        assert Path(source).parent == Path("/etc/evfl-fog")
