"""The one clock of a stream: every read of time and every sleep goes through it.

A stream reads two kinds of time: monotonic seconds for intervals (pings, liveness, backoff,
the upgrade budget) and wall-clock seconds for what outlives the process (``completed_at`` in a
checkpoint, token issue and expiry times). Tests inject a fake clock
(:class:`ohip_stream.testing.FakeClock`) so that a 60-minute token, a 120-second lockout or a
10-second gap pass in a few milliseconds, without patching anything.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

__all__ = ["Clock", "SystemClock", "TimerHandle", "wait_done"]


class TimerHandle(Protocol):
    """What :meth:`Clock.call_later` returns: the timer can be cancelled."""

    def cancel(self) -> None: ...


@runtime_checkable
class Clock(Protocol):
    """Time as a stream sees it."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (intervals only)."""
        ...

    def time(self) -> float:
        """Wall-clock seconds since the epoch (what is stored or compared with tokens)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` (cancellable)."""
        ...

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        """Call ``callback`` once, ``delay`` seconds from now, on the running event loop."""
        ...


class SystemClock:
    """The real clock: ``time.monotonic``, ``time.time``, ``asyncio.sleep`` and the running
    loop's ``call_later``."""

    __slots__ = ()

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    def call_later(self, delay: float, callback: Callable[[], None]) -> TimerHandle:
        return asyncio.get_running_loop().call_later(max(0.0, delay), callback)

    def __repr__(self) -> str:
        return "SystemClock()"


async def wait_done(task: asyncio.Future[None], clock: Clock, seconds: float) -> None:
    """Wait until ``task`` is done or ``seconds`` passed on ``clock`` (the task is left alone:
    neither cancelled nor its outcome raised)."""
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def finish(*_: object) -> None:
        if not done.done():
            done.set_result(None)

    timer = clock.call_later(seconds, finish)
    task.add_done_callback(finish)
    try:
        await done
    finally:
        timer.cancel()
        task.remove_done_callback(finish)
