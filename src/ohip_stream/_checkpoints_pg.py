"""Checkpoints in PostgreSQL: one row per stream, shared by every host that reaches the server.

psycopg 3 (async) with its connection pool; both come with the ``fleet`` extra and are imported
only when a :class:`PostgresCheckpointStore` is made, so that ``import ohip_stream`` works
without them. The table (default ``ohip_stream_checkpoints``) is created at first use when it
does not exist::

    stream_id        TEXT PRIMARY KEY
    last_offset      TEXT              -- the offset as the gateway sent it (digits)
    unique_event_id  TEXT
    completed_at     DOUBLE PRECISION  -- epoch seconds: the last connection's completion
    updated_at       DOUBLE PRECISION NOT NULL
    gateway_host     TEXT              -- which stream this is, for people (no secret)
    chain_code       TEXT

Each save is one upsert. Errors are mapped as the SQLite store's are: a lost connection, a server
that cannot be reached within ``timeout`` or that is out of resources raises
:class:`~ohip_stream.CheckpointUnavailableError` (retriable); anything else (permissions, a
missing database, a caller's closed pool) :class:`~ohip_stream.CheckpointError`. Messages name
the server, database and table, never the password.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, TypeVar

from ohip_stream._checkpoints import Checkpoint, checkpoint_row
from ohip_stream._exceptions import CheckpointError, CheckpointUnavailableError, ConfigurationError
from ohip_stream._logging import redact, register_secret

if TYPE_CHECKING:
    from psycopg import AsyncConnection
    from psycopg_pool import AsyncConnectionPool

__all__ = ["PostgresCheckpointStore"]

_T = TypeVar("_T")

_INSTALL_HINT = (
    'PostgresCheckpointStore needs psycopg 3 and psycopg-pool: pip install "ohip-stream[fleet]"'
)

# An unquoted-style SQL identifier; the store quotes it, so nothing else may reach the SQL text.
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}\Z")

_COLUMNS = (
    "last_offset",
    "unique_event_id",
    "completed_at",
    "updated_at",
    "gateway_host",
    "chain_code",
)

# SQLSTATE classes (PostgreSQL, appendix A) of failures that pass by themselves, with what to
# check: connection exceptions, rolled-back transactions, insufficient resources, operator
# intervention (shutdown, cancel), lock not available, system errors (I/O).
_TRANSIENT_STATES = {
    "08": "the database connection failed or was lost: check the server is up and reachable",
    "40": "the server rolled the transaction back (serialization failure or deadlock)",
    "53": "the server is out of resources (disk full, memory or connections): check the server",
    "57": "the server is shutting down, starting, or cancelled the statement",
    "55P03": "a lock on the table was not available in time",
    "58": "the server had a system error (I/O): check the server's disk",
}
_PERMANENT_STATES = {
    "42501": (
        "permission denied: grant the user SELECT, INSERT, UPDATE and DELETE on the table "
        "(and CREATE on its schema, for the first run that creates it)"
    ),
    "28": "the server refused the login: check the user and password of the DSN",
    "3D000": "the database does not exist: create it, or fix the DSN's database name",
    "3F000": "the schema does not exist: create it, or fix the table name",
}


def _require_psycopg() -> None:
    try:
        import psycopg  # noqa: F401
        import psycopg_pool  # noqa: F401
    except ImportError as exc:
        raise ConfigurationError(_INSTALL_HINT) from exc


def quoted_table(table: object) -> str:
    parts = table.split(".") if isinstance(table, str) else []
    if not 1 <= len(parts) <= 2 or not all(_IDENTIFIER.match(part) for part in parts):
        raise ConfigurationError(
            "table must be a table name, optionally with its schema ('schema.table'): letters, "
            f"digits and underscores, not starting with a digit, at most 63 each; got {table!r}"
        )
    return ".".join(f'"{part}"' for part in parts)


def where_of(conninfo: str, table: str) -> str:
    """The server, database and table, for messages: never the password."""
    from psycopg import ProgrammingError
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(conninfo)
    except ProgrammingError:
        # The parser's message quotes the string, which may hold the password.
        raise ConfigurationError(
            "the PostgreSQL DSN is not a valid connection string: give a URL such as "
            "postgresql://user@host:5432/dbname, or key=value pairs"
        ) from None
    register_secret(str(info.get("password") or ""))
    host = info.get("host") or info.get("hostaddr") or "localhost"
    port = info.get("port") or "5432"
    dbname = info.get("dbname") or "(the user's default database)"
    return f"PostgreSQL {host}:{port}/{dbname}, table {table}"


def bounded_locks(timeout: float) -> Callable[[AsyncConnection[Any]], Awaitable[None]]:
    """A pool's ``configure`` for the project's own pools: on each new connection, a statement
    waits for a row another session holds at most ``timeout`` seconds, and the server ends
    this session if it stays idle inside a transaction that long (its process frozen by a
    SIGSTOP or a paused VM), which frees the rows it held for everyone else."""
    milliseconds = str(max(1, round(timeout * 1000)))

    async def configure(conn: AsyncConnection[Any]) -> None:
        await conn.execute(
            "SELECT set_config('lock_timeout', %s, false), "
            "set_config('idle_in_transaction_session_timeout', %s, false)",
            (milliseconds, milliseconds),
        )

    return configure


class PostgresCheckpointStore:
    """Durable checkpoints in a PostgreSQL table, for consumers on many hosts.

    ``dsn_or_pool`` is a connection string (the store makes, and closes, a small pool of its
    own: up to 4 connections, each checked before use) or a caller's
    ``psycopg_pool.AsyncConnectionPool`` (the caller opens and closes it, and chooses whether
    its connections are checked). ``timeout`` is how long an operation waits for a connection
    before it raises :class:`~ohip_stream.CheckpointUnavailableError`.
    """

    def __init__(
        self,
        dsn_or_pool: str | AsyncConnectionPool[Any],
        *,
        table: str = "ohip_stream_checkpoints",
        timeout: float = 10.0,
    ) -> None:
        _require_psycopg()
        from psycopg_pool import AsyncConnectionPool

        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
            raise ConfigurationError(f"timeout must be a number of seconds, got {timeout!r}")
        if not (math.isfinite(timeout) and timeout > 0):
            raise ConfigurationError(f"timeout must be above 0 seconds, got {timeout!r}")
        self.table = table
        self.timeout = float(timeout)
        self._quoted = quoted_table(table)
        self._pool: AsyncConnectionPool[Any] | None = None
        self._dsn: str | None = None
        if isinstance(dsn_or_pool, str):
            self._dsn = dsn_or_pool
            self.where = where_of(dsn_or_pool, table)
        elif isinstance(dsn_or_pool, AsyncConnectionPool):
            self._pool = dsn_or_pool
            conninfo = dsn_or_pool.conninfo
            self.where = (
                where_of(conninfo, table)
                if isinstance(conninfo, str)
                else f"PostgreSQL pool {dsn_or_pool.name}, table {table}"
            )
        else:
            raise ConfigurationError(
                "PostgresCheckpointStore needs a PostgreSQL DSN (postgresql://user@host/db) or "
                f"a psycopg_pool.AsyncConnectionPool, got {type(dsn_or_pool).__name__}"
            )
        self._statements = Statements(self._quoted)
        self._ready = False
        self._ready_lock = asyncio.Lock()
        self._closed = False

    # --- plumbing -----------------------------------------------------------------------------

    def _failure(self, action: str, exc: Exception) -> CheckpointError:
        from psycopg_pool import PoolClosed, PoolTimeout

        detail = redact(str(exc).strip() or type(exc).__name__)
        state = str(getattr(exc, "sqlstate", None) or "")
        if isinstance(exc, PoolClosed):
            hint, transient = "the connection pool is closed: pass an open pool", False
        elif isinstance(exc, PoolTimeout):
            hint = (
                f"no database connection within {self.timeout:g} s: check the server is up and "
                "reachable and the DSN's host, port, user, password and database (the "
                "psycopg.pool log says why connecting failed)"
            )
            transient = True
        elif (found := _by_state(_TRANSIENT_STATES, state)) is not None:
            hint, transient = found, True
        elif (found := _by_state(_PERMANENT_STATES, state)) is not None:
            hint, transient = found, False
        elif not state and _is_connection_error(exc):
            hint, transient = _TRANSIENT_STATES["08"], True
        else:
            hint, transient = "check the table and the server's log", False
        message = f"cannot {action} the checkpoints in {self.where}: {hint} ({detail})"
        return CheckpointUnavailableError(message) if transient else CheckpointError(message)

    async def _connected(self) -> AsyncConnectionPool[Any]:
        """The open pool, with the table created (once, at first use)."""
        if self._closed:
            raise CheckpointError(
                f"the checkpoint store for {self.where} is closed: use a store that is open"
            )
        async with self._ready_lock:
            if self._pool is None:
                from psycopg_pool import AsyncConnectionPool

                assert self._dsn is not None
                pool: AsyncConnectionPool[Any] = AsyncConnectionPool(
                    self._dsn,
                    min_size=1,
                    max_size=4,
                    open=False,
                    kwargs={"autocommit": True},
                    name="ohip-stream-checkpoints",
                    timeout=self.timeout,
                    # A connection the server dropped (a restart, an idle timeout) is replaced
                    # before use instead of failing one operation per pooled connection.
                    check=AsyncConnectionPool.check_connection,
                    configure=bounded_locks(self.timeout),
                )
                await pool.open(wait=False)
                self._pool = pool
            if not self._ready:
                await self._in_transaction(self._pool, "create the table of", self._create_table)
                self._ready = True
        return self._pool

    async def _create_table(self, conn: AsyncConnection[Any]) -> None:
        # A table that exists is left alone: the user may hold rights on it but not CREATE on
        # the schema. Otherwise one creator at a time (the advisory lock), so that two stores
        # starting together do not both create it.
        if await self._table_exists(conn):
            return
        await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (self._quoted,))
        await conn.execute(self._statements.create)

    async def _table_exists(self, conn: AsyncConnection[Any]) -> bool:
        cursor = await conn.execute("SELECT to_regclass(%s) IS NOT NULL", (self._quoted,))
        row = await cursor.fetchone()
        return bool(row and row[0])

    async def _in_transaction(
        self,
        pool: AsyncConnectionPool[Any],
        action: str,
        op: Callable[[AsyncConnection[Any]], Awaitable[_T]],
    ) -> _T:
        import psycopg

        try:
            async with pool.connection(timeout=self.timeout) as conn, conn.transaction():
                return await op(conn)
        except (psycopg.Error, OSError) as exc:
            raise self._failure(action, exc) from exc

    async def _run(self, action: str, op: Callable[[AsyncConnection[Any]], Awaitable[_T]]) -> _T:
        pool = await self._connected()
        return await self._in_transaction(pool, action, op)

    # --- operations ---------------------------------------------------------------------------

    async def load(self, stream_id: str) -> Checkpoint | None:
        """The stream's checkpoint, or ``None``."""

        async def op(conn: AsyncConnection[Any]) -> Any:
            cursor = await conn.execute(self._statements.load, (stream_id,))
            return await cursor.fetchone()

        row = await self._run("read", op)
        return None if row is None else Checkpoint(*row)

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        """Write the checkpoint (one upsert; an unset ``updated_at`` gets the time now)."""
        values = checkpoint_row(stream_id, checkpoint)

        async def op(conn: AsyncConnection[Any]) -> None:
            await conn.execute(self._statements.upsert, values)

        await self._run("write", op)

    async def delete(self, stream_id: str) -> bool:
        """Forget the stream's checkpoint; whether there was one."""

        async def op(conn: AsyncConnection[Any]) -> bool:
            cursor = await conn.execute(self._statements.delete, (stream_id,))
            return cursor.rowcount > 0

        return await self._run("delete from", op)

    async def list(self) -> dict[str, Checkpoint]:
        """Every stored checkpoint by stream id, in stream id order."""

        async def op(conn: AsyncConnection[Any]) -> list[Any]:
            cursor = await conn.execute(self._statements.list)
            return await cursor.fetchall()

        rows = await self._run("read", op)
        return {row[0]: Checkpoint(*row[1:]) for row in rows}

    async def aclose(self) -> None:
        """Close the store's own pool (a caller's pool stays open); idempotent."""
        self._closed = True
        pool, owned = self._pool, self._dsn is not None
        if owned and pool is not None:
            self._pool = None
            await pool.close()

    async def __aenter__(self) -> PostgresCheckpointStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"PostgresCheckpointStore({self.where!r})"


class Statements:
    """The store's SQL, for one table name (quoted, and checked against _IDENTIFIER)."""

    def __init__(self, table: str) -> None:
        from psycopg import sql

        columns = ", ".join(_COLUMNS)
        updates = ", ".join(f"{c} = EXCLUDED.{c}" for c in _COLUMNS)
        self.create = sql.SQL(
            f"CREATE TABLE IF NOT EXISTS {table} (stream_id TEXT PRIMARY KEY, "
            "last_offset TEXT, unique_event_id TEXT, completed_at DOUBLE PRECISION, "
            "updated_at DOUBLE PRECISION NOT NULL, gateway_host TEXT, chain_code TEXT)",
        )
        self.load = sql.SQL(f"SELECT {columns} FROM {table} WHERE stream_id = %s")
        self.list = sql.SQL(f"SELECT stream_id, {columns} FROM {table} ORDER BY stream_id")
        self.delete = sql.SQL(f"DELETE FROM {table} WHERE stream_id = %s")
        self.upsert = sql.SQL(
            f"INSERT INTO {table} (stream_id, {columns}) VALUES (%s, %s, %s, %s, %s, %s, %s) "
            f"ON CONFLICT (stream_id) DO UPDATE SET {updates}",
        )


def _by_state(table: dict[str, str], state: str) -> str | None:
    """The hint for a SQLSTATE, by its full code first, then by its class (first two chars)."""
    if not state:
        return None
    return table.get(state) or table.get(state[:2])


def _is_connection_error(exc: Exception) -> bool:
    import psycopg

    return isinstance(exc, (psycopg.OperationalError, OSError))
