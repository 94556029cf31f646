"""The stream's checkpoint store when a sink delivers: the offset moves only with the sink.

The stream writes its checkpoint for the events it handed out and counts as processed (the next
one was asked for, a commit interval passed, the stream stopped). With a sink that is not
enough: an event handed to the runner may still wait in its batch, and a crash then would
resume after it and lose it. :class:`SinkCheckpoints` wraps the durable store and rewrites each
of the stream's writes to carry the offset the sink last confirmed (or the one loaded at
start), keeping what else the stream writes (``completed_at``: the gap before the next
subscribe holds across restarts, protocol §4).

One lock orders the stream's writes and the sink's: a write of the stream never lands after a
newer offset the sink wrote, so the stored offset only moves forward.

A stream with no stored offset subscribes without one, and the gateway then resumes where the
previous connection stopped (protocol §6): after the events it SENT, whether or not they were
delivered. So when the first event of such a stream arrives, a position just before it is
written at once (its offset minus one: the replay of that position is dropped as processed),
and a crash before the first batch is confirmed resumes there instead of losing the events.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ohip_stream._checkpoints import Checkpoint, CheckpointStore
from ohip_stream._exceptions import CheckpointError, ConfigurationError

if TYPE_CHECKING:
    from ohip_stream.sinks._protocol import Batch

__all__ = ["SinkCheckpoints", "no_store"]


class SinkCheckpoints:
    """A :class:`~ohip_stream.CheckpointStore` for a stream whose events go to a sink.

    Args:
        store: The durable store (SQLite, PostgreSQL, your own). The caller closes it.
        sink_writes_offset: ``True`` when the sink writes the checkpoint itself, in the
            transaction of its events (:class:`~ohip_stream.sinks.PostgresSink`); ``False``
            when the runner writes it after the sink confirmed a batch.
    """

    def __init__(self, store: CheckpointStore, *, sink_writes_offset: bool = False) -> None:
        if not isinstance(store, CheckpointStore):
            raise ConfigurationError(
                "SinkCheckpoints needs a checkpoint store (an object with async load() and "
                f"save(), such as SQLiteCheckpointStore), got {type(store).__name__}"
            )
        self.store = store
        self.sink_writes_offset = sink_writes_offset
        self._lock = asyncio.Lock()
        self._confirmed: dict[str, Checkpoint] = {}
        self._placed: set[str] = set()

    def confirmed(self, stream_id: str) -> Checkpoint | None:
        """The checkpoint the sink last confirmed for the stream (or the one loaded)."""
        return self._confirmed.get(stream_id)

    async def load(self, stream_id: str) -> Checkpoint | None:
        """The stored checkpoint; it is also where the offset stays until the sink confirms."""
        async with self._lock:
            checkpoint = await self.store.load(stream_id)
            if checkpoint is not None:
                self._confirmed[stream_id] = checkpoint
            return checkpoint

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        """The stream's write, with the sink's confirmed offset in place of the stream's."""
        async with self._lock:
            confirmed = self._confirmed.get(stream_id)
            held = dataclasses.replace(
                checkpoint,
                offset=confirmed.offset if confirmed else None,
                unique_event_id=confirmed.unique_event_id if confirmed else None,
            )
            await self.store.save(stream_id, held)
            self._confirmed[stream_id] = held

    async def arrived(self, stream_id: str, offset: str) -> None:
        """An event at ``offset`` was handed out: with no offset stored yet, store the position
        just before it (see the module's docstring)."""
        if stream_id in self._placed:
            return
        self._placed.add(stream_id)
        async with self._lock:
            known = self._confirmed.get(stream_id)
            if known is not None and known.offset is not None:
                return
            if not (offset.isascii() and offset.isdigit()) or int(offset) == 0:
                return  # nothing before it to point at: the first start replays from the oldest
            before = str(int(offset) - 1)
            checkpoint = (
                dataclasses.replace(known, offset=before, unique_event_id=None)
                if known is not None
                else Checkpoint(offset=before)
            )
            await self.store.save(stream_id, checkpoint)
            self._confirmed[stream_id] = checkpoint

    def after(self, stream_id: str, checkpoint: Checkpoint) -> Checkpoint:
        """``checkpoint`` (a batch's last offset) with what the stream last wrote kept beside
        it: the completion time, the gateway host and chain code."""
        known = self._confirmed.get(stream_id)
        if known is None:
            return checkpoint
        return dataclasses.replace(
            checkpoint,
            completed_at=known.completed_at,
            gateway_host=checkpoint.gateway_host or known.gateway_host,
            chain_code=checkpoint.chain_code or known.chain_code,
        )

    @contextlib.asynccontextmanager
    async def delivering(self, batch: Batch) -> AsyncIterator[None]:
        """Hold the stream's writes while ``batch`` is delivered; once the block ends without an
        error, the batch's checkpoint is the confirmed one (written to the store here unless the
        sink wrote it in its own transaction)."""
        async with self._lock:
            yield
            if not self.sink_writes_offset:
                await self.store.save(batch.stream_id, batch.checkpoint)
            self._confirmed[batch.stream_id] = batch.checkpoint

    def __repr__(self) -> str:
        return f"SinkCheckpoints({self.store!r})"


class _NoStore:
    """The store of a sink made without one: enough in a fleet (the fleet's database keeps the
    checkpoints), refused by a stream."""

    def __init__(self, owner: str) -> None:
        self.owner = owner

    def _refuse(self) -> CheckpointError:
        return CheckpointError(
            f"{self.owner} was made without checkpoints=: give it a checkpoint store (such as "
            "SQLiteCheckpointStore) to run a stream into it; only a fleet needs none"
        )

    async def load(self, stream_id: str) -> Checkpoint | None:
        raise self._refuse()

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        raise self._refuse()

    def __repr__(self) -> str:
        return "no checkpoint store"


def no_store(owner: str) -> CheckpointStore:
    """A store that refuses every use, naming ``owner`` (a sink used only in a fleet)."""
    return _NoStore(owner)
