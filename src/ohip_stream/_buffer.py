"""The bounded buffer between the socket and the caller.

The connection's reader (the transport's ``data_received``) appends the event frames of each
socket read as one batch (a list of undecoded frames, in order); the caller takes a batch and
validates its frames one at a time as it hands them out, so an event is built only when it is
about to be handed out (a socket read holds hundreds of frames: built at once, they would all
outlive the garbage collector's young generation). A batch per read, not a frame, is what the
buffer's bookkeeping costs: at hundreds of frames per read, the per-frame cost is the caller's
loop alone. Besides batches it carries a few items in order: the start of a connection, a
fatal error.

Bounded in frames AND bytes: above ``max_items`` frames or ``max_bytes`` bytes the socket stops
being read (``pause_reading``), so TCP pushes back on the gateway; it is read again once the
caller took the buffer below half of both (``resume_reading``). A batch taken by the caller no
longer counts: it is in the caller's hands.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from ohip_stream._protocol import RawFrame

__all__ = ["Buffer", "Reader"]


class Reader(Protocol):
    """What the buffer pauses: the current connection's socket reads."""

    def pause_reading(self) -> None: ...

    def resume_reading(self) -> None: ...


class Buffer:
    """A FIFO of batches of frames (``list[bytes]``) and markers, with flow control and one
    waiting caller."""

    __slots__ = (
        "_low_items",
        "_low_water_callback",
        "_monotonic",
        "_sizes",
        "_waiter",
        "bytes",
        "frames",
        "items",
        "max_bytes",
        "max_items",
        "paused",
        "paused_at",
        "reader",
        "watching",
    )

    def __init__(self, max_items: int, max_bytes: int, monotonic: Callable[[], float]) -> None:
        self._monotonic = monotonic
        self.items: deque[Any] = deque()
        #: Frames and their bytes in the buffer (in batches not taken yet).
        self.frames = 0
        self.bytes = 0
        # The bytes of each batch in ``items``, in the same order (counted once, at push).
        self._sizes: deque[int] = deque()
        self.max_items = max_items
        self.max_bytes = max_bytes
        self._low_items = max(1, max_items // 2)
        #: The connection being read, or None between connections.
        self.reader: Reader | None = None
        self.paused = False
        #: When reading was paused (monotonic; liveness does not count while paused).
        self.paused_at: float | None = None
        # Whether take() has something to check: paused, or a low-water callback is set.
        self.watching = False
        self._low_water_callback: Callable[[], None] | None = None
        self._waiter: asyncio.Future[None] | None = None

    @property
    def low_water(self) -> int:
        """Below this many frames (and half of ``max_bytes``) reading resumes."""
        return self._low_items

    # --- the reader's side ----------------------------------------------------------------------

    def push(self, batch: list[RawFrame]) -> None:
        """Append a batch of received frames (not empty); pause the reader when the buffer is
        full."""
        self.items.append(batch)
        self._sizes.append(self._count(batch))
        if self._waiter is not None:
            self._wake()
        if not self.paused and self._full:
            self._pause()

    def put(self, item: object) -> None:
        """Append a marker (not counted against the limits)."""
        self.items.append(item)
        if self._waiter is not None:
            self._wake()

    # --- the caller's side ----------------------------------------------------------------------

    def take(self) -> Any:
        """The oldest item, a batch or a marker (the buffer must not be empty)."""
        item = self.items.popleft()
        if type(item) is list:
            self.frames -= len(item)
            self.bytes -= self._sizes.popleft()
        if self.watching:
            self._check_low_water()
        return item

    def put_back(self, batch: list[RawFrame]) -> None:
        """Return frames the caller took and did not hand out to the front (not empty)."""
        self.items.appendleft(batch)
        self._sizes.appendleft(self._count(batch))

    def _count(self, batch: list[RawFrame]) -> int:
        """Count a batch's frames and bytes in the buffer; its bytes."""
        size = sum(map(len, batch))
        self.frames += len(batch)
        self.bytes += size
        return size

    async def wait(self) -> None:
        """Wait until an item is appended (or :meth:`wake` is called)."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    def wake(self) -> None:
        """Wake a waiting caller (a state change it must look at)."""
        if self._waiter is not None:
            self._wake()

    def clear_frames(self) -> None:
        """Drop every frame (a stop: frames not handed out were not processed and come again
        on the next run); markers are kept."""
        kept = [item for item in self.items if type(item) is not list]
        self.items.clear()  # in place: the caller's iteration holds this deque
        self.items.extend(kept)
        self._sizes.clear()
        self.frames = 0
        self.bytes = 0
        self._check_low_water()

    # --- flow control ---------------------------------------------------------------------------

    def attach(self, reader: Reader | None) -> None:
        """Flow control now applies to ``reader`` (a new connection), or to none."""
        self.reader = reader
        self.paused = False
        self.paused_at = None
        self._update_watching()
        if reader is not None and self._full:
            self._pause()

    def when_low(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` once, as soon as the buffer is below its low-water mark (now, if
        it already is)."""
        if self._below_low_water:
            callback()
            return
        self._low_water_callback = callback
        self._update_watching()

    def cancel_when_low(self) -> None:
        """Forget a callback set by :meth:`when_low`."""
        self._low_water_callback = None
        self._update_watching()

    @property
    def _full(self) -> bool:
        return self.frames >= self.max_items or self.bytes >= self.max_bytes

    @property
    def _below_low_water(self) -> bool:
        return self.frames < self._low_items and self.bytes < self.max_bytes // 2

    def _pause(self) -> None:
        reader = self.reader
        if reader is None:
            return
        self.paused = True
        self.paused_at = self._monotonic()
        self._update_watching()
        reader.pause_reading()

    def _check_low_water(self) -> None:
        if not self._below_low_water:
            return
        if self.paused:
            self.paused = False
            self.paused_at = None
            if self.reader is not None:
                self.reader.resume_reading()
        callback, self._low_water_callback = self._low_water_callback, None
        self._update_watching()
        if callback is not None:
            callback()

    def _update_watching(self) -> None:
        self.watching = self.paused or self._low_water_callback is not None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __repr__(self) -> str:
        return f"Buffer(frames={self.frames}, bytes={self.bytes}, paused={self.paused})"
