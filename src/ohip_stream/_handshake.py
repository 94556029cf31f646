"""What :mod:`ohip_stream._transport` does around the WebSocket: checks, the way there, endings.

Before: the WebSocket URL and the upgrade request's headers (protocol §1: all headers together
under 8 KB); a bad one raises ``ValueError`` with a reason that names what is wrong and quotes
neither the URL's query (the key hash) nor a header value. Then the way to the server: TCP, the
proxy's tunnel, TLS (:func:`connect_transport`). After: what ended an opening attempt, as a
:class:`~ohip_stream._policy.Failure` for the policy (HTTP status and ``Retry-After``,
subprotocol, TLS verification, DNS, refusal, timeout, reset), and what ended an open connection
(a close frame, 1009, a framing error, TCP lost). Server text that enters a reason (an HTTP
body, a reason phrase, a close reason) is redacted first.
"""

from __future__ import annotations

import asyncio
import math
import re
import socket
import ssl
import sys
from collections.abc import Mapping

from websockets.client import ClientProtocol
from websockets.exceptions import (
    InvalidHandshake,
    InvalidHeader,
    InvalidMessage,
    InvalidStatus,
    InvalidURI,
    NegotiationError,
    PayloadTooBig,
)
from websockets.http11 import Request
from websockets.uri import WebSocketURI, parse_uri

from ohip_stream._logging import redact
from ohip_stream._policy import Failure, FailureKind
from ohip_stream._proxy import ProxyAddress, open_tunnel

__all__ = [
    "MAX_HEADER_BYTES",
    "MAX_RETRY_AFTER",
    "NAME_NOT_FOUND",
    "REFUSED",
    "RESET",
    "TIMED_OUT",
    "TLS_HANDSHAKE",
    "Stage",
    "authority",
    "check_tunnel",
    "connect_transport",
    "end_failure",
    "error_text",
    "forget_tracebacks",
    "handshake_failure",
    "network_failure",
    "parse_url",
    "upgrade_request",
]

# The first words of a NETWORK failure's reason, so that a caller can tell the causes apart
# (for example, a "first contact" rule that treats DNS and refusals differently from timeouts).
NAME_NOT_FOUND = "name not found"
REFUSED = "connection refused"
TIMED_OUT = "timed out"
TLS_HANDSHAKE = "TLS handshake failed"
RESET = "connection lost"

#: Protocol §1: all HTTP headers of the upgrade request together stay under 8 KB.
MAX_HEADER_BYTES = 8192
#: A 429's Retry-After above this many seconds is taken as this many.
MAX_RETRY_AFTER = 3600.0
#: Longest excerpt of an HTTP body quoted in a reason.
_BODY_EXCERPT = 200
#: RFC 9110 §5.1: a field name is a token.
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")


def parse_url(url: str) -> WebSocketURI:
    """Parse a ``ws://`` or ``wss://`` URL; ``ValueError`` if it is not one."""
    try:
        return parse_uri(url)
    except InvalidURI as exc:
        # str(exc) quotes the URL, whose query holds the key hash: the reason only.
        raise ValueError(f"invalid WebSocket URL: {redact(exc.msg)}") from None


def check_tunnel(tunnel: ProxyAddress | None, uri: WebSocketURI) -> None:
    """``ValueError`` for TLS inside a TLS tunnel on Python 3.10 (its start_tls cannot)."""
    if tunnel is not None and tunnel.secure and uri.secure and sys.version_info < (3, 11):
        raise ValueError(
            "a wss:// connection through an https:// proxy needs Python 3.11 or later: use an "
            "http:// proxy (the WebSocket is encrypted inside the tunnel all the same)"
        )


def upgrade_request(protocol: ClientProtocol, headers: Mapping[str, str]) -> Request:
    """The upgrade request with ``headers`` added (each replaces a header of that name).

    ``ValueError`` for a name that is not an HTTP token, a value with a line break or NUL (it
    would inject headers), or headers that together reach 8 KB (protocol §1).
    """
    request = protocol.connect()
    for name, value in headers.items():
        if not _TOKEN.match(name):
            raise ValueError(f"the header name {name!r} is not a valid HTTP header name")
        if any(char in value for char in "\r\n\0"):
            raise ValueError(f"the value of the header {name!r} contains a line break or NUL")
        if name in request.headers:
            del request.headers[name]
        request.headers[name] = value
    size = sum(len(name) + len(value) + 4 for name, value in request.headers.raw_items())
    if size >= MAX_HEADER_BYTES:
        raise ValueError(
            f"the upgrade request's headers take {size} bytes; the gateway accepts less than "
            f"{MAX_HEADER_BYTES} (protocol §1): send shorter headers"
        )
    return request


class Stage:
    """What open_websocket is doing: for the reason of a timeout or an error."""

    __slots__ = ("now", "tls")

    def __init__(self, now: str) -> None:
        self.now = now
        #: Whether the TLS handshake is under way (a reset then is a failed TLS handshake).
        self.tls = False


async def connect_transport(
    connection: asyncio.Protocol,
    uri: WebSocketURI,
    context: ssl.SSLContext | None,
    tunnel: ProxyAddress | None,
    stage: Stage,
    opened: list[asyncio.Transport],
) -> None:
    """Open TCP to the server (through the proxy's tunnel if there is one), then TLS for wss.

    ``connection`` receives ``connection_made`` with the transport it will speak over. Every
    transport made is appended to ``opened`` at once, so that the caller can close it on any
    error, timeout or cancellation; ``stage`` says what is under way.
    """
    loop = asyncio.get_running_loop()
    if tunnel is None:
        if context is None:
            transport, _ = await loop.create_connection(lambda: connection, uri.host, uri.port)
            opened.append(transport)
            return
        # TCP first, TLS apart (below): a failure then says which of the two failed.
        raw, _ = await loop.create_connection(asyncio.Protocol, uri.host, uri.port)
        opened.append(raw)
    else:
        stage.now = f"opening a tunnel through the proxy {authority(tunnel.host, tunnel.port)}"
        raw = await open_tunnel(
            tunnel,
            uri.host,
            uri.port,
            proxy_ssl=(context or ssl.create_default_context()) if tunnel.secure else None,
            opened=opened,
        )
        if context is None:
            raw.set_protocol(connection)
            connection.connection_made(raw)
            return
    stage.now = f"TLS handshake with {authority(uri.host, uri.port)}"
    stage.tls = True
    secure = await loop.start_tls(raw, connection, context, server_hostname=uri.host)
    if secure is None:  # pragma: no cover - only for a transport that cannot start TLS
        raise ssl.SSLError("the transport cannot start TLS")
    opened.append(secure)
    stage.tls = False
    connection.connection_made(secure)


def handshake_failure(exc: Exception) -> Failure:
    """What websockets' ``handshake_exc`` means for the policy."""
    if isinstance(exc, InvalidStatus):
        response = exc.response
        status = response.status_code
        phrase = redact(response.reason_phrase)
        if 300 <= status < 400:
            # Issue 19 item 1: the token and the raw key must never reach another host, so no
            # redirect is followed, and the Location is not quoted.
            reason = f"{phrase} - redirect not followed: point gateway_url at the gateway itself"
            return Failure(FailureKind.HTTP, code=status, reason=reason)
        return Failure(
            FailureKind.HTTP,
            code=status,
            reason=_http_reason(phrase, bytes(response.body)),
            retry_after=_retry_after(response.headers.get_all("Retry-After")),
        )
    if isinstance(exc, NegotiationError) and "subprotocol" in str(exc).lower():
        return Failure(FailureKind.SUBPROTOCOL, reason=redact(str(exc)))
    if isinstance(exc, InvalidHeader) and exc.name.lower() == "sec-websocket-protocol":
        return Failure(FailureKind.SUBPROTOCOL, reason=redact(str(exc)))
    if isinstance(exc, InvalidMessage) and isinstance(exc.__cause__, EOFError):
        return Failure(
            FailureKind.NETWORK,
            reason=f"{RESET}: the server closed the connection during the WebSocket handshake",
        )
    if isinstance(exc, InvalidHandshake):
        return Failure(
            FailureKind.NETWORK,
            reason=f"invalid answer to the WebSocket upgrade: {redact(error_text(exc))}",
        )
    return Failure(FailureKind.NETWORK, reason=redact(error_text(exc)))  # pragma: no cover


def _http_reason(phrase: str, body: bytes) -> str:
    text = body[: _BODY_EXCERPT * 4].decode("utf-8", errors="replace")
    text = redact(" ".join(text.split()))[:_BODY_EXCERPT]
    return f"{phrase} - {text}" if text else phrase


def _retry_after(values: list[str]) -> float | None:
    # RFC 9110 §10.2.3: delta-seconds or an HTTP date. A date would need the wall clock and is
    # ignored (the policy then waits its own window, which is what Oracle asks for anyway).
    if not values:
        return None
    try:
        seconds = float(values[0].strip())
    except ValueError:
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def end_failure(protocol: ClientProtocol, *, aborted: bool, lost: Exception | None) -> Failure:
    """What ended an open connection, once TCP is closed (``lost``: connection_lost's error)."""
    parser_exc = protocol.parser_exc
    if isinstance(parser_exc, PayloadTooBig):
        # We failed the connection with 1009 (RFC 6455 §7.4.1): a message above max_size.
        return Failure(FailureKind.CLOSE, code=1009, reason=str(parser_exc))
    if parser_exc is not None and not isinstance(parser_exc, EOFError):
        # A framing error (RFC 6455 §5: bad opcode, masking, UTF-8 in a close reason...).
        return Failure(FailureKind.MALFORMED, reason=redact(error_text(parser_exc)))
    if protocol.close_rcvd is not None and not aborted:
        received = protocol.close_rcvd
        return Failure(FailureKind.CLOSE, code=received.code, reason=redact(received.reason))
    if aborted:
        reason = "aborted by the client"
    elif lost is not None:
        reason = f"{RESET} without a close frame: {error_text(lost)}"
    else:
        reason = f"{RESET} without a close frame"
    return Failure(FailureKind.CLOSE, code=1006, reason=reason)


def forget_tracebacks(*errors: BaseException | None) -> None:
    """Drop the tracebacks of ``errors`` and of the errors they chain to.

    The parser's errors are raised under data_received or connection_lost: their tracebacks
    hold those frames, which hold the connection, which holds the protocol that holds the
    errors. Once their reasons are taken, the tracebacks only make a reference cycle.
    """
    for error in errors:
        seen: set[int] = set()
        current = error
        while current is not None and id(current) not in seen:
            seen.add(id(current))
            current.__traceback__ = None
            current = current.__cause__ or current.__context__


def network_failure(exc: OSError, stage: Stage) -> Failure:
    """An OS or TLS error raised while ``stage`` was under way."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return Failure(FailureKind.TLS, reason=str(exc))
    if isinstance(exc, ssl.SSLError) or (stage.tls and isinstance(exc, ConnectionError)):
        return Failure(
            FailureKind.NETWORK, reason=f"{TLS_HANDSHAKE}: {stage.now}: {error_text(exc)}"
        )
    return _os_failure(exc, stage.now)


def _os_failure(exc: OSError, stage: str) -> Failure:
    if isinstance(exc, socket.gaierror):
        return Failure(FailureKind.NETWORK, reason=f"{NAME_NOT_FOUND}: {stage}: {error_text(exc)}")
    if isinstance(exc, ConnectionRefusedError):
        return Failure(FailureKind.NETWORK, reason=f"{REFUSED}: {stage}: {error_text(exc)}")
    if isinstance(exc, TimeoutError):
        return Failure(FailureKind.NETWORK, reason=f"{TIMED_OUT}: {stage}: {error_text(exc)}")
    if isinstance(exc, ConnectionError):
        return Failure(FailureKind.NETWORK, reason=f"{RESET}: {stage}: {error_text(exc)}")
    return Failure(FailureKind.NETWORK, reason=f"{stage}: {error_text(exc)}")


def error_text(exc: BaseException) -> str:
    """``Type: text`` of an exception (an OSError's errno text rather than its full str)."""
    text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def authority(host: str, port: int) -> str:
    """``host:port``, an IPv6 address in brackets."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
