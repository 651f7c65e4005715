"""Settings loading shared by both daemons: YAML file, then environment, then clear errors.

Each daemon has one settings class (`edge_agent.settings.EdgeSettings`,
`cloud_router.settings.RouterSettings`) with its own env prefix. Precedence, highest first:
command-line overrides, the YAML file, environment variables, the defaults.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import ValidationError
from pydantic_settings import BaseSettings

from shared.errors import ConfigError

S = TypeVar("S", bound=BaseSettings)


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
