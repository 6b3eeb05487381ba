"""The agent's one config object: agent.toml < EVFL_AGENT_* environment < flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from proto.config_files import TomlSettings, load_settings
from proto.transport_config import GrpcClientSection, MqttSection, Section, SigningSection


class UploadSection(Section):
    batch_size: int = Field(200, ge=1)
    max_sessions_per_stream: int = Field(5000, ge=1)
    timeout_s: float = Field(60.0, gt=0)


class AgentConfig(TomlSettings):
    model_config = SettingsConfigDict(
        env_prefix="EVFL_AGENT_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    vehicle_id: str = Field(min_length=1)
    state_dir: Path = Path("agent-state")  # the upload queue and the models
    listen: str = "unix:agent.sock"  # the local API: unix:PATH or host:port
    metrics_listen: str = ""
    # Local API threads: a forwarded Predict holds one until the station answers, so this bounds
    # how many apps' requests can be in flight at once.
    serve_workers: int = Field(4, ge=1)
    tasks: list[str] = Field(default_factory=list)
    # The station that answers forwarded requests while driving; when plugged in, the station
    # the car is plugged into takes over.
    station: GrpcClientSection = GrpcClientSection(timeout_s=0.5)
    forward_retries: int = Field(2, ge=0)
    answer_timeout_s: float = Field(1.0, gt=0)  # default deadline of a Predict, hops included
    mqtt: MqttSection = MqttSection()
    signing: SigningSection = SigningSection(require_signed=True)
    upload: UploadSection = UploadSection()


def load_config(path: Path | None = None, **overrides: Any) -> AgentConfig:
    return load_settings(AgentConfig, path, **overrides)
