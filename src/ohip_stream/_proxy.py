"""The HTTP CONNECT tunnel through a forward proxy, for :mod:`ohip_stream._transport`.

The proxy URL is ``http://[user:pass@]host:port`` (or ``https://`` for a proxy spoken to over
TLS). The tunnel is opened with ``CONNECT host:port`` (RFC 9110 §9.3.6); any 2xx answer opens
it, anything else is a refusal. What comes back is the raw transport to the gateway, on which
the caller then starts TLS (``loop.start_tls``) or speaks WebSocket directly. The proxy's
credentials never appear in a reason: they travel only in the ``Proxy-Authorization`` header.
"""

from __future__ import annotations

import asyncio
import base64
import ssl as ssl_module
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from ohip_stream._logging import redact
from ohip_stream._policy import Failure, FailureKind

__all__ = ["ProxyAddress", "ProxyError", "open_tunnel", "parse_proxy"]

#: The proxy's answer to CONNECT (status line and headers) must fit in this many bytes.
_MAX_ANSWER = 8192
_DEFAULT_PORTS = {"http": 80, "https": 443}


class ProxyError(Exception):
    """What went wrong with the proxy, as a :class:`Failure` (raised by this module only)."""

    def __init__(self, failure: Failure) -> None:
        super().__init__(failure.reason)
        self.failure = failure


@dataclass(frozen=True, slots=True)
class ProxyAddress:
    """A parsed proxy URL. ``authorization`` is the ``Proxy-Authorization`` value, if any."""

    host: str
    port: int
    secure: bool
    authorization: str | None = field(default=None, repr=False)


def parse_proxy(proxy: str) -> ProxyAddress:
    """Parse ``http://[user:pass@]host:port``; raise ``ValueError`` if it is not.

    The reason names what is wrong and never quotes the URL (it may hold a password).
    """
    try:
        parts = urlsplit(proxy)
        port = parts.port
    except ValueError:
        raise _config("the proxy URL is not a valid URL") from None
    if parts.scheme not in _DEFAULT_PORTS:
        shown = parts.scheme if parts.scheme.isalnum() else "none"
        raise _config(f"the proxy URL's scheme must be http or https, not {shown!r}")
    if not parts.hostname:
        raise _config("the proxy URL has no host")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise _config("the proxy URL must not have a path, query or fragment")
    authorization = None
    if parts.username is not None or parts.password is not None:
        user_pass = f"{unquote(parts.username or '')}:{unquote(parts.password or '')}"
        token = base64.b64encode(user_pass.encode("utf-8")).decode("ascii")
        authorization = f"Basic {token}"
    return ProxyAddress(
        host=parts.hostname,
        port=port if port is not None else _DEFAULT_PORTS[parts.scheme],
        secure=parts.scheme == "https",
        authorization=authorization,
    )


def _config(reason: str) -> ValueError:
    return ValueError(f"{reason}; expected http://[user:pass@]host:port")


class _TunnelAnswer(asyncio.Protocol):
    """Collects the proxy's answer to CONNECT, up to the blank line that ends its headers."""

    def __init__(self, answer: asyncio.Future[tuple[bytes, bool]]) -> None:
        self._answer = answer
        self._buffer = bytearray()

    def data_received(self, data: bytes) -> None:
        if self._answer.done():
            return
        self._buffer += data
        end = self._buffer.find(b"\r\n\r\n")
        if end >= 0:
            # (head, whether more bytes followed it): nothing may follow a 2xx to CONNECT
            # before we speak; a refusal's body is not read (its status line decides).
            self._answer.set_result((bytes(self._buffer[:end]), end + 4 < len(self._buffer)))
        elif len(self._buffer) > _MAX_ANSWER:
            self._answer.set_exception(_refused("its answer to CONNECT is too long"))

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._answer.done():
            self._answer.set_exception(
                ProxyError(
                    Failure(
                        FailureKind.NETWORK,
                        reason="connection lost: the proxy closed the connection during CONNECT",
                    )
                )
            )


def _refused(what: str) -> ProxyError:
    return ProxyError(Failure(FailureKind.NETWORK, reason=f"proxy refused the tunnel: {what}"))


async def open_tunnel(
    proxy: ProxyAddress,
    host: str,
    port: int,
    *,
    proxy_ssl: ssl_module.SSLContext | None,
    opened: list[asyncio.Transport],
) -> asyncio.Transport:
    """Connect to ``proxy`` and ask it for a tunnel to ``host:port``; return the raw transport.

    Every transport made is appended to ``opened`` at once, so that the caller can close it on
    any error, timeout or cancellation. OS and TLS errors propagate as they are; a refusal or a
    garbled answer raises :class:`ProxyError` (NETWORK).
    """
    loop = asyncio.get_running_loop()
    answer: asyncio.Future[tuple[bytes, bool]] = loop.create_future()
    transport, _ = await loop.create_connection(
        lambda: _TunnelAnswer(answer),
        proxy.host,
        proxy.port,
        ssl=proxy_ssl if proxy.secure else None,
        server_hostname=proxy.host if proxy.secure else None,
    )
    opened.append(transport)
    authority = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    lines = [f"CONNECT {authority} HTTP/1.1", f"Host: {authority}"]
    if proxy.authorization is not None:
        lines.append(f"Proxy-Authorization: {proxy.authorization}")
    transport.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
    head, extra = await answer
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    version, _, rest = status_line.partition(" ")
    code, _, phrase = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise _refused("its answer to CONNECT is not HTTP")
    if not code.startswith("2"):
        raise _refused(f"HTTP {code} {redact(phrase.strip())}".strip())
    if extra:
        raise _refused("it sent data before the tunnel was used")
    return transport
