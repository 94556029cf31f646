"""A fake clock for tests: time stands still until the test moves it.

.. code-block:: python

    clock = FakeClock()
    stream = use_clock(EventStream(...), clock)   # before entering the stream
    await clock.advance(120)                      # a 4409 lockout passes in microseconds

Sleeps and timers of the code under test wait for :meth:`FakeClock.advance`, which fires them in
order of their deadline, letting the event loop run the woken tasks after each one (so a task
that sleeps again within the advanced span wakes again within it).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ohip_stream._stream import EventStream

__all__ = ["FakeClock", "use_clock"]

#: Loop turns given to woken tasks after each timer fires (they may sleep again in the span).
_SETTLE_TURNS = 20


@dataclass(order=True)
class _Timer:
    deadline: float
    sequence: int
    callback: Callable[[], None] = field(compare=False)
    cancelled: bool = field(default=False, compare=False)

    def cancel(self) -> None:
        self.cancelled = True


class FakeClock:
    """Virtual time: :meth:`monotonic` starts at 0, :meth:`time` at ``start_time`` (default: the
    real wall-clock time when the clock is made, so that files written with it, such as the
    host's upgrade and completion records, are not taken for stale); nothing moves until
    :meth:`advance` is awaited."""

    def __init__(self, start_time: float | None = None) -> None:
        self._now = 0.0
        self._epoch = time.time() if start_time is None else start_time
        self._timers: list[_Timer] = []
        self._sequence = itertools.count()

    def monotonic(self) -> float:
        return self._now

    def time(self) -> float:
        return self._epoch + self._now

    async def sleep(self, seconds: float) -> None:
        if seconds <= 0:
            await asyncio.sleep(0)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake() -> None:
            if not future.done():
                future.set_result(None)

        timer = self.call_later(seconds, wake)
        try:
            await future
        finally:
            timer.cancel()

    def call_later(self, delay: float, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self._now + max(0.0, delay), next(self._sequence), callback)
        heapq.heappush(self._timers, timer)
        return timer

    @property
    def next_deadline(self) -> float | None:
        """When the next pending timer fires (monotonic), or None."""
        self._drop_cancelled()
        return self._timers[0].deadline if self._timers else None

    async def advance(self, seconds: float) -> None:
        """Move time ``seconds`` forward, firing every timer that falls due on the way."""
        target = self._now + max(0.0, seconds)
        await _settle()
        while True:
            self._drop_cancelled()
            if not self._timers or self._timers[0].deadline > target:
                break
            timer = heapq.heappop(self._timers)
            self._now = max(self._now, timer.deadline)
            timer.callback()
            await _settle()
        self._now = target
        await _settle()

    def _drop_cancelled(self) -> None:
        while self._timers and self._timers[0].cancelled:
            heapq.heappop(self._timers)

    def __repr__(self) -> str:
        return f"FakeClock(monotonic={self._now:.3f}, timers={len(self._timers)})"


async def _settle() -> None:
    for _ in range(_SETTLE_TURNS):
        await asyncio.sleep(0)


def use_clock(
    stream: EventStream, clock: FakeClock, rng: random.Random | None = None
) -> EventStream:
    """Make ``stream`` read time (and draw its jitter, given ``rng``) from ``clock``: every
    sleep, timer and timestamp of the stream, its connections and its commits. Call it before
    entering the stream; returns the stream."""
    stream._use_clock(clock, rng)
    return stream
