from __future__ import annotations

from pathlib import Path

import pytest

from ohip_stream import (
    Checkpoint,
    CheckpointStore,
    MemoryCheckpointStore,
    SQLiteCheckpointStore,
)


async def test_memory_store_round_trip() -> None:
    store = MemoryCheckpointStore()
    assert isinstance(store, CheckpointStore)
    assert await store.load("s1") is None
    await store.save("s1", Checkpoint("12", "u12", 5.0, 6.0))
    assert await store.load("s1") == Checkpoint("12", "u12", 5.0, 6.0)
    assert await store.list() == {"s1": Checkpoint("12", "u12", 5.0, 6.0)}
    assert await store.delete("s1") is True
    assert await store.delete("s1") is False


async def test_sqlite_store_is_durable_and_keeps_offsets_as_strings(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "offsets.db"
    store = SQLiteCheckpointStore(path)
    assert isinstance(store, CheckpointStore)
    await store.save("a", Checkpoint("0000193", "u", None, 1.0))
    await store.save("a", Checkpoint("0000194", "v", 7.5, 2.0))
    await store.save("b", Checkpoint("5", None, None, 3.0))
    store.close()
    store.close()  # idempotent

    reopened = SQLiteCheckpointStore(path)
    loaded = await reopened.load("a")
    assert loaded == Checkpoint("0000194", "v", 7.5, 2.0)
    assert isinstance(loaded.offset, str)
    assert sorted(await reopened.list()) == ["a", "b"]
    assert await reopened.delete("b") is True
    assert reopened.load_sync("b") is None
    mode = reopened._connection().execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    await reopened.aclose()


def test_sqlite_store_refuses_an_unwritable_path(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    store = SQLiteCheckpointStore(blocker / "offsets.db")
    with pytest.raises(Exception, match="checkpoint database"):
        store.save_sync("a", Checkpoint("1"))


async def test_sqlite_store_in_a_worker_thread_behaves_the_same(tmp_path: Path) -> None:
    store = SQLiteCheckpointStore(tmp_path / "offsets.db", in_thread=True)
    await store.save("a", Checkpoint("7", "u7", None, 1.0))
    assert await store.load("a") == Checkpoint("7", "u7", None, 1.0)
    assert list(await store.list()) == ["a"]
    assert await store.delete("a") is True
    assert "in_thread=True" in repr(store)
    store.close()
