"""The reconnect policy (protocol §5): every row of the table, jitter bounds, the gap rule."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import ohip_stream
from ohip_stream import (
    AuthenticationError,
    CheckpointError,
    CheckpointUnavailableError,
    ConfigurationError,
    ConnectionRejectedError,
    ConsumerAlreadyRunningError,
    ConsumerConflictError,
    EventValidationError,
    ForbiddenError,
    MessageTooLargeError,
    OhipError,
    ProtocolError,
    RateLimitedError,
    SubscriptionError,
    Timings,
    TransportError,
)
from ohip_stream._logging import register_secret
from ohip_stream._policy import (
    MAX_RETRY_AFTER,
    Action,
    ActionKind,
    Failure,
    FailureKind,
    PolicyState,
    backoff_delay,
    decide,
    failure_of,
)

# ProtocolError and MessageTooLargeError become non-retriable classes with the error tree's
# change (issue 17); until then they are the only fatal errors whose class says retriable.

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
    pytest.param(http(302), ConnectionRejectedError, "http-302", id="http-302"),
    pytest.param(http(307), ConnectionRejectedError, "http-307", id="http-307"),
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
    assert "retriable" not in vars(action.error)


BACKOFF_ROWS = [
    pytest.param(http(500), "http-500", id="http-500"),
    pytest.param(http(502), "http-502", id="http-502"),
    pytest.param(http(503), "http-503", id="http-503"),
    pytest.param(http(408), "http-408", id="http-408"),
    pytest.param(http(499), "http-499", id="http-499"),
    pytest.param(http(200), "http-200", id="http-200"),
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


def test_a_redirect_on_the_upgrade_is_fatal_and_says_it_is_not_followed() -> None:
    error = decide(http(307, "Temporary Redirect"), first(), T, rng()).error
    assert isinstance(error, ConnectionRejectedError)
    assert error.status == 307
    assert "redirect is not followed" in str(error)


def test_http_403_is_forbidden_without_a_close_code() -> None:
    error = decide(http(403, "Forbidden"), first(), T, rng()).error
    assert isinstance(error, ForbiddenError)
    assert error.code is None  # an HTTP status is no close code
    assert error.reason == "Forbidden"
    assert "HTTP 403" in str(error)


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
    if status == 4401:
        assert (error.status, error.code) == (None, 4401)
        assert "close 4401" in str(error)
    else:
        assert (error.status, error.code) == (401, None)
        assert "HTTP 401" in str(error)
    assert error.retriable is False
    assert "retriable" not in vars(error)
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
    assert "retriable" not in vars(error)  # the class says it, never the instance
    assert "max_message_size" in str(error)


@pytest.mark.parametrize("count", [3, 4])
def test_malformed_fatal_at_the_same_offset(count: int) -> None:
    failure = Failure(FailureKind.MALFORMED, reason="unknown message type 'x'")
    action = decide(failure, first(same_offset_failures=count), T, rng())
    assert action.fatal
    assert action.cause == "malformed"
    error = action.error
    assert isinstance(error, ProtocolError)
    assert "retriable" not in vars(error)  # the class says it, never the instance
    assert "unknown message type" in str(error)


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
    retry_after=st.one_of(st.none(), st.floats(allow_nan=True, allow_infinity=True)),
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
        Timings(max_rate_limited_wait=200.0),
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
        error = action.error
        assert error is not None
        assert "retriable" not in vars(error)
        assert error.retriable is False or isinstance(error, RateLimitedError)
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


# --- HTTP 429: Retry-After capped, max_rate_limited_wait ---------------------------------------


@pytest.mark.parametrize(
    ("retry_after", "delay"),
    [
        (1e12, MAX_RETRY_AFTER),
        (float("inf"), MAX_RETRY_AFTER),
        (3599.0, 3599.0),
        (float("nan"), 120.0),
        (-5.0, 120.0),
        (None, 120.0),
    ],
)
def test_http_429_retry_after_is_capped_at_an_hour(retry_after: float | None, delay: float) -> None:
    action = decide(http(429, retry_after=retry_after), first(), T, rng())
    assert (action.kind, action.delay) == (ActionKind.BACKOFF, delay)


def test_http_429_past_max_rate_limited_wait_is_fatal() -> None:
    timings = Timings(max_rate_limited_wait=200.0)
    assert decide(http(429, retry_after=200.0), first(), timings, rng()).kind is ActionKind.BACKOFF
    action = decide(http(429, "slow down", retry_after=1e12), first(), timings, rng())
    assert (action.kind, action.cause, action.delay) == (ActionKind.FATAL, "http-429", 0.0)
    error = action.error
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == MAX_RETRY_AFTER
    assert error.retriable is True  # a later retry can succeed: the caller decides
    message = str(error)
    assert "max_rate_limited_wait (200 s)" in message
    assert "3600 s" in message
    assert "slow down" in message


def test_http_429_budget_window_alone_can_pass_the_limit() -> None:
    # No Retry-After: the wait is the budget window (120 s), longer than the limit.
    timings = Timings(max_rate_limited_wait=60.0)
    error = decide(http(429), first(), timings, rng()).error
    assert isinstance(error, RateLimitedError)
    assert error.retry_after == 120.0


# --- FATAL failures and the project's own errors ------------------------------------------------


def test_fatal_failure_raises_its_own_error() -> None:
    own = ConsumerAlreadyRunningError("held elsewhere")
    action = decide(Failure(FailureKind.FATAL, error=own), first(since_complete=0.0), T, rng())
    assert (action.kind, action.cause, action.delay) == (ActionKind.FATAL, "fatal", 0.0)
    assert action.error is own


def test_fatal_failure_without_an_error_gets_one() -> None:
    action = decide(Failure(FailureKind.FATAL, reason="gone"), first(), T, rng())
    assert type(action.error) is OhipError
    assert "'gone'" in str(action.error)
    assert action.error.retriable is False


@pytest.mark.parametrize(
    ("exc", "expected"),
    [
        (TransportError("reset by peer"), Failure(FailureKind.NETWORK, reason="reset by peer")),
        (ProtocolError("not JSON"), Failure(FailureKind.MALFORMED, reason="not JSON")),
        (MessageTooLargeError("big", code=1009), Failure(FailureKind.CLOSE, 1009, "big")),
        (ConfigurationError("bad proxy"), Failure(FailureKind.CONFIG, reason="bad proxy")),
        (RateLimitedError("429", retry_after=30.0), Failure(FailureKind.HTTP, 429, "429", 30.0)),
        (RuntimeError("bug"), Failure(FailureKind.NETWORK, reason="RuntimeError: bug")),
        (KeyError(), Failure(FailureKind.NETWORK, reason="KeyError")),
        (
            CheckpointUnavailableError("locked"),
            Failure(FailureKind.NETWORK, reason=("CheckpointUnavailableError: locked")),
        ),
    ],
)
def test_failure_of_maps_project_errors(exc: Exception, expected: Failure) -> None:
    assert failure_of(exc) == expected


@pytest.mark.parametrize(
    "exc",
    [
        AuthenticationError("bad secret", status=401),
        SubscriptionError("bad input", code=4400),
        ConsumerAlreadyRunningError("held"),
        CheckpointError("not a database"),
        EventValidationError("bad event", raw="{}"),
    ],
)
def test_failure_of_final_project_errors_are_fatal_as_they_are(exc: OhipError) -> None:
    failure = failure_of(exc)
    assert (failure.kind, failure.error) == (FailureKind.FATAL, exc)
    action = decide(failure, first(), T, rng())
    assert action.fatal
    assert action.error is exc


@pytest.mark.parametrize("exc", [KeyboardInterrupt(), SystemExit(3), GeneratorExit()])
def test_failure_of_never_swallows_what_is_not_an_exception(exc: BaseException) -> None:
    with pytest.raises(type(exc)):
        failure_of(exc)


def test_failure_of_then_decide() -> None:
    assert decide(failure_of(TransportError("x")), first(), T, rng()).kind is ActionKind.BACKOFF
    too_big = failure_of(MessageTooLargeError("big"))
    assert decide(too_big, first(same_offset_failures=3), T, rng()).fatal


# --- server text is redacted before it enters an error (issue 19 item 3) -----------------------

_TOKEN = "tok-SECRET-9f8e7d6c5b4a"
_RAW_KEY = "0d4c9a4e-7a52-4b1e-9d3c-raw-app-key"
_KEY_HASH = hashlib.sha256(_RAW_KEY.encode()).hexdigest()
_ECHO = f"echo: Bearer {_TOKEN} x-app-key {_RAW_KEY} key hash {_KEY_HASH}"

_ECHOED = [
    pytest.param(http(400, _ECHO), id="http-400"),
    pytest.param(http(403, _ECHO), id="http-403"),
    pytest.param(http(404, _ECHO), id="http-404"),
    pytest.param(close(4400, _ECHO), id="4400"),
    pytest.param(close(4403, _ECHO), id="4403"),
    pytest.param(Failure(FailureKind.TLS, reason=_ECHO), id="tls"),
    pytest.param(Failure(FailureKind.SUBPROTOCOL, reason=_ECHO), id="subprotocol"),
    pytest.param(Failure(FailureKind.CONFIG, reason=_ECHO), id="config"),
    pytest.param(Failure(FailureKind.FATAL, reason=_ECHO), id="fatal"),
]


def _assert_clean(error: BaseException | None) -> None:
    assert error is not None
    for text in (str(error), repr(error), repr(vars(error))):
        for secret in (_TOKEN, _RAW_KEY, _KEY_HASH):
            assert secret not in text


@pytest.mark.parametrize("failure", _ECHOED)
def test_server_text_with_secrets_is_redacted(failure: Failure) -> None:
    register_secret(_TOKEN, _RAW_KEY)
    action = decide(failure, first(), T, rng())
    assert action.fatal
    _assert_clean(action.error)
    assert "[REDACTED]" in str(action.error)


def test_secrets_are_redacted_in_every_stateful_fatal_error() -> None:
    register_secret(_TOKEN, _RAW_KEY)
    capped = Timings(max_lockouts=1, max_rate_limited_wait=10.0)
    cases = [
        (close(4401, _ECHO), first(auth_failures=2)),
        (http(401, _ECHO), first(auth_failures=2)),
        (close(4409, _ECHO), first(lockouts=1)),
        (close(1009, _ECHO), first(same_offset_failures=3)),
        (Failure(FailureKind.MALFORMED, reason=_ECHO), first(same_offset_failures=3)),
        (http(429, _ECHO), first()),
    ]
    for failure, state in cases:
        action = decide(failure, state, capped, rng())
        assert action.fatal, failure
        _assert_clean(action.error)


def test_a_secret_at_the_cut_is_redacted_whole() -> None:
    register_secret(_TOKEN)
    reason = "x" * 190 + _TOKEN
    error = decide(close(4400, reason), first(), T, rng()).error
    assert error is not None
    assert _TOKEN[:10] not in str(error)


# --- purity ------------------------------------------------------------------------------------


def test_the_policy_imports_neither_websockets_nor_ssl_nor_asyncio() -> None:
    # The package's __init__ imports the stream (and so websockets): load the policy with an
    # empty package in its place, in a fresh interpreter.
    source = Path(ohip_stream.__file__).parent
    code = (
        "import sys, types\n"
        f"pkg = types.ModuleType('ohip_stream'); pkg.__path__ = [{str(source)!r}]\n"
        "sys.modules['ohip_stream'] = pkg\n"
        "import ohip_stream._policy, ohip_stream._budget\n"
        "print(sorted(m for m in ('websockets', 'ssl', 'asyncio') if m in sys.modules))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.strip() == "[]"


def test_every_fatal_error_class_is_final() -> None:
    for failure, state in [
        (close(1009), first(same_offset_failures=3)),
        (Failure(FailureKind.MALFORMED), first(same_offset_failures=3)),
    ]:
        error = decide(failure, state, T, rng()).error
        assert error is not None
        assert error.retriable is False
