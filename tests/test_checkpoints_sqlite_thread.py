"""Where the SQLite store's work runs: which thread writes, and when the WAL is merged.

A save is written on the event loop's thread when nothing has to be waited for, and in the
worker thread otherwise; the WAL is checkpointed into the database in the worker thread. Each
statement's thread is read from SQLite's own trace callback.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from ohip_stream import Checkpoint, CheckpointUnavailableError, SQLiteCheckpointStore
from ohip_stream._checkpoints import WAL_MERGE_EVERY


def _traced(store: SQLiteCheckpointStore) -> list[tuple[bool, str]]:
    """(ran on this thread, statement) for every statement of the store's connection."""
    seen: list[tuple[bool, str]] = []
    here = threading.get_ident()
    store._connection().set_trace_callback(
        lambda sql: seen.append((threading.get_ident() == here, sql))
    )
    return seen


def _writes(seen: list[tuple[bool, str]]) -> list[bool]:
    return [here for here, sql in seen if sql.startswith("INSERT INTO checkpoints")]


def _checkpoint(offset: int) -> Checkpoint:
    return Checkpoint(str(offset), f"id-{offset}", None, 1.0)


async def test_a_save_that_waits_for_nothing_is_written_on_the_loops_thread(
    tmp_path: Path,
) -> None:
    store = SQLiteCheckpointStore(tmp_path / "offsets.db")
    await store.save("a", _checkpoint(1))  # opens the file (in the worker thread)
    seen = _traced(store)

    await store.save("a", _checkpoint(2))

    assert _writes(seen) == [True]
    assert await store.load("a") == _checkpoint(2)
    await store.aclose()


async def test_the_first_save_opens_the_file_in_the_worker_thread(tmp_path: Path) -> None:
    # opening may create the file and migrate its table: never on the loop's thread
    opened_on: list[int] = []
    real_connect = sqlite3.connect

    def connect(*args: object, **kwargs: object) -> sqlite3.Connection:
        opened_on.append(threading.get_ident())
        return real_connect(*args, **kwargs)  # type: ignore[arg-type]

    store = SQLiteCheckpointStore(tmp_path / "offsets.db")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(sqlite3, "connect", connect)
        await store.save("a", _checkpoint(1))

    assert len(opened_on) == 1
    assert opened_on[0] != threading.get_ident()
    await store.aclose()


async def test_a_save_while_the_worker_thread_uses_the_connection_goes_to_that_thread(
    tmp_path: Path,
) -> None:
    store = SQLiteCheckpointStore(tmp_path / "offsets.db")
    await store.save("a", _checkpoint(1))
    seen = _traced(store)
    busy = store._lock  # what the worker thread holds while it uses the connection
    busy.acquire()
    saving = asyncio.ensure_future(store.save("a", _checkpoint(2)))
    await asyncio.sleep(0.05)
    assert not saving.done()  # not written, and the loop was not held up meanwhile
    busy.release()
    await saving

    assert _writes(seen) == [False]
    assert await store.load("a") == _checkpoint(2)
    await store.aclose()


async def test_a_locked_database_sends_the_save_to_the_worker_thread_with_its_busy_timeout(
    tmp_path: Path,
) -> None:
    path = tmp_path / "offsets.db"
    store = SQLiteCheckpointStore(path, busy_timeout=0.3)
    await store.save("a", _checkpoint(1))
    seen = _traced(store)
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")  # another program's write lock

    loop = asyncio.get_running_loop()
    started = loop.time()
    with pytest.raises(CheckpointUnavailableError, match="locked"):
        await store.save("a", _checkpoint(2))
    waited = loop.time() - started
    other.rollback()
    await store.save("a", _checkpoint(3))
    other.close()

    # tried here without waiting, then waited for in the worker thread; then written here
    assert _writes(seen) == [True, False, True]
    assert waited >= 0.25
    assert await store.load("a") == _checkpoint(3)
    await store.aclose()


async def test_the_wal_is_merged_in_the_worker_thread_never_by_a_save(tmp_path: Path) -> None:
    store = SQLiteCheckpointStore(tmp_path / "offsets.db")
    await store.save("a", _checkpoint(0))
    seen = _traced(store)
    conn = store._connection()
    assert conn.execute("PRAGMA wal_autocheckpoint").fetchone() == (0,)

    for offset in range(1, 2 * WAL_MERGE_EVERY + 1):
        await store.save("a", _checkpoint(offset))

    merges = [here for here, sql in seen if "wal_checkpoint" in sql]
    assert merges == [False, False]
    assert all(_writes(seen))
    await store.aclose()


async def test_on_the_callers_thread_sqlite_merges_the_wal_itself(tmp_path: Path) -> None:
    store = SQLiteCheckpointStore(tmp_path / "offsets.db", in_thread=False)
    await store.save("a", _checkpoint(1))
    seen = _traced(store)
    assert store._connection().execute("PRAGMA wal_autocheckpoint").fetchone() == (1000,)

    await store.save("a", _checkpoint(2))

    assert _writes(seen) == [True]
    await store.aclose()


async def test_a_failed_merge_of_the_wal_does_not_fail_the_save_it_follows(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = SQLiteCheckpointStore(tmp_path / "offsets.db")
    merges: list[int] = []

    def failing_merge() -> None:
        merges.append(1)
        raise CheckpointUnavailableError("the disk is full (test)")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(store, "_merge_wal", failing_merge)
        for offset in range(1, WAL_MERGE_EVERY + 1):
            await store.save("a", _checkpoint(offset))  # the last one runs the merge

    assert merges == [1]
    assert await store.load("a") == _checkpoint(WAL_MERGE_EVERY)
    assert "journal was not merged" in caplog.text
    assert "the disk is full (test)" in caplog.text
    await store.aclose()
