"""Checkpoint writes around the store: what a slow or failing store may and may not undo."""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass

import pytest

from ohip_stream import CheckpointError, CheckpointUnavailableError, MemoryCheckpointStore, Timings
from ohip_stream._checkpointing import Checkpointer
from ohip_stream._checkpoints import Checkpoint
from ohip_stream._commits import Commits
from ohip_stream.testing import FakeClock


@dataclass(frozen=True)
class Pos:
    offset: str | None
    unique_event_id: str | None = None


class SlowStore(MemoryCheckpointStore):
    """Writes wait for a gate (a slow disk)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = asyncio.Event()

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        await self.gate.wait()
        await super().save(stream_id, checkpoint)


class FlakyStore(MemoryCheckpointStore):
    """Fails the first ``failures`` writes with ``error``."""

    def __init__(self, failures: int, error: Exception) -> None:
        super().__init__()
        self.failures = failures
        self.error = error
        self.attempts = 0

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise self.error
        await super().save(stream_id, checkpoint)


def _checkpointer(store: MemoryCheckpointStore, clock: FakeClock, every: int = 2) -> Checkpointer:
    return Checkpointer(
        store,
        "s1",
        Commits(every),
        clock=clock,
        interval=1.0,
        timings=Timings(backoff_min=1.0, backoff_max=4.0),
        rng=random.Random(7),
        gateway_host="gateway.example.com",
        chain_code="OHIPCN",
    )


async def test_a_commit_in_flight_does_not_undo_a_complete_or_an_offset() -> None:
    # A batch commit was writing when the end of a drained connection was recorded: the write
    # must not put back the checkpoint it started with (the next subscribe would then skip the
    # gap: 4409 on a real gateway).
    store = SlowStore()
    checkpointer = _checkpointer(store, FakeClock())
    commits = checkpointer.commits
    commits.hand(Pos("5", "u5"))
    commits.processed()
    writing = asyncio.create_task(checkpointer.commit(force=True))
    await asyncio.sleep(0)
    commits.completed(1234.0)
    commits.hand(Pos("6", "u6"))
    commits.processed()
    store.gate.set()
    await writing
    assert commits.checkpoint.completed_at == 1234.0
    assert commits.checkpoint.offset == "6"
    await checkpointer.commit(force=True)
    saved = await store.load("s1")
    assert saved is not None
    assert (saved.offset, saved.completed_at) == ("6", 1234.0)
    assert (saved.gateway_host, saved.chain_code) == ("gateway.example.com", "OHIPCN")


async def test_a_transient_failure_below_a_batch_is_logged_and_kept() -> None:
    store = FlakyStore(1, CheckpointUnavailableError("database is locked"))
    checkpointer = _checkpointer(store, FakeClock(), every=3)
    commits = checkpointer.commits
    commits.hand(Pos("1"))
    commits.processed()
    commits.interval_passed()
    await checkpointer.commit_due()
    assert commits.failed
    assert commits.dirty == 1
    assert await store.load("s1") is None
    commits.hand(Pos("2"))
    commits.processed()
    await checkpointer.commit_due()
    saved = await store.load("s1")
    assert saved is not None
    assert saved.offset == "2"


async def test_a_whole_batch_waiting_retries_with_backoff_until_it_succeeds() -> None:
    clock = FakeClock()
    store = FlakyStore(3, CheckpointUnavailableError("database is locked"))
    checkpointer = _checkpointer(store, clock, every=2)
    commits = checkpointer.commits
    for offset in ("1", "2"):
        commits.hand(Pos(offset))
        commits.processed()
    with pytest.raises(CheckpointUnavailableError):
        await checkpointer.commit()  # the first failure: one batch waits on it
    assert commits.blocked
    retrying = asyncio.create_task(checkpointer.commit_due())
    await clock.advance(30)
    await retrying
    assert store.attempts == 4
    assert not commits.blocked
    saved = await store.load("s1")
    assert saved is not None
    assert saved.offset == "2"


async def test_an_unknown_store_error_is_transient() -> None:
    store = FlakyStore(1, OSError("No space left on device"))
    checkpointer = _checkpointer(store, FakeClock())
    checkpointer.commits.hand(Pos("1"))
    checkpointer.commits.processed()
    with pytest.raises(CheckpointUnavailableError, match="FlakyStore failed: No space left"):
        await checkpointer.commit()
    assert checkpointer.commits.dirty == 1  # kept for the next write
    await checkpointer.commit_quietly()  # a rotation's commit: retried, never fatal
    saved = await store.load("s1")
    assert saved is not None
    assert saved.offset == "1"


async def test_a_permanent_store_error_is_raised() -> None:
    store = FlakyStore(5, CheckpointError("the checkpoint file was deleted"))
    checkpointer = _checkpointer(store, FakeClock())
    with pytest.raises(CheckpointError, match="deleted"):
        await checkpointer.commit_quietly()


async def test_a_permanent_error_of_a_timed_commit_ends_the_stream() -> None:
    clock = FakeClock()
    store = FlakyStore(5, CheckpointError("the epoch is stale"))
    checkpointer = _checkpointer(store, clock)
    failed: list[CheckpointError] = []
    checkpointer.on_fatal = failed.append
    checkpointer.start()
    checkpointer.commits.hand(Pos("1"))
    checkpointer.commits.processed()
    await clock.advance(1.0)  # the commit interval: a timed commit nobody awaits
    await checkpointer.stop()
    assert [str(error) for error in failed] == ["the epoch is stale"]
