"""The lease store in PostgreSQL: a fleet on many hosts.

psycopg 3 (async) with psycopg_pool, the ``fleet`` extra: the same driver as
:class:`~ohip_stream.PostgresCheckpointStore`, so one dependency serves both, and its pool
checks a connection before lending it (a server restart or a cut costs no failed operation per
pooled connection). Every comparison with "now" uses the server's ``clock_timestamp()``.

A checkpoint write takes the lease row ``FOR SHARE`` in its transaction: a claim (an
``UPDATE`` of that row) waits until the write is committed, so no write from an old epoch can
land after a new owner took the stream. The checkpoints go to the table of
:class:`~ohip_stream.PostgresCheckpointStore` (``ohip_stream_checkpoints``).

Row locks are bounded in time on the server's side: a worker frozen inside a transaction (a
SIGSTOP, a paused VM) would otherwise hold the budget row, and stall every other worker's
upgrades, for as long as it stays frozen.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from ohip_stream._checkpoints import Checkpoint
from ohip_stream._checkpoints_pg import _INSTALL_HINT, Statements, bounded_locks, where_of
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._logging import redact
from ohip_stream.fleet._errors import (
    LeaseStoreError,
    LeaseStoreUnavailableError,
    StaleEpochError,
)
from ohip_stream.fleet._model import Lease, StreamSpec, SyncResult, Worker
from ohip_stream.fleet._store import SCHEMA_VERSION

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PostgresLeaseStore"]

_T = TypeVar("_T")

_NOW = "extract(epoch from clock_timestamp())::double precision"
_CHECKPOINTS = '"ohip_stream_checkpoints"'

_TABLES = (
    "CREATE TABLE IF NOT EXISTS ohip_fleet_schema (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ohip_fleet_streams (name TEXT PRIMARY KEY, "
    "environment TEXT NOT NULL, chain_code TEXT NOT NULL, spec TEXT NOT NULL, "
    "updated_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ohip_fleet_leases (stream TEXT PRIMARY KEY, owner TEXT, "
    "epoch BIGINT NOT NULL DEFAULT 0, expires_at DOUBLE PRECISION, "
    "acquired_at DOUBLE PRECISION)",
    "CREATE TABLE IF NOT EXISTS ohip_fleet_workers (worker_id TEXT PRIMARY KEY, "
    "host TEXT NOT NULL, pid INTEGER NOT NULL, started_at DOUBLE PRECISION NOT NULL, "
    "expires_at DOUBLE PRECISION NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ohip_fleet_upgrades (key_id TEXT NOT NULL, "
    "at DOUBLE PRECISION NOT NULL, holder TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS ohip_fleet_upgrades_key ON ohip_fleet_upgrades (key_id, at)",
    "CREATE TABLE IF NOT EXISTS ohip_fleet_budgets (key_id TEXT PRIMARY KEY)",
)

_LEASE_COLUMNS = f"stream, owner, epoch, expires_at - {_NOW}, acquired_at"


def _lease(row: Any) -> Lease:
    stream, owner, epoch, remaining, acquired_at = row
    return Lease(stream, owner, int(epoch), None if owner is None else remaining, acquired_at)


class PostgresLeaseStore:
    """Leases, workers, streams, checkpoints and the upgrade budget in PostgreSQL.

    ``timeout`` is how long an operation waits for a pooled connection, and a statement for a
    row another worker holds, before it raises
    :class:`~ohip_stream.fleet.LeaseStoreUnavailableError`; a session left idle inside a
    transaction that long (its worker frozen) is ended by the server, which frees its rows.
    ``max_size`` bounds the pool: keep ``workers x max_size`` under the server's
    ``max_connections``.
    """

    def __init__(self, dsn: str, *, timeout: float = 5.0, max_size: int = 10) -> None:
        try:
            import psycopg  # noqa: F401
            import psycopg_pool  # noqa: F401
        except ImportError as exc:
            raise ConfigurationError(
                _INSTALL_HINT.replace("PostgresCheckpointStore", "the fleet on PostgreSQL")
            ) from exc
        self._dsn = dsn
        self.where = where_of(dsn, "ohip_fleet_*")
        self.timeout = timeout
        self.max_size = max_size
        self._pool: AsyncConnectionPool[Any] | None = None
        self._statements = Statements(_CHECKPOINTS)
        self._closed = False
        self._opening = asyncio.Lock()

    # --- plumbing -------------------------------------------------------------------------------

    async def _open(self) -> AsyncConnectionPool[Any]:
        if self._closed:
            raise LeaseStoreError(f"the lease store {self.where} is closed")
        async with self._opening:
            if self._pool is None:
                from psycopg_pool import AsyncConnectionPool

                pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                    self._dsn,
                    min_size=1,
                    max_size=self.max_size,
                    open=False,
                    kwargs={"autocommit": True},
                    name="ohip-stream-fleet",
                    timeout=self.timeout,
                    check=AsyncConnectionPool.check_connection,
                    configure=bounded_locks(self.timeout),
                )
                await pool.open(wait=False)
                self._pool = pool
        return self._pool

    async def _run(
        self, op: Callable[[AsyncConnection[Any]], Awaitable[_T]], *, transaction: bool = True
    ) -> _T:
        """``op`` on a pooled connection, in a transaction (a single statement runs without one:
        autocommit makes it atomic, in fewer round trips)."""
        import psycopg
        from psycopg_pool import PoolClosed, PoolTimeout

        pool = await self._open()
        try:
            async with pool.connection(timeout=self.timeout) as conn:
                if not transaction:
                    return await op(conn)
                async with conn.transaction():
                    return await op(conn)
        except (PoolTimeout, psycopg.OperationalError, OSError) as exc:
            raise LeaseStoreUnavailableError(
                f"the fleet database {self.where} cannot be reached: "
                f"{redact(str(exc).strip() or type(exc).__name__)} (check the server is up and "
                "reachable)"
            ) from exc
        except (PoolClosed, psycopg.Error) as exc:
            raise LeaseStoreError(
                f"the fleet database {self.where} refused an operation: "
                f"{redact(str(exc).strip() or type(exc).__name__)}"
            ) from exc

    async def _fetchone(self, sql: str, params: Sequence[Any] = ()) -> Any:
        async def op(conn: AsyncConnection[Any]) -> Any:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchone()

        return await self._run(op, transaction=False)

    async def _fetchall(self, sql: str, params: Sequence[Any] = ()) -> list[Any]:
        async def op(conn: AsyncConnection[Any]) -> list[Any]:
            cursor = await conn.execute(sql, params)
            return await cursor.fetchall()

        return await self._run(op, transaction=False)

    # --- schema ---------------------------------------------------------------------------------

    async def setup(self) -> None:
        async def op(conn: AsyncConnection[Any]) -> None:
            # One creator at a time: workers starting together do not race on CREATE.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext('ohip_fleet_schema'))")
            for statement in (*_TABLES, self._statements.create):
                await conn.execute(statement)
            cursor = await conn.execute("SELECT max(version) FROM ohip_fleet_schema")
            row = await cursor.fetchone()
            version = row[0] if row else None
            if version is None:
                await conn.execute(
                    "INSERT INTO ohip_fleet_schema (version) VALUES (%s)", (SCHEMA_VERSION,)
                )
            elif version > SCHEMA_VERSION:
                raise LeaseStoreError(
                    f"the fleet database {self.where} has schema version {version}, newer than "
                    f"this release's {SCHEMA_VERSION}: upgrade ohip-stream on this worker"
                )

        await self._run(op)

    async def now(self) -> float:
        row = await self._fetchone(f"SELECT {_NOW}")
        return float(row[0])

    # --- streams --------------------------------------------------------------------------------

    async def sync_streams(self, specs: Sequence[StreamSpec], *, prune: bool) -> SyncResult:
        async def op(conn: AsyncConnection[Any]) -> SyncResult:
            cursor = await conn.execute("SELECT name, spec FROM ohip_fleet_streams FOR UPDATE")
            old = dict(await cursor.fetchall())
            added: list[str] = []
            updated: list[str] = []
            unchanged: list[str] = []
            for spec in specs:
                text = spec.to_json()
                if old.get(spec.name) == text:
                    unchanged.append(spec.name)
                    continue
                (updated if spec.name in old else added).append(spec.name)
                await conn.execute(
                    (
                        "INSERT INTO ohip_fleet_streams (name, environment, chain_code, spec, "
                        f"updated_at) VALUES (%s, %s, %s, %s, {_NOW}) ON CONFLICT (name) DO "
                        "UPDATE SET environment = EXCLUDED.environment, chain_code = "
                        "EXCLUDED.chain_code, spec = EXCLUDED.spec, updated_at = "
                        "EXCLUDED.updated_at"
                    ),
                    (spec.name, spec.environment, spec.chain_code, text),
                )
                await conn.execute(
                    "INSERT INTO ohip_fleet_leases (stream, epoch) VALUES (%s, 0) "
                    "ON CONFLICT (stream) DO NOTHING",
                    (spec.name,),
                )
            names = {spec.name for spec in specs}
            removed = sorted(set(old) - names) if prune else []
            for name in removed:
                await conn.execute("DELETE FROM ohip_fleet_streams WHERE name = %s", (name,))
                await conn.execute("DELETE FROM ohip_fleet_leases WHERE stream = %s", (name,))
            return SyncResult(tuple(added), tuple(updated), tuple(removed), tuple(unchanged))

        return await self._run(op)

    async def streams(self) -> list[StreamSpec]:
        rows = await self._fetchall("SELECT spec FROM ohip_fleet_streams ORDER BY name")
        return [StreamSpec.from_json(row[0]) for row in rows]

    # --- workers --------------------------------------------------------------------------------

    async def heartbeat(self, worker_id: str, host: str, pid: int, ttl: float) -> None:
        async def op(conn: AsyncConnection[Any]) -> None:
            await conn.execute(
                (
                    "INSERT INTO ohip_fleet_workers (worker_id, host, pid, started_at, "
                    f"expires_at) VALUES (%s, %s, %s, {_NOW}, {_NOW} + %s) ON CONFLICT "
                    "(worker_id) DO UPDATE SET expires_at = EXCLUDED.expires_at"
                ),
                (worker_id, host, pid, ttl),
            )
            # Workers long gone are forgotten (an hour after their heartbeat expired).
            await conn.execute(f"DELETE FROM ohip_fleet_workers WHERE expires_at < {_NOW} - 3600")

        await self._run(op)

    async def workers(self) -> list[Worker]:
        rows = await self._fetchall(
            f"SELECT worker_id, host, pid, expires_at - {_NOW} FROM ohip_fleet_workers "
            f"WHERE expires_at > {_NOW} ORDER BY worker_id"
        )
        return [Worker(*row) for row in rows]

    async def leave(self, worker_id: str) -> None:
        await self._fetchall(
            "DELETE FROM ohip_fleet_workers WHERE worker_id = %s RETURNING worker_id", (worker_id,)
        )

    # --- leases ---------------------------------------------------------------------------------

    async def leases(self) -> list[Lease]:
        rows = await self._fetchall(
            f"SELECT {_LEASE_COLUMNS} FROM ohip_fleet_leases ORDER BY stream"
        )
        return [_lease(row) for row in rows]

    async def claim(self, stream: str, owner: str, ttl: float) -> Lease | None:
        row = await self._fetchone(
            f"UPDATE ohip_fleet_leases SET owner = %s, epoch = epoch + 1, "
            f"expires_at = {_NOW} + %s, acquired_at = {_NOW} WHERE stream = %s AND "
            f"(owner IS NULL OR expires_at IS NULL OR expires_at <= {_NOW}) "
            f"RETURNING {_LEASE_COLUMNS}",
            (owner, ttl, stream),
        )
        return None if row is None else _lease(row)

    async def renew(self, stream: str, owner: str, epoch: int, ttl: float) -> float | None:
        row = await self._fetchone(
            f"UPDATE ohip_fleet_leases SET expires_at = {_NOW} + %s WHERE stream = %s AND "
            f"owner = %s AND epoch = %s AND expires_at > {_NOW} RETURNING expires_at - {_NOW}",
            (ttl, stream, owner, epoch),
        )
        return None if row is None else float(row[0])

    async def renew_many(
        self, owner: str, leases: Mapping[str, int], ttl: float
    ) -> dict[str, float | None]:
        if not leases:
            return {}
        streams = list(leases)
        rows = await self._fetchall(
            f"UPDATE ohip_fleet_leases AS l SET expires_at = {_NOW} + %s "
            "FROM unnest(%s::text[], %s::bigint[]) AS mine(stream, epoch) "
            "WHERE l.stream = mine.stream AND l.epoch = mine.epoch AND l.owner = %s "
            f"AND l.expires_at > {_NOW} RETURNING l.stream, l.expires_at - {_NOW}",
            (ttl, streams, [leases[s] for s in streams], owner),
        )
        found: dict[str, float | None] = dict.fromkeys(streams)
        found.update({row[0]: float(row[1]) for row in rows})
        return found

    async def release(self, stream: str, owner: str, epoch: int) -> bool:
        row = await self._fetchone(
            "UPDATE ohip_fleet_leases SET owner = NULL, expires_at = NULL WHERE stream = %s "
            "AND owner = %s AND epoch = %s RETURNING stream",
            (stream, owner, epoch),
        )
        return row is not None

    async def force_release(self, stream: str) -> Lease | None:
        row = await self._fetchone(
            "UPDATE ohip_fleet_leases SET owner = NULL, expires_at = NULL, epoch = epoch + 1 "
            f"WHERE stream = %s RETURNING {_LEASE_COLUMNS}",
            (stream,),
        )
        return None if row is None else _lease(row)

    # --- checkpoints ----------------------------------------------------------------------------

    async def load_checkpoint(self, stream_id: str) -> Checkpoint | None:
        async def op(conn: AsyncConnection[Any]) -> Any:
            cursor = await conn.execute(self._statements.load, (stream_id,))
            return await cursor.fetchone()

        row = await self._run(op)
        return None if row is None else Checkpoint(*row)

    async def save_checkpoint(
        self, stream_id: str, checkpoint: Checkpoint, *, stream: str, epoch: int
    ) -> None:
        cp = checkpoint

        async def op(conn: AsyncConnection[Any]) -> None:
            # FOR SHARE: a claim's UPDATE of this row waits for this transaction's commit.
            cursor = await conn.execute(
                "SELECT epoch FROM ohip_fleet_leases WHERE stream = %s FOR SHARE", (stream,)
            )
            row = await cursor.fetchone()
            current = None if row is None else int(row[0])
            if current != epoch:
                raise StaleEpochError(stream, epoch, current)
            if cp.updated_at:
                updated = cp.updated_at
            else:
                cursor = await conn.execute(f"SELECT {_NOW}")
                now_row = await cursor.fetchone()
                updated = float(now_row[0]) if now_row else 0.0
            await conn.execute(
                self._statements.upsert,
                (
                    stream_id,
                    cp.offset,
                    cp.unique_event_id,
                    cp.completed_at,
                    updated,
                    cp.gateway_host,
                    cp.chain_code,
                ),
            )

        await self._run(op)

    async def checkpoints(self) -> dict[str, Checkpoint]:
        async def op(conn: AsyncConnection[Any]) -> list[Any]:
            cursor = await conn.execute(self._statements.list)
            return await cursor.fetchall()

        rows = await self._run(op)
        return {row[0]: Checkpoint(*row[1:]) for row in rows}

    # --- the upgrade budget ---------------------------------------------------------------------

    async def take_upgrade(self, key_id: str, count: int, window: float, holder: str = "") -> float:
        async def op(conn: AsyncConnection[Any]) -> float:
            # One row per key, locked: the takers of one key queue here, other keys do not.
            await conn.execute(
                "INSERT INTO ohip_fleet_budgets (key_id) VALUES (%s) ON CONFLICT DO NOTHING",
                (key_id,),
            )
            await conn.execute(
                "SELECT key_id FROM ohip_fleet_budgets WHERE key_id = %s FOR UPDATE", (key_id,)
            )
            cursor = await conn.execute(f"SELECT {_NOW}")
            now_row = await cursor.fetchone()
            now = float(now_row[0]) if now_row else 0.0
            await conn.execute(
                "DELETE FROM ohip_fleet_upgrades WHERE key_id = %s AND at <= %s",
                (key_id, now - window),
            )
            cursor = await conn.execute(
                "SELECT at FROM ohip_fleet_upgrades WHERE key_id = %s ORDER BY at", (key_id,)
            )
            times = [row[0] for row in await cursor.fetchall()]
            if len(times) >= count:
                return max(0.001, float(times[len(times) - count]) + window - now)
            await conn.execute(
                "INSERT INTO ohip_fleet_upgrades (key_id, at, holder) VALUES (%s, %s, %s)",
                (key_id, now, holder),
            )
            return 0.0

        return await self._run(op)

    async def confirm_upgrade(self, key_id: str, holder: str, ago: float = 0.0) -> None:
        await self._fetchall(
            f"UPDATE ohip_fleet_upgrades SET at = GREATEST(at, {_NOW} - %s) "
            "WHERE key_id = %s AND holder = %s RETURNING key_id",
            (ago, key_id, holder),
        )

    async def aclose(self) -> None:
        self._closed = True
        pool, self._pool = self._pool, None
        if pool is not None:
            await pool.close()

    def __repr__(self) -> str:
        return f"PostgresLeaseStore({self.where!r})"
