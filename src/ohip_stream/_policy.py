"""What to do after a connection failed: close codes and HTTP statuses to actions (protocol §5).

Pure: no I/O, no event loop, no clock, no websockets or ssl; the caller passes the time and the
randomness, so every decision can be replayed in a test. The connection layer turns what failed
into a :class:`Failure` where it happens; :func:`failure_of` does it for the project's own
errors. The stream keeps a :class:`PolicyState` and asks :func:`decide` for an :class:`Action`.

The default policy (protocol §5)::

    failure                      action          delay / condition
    ---------------------------  --------------  -----------------------------------------------
    HTTP 400                     FATAL           ConnectionRejectedError (key hash, URL, approval)
    HTTP 401                     REFRESH_TOKEN   as 4401
    HTTP 403                     FATAL           ForbiddenError
    HTTP 408, 499                BACKOFF         the request timed out / was cut (transient)
    HTTP 429                     BACKOFF         max(Retry-After capped at 1 h, budget window)
                                 FATAL           RateLimitedError past max_rate_limited_wait
    HTTP other 4xx               FATAL           ConnectionRejectedError with the status
    HTTP 5xx, other              BACKOFF         jittered exponential
    close 1000                   RECONNECT       what is left of complete_gap (all of it if unknown)
    close 1001                   BACKOFF         Oracle maintenance
    close 1006 (dropped)         BACKOFF         at least drop_wait (4 s)
    close 1009 / too large       BACKOFF         FATAL MessageTooLargeError at the 3rd same offset
    close 4400                   FATAL           SubscriptionError with the server's reason
    close 4401                   REFRESH_TOKEN   FATAL AuthenticationError at the 2nd in a row
    close 4403                   FATAL           ForbiddenError
    close 4409                   WAIT_GAP        inside the complete gap: the rest of it + 10 %
                                 LOCKOUT         lockout * (1 + U(0, 0.25))
                                 FATAL           ConsumerConflictError past max_lockouts
    close 4408/4429/4500/4504    BACKOFF         graphql-ws init timeout, too many inits, ...
    close 1011-1014, any other   BACKOFF
    malformed frame              BACKOFF         FATAL ProtocolError at the 3rd same offset
    network (refused, DNS, ...)  BACKOFF
    liveness (no pong, no event) BACKOFF
    TLS verification             FATAL           ConfigurationError (pass ssl= / OHIP_CA_FILE)
    subprotocol not confirmed    FATAL           ConnectionRejectedError (URL / proxy)
    configuration (bad URI, ...) FATAL           ConfigurationError
    fatal (a project error)      FATAL           the error itself (not retriable)

One rule holds over the whole table (protocol §4): no non-fatal action waits less than what is
left of ``complete_gap`` since the last completed connection ended. A FATAL action's error is
not retriable, except :class:`RateLimitedError` (the same request succeeds after
``retry_after``). Server text (close reason, HTTP body) is redacted before it enters an error.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass, replace

from ohip_stream._budget import UpgradeBudget, rate_limited_wait
from ohip_stream._exceptions import (
    AuthenticationError,
    ConfigurationError,
    ConnectionRejectedError,
    ConsumerConflictError,
    ForbiddenError,
    MessageTooLargeError,
    OhipError,
    ProtocolError,
    RateLimitedError,
    SubscriptionError,
    TransportError,
)
from ohip_stream._logging import redact
from ohip_stream._timings import Timings

__all__ = [
    "MAX_RETRY_AFTER",
    "Action",
    "ActionKind",
    "Failure",
    "FailureKind",
    "PolicyState",
    "UpgradeBudget",
    "backoff_delay",
    "decide",
    "failure_of",
    "rate_limited_wait",
]

#: A 1009 or malformed frame at the same resume offset this many times in a row is fatal.
SAME_OFFSET_LIMIT = 3
#: 4401 (or HTTP 401) this many times in a row, a fresh token in between, is fatal.
AUTH_FAILURE_LIMIT = 2
#: A 4409 lockout waits ``lockout`` times 1 plus up to this fraction (jitter).
LOCKOUT_JITTER = 0.25
#: A 4409 inside the complete gap waits the rest of the gap plus this fraction of the gap.
GAP_MARGIN = 0.1
#: Longest ``Retry-After`` honoured, in seconds: a server asking for more (``1e12``) gets this.
MAX_RETRY_AFTER = 3600.0
#: Longest server text (close reason, HTTP body) quoted in an error message.
_REASON_LIMIT = 200
#: Exponents above this cannot matter (the delay is capped) and would overflow a float.
_MAX_EXPONENT = 64


class FailureKind(enum.Enum):
    """What kind of thing ended (or prevented) a connection."""

    HTTP = "http"  # the upgrade was answered with an HTTP status (code = status)
    CLOSE = "close"  # the WebSocket closed with a close code (code = close code; 1006 = dropped)
    MALFORMED = "malformed"  # a frame that broke the protocol (ProtocolError)
    NETWORK = "network"  # refused / DNS / timeout / reset before or during the connection
    TLS = "tls"  # certificate verification failed
    LIVENESS = "liveness"  # no pong or event within Timings.liveness_timeout
    SUBPROTOCOL = "subprotocol"  # server did not confirm graphql-transport-ws
    CONFIG = "config"  # the connection could not even be attempted: invalid URI or proxy
    FATAL = "fatal"  # a project error no retry can fix (Failure.error): raised as it is


@dataclass(frozen=True, slots=True)
class Failure:
    """One failed connection, as the policy sees it."""

    kind: FailureKind
    #: The HTTP status (HTTP) or the close code (CLOSE); None otherwise.
    code: int | None = None
    #: Close reason / HTTP body excerpt / error text, as the server or the OS gave it: the
    #: policy redacts it before it quotes it in an error.
    reason: str = ""
    #: Seconds from an HTTP 429 ``Retry-After`` header.
    retry_after: float | None = None
    #: For FATAL: the project error to raise (see :func:`failure_of`).
    error: OhipError | None = None


class ActionKind(enum.Enum):
    """What the stream does next."""

    FATAL = "fatal"  # raise Action.error, do not retry
    REFRESH_TOKEN = "refresh_token"  # invalidate the token, fetch a new one, reconnect after delay
    LOCKOUT = "lockout"  # 4409: wait delay (Timings.lockout plus jitter), then retry
    WAIT_GAP = "wait_gap"  # 4409 inside the known complete gap: wait the rest of the gap
    BACKOFF = "backoff"  # wait delay (jittered exponential), then reconnect
    RECONNECT = "reconnect"  # reconnect after delay (e.g. a normal 1000 close)


@dataclass(frozen=True, slots=True)
class Action:
    """The decision: what to do, how long to wait first, and why."""

    kind: ActionKind
    #: Seconds to wait before the next upgrade (0 allowed).
    delay: float
    #: Short label, the key of ``StreamStats.reconnects``: "1000", "1006", "4409", "http-429",
    #: "network", "malformed", "liveness", "tls", "subprotocol", "config", "fatal"...
    cause: str
    #: For FATAL: the error to raise (the message says what to check).
    error: OhipError | None = None

    @property
    def fatal(self) -> bool:
        """Whether the stream must stop and raise :attr:`error`."""
        return self.kind is ActionKind.FATAL


@dataclass(frozen=True, slots=True)
class PolicyState:
    """What the stream counted up to (and including) this failure."""

    #: Consecutive failed connections without an event in between (this failure included: >= 1).
    attempt: int = 0
    #: Consecutive 4401 (or HTTP 401) with no event in between, this one included.
    auth_failures: int = 0
    #: Consecutive 4409 lockouts before this one.
    lockouts: int = 0
    #: 1009 / malformed failures at the same resume offset, this one included.
    same_offset_failures: int = 0
    #: Seconds since our last completed connection ended (None: unknown).
    since_complete: float | None = None


def backoff_delay(
    attempt: int, timings: Timings, rng: random.Random, *, floor: float = 0.0
) -> float:
    """Jittered exponential backoff ("equal jitter") for the ``attempt``-th failure in a row.

    ``base = min(backoff_max, backoff_min * 2 ** (attempt - 1))``; the result is drawn from
    ``[base / 2, base]``, then kept within ``[max(floor, backoff_min), backoff_max]`` (a
    ``floor`` above ``backoff_max`` wins: that is the delay).
    """
    exponent = min(max(attempt, 1) - 1, _MAX_EXPONENT)
    base = min(timings.backoff_max, timings.backoff_min * 2.0**exponent)
    jittered = base / 2 + rng.uniform(0.0, base / 2)
    lowest = max(floor, timings.backoff_min)
    return min(max(jittered, lowest), max(timings.backoff_max, floor))


def decide(failure: Failure, state: PolicyState, timings: Timings, rng: random.Random) -> Action:
    """The action for ``failure`` under the default policy (the table in the module docstring).

    Every non-fatal action waits at least what is left of ``timings.complete_gap`` when
    ``state.since_complete`` is known (protocol §4); every delay is >= 0.
    """
    action = _decide(failure, state, timings, rng)
    if action.fatal:
        return action
    delay = max(action.delay, 0.0)
    if state.since_complete is not None:
        # Protocol §4: at least complete_gap between the end of a completed connection and the
        # next subscribe, whatever the failure since then. The one place that enforces it.
        delay = max(delay, timings.complete_gap - state.since_complete)
    return action if delay == action.delay else replace(action, delay=delay)


def _decide(failure: Failure, state: PolicyState, timings: Timings, rng: random.Random) -> Action:
    kind = failure.kind
    if kind is FailureKind.HTTP:
        return _decide_http(failure, state, timings, rng)
    if kind is FailureKind.CLOSE:
        return _decide_close(failure, state, timings, rng)
    if kind is FailureKind.MALFORMED:
        # Protocol §5 (malformed frame): reconnect with backoff; repeated at the same offset, fatal.
        if state.same_offset_failures >= SAME_OFFSET_LIMIT:
            error = ProtocolError(
                f"the server sent a frame that breaks graphql-transport-ws "
                f"{state.same_offset_failures} times in a row at the same offset; last: "
                f"{_quote(failure.reason)}"
            )
            return _fatal("malformed", error)
        return _backoff("malformed", state, timings, rng)
    if kind in (FailureKind.LIVENESS, FailureKind.NETWORK):
        # Protocol §4 (liveness: no pong and no event for liveness_timeout, the link is dead)
        # and §5 (network, DNS): retry with backoff.
        return _backoff(kind.value, state, timings, rng)
    return _decide_final(failure)


def _decide_final(failure: Failure) -> Action:
    # The kinds no retry of the same configuration can fix.
    kind = failure.kind
    if kind is FailureKind.TLS:
        # Protocol §5 (TLS verification): fatal, a configuration error.
        return _fatal(
            "tls",
            ConfigurationError(
                "the gateway's TLS certificate is not trusted: pass ssl= (or OHIP_CA_FILE) with "
                f"the CA that signed it ({_quote(failure.reason)})"
            ),
        )
    if kind is FailureKind.SUBPROTOCOL:
        # A proxy or a wrong endpoint that does not speak graphql-transport-ws: retrying the
        # same URL through the same path cannot help.
        return _fatal(
            "subprotocol",
            ConnectionRejectedError(
                "the server did not accept the graphql-transport-ws subprotocol: check the "
                "gateway URL and any proxy between here and the gateway "
                f"({_quote(failure.reason)})",
                status=101,
            ),
        )
    if kind is FailureKind.CONFIG:
        return _fatal(
            "config",
            ConfigurationError(
                f"cannot connect: {_quote(failure.reason)}; check gateway_url and proxy"
            ),
        )
    # FailureKind.FATAL: a project error that says itself what to fix.
    return _fatal("fatal", failure.error or OhipError(f"failed for good: {_quote(failure.reason)}"))


def _decide_http(
    failure: Failure, state: PolicyState, timings: Timings, rng: random.Random
) -> Action:
    status = failure.code
    cause = "http" if status is None else f"http-{status}"
    if status == 400:
        # Protocol §1/§5: wrong or upper-case key hash, wrong URL, unapproved subscription, or
        # an environment that is not Streaming Enabled. Fatal: a configuration error.
        return _fatal(
            cause,
            ConnectionRejectedError(
                "the gateway refused the WebSocket upgrade with HTTP 400: check the application "
                "key hash is lower-case SHA-256 of the key, the gateway URL, that the "
                "subscription is approved and the environment is Streaming Enabled"
                + _said(failure.reason),
                status=400,
            ),
        )
    if status == 401:
        return _auth_failure(cause, failure, state, timings, rng)
    if status == 403:
        # An HTTP status, not a close code: the error's ``code`` stays None.
        what = "connection (HTTP 403 on the upgrade): check the application's access to "
        return _forbidden(cause, what + "streaming for this environment", failure, None)
    if status == 429:
        return _rate_limited(cause, failure, timings)
    if status in (408, 499):
        # 408: the server gave up waiting for the request; 499 (OHIP): the client went away
        # before the answer. Both are timing, not configuration.
        return _backoff(cause, state, timings, rng)
    if status is not None and 300 <= status < 500:
        # A redirect is never followed (the token and the raw key would go wherever it
        # points), and it will not change by retrying: fatal, like any other 4xx.
        hint = "a redirect is not followed: point the gateway URL at the gateway itself"
        return _fatal(
            cause,
            ConnectionRejectedError(
                f"the gateway answered the WebSocket upgrade with HTTP {status}: "
                + (hint if status < 400 else "check the gateway URL")
                + _said(failure.reason),
                status=status,
            ),
        )
    # 5xx and anything else (including a missing status): the gateway's trouble, retry.
    return _backoff(cause, state, timings, rng)


def _decide_close(
    failure: Failure, state: PolicyState, timings: Timings, rng: random.Random
) -> Action:
    code = 1006 if failure.code is None else failure.code
    cause = str(code)
    if code == 1000:
        # Protocol §5: closed normally (also the answer to our complete); reconnect if the stream
        # goes on. The server may have completed the stream: keep the whole gap (§4).
        if state.since_complete is None:
            delay = timings.complete_gap
        else:
            delay = max(0.0, timings.complete_gap - state.since_complete)
        return Action(ActionKind.RECONNECT, delay, cause)
    if code == 1006:
        # Protocol §5: connection broken; wait at least drop_wait (4 s), then reconnect.
        return _backoff(cause, state, timings, rng, floor=timings.drop_wait)
    if code == 1009:
        # Protocol §5: a message above our limit; the same offset again and again is fatal.
        if state.same_offset_failures >= SAME_OFFSET_LIMIT:
            error = MessageTooLargeError(
                f"an event at the same offset was larger than max_message_size "
                f"{state.same_offset_failures} times in a row (close 1009): raise "
                "max_message_size",
                code=1009,
                reason=redact(failure.reason),
            )
            return _fatal(cause, error)
        return _backoff(cause, state, timings, rng)
    if code == 4400:
        # Protocol §5: invalid subscription field or value; fatal until the input is fixed.
        return _fatal(
            cause,
            SubscriptionError(
                f"the gateway refused the subscription (close 4400): {_quote(failure.reason)}; "
                "fix the subscription input (chain code, offset, hotel codes)",
                code=4400,
                reason=redact(failure.reason),
            ),
        )
    if code == 4401:
        return _auth_failure(cause, failure, state, timings, rng)
    if code == 4403:
        # Protocol §5: forbidden; meaning not documented by Oracle. Fatal.
        what = "subscription (close 4403): check that the application may stream this chain"
        return _forbidden(cause, what, failure, 4403)
    if code == 4409:
        return _decide_conflict(failure, state, timings, rng)
    # 1001 (Oracle maintenance), 1011-1014, 4408/4429/4500 (graphql-ws), 4504 (listed by
    # Oracle, meaning not documented) and every unknown code: retry with backoff (§5).
    return _backoff(cause, state, timings, rng)


def _decide_conflict(
    failure: Failure, state: PolicyState, timings: Timings, rng: random.Random
) -> Action:
    # Protocol §4/§7: 4409 is another consumer on the stream, or a subscribe too soon after the
    # previous connection's complete. Never hammer.
    gap = timings.complete_gap
    if state.since_complete is not None and state.since_complete < gap:
        # Our own complete is too recent: the rest of the gap, plus a margin, settles it.
        return Action(ActionKind.WAIT_GAP, gap - state.since_complete + GAP_MARGIN * gap, "4409")
    if timings.max_lockouts is not None and state.lockouts >= timings.max_lockouts:
        return _fatal(
            "4409",
            ConsumerConflictError(
                "another consumer holds this stream (same gateway, chain and application key): "
                f"the gateway answered 4409 after {state.lockouts} lockouts in a row; stop the "
                "other consumer, or use another application key or chain" + _said(failure.reason),
                code=4409,
                reason=redact(failure.reason),
            ),
        )
    delay = timings.lockout * (1.0 + rng.uniform(0.0, LOCKOUT_JITTER))
    return Action(ActionKind.LOCKOUT, delay, "4409")


def _rate_limited(cause: str, failure: Failure, timings: Timings) -> Action:
    # Protocol §1/§5: more than 150 upgrades in 2 minutes; retry after 2 minutes (or what the
    # server's Retry-After says, when longer, up to MAX_RETRY_AFTER).
    # A missing, negative or NaN Retry-After counts as none; a huge one (1e12, inf) is capped.
    asked = failure.retry_after if failure.retry_after is not None else 0.0
    wait = max(min(asked, MAX_RETRY_AFTER) if asked >= 0 else 0.0, timings.upgrade_budget[1])
    limit = timings.max_rate_limited_wait
    if limit is not None and wait > limit:
        return _fatal(
            cause,
            RateLimitedError(
                f"the gateway refused the upgrade with HTTP 429 (too many upgrades for this "
                f"application key) and asks for a wait of {wait:g} s, longer than "
                f"Timings.max_rate_limited_wait ({limit:g} s): retry later, raise "
                "max_rate_limited_wait, or look for other consumers of this key"
                + _said(failure.reason),
                retry_after=wait,
            ),
        )
    return Action(ActionKind.BACKOFF, wait, cause)


def _auth_failure(
    cause: str, failure: Failure, state: PolicyState, timings: Timings, rng: random.Random
) -> Action:
    # Protocol §5 (4401): fetch a new token once; if it repeats, fatal. HTTP 401 is a status.
    if state.auth_failures >= AUTH_FAILURE_LIMIT:
        http_status = failure.kind is FailureKind.HTTP
        what = "HTTP 401 on the upgrade" if http_status else "close 4401"
        return _fatal(
            cause,
            AuthenticationError(
                f"the gateway refused the credentials {state.auth_failures} times in a row "
                f"({what}), the last time with a freshly fetched token: check the application "
                "key (the raw key in connection_init, not its hash) and the credentials"
                + _said(failure.reason),
                status=401 if http_status else None,
                code=None if http_status else 4401,
            ),
        )
    delay = backoff_delay(state.attempt, timings, rng)
    return Action(ActionKind.REFRESH_TOKEN, delay, cause)


def _backoff(
    cause: str, state: PolicyState, timings: Timings, rng: random.Random, *, floor: float = 0.0
) -> Action:
    return Action(
        ActionKind.BACKOFF, backoff_delay(state.attempt, timings, rng, floor=floor), cause
    )


def _forbidden(cause: str, what: str, failure: Failure, code: int | None) -> Action:
    message = f"the gateway forbids this {what}{_said(failure.reason)}"
    return _fatal(cause, ForbiddenError(message, code=code, reason=redact(failure.reason)))


def _fatal(cause: str, error: OhipError) -> Action:
    return Action(ActionKind.FATAL, 0.0, cause, error)


def _quote(text: str) -> str:
    # Redacted before it is cut, so that a secret cut in half cannot slip past the patterns.
    text = redact(text).strip()
    if not text:
        return "no reason given"
    if len(text) > _REASON_LIMIT:
        text = text[:_REASON_LIMIT] + "..."
    return repr(text)


def _said(reason: str) -> str:
    return f" (the server said {_quote(reason)})" if reason.strip() else ""


# --- the project's own errors -> Failure --------------------------------------------------------


def failure_of(exc: BaseException) -> Failure:
    """The :class:`Failure` for an error that is already the project's (or a bug).

    :class:`MessageTooLargeError` -> CLOSE 1009; :class:`TransportError` -> NETWORK;
    :class:`ProtocolError` -> MALFORMED; :class:`ConfigurationError` -> CONFIG;
    :class:`RateLimitedError` -> HTTP 429 with its ``retry_after``; any other
    :class:`OhipError` that is not retriable -> FATAL carrying the error itself; anything else
    (a retriable project error, or a bug) -> NETWORK, named by its type.

    A ``BaseException`` that is not an ``Exception`` (``CancelledError``, ``KeyboardInterrupt``,
    ``SystemExit``) is no connection failure: it is raised again, never turned into a retry.
    """
    if not isinstance(exc, Exception):
        raise exc
    text = str(exc)
    if isinstance(exc, MessageTooLargeError):
        return Failure(FailureKind.CLOSE, code=1009, reason=text)
    if isinstance(exc, TransportError):
        return Failure(FailureKind.NETWORK, reason=text)
    if isinstance(exc, ProtocolError):
        return Failure(FailureKind.MALFORMED, reason=text)
    if isinstance(exc, ConfigurationError):
        return Failure(FailureKind.CONFIG, reason=text)
    if isinstance(exc, RateLimitedError):
        return Failure(FailureKind.HTTP, code=429, reason=text, retry_after=exc.retry_after)
    if isinstance(exc, OhipError) and not exc.retriable:
        return Failure(FailureKind.FATAL, reason=text, error=exc)
    name = type(exc).__name__
    return Failure(FailureKind.NETWORK, reason=f"{name}: {text}" if text else name)
