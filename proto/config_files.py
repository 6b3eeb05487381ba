"""Every program's config object is read the same way: TOML < environment < flags."""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, TomlConfigSettingsSource


class ConfigError(ValueError):
    """A program's configuration is unreadable or invalid."""


class TomlSettings(BaseSettings):
    """Settings whose lowest-priority source is the TOML file given to :func:`load_settings`."""

    _toml_file: ClassVar[Path | None] = None

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        if cls._toml_file is not None:
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=cls._toml_file))
        return tuple(sources)


S = TypeVar("S", bound=TomlSettings)


def load_settings(cls: type[S], path: Path | None = None, **overrides: Any) -> S:
    """TOML at ``path`` < environment < ``overrides`` (None values are ignored)."""
    if path is not None and not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    values = {k: v for k, v in overrides.items() if v is not None}
    source = type(f"{cls.__name__}FromFile", (cls,), {"_toml_file": path})
    try:
        return source(**values)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in e['loc']) or 'config'}: {e['msg']}" for e in exc.errors()
        )
        raise ConfigError(f"{path or 'config'}: {problems}") from exc
    except (OSError, ValueError) as exc:  # unreadable TOML
        raise ConfigError(f"{path}: {exc}") from exc
