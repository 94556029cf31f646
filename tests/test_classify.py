"""The classification of the websockets connection layer's errors into policy failures."""

from __future__ import annotations

import asyncio
import random
import ssl

import pytest
from websockets.datastructures import Headers
from websockets.exceptions import (
    ConnectionClosedError,
    ConnectionClosedOK,
    InvalidHandshake,
    InvalidHeader,
    InvalidMessage,
    InvalidProxy,
    InvalidStatus,
    InvalidUpgrade,
    InvalidURI,
    NegotiationError,
    PayloadTooBig,
)
from websockets.exceptions import ProtocolError as WsProtocolError
from websockets.frames import Close
from websockets.http11 import Response

from ohip_stream import (
    ConfigurationError,
    MessageTooLargeError,
    ProtocolError,
    Timings,
    TransportError,
)
from ohip_stream._classify import classify_exception
from ohip_stream._policy import ActionKind, Failure, FailureKind, PolicyState, decide

T = Timings()


def first(**overrides: int) -> PolicyState:
    return PolicyState(attempt=1, **overrides)


def rng() -> random.Random:
    return random.Random(0)


def invalid_status(
    status: int, headers: dict[str, str] | None = None, body: bytes = b""
) -> Exception:
    return InvalidStatus(Response(status, "Reason", Headers(headers or {}), body))


def test_classify_http_429_with_retry_after() -> None:
    exc = InvalidStatus(Response(429, "Too Many Requests", Headers({"Retry-After": "120"})))
    failure = classify_exception(exc)
    assert failure == Failure(FailureKind.HTTP, 429, "Too Many Requests", 120.0)


@pytest.mark.parametrize("value", ["Wed, 21 Oct 2015 07:28:00 GMT", "-5", "nan", "inf", ""])
def test_classify_retry_after_that_is_not_seconds(value: str) -> None:
    failure = classify_exception(invalid_status(429, {"Retry-After": value}))
    assert failure.retry_after is None


def test_classify_http_400_with_body() -> None:
    failure = classify_exception(invalid_status(400, body=b"Incorrect   key\nor URL"))
    assert (failure.kind, failure.code) == (FailureKind.HTTP, 400)
    assert failure.reason == "Reason - Incorrect key or URL"
    assert failure.retry_after is None


def test_classify_http_body_is_cut_and_decoded_leniently() -> None:
    failure = classify_exception(invalid_status(500, body=b"\xff" + b"a" * 5000))
    assert len(failure.reason) <= len("Reason - ") + 200
    assert "\ufffd" in failure.reason


def test_classify_close_received() -> None:
    failure = classify_exception(ConnectionClosedError(Close(4409, "x"), None))
    assert failure == Failure(FailureKind.CLOSE, 4409, "x")
    ok = ConnectionClosedOK(Close(1000, ""), Close(1000, ""), True)
    assert classify_exception(ok) == Failure(FailureKind.CLOSE, 1000, "")


def test_classify_close_dropped_is_1006() -> None:
    assert classify_exception(ConnectionClosedError(None, None)) == Failure(FailureKind.CLOSE, 1006)
    sent_only = ConnectionClosedError(None, Close(1000, "drained"))
    assert classify_exception(sent_only).code == 1006


def test_classify_close_we_failed_for_size_is_1009() -> None:
    exc = ConnectionClosedError(None, Close(1009, "frame exceeds limit"))
    assert classify_exception(exc) == Failure(FailureKind.CLOSE, 1009, "frame exceeds limit")


def test_classify_too_large() -> None:
    assert classify_exception(PayloadTooBig(2_000_000, 1_000_000)).code == 1009
    assert classify_exception(MessageTooLargeError("big", code=1009)) == Failure(
        FailureKind.CLOSE, 1009, "big"
    )


@pytest.mark.parametrize(
    "exc",
    [
        NegotiationError("unsupported subprotocol: graphql-ws"),
        NegotiationError("no subprotocols supported"),
        InvalidHeader("Sec-WebSocket-Protocol", "multiple values: a, b"),
        InvalidHandshake("server did not confirm the graphql-transport-ws subprotocol"),
    ],
)
def test_classify_subprotocol(exc: Exception) -> None:
    assert classify_exception(exc).kind is FailureKind.SUBPROTOCOL


@pytest.mark.parametrize(
    "exc",
    [
        InvalidHeader("Sec-WebSocket-Accept"),
        InvalidUpgrade("Upgrade", "h2c"),
        InvalidMessage("did not receive a valid HTTP response"),
        NegotiationError("unsupported extension"),
    ],
)
def test_classify_other_handshake_errors_are_network(exc: Exception) -> None:
    assert classify_exception(exc).kind is FailureKind.NETWORK


def test_classify_tls_direct_and_wrapped() -> None:
    cert = ssl.SSLCertVerificationError(1, "certificate verify failed: self-signed certificate")
    assert classify_exception(cert).kind is FailureKind.TLS
    wrapped = TransportError("cannot connect")
    wrapped.__cause__ = cert  # raise ... from cert
    failure = classify_exception(wrapped)
    assert failure.kind is FailureKind.TLS
    assert "self-signed" in failure.reason
    implicit = OSError("connect failed")
    implicit.__context__ = cert  # raised while handling cert
    assert classify_exception(implicit).kind is FailureKind.TLS


def test_classify_tls_chain_cycle_terminates() -> None:
    a = OSError("a")
    b = OSError("b")
    a.__cause__ = b
    b.__cause__ = a
    assert classify_exception(a).kind is FailureKind.NETWORK


def test_classify_other_ssl_errors_are_network() -> None:
    assert classify_exception(ssl.SSLError(1, "WRONG_VERSION_NUMBER")).kind is FailureKind.NETWORK


def test_classify_invalid_uri_is_config_without_the_uri() -> None:
    uri = "wss://gw.example.com/subscriptions?key=4d156d7bc9c38c000aa1e5b06e46e1f4"
    failure = classify_exception(InvalidURI(uri, "scheme isn't ws or wss"))
    assert failure.kind is FailureKind.CONFIG
    assert "4d156d7b" not in failure.reason
    assert "scheme" in failure.reason


def test_classify_config() -> None:
    assert classify_exception(InvalidProxy("socks9://x", "bad scheme")).kind is FailureKind.CONFIG
    assert classify_exception(ConfigurationError("no")).kind is FailureKind.CONFIG


def test_classify_malformed() -> None:
    assert classify_exception(ProtocolError("not JSON")) == Failure(
        FailureKind.MALFORMED, reason="not JSON"
    )
    assert classify_exception(WsProtocolError("bad frame")).kind is FailureKind.MALFORMED


@pytest.mark.parametrize(
    "exc",
    [
        ConnectionRefusedError(111, "Connection refused"),
        ConnectionResetError(),
        OSError(-2, "Name or service not known"),
        asyncio.TimeoutError(),
        TimeoutError(),
        EOFError("stream ended"),
        TransportError("dropped"),
        RuntimeError("?"),
    ],
)
def test_classify_network_and_unknown(exc: Exception) -> None:
    failure = classify_exception(exc)
    assert failure.kind is FailureKind.NETWORK
    assert type(exc).__name__ in failure.reason


@pytest.mark.parametrize("exc", [asyncio.CancelledError(), KeyboardInterrupt()])
def test_classify_never_swallows_cancellation(exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        classify_exception(exc)


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (invalid_status(400), ActionKind.FATAL),
        (invalid_status(429, {"Retry-After": "30"}), ActionKind.BACKOFF),
        (ConnectionClosedError(Close(4409, "x"), None), ActionKind.LOCKOUT),
        (ConnectionClosedError(None, None), ActionKind.BACKOFF),
        (ConnectionClosedOK(Close(1000, ""), Close(1000, ""), True), ActionKind.RECONNECT),
        (ConnectionClosedError(Close(4401, "Invalid credentials"), None), ActionKind.REFRESH_TOKEN),
    ],
)
def test_classify_then_decide(exc: Exception, kind: ActionKind) -> None:
    action = decide(classify_exception(exc), first(auth_failures=1), T, rng())
    assert action.kind is kind
