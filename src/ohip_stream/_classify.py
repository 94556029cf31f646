"""What the websockets connection layer raised, as a policy :class:`~ohip_stream._policy.Failure`.

The one module beside the connection layer that knows websockets', ssl's and asyncio's errors,
so that the policy stays pure. It goes with that connection layer: the new transport builds its
``Failure`` where the error happens.
"""

from __future__ import annotations

import asyncio
import math
import ssl

from websockets import exceptions as ws_exc

from ohip_stream._exceptions import ConfigurationError, MessageTooLargeError, ProtocolError
from ohip_stream._policy import Failure, FailureKind

__all__ = ["classify_exception"]

#: Longest HTTP body excerpt kept in a failure's reason.
_REASON_LIMIT = 200


def classify_exception(exc: BaseException) -> Failure:
    """Map what the connection layer raised onto a :class:`Failure`.

    websockets ``InvalidStatus`` -> HTTP (status, ``Retry-After``); ``ConnectionClosed`` ->
    CLOSE (the received code, 1009 when we failed the connection for a frame above the limit,
    else 1006); a refused subprotocol -> SUBPROTOCOL; an untrusted certificate anywhere in the
    ``__cause__``/``__context__`` chain -> TLS; ``InvalidURI``/``InvalidProxy``/
    :class:`ConfigurationError` -> CONFIG; ohip_stream :class:`ProtocolError` (and websockets'
    own) -> MALFORMED; :class:`MessageTooLargeError`/``PayloadTooBig`` -> CLOSE 1009;
    ``OSError``, timeouts and anything unknown -> NETWORK.

    A ``BaseException`` that is not an ``Exception`` (``CancelledError``, ``KeyboardInterrupt``)
    is no connection failure: it is raised again, never turned into a retry.
    """
    if not isinstance(exc, Exception):
        raise exc
    cert_error = _tls_verification_error(exc)
    if cert_error is not None:
        return Failure(FailureKind.TLS, reason=str(cert_error))
    if isinstance(exc, ws_exc.InvalidStatus):
        response = exc.response
        return Failure(
            FailureKind.HTTP,
            code=response.status_code,
            reason=_http_reason(response.reason_phrase, bytes(response.body)),
            retry_after=_retry_after(response.headers.get_all("Retry-After")),
        )
    if isinstance(exc, ws_exc.ConnectionClosed):
        return _closed(exc)
    if _is_subprotocol_error(exc):
        return Failure(FailureKind.SUBPROTOCOL, reason=str(exc))
    if isinstance(exc, ws_exc.InvalidURI):
        # str(exc) would quote the URI, whose query holds the key hash: the reason only.
        return Failure(FailureKind.CONFIG, reason=f"invalid WebSocket URI: {exc.msg}")
    if isinstance(exc, (ws_exc.InvalidProxy, ConfigurationError)):
        return Failure(FailureKind.CONFIG, reason=str(exc))
    if isinstance(exc, (MessageTooLargeError, ws_exc.PayloadTooBig)):
        return Failure(FailureKind.CLOSE, code=1009, reason=str(exc))
    if isinstance(exc, (ProtocolError, ws_exc.ProtocolError)):
        return Failure(FailureKind.MALFORMED, reason=str(exc))
    if isinstance(exc, (OSError, asyncio.TimeoutError)):
        return Failure(FailureKind.NETWORK, reason=_error_text(exc))
    # Unknown: a handshake the server botched, an unexpected end of stream... retry with backoff.
    return Failure(FailureKind.NETWORK, reason=_error_text(exc))


def _closed(exc: ws_exc.ConnectionClosed) -> Failure:
    if exc.rcvd is not None:
        return Failure(FailureKind.CLOSE, code=exc.rcvd.code, reason=exc.rcvd.reason)
    if exc.sent is not None and exc.sent.code == 1009:
        # websockets failed the connection itself: a frame above max_message_size.
        return Failure(FailureKind.CLOSE, code=1009, reason=exc.sent.reason)
    return Failure(FailureKind.CLOSE, code=1006)


def _tls_verification_error(exc: BaseException) -> ssl.SSLCertVerificationError | None:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, ssl.SSLCertVerificationError):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def _is_subprotocol_error(exc: Exception) -> bool:
    if isinstance(exc, ws_exc.InvalidHeader):
        return exc.name.lower() == "sec-websocket-protocol"
    return isinstance(exc, ws_exc.InvalidHandshake) and "subprotocol" in str(exc).lower()


def _retry_after(values: list[str]) -> float | None:
    # Retry-After is delta-seconds or an HTTP date; a date would need the clock: ignored (the
    # policy then waits the budget window, 2 minutes, which is what Oracle asks for anyway).
    if not values:
        return None
    try:
        seconds = float(values[0].strip())
    except ValueError:
        return None
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _http_reason(phrase: str, body: bytes) -> str:
    text = body[: _REASON_LIMIT * 4].decode("utf-8", errors="replace").strip()
    text = " ".join(text.split())[:_REASON_LIMIT]
    return f"{phrase} - {text}" if text else phrase


def _error_text(exc: BaseException) -> str:
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
