"""Configuration from the environment (``OHIP_*`` variables and a ``.env`` file), at the edge only.

============================  =====================================================
variable                      meaning
============================  =====================================================
``OHIP_GATEWAY_URL``          the environment's gateway URL (``https://...``)
``OHIP_APP_KEY``              the application key (raw; the SDK hashes it for the URL)
``OHIP_CHAIN_CODE``           the OPERA chain code
``OHIP_CLIENT_ID``            OAuth client id
``OHIP_CLIENT_SECRET``        OAuth client secret
``OHIP_ENTERPRISE_ID``        client-credentials environments (OCIM)
``OHIP_USERNAME``             password-grant environments, with ``OHIP_PASSWORD``
``OHIP_PASSWORD``
``OHIP_CA_FILE``              CA bundle (PEM) for the gateway and the token endpoint
``OHIP_PROXY``                proxy URL for both
``OHIP_CHECKPOINT_DB``        SQLite file for checkpoints (default: in memory)
``OHIP_LOCK_DIR``             directory of the one-consumer lock files
``OHIP_TIMINGS__<FIELD>``     any :class:`~ohip_stream.Timings` field, e.g.
                              ``OHIP_TIMINGS__PING_INTERVAL=10`` (one variable per
                              field, generated from the fields)
============================  =====================================================
"""

from __future__ import annotations

import re
import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypedDict, cast

from pydantic import BaseModel, ConfigDict, SecretStr, ValidationError, create_model
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from ohip_stream._exceptions import ConfigurationError, describe_problems
from ohip_stream._logging import register_secret
from ohip_stream._timings import Timings

if TYPE_CHECKING:
    from ohip_stream._auth import TokenProvider
    from ohip_stream._checkpoints import CheckpointStore
    from ohip_stream._config import UpgradeGate
    from ohip_stream._stream import EventStream, InvalidHandler

__all__ = ["OhipSettings", "StreamOverrides"]


class StreamOverrides(TypedDict, total=False):
    """The keyword arguments of :class:`~ohip_stream.EventStream`, every one optional: what
    ``EventStream.from_env(**overrides)`` accepts on top of the ``OHIP_*`` variables."""

    gateway_url: str
    app_key: str
    chain_code: str
    auth: TokenProvider
    checkpoints: CheckpointStore | None
    offset: str | None
    start_at_highest: bool
    delta: bool
    hotel_codes: Sequence[str] | str | None
    timings: Timings | None
    ssl: ssl.SSLContext | str | Path | None
    proxy: str | None
    max_message_size: int | None
    max_buffer_bytes: int
    queue_size: int
    on_invalid: Literal["raise", "skip"] | InvalidHandler
    on_offset_reset: Literal["deliver", "raise"]
    dedup_window: int | None
    commit_every: int
    commit_interval: float
    guard_scope: Literal["stream", "app_key"]
    lock_dir: str | Path | None
    standby: bool
    allow_insecure: bool
    first_contact_tries: int
    upgrade_gate: UpgradeGate | None


_OVERRIDES = StreamOverrides.__optional_keys__ | StreamOverrides.__required_keys__


def _timings_env_model() -> type[BaseModel]:
    """A model of the ``OHIP_TIMINGS__<FIELD>`` variables, one optional field per
    :class:`Timings` field (unset: the default); an unknown field is an error."""
    fields: dict[str, Any] = {
        name: (cast(Any, info.annotation) | None, None)
        for name, info in Timings.model_fields.items()
    }
    return create_model("TimingsEnv", __config__=ConfigDict(extra="forbid"), **fields)


if TYPE_CHECKING:

    class _TimingsEnv(BaseModel):
        """``OHIP_TIMINGS__<FIELD>`` values (generated from :class:`Timings`' fields)."""

else:
    _TimingsEnv = _timings_env_model()


class OhipSettings(BaseSettings):
    """The ``OHIP_*`` configuration of a stream. Secrets are ``SecretStr`` (never printed)."""

    model_config = SettingsConfigDict(
        env_prefix="OHIP_",
        env_nested_delimiter="__",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        case_sensitive=False,
    )

    gateway_url: str | None = None
    app_key: SecretStr | None = None
    chain_code: str | None = None
    client_id: str | None = None
    client_secret: SecretStr | None = None
    enterprise_id: str | None = None
    username: str | None = None
    password: SecretStr | None = None
    ca_file: Path | None = None
    proxy: str | None = None
    checkpoint_db: Path | None = None
    lock_dir: Path | None = None
    timings: _TimingsEnv = _TimingsEnv()

    @classmethod
    def load(cls, env_file: str | Path | None = ".env", **values: Any) -> OhipSettings:
        """Read the environment (and ``env_file`` if it exists); a bad value is a
        :class:`ConfigurationError` naming the variable."""
        try:
            settings = cls(_env_file=env_file, **values)
        except ValidationError as exc:
            raise ConfigurationError(_describe(exc)) from None
        except SettingsError as exc:
            raise ConfigurationError(_describe_settings_error(exc)) from None
        register_secret(
            *(
                s.get_secret_value()
                for s in (settings.app_key, settings.client_secret, settings.password)
                if s is not None
            )
        )
        return settings

    def require(self, *names: str) -> None:
        """Raise :class:`ConfigurationError` listing the missing ``OHIP_*`` variables."""
        missing = [f"OHIP_{n.upper()}" for n in names if getattr(self, n) in (None, "")]
        if missing:
            raise ConfigurationError(
                f"missing {', '.join(missing)}: set {'them' if len(missing) > 1 else 'it'} in "
                "the environment or a .env file"
            )

    def make_timings(self) -> Timings:
        """The :class:`Timings` with the ``OHIP_TIMINGS__*`` overrides."""
        values = {k: v for k, v in self.timings.model_dump().items() if v is not None}
        return Timings(**values)

    def token_provider(self) -> TokenProvider:
        """An OAuth provider for the grant the variables describe (client credentials when
        ``OHIP_ENTERPRISE_ID`` is set, password when ``OHIP_USERNAME``/``OHIP_PASSWORD`` are)."""
        from ohip_stream._auth import OAuthClientCredentials, OAuthPassword

        self.require("gateway_url", "app_key", "client_id", "client_secret")
        has_password = self.username is not None or self.password is not None
        if self.enterprise_id and has_password:
            raise ConfigurationError(
                "set OHIP_ENTERPRISE_ID (client credentials) or OHIP_USERNAME and OHIP_PASSWORD "
                "(password grant), not both"
            )
        assert self.gateway_url is not None
        assert self.app_key is not None
        assert self.client_id is not None
        assert self.client_secret is not None
        verify: Any = str(self.ca_file) if self.ca_file is not None else True
        common: dict[str, Any] = {
            "gateway_url": self.gateway_url,
            "client_id": self.client_id,
            "client_secret": self.client_secret.get_secret_value(),
            "app_key": self.app_key.get_secret_value(),
            "verify": verify,
            "proxy": self.proxy,
        }
        if self.enterprise_id:
            return OAuthClientCredentials(enterprise_id=self.enterprise_id, **common)
        if has_password:
            self.require("username", "password")
            assert self.username is not None
            assert self.password is not None
            return OAuthPassword(
                username=self.username, password=self.password.get_secret_value(), **common
            )
        raise ConfigurationError(
            "set OHIP_ENTERPRISE_ID for a client-credentials environment, or OHIP_USERNAME and "
            "OHIP_PASSWORD for a password-grant environment"
        )

    def checkpoint_store(self) -> Any:
        """A :class:`SQLiteCheckpointStore` at ``OHIP_CHECKPOINT_DB``, or ``None``."""
        from ohip_stream._checkpoints import SQLiteCheckpointStore

        return SQLiteCheckpointStore(self.checkpoint_db) if self.checkpoint_db else None

    def event_stream(self, **overrides: Any) -> EventStream:
        """An :class:`EventStream` that owns the provider and store made here; ``overrides``
        (a :class:`StreamOverrides`) replace what the variables say. An unknown keyword is a
        :class:`ConfigurationError` naming it."""
        from ohip_stream._stream import EventStream

        unknown = sorted(set(overrides) - _OVERRIDES)
        if unknown:
            raise ConfigurationError(
                f"unknown EventStream option{'s' if len(unknown) > 1 else ''} "
                f"{', '.join(unknown)}: the options are {', '.join(sorted(_OVERRIDES))}"
            )

        self.require("gateway_url", "app_key", "chain_code")
        assert self.gateway_url is not None
        assert self.app_key is not None
        assert self.chain_code is not None
        owned: list[Any] = []
        kwargs: dict[str, Any] = {
            "gateway_url": self.gateway_url,
            "app_key": self.app_key.get_secret_value(),
            "chain_code": self.chain_code,
            "timings": self.make_timings(),
            "proxy": self.proxy,
            "lock_dir": self.lock_dir,
        }
        if self.ca_file is not None:
            kwargs["ssl"] = self.ca_file
        if "auth" not in overrides:
            kwargs["auth"] = self.token_provider()
            owned.append(kwargs["auth"])
        if "checkpoints" not in overrides:
            store = self.checkpoint_store()
            if store is not None:
                kwargs["checkpoints"] = store
                owned.append(store)
        kwargs.update(overrides)
        stream = EventStream(**kwargs)
        stream._adopt(*owned)
        return stream


_FIELD_IN_SETTINGS_ERROR = re.compile(r'field "([A-Za-z_]+)"')


def _describe_settings_error(exc: SettingsError) -> str:
    # pydantic-settings could not decode a variable (OHIP_TIMINGS=x: not JSON for a group).
    match = _FIELD_IN_SETTINGS_ERROR.search(str(exc))
    name = f"OHIP_{match.group(1).upper()}" if match else "an OHIP_* variable"
    if match and match.group(1) == "timings":
        example = next(iter(Timings.model_fields)).upper()
        return (
            f"invalid configuration: {name} cannot be read; set one variable per timing, such "
            f"as OHIP_TIMINGS__{example}=10 (and unset {name})"
        )
    return f"invalid configuration: {name} cannot be read: {exc}"


def _describe(exc: ValidationError) -> str:
    problems = describe_problems(
        exc.errors(), root="OHIP", name=lambda loc: "OHIP_" + "__".join(map(str, loc)).upper()
    )
    return "invalid configuration: " + problems
