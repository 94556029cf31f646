"""The status line of ``tail``: the stream's state, what it waits for (with a countdown), and
the counters.

It reads ``stream.state`` (an enum whose ``value`` is "connecting", "live", "completing",
"draining", "waiting", "stopping" or "closed") and ``stream.waiting`` (``None``, or an object
with ``reason``, ``until`` in wall-clock epoch seconds and ``detail``, the last error already
redacted) when the stream has them, and falls back on ``stream.stats`` when it does not.
"""

from __future__ import annotations

import asyncio
import sys
import time
from collections.abc import Callable
from typing import Any, TextIO

from ohip_stream._cli._common import PROG, format_reconnects

__all__ = ["StatusLine", "plural", "waiting_text"]

# What each wait is, in the words of the status line.
_WAIT_LABELS = {
    "gap": "the gap after the last connection completed",
    "lockout": "the end of a lockout (4409: another connection holds the stream)",
    "budget": "the upgrade budget (too many connections in the window)",
    "backoff": "the next reconnect (backoff)",
    "rate_limited": "the gateway's rate limit (429)",
}


def plural(count: int, noun: str) -> str:
    """``1 event``, ``2 events``."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def waiting_text(waiting: Any, now: float) -> str:
    """``waiting for <what>, <n> s left (last error: ...)`` for a ``stream.waiting`` object."""
    reason = str(getattr(waiting, "reason", "") or "")
    label = _WAIT_LABELS.get(reason, reason or "the gateway")
    text = f"waiting for {label}"
    until = getattr(waiting, "until", None)
    if isinstance(until, (int, float)):
        text += f", {max(0.0, until - now):.0f} s left"
    detail = getattr(waiting, "detail", None)
    if detail:
        text += f" (last error: {' '.join(str(detail).split())})"
    return text


class StatusLine:
    """Progress on stderr, at most once a second while something changes or a wait counts
    down. ``clock`` is the wall clock (for ``waiting.until``); ``monotonic`` measures rates."""

    def __init__(
        self,
        stream: Any,
        out: TextIO | None = None,
        *,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.stream = stream
        self._out = out
        self._clock = clock
        self._monotonic = monotonic
        self._started = monotonic()
        self._last_events = 0
        self._last_time = self._started
        self._last_key: tuple[object, ...] = ()
        self._ever_connected = False

    def state(self) -> str:
        """The stream's state; without ``stream.state``, what its counters say."""
        stats = self.stream.stats
        if stats.connected_since is not None:
            self._ever_connected = True
        state = getattr(self.stream, "state", None)
        value = getattr(state, "value", state)
        if isinstance(value, str) and value:
            if value == "connecting" and self._ever_connected:
                return "reconnecting"
            return value
        if stats.connected_since is not None:
            return "live"
        # Never "reconnecting" before the first connection.
        return "reconnecting" if self._ever_connected else "connecting"

    def line(self, *, final: bool = False) -> str:
        stats = self.stream.stats
        now = self._monotonic()
        if final:
            # The run's average, not the last interval's.
            rate = stats.events / max(now - self._started, 1e-9)
            head = f"stopped after {now - self._started:.1f} s"
        else:
            rate = (stats.events - self._last_events) / max(now - self._last_time, 1e-9)
            head = self.state()
            waiting = getattr(self.stream, "waiting", None)
            if waiting is not None:
                head += ", " + waiting_text(waiting, self._clock())
        self._last_events = stats.events
        self._last_time = now
        return (
            f"{PROG}: {head}, {plural(stats.events, 'event')} "
            f"({rate:.1f}/s{' on average' if final else ''}), last offset "
            f"{stats.last_offset or '-'}, reconnects {format_reconnects(stats.reconnects)}"
            + (f", duplicates dropped {stats.duplicates}" if stats.duplicates else "")
            + (f", lost upstream {stats.gaps}" if stats.gaps else "")
        )

    def _key(self) -> tuple[object, ...]:
        stats = self.stream.stats
        waiting = getattr(self.stream, "waiting", None)
        return (
            stats.events,
            tuple(sorted(stats.reconnects.items())),
            self.state(),
            stats.duplicates,
            stats.gaps,
            None if waiting is None else (getattr(waiting, "reason", None), self._tick(waiting)),
        )

    def _tick(self, waiting: Any) -> int:
        """Which step of a wait's countdown this is: every 10 s, every second in the last 10 s
        (a line a second through a 2-minute lockout would bury the rest)."""
        until = getattr(waiting, "until", None)
        if not isinstance(until, (int, float)):
            return 0
        rest = max(0.0, until - self._clock())
        return int(rest) if rest < 10 else 10 + int(rest // 10)

    def report(self, *, final: bool = False) -> None:
        """Write the line when something changed (always when ``final``)."""
        key = self._key()
        if key == self._last_key and not final:
            return  # quiet while nothing changes
        self._last_key = key
        out = self._out if self._out is not None else sys.stderr
        out.write(self.line(final=final) + "\n")
        out.flush()

    async def run(self, interval: float = 1.0) -> None:
        while True:
            await asyncio.sleep(interval)
            self.report()
