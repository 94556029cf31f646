"""PostgreSQL sink: each batch of events and the stream's checkpoint in one transaction.

The events go into one table (default ``ohip_events``), created at first use::

    unique_event_id  TEXT PRIMARY KEY     -- uniqueEventId: a replayed event is not inserted again
    stream_id        TEXT NOT NULL        -- EventStream.stream_id (a digest, no key)
    chain_code       TEXT NOT NULL
    hotel_id         TEXT                 -- hotelId (NULL for chain-level events)
    module_name      TEXT NOT NULL        -- moduleName
    event_name       TEXT NOT NULL        -- eventName
    primary_key      TEXT NOT NULL        -- primaryKey
    event_timestamp  TEXT NOT NULL        -- timestamp, as the gateway sent it
    occurred_at      TIMESTAMPTZ          -- timestamp parsed (a zone-less one taken as UTC)
    event_offset     NUMERIC(20, 0) NOT NULL  -- metadata.offset
    payload          JSONB NOT NULL       -- the event's wire form
    delivered_at     TIMESTAMPTZ NOT NULL DEFAULT now()

The checkpoint goes into the table of :class:`~ohip_stream.PostgresCheckpointStore` (same
layout, default ``ohip_stream_checkpoints``), in the same transaction: after any crash either
the batch and its checkpoint are both there, or neither is and the stream resumes before the
batch. The user's ``on_batch(conn, events)`` runs in that transaction with the events that
were new (not already in the table), so the rows it writes are exactly-once too; a ``fence``
(the fleet's lease check) runs first and aborts the transaction by raising.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from ohip_stream._checkpoints_pg import (
    PostgresCheckpointStore,
    Statements,
    bounded_locks,
    quoted_table,
    where_of,
)
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._logging import redact
from ohip_stream.sinks._checkpoints import SinkCheckpoints
from ohip_stream.sinks._protocol import Batch, DeliveryError, DeliveryUnavailableError

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

    from ohip_stream._models import Event

__all__ = ["BatchCallback", "Fence", "PostgresSink"]

#: ``on_batch(conn, events)``: the user's SQL, in the sink's transaction, for the new events.
BatchCallback = Callable[["AsyncConnection[Any]", "Sequence[Event]"], Awaitable[None]]
#: ``fence(conn, stream_id)``: raises when this process may no longer write the stream (a lost
#: lease); runs first in the sink's transaction.
Fence = Callable[["AsyncConnection[Any]", str], Awaitable[None]]

_INSTALL_HINT = 'PostgresSink needs psycopg 3 and psycopg-pool: pip install "ohip-stream[sinks]"'

# SQLSTATE classes of failures that pass by themselves (PostgreSQL appendix A): connection
# exceptions, rolled-back transactions (serialization, deadlock), insufficient resources,
# operator intervention.
_TRANSIENT_CLASSES = ("08", "40", "53", "57")
_ATTEMPTS = 3


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=timezone.utc)


class _EventSql:
    def __init__(self, table: str) -> None:
        from psycopg import sql

        self.create = sql.SQL(
            f"CREATE TABLE IF NOT EXISTS {table} ("
            "unique_event_id TEXT PRIMARY KEY, stream_id TEXT NOT NULL, "
            "chain_code TEXT NOT NULL, hotel_id TEXT, module_name TEXT NOT NULL, "
            "event_name TEXT NOT NULL, primary_key TEXT NOT NULL, "
            "event_timestamp TEXT NOT NULL, occurred_at TIMESTAMPTZ, "
            "event_offset NUMERIC(20, 0) NOT NULL, payload JSONB NOT NULL, "
            "delivered_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        # One statement per batch, and each event sent once: its wire form (the JSON every
        # other column but occurred_at is read from, by the server) and its parsed time, as two
        # arrays in binary (no escaping of the JSON). OFFSET 0 keeps the subquery from being
        # folded into the outer one, which would parse the JSON once per column read from it.
        # Plain text (the table name is checked and quoted): psycopg caches its conversion.
        self.insert = (
            f"INSERT INTO {table} (unique_event_id, stream_id, chain_code, hotel_id, "
            "module_name, event_name, primary_key, event_timestamp, occurred_at, event_offset, "
            "payload) SELECT p->'metadata'->>'uniqueEventId', %s, %s, p->>'hotelId', "
            "p->>'moduleName', p->>'eventName', p->>'primaryKey', p->>'timestamp', o, "
            "(p->'metadata'->>'offset')::numeric, p FROM (SELECT j::jsonb AS p, o FROM "
            "unnest(%b::text[], %b::timestamptz[]) AS e(j, o) OFFSET 0) AS e "
            "ON CONFLICT (unique_event_id) DO NOTHING"
        )
        self.insert_returning = self.insert + " RETURNING unique_event_id"


def _columns(events: Sequence[Event]) -> tuple[list[str], list[datetime | None]]:
    """The events' wire forms and their parsed times: the insert's two arrays."""
    payloads = [event.model_dump_json(by_alias=True) for event in events]
    times = [_utc(event.occurred_at) for event in events]
    return payloads, times


class PostgresSink:
    """Events into a PostgreSQL table, exactly once, with the stream's checkpoint.

    Args:
        dsn_or_pool: A connection string (the sink makes and closes its pool) or a caller's
            open ``psycopg_pool.AsyncConnectionPool`` (the caller closes it).
        table: The events table (``schema.table`` allowed).
        checkpoint_table: The checkpoints table, as :class:`~ohip_stream.PostgresCheckpointStore`
            lays it out; ``ohip-stream checkpoint`` and the fleet read the same one.
        on_batch: ``async (conn, events)``: your SQL in the same transaction, for the events that
            were not in the table yet (a replay after a crash gives it none twice).
        fence: ``async (conn, stream_id)``, run first in the transaction: raise to refuse the
            write (the fleet checks its lease's epoch here).
        timeout: Seconds to wait for a connection before the batch fails as unavailable.

    Use it as ``async with PostgresSink(...) as sink`` and give the stream
    ``checkpoints=sink.checkpoints``.
    """

    def __init__(
        self,
        dsn_or_pool: str | AsyncConnectionPool[Any],
        *,
        table: str = "ohip_events",
        checkpoint_table: str = "ohip_stream_checkpoints",
        on_batch: BatchCallback | None = None,
        fence: Fence | None = None,
        timeout: float = 10.0,
    ) -> None:
        try:
            from psycopg_pool import AsyncConnectionPool
        except ImportError as exc:
            raise ConfigurationError(_INSTALL_HINT) from exc
        for name, value in (("on_batch", on_batch), ("fence", fence)):
            if value is not None and not callable(value):
                raise ConfigurationError(f"{name} must be an async function, got {value!r}")
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise ConfigurationError(f"timeout must be a number of seconds, got {timeout!r}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"timeout must be above 0 seconds, got {timeout!r}")
        self.table = table
        self.checkpoint_table = checkpoint_table
        self._events_sql = _EventSql(quoted_table(table))
        self._checkpoint_upsert = Statements(quoted_table(checkpoint_table)).upsert.as_string()
        self._checkpoint_create = Statements(quoted_table(checkpoint_table)).create
        self._on_batch = on_batch
        self._fence = fence
        self._timeout = float(timeout)
        if isinstance(dsn_or_pool, str):
            self.where = where_of(dsn_or_pool, table)
            self._owned = True
            self._pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                dsn_or_pool,
                min_size=1,
                max_size=4,
                open=False,
                kwargs={"autocommit": True, "application_name": "ohip-stream-sink"},
                name="ohip-stream-sink",
                timeout=self._timeout,
                # No check before each use (one round trip per batch): a connection the
                # server dropped fails its batch as transient, and the batch is retried.
                configure=bounded_locks(self._timeout),
            )
        elif isinstance(dsn_or_pool, AsyncConnectionPool):
            self.where = f"PostgreSQL pool {dsn_or_pool.name}, table {table}"
            self._owned = False
            self._pool = dsn_or_pool
        else:
            raise ConfigurationError(
                "PostgresSink needs a PostgreSQL DSN (postgresql://user@host/db) or a "
                f"psycopg_pool.AsyncConnectionPool, got {type(dsn_or_pool).__name__}"
            )
        store = PostgresCheckpointStore(self._pool, table=checkpoint_table, timeout=timeout)
        self._checkpoints = SinkCheckpoints(store, sink_writes_offset=True)
        self._ready = False
        self._ready_lock = asyncio.Lock()

    @property
    def checkpoints(self) -> SinkCheckpoints:
        """The store to give the stream: the checkpoint table, written with the events."""
        return self._checkpoints

    async def open(self) -> None:
        """Open the pool (a DSN's) and create the tables that do not exist; idempotent."""
        async with self._ready_lock:
            if self._ready:
                return
            if self._owned:
                await self._pool.open(wait=False)
            await self._transaction("create the tables of", self._create)
            self._ready = True

    async def _create(self, conn: AsyncConnection[Any]) -> None:
        # One creator at a time: two sinks starting together must not both create the table.
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self.table,))
        await conn.execute(self._events_sql.create)
        await conn.execute(self._checkpoint_create)

    async def deliver(self, batch: Batch) -> None:
        """Insert the batch's new events, run ``on_batch``, write the checkpoint: one
        transaction (sent in one round trip unless a fence or ``on_batch`` must see a result
        first), retried (it rolled back) while the failure is transient."""
        if not self._ready:
            await self.open()

        async def write(conn: AsyncConnection[Any]) -> None:
            await self._write(conn, batch)

        await self._transaction("write a batch to", write)

    async def _write(self, conn: AsyncConnection[Any], batch: Batch) -> None:
        if self._fence is not None:
            await self._fence(conn, batch.stream_id)
        if batch.fence is not None:
            await batch.fence(conn)
        events = batch.events
        if events:
            params = (batch.stream_id, batch.chain_code, *_columns(events))
            if self._on_batch is None:
                await conn.execute(self._events_sql.insert, params)
            else:
                cursor = await conn.execute(self._events_sql.insert_returning, params)
                inserted = {row[0] for row in await cursor.fetchall()}
                new = [e for e in events if e.metadata.unique_event_id in inserted]
                if new:
                    await self._on_batch(conn, new)
        cp = batch.checkpoint
        await conn.execute(
            self._checkpoint_upsert,
            (
                batch.stream_id,
                cp.offset,
                cp.unique_event_id,
                cp.completed_at,
                time.time(),
                cp.gateway_host,
                cp.chain_code,
            ),
        )

    async def _transaction(
        self, action: str, op: Callable[[AsyncConnection[Any]], Awaitable[None]]
    ) -> None:
        import psycopg
        from psycopg_pool import PoolTimeout

        for attempt in range(1, _ATTEMPTS + 1):
            try:
                # Pipeline mode: BEGIN, the statements and COMMIT go out together; a result
                # asked for (a fence's check, the ids for on_batch) flushes what is queued.
                async with (
                    self._pool.connection(timeout=self._timeout) as conn,
                    conn.pipeline(),
                    conn.transaction(),
                ):
                    await op(conn)
                return
            except (psycopg.Error, PoolTimeout, OSError) as exc:
                state = str(getattr(exc, "sqlstate", None) or "")
                transient = isinstance(exc, (PoolTimeout, psycopg.OperationalError, OSError)) or (
                    state[:2] in _TRANSIENT_CLASSES
                )
                if transient and attempt < _ATTEMPTS:
                    await asyncio.sleep(0.1 * 2**attempt)
                    continue
                detail = redact(str(exc).strip() or type(exc).__name__)
                message = f"cannot {action} {self.where}: {detail}"
                if transient:
                    raise DeliveryUnavailableError(
                        f"{message} (the server is unreachable or rolled back: check it is up)"
                    ) from exc
                raise DeliveryError(f"{message} (check the table and the server's log)") from exc

    async def aclose(self) -> None:
        """Close the sink's own pool (a caller's stays open); idempotent."""
        if self._owned:
            await self._pool.close()

    async def __aenter__(self) -> PostgresSink:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"PostgresSink({self.where!r})"
