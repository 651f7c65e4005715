"""Settings loading shared by both daemons: YAML file, then environment, then clear errors.

Each daemon has one settings class (`edge_agent.settings.EdgeSettings`,
`cloud_router.settings.RouterSettings`) with its own env prefix. Precedence, highest first:
command-line overrides, the YAML file, environment variables, the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional, TypeVar

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from shared.errors import ConfigError
from shared.event_loop import EventLoopName

S = TypeVar("S", bound=BaseSettings)


class DaemonSettings(BaseSettings):
    """The settings both daemons have, with the same meaning and default. Each daemon's class
    (`EdgeSettings`, `RouterSettings`) adds its env prefix and the rest, including `listen`,
    `default_timeout_ms` and `update_public_key`, whose defaults or meaning differ per daemon."""

    model_config = SettingsConfigDict(extra="forbid")

    max_timeout_ms: float = Field(default=600_000.0, gt=0)
    """Longer deadlines are refused as absurd (INVALID_ARGUMENT)."""
    max_message_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    """Largest gRPC message accepted or sent; larger requests get RESOURCE_EXHAUSTED."""
    metrics_port: Optional[int] = None
    """Port of the Prometheus /metrics endpoint; None disables it."""
    shutdown_grace_s: float = Field(default=10.0, ge=0)
    """On SIGTERM, how long in-flight requests may take to finish."""
    event_loop: EventLoopName = "auto"
    """asyncio loop to serve on: `auto` (uvloop when installed, else asyncio's), `uvloop`, `asyncio`."""


def load_settings(cls: type[S], path: str | Path | None = None, **overrides: Any) -> S:
    """Build `cls` from an optional YAML file plus overrides; name the bad field on error."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        unknown = sorted(set(loaded) - set(cls.model_fields))
        if unknown:
            raise ConfigError(f"{path}: unknown setting(s) {unknown}; known: {sorted(cls.model_fields)}")
        values.update(loaded)
    values.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return cls(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        source = f"{path}: " if path else ""
        raise ConfigError(f"{source}setting {where!r}: {err['msg']} (got {err.get('input')!r})") from None
