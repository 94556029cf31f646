"""Checkpoint stores: one contract every store meets, then what the SQLite file adds.

The contract runs against the memory store, the SQLite store (in its worker thread and on the
caller's thread) and the PostgreSQL store (a real server, see ``helpers.services``).
"""

from __future__ import annotations

import asyncio
import errno
import os
import shutil
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.services import postgres_dsn_or_skip
from ohip_stream import (
    Checkpoint,
    CheckpointError,
    CheckpointStore,
    CheckpointUnavailableError,
    ConfigurationError,
    MemoryCheckpointStore,
    SQLiteCheckpointStore,
)
from ohip_stream._checkpoints_pg import PostgresCheckpointStore
from ohip_stream._checkpoints_sqlite import sqlite_failure, sqlite_failure_kind

STORES = ["memory", "sqlite", "sqlite-caller-thread", "postgres"]


async def _drop_table(dsn: str, table: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(f'DROP TABLE IF EXISTS "{table}"')


@pytest.fixture(params=STORES)
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    kind = request.param
    if kind == "memory":
        yield MemoryCheckpointStore()
    elif kind.startswith("sqlite"):
        sqlite = SQLiteCheckpointStore(tmp_path / "offsets.db", in_thread=kind == "sqlite")
        yield sqlite
        await sqlite.aclose()
    else:
        dsn = postgres_dsn_or_skip()
        table = f"ohip_test_{uuid.uuid4().hex[:12]}"
        pg = PostgresCheckpointStore(dsn, table=table, timeout=5)
        try:
            yield pg
        finally:
            await pg.aclose()
            await _drop_table(dsn, table)


# --- the contract ----------------------------------------------------------------------------


async def test_round_trip_keeps_every_field_and_offsets_as_strings(store: Any) -> None:
    assert isinstance(store, CheckpointStore)
    assert await store.load("s1") is None
    written = Checkpoint("0000193", "u193", 5.25, 6.5, "api.example.com:8443", "OHIPCN")
    await store.save("s1", written)
    loaded = await store.load("s1")
    assert loaded == written
    assert isinstance(loaded.offset, str)
    assert loaded.offset == "0000193"  # leading zeros kept: an offset is not a number


async def test_a_save_replaces_the_previous_checkpoint(store: Any) -> None:
    await store.save("s1", Checkpoint("1", "u1", None, 1.0, "h1", "C1"))
    await store.save("s1", Checkpoint("2", "u2", 7.5, 2.0, "h2", "C2"))
    assert await store.load("s1") == Checkpoint("2", "u2", 7.5, 2.0, "h2", "C2")
    assert list(await store.list()) == ["s1"]


async def test_none_fields_stay_none(store: Any) -> None:
    await store.save("s1", Checkpoint("9", "u9", 1.0, 2.0, "h", "C"))
    await store.save("s1", Checkpoint(None, None, None, 3.0))
    assert await store.load("s1") == Checkpoint(None, None, None, 3.0, None, None)


async def test_delete_says_whether_there_was_a_checkpoint(store: Any) -> None:
    await store.save("s1", Checkpoint("1", None, None, 1.0))
    await store.save("s2", Checkpoint("2", None, None, 1.0))
    assert await store.delete("s1") is True
    assert await store.delete("s1") is False
    assert await store.load("s1") is None
    assert await store.load("s2") == Checkpoint("2", None, None, 1.0)


async def test_list_gives_every_checkpoint_in_stream_id_order(store: Any) -> None:
    assert await store.list() == {}
    expected = {
        sid: Checkpoint(str(n), f"u{n}", None, float(n), f"host{n}.example.com", f"CH{n}")
        for n, sid in enumerate(["c", "a", "b"], start=1)
    }
    for sid, cp in expected.items():
        await store.save(sid, cp)
    listed = await store.list()
    assert listed == expected
    assert list(listed) == ["a", "b", "c"]


async def test_concurrent_saves_all_land(store: Any) -> None:
    streams = [f"s{n:02d}" for n in range(12)]
    await asyncio.gather(
        *(store.save(sid, Checkpoint(str(n), None, None, 1.0)) for n, sid in enumerate(streams))
    )
    assert await store.list() == {
        sid: Checkpoint(str(n), None, None, 1.0) for n, sid in enumerate(streams)
    }
    first, second = Checkpoint("10", "a", None, 1.0), Checkpoint("11", "b", None, 2.0)
    await asyncio.gather(store.save("same", first), store.save("same", second))
    assert await store.load("same") in (first, second)


async def test_an_unset_updated_at_is_stamped_with_the_time_of_the_write(store: Any) -> None:
    before = time.time()
    await store.save("s1", Checkpoint("1"))
    loaded = await store.load("s1")
    assert loaded is not None
    assert before <= loaded.updated_at <= time.time()


async def test_a_store_is_an_async_context_manager(store: Any) -> None:
    async with store as entered:
        assert entered is store
        await store.save("s1", Checkpoint("1", None, None, 1.0))
    await store.aclose()  # idempotent


# --- the Checkpoint value ----------------------------------------------------------------------


def test_checkpoint_keeps_positional_construction_and_new_fields_default_to_none() -> None:
    cp = Checkpoint("12", "u12", 5.0, 6.0)
    assert (cp.gateway_host, cp.chain_code) == (None, None)
    assert Checkpoint("1", None, None, 1.0, "h.example.com", "CH").chain_code == "CH"


@pytest.mark.parametrize(
    "host",
    ["user:hunter22@api.example.com", "https://api.example.com", "api.example.com/x?key=k", ""],
)
def test_checkpoint_refuses_a_gateway_host_that_is_not_a_host(host: str) -> None:
    with pytest.raises(ConfigurationError, match="gateway_host must be a host name") as info:
        Checkpoint("1", gateway_host=host)
    assert "hunter22" not in str(info.value)


# --- SQLite: durability and the schema ---------------------------------------------------------


async def test_sqlite_store_is_durable_in_wal_mode(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "offsets.db"
    async with SQLiteCheckpointStore(path) as store:
        await store.save("a", Checkpoint("0000194", "v", 7.5, 2.0, "gw.example.com", "OHIPCN"))
    reopened = SQLiteCheckpointStore(path)
    expected = Checkpoint("0000194", "v", 7.5, 2.0, "gw.example.com", "OHIPCN")
    assert reopened.load_sync("a") == expected
    reopened.close()
    with sqlite3.connect(path) as raw:
        assert raw.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_sqlite_store_defaults_to_a_worker_thread_and_a_five_second_busy_timeout(
    tmp_path: Path,
) -> None:
    store = SQLiteCheckpointStore(tmp_path / "offsets.db")
    assert store.in_thread is True
    assert store.busy_timeout == 5.0
    assert repr(store).endswith("in_thread=True, busy_timeout=5)")


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), "5", True])
def test_sqlite_store_refuses_a_bad_busy_timeout(tmp_path: Path, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="busy_timeout must be"):
        SQLiteCheckpointStore(tmp_path / "offsets.db", busy_timeout=bad)  # type: ignore[arg-type]


OLD_SCHEMA = """
CREATE TABLE checkpoints (
    stream_id TEXT PRIMARY KEY,
    offset TEXT,
    unique_event_id TEXT,
    completed_at REAL,
    updated_at REAL NOT NULL
)
"""


def _columns(path: Path) -> list[str]:
    with sqlite3.connect(path) as raw:
        return [row[1] for row in raw.execute("PRAGMA table_info(checkpoints)")]


async def test_a_file_from_before_the_metadata_columns_opens_and_gains_them(
    tmp_path: Path,
) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as raw:
        raw.execute(OLD_SCHEMA)
        raw.execute("INSERT INTO checkpoints VALUES ('old', '0042', 'u42', 3.0, 4.0)")
    raw.close()
    assert "gateway_host" not in _columns(path)

    async with SQLiteCheckpointStore(path) as store:
        assert await store.load("old") == Checkpoint("0042", "u42", 3.0, 4.0, None, None)
        await store.save("new", Checkpoint("7", None, None, 5.0, "gw.example.com", "CH"))
    assert _columns(path)[-2:] == ["gateway_host", "chain_code"]
    async with SQLiteCheckpointStore(path) as again:  # an up-to-date file is left as it is
        assert (await again.load("new")) == Checkpoint("7", None, None, 5.0, "gw.example.com", "CH")
        assert sorted(await again.list()) == ["new", "old"]


def test_sqlite_sync_methods_serve_the_command_line(tmp_path: Path) -> None:
    store = SQLiteCheckpointStore(tmp_path / "offsets.db")
    store.save_sync("a", Checkpoint("1", None, None, 1.0, "h", "C"))
    assert store.load_sync("a") == Checkpoint("1", None, None, 1.0, "h", "C")
    assert store.list_sync() == {"a": Checkpoint("1", None, None, 1.0, "h", "C")}
    assert store.delete_sync("a") is True
    store.close()
    store.close()  # idempotent
    with pytest.raises(CheckpointError, match="is closed"):
        store.load_sync("a")


# --- SQLite: failures are project errors -------------------------------------------------------


@pytest.fixture
def exclusive_lock() -> Iterator[Any]:
    """Take a write lock on a database file from another connection, as a backup tool does."""
    held: list[sqlite3.Connection] = []

    def take(path: Path) -> sqlite3.Connection:
        other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        other.execute("BEGIN EXCLUSIVE")
        held.append(other)
        return other

    yield take
    for conn in held:
        if conn.in_transaction:
            conn.rollback()
        conn.close()


async def _max_loop_lag_during(coro: Any, step: float = 0.01) -> tuple[BaseException | None, float]:
    """Run ``coro``; return what it raised and the longest the event loop was held up."""
    lag = 0.0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal lag
        while not done.is_set():
            start = time.monotonic()
            await asyncio.sleep(step)
            lag = max(lag, time.monotonic() - start - step)

    probing = asyncio.create_task(probe())
    error: BaseException | None = None
    try:
        await coro
    except BaseException as exc:
        error = exc
    finally:
        done.set()
        await probing
    return error, lag


async def test_a_locked_database_raises_unavailable_after_busy_timeout_without_blocking_the_loop(
    tmp_path: Path, exclusive_lock: Any
) -> None:
    path = tmp_path / "offsets.db"
    store = SQLiteCheckpointStore(path, busy_timeout=0.4)
    await store.save("a", Checkpoint("1", None, None, 1.0))
    other = exclusive_lock(path)

    started = time.monotonic()
    error, lag = await _max_loop_lag_during(store.save("a", Checkpoint("2", None, None, 2.0)))
    elapsed = time.monotonic() - started

    assert isinstance(error, CheckpointUnavailableError)
    assert error.retriable is True
    assert str(path) in str(error)
    assert "locked" in str(error)
    assert "0.4 s" in str(error)
    assert isinstance(error.__cause__, sqlite3.OperationalError)
    assert 0.35 <= elapsed < 2.0
    assert lag < 0.1, f"the event loop was held up {lag:.3f} s"

    other.rollback()  # the lock is gone: the next save goes through
    await store.save("a", Checkpoint("2", None, None, 2.0))
    assert (await store.load("a")) == Checkpoint("2", None, None, 2.0)
    await store.aclose()


def test_a_locked_database_raises_unavailable_from_the_sync_methods_too(
    tmp_path: Path, exclusive_lock: Any
) -> None:
    path = tmp_path / "offsets.db"
    store = SQLiteCheckpointStore(path, busy_timeout=0.05)
    store.save_sync("a", Checkpoint("1", None, None, 1.0))
    exclusive_lock(path)
    with pytest.raises(CheckpointUnavailableError, match="locked"):
        store.save_sync("a", Checkpoint("2", None, None, 2.0))
    store.close()


async def test_a_full_database_raises_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "offsets.db"
    store = SQLiteCheckpointStore(path, in_thread=False)
    await store.save("a", Checkpoint("1", None, None, 1.0))
    conn = store._connection()
    pages = conn.execute("PRAGMA page_count").fetchone()[0]
    conn.execute(f"PRAGMA max_page_count = {pages}")  # the file may not grow: as on a full disk
    with pytest.raises(CheckpointUnavailableError, match="full") as info:
        await store.save("b", Checkpoint("2", "x" * 200_000, None, 2.0))
    assert str(path) in str(info.value)
    assert await store.load("a") == Checkpoint("1", None, None, 1.0)
    await store.aclose()


async def test_a_file_that_is_not_sqlite_is_a_permanent_error(tmp_path: Path) -> None:
    path = tmp_path / "offsets.db"
    path.write_text("these are not the pages of a database\n" * 200)
    store = SQLiteCheckpointStore(path)
    with pytest.raises(CheckpointError, match="not a SQLite database") as info:
        await store.save("a", Checkpoint("1"))
    assert not isinstance(info.value, CheckpointUnavailableError)
    assert str(path) in str(info.value)
    assert isinstance(info.value.__cause__, sqlite3.DatabaseError)
    await store.aclose()


async def test_a_path_under_a_file_is_a_permanent_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = SQLiteCheckpointStore(blocker / "offsets.db")
    with pytest.raises(CheckpointError, match="checkpoint database") as info:
        await store.save("a", Checkpoint("1"))
    assert not isinstance(info.value, CheckpointUnavailableError)
    assert "cannot be opened" in str(info.value)
    assert str(blocker) in str(info.value)


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores file modes")
def test_a_read_only_file_is_a_permanent_permission_error(tmp_path: Path) -> None:
    path = tmp_path / "offsets.db"
    SQLiteCheckpointStore(path).save_sync("a", Checkpoint("1", None, None, 1.0))
    for name in ("offsets.db", "offsets.db-wal", "offsets.db-shm"):
        if (tmp_path / name).exists():
            (tmp_path / name).chmod(0o444)
    tmp_path.chmod(0o555)
    try:
        store = SQLiteCheckpointStore(path)
        with pytest.raises(CheckpointError) as info:
            store.save_sync("a", Checkpoint("2", None, None, 2.0))
        assert not isinstance(info.value, CheckpointUnavailableError)
        store.close()
    finally:
        tmp_path.chmod(0o755)


def test_real_read_only_and_os_errors_are_classified(tmp_path: Path) -> None:
    path = tmp_path / "ro.db"
    with sqlite3.connect(path) as raw:
        raw.execute("CREATE TABLE t (x)")
    raw.close()
    read_only = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as caught:
        read_only.execute("INSERT INTO t VALUES (1)")
    read_only.close()
    assert sqlite_failure_kind(caught.value) == "denied"
    denied = sqlite_failure(path, "write", caught.value, busy_timeout=5)
    assert type(denied) is CheckpointError
    assert "permission denied" in str(denied)

    full = sqlite_failure(path, "write", OSError(errno.ENOSPC, "No space left"), busy_timeout=5)
    assert isinstance(full, CheckpointUnavailableError)
    eacces = sqlite_failure(path, "write", PermissionError(errno.EACCES, "no"), busy_timeout=5)
    assert type(eacces) is CheckpointError


@pytest.mark.parametrize(
    ("message", "kind"),
    [
        ("database is locked", "locked"),
        ("database table is locked", "locked"),
        ("database or disk is full", "full"),
        ("disk I/O error", "io"),
        ("file is not a database", "notadb"),
        ("database disk image is malformed", "corrupt"),
        ("attempt to write a readonly database", "denied"),
        ("unable to open database file", "cantopen"),
        ("no such table: checkpoints", "other"),
    ],
)
def test_errors_without_a_result_code_are_classified_by_their_message(
    message: str, kind: str
) -> None:
    # Python 3.10's sqlite3 errors carry no result code: only SQLite's message.
    assert sqlite_failure_kind(sqlite3.OperationalError(message)) == kind


# --- SQLite: a file deleted or replaced under a running consumer -------------------------------


def _remove_database(path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{path}{suffix}").unlink(missing_ok=True)


async def test_a_deleted_checkpoint_file_is_noticed_before_the_next_write(tmp_path: Path) -> None:
    path = tmp_path / "offsets.db"
    store = SQLiteCheckpointStore(path)
    await store.save("a", Checkpoint("100", None, None, 1.0))
    _remove_database(path)

    with pytest.raises(CheckpointError, match="deleted or replaced") as info:
        await store.save("a", Checkpoint("101", None, None, 2.0))
    assert not isinstance(info.value, CheckpointUnavailableError)
    assert str(path) in str(info.value)
    assert not path.exists()  # nothing written on, and no empty file made in its place
    with pytest.raises(CheckpointError, match="deleted or replaced"):
        await store.load("a")
    await store.aclose()


async def test_a_deleted_checkpoint_directory_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "state" / "offsets.db"
    store = SQLiteCheckpointStore(path)
    await store.save("a", Checkpoint("100", None, None, 1.0))
    shutil.rmtree(path.parent)
    with pytest.raises(CheckpointError, match="deleted or replaced"):
        await store.save("a", Checkpoint("101", None, None, 2.0))
    await store.aclose()


async def test_a_replaced_checkpoint_file_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "offsets.db"
    store = SQLiteCheckpointStore(path)
    await store.save("a", Checkpoint("100", None, None, 1.0))
    other = tmp_path / "other.db"
    async with SQLiteCheckpointStore(other) as elsewhere:
        await elsewhere.save("a", Checkpoint("5", None, None, 1.0))
    _remove_database(path)
    os.replace(other, path)

    with pytest.raises(CheckpointError, match="deleted or replaced"):
        await store.save("a", Checkpoint("101", None, None, 2.0))
    await store.aclose()
    async with SQLiteCheckpointStore(path) as reopened:  # the new file was not written to
        assert await reopened.load("a") == Checkpoint("5", None, None, 1.0)


# --- PostgreSQL: psycopg is imported only when a store is made -----------------------------------


def test_without_psycopg_the_store_says_which_extra_to_install(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setitem(sys.modules, "psycopg_pool", None)  # as if it were not installed
    with pytest.raises(ConfigurationError, match=r'pip install "ohip-stream\[fleet\]"'):
        PostgresCheckpointStore("postgresql://u@localhost/db")


def test_importing_ohip_stream_does_not_import_psycopg() -> None:
    code = (
        "import sys, ohip_stream, ohip_stream._checkpoints_pg\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('psycopg'))\n"
        "assert not loaded, loaded\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
