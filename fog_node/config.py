"""The station's one config object: a TOML file, overridden by EVFL_FOG_* environment variables
(nested with "__", e.g. EVFL_FOG_KAFKA__SASL_PASSWORD), overridden by command-line flags.

Secrets (SASL password, key files) belong in the environment or in files the service user
alone can read, never in a config file checked into a repository.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from proto.config_files import TomlSettings, load_settings
from proto.transport_config import (
    GrpcClientSection,
    KafkaSection,
    Section,
    ServerTlsSection,
    SigningSection,
)


class TrainingSection(Section):
    epochs: int = Field(5, ge=1)
    batch_size: int = Field(64, ge=1)
    time_budget_s: float = Field(60.0, gt=0)
    replay_ratio: float = Field(1.0, ge=0)
    replay_max: int = Field(2000, ge=0)
    seed: int = 0


class FogConfig(TomlSettings):
    model_config = SettingsConfigDict(
        env_prefix="EVFL_FOG_", env_nested_delimiter="__", extra="forbid", frozen=True
    )

    station_id: str = Field(min_length=1)
    accepted_station_ids: list[str] = Field(default_factory=list)  # charge points of this site
    state_dir: Path = Path("fog-state")
    listen: str = "127.0.0.1:50051"
    metrics_listen: str = ""  # "127.0.0.1:9101"; empty: no metrics endpoint
    tls: ServerTlsSection | None = None
    cloud: GrpcClientSection = GrpcClientSection()
    kafka: KafkaSection = KafkaSection()
    tasks: list[str] = Field(default_factory=list)
    training: TrainingSection = TrainingSection()
    signing: SigningSection = SigningSection()
    max_sessions_per_stream: int = Field(200_000, ge=1)
    max_message_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    serve_workers: int = Field(8, ge=1)

    @property
    def store_path(self) -> Path:
        return self.state_dir / "sessions.sqlite3"


def load_config(path: Path | None = None, **overrides: Any) -> FogConfig:
    return load_settings(FogConfig, path, **overrides)
