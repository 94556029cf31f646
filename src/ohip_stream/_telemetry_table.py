"""The table of metrics: each one's OpenTelemetry name, kind, unit, and how it is read from a
:class:`~ohip_stream._snapshot.StreamSnapshot` (see :mod:`ohip_stream._telemetry`).

Attributes are the stream's (``messaging.system``, ``messaging.destination.name`` = the chain
code, ``messaging.consumer.group.name`` = the application name), plus at most one of a small
fixed set (a reconnect cause, a state, a wait reason): never an offset, an id or a hotel.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import timezone
from typing import Any, Protocol

from ohip_stream._lifecycle import StreamState
from ohip_stream._models import parse_timestamp
from ohip_stream._snapshot import StreamSnapshot

__all__ = [
    "CHECKPOINT_RESUME_WINDOW",
    "CHECKPOINT_RETENTION",
    "MESSAGING_SYSTEM",
    "METRICS",
    "PROCESS_BUCKETS",
    "PROCESS_DURATION",
    "Attributes",
    "Observable",
    "Point",
    "Reading",
    "Spec",
    "Watched",
    "base_attributes",
    "readiness",
]

MESSAGING_SYSTEM = "ohip"
#: The server remembers a consumer's position for 24 hours (protocol section 10).
CHECKPOINT_RESUME_WINDOW = 24 * 3600.0
#: Events are kept for 7 days; older ones are lost for good (protocol section 6).
CHECKPOINT_RETENTION = 7 * 86400.0
#: The histogram of processing durations, one observation per commit batch.
PROCESS_DURATION = "messaging.process.duration"
#: Bucket bounds of ``messaging.process.duration``, as the conventions advise for durations.
PROCESS_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10)

#: States in which the stream holds a subscription (events flow, or the last ones drain).
_SUBSCRIBED = frozenset({StreamState.LIVE, StreamState.COMPLETING, StreamState.DRAINING})

#: Metric attributes (OpenTelemetry names; dots become underscores in Prometheus labels).
Attributes = dict[str, str]


class Observable(Protocol):
    """What telemetry reads of a stream (an :class:`~ohip_stream.EventStream` is one)."""

    @property
    def stream_id(self) -> str: ...

    def snapshot(self) -> StreamSnapshot: ...


@dataclass(frozen=True, slots=True)
class Point:
    """One value of a metric, with its attributes."""

    attributes: Attributes
    value: float


@dataclass(frozen=True, slots=True)
class Reading:
    """One metric at one collection: its OpenTelemetry name, kind, unit and points.

    ``kind`` is ``"counter"`` (monotonic: an observable counter) or ``"gauge"``.
    """

    name: str
    kind: str
    unit: str
    description: str
    points: tuple[Point, ...]


def readiness(state: StreamState, wait_reason: str | None, subscribed_before: bool) -> bool:
    """Whether a stream counts as ready: subscribed, or waiting the gap of a planned rotation.

    Not ready during a lockout (4409), a backoff, the upgrade budget, a 429, before the first
    subscription, and once stopping. ``CONNECTING`` after a planned rotation (the gap over, the
    next subscribe on its way) stays ready: ``subscribed_before`` says the previous verdict.
    """
    if state in _SUBSCRIBED:
        return True
    if state is StreamState.WAITING:
        return wait_reason == "gap"
    if state is StreamState.CONNECTING:
        return subscribed_before
    return False


@dataclass
class Watched:
    """What telemetry remembers of one stream between collections."""

    stream: Observable
    application: str
    chain_code: str
    #: The last count of events seen, and when (on the stream's clock) it last changed.
    events: int = -1
    events_changed_at: float | None = None
    #: The last readiness verdict (``CONNECTING`` after a planned rotation inherits it).
    ready: bool = False
    #: The last checkpointed offset seen, and since when it has not moved.
    offset: str | None = None
    offset_since: float | None = None

    def observe(self, snap: StreamSnapshot) -> None:
        """Note what moved since the last collection (on the stream's clock)."""
        if snap.stats.events != self.events:
            self.events = snap.stats.events
            self.events_changed_at = snap.taken_at
        if self.offset_since is None or snap.checkpoint_offset != self.offset:
            first = self.offset_since is None
            self.offset = snap.checkpoint_offset
            # The first look knows only when the checkpoint was last written (it may have been
            # written by an earlier run: the age goes on across restarts).
            written = snap.checkpoint_updated_at
            self.offset_since = written if first and written is not None else snap.taken_at
        self.ready = readiness(
            snap.state, snap.waiting.reason if snap.waiting is not None else None, self.ready
        )

    #: Durations of commit batches: counts per bucket (the last one is +Inf), sum and count.
    process_buckets: list[int] = field(default_factory=lambda: [0] * (len(PROCESS_BUCKETS) + 1))
    process_sum: float = 0.0
    process_count: int = 0


def base_attributes(application: str, chain_code: str) -> Attributes:
    return {
        "messaging.system": MESSAGING_SYSTEM,
        "messaging.destination.name": chain_code,
        "messaging.consumer.group.name": application,
    }


# --- the table of metrics -------------------------------------------------------------------

Reader = Callable[[StreamSnapshot, Watched, Attributes], Iterable[Point]]


@dataclass(frozen=True, slots=True)
class Spec:
    name: str
    kind: str
    unit: str
    description: str
    read: Reader


def _one(value: Callable[[StreamSnapshot, Watched], float | None]) -> Reader:
    """A reader of one point with the stream's attributes (no point when ``value`` is None)."""

    def read(snap: StreamSnapshot, watched: Watched, base: Attributes) -> Iterable[Point]:
        found = value(snap, watched)
        return () if found is None else (Point(base, float(found)),)

    return read


def _consumed(snap: StreamSnapshot, _: Watched, base: Attributes) -> Iterable[Point]:
    attrs = {**base, "messaging.operation.name": "receive"}
    # Events that did not fit the model were received all the same, and failed
    # (error.type is conditionally required on a failed operation).
    return (
        Point(attrs, float(snap.stats.events)),
        Point({**attrs, "error.type": "invalid_event"}, float(snap.stats.invalid)),
    )


def _reconnects(snap: StreamSnapshot, _: Watched, base: Attributes) -> Iterable[Point]:
    return tuple(
        Point({**base, "ohip.reconnect.cause": cause}, float(count))
        for cause, count in sorted(snap.stats.reconnects.items())
    )


def _states(snap: StreamSnapshot, _: Watched, base: Attributes) -> Iterable[Point]:
    return tuple(
        Point({**base, "ohip.stream.state": state.value}, 1.0 if snap.state is state else 0.0)
        for state in StreamState
    )


def _waiting(snap: StreamSnapshot, _: Watched, base: Attributes) -> Iterable[Point]:
    if snap.waiting is None:
        return ()
    left = max(0.0, snap.waiting.until - snap.taken_at)
    return (Point({**base, "ohip.wait.reason": snap.waiting.reason}, left),)


def _idle(snap: StreamSnapshot, watched: Watched) -> float | None:
    # Seen by collection: the time since the count of events last changed between two
    # collections (the stream keeps no clock read per event).
    since = watched.events_changed_at
    return None if since is None else max(0.0, snap.taken_at - since)


def _lag(snap: StreamSnapshot, _: Watched) -> float | None:
    moment = parse_timestamp(snap.last_event_timestamp)
    if moment is None:
        return None
    if moment.tzinfo is None:
        # OHIP's timestamps name no zone: taken as UTC (a constant offset in the lag is the
        # zone of the environment; not clamped, so that it shows).
        moment = moment.replace(tzinfo=timezone.utc)
    return snap.taken_at - moment.timestamp()


def _checkpoint_age(snap: StreamSnapshot, watched: Watched) -> float | None:
    # How long the committed position has stood still while events may wait behind it: the
    # events after it are lost when they pass the 7-day retention, and the server forgets the
    # position after 24 hours. A stream that is subscribed with nothing buffered is caught up
    # (no newer position exists), so its age is 0: a quiet chain raises no alert.
    if snap.checkpoint_offset is None or watched.offset_since is None:
        return None
    if snap.state in _SUBSCRIBED and snap.buffered == 0:
        return 0.0
    return max(0.0, snap.taken_at - watched.offset_since)


def _window_left(window: float) -> Callable[[StreamSnapshot, Watched], float | None]:
    def left(snap: StreamSnapshot, watched: Watched) -> float | None:
        age = _checkpoint_age(snap, watched)
        return None if age is None else window - age

    return left


def _token_left(snap: StreamSnapshot, _: Watched) -> float | None:
    expires = snap.token_expires_at
    return None if expires is None else max(0.0, expires - snap.taken_at)


def _counter(name: str, unit: str, description: str, value: Callable[[Any], int]) -> Spec:
    return Spec(name, "counter", unit, description, _one(lambda s, _w: value(s.stats)))


METRICS: Sequence[Spec] = (
    Spec(
        "messaging.client.consumed.messages",
        "counter",
        "{message}",
        "Events received from the gateway: handed to the application, or failed (error.type)",
        _consumed,
    ),
    _counter(
        "ohip.stream.duplicates", "{event}", "Replayed events dropped", lambda s: s.duplicates
    ),
    _counter(
        "ohip.stream.dead_letters",
        "{event}",
        "Events that did not fit the model (dead-lettered, skipped or raised)",
        lambda s: s.invalid,
    ),
    _counter(
        "ohip.stream.gaps",
        "{event}",
        "Events lost upstream, detected on resume (retention or the 24-hour resume window)",
        lambda s: s.gaps,
    ),
    _counter(
        "ohip.stream.offset_resets",
        "{reset}",
        "Times the gateway's offsets went back with events never seen",
        lambda s: s.resets,
    ),
    Spec(
        "ohip.stream.reconnects",
        "counter",
        "{reconnect}",
        "Reconnections by cause (rotation, 1006, 4409, network, http-429...)",
        _reconnects,
    ),
    _counter("ohip.stream.lockouts", "{lockout}", "4409 lockouts waited out", lambda s: s.lockouts),
    _counter(
        "ohip.stream.rotations",
        "{rotation}",
        "Planned rotations before the token expired",
        lambda s: s.rotations,
    ),
    Spec(
        "ohip.stream.state",
        "gauge",
        "1",
        "1 for the stream's current state, 0 for the others",
        _states,
    ),
    Spec(
        "ohip.stream.subscribed",
        "gauge",
        "1",
        "1 while the stream holds a subscription (live, completing, draining)",
        _one(lambda s, _w: 1.0 if s.state in _SUBSCRIBED else 0.0),
    ),
    Spec(
        "ohip.stream.ready",
        "gauge",
        "1",
        "1 when subscribed or waiting the gap of a planned rotation (what /readyz checks)",
        _one(lambda _s, w: 1.0 if w.ready else 0.0),
    ),
    Spec(
        "ohip.stream.wait.remaining",
        "gauge",
        "s",
        "While waiting (gap, lockout, backoff, budget, rate_limited): seconds left",
        _waiting,
    ),
    Spec(
        "ohip.stream.event.idle",
        "gauge",
        "s",
        "Seconds since the count of events last changed, as seen by collections",
        _one(_idle),
    ),
    Spec(
        "ohip.stream.event.lag",
        "gauge",
        "s",
        "Now minus the timestamp of the last event handed out (a timestamp without a zone: UTC)",
        _one(_lag),
    ),
    Spec(
        "ohip.checkpoint.age",
        "gauge",
        "s",
        "Seconds the committed offset has not moved while events may wait (0 when caught up)",
        _one(_checkpoint_age),
    ),
    Spec(
        "ohip.checkpoint.resume_window.remaining",
        "gauge",
        "s",
        "Seconds until the checkpoint is older than the 24-hour resume window (negative: past)",
        _one(_window_left(CHECKPOINT_RESUME_WINDOW)),
    ),
    Spec(
        "ohip.checkpoint.retention.remaining",
        "gauge",
        "s",
        "Seconds until the checkpoint is older than the 7-day retention (negative: events lost)",
        _one(_window_left(CHECKPOINT_RETENTION)),
    ),
    Spec(
        "ohip.token.remaining",
        "gauge",
        "s",
        "Seconds left on the current connection's token",
        _one(_token_left),
    ),
    Spec(
        "ohip.upgrades.used",
        "gauge",
        "{upgrade}",
        "Upgrades made with the application key in the budget's window",
        _one(lambda s, _w: s.upgrades_used),
    ),
    Spec(
        "ohip.upgrades.limit",
        "gauge",
        "{upgrade}",
        "Upgrades the budget allows per window",
        _one(lambda s, _w: s.upgrade_budget[0]),
    ),
    Spec(
        "ohip.stream.buffered",
        "gauge",
        "{message}",
        "Frames received and not yet handed out",
        _one(lambda s, _w: s.buffered),
    ),
)
