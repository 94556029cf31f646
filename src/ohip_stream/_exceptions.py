"""The errors ohip-stream raises.

Every error the library raises is an :class:`OhipError`; lower-layer errors (httpx, websockets,
OS, TLS) are mapped onto this tree where they are caught, with ``raise ... from exc``.
Each class says whether retrying the same operation can help: ``retriable`` is a class
attribute, the same for every instance of the class::

    OhipError
    ├── ConfigurationError            bad settings; fix them
    ├── AuthenticationError           token endpoint refused (.status), or 4401 twice (.code)
    ├── ConnectionRejectedError       HTTP 400 on the WebSocket upgrade (.status)
    ├── RateLimitedError              HTTP 429 on the upgrade, a wait too long (retriable)
    ├── SubscriptionError             close 4400: the subscription input is invalid (.code)
    ├── ForbiddenError                close 4403 (.code)
    ├── ConsumerConflictError         close 4409 more often than ``Timings.max_lockouts``
    ├── ConsumerAlreadyRunningError   the local guard: this stream has a consumer already
    ├── ProtocolError                 frames that break graphql-transport-ws, again and again
    ├── MessageTooLargeError          close 1009 again and again at one offset (.code)
    ├── EventValidationError          an event payload that does not fit the model (.raw)
    ├── CheckpointError               the checkpoint store failed for good (file gone, not a store)
    │   └── CheckpointUnavailableError    a transient store failure: locked, busy (retriable)
    └── TransportError                network, DNS, timeouts, token endpoint 5xx (retriable)

The attributes mean one thing everywhere: ``status`` is an HTTP status (``None`` when there was
no HTTP answer), ``code`` a WebSocket close code, ``reason`` the close reason.

Messages never contain secrets: no client secret, password, access token or application key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

__all__ = [
    "describe_problems",
    "AuthenticationError",
    "CheckpointError",
    "CheckpointUnavailableError",
    "ConfigurationError",
    "ConnectionRejectedError",
    "ConsumerAlreadyRunningError",
    "ConsumerConflictError",
    "EventValidationError",
    "ForbiddenError",
    "MessageTooLargeError",
    "OhipError",
    "ProtocolError",
    "RateLimitedError",
    "SubscriptionError",
    "TransportError",
]


class OhipError(Exception):
    """Base class of every error ohip-stream raises."""

    #: Whether retrying the same operation later can succeed without a change of configuration.
    #: A property of the class: never set on an instance.
    retriable: ClassVar[bool] = False


class ConfigurationError(OhipError, ValueError):
    """A setting is missing or invalid; the message names it and says how to fix it."""


class AuthenticationError(OhipError):
    """The token endpoint refused the credentials, or the gateway refused the token twice.

    Args:
        message: what failed and what to check.
        status: the token endpoint's HTTP status (400, 401, 403, ...), when it answered.
        code: the close code 4401, when the gateway refused a freshly fetched token again
            (protocol §5: fetch a new token once; if it repeats, fatal).
        error: the OAuth ``error`` field of the answer, when it had one (redacted).
        error_description: the OAuth ``error_description`` field, when it had one (redacted).

    Not retriable: the credentials, the application key or the grant need fixing. A token
    endpoint that is down (HTTP 5xx, 408, 429) raises :class:`TransportError` instead.
    """

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: int | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> None:
        super().__init__(message)
        #: The HTTP status of the token endpoint's answer, or ``None``.
        self.status = status
        #: The close code (4401) when the gateway refused the token, or ``None``.
        self.code = code
        #: The OAuth ``error`` field of the answer, or ``None``.
        self.error = error
        #: The OAuth ``error_description`` field of the answer, or ``None``.
        self.error_description = error_description


class ConnectionRejectedError(OhipError):
    """The gateway refused the WebSocket upgrade: wrong key hash or URL, unapproved
    subscription, streaming off (HTTP 400), or an answer that is not the expected protocol.

    Args:
        message: what the gateway answered and what to check.
        status: the HTTP status of the upgrade's answer.
    """

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        #: The HTTP status of the upgrade's answer.
        self.status = status


class RateLimitedError(OhipError):
    """Too many upgrades (HTTP 429: more than 150 in 2 minutes), and the wait the gateway
    asked for, or the client's own upgrade budget needs, is longer than
    ``Timings.max_rate_limited_wait``.

    Retriable: the same connection succeeds once the window has passed.

    Args:
        message: how long the wait would be and why.
        status: the HTTP status, 429.
        retry_after: the wait in seconds, from ``Retry-After`` or the upgrade budget.
    """

    retriable = True

    def __init__(
        self, message: str, *, status: int = 429, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        #: The HTTP status, 429.
        self.status = status
        #: Seconds to wait before the next upgrade, when known.
        self.retry_after = retry_after


class _CloseCodeError(OhipError):
    """An error that came from a WebSocket close code (``code``) and its reason."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        #: The WebSocket close code.
        self.code = code
        #: The close reason the server sent (at most 123 bytes; redacted).
        self.reason = reason


class SubscriptionError(_CloseCodeError):
    """Close 4400: a field or value of the subscription input is invalid."""


class ForbiddenError(_CloseCodeError):
    """Close 4403: the gateway forbids this subscription."""


class ConsumerConflictError(_CloseCodeError):
    """Close 4409 more often than allowed: another consumer holds this stream."""


class ConsumerAlreadyRunningError(OhipError):
    """Another consumer of this stream is running in this process or on this host."""


class ProtocolError(OhipError):
    """A frame broke the graphql-transport-ws protocol, or a command came in the wrong state.

    Not retriable: the stream reconnects by itself after a malformed frame, and raises this only
    once the frames at the same offset kept breaking the protocol.
    """


class MessageTooLargeError(_CloseCodeError):
    """Close 1009: a frame was larger than ``max_message_size``.

    Not retriable: the stream reconnects by itself after a 1009, and raises this only once the
    event at the same offset was too large again and again; raise ``max_message_size``.
    """


class EventValidationError(OhipError):
    """An event payload did not fit the model.

    ``raw`` is the frame's text as received; ``offset`` the event's offset when it was readable.
    """

    def __init__(self, message: str, *, raw: str, offset: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.offset = offset


class TransportError(OhipError):
    """The network failed: refused or dropped connection, DNS, timeout; or the token endpoint
    is down (HTTP 5xx, 408, 429).

    Retriable.

    Args:
        message: what failed, where, and after how many attempts.
        status: the HTTP status, when the failure was an HTTP answer (a token endpoint's 503).
    """

    retriable = True

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message)
        #: The HTTP status of the answer, or ``None`` when there was no HTTP answer.
        self.status = status


class CheckpointError(OhipError):
    """The checkpoint store cannot save or load: the message names the store and what to check.

    Processed offsets were not written; the events after the last successful commit come again
    on the next run (nothing is lost).
    """


class CheckpointUnavailableError(CheckpointError):
    """A transient store failure (a locked database, a lost database connection): the stream
    retries the commit with backoff before it gives up."""

    retriable = True


def describe_problems(
    errors: Iterable[Mapping[str, Any]],
    *,
    root: str,
    name: Callable[[tuple[Any, ...]], str] | None = None,
    limit: int | None = None,
) -> str:
    """The problems of a pydantic ``ValidationError`` (its ``errors()``) as one line:
    ``"where: what; where: what"``. ``where`` is the dotted location (``root`` when it is
    empty), or what ``name`` makes of the location; at most ``limit`` problems."""
    parts = []
    for number, error in enumerate(errors):
        if limit is not None and number >= limit:
            break
        loc = tuple(error.get("loc", ()))
        where = name(loc) if name is not None else ".".join(str(p) for p in loc) or root
        parts.append(f"{where}: {error.get('msg', 'invalid')}")
    return "; ".join(parts)
