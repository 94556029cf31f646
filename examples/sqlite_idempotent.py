"""Write events into SQLite idempotently, keyed on ``uniqueEventId``.

    python examples/sqlite_idempotent.py --db events.db      # a local emulator
    python examples/sqlite_idempotent.py --real --db events.db
    python examples/sqlite_idempotent.py --real --db events.db --replay-from 1200

A resume or a replay can hand an event to your code again (see "Delivery guarantees" in the
docs). Keyed on ``uniqueEventId``, writing it again changes nothing: the row is already there.
The stream's own checkpoint lives in a second file (``--checkpoint-db``, default
``<db>.offsets``). ``--replay-from`` processes past events again without moving that checkpoint.

Without OHIP_GATEWAY_URL (or with --emulator) it runs against a local emulator: it stores the
events, then replays them from the first offset to show that nothing is written twice.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sqlite3
import sys
from datetime import datetime, timezone

from ohip_stream import (
    Event,
    EventStream,
    MemoryCheckpointStore,
    OhipError,
    SQLiteCheckpointStore,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS business_events (
    unique_event_id TEXT PRIMARY KEY,
    stream_offset   TEXT NOT NULL,
    module_name     TEXT NOT NULL,
    event_name      TEXT NOT NULL,
    primary_key     TEXT NOT NULL,
    hotel_id        TEXT,
    payload         TEXT NOT NULL,   -- the event in its wire form (JSON)
    stored_at       TEXT NOT NULL
)
"""


def open_database(path: str) -> sqlite3.Connection:
    database = sqlite3.connect(path)
    database.execute("PRAGMA journal_mode=WAL")
    database.execute(SCHEMA)
    return database


def store(database: sqlite3.Connection, event: Event) -> bool:
    """Insert the event; False when a row with its uniqueEventId is already there."""
    with database:  # one transaction per event, committed before the stream commits its offset
        cursor = database.execute(
            "INSERT INTO business_events VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (unique_event_id) DO NOTHING",
            (
                event.unique_event_id,
                event.offset,
                event.module_name,
                event.event_name,
                event.primary_key,
                event.hotel_id,
                event.model_dump_json(by_alias=True),
                datetime.now(timezone.utc).isoformat(),
            ),
        )
    return cursor.rowcount == 1


async def consume(
    database: sqlite3.Connection, max_events: int | None, label: str, **options: object
) -> tuple[int, int]:
    """Store events until ``max_events`` (or forever); returns (new rows, already stored)."""
    new = known = 0
    async with EventStream.from_env(**options) as stream:
        stream.install_signal_handlers()  # Ctrl-C / SIGTERM: complete, drain, commit
        async for event in stream:
            # SQLite is quick enough to call inline; a slow database belongs in a thread
            # (asyncio.to_thread) or behind a queue.
            if store(database, event):
                new += 1
                print(f"{label}: stored offset {event.offset} {event.event_name}", flush=True)
            else:
                known += 1
                print(f"{label}: offset {event.offset} already stored", flush=True)
            if max_events and new + known >= max_events:
                break
    print(f"{label}: {new} new rows, {known} already stored", flush=True)
    return new, known


async def run(args: argparse.Namespace) -> int:
    database = open_database(args.db)
    checkpoint_db = (
        args.checkpoint_db or os.environ.get("OHIP_CHECKPOINT_DB") or f"{args.db}.offsets"
    )
    try:
        async with contextlib.AsyncExitStack() as stack:
            emulator = None
            if args.emulator:
                from ohip_stream.testing import Emulator

                # Oracle asks for 10 s between complete and the next subscribe; the emulator's
                # gap is compressed so that the replay below starts at once.
                emulator = await stack.enter_async_context(Emulator(complete_gap=0.2))
                os.environ.update(emulator.env())
                # The client keeps the same gap as this emulator (every consumer of the stream
                # on this host waits it after the previous one completed).
                os.environ["OHIP_TIMINGS__COMPLETE_GAP"] = "0.2"
                await emulator.publish(args.max_events)
                print(
                    f"no OHIP_GATEWAY_URL: streaming from an emulator at {emulator.gateway_url}",
                    file=sys.stderr,
                )

            if args.replay_from is None:
                checkpoints = await stack.enter_async_context(SQLiteCheckpointStore(checkpoint_db))
                await consume(database, args.max_events, "live", checkpoints=checkpoints)
            if emulator is not None or args.replay_from is not None:
                # A replay has a checkpoint store of its own: it must neither skip what the live
                # consumer recorded nor move its checkpoint. Stop the live consumer first: a
                # stream has one consumer at a time.
                await consume(
                    database,
                    args.max_events,
                    "replay",
                    offset=args.replay_from or "1",
                    checkpoints=MemoryCheckpointStore(),
                )
        (rows,) = database.execute("SELECT count(*) FROM business_events").fetchone()
        print(f"table business_events holds {rows} rows", flush=True)
    finally:
        database.close()
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--emulator", action="store_true", help="stream from a local emulator")
    mode.add_argument("--real", action="store_true", help="use the OHIP_* variables")
    parser.add_argument("--db", default="events.db", help="the SQLite file of events")
    parser.add_argument("--checkpoint-db", default=None, help="the SQLite file of checkpoints")
    parser.add_argument("--replay-from", default=None, metavar="OFFSET", help="replay from here")
    parser.add_argument("--max-events", type=int, default=None, help="stop after N events")
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logs on stderr")
    args = parser.parse_args()
    args.emulator = args.emulator or (not args.real and "OHIP_GATEWAY_URL" not in os.environ)
    if args.emulator and args.max_events is None:
        args.max_events = 10
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return asyncio.run(run(args))
    except OhipError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
