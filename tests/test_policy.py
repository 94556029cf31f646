"""The reconnect policy (protocol §5): every row of the table, jitter bounds, the gap rule."""

from __future__ import annotations

import asyncio
import random
import ssl

import pytest
from hypothesis import given
from hypothesis import strategies as st
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
    AuthenticationError,
    ConfigurationError,
    ConnectionRejectedError,
    ConsumerConflictError,
    ForbiddenError,
    MessageTooLargeError,
    ProtocolError,
    SubscriptionError,
    Timings,
    TransportError,
)
from ohip_stream._policy import (
    Action,
    ActionKind,
    Failure,
    FailureKind,
    PolicyState,
    UpgradeBudget,
    backoff_delay,
    classify_exception,
    decide,
)

T = Timings()


def rng(seed: int = 0) -> random.Random:
    return random.Random(seed)


def http(status: int | None, reason: str = "", retry_after: float | None = None) -> Failure:
    return Failure(FailureKind.HTTP, status, reason, retry_after)


def close(code: int | None, reason: str = "") -> Failure:
    return Failure(FailureKind.CLOSE, code, reason)


def first(**overrides: object) -> PolicyState:
    values: dict[str, object] = {"attempt": 1}
    values.update(overrides)
    return PolicyState(**values)  # type: ignore[arg-type]


def in_backoff_range(delay: float, attempt: int, timings: Timings = T) -> bool:
    base = min(timings.backoff_max, timings.backoff_min * 2.0 ** (attempt - 1))
    return max(base / 2, timings.backoff_min) <= delay <= base


# --- the table, row by row --------------------------------------------------------------------

FATAL_ROWS = [
    pytest.param(http(400, "Incorrect key or URL"), ConnectionRejectedError, "http-400", id="400"),
    pytest.param(http(403), ForbiddenError, "http-403", id="http-403"),
    pytest.param(http(404), ConnectionRejectedError, "http-404", id="http-404"),
    pytest.param(http(405), ConnectionRejectedError, "http-405", id="http-405"),
    pytest.param(close(4400, "Cannot query field X"), SubscriptionError, "4400", id="4400"),
    pytest.param(close(4403), ForbiddenError, "4403", id="4403"),
    pytest.param(Failure(FailureKind.TLS, reason="bad cert"), ConfigurationError, "tls", id="tls"),
    pytest.param(
        Failure(FailureKind.SUBPROTOCOL), ConnectionRejectedError, "subprotocol", id="subproto"
    ),
    pytest.param(
        Failure(FailureKind.CONFIG, reason="bad URI"), ConfigurationError, "config", id="config"
    ),
]


@pytest.mark.parametrize(("failure", "error_type", "cause"), FATAL_ROWS)
def test_fatal_rows(failure: Failure, error_type: type[Exception], cause: str) -> None:
    action = decide(failure, first(), T, rng())
    assert action.fatal
    assert action.kind is ActionKind.FATAL
    assert action.cause == cause
    assert action.delay == 0
    assert isinstance(action.error, error_type)
    assert action.error.retriable is False


BACKOFF_ROWS = [
    pytest.param(http(500), "http-500", id="http-500"),
    pytest.param(http(502), "http-502", id="http-502"),
    pytest.param(http(503), "http-503", id="http-503"),
    pytest.param(http(408), "http-408", id="http-408"),
    pytest.param(http(499), "http-499", id="http-499"),
    pytest.param(http(200), "http-200", id="http-200"),
    pytest.param(http(302), "http-302", id="http-302"),
    pytest.param(http(None), "http", id="http-none"),
    pytest.param(close(1001, "maintenance"), "1001", id="1001"),
    pytest.param(close(1011), "1011", id="1011"),
    pytest.param(close(1012), "1012", id="1012"),
    pytest.param(close(1013), "1013", id="1013"),
    pytest.param(close(1014), "1014", id="1014"),
    pytest.param(close(1002), "1002", id="1002"),
    pytest.param(close(1005), "1005", id="1005"),
    pytest.param(close(4504), "4504", id="4504"),
    pytest.param(close(4408), "4408", id="4408"),
    pytest.param(close(4429), "4429", id="4429"),
    pytest.param(close(4500), "4500", id="4500"),
    pytest.param(close(4999), "4999", id="unknown-4999"),
    pytest.param(close(1009), "1009", id="1009"),
    pytest.param(Failure(FailureKind.MALFORMED, reason="not JSON"), "malformed", id="malformed"),
    pytest.param(Failure(FailureKind.NETWORK, reason="refused"), "network", id="network"),
    pytest.param(Failure(FailureKind.LIVENESS), "liveness", id="liveness"),
]


@pytest.mark.parametrize(("failure", "cause"), BACKOFF_ROWS)
@pytest.mark.parametrize("attempt", [1, 2, 3, 7, 30])
def test_backoff_rows(failure: Failure, cause: str, attempt: int) -> None:
    action = decide(failure, PolicyState(attempt=attempt, same_offset_failures=1), T, rng(attempt))
    assert action.kind is ActionKind.BACKOFF
    assert not action.fatal
    assert action.error is None
    assert action.cause == cause
    assert in_backoff_range(action.delay, attempt)


def test_1006_waits_at_least_drop_wait() -> None:
    for attempt in range(1, 12):
        action = decide(close(1006), PolicyState(attempt=attempt), T, rng(attempt))
        assert action.kind is ActionKind.BACKOFF
        assert action.cause == "1006"
        assert T.drop_wait <= action.delay <= T.backoff_max
    # The first drop waits exactly drop_wait (the backoff alone would be at most 1 s).
    assert decide(close(1006), first(), T, rng()).delay == T.drop_wait


def test_no_close_code_counts_as_1006() -> None:
    action = decide(close(None), first(), T, rng())
    assert action.cause == "1006"
    assert action.delay == T.drop_wait


def test_http_429_waits_the_budget_window_or_retry_after() -> None:
    action = decide(http(429), first(), T, rng())
    assert (action.kind, action.delay, action.cause) == (ActionKind.BACKOFF, 120.0, "http-429")
    assert decide(http(429, retry_after=30), first(), T, rng()).delay == 120.0
    assert decide(http(429, retry_after=300), first(), T, rng()).delay == 300.0
    short = Timings(upgrade_budget=(10, 5.0))
    assert decide(http(429), first(), short, rng()).delay == 5.0


def test_http_400_message_says_what_to_check() -> None:
    action = decide(http(400, "Bad Request - Incorrect key or URL"), first(), T, rng())
    error = action.error
    assert isinstance(error, ConnectionRejectedError)
    assert error.status == 400
    message = str(error)
    for hint in ("lower-case SHA-256", "gateway URL", "approved", "Streaming Enabled"):
        assert hint in message
    assert "Incorrect key or URL" in message


def test_http_other_4xx_carries_the_status() -> None:
    error = decide(http(404, "Not Found"), first(), T, rng()).error
    assert isinstance(error, ConnectionRejectedError)
    assert error.status == 404
    assert "404" in str(error)
    assert "Not Found" in str(error)


def test_http_403_is_forbidden() -> None:
    error = decide(http(403, "Forbidden"), first(), T, rng()).error
    assert isinstance(error, ForbiddenError)
    assert error.code == 403
    assert error.reason == "Forbidden"


@pytest.mark.parametrize(("failure", "status"), [(close(4401), 4401), (http(401), 401)])
def test_4401_refreshes_the_token_once_then_is_fatal(failure: Failure, status: int) -> None:
    cause = "4401" if status == 4401 else "http-401"
    once = decide(failure, PolicyState(attempt=1, auth_failures=1), T, rng())
    assert (once.kind, once.cause) == (ActionKind.REFRESH_TOKEN, cause)
    assert in_backoff_range(once.delay, 1)
    later = decide(failure, PolicyState(attempt=5, auth_failures=1), T, rng())
    assert later.kind is ActionKind.REFRESH_TOKEN
    assert in_backoff_range(later.delay, 5)
    twice = decide(failure, PolicyState(attempt=2, auth_failures=2), T, rng())
    assert twice.fatal
    assert twice.cause == cause
    error = twice.error
    assert isinstance(error, AuthenticationError)
    assert error.status == status
    assert error.retriable is False
    assert "raw key in connection_init, not its hash" in str(error)


def test_4400_quotes_the_server_and_asks_to_fix_the_input() -> None:
    reason = "Value for offset is invalid - Expected abc to match pattern ^[0-9]+$"
    error = decide(close(4400, reason), first(), T, rng()).error
    assert isinstance(error, SubscriptionError)
    assert (error.code, error.reason) == (4400, reason)
    assert reason in str(error)
    assert "fix the subscription input" in str(error)


def test_4400_without_a_reason() -> None:
    error = decide(close(4400), first(), T, rng()).error
    assert isinstance(error, SubscriptionError)
    assert "no reason given" in str(error)


def test_long_reasons_are_cut() -> None:
    error = decide(close(4400, "x" * 1000), first(), T, rng()).error
    assert error is not None
    assert "x" * 200 + "..." in str(error)
    assert "x" * 201 not in str(error)


def test_4403_is_forbidden() -> None:
    error = decide(close(4403, "nope"), first(), T, rng()).error
    assert isinstance(error, ForbiddenError)
    assert (error.code, error.reason) == (4403, "nope")
    assert "nope" in str(error)


# --- 1000 -------------------------------------------------------------------------------------


def test_1000_without_a_known_complete_keeps_the_whole_gap() -> None:
    action = decide(close(1000), first(), T, rng())
    assert (action.kind, action.delay, action.cause) == (ActionKind.RECONNECT, 10.0, "1000")


@pytest.mark.parametrize(("since", "delay"), [(0.0, 10.0), (3.0, 7.0), (10.0, 0.0), (99.0, 0.0)])
def test_1000_waits_the_rest_of_the_gap(since: float, delay: float) -> None:
    action = decide(close(1000), first(since_complete=since), T, rng())
    assert action.kind is ActionKind.RECONNECT
    assert action.delay == pytest.approx(delay)


# --- 4409 -------------------------------------------------------------------------------------


def test_4409_inside_the_gap_waits_the_rest_of_it_plus_a_margin() -> None:
    action = decide(close(4409), first(since_complete=4.0), T, rng())
    assert (action.kind, action.cause) == (ActionKind.WAIT_GAP, "4409")
    assert action.delay == pytest.approx(6.0 + 1.0)


def test_4409_after_the_gap_is_a_lockout_with_jitter() -> None:
    for seed in range(200):
        for since in (None, 10.0, 500.0):
            action = decide(close(4409), first(since_complete=since), T, rng(seed))
            assert (action.kind, action.cause) == (ActionKind.LOCKOUT, "4409")
            assert 120.0 <= action.delay <= 150.0
    delays = {decide(close(4409), first(), T, rng(seed)).delay for seed in range(20)}
    assert len(delays) > 1


def test_4409_lockout_is_reproducible_with_a_seed() -> None:
    a = decide(close(4409), first(), T, rng(42))
    b = decide(close(4409), first(), T, rng(42))
    assert a == b


def test_4409_never_fatal_without_max_lockouts() -> None:
    action = decide(close(4409), first(lockouts=10_000), T, rng())
    assert action.kind is ActionKind.LOCKOUT


def test_4409_fatal_past_max_lockouts() -> None:
    timings = Timings(max_lockouts=3)
    for lockouts in range(3):
        action = decide(close(4409), first(lockouts=lockouts), timings, rng())
        assert action.kind is ActionKind.LOCKOUT
    reason = "Subscriber for 1 already exists"
    action = decide(close(4409, reason), first(lockouts=3), timings, rng())
    assert action.fatal
    error = action.error
    assert isinstance(error, ConsumerConflictError)
    assert error.code == 4409
    assert error.retriable is False
    message = str(error)
    assert "another consumer holds this stream (same gateway, chain and application key)" in message
    assert reason in message


def test_4409_inside_the_gap_wins_over_max_lockouts() -> None:
    timings = Timings(max_lockouts=1)
    action = decide(close(4409), first(lockouts=5, since_complete=1.0), timings, rng())
    assert action.kind is ActionKind.WAIT_GAP


# --- same offset: 1009 and malformed frames ---------------------------------------------------


@pytest.mark.parametrize("count", [0, 1, 2])
def test_1009_retries_below_three(count: int) -> None:
    action = decide(close(1009), first(same_offset_failures=count), T, rng())
    assert action.kind is ActionKind.BACKOFF


@pytest.mark.parametrize("count", [3, 4])
def test_1009_fatal_at_the_same_offset(count: int) -> None:
    action = decide(close(1009, "too big"), first(same_offset_failures=count), T, rng())
    assert action.fatal
    error = action.error
    assert isinstance(error, MessageTooLargeError)
    assert error.code == 1009
    assert error.retriable is False
    assert "max_message_size" in str(error)
    # The class stays retriable: only this instance is final.
    assert MessageTooLargeError.retriable is True


@pytest.mark.parametrize("count", [3, 4])
def test_malformed_fatal_at_the_same_offset(count: int) -> None:
    failure = Failure(FailureKind.MALFORMED, reason="unknown message type 'x'")
    action = decide(failure, first(same_offset_failures=count), T, rng())
    assert action.fatal
    assert action.cause == "malformed"
    error = action.error
    assert isinstance(error, ProtocolError)
    assert error.retriable is False
    assert "unknown message type" in str(error)
    assert ProtocolError.retriable is True


def test_tls_message_names_the_fix() -> None:
    error = decide(Failure(FailureKind.TLS, reason="self-signed"), first(), T, rng()).error
    assert isinstance(error, ConfigurationError)
    assert "pass ssl= (or OHIP_CA_FILE)" in str(error)
    assert "not trusted" in str(error)


def test_subprotocol_message_names_the_fix() -> None:
    error = decide(Failure(FailureKind.SUBPROTOCOL), first(), T, rng()).error
    assert isinstance(error, ConnectionRejectedError)
    assert "graphql-transport-ws" in str(error)
    assert "proxy" in str(error)


# --- the gap rule (protocol §4) ---------------------------------------------------------------


def test_gap_rule_lifts_a_short_backoff() -> None:
    action = decide(Failure(FailureKind.NETWORK), first(since_complete=2.0), T, rng())
    assert action.kind is ActionKind.BACKOFF
    assert action.delay == pytest.approx(8.0)


def test_gap_rule_leaves_a_longer_delay_alone() -> None:
    action = decide(http(429), first(since_complete=2.0), T, rng())
    assert action.delay == 120.0


def test_refresh_token_keeps_the_gap() -> None:
    action = decide(close(4401), first(auth_failures=1, since_complete=0.5), T, rng())
    assert action.kind is ActionKind.REFRESH_TOKEN
    assert action.delay == pytest.approx(9.5)


_FAILURES = st.builds(
    Failure,
    kind=st.sampled_from(FailureKind),
    code=st.one_of(
        st.none(),
        st.sampled_from([400, 401, 403, 404, 408, 429, 499, 500, 503, 1000, 1001, 1006, 1009]),
        st.sampled_from([1011, 1012, 1013, 1014, 4400, 4401, 4403, 4408, 4409, 4429, 4500, 4504]),
        st.integers(min_value=0, max_value=5000),
    ),
    reason=st.text(max_size=300),
    retry_after=st.one_of(st.none(), st.floats(min_value=0, max_value=10_000)),
)
_STATES = st.builds(
    PolicyState,
    attempt=st.integers(min_value=1, max_value=10_000),
    auth_failures=st.integers(min_value=0, max_value=5),
    lockouts=st.integers(min_value=0, max_value=10),
    same_offset_failures=st.integers(min_value=0, max_value=5),
    since_complete=st.one_of(st.none(), st.floats(min_value=0, max_value=1_000)),
)
_TIMINGS = st.sampled_from(
    [
        T,
        Timings(max_lockouts=2),
        Timings.compressed(0.001),
        Timings(complete_gap=30.0, backoff_min=0.5, backoff_max=5.0, drop_wait=10.0),
    ]
)


@given(failure=_FAILURES, state=_STATES, timings=_TIMINGS, seed=st.integers(0, 2**32))
def test_gap_invariant_and_sane_actions(
    failure: Failure, state: PolicyState, timings: Timings, seed: int
) -> None:
    action = decide(failure, state, timings, random.Random(seed))
    assert isinstance(action, Action)
    assert action.delay >= 0
    assert action.cause
    if action.fatal:
        assert action.error is not None
        assert action.error.retriable is False
        assert action.delay == 0
    else:
        assert action.error is None
        if state.since_complete is not None:
            assert action.delay >= timings.complete_gap - state.since_complete


# --- backoff_delay ----------------------------------------------------------------------------


@pytest.mark.parametrize("attempt", [1, 2, 3, 4, 5, 6, 7, 8, 50, 10_000])
def test_backoff_delay_equal_jitter_bounds(attempt: int) -> None:
    generator = rng(attempt)
    base = min(T.backoff_max, T.backoff_min * 2.0 ** min(attempt - 1, 64))
    delays = [backoff_delay(attempt, T, generator) for _ in range(500)]
    assert all(max(base / 2, T.backoff_min) <= d <= base for d in delays)
    if base > 2 * T.backoff_min:
        assert max(delays) - min(delays) > base / 4  # it does jitter


def test_backoff_delay_doubles_then_caps() -> None:
    assert backoff_delay(1, T, rng()) == 1.0  # [0.5, 1] raised to backoff_min
    assert 1.0 <= backoff_delay(2, T, rng()) <= 2.0
    assert 16.0 <= backoff_delay(6, T, rng()) <= 32.0
    assert 30.0 <= backoff_delay(7, T, rng()) <= 60.0
    assert 30.0 <= backoff_delay(10**9, T, rng()) <= 60.0


def test_backoff_delay_attempt_zero_or_negative_is_the_first() -> None:
    assert backoff_delay(0, T, rng()) == backoff_delay(1, T, rng())
    assert backoff_delay(-3, T, rng()) == 1.0


def test_backoff_delay_floor() -> None:
    assert backoff_delay(1, T, rng(), floor=4.0) == 4.0
    assert backoff_delay(1, T, rng(), floor=90.0) == 90.0  # a floor above the cap wins
    assert 30.0 <= backoff_delay(20, T, rng(), floor=4.0) <= 60.0


def test_backoff_delay_is_reproducible() -> None:
    assert [backoff_delay(5, T, rng(7)) for _ in range(3)] == [
        backoff_delay(5, T, rng(7)) for _ in range(3)
    ]


@given(
    attempt=st.integers(-5, 10**6),
    floor=st.floats(min_value=0, max_value=500),
    seed=st.integers(0, 2**32),
)
def test_backoff_delay_property(attempt: int, floor: float, seed: int) -> None:
    delay = backoff_delay(attempt, T, random.Random(seed), floor=floor)
    assert delay >= max(floor, T.backoff_min)
    assert delay <= max(T.backoff_max, floor)


# --- classify_exception -----------------------------------------------------------------------


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


# --- UpgradeBudget ----------------------------------------------------------------------------


def test_budget_allows_count_then_waits_for_the_oldest() -> None:
    budget = UpgradeBudget(3, 10.0)
    assert len(budget) == 0
    for now in (0.0, 1.0, 2.0):
        assert budget.wait_time(now) == 0
        budget.record(now)
    assert len(budget) == 3
    assert budget.wait_time(2.5) == pytest.approx(7.5)
    assert budget.wait_time(9.999) == pytest.approx(0.001)
    assert budget.wait_time(10.0) == 0  # the upgrade at 0 left the window at 10
    assert len(budget) == 2
    budget.record(10.0)
    assert budget.wait_time(10.5) == pytest.approx(0.5)  # the one at 1.0 leaves at 11.0
    assert budget.wait_time(100.0) == 0
    assert len(budget) == 0


def test_budget_counts_upgrades_recorded_over_the_limit() -> None:
    budget = UpgradeBudget(2, 10.0)
    for now in (0.0, 1.0, 2.0, 3.0):
        budget.record(now)
    assert len(budget) == 4
    # Two must leave before one more may go: the one at 2.0 leaves at 12.0.
    assert budget.wait_time(5.0) == pytest.approx(7.0)


def test_budget_default_is_oracles_limit() -> None:
    count, window = T.upgrade_budget
    budget = UpgradeBudget(count, window)
    for i in range(150):
        assert budget.wait_time(i * 0.1) == 0
        budget.record(i * 0.1)
    assert budget.wait_time(15.0) == pytest.approx(105.0)
    assert "used=150" in repr(budget)


@pytest.mark.parametrize(("count", "window"), [(0, 10.0), (5, 0.0), (5, -1.0)])
def test_budget_refuses_nonsense(count: int, window: float) -> None:
    with pytest.raises(ConfigurationError):
        UpgradeBudget(count, window)


@given(
    times=st.lists(st.floats(min_value=0, max_value=1000), max_size=60).map(sorted),
    count=st.integers(1, 10),
    window=st.floats(min_value=0.1, max_value=100),
)
def test_budget_never_lets_more_than_count_in_a_window(
    times: list[float], count: int, window: float
) -> None:
    budget = UpgradeBudget(count, window)
    accepted: list[float] = []
    last = 0.0
    for now in times:
        at = max(now, last)  # the caller's clock never goes back
        for _ in range(5):
            wait = budget.wait_time(at)
            assert wait >= 0
            if wait == 0:
                break
            at += wait
        assert budget.wait_time(at) == 0
        budget.record(at)
        accepted.append(at)
        last = at
    accepted.sort()
    for i, start in enumerate(accepted):
        inside = [t for t in accepted[i:] if t < start + window]
        assert len(inside) <= count
