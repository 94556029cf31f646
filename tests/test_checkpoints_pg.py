"""What the PostgreSQL checkpoint store adds to the contract (``test_checkpoints.py``).

Against a real server (``helpers.services.postgres_dsn_or_skip``); each test uses its own table
and drops it. The tests of configuration errors need no server; those of the lazy import of
psycopg are in ``test_checkpoints.py`` (they run without psycopg installed).
"""

from __future__ import annotations

import asyncio
import socket
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from helpers.services import import_or_skip, postgres_dsn_or_skip
from ohip_stream import Checkpoint, CheckpointError, CheckpointUnavailableError, ConfigurationError

psycopg = import_or_skip("psycopg")
psycopg_pool = import_or_skip("psycopg_pool")
conninfo = import_or_skip("psycopg.conninfo")

from ohip_stream._checkpoints_pg import PostgresCheckpointStore  # noqa: E402


def _with(dsn: str, **params: str) -> str:
    """``dsn`` with connection parameters replaced or added."""
    info = conninfo.conninfo_to_dict(dsn)
    info.update(params)
    return str(conninfo.make_conninfo(**info))


async def _admin(dsn: str, statement: str, params: tuple[Any, ...] = ()) -> list[Any]:
    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        cursor = await conn.execute(statement, params)
        return await cursor.fetchall() if cursor.description else []


@pytest.fixture
async def pg() -> AsyncIterator[tuple[str, Callable[[], str]]]:
    """The test DSN, and a maker of fresh table names that are dropped after the test."""
    dsn = postgres_dsn_or_skip()
    tables: list[str] = []

    def new_table() -> str:
        tables.append(f"ohip_test_{uuid.uuid4().hex[:12]}")
        return tables[-1]

    yield dsn, new_table
    for table in tables:
        await _admin(dsn, f'DROP TABLE IF EXISTS "{table}"')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# --- the table ---------------------------------------------------------------------------------


async def test_the_table_is_created_at_first_use_once_even_by_stores_starting_together(
    pg: tuple[str, Callable[[], str]],
) -> None:
    dsn, new_table = pg
    table = new_table()
    stores = [PostgresCheckpointStore(dsn, table=table) for _ in range(4)]
    assert await _admin(dsn, "SELECT to_regclass(%s)", (table,)) == [(None,)]
    await asyncio.gather(
        *(s.save(f"s{n}", Checkpoint(str(n), None, 1.5, 2.0)) for n, s in enumerate(stores))
    )
    assert sorted(await stores[0].list()) == ["s0", "s1", "s2", "s3"]
    columns = await _admin(
        dsn,
        "SELECT column_name, data_type FROM information_schema.columns "
        "WHERE table_name = %s ORDER BY ordinal_position",
        (table,),
    )
    assert columns == [
        ("stream_id", "text"),
        ("last_offset", "text"),
        ("unique_event_id", "text"),
        ("completed_at", "double precision"),
        ("updated_at", "double precision"),
        ("gateway_host", "text"),
        ("chain_code", "text"),
    ]
    for store in stores:
        await store.aclose()


async def test_a_save_is_one_upsert_visible_to_another_store_at_once(
    pg: tuple[str, Callable[[], str]],
) -> None:
    dsn, new_table = pg
    table = new_table()
    async with (
        PostgresCheckpointStore(dsn, table=table) as writer,
        PostgresCheckpointStore(dsn, table=table) as reader,
    ):
        await writer.save("s", Checkpoint("1", "u1", 10.0, 11.0, "gw.example.com", "CH"))
        await writer.save("s", Checkpoint("2", "u2", 12.0, 13.0, "gw.example.com", "CH"))
        assert await reader.load("s") == Checkpoint("2", "u2", 12.0, 13.0, "gw.example.com", "CH")
        count = await _admin(dsn, f'SELECT count(*) FROM "{table}"')
        assert count == [(1,)]


async def test_a_schema_qualified_table_name_works(pg: tuple[str, Callable[[], str]]) -> None:
    dsn, new_table = pg
    table = new_table()
    async with PostgresCheckpointStore(dsn, table=f"public.{table}") as store:
        await store.save("s", Checkpoint("3", None, None, 1.0))
        assert await store.load("s") == Checkpoint("3", None, None, 1.0)


async def test_a_callers_pool_is_used_and_left_open(pg: tuple[str, Callable[[], str]]) -> None:
    dsn, new_table = pg
    pool = psycopg_pool.AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False)
    await pool.open(wait=True, timeout=10)
    try:
        store = PostgresCheckpointStore(pool, table=new_table())
        await store.save("s", Checkpoint("5", None, None, 1.0))
        await store.aclose()
        assert not pool.closed
        async with pool.connection() as conn:  # the pool still serves its owner
            await conn.execute("SELECT 1")
        with pytest.raises(CheckpointError, match="is closed"):
            await store.load("s")
    finally:
        await pool.close()
    again = PostgresCheckpointStore(pool, table=new_table())
    with pytest.raises(CheckpointError, match="pool is closed") as info:
        await again.load("s")
    assert not isinstance(info.value, CheckpointUnavailableError)


async def test_an_existing_table_needs_no_create_right(pg: tuple[str, Callable[[], str]]) -> None:
    dsn, new_table = pg
    table, forbidden = new_table(), new_table()
    role = f"ohip_test_role_{uuid.uuid4().hex[:8]}"
    async with PostgresCheckpointStore(dsn, table=table) as owner:
        await owner.save("s", Checkpoint("1", None, None, 1.0))
    async with PostgresCheckpointStore(dsn, table=forbidden) as owner:
        await owner.save("s", Checkpoint("1", None, None, 1.0))
    try:
        await _admin(dsn, f'CREATE ROLE "{role}" LOGIN')
    except psycopg.Error as exc:
        pytest.skip(f"the test user cannot create a role: {exc}")
    try:
        await _admin(dsn, f'GRANT SELECT, INSERT, UPDATE, DELETE ON "{table}" TO "{role}"')
        limited = _with(dsn, user=role)
        try:
            await _admin(limited, "SELECT 1")
        except psycopg.Error as exc:
            pytest.skip(f"a new role cannot log in without a password here: {exc}")
        async with PostgresCheckpointStore(limited, table=table) as store:
            await store.save("s", Checkpoint("2", None, None, 2.0))
            assert await store.load("s") == Checkpoint("2", None, None, 2.0)
        async with PostgresCheckpointStore(limited, table=forbidden) as store:
            with pytest.raises(CheckpointError, match="permission denied") as info:
                await store.save("s", Checkpoint("2", None, None, 2.0))
            assert not isinstance(info.value, CheckpointUnavailableError)
            assert forbidden in str(info.value)
    finally:
        await _admin(dsn, f'REVOKE ALL ON "{table}" FROM "{role}"')
        await _admin(dsn, f'DROP ROLE IF EXISTS "{role}"')


# --- failures ----------------------------------------------------------------------------------


async def test_an_unreachable_server_is_unavailable_within_the_timeout_and_names_no_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    port = _free_port()
    store = PostgresCheckpointStore(
        f"postgresql://ohip:pw-Sekr3t-xyz@127.0.0.1:{port}/checkpoints", timeout=0.3
    )
    started = time.monotonic()
    with pytest.raises(CheckpointUnavailableError) as info:
        await store.save("s", Checkpoint("1"))
    assert time.monotonic() - started < 3.0
    message = str(info.value)
    assert f"127.0.0.1:{port}/checkpoints" in message
    assert "ohip_stream_checkpoints" in message
    assert "pw-Sekr3t-xyz" not in message
    assert "pw-Sekr3t-xyz" not in repr(store)
    await store.aclose()


async def _terminate(dsn: str, application_name: str) -> None:
    """End the server side of every connection with that name, as a server restart does."""
    pids = await _admin(
        dsn, "SELECT pid FROM pg_stat_activity WHERE application_name = %s", (application_name,)
    )
    assert pids
    for (pid,) in pids:
        await _admin(dsn, "SELECT pg_terminate_backend(%s)", (pid,))
    await _wait_gone(dsn, [pid for (pid,) in pids])


async def test_the_stores_own_pool_replaces_a_dropped_connection(
    pg: tuple[str, Callable[[], str]],
) -> None:
    dsn, new_table = pg
    name = f"ohip-test-{uuid.uuid4().hex[:8]}"
    async with PostgresCheckpointStore(
        _with(dsn, application_name=name), table=new_table()
    ) as store:
        await store.save("s", Checkpoint("1", None, None, 1.0))
        await _terminate(dsn, name)
        await store.save("s", Checkpoint("2", None, None, 2.0))
        assert await store.load("s") == Checkpoint("2", None, None, 2.0)


async def test_a_lost_connection_is_unavailable_and_a_later_save_reconnects(
    pg: tuple[str, Callable[[], str]],
) -> None:
    dsn, new_table = pg
    name = f"ohip-test-{uuid.uuid4().hex[:8]}"
    # A caller's pool that does not check its connections hands out the dropped one.
    pool = psycopg_pool.AsyncConnectionPool(
        _with(dsn, application_name=name), min_size=1, max_size=1, open=False
    )
    await pool.open(wait=True, timeout=10)
    try:
        store = PostgresCheckpointStore(pool, table=new_table())
        await store.save("s", Checkpoint("1", None, None, 1.0))
        await _terminate(dsn, name)
        with pytest.raises(CheckpointUnavailableError) as info:
            await store.save("s", Checkpoint("2", None, None, 2.0))
        assert info.value.retriable is True
        assert store.where in str(info.value)
        assert isinstance(info.value.__cause__, psycopg.OperationalError)
        await store.save("s", Checkpoint("3", None, None, 3.0))  # the pool connected again
        assert await store.load("s") == Checkpoint("3", None, None, 3.0)
    finally:
        await pool.close()


async def _wait_gone(dsn: str, pids: list[int]) -> None:
    for _ in range(250):
        rows = await _admin(dsn, "SELECT pid FROM pg_stat_activity WHERE pid = ANY(%s)", (pids,))
        if not rows:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"backends {pids} were not terminated")


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "table", ["", "1abc", "a-b", 'x"; DROP TABLE y; --', "a.b.c", "x" * 64, "a b"]
)
def test_a_bad_table_name_is_refused(table: str) -> None:
    with pytest.raises(ConfigurationError, match="table must be a table name"):
        PostgresCheckpointStore("postgresql://u@localhost/db", table=table)


def test_a_bad_dsn_is_refused_without_echoing_it() -> None:
    with pytest.raises(ConfigurationError, match="not a valid connection string") as info:
        PostgresCheckpointStore("host=db password=Sekr3t-pw junk")
    assert "Sekr3t-pw" not in str(info.value)


@pytest.mark.parametrize("bad", [0, -1, float("nan"), "5", True])
def test_a_bad_timeout_is_refused(bad: object) -> None:
    with pytest.raises(ConfigurationError, match="timeout must be"):
        PostgresCheckpointStore("postgresql://u@localhost/db", timeout=bad)  # type: ignore[arg-type]


def test_something_that_is_neither_a_dsn_nor_a_pool_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="needs a PostgreSQL DSN"):
        PostgresCheckpointStore(42)  # type: ignore[arg-type]
