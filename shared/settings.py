"""Settings loading shared by both daemons: YAML file, then environment, then clear errors.

Each daemon has one settings class (`edge_agent.settings.EdgeSettings`,
`cloud_router.settings.RouterSettings`) with its own env prefix. Precedence, highest first:
command-line overrides, the YAML file, environment variables, the defaults.

An unknown name, in the YAML file or as an environment variable with the class's prefix, is
refused with the closest known name; a bad value names where it came from (the file, the
variable, or the command line).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Optional, TypeVar

import yaml
from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings.exceptions import SettingsError

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
    llm_max_new_tokens: int = Field(default=256, ge=1, le=4096)
    """New tokens for a Generate request that asks for none."""


def closest_name(name: str, known: Iterable[str]) -> Optional[str]:
    """The known name most like `name`, or None when none is close."""
    matches = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return matches[0] if matches else None


def _unknown(name: str, where: str, known: Iterable[str]) -> str:
    suggestion = closest_name(name, known)
    hint = f"; did you mean {suggestion!r}?" if suggestion else f"; known: {', '.join(sorted(known))}"
    return f"{where}: unknown setting {name!r}{hint}"


def env_prefix(cls: type[BaseSettings]) -> str:
    return str(cls.model_config.get("env_prefix", "")).upper()


def check_environment(cls: type[BaseSettings], environ: Optional[Mapping[str, str]] = None) -> None:
    """Refuse an environment variable with `cls`'s prefix that names no setting."""
    environ = os.environ if environ is None else environ
    prefix = env_prefix(cls)
    if not prefix:
        return
    fields = {name.upper(): name for name in cls.model_fields}
    for variable in sorted(environ):
        if variable.upper().startswith(prefix) and variable.upper()[len(prefix):] not in fields:
            name = variable[len(prefix):].lower()
            suggestion = closest_name(name, cls.model_fields)
            hint = f"; did you mean {prefix}{suggestion.upper()}?" if suggestion else ""
            raise ConfigError(f"environment variable {variable}: no setting {name!r}{hint}")


def load_settings(cls: type[S], path: str | Path | None = None, **overrides: Any) -> S:
    """Build `cls` from an optional YAML file plus overrides; name the bad field on error."""
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"config file {path} not found") from None
        except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
            raise ConfigError(f"config file {path} cannot be read: {exc}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: expected a mapping of settings at the top level")
        unknown = sorted(str(name) for name in set(loaded) - set(cls.model_fields))
        if unknown:
            raise ConfigError(_unknown(unknown[0], str(path), cls.model_fields))
        values.update(loaded)
    check_environment(cls)
    given = {k: v for k, v in overrides.items() if v is not None}
    values.update(given)
    try:
        return cls(**values)
    except SettingsError as exc:  # an environment value pydantic-settings could not even parse
        field = _field_in(str(exc), cls.model_fields)
        variable = f"{env_prefix(cls)}{field.upper()}" if field else f"an {env_prefix(cls)}* variable"
        raise ConfigError(f"environment variable {variable}: cannot parse {os.environ.get(variable, '')!r} "
                          f"(lists and mappings are JSON, e.g. [\"cpu\"])") from None
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "(root)"
        field = str(err["loc"][0]) if err["loc"] else ""
        message = err["msg"].removeprefix("Value error, ")
        got = "" if repr(err.get("input")) in message else f" (got {err.get('input')!r})"
        if not err["loc"]:  # a rule across settings (a model validator): its message names them
            raise ConfigError(f"{path}: {message}" if path is not None else message) from None
        if field in given:
            flag = "--model-dir" if field == "model_dirs" else f"--{field.replace('_', '-')}"
            raise ConfigError(f"{flag}: {message}{got}") from None
        if field not in values and field and f"{env_prefix(cls)}{field.upper()}" in os.environ:
            return _raise_env(cls, field, where, message)
        source = f"{path}: " if path is not None and field in values else ""
        raise ConfigError(f"{source}setting {where!r}: {message}{got}") from None


def _raise_env(cls: type[BaseSettings], field: str, where: str, message: str) -> Any:
    variable = f"{env_prefix(cls)}{field.upper()}"
    detail = f" (setting {where!r})" if where != field else ""
    value = os.environ[variable]
    got = "" if repr(value) in message else f" (got {value!r})"
    raise ConfigError(f"environment variable {variable}{detail}: {message}{got}")


def _field_in(message: str, fields: Iterable[str]) -> Optional[str]:
    """The field a pydantic-settings SettingsError message names (`... for field "x" ...`)."""
    for field in fields:
        if f'"{field}"' in message:
            return field
    return None
