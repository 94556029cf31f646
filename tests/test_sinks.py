"""The sink protocol's two rules: the checkpoint never passes what the sink confirmed
(``SinkCheckpoints``), and ``deliver()`` hands the sink consecutive batches of the stream."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from helpers.streams import FAST_TIMINGS, emulator_auth
from ohip_stream import (
    Checkpoint,
    ConfigurationError,
    Event,
    EventStream,
    MemoryCheckpointStore,
)
from ohip_stream.sinks import Batch, DeliveryError, Sink, SinkCheckpoints, deliver
from ohip_stream.testing import Emulator, make_event


def event(offset: int, name: str = "CHECK IN") -> Event:
    wire = make_event(event_name=name)
    wire["metadata"] = {"offset": str(offset), "uniqueEventId": f"uid-{offset}"}
    return Event.model_validate(wire)


def batch(*offsets: int, stream_id: str = "s1") -> Batch:
    events = [event(o) for o in offsets]
    last = events[-1].metadata
    return Batch(stream_id, "CHAIN", events, Checkpoint(last.offset, last.unique_event_id))


# --- SinkCheckpoints ---------------------------------------------------------------------------


async def test_the_streams_write_keeps_the_confirmed_offset_and_its_completion_time() -> None:
    store = MemoryCheckpointStore()
    gate = SinkCheckpoints(store)

    assert await gate.load("s1") is None
    # The stream processed offset 9, but the sink confirmed nothing yet.
    await gate.save("s1", Checkpoint("9", "uid-9", completed_at=100.0))
    saved = await store.load("s1")
    assert saved is not None
    assert (saved.offset, saved.unique_event_id, saved.completed_at) == (None, None, 100.0)

    async with gate.delivering(batch(1, 2, 3)):
        pass
    saved = await store.load("s1")
    assert saved is not None
    assert (saved.offset, saved.unique_event_id) == ("3", "uid-3")

    await gate.save("s1", Checkpoint("9", "uid-9", completed_at=200.0))
    saved = await store.load("s1")
    assert saved is not None
    assert (saved.offset, saved.completed_at) == ("3", 200.0)


async def test_the_loaded_offset_stays_until_the_sink_confirms_another() -> None:
    store = MemoryCheckpointStore()
    await store.save("s1", Checkpoint("41", "uid-41", completed_at=5.0))
    gate = SinkCheckpoints(store)

    loaded = await gate.load("s1")
    assert loaded is not None
    assert loaded.offset == "41"
    await gate.save("s1", Checkpoint("50", "uid-50", completed_at=6.0))

    saved = await store.load("s1")
    assert saved is not None
    assert (saved.offset, saved.completed_at) == ("41", 6.0)
    # A batch's checkpoint keeps what the stream wrote beside the offset.
    assert gate.after("s1", Checkpoint("52", "uid-52")).completed_at == 6.0


async def test_a_failed_delivery_confirms_nothing() -> None:
    store = MemoryCheckpointStore()
    gate = SinkCheckpoints(store)
    async with gate.delivering(batch(1)):
        pass

    with pytest.raises(DeliveryError):
        async with gate.delivering(batch(2, 3)):
            raise DeliveryError("the broker is down")

    saved = await store.load("s1")
    assert saved is not None
    assert saved.offset == "1"
    assert gate.confirmed("s1") is not None
    assert gate.confirmed("s1").offset == "1"  # type: ignore[union-attr]


async def test_a_transactional_sink_writes_the_offset_itself() -> None:
    store = MemoryCheckpointStore()
    gate = SinkCheckpoints(store, sink_writes_offset=True)
    async with gate.delivering(batch(1, 2)):
        pass
    assert await store.load("s1") is None  # the sink's own transaction wrote it (here: nobody)
    await gate.save("s1", Checkpoint("7", "uid-7", completed_at=1.0))
    saved = await store.load("s1")
    assert saved is not None
    assert saved.offset == "2"


async def test_a_streams_write_waits_for_the_batch_in_flight() -> None:
    # Else a write of an older offset could land after the sink's newer one.
    store = MemoryCheckpointStore()
    gate = SinkCheckpoints(store)
    in_flight = asyncio.Event()
    release = asyncio.Event()

    async def delivering() -> None:
        async with gate.delivering(batch(1, 2, 3)):
            in_flight.set()
            await release.wait()

    delivery = asyncio.ensure_future(delivering())
    await in_flight.wait()
    write = asyncio.ensure_future(gate.save("s1", Checkpoint("5", "uid-5", completed_at=9.0)))
    await asyncio.sleep(0)
    assert not write.done()
    release.set()
    await asyncio.gather(delivery, write)

    saved = await store.load("s1")
    assert saved is not None
    assert (saved.offset, saved.completed_at) == ("3", 9.0)


def test_a_store_that_is_not_one_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="checkpoint store"):
        SinkCheckpoints("offsets.db")  # type: ignore[arg-type]


# --- deliver() against the emulator --------------------------------------------------------------


class MemorySink:
    """A sink of the protocol: keeps the batches; may hold the first one until released."""

    def __init__(self, store: MemoryCheckpointStore, *, hold: bool = False) -> None:
        self._checkpoints = SinkCheckpoints(store)
        self.batches: list[Batch] = []
        self.in_flight = asyncio.Event()
        self.release = asyncio.Event()
        if not hold:
            self.release.set()
        self.fail_at: int | None = None
        self.stop_after: tuple[EventStream, int] | None = None

    @property
    def checkpoints(self) -> SinkCheckpoints:
        return self._checkpoints

    @property
    def offsets(self) -> list[int]:
        return [int(e.metadata.offset) for b in self.batches for e in b.events]

    async def deliver(self, batch: Batch) -> None:
        self.in_flight.set()
        await self.release.wait()
        if self.fail_at is not None and any(
            int(e.metadata.offset) >= self.fail_at for e in batch.events
        ):
            raise DeliveryError("refused")
        self.batches.append(batch)
        if self.stop_after is not None and len(self.offsets) >= self.stop_after[1]:
            self.stop_after[0].request_stop()


def make_stream(emu: Emulator, checkpoints: Any, **kwargs: Any) -> EventStream:
    return EventStream(
        gateway_url=emu.gateway_url,
        app_key=emu.app_key,
        chain_code=emu.chain_code,
        auth=emulator_auth(emu),
        checkpoints=checkpoints,
        timings=FAST_TIMINGS,
        **kwargs,
    )


async def test_deliver_hands_consecutive_batches_and_commits_the_last() -> None:
    assert isinstance(MemorySink(MemoryCheckpointStore()), Sink)
    store = MemoryCheckpointStore()
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(40)
        sink = MemorySink(store)
        async with make_stream(emu, sink.checkpoints) as stream:
            sink.stop_after = (stream, 40)
            stats = await asyncio.wait_for(deliver(stream, sink, batch_size=7), 20)

    assert sink.offsets == list(range(1, 41))
    assert all(1 <= len(b.events) <= 7 for b in sink.batches)
    assert all(b.checkpoint.offset == b.events[-1].metadata.offset for b in sink.batches)
    assert (stats.events, stats.batches, stats.last_offset) == (40, len(sink.batches), "40")
    saved = await store.load(stream.stream_id)
    assert saved is not None
    assert saved.offset == "40"
    assert saved.completed_at is not None  # the stream's completion kept beside the offset


class RecordingStore(MemoryCheckpointStore):
    """Records each write with what the sink had confirmed when it was made."""

    def __init__(self) -> None:
        super().__init__()
        self.sink: MemorySink | None = None
        self.writes: list[tuple[int, int]] = []

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        assert self.sink is not None
        confirmed = max(self.sink.offsets, default=0)
        self.writes.append((int(checkpoint.offset or 0), confirmed))
        await super().save(stream_id, checkpoint)


async def test_the_stream_never_commits_past_the_batch_in_flight() -> None:
    store = RecordingStore()
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(30)
        sink = MemorySink(store, hold=True)
        store.sink = sink
        # The stream commits after every processed event and its timer every 50 ms: without
        # the gate its checkpoint would run ahead of the batch the sink has not confirmed.
        async with make_stream(emu, sink.checkpoints, commit_every=1, commit_interval=0.05) as st:
            sink.stop_after = (st, 30)
            run = asyncio.ensure_future(deliver(st, sink, batch_size=5))
            await asyncio.wait_for(sink.in_flight.wait(), 10)
            await asyncio.sleep(0.3)  # the reader goes ahead as far as it can
            ahead = st.stats.events
            sink.release.set()
            await asyncio.wait_for(run, 20)

    assert ahead > len(sink.batches[0].events)  # events were handed out beyond the batch
    assert sink.offsets == list(range(1, 31))
    assert store.writes  # the stream did write, and never beyond what the sink confirmed
    assert all(offset <= confirmed for offset, confirmed in store.writes)
    assert store.writes[-1][0] == 30


async def test_a_failed_batch_ends_delivery_and_is_not_committed() -> None:
    store = MemoryCheckpointStore()
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(20)
        sink = MemorySink(store)
        sink.fail_at = 12
        with pytest.raises(DeliveryError, match="refused"):
            async with make_stream(emu, sink.checkpoints) as stream:
                await asyncio.wait_for(deliver(stream, sink, batch_size=3), 20)

    delivered = sink.offsets
    assert delivered == list(range(1, len(delivered) + 1))
    assert max(delivered) < 12
    saved = await store.load(stream.stream_id)
    assert saved is not None
    assert saved.offset == str(max(delivered))


@pytest.mark.parametrize("size", [0, -1, 1.5, True])
async def test_deliver_refuses_a_bad_batch_size(size: Any) -> None:
    sink = MemorySink(MemoryCheckpointStore())
    with pytest.raises(ConfigurationError, match="batch_size"):
        await deliver(None, sink, batch_size=size)  # type: ignore[arg-type]


async def test_deliver_refuses_what_is_not_a_sink() -> None:
    with pytest.raises(ConfigurationError, match=r"deliver\(\) needs a sink"):
        await deliver(None, object())  # type: ignore[arg-type]


async def test_a_first_event_stores_the_position_before_it_once() -> None:
    store = MemoryCheckpointStore()
    gate = SinkCheckpoints(store)
    await gate.load("s1")
    await gate.arrived("s1", "41")
    await gate.arrived("s1", "42")
    saved = await store.load("s1")
    assert saved is not None
    assert (saved.offset, saved.unique_event_id) == ("40", None)

    stored = MemoryCheckpointStore()
    await stored.save("s1", Checkpoint("7", "uid-7"))
    gate = SinkCheckpoints(stored)
    await gate.load("s1")
    await gate.arrived("s1", "8")
    saved = await stored.load("s1")
    assert saved is not None
    assert saved.offset == "7"  # a stored offset is where the stream resumes: left alone


async def test_a_crash_before_the_first_batch_loses_nothing() -> None:
    # Without a stored offset the stream subscribes without one, and the gateway resumes after
    # what it SENT to the connection that died: the position before the first event must be
    # stored as soon as that event arrives.
    store = MemoryCheckpointStore()
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(20)
        failing = MemorySink(store)
        failing.fail_at = 1
        with pytest.raises(DeliveryError):
            async with make_stream(emu, failing.checkpoints) as stream:
                await asyncio.wait_for(deliver(stream, failing, batch_size=5), 20)
        assert emu.connections[0].events_sent == 20

        sink = MemorySink(store)
        async with make_stream(emu, sink.checkpoints) as stream:
            sink.stop_after = (stream, 20)
            await asyncio.wait_for(deliver(stream, sink, batch_size=5), 20)

    assert sink.offsets == list(range(1, 21))
