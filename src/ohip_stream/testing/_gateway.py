"""The gateway's state and rules, pure: no aiohttp, no asyncio, no sockets.

Everything OHIP decides about a stream lives here, with the time passed in as wall seconds on
the emulator clock: where a subscription starts (inclusive offset, ``offsetType: highest``, the
24-hour resume position, 7-day retention), which events it gets (``hotelCode``, ``delta``), who
holds a stream and why a second subscriber gets 4409 (one consumer, the gap after ``complete``,
the hold after a drop), and the upgrade budget behind HTTP 429. Connections are named by their
record id, so the handlers stay the only place that knows about sockets.
"""

from __future__ import annotations

import hashlib
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ohip_stream.testing._eventlog import ChainLog

__all__ = [
    "MAX_CLOSE_REASON_BYTES",
    "EmulatorConfig",
    "Gateway",
    "StartPlan",
    "StreamState",
    "UpgradeBudget",
    "hash_app_key",
    "hotel_filter",
    "truncate_reason",
]

MAX_CLOSE_REASON_BYTES = 123  # RFC 6455: a close frame's payload is at most 125 bytes


def hash_app_key(app_key: str) -> str:
    """The ``key`` query parameter for ``app_key``: lower-case hex SHA-256 (protocol §1)."""
    return hashlib.sha256(app_key.encode("utf-8")).hexdigest()


def truncate_reason(reason: str, limit: int = MAX_CLOSE_REASON_BYTES) -> bytes:
    """``reason`` as UTF-8, cut to ``limit`` bytes without splitting a character (protocol §5)."""
    data = reason.encode("utf-8")
    if len(data) <= limit:
        return data
    return data[:limit].decode("utf-8", "ignore").encode("utf-8")


@dataclass
class EmulatorConfig:
    """Every setting of the emulator (seconds on the emulator clock unless said otherwise)."""

    host: str = "127.0.0.1"
    port: int = 0
    chain_code: str = "OHIPCN"
    token_ttl: float = 3600.0
    complete_gap: float = 10.0
    hold_after_drop: float = 0.0
    init_timeout: float = 5.0  # loop clock
    idle_timeout: float = 300.0  # loop clock
    resume_ttl: float = 86400.0
    retention: float = 7 * 86400.0
    upgrade_budget: tuple[int, float] = (150, 120.0)
    server_ping_interval: float = 30.0  # loop clock
    complete_inflight: int = 3
    first_offset: int = 1
    seed: int | None = 0
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None
    fast_replay: bool = False


class StreamState:
    """One stream: (application key, chain code). The emulator has one application key."""

    def __init__(self, chain_code: str, stream_id: str) -> None:
        self.chain_code = chain_code
        self.id = stream_id
        self.holder: int | None = None  # the connection whose subscription holds the stream
        self.held_until = 0.0
        self.last_complete_at: float | None = None
        self.resume_offset: int | None = None
        self.resume_since: float | None = None
        self.resume_owner: int | None = None  # the closing connection still sending


@dataclass(frozen=True)
class StartPlan:
    """What an accepted subscription sends: from ``position`` on, filtered and shaped."""

    position: int
    hotels: frozenset[str] | None
    delta: bool

    def passes(self, hotel_id: str | None) -> bool:
        """Whether an event of ``hotel_id`` is sent: ``hotelCode`` filters, and an event
        without a hotel (a chain-level record such as a profile) passes no filter (§2)."""
        return self.hotels is None or hotel_id in self.hotels


def hotel_filter(hotel_code: Any) -> frozenset[str] | None:
    """The hotels a ``hotelCode`` input lets through (``None``: every event, protocol §2)."""
    if not isinstance(hotel_code, str):
        return None
    return frozenset(code.strip() for code in hotel_code.split(",") if code.strip())


class UpgradeBudget:
    """At most ``count`` upgrades per ``window`` seconds, else HTTP 429 (protocol §1, §10)."""

    def __init__(self, count: int, window: float) -> None:
        self.count = count
        self.window = window
        self._times: deque[float] = deque()

    def admit(self, now: float) -> int | None:
        """Count an upgrade at ``now``; ``None`` if allowed, else the ``Retry-After`` seconds.

        A refused attempt counts too: a client that hammers stays refused.
        """
        times = self._times
        while times and times[0] <= now - self.window:
            times.popleft()
        times.append(now)
        if len(times) <= self.count:
            return None
        return max(1, int(self.window - (now - times[0]) + 0.999))


class Gateway:
    """The streams and logs of one emulated gateway (one application key)."""

    def __init__(self, config: EmulatorConfig, key_hash: str) -> None:
        self.config = config
        self.key_hash = key_hash
        self.logs: dict[str, ChainLog] = {}
        self.streams: dict[str, StreamState] = {}
        self.budget = UpgradeBudget(*config.upgrade_budget)

    # --- logs and streams ------------------------------------------------------------------

    def log(self, chain_code: str) -> ChainLog:
        """The log of ``chain_code``, made empty on first use."""
        found = self.logs.get(chain_code)
        if found is None:
            found = ChainLog(chain_code, self.config.first_offset)
            self.logs[chain_code] = found
        return found

    def stream(self, chain_code: str) -> StreamState:
        """The stream of ``chain_code`` (its id: a digest of the key hash and the chain)."""
        found = self.streams.get(chain_code)
        if found is None:
            digest = hashlib.sha256(f"{self.key_hash}|{chain_code}".encode()).hexdigest()
            found = StreamState(chain_code, f"stream-{digest[:16]}")
            self.streams[chain_code] = found
        return found

    def status_stream(self) -> StreamState:
        """The stream a ``connection`` query reports: a held one, else the default chain's."""
        for stream in self.streams.values():
            if stream.holder is not None:
                return stream
        return self.stream(self.config.chain_code)

    def connection_status(self) -> dict[str, str]:
        """The answer to ``query { connection { id status } }`` (protocol §2, §7)."""
        stream = self.status_stream()
        return {"id": stream.id, "status": "Active" if stream.holder is not None else "Inactive"}

    def oldest_retained(self, chain_code: str, now: float) -> int:
        """The first offset still retained at ``now`` (protocol §6: 7 days by default)."""
        return self.log(chain_code).first_retained(now - self.config.retention)

    # --- the upgrade budget ------------------------------------------------------------------

    def upgrade(self, now: float) -> int | None:
        """``None`` if an upgrade at ``now`` is allowed, else its ``Retry-After`` (HTTP 429)."""
        if self.config.fast_replay:
            return None
        return self.budget.admit(now)

    # --- subscribing ---------------------------------------------------------------------------

    def admit(self, connection_id: int, chain_code: str, now: float) -> str | None:
        """Why a subscription to ``chain_code`` must be refused with 4409, or ``None``."""
        if self.config.fast_replay:
            return None
        stream = self.stream(chain_code)
        holder = stream.holder
        if holder is not None and holder != connection_id:
            # protocol §7: one consumer per stream
            return (
                f"Conflict: stream {chain_code} already has a consumer "
                f"(connection {holder}); only one consumer per stream"
            )
        if now < stream.held_until:
            # protocol §7: the stream stays held for hold_after_drop after an abrupt drop
            return f"Conflict: stream {chain_code} is still held after an abrupt disconnect"
        last = stream.last_complete_at
        gap = self.config.complete_gap
        if last is not None and now - last < gap:
            # protocol §4: wait complete_gap between a complete and the next subscribe
            return (
                f"Conflict: subscribed too soon after complete ({now - last:.3g} s; wait {gap:g} s)"
            )
        return None

    def start_position(self, chain_code: str, values: Mapping[str, Any], now: float) -> int:
        """The first offset a subscription with input ``values`` gets at ``now`` (protocol §6)."""
        log = self.log(chain_code)
        stream = self.stream(chain_code)
        oldest = self.oldest_retained(chain_code, now)
        offset = values.get("offset")
        if offset is not None:
            return max(int(offset), oldest)  # inclusive replay, within retention
        if values.get("offsetType") == "highest":
            # "highest" starts AT the newest event (it is sent), then live events; with an
            # empty log, the next event published
            return max(log.next_offset - 1, oldest) if log.events else log.next_offset
        since = stream.resume_since
        if (
            stream.resume_offset is not None
            and since is not None
            and now - since < self.config.resume_ttl
        ):
            # without an offset: resume where this stream's last connection stopped (24 h)
            return max(stream.resume_offset, oldest)
        return oldest  # first ever (or past the resume window): the oldest retained event

    def accept(
        self, connection_id: int, chain_code: str, values: Mapping[str, Any], now: float
    ) -> StartPlan:
        """Take the stream for ``connection_id`` (checked by :meth:`admit`); what to send."""
        if not self.config.fast_replay:
            self.stream(chain_code).holder = connection_id
        return StartPlan(
            position=self.start_position(chain_code, values, now),
            hotels=hotel_filter(values.get("hotelCode")),
            delta=bool(values.get("delta")),
        )

    def complete(self, chain_code: str, now: float) -> None:
        """A ``complete`` for the stream at ``now``: the gap is counted from here (§4)."""
        self.stream(chain_code).last_complete_at = now

    def release(
        self,
        connection_id: int,
        chain_code: str,
        *,
        dropped: bool,
        resume_position: int | None,
        at: float,
    ) -> None:
        """The connection's socket closed at ``at``: free the stream, remember the position.

        Called when the close begins and again when the connection is gone (the sender may
        have sent one more event in between); a drop (1006) holds the stream for
        ``hold_after_drop``.
        """
        stream = self.stream(chain_code)
        if stream.holder == connection_id:
            # protocol §7: held only while the socket is open
            stream.holder = None
            if dropped:
                stream.held_until = at + self.config.hold_after_drop
        if resume_position is not None and stream.resume_owner in (None, connection_id):
            # protocol §6: the next subscribe without an offset resumes after the last event sent
            stream.resume_offset = resume_position
            stream.resume_since = at
            stream.resume_owner = connection_id

    def forget(self, connection_id: int, chain_code: str) -> None:
        """The connection is gone: later closes may set the resume position again."""
        stream = self.stream(chain_code)
        if stream.resume_owner == connection_id:
            stream.resume_owner = None
