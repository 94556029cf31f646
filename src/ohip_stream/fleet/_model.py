"""What the fleet's database holds, as plain values: stream specifications, leases, workers."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ohip_stream._exceptions import ConfigurationError

__all__ = ["Lease", "StreamSpec", "SyncResult", "Worker"]

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_STREAM_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/@#-]{0,119}\Z")
_OFFSET = re.compile(r"[0-9]{1,20}\Z")


@dataclass(frozen=True)
class StreamSpec:
    """One stream of the fleet: where it is, which credentials by which variable names, and the
    subscription's options. Holds no secret: ``app_key_env``, ``client_secret_env`` and
    ``password_env`` name environment variables that each worker reads."""

    name: str
    environment: str
    gateway_url: str
    chain_code: str
    client_id: str
    app_key_env: str
    client_secret_env: str
    enterprise_id: str | None = None
    username: str | None = None
    password_env: str | None = None
    hotel_codes: tuple[str, ...] = ()
    delta: bool = False
    start: str = "checkpoint"
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        where = f"stream {self.name!r}"
        if not _STREAM_NAME.match(self.name):
            raise ConfigurationError(
                f"{where}: a stream name is 1-120 letters, digits or _.:/@#- starting with a "
                "letter or digit"
            )
        for label in ("app_key_env", "client_secret_env", "password_env"):
            value = getattr(self, label)
            if value is not None and not _ENV_NAME.match(value):
                raise ConfigurationError(
                    f"{where}: {label} must be the NAME of an environment variable (such as "
                    "OHIP_CLIENT_SECRET), never the secret itself"
                )
        if (self.enterprise_id is None) == (self.username is None):
            raise ConfigurationError(
                f"{where}: give enterprise_id (client credentials) or username + password_env "
                "(password grant), exactly one of them"
            )
        if self.username is not None and self.password_env is None:
            raise ConfigurationError(f"{where}: username needs password_env (a variable name)")
        if self.start not in ("checkpoint", "highest") and not _OFFSET.match(self.start):
            raise ConfigurationError(
                f"{where}: start must be 'checkpoint', 'highest' or an offset (digits), got "
                f"{self.start!r}"
            )

    def to_json(self) -> str:
        """The specification as JSON (what the streams table stores)."""
        values = asdict(self)
        values["hotel_codes"] = list(self.hotel_codes)
        return json.dumps(values, sort_keys=True, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str) -> StreamSpec:
        """The specification stored by :meth:`to_json`."""
        values = json.loads(text)
        values["hotel_codes"] = tuple(values.get("hotel_codes") or ())
        return cls(**values)


@dataclass(frozen=True)
class Lease:
    """A stream's lease as the database has it. ``remaining`` is the seconds left until expiry
    on the DATABASE's clock when it was read (``None``: not owned)."""

    stream: str
    owner: str | None
    epoch: int
    remaining: float | None
    acquired_at: float | None = None

    @property
    def held(self) -> bool:
        """Whether an owner holds it now (an owner whose lease expired holds nothing)."""
        return self.owner is not None and self.remaining is not None and self.remaining > 0


@dataclass(frozen=True)
class Worker:
    """A worker that heartbeats: its id, where it runs, and how long its heartbeat has left."""

    worker_id: str
    host: str
    pid: int
    remaining: float


@dataclass(frozen=True)
class SyncResult:
    """What ``fleet sync`` changed."""

    added: tuple[str, ...]
    updated: tuple[str, ...]
    removed: tuple[str, ...]
    unchanged: tuple[str, ...]
