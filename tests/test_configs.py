"""Every program's config: TOML < environment < flags, typed, secrets masked, bad keys named."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.config import load_config as load_agent
from coordinator.config import load_config as load_coordinator
from coordinator.task_spec import TaskSpecError, load_task
from fog_node.config import load_config as load_fog
from proto.config_files import ConfigError
from proto.update_encoding import UpdateEncoding


def test_fog_config_layers_and_secrets(tmp_path, monkeypatch):
    path = tmp_path / "fog.toml"
    path.write_text(
        'station_id = "50911"\ntasks = ["dundee-energy"]\n'
        '[kafka]\nbootstrap_servers = "k1:9092"\nsecurity_protocol = "SASL_SSL"\n'
        'sasl_mechanism = "SCRAM-SHA-512"\nsasl_username = "station"\n'
        "[training]\nepochs = 3\n"
    )
    monkeypatch.setenv("EVFL_FOG_KAFKA__SASL_PASSWORD", "hunter2")
    monkeypatch.setenv("EVFL_FOG_TRAINING__EPOCHS", "4")
    config = load_fog(path, listen="127.0.0.1:0")
    assert config.training.epochs == 4  # the environment wins over the file
    assert config.listen == "127.0.0.1:0"  # flags win over both
    settings = config.kafka.settings("evfl-fog-50911", config.max_message_bytes)
    assert settings is not None and settings.sasl_password == "hunter2"
    assert "hunter2" not in repr(config) and "hunter2" not in repr(settings)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ('station_id = "x"\nbogus = 1\n', "bogus"),
        ('station_id = "x"\n[training]\nepochs = 0\n', "training.epochs"),
        ("tasks = []\n", "station_id"),
        ("station_id = \n", "fog.toml"),
    ],
)
def test_bad_fog_configs_name_the_field(tmp_path, text, words):
    path = tmp_path / "fog.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=words):
        load_fog(path)


def test_coordinator_and_agent_configs(tmp_path):
    coordinator = load_coordinator(None, registry_dir=tmp_path / "r")
    assert coordinator.kafka.settings("c", 1 << 20) is not None
    assert coordinator.mqtt.settings("c") is None  # MQTT off unless a host is given
    agent = load_agent(None, vehicle_id="car-1")
    assert agent.signing.require_signed  # a car takes signed partitions only, by default
    with pytest.raises(ConfigError, match="no such config file"):
        load_agent(Path(tmp_path / "missing.toml"))


def test_task_files(tmp_path):
    task = load_task(Path(__file__).parents[1] / "tasks" / "dundee-energy.toml")
    assert (task.task_id, task.rounds, task.strategy) == ("dundee-energy", 15, "fedavg")
    bad = tmp_path / "bad.toml"
    bad.write_text('task_id = "has space"\n')
    with pytest.raises(TaskSpecError, match="task_id"):
        load_task(bad)
    bad.write_text('task_id = "t"\nrounds = 0\n')
    with pytest.raises(TaskSpecError, match="rounds"):
        load_task(bad)


@pytest.mark.parametrize(
    "encoding", ["float32", "float16", "int8", "int8+sr", "topk-int8@0.01", "topk-int8@0.05+sr"]
)
def test_task_update_encodings(tmp_path, encoding):
    task = tmp_path / "task.toml"
    task.write_text(f'task_id = "t"\nupdate_encoding = "{encoding}"\n')
    assert load_task(task).update_encoding == encoding
    assert str(UpdateEncoding.parse(load_task(task).update_encoding)) == encoding  # round loop
    task.write_text('task_id = "t"\n')
    assert load_task(task).update_encoding == "float32"


@pytest.mark.parametrize(
    ("encoding", "words"),
    [
        ("topk-int8@2", "must be in \\(0, 1\\]"),
        ("topk-int8@0", "must be in \\(0, 1\\]"),
        ("topk-int8", "must be in \\(0, 1\\]"),  # a share is required
        ("int8@0.1", "topk_fraction is for topk-int8"),
        ("float16+sr", "stochastic rounding is for int8 kinds"),
        ("gzip", "'gzip' is not a valid"),
    ],
)
def test_bad_task_update_encodings_are_refused(tmp_path, encoding, words):
    task = tmp_path / "task.toml"
    task.write_text(f'task_id = "t"\nupdate_encoding = "{encoding}"\n')
    with pytest.raises(TaskSpecError, match=f"update_encoding: .*{words}"):
        load_task(task)


def test_shipped_example_configs_load(monkeypatch):
    examples = Path(__file__).parents[1] / "deploy" / "config"
    monkeypatch.setenv("EVFL_FOG_KAFKA__SASL_PASSWORD", "from-the-environment")
    monkeypatch.setenv("EVFL_COORDINATOR_KAFKA__SASL_PASSWORD", "from-the-environment")
    monkeypatch.setenv("EVFL_COORDINATOR_MQTT__PASSWORD", "from-the-environment")
    monkeypatch.setenv("EVFL_AGENT_MQTT__PASSWORD", "from-the-environment")
    fog = load_fog(examples / "fog.example.toml")
    assert fog.kafka.settings("f", fog.max_message_bytes).security_protocol == "SASL_SSL"
    assert fog.tls is not None and fog.tls.client_ca_file is not None  # mutual TLS
    coordinator = load_coordinator(examples / "coordinator.example.toml")
    assert coordinator.mqtt.settings("c").tls
    agent = load_agent(examples / "agent.example.toml")
    assert agent.station.client_tls() is not None and agent.mqtt.settings("a").port == 8883
    # Without the secret in the environment the SASL settings refuse to build.
    monkeypatch.delenv("EVFL_FOG_KAFKA__SASL_PASSWORD")
    with pytest.raises(ValueError, match="sasl_password"):
        load_fog(examples / "fog.example.toml").kafka.settings("f", 1 << 20)
