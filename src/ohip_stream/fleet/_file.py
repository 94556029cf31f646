"""The fleet's streams file (TOML): environments, then streams.

.. code-block:: toml

    [environments.prod-eu]
    gateway_url = "https://api-eu.example.com"
    client_id = "partner-client"
    enterprise_id = "ENT1"                  # or: username = "...", password_env = "..."
    app_key_env = "OHIP_APP_KEY"            # the NAME of the variable holding the key
    client_secret_env = "OHIP_CLIENT_SECRET"

    [[streams]]
    environment = "prod-eu"
    chain_code = "CHAIN1"
    # name = "prod-eu:CHAIN1"  (the default)
    # hotel_codes = ["HOTEL1"], delta = false, start = "checkpoint" | "highest" | "193"

Secrets never appear in the file, the database, the logs or ``fleet status``: the file names
the environment variables that hold them, and each worker reads those variables.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ohip_stream._exceptions import ConfigurationError
from ohip_stream.fleet._model import StreamSpec

__all__ = ["load_streams_file", "parse_streams"]

_ENV_FIELDS = frozenset(
    {
        "gateway_url",
        "client_id",
        "enterprise_id",
        "username",
        "password_env",
        "app_key_env",
        "client_secret_env",
    }
)
_STREAM_FIELDS = frozenset({"name", "environment", "chain_code", "hotel_codes", "delta", "start"})
_SECRET_FIELDS = frozenset({"app_key", "client_secret", "password"})


def load_streams_file(path: str | Path) -> list[StreamSpec]:
    """The streams of a TOML file (see the module docstring)."""
    path = Path(path)
    tomllib = _toml()
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigurationError(f"cannot read the streams file {path}: {exc.strerror}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigurationError(f"the streams file {path} is not valid TOML: {exc}") from exc
    return parse_streams(data, source=str(path))


def _toml() -> Any:
    if sys.version_info >= (3, 11):
        import tomllib

        return tomllib
    try:  # pragma: no cover - Python 3.10
        import tomli  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:  # pragma: no cover
        raise ConfigurationError(
            'reading a streams file on Python 3.10 needs tomli: pip install "ohip-stream[fleet]"'
        ) from exc
    return tomli  # pragma: no cover


def parse_streams(data: Mapping[str, Any], *, source: str = "the streams file") -> list[StreamSpec]:
    """The streams of an already parsed file."""
    unknown = set(data) - {"environments", "streams"}
    if unknown:
        raise ConfigurationError(
            f"{source}: unknown top-level keys {sorted(unknown)}: use [environments.NAME] "
            "tables and [[streams]] entries"
        )
    environments = data.get("environments") or {}
    streams = data.get("streams") or []
    if not isinstance(environments, Mapping) or not isinstance(streams, list):
        raise ConfigurationError(
            f"{source}: environments must be tables ([environments.NAME]) and streams a list "
            "of tables ([[streams]])"
        )
    specs: list[StreamSpec] = []
    seen: set[str] = set()
    for index, entry in enumerate(streams, 1):
        spec = _stream(entry, environments, f"{source}: stream #{index}")
        if spec.name in seen:
            raise ConfigurationError(
                f"{source}: two streams are named {spec.name!r}: give each a unique name"
            )
        seen.add(spec.name)
        specs.append(spec)
    return specs


def _checked(table: Any, allowed: frozenset[str], where: str) -> dict[str, Any]:
    if not isinstance(table, Mapping):
        raise ConfigurationError(f"{where} must be a table")
    secrets = _SECRET_FIELDS & set(table)
    if secrets:
        name = sorted(secrets)[0]
        raise ConfigurationError(
            f"{where}: {name} must not be in the file: name the environment variable that holds "
            f'it with {name}_env = "VARIABLE"'
        )
    unknown = set(table) - allowed
    if unknown:
        raise ConfigurationError(
            f"{where}: unknown keys {sorted(unknown)}; allowed: {', '.join(sorted(allowed))}"
        )
    return dict(table)


def _stream(entry: Any, environments: Mapping[str, Any], where: str) -> StreamSpec:
    stream = _checked(entry, _STREAM_FIELDS, where)
    env_name = stream.get("environment")
    if not isinstance(env_name, str) or env_name not in environments:
        raise ConfigurationError(
            f"{where}: environment {env_name!r} is not defined: add [environments.{env_name}] "
            f"(defined: {', '.join(sorted(environments)) or 'none'})"
        )
    env = _checked(environments[env_name], _ENV_FIELDS, f"environment {env_name!r}")
    chain = stream.get("chain_code")
    if not isinstance(chain, str) or not chain:
        raise ConfigurationError(f"{where}: chain_code is required (the OPERA chain code)")
    for required in ("gateway_url", "client_id", "app_key_env", "client_secret_env"):
        if not isinstance(env.get(required), str) or not env[required]:
            raise ConfigurationError(f"environment {env_name!r}: {required} is required")
    hotels = stream.get("hotel_codes") or ()
    if isinstance(hotels, str):
        hotels = [h.strip() for h in hotels.split(",") if h.strip()]
    start = stream.get("start", "checkpoint")
    return StreamSpec(
        name=str(stream.get("name") or f"{env_name}:{chain}"),
        environment=env_name,
        gateway_url=env["gateway_url"],
        chain_code=chain,
        client_id=env["client_id"],
        app_key_env=env["app_key_env"],
        client_secret_env=env["client_secret_env"],
        enterprise_id=env.get("enterprise_id"),
        username=env.get("username"),
        password_env=env.get("password_env"),
        hotel_codes=tuple(str(h) for h in hotels),
        delta=bool(stream.get("delta", False)),
        start=str(start),
    )
