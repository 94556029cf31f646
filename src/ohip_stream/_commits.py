"""What a stream handed out, what the caller processed, and what is committed: pure.

OHIP has no acknowledgement: the checkpoint of the last PROCESSED offset is the
acknowledgement. An event handed to the caller counts as processed when the caller asks for the
next one (or calls ``commit()``, or leaves the block cleanly); processed offsets are written in
batches: when ``every`` events were processed since the last commit, or at the first event after
the commit interval passed (the stream's timer calls :meth:`Commits.interval_passed`), and always
at a rotation, a stop and the end of the block.

A failed write keeps its events counted, so the next write covers them; after a failure the
stream hands out no more than one batch past the last successful commit
(:attr:`Commits.blocked`), so that a failing store never lets processing run far ahead of what
a restart would resume from.
"""

from __future__ import annotations

import dataclasses
from typing import Protocol

from ohip_stream._checkpoints import Checkpoint

__all__ = ["Commits", "Position"]


class Position(Protocol):
    """What the commits need of a processed item: its offset and unique id (an ``Event``'s
    metadata, or a dead-lettered frame's)."""

    @property
    def offset(self) -> str | None: ...

    @property
    def unique_event_id(self) -> str | None: ...


class Commits:
    """Processing and commit bookkeeping of one stream.

    ``checkpoint`` is where the stream stands (as committed, plus what was processed since);
    ``every`` the batch size.
    """

    __slots__ = ("_base", "_done", "dirty", "due_at", "every", "failed", "handed")

    def __init__(self, every: int, base: Checkpoint | None = None) -> None:
        if every < 1:
            raise ValueError("every must be at least 1")
        self.every = every
        #: The position handed out last and not processed yet (None: nothing pending).
        self.handed: Position | None = None
        #: Processed since the last successful commit.
        self.dirty = 0
        #: A commit is due when ``dirty`` reaches this: ``every``, or 1 once the interval passed.
        self.due_at = every
        #: Whether the last write failed (then at most one batch more is handed out).
        self.failed = False
        self._base = base if base is not None else Checkpoint()
        self._done: Position | None = None

    def restore(self, checkpoint: Checkpoint) -> None:
        """Start from a stored checkpoint (nothing pending)."""
        self._base = checkpoint
        self._done = None

    # --- per event (the hot path) -------------------------------------------------------------

    def hand(self, position: Position) -> None:
        """``position`` was handed to the caller (processed when the next one is asked for)."""
        self.handed = position

    def processed(self) -> bool:
        """The item handed out last is processed; True when a commit is due."""
        handed = self.handed
        if handed is not None:
            self.handed = None
            self._done = handed
            self.dirty += 1
        return self.dirty >= self.due_at

    def skipped(self, position: Position) -> bool:
        """An item that was never handed out (a dead-lettered frame, a skipped invalid event)
        is processed; True when a commit is due. One without an offset moves nothing."""
        if position.offset is not None:
            self._done = position
            self.dirty += 1
        return self.dirty >= self.due_at

    @property
    def blocked(self) -> bool:
        """Whether handing out more must wait for a successful commit: a write failed and a
        whole batch has been processed since the last successful one."""
        return self.failed and self.dirty >= self.every

    # --- commits ------------------------------------------------------------------------------

    def interval_passed(self) -> None:
        """The commit interval passed since the last commit: the next processed event commits."""
        self.due_at = 1

    @property
    def checkpoint(self) -> Checkpoint:
        """Where the stream stands: the last processed position, folded in when read."""
        done = self._done
        if done is not None:
            self._done = None
            self._base = _with(self._base, offset=done.offset, uid=done.unique_event_id)
        return self._base

    def completed(self, at: float) -> None:
        """The stream's connection was completed and closed at ``at`` (wall clock): the gap
        before the next subscribe counts from then, across restarts too."""
        self._base = _with(self.checkpoint, completed_at=at)

    def take(self, now: float) -> tuple[Checkpoint, int]:
        """The checkpoint to write now and how many processed items it covers; the count is
        reset (give it back with :meth:`write_failed` if the write fails)."""
        checkpoint = _with(self.checkpoint, updated_at=now)
        count, self.dirty = self.dirty, 0
        self.due_at = self.every
        return checkpoint, count

    def write_succeeded(self, written: Checkpoint) -> None:
        """The write of :meth:`take`'s checkpoint succeeded."""
        self.failed = False
        # Only the time of the write: a position processed or a completion recorded while the
        # store was writing must not be undone (the next commit writes them).
        self._base = _with(self.checkpoint, updated_at=written.updated_at)

    def write_failed(self, count: int) -> None:
        """The write failed: its items count again for the next write, due once a whole batch
        waits on it (then :attr:`blocked`: the stream retries with backoff, handing out no
        more), or at the next commit by time."""
        self.failed = True
        self.dirty += count
        self.due_at = self.every

    @property
    def pending(self) -> bool:
        """Whether anything processed is not committed yet."""
        return self.dirty > 0

    def __repr__(self) -> str:
        return f"Commits(dirty={self.dirty}, failed={self.failed}, at={self.checkpoint.offset!r})"


def _with(
    base: Checkpoint,
    *,
    offset: str | None = None,
    uid: str | None = None,
    completed_at: float | None = None,
    updated_at: float | None = None,
) -> Checkpoint:
    """``base`` with the given fields changed; ``None`` keeps a field (an offset comes with its
    unique id, which may be None). Every other field of the checkpoint is kept as it is."""
    if offset is not None:
        base = dataclasses.replace(base, offset=offset, unique_event_id=uid)
    if completed_at is not None:
        base = dataclasses.replace(base, completed_at=completed_at)
    if updated_at is not None:
        base = dataclasses.replace(base, updated_at=updated_at)
    return base
