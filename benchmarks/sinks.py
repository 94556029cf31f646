"""Throughput of each sink against the same work written well by hand.

    python benchmarks/sinks.py                      # 20 000 events, batches of 100, 5 rounds
    python benchmarks/sinks.py -n 5000 --only nats --json

The events are made and validated once, before any timing; each contender then delivers all of
them in batches of the same size, each batch confirmed before the next (what ``deliver()``
does), and the checkpoint moved after each batch:

* PostgreSQL: ``PostgresSink.deliver`` (events and checkpoint in one transaction: one INSERT
  ... SELECT FROM unnest() of the batch's columns, pipelined with the checkpoint) against a loop
  that opens a transaction per batch, ``executemany`` the same INSERT ... ON CONFLICT DO
  NOTHING (psycopg pipelines it) and upserts the checkpoint.
* NATS JetStream: ``NatsSink.deliver`` through the checkpoint gate against a loop that
  publishes the batch with pipelined acks (``publish_async``, the same message-id header) and
  awaits them together.
* Webhook: ``WebhookSink.deliver`` against a loop that POSTs the same signed requests with one
  ``httpx.AsyncClient``, to a local aiohttp receiver answering 204.

Each round runs both contenders, one after the other (the order alternates from round to round)
on fresh tables / a fresh stream (dropped afterwards). The machine is shared and noisy, so the
figure is paired: each round's ratio sink / by hand, then the median of those ratios (a busy
moment slows the two contenders of its round alike, and one bad round does not move a median).
The events per second printed are the medians of each contender's rounds.
Needs PostgreSQL (OHIP_TEST_POSTGRES_DSN or the local ``test`` database), NATS with JetStream
(OHIP_TEST_NATS_URL or 127.0.0.1:4222) and the ``sinks`` and ``emulator`` extras.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import datetime, timezone
from typing import Any

from ohip_stream import Checkpoint, Event, MemoryCheckpointStore
from ohip_stream.sinks import Batch, NatsSink, PostgresSink, WebhookSink, sign, subject_for
from ohip_stream.testing import make_event

DSN = os.environ.get("OHIP_TEST_POSTGRES_DSN") or "postgresql://postgres@127.0.0.1:5432/test"
NATS_URL = os.environ.get("OHIP_TEST_NATS_URL") or "nats://127.0.0.1:4222"
SECRET = "whsec_" + base64.b64encode(b"benchmark key of 24 byte").decode()


def make_events(n: int) -> list[Event]:
    events = []
    for i in range(1, n + 1):
        wire = make_event(
            detail=[{"elementName": "ROOM", "newValue": str(100 + i % 50), "oldValue": "101"}]
        )
        wire["metadata"] = {"offset": str(i), "uniqueEventId": str(uuid.uuid4())}
        events.append(Event.model_validate(wire))
    return events


def batches(events: list[Event], size: int) -> list[Batch]:
    out = []
    for start in range(0, len(events), size):
        chunk = events[start : start + size]
        last = chunk[-1].metadata
        out.append(Batch("bench", "CHAIN1", chunk, Checkpoint(last.offset, last.unique_event_id)))
    return out


async def timed(work: Callable[[], Awaitable[None]], n: int) -> float:
    start = time.perf_counter()
    await work()
    return n / (time.perf_counter() - start)


# --- PostgreSQL ----------------------------------------------------------------------------------


async def pg_sink(events: list[Event], size: int) -> float:
    table = f"bench_{uuid.uuid4().hex[:8]}"
    sink = PostgresSink(DSN, table=table, checkpoint_table=f"{table}_cp")
    try:
        async with sink:
            todo = batches(events, size)

            async def work() -> None:
                for batch in todo:
                    async with sink.checkpoints.delivering(batch):
                        await sink.deliver(batch)

            return await timed(work, len(events))
    finally:
        await drop(table)


async def pg_by_hand(events: list[Event], size: int) -> float:
    import psycopg

    table = f"bench_{uuid.uuid4().hex[:8]}"
    # The same tables as the sink's (made by a sink, untimed).
    async with PostgresSink(DSN, table=table, checkpoint_table=f"{table}_cp"):
        pass
    insert = (
        f"INSERT INTO {table} (unique_event_id, stream_id, chain_code, hotel_id, module_name, "
        "event_name, primary_key, event_timestamp, occurred_at, event_offset, payload) "
        "VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s::jsonb) "
        "ON CONFLICT (unique_event_id) DO NOTHING"
    )
    upsert = (
        f"INSERT INTO {table}_cp (stream_id, last_offset, unique_event_id, updated_at) "
        "VALUES (%s, %s, %s, %s) ON CONFLICT (stream_id) DO UPDATE SET "
        "last_offset = EXCLUDED.last_offset, unique_event_id = EXCLUDED.unique_event_id, "
        "updated_at = EXCLUDED.updated_at"
    )
    try:
        async with await psycopg.AsyncConnection.connect(DSN) as conn:

            async def work() -> None:
                for start in range(0, len(events), size):
                    chunk = events[start : start + size]
                    rows = [
                        (
                            e.metadata.unique_event_id,
                            "bench",
                            "CHAIN1",
                            e.hotel_id,
                            e.module_name,
                            e.event_name,
                            e.primary_key,
                            e.timestamp,
                            _utc(e.occurred_at),
                            int(e.metadata.offset),
                            e.model_dump_json(by_alias=True),
                        )
                        for e in chunk
                    ]
                    async with conn.transaction(), conn.cursor() as cur:
                        await cur.executemany(insert, rows)
                        last = chunk[-1].metadata
                        await cur.execute(
                            upsert, ("bench", last.offset, last.unique_event_id, time.time())
                        )

            return await timed(work, len(events))
    finally:
        await drop(table)


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=timezone.utc) if value and value.tzinfo is None else value


async def drop(table: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(DSN, autocommit=True) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {table}, {table}_cp")


# --- NATS ---------------------------------------------------------------------------------------


async def with_stream(run: Callable[[str, Any], Awaitable[float]]) -> float:
    import nats

    name = f"BENCH{uuid.uuid4().hex[:8].upper()}"
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    await js.add_stream(name=name, subjects=[f"{name.lower()}.>"])
    try:
        return await run(name, nc)
    finally:
        await js.delete_stream(name)
        await nc.close()


async def nats_sink(events: list[Event], size: int) -> float:
    async def run(name: str, nc: Any) -> float:
        sink = NatsSink(
            subject=name.lower() + ".{chain}.{module}.{event}",
            checkpoints=MemoryCheckpointStore(),
            stream=name,
            connection=nc,
        )
        await sink.open()
        todo = batches(events, size)

        async def work() -> None:
            for batch in todo:
                async with sink.checkpoints.delivering(batch):
                    await sink.deliver(batch)

        return await timed(work, len(events))

    return await with_stream(run)


async def nats_by_hand(events: list[Event], size: int) -> float:
    async def run(name: str, nc: Any) -> float:
        js = nc.jetstream()
        template = name.lower() + ".{chain}.{module}.{event}"
        store = MemoryCheckpointStore()

        async def work() -> None:
            for start in range(0, len(events), size):
                chunk = events[start : start + size]
                acks = [
                    await js.publish_async(
                        subject_for(template, e, "CHAIN1"),
                        e.model_dump_json(by_alias=True).encode(),
                        stream=name,
                        headers={"Nats-Msg-Id": e.metadata.unique_event_id},
                    )
                    for e in chunk
                ]
                await asyncio.gather(*acks)
                last = chunk[-1].metadata
                await store.save("bench", Checkpoint(last.offset, last.unique_event_id))

        return await timed(work, len(events))

    return await with_stream(run)


# --- webhook ------------------------------------------------------------------------------------


async def with_receiver(run: Callable[[str], Awaitable[float]]) -> float:
    from aiohttp import web

    async def accept(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/hooks", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        return await run(f"http://127.0.0.1:{port}/hooks")
    finally:
        await runner.cleanup()


async def webhook_sink(events: list[Event], size: int) -> float:
    async def run(url: str) -> float:
        sink = WebhookSink(url, checkpoints=MemoryCheckpointStore(), secret=SECRET)
        todo = batches(events, size)
        async with sink:

            async def work() -> None:
                for batch in todo:
                    async with sink.checkpoints.delivering(batch):
                        await sink.deliver(batch)

            return await timed(work, len(events))

    return await with_receiver(run)


async def webhook_by_hand(events: list[Event], size: int) -> float:
    import httpx

    key = base64.b64decode(SECRET.removeprefix("whsec_"))

    async def run(url: str) -> float:
        store = MemoryCheckpointStore()
        async with httpx.AsyncClient(timeout=10) as client:

            async def work() -> None:
                for start in range(0, len(events), size):
                    chunk = events[start : start + size]
                    for e in chunk:
                        body = e.model_dump_json(by_alias=True).encode()
                        uid, now = e.metadata.unique_event_id, int(time.time())
                        headers = {
                            "content-type": "application/json",
                            "idempotency-key": uid,
                            "webhook-id": uid,
                            "webhook-timestamp": str(now),
                            "webhook-signature": sign(key, uid, now, body),
                        }
                        response = await client.post(url, content=body, headers=headers)
                        response.raise_for_status()
                    last = chunk[-1].metadata
                    await store.save("bench", Checkpoint(last.offset, last.unique_event_id))

            return await timed(work, len(events))

    return await with_receiver(run)


CONTENDERS: dict[str, tuple[Callable[..., Awaitable[float]], Callable[..., Awaitable[float]]]] = {
    "postgres": (pg_sink, pg_by_hand),
    "nats": (nats_sink, nats_by_hand),
    "webhook": (webhook_sink, webhook_by_hand),
}


async def run(n: int, size: int, rounds: int, only: list[str]) -> dict[str, Any]:
    events = make_events(n)
    webhook_n = min(n, 5000)  # one request per event: a smaller share keeps the run short
    result: dict[str, Any] = {"n": n, "batch_size": size, "rounds": rounds}
    for name in only:
        sink, by_hand = CONTENDERS[name]
        count = webhook_n if name == "webhook" else n
        subset = events[:count]
        sink_eps: list[float] = []
        hand_eps: list[float] = []
        for i in range(rounds):
            if i % 2 == 0:
                hand_eps.append(await by_hand(subset, size))
                sink_eps.append(await sink(subset, size))
            else:
                sink_eps.append(await sink(subset, size))
                hand_eps.append(await by_hand(subset, size))
        ratios = [s / h for s, h in zip(sink_eps, hand_eps, strict=True)]
        result[name] = {
            "events": count,
            "sink_eps": round(statistics.median(sink_eps)),
            "by_hand_eps": round(statistics.median(hand_eps)),
            "sink_vs_hand": round(statistics.median(ratios), 3),
            "ratios": [round(r, 3) for r in ratios],
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--events", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--only", action="append", choices=sorted(CONTENDERS))
    parser.add_argument("--json", action="store_true", help="a JSON object on the last line")
    args = parser.parse_args()
    only = args.only or list(CONTENDERS)
    result = asyncio.run(run(args.events, args.batch_size, args.rounds, only))
    for name in only:
        row = result[name]
        print(
            f"{name:9} {row['events']:>7} events  sink {row['sink_eps']:>8} ev/s  "
            f"by hand {row['by_hand_eps']:>8} ev/s  sink/hand {row['sink_vs_hand']:.2f} "
            f"(rounds: {' '.join(f'{r:.2f}' for r in row['ratios'])})",
            file=sys.stderr if args.json else sys.stdout,
        )
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
