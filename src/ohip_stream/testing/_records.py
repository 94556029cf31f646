"""What the emulator saw: one record per WebSocket connection, per upgrade request, per refusal.

The server thread fills these in; :class:`~ohip_stream.testing.Emulator` hands out copies
(:meth:`ConnectionRecord.snapshot`), so a test reads them without racing the server. Times are
on the emulator's clock (``clock=``).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ConnectionRecord", "SubscribeRejection", "UpgradeRecord"]

ClosedBy = Literal["client", "server", "abort"]


@dataclass
class ConnectionRecord:
    """One upgrade request that reached the WebSocket stage, from its opening to its close.

    ``client_messages`` holds ``(time, message type)`` for every frame the client sent (``"?"``
    for a frame that was not a JSON object with a string ``type``, ``"binary"`` for binary
    frames). ``events_after_complete`` counts the in-flight events sent after the client's
    ``complete`` (at most ``complete_inflight``). ``close_reason`` is the full text, even
    where the wire carried it truncated to 123 bytes. ``closed_by`` is ``"client"`` when the
    client closed or vanished (then ``close_code`` is 1006), ``"server"`` when the emulator
    closed, ``"abort"`` when the emulator dropped the connection on purpose
    (``drop()``, ``restart()``).

    ``stream_key`` (the stream's id, as the ``connection`` query reports it),
    ``subscribed_monotonic`` and ``closed_monotonic`` (``time.monotonic()`` seconds, whatever the
    emulator clock does) tell when an accepted subscription started and when its socket began to
    close, which is when the emulator stops counting it as the stream's holder: :meth:`overlaps`
    uses them to tell whether two subscriptions of one stream were ever open at once.
    ``server_completed_at`` is when the emulator sent ``complete`` itself
    (``complete_without_close()``).
    """

    id: int
    opened_at: float
    client_messages: list[tuple[float, str]] = field(default_factory=list)
    initialised_at: float | None = None
    subscribe_inputs: list[dict[str, Any]] = field(default_factory=list)
    subscription_id: str | None = None
    chain_code: str | None = None
    subscribed_at: float | None = None
    completed_at: float | None = None
    closed_at: float | None = None
    close_code: int | None = None
    close_reason: str | None = None
    closed_by: ClosedBy | None = None
    complete_before_close: bool = False
    events_sent: int = 0
    events_after_complete: int = 0
    first_offset_sent: str | None = None
    last_offset_sent: str | None = None
    pings_received: int = 0
    pongs_sent: int = 0
    stream_key: str | None = None
    subscribed_monotonic: float | None = None
    closed_monotonic: float | None = None
    server_completed_at: float | None = None

    @property
    def message_types(self) -> list[str]:
        """The types of the client's frames, in order."""
        return [kind for _, kind in self.client_messages]

    @property
    def open(self) -> bool:
        """Whether the connection was still open when this snapshot was taken."""
        return self.closed_by is None

    def overlaps(self, other: ConnectionRecord) -> bool:
        """Whether this subscription and ``other`` held the same stream at the same moment.

        Both must have been accepted (refused subscriptions hold nothing, protocol §7); a
        subscription still open counts as open until now.
        """
        if self.stream_key is None or self.stream_key != other.stream_key:
            return False
        if self.subscribed_monotonic is None or other.subscribed_monotonic is None:
            return False
        end = self.closed_monotonic if self.closed_monotonic is not None else math.inf
        other_end = other.closed_monotonic if other.closed_monotonic is not None else math.inf
        return self.subscribed_monotonic < other_end and other.subscribed_monotonic < end

    def snapshot(self) -> ConnectionRecord:
        """A copy that later changes on the server do not touch."""
        return dataclasses.replace(
            self,
            client_messages=list(self.client_messages),
            subscribe_inputs=[dict(item) for item in self.subscribe_inputs],
        )


@dataclass(frozen=True)
class UpgradeRecord:
    """One request to the WebSocket endpoint (or any wrong path), refused or not.

    ``status`` is the HTTP status answered: 101 for an accepted upgrade, 400, 429, or what
    ``reject_upgrades()`` asked for.
    """

    at: float
    status: int


@dataclass(frozen=True)
class SubscribeRejection:
    """A ``subscribe`` the emulator refused by closing the connection."""

    at: float
    connection_id: int
    code: int
    reason: str
