"""A point-in-time view of a stream, for metrics, health checks and status lines.

Read from what the stream already keeps (no clock read or counter per event): metrics take a
snapshot when they are collected, a health check when it is asked.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ohip_stream._lifecycle import StreamState, Wait
from ohip_stream._stats import StreamStats

if TYPE_CHECKING:
    from ohip_stream._clock import Clock
    from ohip_stream._config import StreamConfig
    from ohip_stream._connector import Connector
    from ohip_stream._iteration import Iteration

__all__ = ["StreamSnapshot", "take_snapshot"]


@dataclass(frozen=True, slots=True)
class StreamSnapshot:
    """What a stream is doing and how far it got (times are wall-clock epoch seconds)."""

    #: The stream's id (a digest of gateway host, chain code and key: safe to print).
    stream_id: str
    #: The gateway host (and port, when not the default).
    gateway_host: str
    chain_code: str
    state: StreamState
    #: While waiting: what for and until when.
    waiting: Wait | None
    #: A copy of the stream's counters.
    stats: StreamStats
    #: The offset of the last committed checkpoint, and when it was written (None: never).
    checkpoint_offset: str | None
    checkpoint_updated_at: float | None
    #: When the stream's last connection was completed (the gap counts from there).
    completed_at: float | None
    #: The ``timestamp`` text of the event handed out last (as the gateway sent it), or None.
    last_event_timestamp: str | None
    #: When the current connection's token expires (None: no connection, or no expiry).
    token_expires_at: float | None
    #: Upgrades made with the application key in the budget's window, and the budget.
    upgrades_used: int
    upgrade_budget: tuple[int, float]
    #: Frames received and not yet taken by the caller's loop (it takes a read's frames
    #: at a time).
    buffered: int
    #: Now, on the stream's clock.
    taken_at: float


def take_snapshot(
    config: StreamConfig,
    *,
    state: StreamState,
    waiting: Wait | None,
    stats: StreamStats,
    iteration: Iteration | None,
    connector: Connector | None,
    clock: Clock,
) -> StreamSnapshot:
    """The snapshot of a stream from its parts (before ``__aenter__`` most fields are empty)."""
    copy = StreamStats(**{**vars(stats), "reconnects": dict(stats.reconnects)})
    offset = updated = completed = timestamp = expires = None
    buffered = used = 0
    if iteration is not None:
        checkpoint = iteration.commits.checkpoint
        offset, completed = checkpoint.offset, checkpoint.completed_at
        updated = checkpoint.updated_at or None
        last = iteration.last_event
        timestamp = last.timestamp if last is not None else None
        buffered = iteration.buffer.frames
    if connector is not None:
        completed = connector.completed_at()
        session = connector.session
        if session is not None and session.token is not None:
            expires = session.token.expires_at
        used = len(connector.budget)
    return StreamSnapshot(
        stream_id=config.stream_id,
        gateway_host=config.gateway.netloc,
        chain_code=config.chain_code,
        state=state,
        waiting=waiting,
        stats=copy,
        checkpoint_offset=offset,
        checkpoint_updated_at=updated,
        completed_at=completed,
        last_event_timestamp=timestamp,
        token_expires_at=expires,
        upgrades_used=used,
        upgrade_budget=config.timings.upgrade_budget,
        buffered=buffered,
        taken_at=clock.time(),
    )
