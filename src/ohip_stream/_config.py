"""The validated configuration of one stream, built once in ``EventStream(...)``.

Every argument is checked here, before any I/O, and a bad one raises
:class:`~ohip_stream.ConfigurationError` naming the option and how to fix it. The result is
frozen: nothing later re-reads or re-checks an argument.
"""

from __future__ import annotations

import ssl as ssl_module
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast
from urllib.parse import unquote, urlsplit

from ohip_stream._budget import key_id
from ohip_stream._checkpoints import CheckpointStore
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._guard import StreamGuard
from ohip_stream._logging import register_secret
from ohip_stream._net import (
    GatewayAddress,
    parse_gateway,
    refuse_plain_http,
    stream_id_for,
    subscription_url,
    tls_context,
)
from ohip_stream._protocol import hash_app_key
from ohip_stream._proxy import parse_proxy
from ohip_stream._query import SubscriptionDocument, build_subscription
from ohip_stream._timings import Timings

__all__ = [
    "DEFAULT_MAX_BUFFER_BYTES",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "InvalidHandler",
    "StreamConfig",
    "UpgradeGate",
]

InvalidHandler = Callable[[str, Exception], Awaitable[None] | None]
"""A dead-letter callback: receives the raw frame and the validation error (sync or async)."""

UpgradeGate = Callable[[], Awaitable[object]]
"""Awaited before each WebSocket upgrade of a stream; the upgrade waits until it returns. If it
returns a function, that function is called (without arguments) when the upgrade request
leaves: the moment the gateway's count of the upgrade starts."""

DEFAULT_MAX_MESSAGE_SIZE = 16 * 1024 * 1024
#: The buffer between the socket and the caller holds at most this many bytes of frames (and
#: at most ``queue_size`` events): the socket is paused above either.
DEFAULT_MAX_BUFFER_BYTES = 64 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class StreamConfig:
    """One stream's settings, checked (see ``EventStream`` for each one's meaning)."""

    gateway: GatewayAddress
    app_key: str
    chain_code: str
    auth: Any
    checkpoints: CheckpointStore | None
    offset: str | None
    start_at_highest: bool
    delta: bool
    hotel_codes: Sequence[str] | str | None
    timings: Timings
    ssl: ssl_module.SSLContext | None
    proxy: str | None
    max_message_size: int | None
    max_buffer_bytes: int
    queue_size: int
    on_invalid: Literal["raise", "skip"] | InvalidHandler
    on_offset_reset: Literal["deliver", "raise"]
    dedup_window: int
    commit_every: int
    commit_interval: float
    guard_scope: Literal["stream", "app_key"]
    lock_dir: str | Path | None
    standby: bool
    first_contact_tries: int
    upgrade_gate: UpgradeGate | None
    stream_id: str
    key_digest: str
    url: str

    @property
    def filtered(self) -> bool:
        """Whether a hotel filter skips offsets (gap detection is then off)."""
        return bool(self.hotel_codes)

    def document(self, offset: str | None, highest: bool) -> SubscriptionDocument:
        """The subscription for a start at ``offset`` (or the newest event, or the server's
        position when neither)."""
        return build_subscription(
            self.chain_code,
            offset=offset,
            offset_type="highest" if highest else None,
            delta=self.delta,
            hotel_codes=self.hotel_codes,
        )

    @property
    def token_renewable(self) -> bool:
        """Whether the token provider can give a new token (a static token cannot)."""
        return bool(getattr(self.auth, "renewable", True))


def build_config(
    *,
    gateway_url: object,
    app_key: object,
    chain_code: object,
    auth: object,
    checkpoints: CheckpointStore | None,
    offset: object,
    start_at_highest: bool,
    delta: bool,
    hotel_codes: Sequence[str] | str | None,
    timings: object,
    ssl: ssl_module.SSLContext | str | Path | None,
    proxy: object,
    max_message_size: object,
    max_buffer_bytes: object,
    queue_size: object,
    on_invalid: object,
    on_offset_reset: object,
    dedup_window: object,
    commit_every: object,
    commit_interval: object,
    guard_scope: object,
    lock_dir: str | Path | None,
    standby: bool,
    allow_insecure: bool,
    first_contact_tries: object,
    upgrade_gate: object = None,
) -> StreamConfig:
    """Check every option and build the frozen configuration."""
    gateway = parse_gateway(gateway_url)
    key = _text("app_key", app_key, "the application key from the developer portal")
    chain = _text("chain_code", chain_code, "the OPERA chain code")
    register_secret(key, hash_app_key(key))
    if auth is None or not callable(getattr(auth, "get_token", None)):
        raise ConfigurationError(
            "auth must be a token provider such as OAuthClientCredentials or StaticToken"
        )
    if offset is not None and start_at_highest:
        raise ConfigurationError(
            "offset and start_at_highest are mutually exclusive: replay from an offset, or start "
            "at the newest event"
        )
    if not isinstance(timings, Timings):
        raise ConfigurationError("timings must be a Timings instance, e.g. Timings(lockout=180)")
    refuse_plain_http(gateway, allow_insecure=allow_insecure, what="tokens and events")
    if not (on_invalid in ("raise", "skip") or callable(on_invalid)):
        raise ConfigurationError("on_invalid must be 'raise', 'skip' or a callback(raw, error)")
    if upgrade_gate is not None and not callable(upgrade_gate):
        raise ConfigurationError(
            "upgrade_gate must be an async function called before each WebSocket upgrade "
            f"(or None), got {type(upgrade_gate).__name__}"
        )
    queue = _whole("queue_size", queue_size, minimum=1)
    config = StreamConfig(
        gateway=gateway,
        app_key=key,
        chain_code=chain,
        auth=auth,
        checkpoints=checkpoints,
        offset=_offset(offset),
        start_at_highest=bool(start_at_highest),
        delta=bool(delta),
        hotel_codes=hotel_codes,
        timings=timings,
        ssl=tls_context(ssl, name="ssl") if gateway.secure else None,
        proxy=_proxy(proxy),
        max_message_size=_message_size(max_message_size),
        max_buffer_bytes=_whole("max_buffer_bytes", max_buffer_bytes, minimum=64 * 1024),
        queue_size=queue,
        on_invalid=on_invalid,
        on_offset_reset=_choice("on_offset_reset", on_offset_reset, ("deliver", "raise")),
        dedup_window=_window(dedup_window, queue),
        commit_every=_whole("commit_every", commit_every, minimum=1),
        commit_interval=_seconds("commit_interval", commit_interval),
        guard_scope=_choice("guard_scope", guard_scope, ("stream", "app_key")),
        lock_dir=lock_dir,
        standby=bool(standby),
        first_contact_tries=_whole("first_contact_tries", first_contact_tries, minimum=1),
        upgrade_gate=cast("UpgradeGate | None", upgrade_gate),
        stream_id=stream_id_for(gateway.url, chain, key),
        key_digest=key_id(key),
        url=subscription_url(gateway.url, key),
    )
    # Every input rule of the subscription is checked here, before any I/O.
    config.document(config.offset, config.start_at_highest)
    return config


def _choice(name: str, value: object, allowed: tuple[str, ...]) -> Any:
    if value not in allowed:
        choices = " or ".join(repr(option) for option in allowed)
        raise ConfigurationError(f"{name} must be {choices}, got {value!r}")
    return value


def _window(dedup_window: object, queue: int) -> int:
    # At least the buffer's worth of ids, so that a replay of everything buffered is caught.
    if dedup_window is None:
        return max(queue * 2, 10_000)
    window = _whole("dedup_window", dedup_window, minimum=1)
    if window < queue:
        raise ConfigurationError(f"dedup_window ({window}) must be at least queue_size ({queue})")
    return window


def _text(name: str, value: object, what: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ConfigurationError(f"{name} is required: {what}")
    return value.strip()


def _whole(name: str, value: object, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigurationError(
            f"{name} must be a whole number of at least {minimum}, got {value!r}"
        )
    return value


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ConfigurationError(f"{name} must be a positive number of seconds, got {value!r}")
    return float(value)


def _offset(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError(
            f"offset must be a string of digits such as '193', got {type(value).__name__}"
        )
    return value


def _message_size(value: object) -> int | None:
    if value is None:
        return None
    return _whole("max_message_size", value, minimum=1024)


def _proxy(value: object) -> str | None:
    """A proxy for the WebSocket: an HTTP CONNECT proxy, checked by the transport's parser (its
    password is registered as a secret first, so no message shows it)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise ConfigurationError("proxy must be a URL string such as http://proxy.example:3128")
    try:
        raw = urlsplit(value.strip()).password
    except ValueError:
        raw = None
    register_secret(raw and unquote(raw), raw)
    try:
        parse_proxy(value.strip())
    except ValueError as exc:
        raise ConfigurationError(f"proxy: {exc}") from None
    return value.strip()


def take_guard(config: StreamConfig) -> StreamGuard:
    """The one-consumer guard on this host, before any network I/O (§7)."""
    guard = StreamGuard(
        config.stream_id,
        key_id=config.key_digest,
        scope=config.guard_scope,
        lock_dir=config.lock_dir,
        description=f"stream {config.stream_id} (chain {config.chain_code})",
        upgrade_window=config.timings.upgrade_budget[1],
    )
    guard.acquire()
    return guard
