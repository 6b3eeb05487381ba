"""Turn the errors a user can fix into one red line and exit code 2, never a traceback."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

USER_ERRORS = (
    ("models.datasets.errors", "DatasetError"),
    ("models.features", "FeatureError"),
    ("models.model_config", "ModelConfigError"),
    ("models.bundle", "BundleError"),
    ("models.export", "ExportParityError"),
    ("proto.config_files", "ConfigError"),
    ("proto.grpc_channel", "TlsConfigError"),
    ("proto.signing", "KeyLoadError"),
    ("proto.kafka", "InvalidKafkaSettings"),
    ("fog_node.session_store", "StoreError"),
    ("coordinator.task_spec", "TaskSpecError"),
    ("coordinator.registry", "RegistryError"),
    ("proto.mqtt", "InvalidMqttSettings"),
    ("proto.mqtt", "MqttUnavailable"),
    ("proto.kafka", "KafkaUnavailable"),
)


def _user_error_types() -> tuple[type[Exception], ...]:
    """Only modules already imported can have raised their errors: no heavy import here."""
    modules = ((sys.modules.get(m), name) for m, name in USER_ERRORS)
    return tuple(getattr(mod, name) for mod, name in modules if mod is not None)


@contextmanager
def reported(console: Console) -> Iterator[None]:
    try:
        yield
    except Exception as exc:
        if not isinstance(exc, _user_error_types()):
            raise
        console.print(f"[red]error:[/red] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(code=2) from None
