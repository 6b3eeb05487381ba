"""The coordinator's one config object: TOML < EVFL_COORDINATOR_* environment < flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from proto.config_files import TomlSettings, load_settings
from proto.transport_config import KafkaSection, MqttSection, ServerTlsSection, SigningSection


class CoordinatorConfig(TomlSettings):
    model_config = SettingsConfigDict(
        env_prefix="EVFL_COORDINATOR_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    coordinator_id: str = "coordinator"
    registry_dir: Path = Path("coordinator-state")
    tasks: list[Path] = Field(default_factory=list)  # task TOML files
    cloud_listen: str = "127.0.0.1:50070"  # CloudService; port 0: any
    tls: ServerTlsSection | None = None  # client_ca_file: stations need certificates
    metrics_listen: str = ""
    kafka: KafkaSection = KafkaSection(bootstrap_servers="127.0.0.1:9092")
    mqtt: MqttSection = MqttSection()
    signing: SigningSection = SigningSection()
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    serve_workers: int = Field(8, ge=1)
    # Keep serving the cloud partition after every task has ended instead of exiting: under an
    # orchestrator that restarts exited containers (a Kubernetes Deployment), exiting would mean
    # a restart loop and no cloud exit for the stations.
    serve_after_end: bool = False


def load_config(path: Path | None = None, **overrides: Any) -> CoordinatorConfig:
    return load_settings(CoordinatorConfig, path, **overrides)
