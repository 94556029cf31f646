"""Where a stream stands: one state, with the transitions it may take written down.

::

    CONNECTING --subscribed--> LIVE --rotation due, buffer above low water--> COMPLETING
    LIVE / COMPLETING --complete sent--> DRAINING --server closed--> WAITING (the gap)
    CONNECTING / LIVE / COMPLETING / DRAINING --failure--> WAITING (backoff, lockout, budget)
    WAITING --wait over--> CONNECTING
    LIVE / COMPLETING / DRAINING --ended, nothing to wait for--> CONNECTING
    any but CLOSED --request_stop() / leaving the block--> STOPPING --> CLOSED

A planned rotation goes LIVE -> (COMPLETING ->) DRAINING -> WAITING -> CONNECTING; a stop goes
to STOPPING from anywhere and never connects again (a stop is no rotation and no reconnect).
Pure: no asyncio, no clock; the stream moves it and readers (status lines, health checks) read it.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["Lifecycle", "StreamState", "Wait"]


class StreamState(enum.Enum):
    """The state of an :class:`~ohip_stream.EventStream`."""

    #: Fetching a token, upgrading, waiting for ``connection_ack``, subscribing.
    CONNECTING = "connecting"
    #: Subscribed: events flow.
    LIVE = "live"
    #: A rotation is due; the stream waits for its buffer to drain below the low-water mark
    #: before it sends ``complete``.
    COMPLETING = "completing"
    #: ``complete`` sent: the events in flight still come, until the server closes.
    DRAINING = "draining"
    #: Between connections: the gap after a complete, a backoff, a lockout or the upgrade budget
    #: (:attr:`Lifecycle.wait` says which, and until when).
    WAITING = "waiting"
    #: A stop was asked: the stream completes, drains, commits and never connects again.
    STOPPING = "stopping"
    #: Released.
    CLOSED = "closed"


_S = StreamState
_ALLOWED: dict[StreamState, frozenset[StreamState]] = {
    _S.CONNECTING: frozenset({_S.LIVE, _S.WAITING, _S.STOPPING, _S.CLOSED}),
    _S.LIVE: frozenset(
        {_S.COMPLETING, _S.DRAINING, _S.WAITING, _S.CONNECTING, _S.STOPPING, _S.CLOSED}
    ),
    _S.COMPLETING: frozenset({_S.DRAINING, _S.WAITING, _S.CONNECTING, _S.STOPPING, _S.CLOSED}),
    _S.DRAINING: frozenset({_S.WAITING, _S.CONNECTING, _S.STOPPING, _S.CLOSED}),
    _S.WAITING: frozenset({_S.CONNECTING, _S.STOPPING, _S.CLOSED}),
    _S.STOPPING: frozenset({_S.CLOSED}),
    _S.CLOSED: frozenset(),
}


@dataclass(frozen=True, slots=True)
class Wait:
    """What a waiting stream waits for.

    ``reason`` is one of ``"gap"`` (the gap after a complete), ``"lockout"`` (after a 4409),
    ``"budget"`` (the upgrade budget of the application key), ``"rate_limited"`` (after a 429),
    ``"backoff"`` (after any other failure); ``until`` is wall-clock epoch seconds; ``detail``
    the cause (the last error, redacted), or ``""``.
    """

    reason: str
    until: float
    detail: str = ""


class Lifecycle:
    """The state of one stream and what it waits for."""

    __slots__ = ("state", "stopping", "wait")

    def __init__(self) -> None:
        self.state = StreamState.CONNECTING
        self.wait: Wait | None = None
        #: Whether a stop was asked (or the stream is closed): read per event, so kept as a
        #: plain attribute.
        self.stopping = False

    def to(self, state: StreamState, wait: Wait | None = None) -> bool:
        """Move to ``state`` if the table allows it; False (and no change) if it does not.

        A stream that is stopping or closed never leaves that path: a late event (the server's
        close after a stop's ``complete``) cannot take it back to connecting.
        """
        if state is self.state:
            self.wait = wait
            return True
        if state not in _ALLOWED[self.state]:
            return False
        self.state = state
        self.wait = wait
        self.stopping = state is StreamState.STOPPING or state is StreamState.CLOSED
        return True

    def __repr__(self) -> str:
        return f"Lifecycle({self.state.value})"
