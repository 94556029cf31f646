"""PostgresSink against the real PostgreSQL: events, the user's rows and the checkpoint in one
transaction; a replay inserts nothing twice and gives the callback nothing twice."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest

from helpers.services import import_or_skip, postgres_dsn_or_skip
from helpers.streams import FAST_TIMINGS, emulator_auth
from ohip_stream import Checkpoint, ConfigurationError, Event, EventStream, PostgresCheckpointStore
from ohip_stream.sinks import Batch, DeliveryError, PostgresSink, deliver
from ohip_stream.testing import Emulator, make_event


@pytest.fixture
async def tables() -> AsyncIterator[tuple[str, str]]:
    """A DSN and a fresh table-name prefix; the tables are dropped afterwards."""
    import_or_skip("psycopg")
    dsn = postgres_dsn_or_skip()
    import psycopg

    prefix = f"sink_{uuid.uuid4().hex[:10]}"
    yield dsn, prefix
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {prefix}, {prefix}_cp, {prefix}_business")


def event(offset: int, name: str = "CHECK IN", hotel: str | None = "HOTEL1") -> Event:
    wire = make_event(event_name=name, hotel_id=hotel, timestamp="28-APR-24 06.18.59.028027 AM")
    wire["metadata"] = {"offset": str(offset), "uniqueEventId": f"uid-{offset}"}
    return Event.model_validate(wire)


def batch(*offsets: int, completed_at: float | None = None) -> Batch:
    events = [event(o) for o in offsets]
    last = events[-1].metadata
    checkpoint = Checkpoint(last.offset, last.unique_event_id, completed_at=completed_at)
    return Batch("stream1", "CHAIN1", events, checkpoint)


async def rows(dsn: str, sql: str) -> list[tuple[Any, ...]]:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(sql)
        return await cursor.fetchall() if cursor.description else []


async def test_a_batch_writes_its_events_and_the_checkpoint(tables: tuple[str, str]) -> None:
    dsn, t = tables
    async with PostgresSink(dsn, table=t, checkpoint_table=f"{t}_cp") as sink:
        await sink.deliver(batch(1, 2, 3, completed_at=12.5))

    got = await rows(
        dsn,
        f"SELECT unique_event_id, stream_id, chain_code, hotel_id, module_name, event_name, "
        f"event_offset, occurred_at IS NOT NULL, payload->'metadata'->>'offset' FROM {t} "
        "ORDER BY event_offset",
    )
    assert [r[0] for r in got] == ["uid-1", "uid-2", "uid-3"]
    assert got[0][1:6] == ("stream1", "CHAIN1", "HOTEL1", "RESERVATION", "CHECK IN")
    assert [int(r[6]) for r in got] == [1, 2, 3]
    assert all(r[7] for r in got)
    assert [r[8] for r in got] == ["1", "2", "3"]  # the wire form, as JSON
    # The checkpoint table is PostgresCheckpointStore's: the store reads what the sink wrote.
    store = PostgresCheckpointStore(dsn, table=f"{t}_cp")
    try:
        saved = await store.load("stream1")
    finally:
        await store.aclose()
    assert saved is not None
    assert (saved.offset, saved.unique_event_id, saved.completed_at) == ("3", "uid-3", 12.5)


async def test_a_replayed_batch_inserts_nothing_twice_and_calls_back_once(
    tables: tuple[str, str],
) -> None:
    dsn, t = tables
    seen: list[str] = []

    async def on_batch(conn: Any, events: Sequence[Event]) -> None:
        seen.extend(e.metadata.unique_event_id for e in events)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {t}_business (uid TEXT)"  # no unique key: counts
        )
        for e in events:
            await conn.execute(
                f"INSERT INTO {t}_business VALUES (%s)", (e.metadata.unique_event_id,)
            )

    async with PostgresSink(dsn, table=t, checkpoint_table=f"{t}_cp", on_batch=on_batch) as sink:
        await sink.deliver(batch(1, 2, 3))
        await sink.deliver(batch(2, 3, 4, 5))  # a resume after a crash replays 2 and 3

    assert seen == ["uid-1", "uid-2", "uid-3", "uid-4", "uid-5"]
    business = await rows(dsn, f"SELECT uid FROM {t}_business ORDER BY uid")
    assert [r[0] for r in business] == ["uid-1", "uid-2", "uid-3", "uid-4", "uid-5"]
    assert await rows(dsn, f"SELECT count(*) FROM {t}") == [(5,)]


async def test_a_failing_callback_writes_nothing(tables: tuple[str, str]) -> None:
    dsn, t = tables

    async def on_batch(conn: Any, events: Sequence[Event]) -> None:
        raise RuntimeError("the business rule failed")

    async with PostgresSink(dsn, table=t, checkpoint_table=f"{t}_cp", on_batch=on_batch) as sink:
        with pytest.raises(RuntimeError, match="business rule"):
            await sink.deliver(batch(1, 2))

    assert await rows(dsn, f"SELECT count(*) FROM {t}") == [(0,)]
    assert await rows(dsn, f"SELECT count(*) FROM {t}_cp") == [(0,)]


async def test_a_refusing_fence_writes_nothing(tables: tuple[str, str]) -> None:
    dsn, t = tables
    fenced: list[str] = []

    async def fence(conn: Any, stream_id: str) -> None:
        fenced.append(stream_id)
        raise DeliveryError("the lease of stream1 was taken over (epoch 3 < 4)")

    async with PostgresSink(dsn, table=t, checkpoint_table=f"{t}_cp", fence=fence) as sink:
        with pytest.raises(DeliveryError, match="epoch"):
            await sink.deliver(batch(1))

    assert fenced == ["stream1"]
    assert await rows(dsn, f"SELECT count(*) FROM {t}") == [(0,)]


async def test_a_refused_write_is_a_final_delivery_error_naming_the_table(
    tables: tuple[str, str],
) -> None:
    dsn, t = tables
    async with PostgresSink(dsn, table=t, checkpoint_table=f"{t}_cp") as sink:
        await rows(dsn, f"ALTER TABLE {t} ADD COLUMN extra TEXT NOT NULL")
        with pytest.raises(DeliveryError, match=f"table {t}") as caught:
            await sink.deliver(batch(1))
    assert not caught.value.retriable


async def test_an_unreachable_server_is_a_retriable_delivery_error() -> None:
    import_or_skip("psycopg")
    sink = PostgresSink(
        "postgresql://someone:hunter2secret@127.0.0.1:9/none", table="events", timeout=0.3
    )
    with pytest.raises(DeliveryError) as caught:
        await sink.deliver(batch(1))
    await sink.aclose()
    assert caught.value.retriable
    assert "hunter2secret" not in str(caught.value)
    assert "hunter2secret" not in repr(sink)


@pytest.mark.parametrize("table", ["1bad", "a;drop", "", "a.b.c"])
def test_a_bad_table_name_is_refused(table: str) -> None:
    import_or_skip("psycopg")
    with pytest.raises(ConfigurationError, match="table"):
        PostgresSink("postgresql://u@127.0.0.1/db", table=table)


async def test_a_stream_into_the_table_resumes_without_duplicates(
    tables: tuple[str, str],
) -> None:
    dsn, t = tables

    inserted = 0

    async def run(emu: Emulator, until: int) -> None:
        async def on_batch(conn: Any, events: Sequence[Event]) -> None:
            nonlocal inserted
            inserted += len(events)
            if inserted >= until:
                stream.request_stop()

        async with PostgresSink(
            dsn, table=t, checkpoint_table=f"{t}_cp", on_batch=on_batch
        ) as sink:
            stream = EventStream(
                gateway_url=emu.gateway_url,
                app_key=emu.app_key,
                chain_code=emu.chain_code,
                auth=emulator_auth(emu),
                checkpoints=sink.checkpoints,
                timings=FAST_TIMINGS,
            )
            async with stream:
                await asyncio.wait_for(deliver(stream, sink, batch_size=8), 20)

    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(25)
        await run(emu, 25)
        await emu.publish(15)
        await run(emu, 40)
        ids = [e["metadata"]["uniqueEventId"] for e in emu.events()]

    got = await rows(dsn, f"SELECT unique_event_id FROM {t} ORDER BY event_offset")
    assert [r[0] for r in got] == ids
    assert await rows(dsn, f"SELECT last_offset FROM {t}_cp") == [("40",)]


async def test_a_connection_the_server_dropped_is_replaced_and_the_batch_retried(
    tables: tuple[str, str],
) -> None:
    dsn, t = tables
    async with PostgresSink(dsn, table=t, checkpoint_table=f"{t}_cp") as sink:
        await sink.deliver(batch(1, 2))
        killed = await rows(
            dsn,
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE application_name = 'ohip-stream-sink' AND pid <> pg_backend_pid()",
        )
        assert killed
        await sink.deliver(batch(3, 4))

    assert await rows(dsn, f"SELECT count(*) FROM {t}") == [(4,)]
    assert await rows(dsn, f"SELECT last_offset FROM {t}_cp") == [("4",)]
