"""The counters of a stream, read while it runs (metrics, status lines, tests)."""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["StreamStats"]


@dataclass
class StreamStats:
    """Counters of a stream: only what happened (a stop is no rotation and no reconnect)."""

    #: Events handed to the caller.
    events: int = 0
    #: Replayed events dropped (already delivered).
    duplicates: int = 0
    #: Events that did not fit the model (dead-lettered, skipped or raised).
    invalid: int = 0
    #: Events lost upstream, detected on resume (retention or the 24-hour resume limit).
    gaps: int = 0
    #: Times the gateway's offsets went back with events never seen (an offset reset).
    resets: int = 0
    #: Reconnections by cause ("rotation", "1006", "4409", "network", "http-429"...).
    reconnects: dict[str, int] = field(default_factory=dict)
    #: Planned rotations before the token expired.
    rotations: int = 0
    #: 4409 lockouts waited out.
    lockouts: int = 0
    #: Offset of the last event handed to the caller.
    last_offset: str | None = None
    #: Epoch time the current connection subscribed (None while disconnected).
    connected_since: float | None = None

    def count_reconnect(self, cause: str) -> None:
        """Count one reconnection for ``cause``."""
        self.reconnects[cause] = self.reconnects.get(cause, 0) + 1
