"""The errors ohip-stream raises.

Every error the library raises is an :class:`OhipError`; lower-layer errors (httpx, websockets,
OS, TLS) are mapped onto this tree where they are caught, with ``raise ... from exc``.
Each class says whether retrying the same operation can help (``retriable``)::

    OhipError
    ├── ConfigurationError            bad settings; fix them (not retriable)
    ├── AuthenticationError           token endpoint refused, or 4401 twice in a row
    ├── ConnectionRejectedError       HTTP 400 on the WebSocket upgrade (key hash, URL, approval)
    ├── RateLimitedError              HTTP 429 on the upgrade: too many upgrades (retriable)
    ├── SubscriptionError             close 4400: the subscription input is invalid
    ├── ForbiddenError                close 4403
    ├── ConsumerConflictError         close 4409 more often than ``Timings.max_lockouts``
    ├── ConsumerAlreadyRunningError   the local guard: this stream has a consumer already
    ├── ProtocolError                 a frame that breaks graphql-transport-ws (retriable)
    ├── MessageTooLargeError          close 1009: a frame above ``max_message_size``
    ├── EventValidationError          an event payload that does not fit the model (``.raw``)
    ├── CheckpointError               the checkpoint store failed for good (file gone, not a store)
    │   └── CheckpointUnavailableError    a transient store failure: locked, busy (retriable)
    └── TransportError                network, DNS, abrupt drops (retriable)

Messages never contain secrets: no client secret, password, access token or application key.
"""

from __future__ import annotations

__all__ = [
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
    retriable: bool = False


class ConfigurationError(OhipError, ValueError):
    """A setting is missing or invalid; the message names it and says how to fix it."""


class AuthenticationError(OhipError):
    """The token endpoint refused the credentials, or the gateway refused the token twice.

    ``status`` is the HTTP status, ``code`` the close code (4401), ``error`` and
    ``error_description`` what the server said, when it said anything.
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
        self.status = status
        self.code = code
        self.error = error
        self.error_description = error_description


class ConnectionRejectedError(OhipError):
    """HTTP 400 on the upgrade: wrong key hash or URL, unapproved subscription, streaming off."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


class RateLimitedError(OhipError):
    """HTTP 429 on the upgrade: more than 150 upgrade requests in 2 minutes."""

    retriable = True

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class _CloseCodeError(OhipError):
    """An error that came from a WebSocket close code."""

    def __init__(self, message: str, *, code: int | None = None, reason: str = "") -> None:
        super().__init__(message)
        self.code = code
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
    """A frame broke the graphql-transport-ws protocol, or a command came in the wrong state."""

    retriable = True


class MessageTooLargeError(_CloseCodeError):
    """Close 1009: a frame was larger than ``max_message_size``."""

    retriable = True


class EventValidationError(OhipError):
    """An event payload did not fit the model.

    ``raw`` is the frame's text as received; ``offset`` the event's offset when it was readable.
    """

    def __init__(self, message: str, *, raw: str, offset: str | None = None) -> None:
        super().__init__(message)
        self.raw = raw
        self.offset = offset


class TransportError(OhipError):
    """The network failed: refused or dropped connection, DNS, timeout."""

    retriable = True


class CheckpointError(OhipError):
    """The checkpoint store cannot save or load: the message names the store and what to check.

    Processed offsets were not written; the events after the last successful commit come again
    on the next run (nothing is lost).
    """


class CheckpointUnavailableError(CheckpointError):
    """A transient store failure (a locked database, a lost database connection): the stream
    retries the commit with backoff before it gives up."""

    retriable = True
