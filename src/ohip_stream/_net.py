"""Gateway addresses: the one URL parser, loopback check, TLS-context helper and stream identity.

A stream is (gateway, chain code, application key) (the protocol page, "Ordering is strict
within one stream"); since release 25.3 the same chain code in two regions is a separate entity,
so the gateway is part of the identity. ``stream_id`` is a short non-reversible digest of the
three, safe to print and to use as a file name.

Host normalization: the host is lower-cased and a trailing dot dropped; the scheme's default
port is dropped; ``localhost`` is the same host as ``127.0.0.1`` (the name every system maps to
the loopback address). What cannot be normalized without asking DNS (two names of one gateway,
a CNAME) gives two stream ids: name one gateway URL per stream everywhere.
"""

from __future__ import annotations

import hashlib
import ipaddress
import os
import ssl
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlsplit

from ohip_stream._exceptions import ConfigurationError
from ohip_stream._logging import register_secret
from ohip_stream._protocol import hash_app_key

__all__ = [
    "GatewayAddress",
    "is_loopback",
    "legacy_stream_id",
    "parse_gateway",
    "refuse_plain_http",
    "stream_id_for",
    "subscription_url",
    "tls_context",
]

_DEFAULT_PORTS = {"https": 443, "wss": 443, "http": 80, "ws": 80}
_WS_SCHEMES = {"https": "wss", "http": "ws", "wss": "wss", "ws": "ws"}


@dataclass(frozen=True, slots=True)
class GatewayAddress:
    """A parsed gateway URL."""

    #: The URL as given, without surrounding space or a trailing slash.
    url: str
    #: ``https`` or ``http`` (``wss``/``ws`` are accepted and mapped).
    scheme: str
    #: The normalized host (see the module docstring), without the port.
    host: str
    port: int | None
    #: Path prefix of the gateway (kept before ``/subscriptions``), without a trailing slash.
    path: str
    #: ``host`` or ``host:port`` when the port is not the scheme's default: names the gateway
    #: in stream ids, reprs and messages.
    netloc: str

    @property
    def secure(self) -> bool:
        return self.scheme in ("https", "wss")

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    def websocket_url(self, key_hash: str) -> str:
        """``wss://<host>/subscriptions?key=<hash>`` (``ws`` for a plain-http gateway)."""
        parts = urlsplit(self.url)
        return (
            f"{_WS_SCHEMES[self.scheme]}://{parts.netloc}{self.path}/subscriptions?key={key_hash}"
        )


def parse_gateway(url: object, *, option: str = "gateway_url") -> GatewayAddress:
    """Parse and check a gateway URL; a :class:`ConfigurationError` names ``option``."""
    if not isinstance(url, str) or not url.strip():
        raise ConfigurationError(
            f"{option} is required: the environment's gateway URL, like https://<gateway host>"
        )
    text = url.strip()
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        raise ConfigurationError(
            f"{option} is not a valid URL (a bad port or brackets): pass the gateway's base "
            "URL, https://<host>[:<port>]"
        ) from None
    if parts.scheme not in _WS_SCHEMES or not parts.hostname:
        raise ConfigurationError(
            f"{option} must be the environment's gateway URL, like 'https://<gateway host>'; "
            f"got one with scheme {parts.scheme or 'none'!r} or without a host"
        )
    if parts.username or parts.password:
        register_secret(parts.password and unquote(parts.password), parts.password)
        raise ConfigurationError(
            f"{option} must not carry credentials: pass client_id= and client_secret= to auth"
        )
    if parts.query or parts.fragment:
        raise ConfigurationError(
            f"{option} must not have a query or fragment: pass the gateway's base URL"
        )
    scheme = {"wss": "https", "ws": "http"}.get(parts.scheme, parts.scheme)
    host = _normal_host(parts.hostname)
    shown_port = None if port in (None, _DEFAULT_PORTS[scheme]) else port
    netloc = host if shown_port is None else f"{host}:{shown_port}"
    return GatewayAddress(
        url=text.rstrip("/"),
        scheme=scheme,
        host=host,
        port=port,
        path=parts.path.rstrip("/"),
        netloc=netloc,
    )


def _normal_host(hostname: str) -> str:
    host = hostname.lower().rstrip(".")
    return "127.0.0.1" if host == "localhost" else host


def subscription_url(gateway_url: object, app_key: str) -> str:
    """``wss://<gateway host>/subscriptions?key=<hash>`` from the environment's gateway URL:
    ``https`` becomes ``wss`` and ``http`` becomes ``ws``, a path prefix is kept, and ``key`` (the
    lower-case SHA-256 of the application key) is the only query parameter."""
    return parse_gateway(gateway_url).websocket_url(hash_app_key(app_key))


def refuse_plain_http(gateway: GatewayAddress, *, allow_insecure: bool, what: str) -> None:
    """Refuse a plain-http gateway that is not on this machine (``what`` would cross the network
    unencrypted), unless ``allow_insecure``."""
    if gateway.secure or gateway.loopback or allow_insecure:
        return
    raise ConfigurationError(
        f"gateway_url uses plain http for {gateway.host}: {what} would cross the network "
        "unencrypted. Use https, or pass allow_insecure=True for a test gateway"
    )


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine (``localhost`` or a loopback address)."""
    if host.lower().rstrip(".") == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:16]


def stream_id_for(gateway_url: str, chain_code: str, app_key: str) -> str:
    """The stream's id: a digest of (normalized gateway host, chain code, application key)."""
    return _digest(parse_gateway(gateway_url).netloc, chain_code.strip().upper(), app_key.strip())


def legacy_stream_id(gateway_url: str, chain_code: str, app_key: str) -> str | None:
    """The id an earlier release gave this stream, when it differs (``localhost`` was not the
    same host as ``127.0.0.1`` then): checkpoints stored under it are found and moved."""
    parts = urlsplit(gateway_url.strip())
    try:
        port = parts.port
    except ValueError:
        return None
    host = (parts.hostname or "").lower()
    old = host if port in (None, _DEFAULT_PORTS.get(parts.scheme)) else f"{host}:{port}"
    new = stream_id_for(gateway_url, chain_code, app_key)
    legacy = _digest(old, chain_code.strip().upper(), app_key.strip())
    return legacy if legacy != new else None


def tls_context(
    option: ssl.SSLContext | str | os.PathLike[str] | None, *, name: str
) -> ssl.SSLContext:
    """An SSL context that verifies certificates: the system's trust store (``None``), an
    ``ssl.SSLContext`` as given, or one trusting the PEM CA file at a path. ``name`` is the
    option's name in the error message."""
    if option is None:
        return ssl.create_default_context()
    if isinstance(option, ssl.SSLContext):
        return option
    path = Path(option)
    try:
        exists = path.is_file()
    except OSError as exc:  # a name too long for the file system, and the like
        raise ConfigurationError(f"{name}: the CA file cannot be read: {exc.strerror}") from None
    if not exists:
        raise ConfigurationError(f"{name}: the CA file {path} does not exist; pass a PEM file path")
    try:
        return ssl.create_default_context(cafile=str(path))
    except (ssl.SSLError, OSError) as exc:
        raise ConfigurationError(
            f"{name}: cannot load the CA file {path} ({exc}); pass the PEM bundle that signed "
            "the gateway's certificate"
        ) from exc
