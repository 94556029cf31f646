"""The caller's side of a stream: ``async for event in stream``.

Each turn of the iteration marks the event handed out last as processed (committing when a
batch is due), takes the next frame (from the batch in hand, or the buffer's next batch),
validates it into an :class:`Event`, de-duplicates it and hands it out. Events are built here,
one at a time, as the caller asks: the connection's reader only stores frames. Invalid events
go to the dead-letter path in the caller's task, so an async callback runs where the caller's
code runs.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, Any

from ohip_stream._exceptions import OhipError, ProtocolError
from ohip_stream._lifecycle import Lifecycle
from ohip_stream._logging import get_logger, redact
from ohip_stream._policy import Failure, FailureKind
from ohip_stream._protocol import (
    InvalidNext,
    Next,
    RawFrame,
    event_of_frame,
    read_event_frame,
)
from ohip_stream._resume import Resume, Verdict
from ohip_stream._session import SessionStart

if TYPE_CHECKING:
    from collections.abc import Callable

    from ohip_stream._buffer import Buffer
    from ohip_stream._checkpointing import Checkpointer
    from ohip_stream._checkpoints import Checkpoint
    from ohip_stream._commits import Commits
    from ohip_stream._config import StreamConfig
    from ohip_stream._models import Event
    from ohip_stream._session import Session
    from ohip_stream._stats import StreamStats

__all__ = ["Iteration"]

_log = get_logger("ohip_stream.stream")
_NEW = Verdict.NEW


class _Fatal:
    """The buffer's marker of an error that ends the stream."""

    __slots__ = ("error",)

    def __init__(self, error: OhipError) -> None:
        self.error = error


class Iteration:
    """What ``async for`` walks through, and the dead-letter path."""

    def __init__(
        self,
        config: StreamConfig,
        *,
        life: Lifecycle,
        buffer: Buffer,
        resume: Resume,
        stats: StreamStats,
        checkpointer: Checkpointer,
        start: Callable[[], None],
    ) -> None:
        self.config = config
        self.life = life
        self.buffer = buffer
        self.resume = resume
        self.stats = stats
        self.checkpointer = checkpointer
        self.commits: Commits = checkpointer.commits
        self._start = start
        self._started = False
        self._session: Session | None = None
        self._fatal: OhipError | None = None
        self._retry_dead_letter: InvalidNext | None = None
        #: The event handed out last (its timestamp gives the event lag to metrics).
        self.last_event: Event | None = None
        # Whether _attend has something to do (one test per event instead of two).
        self._attention = False

    async def restore(self, legacy_ids: tuple[str, ...]) -> Checkpoint | None:
        """Load the checkpoint: its offset and id are already processed (unless an explicit
        start overrides them; its completion time, the gap, counts always)."""
        checkpoint = await self.checkpointer.load(*legacy_ids)
        if checkpoint is None:
            return None
        self.commits.restore(checkpoint)
        if self.config.offset is None and not self.config.start_at_highest:
            self.resume.restore(checkpoint.offset, checkpoint.unique_event_id)
        return checkpoint

    def fail(self, error: OhipError) -> None:
        """End the stream with ``error``: raised to the caller after the frames before it."""
        self.buffer.put(_Fatal(error))

    def fail_now(self, error: OhipError) -> None:
        """End the stream with ``error`` before the next event, whatever is buffered (a
        checkpoint that may no longer be written: nothing more is handed out)."""
        self._fatal = error
        self._attention = True
        self.buffer.wake()

    async def events(self) -> AsyncGenerator[Event, None]:
        """The caller's iteration (see the module docstring)."""
        commits = self.commits
        stats = self.stats
        accept = self.resume.accept
        sub_id = "1"
        batch: list[RawFrame] = []  # the frames in hand, from one socket read
        index = 0  # the next of them
        try:
            while True:
                if commits.processed():  # a batch is due (or waits on a failed write)
                    await self.checkpointer.commit_due()
                if self._attention:
                    await self._attend()
                if self.life.stopping:
                    return
                if index == len(batch):
                    batch, index = await self._refill(), 0
                    continue
                frame = batch[index]
                index += 1
                event = event_of_frame(frame, sub_id)
                if event is None:
                    event = await self._slow(frame)
                    if event is None:
                        continue
                metadata = event.metadata
                offset = metadata.offset
                verdict = accept(offset, metadata.unique_event_id)
                if verdict is _NEW or self._deliver(verdict, offset):
                    commits.handed = metadata
                    self.last_event = event
                    stats.events += 1
                    stats.last_offset = offset
                    yield event
        finally:
            # Frames in hand that were not handed out go back to the buffer's front: an
            # iteration ended by an exception is followed by a new one that takes them.
            if index < len(batch):
                self.buffer.put_back(batch[index:])

    async def _refill(self) -> list[RawFrame]:
        """The buffer's next batch of frames; empty after a wait or a marker (the caller's loop
        then looks at the stream's state again)."""
        buffer = self.buffer
        if not buffer.items:
            await self._wait()
            return []
        item = buffer.take()
        if type(item) is list:
            return item
        self._marker(item)
        return []

    async def _slow(self, frame: RawFrame) -> Event | None:
        """A frame that is not a valid event: an invalid one, a broken one, or another frame."""
        try:
            found = read_event_frame(frame, "1")
        except ProtocolError as exc:
            if self._session is not None:
                self._session.fail(Failure(FailureKind.MALFORMED, reason=redact(str(exc))))
            return None
        if found is None:
            self._other(frame)
        elif type(found) is Next:
            return found.event  # valid, though not in the envelope's usual form
        elif isinstance(found, InvalidNext) and self.resume.accept_invalid(found.offset):
            await self._dead_letter(found)
        else:
            self.stats.duplicates += 1
        return None

    async def _attend(self) -> None:
        """Before the next event: a fatal error is raised again; a dead-letter callback that
        raised is called again for its frame."""
        if self._fatal is not None:
            raise self._fatal
        if self._retry_dead_letter is not None:
            await self._dead_letter(self._retry_dead_letter, again=True)

    async def _wait(self) -> None:
        if not self._started:
            self._started = True
            self._start()
        await self.buffer.wait()

    def _marker(self, item: Any) -> None:
        if type(item) is SessionStart:
            self._session = item.session
            self.resume.arm(item.asked)
        elif type(item) is _Fatal:
            self._fatal = item.error
            self._attention = True
            raise item.error

    def _other(self, frame: RawFrame) -> None:
        # Not an event frame after all (its text only contained "next"): the connection that
        # received it handles it, if it is still there; a broken next ends that connection.
        session = self._session
        if session is None or session.ended:
            return
        try:
            session.control(frame)
        except ProtocolError as exc:
            session.fail(Failure(FailureKind.MALFORMED, reason=redact(str(exc))))

    def _lost(self, lost: int, offset: str) -> None:
        self.stats.gaps += lost
        _log.warning(
            "stream %s: %d event(s) lost upstream: the first event after the resume was offset "
            "%s (retention or the 24-hour resume limit)",
            self.config.stream_id,
            lost,
            offset,
        )

    def _deliver(self, verdict: Verdict, offset: str) -> bool:
        """Whether an event that is not plainly new is handed out: one after events lost
        upstream (said), an offset reset that the configuration delivers; duplicates are
        counted."""
        lost = self.resume.take_lost()
        if lost:
            self._lost(lost, offset)
        if verdict is Verdict.GAP:
            return True
        if verdict is Verdict.DUPLICATE:
            self.stats.duplicates += 1
            return False
        if verdict is not Verdict.RESET:
            return False
        self.stats.resets += 1
        _log.warning(
            "stream %s: the gateway's offsets went back (to %s) with events never seen: an "
            "offset reset",
            self.config.stream_id,
            offset,
        )
        if self.config.on_offset_reset == "raise":
            raise ProtocolError(
                f"the gateway's offsets went back to {offset} with events never seen (an offset "
                "reset); pass on_offset_reset='deliver' to accept them"
            )
        return True

    async def _dead_letter(self, item: InvalidNext, *, again: bool = False) -> None:
        """The dead-letter path: raise, skip, or the callback (called again on the next
        ``__anext__`` if it raised; the checkpoint does not pass the frame before it returned)."""
        if not again:
            self.stats.invalid += 1
        handler = self.config.on_invalid
        if handler == "raise":
            # The stream stays usable: the next __anext__ marks this frame processed.
            self.commits.hand(item)
            raise item.error
        if handler == "skip":
            _log.warning("skipped an invalid event: %s", item.error)
        else:
            self._retry_dead_letter = item
            self._attention = True
            result = handler(item.raw, item.error)
            if inspect.isawaitable(result):
                await result
            self._retry_dead_letter = None
            self._attention = self._fatal is not None
        if self.commits.skipped(item):
            await self.checkpointer.commit_due()
