"""The checkpoint store a fleet gives each of its streams: writes fenced by the lease's epoch."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from ohip_stream._checkpoints import Checkpoint
from ohip_stream.fleet._errors import StaleEpochError
from ohip_stream.fleet._store import LeaseStore

__all__ = ["FencedCheckpointStore"]


class FencedCheckpointStore:
    """A :class:`~ohip_stream.CheckpointStore` bound to one lease (stream name and epoch).

    Every :meth:`save` is conditional on the lease still having this epoch (the fencing token):
    a worker that was paused or cut off while another took the stream over gets
    :class:`~ohip_stream.fleet.StaleEpochError`, which ends the stream in that worker. The
    first rejection calls ``on_stale`` (the fleet stops the stream's task at once) and every
    later save is refused without a database round trip.
    """

    def __init__(
        self,
        store: LeaseStore,
        stream: str,
        epoch: int,
        *,
        on_stale: Callable[[StaleEpochError], None] | None = None,
    ) -> None:
        self.store = store
        self.stream = stream
        self.epoch = epoch
        self.on_stale = on_stale
        #: How many writes were rejected (a stale epoch).
        self.rejected = 0
        self._stale: StaleEpochError | None = None

    @property
    def stale(self) -> bool:
        """Whether a write was rejected: this store writes nothing any more."""
        return self._stale is not None

    async def load(self, stream_id: str) -> Checkpoint | None:
        """The stream's checkpoint (reads are not fenced: reading changes nothing)."""
        return await self.store.load_checkpoint(stream_id)

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        """Write the checkpoint if the lease still has this store's epoch."""
        self._refuse_if_stale()
        try:
            await self.store.save_checkpoint(
                stream_id, checkpoint, stream=self.stream, epoch=self.epoch
            )
        except StaleEpochError as exc:
            self._reject(exc)
            raise

    def _refuse_if_stale(self) -> None:
        """Once a write was rejected, every later one is refused at once (and counted)."""
        if self._stale is not None:
            self.rejected += 1
            _observe_writer()
            raise StaleEpochError(self.stream, self.epoch, self._stale.current)

    def _reject(self, exc: StaleEpochError) -> None:
        """A write was rejected: nothing more is written from this store, and ``on_stale``
        (the fleet, which stops the stream) hears it."""
        self.rejected += 1
        self._stale = exc
        _observe_writer()
        if self.on_stale is not None:
            self.on_stale(exc)

    def __repr__(self) -> str:
        return f"FencedCheckpointStore(stream={self.stream!r}, epoch={self.epoch})"


def _observe_writer() -> None:
    """The rejection is handled by ``on_stale`` (the fleet stops the stream): the outcome of
    the task that tried to write is observed here, so that a timed commit running in a task
    nobody awaits does not leave its error unretrieved."""
    task = asyncio.current_task()
    if task is not None:
        task.add_done_callback(_retrieve)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()
