"""Where a stream remembers how far it got: the last processed offset, per stream.

OHIP has no server-side acknowledgement: persisting the offset after the event was processed IS
the acknowledgement (protocol §3). A :class:`Checkpoint` also keeps when the stream's last
connection was completed, so that the gap before the next subscribe (protocol §4) holds across
process restarts.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

from ohip_stream._exceptions import ConfigurationError

__all__ = ["Checkpoint", "CheckpointStore", "MemoryCheckpointStore", "SQLiteCheckpointStore"]


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a stream got.

    ``offset`` is the last processed event's offset (a digit string, never an int);
    ``completed_at`` the epoch time the last connection of the stream was completed and closed;
    ``updated_at`` when this checkpoint was written.
    """

    offset: str | None = None
    unique_event_id: str | None = None
    completed_at: float | None = None
    updated_at: float = 0.0


@runtime_checkable
class CheckpointStore(Protocol):
    """Storage of checkpoints by ``stream_id`` (see ``EventStream.stream_id``)."""

    async def load(self, stream_id: str) -> Checkpoint | None:
        """The stream's checkpoint, or ``None`` when it has none."""

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        """Store the stream's checkpoint (replacing the previous one)."""


class MemoryCheckpointStore:
    """Checkpoints in memory: a restart of the process will not resume (for tests and demos)."""

    def __init__(self) -> None:
        self._data: dict[str, Checkpoint] = {}

    async def load(self, stream_id: str) -> Checkpoint | None:
        """The stream's checkpoint, or ``None``."""
        return self._data.get(stream_id)

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        """Keep the checkpoint."""
        self._data[stream_id] = checkpoint

    async def delete(self, stream_id: str) -> bool:
        """Forget the stream's checkpoint; whether there was one."""
        return self._data.pop(stream_id, None) is not None

    async def list(self) -> dict[str, Checkpoint]:
        """Every stored checkpoint by stream id."""
        return dict(self._data)

    def __repr__(self) -> str:
        return f"MemoryCheckpointStore(streams={len(self._data)})"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    stream_id TEXT PRIMARY KEY,
    offset TEXT,
    unique_event_id TEXT,
    completed_at REAL,
    updated_at REAL NOT NULL
)
"""


class SQLiteCheckpointStore:
    """Durable checkpoints in a SQLite file (WAL journal, one row per stream).

    A write is one small UPSERT in WAL mode with ``synchronous=NORMAL``: about 20 µs, so by
    default it runs on the caller's thread (a hop to a worker thread costs ten times more, in
    contention for the GIL with a busy event loop). On a slow disk (a network file system),
    pass ``in_thread=True`` so the event loop never waits on it. Safe to share between streams
    of one process; across processes the stream guard keeps one writer per stream.
    """

    def __init__(self, path: str | Path, *, in_thread: bool = False) -> None:
        self.path = Path(path)
        self.in_thread = in_thread
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._closed = False

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise ConfigurationError(f"the checkpoint store {self.path} is closed")
        if self._conn is None:
            try:
                if self.path.parent and not self.path.parent.exists():
                    self.path.parent.mkdir(parents=True, exist_ok=True)
                conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA busy_timeout=5000")
                conn.execute(_SCHEMA)
            except (sqlite3.Error, OSError) as exc:
                raise ConfigurationError(
                    f"cannot open the checkpoint database {self.path}: {exc}; "
                    "check the path is writable"
                ) from exc
            self._conn = conn
        return self._conn

    def _load(self, stream_id: str) -> Checkpoint | None:
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT offset, unique_event_id, completed_at, updated_at "
                    "FROM checkpoints WHERE stream_id = ?",
                    (stream_id,),
                )
                .fetchone()
            )
        if row is None:
            return None
        return Checkpoint(
            offset=row[0], unique_event_id=row[1], completed_at=row[2], updated_at=row[3]
        )

    def _save(self, stream_id: str, cp: Checkpoint) -> None:
        with self._lock:
            self._connection().execute(
                "INSERT INTO checkpoints (stream_id, offset, unique_event_id, completed_at, "
                "updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(stream_id) DO UPDATE SET "
                "offset = excluded.offset, unique_event_id = excluded.unique_event_id, "
                "completed_at = excluded.completed_at, updated_at = excluded.updated_at",
                (
                    stream_id,
                    cp.offset,
                    cp.unique_event_id,
                    cp.completed_at,
                    cp.updated_at or time.time(),
                ),
            )

    def _delete(self, stream_id: str) -> bool:
        with self._lock:
            cursor = self._connection().execute(
                "DELETE FROM checkpoints WHERE stream_id = ?", (stream_id,)
            )
            return cursor.rowcount > 0

    def _list(self) -> dict[str, Checkpoint]:
        with self._lock:
            rows = (
                self._connection()
                .execute(
                    "SELECT stream_id, offset, unique_event_id, completed_at, updated_at "
                    "FROM checkpoints ORDER BY stream_id"
                )
                .fetchall()
            )
        return {r[0]: Checkpoint(r[1], r[2], r[3], r[4]) for r in rows}

    async def load(self, stream_id: str) -> Checkpoint | None:
        """The stream's checkpoint, or ``None``."""
        if self.in_thread:
            return await asyncio.to_thread(self._load, stream_id)
        return self._load(stream_id)

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        """Write the checkpoint durably (one transaction)."""
        if self.in_thread:
            await asyncio.to_thread(self._save, stream_id, checkpoint)
        else:
            self._save(stream_id, checkpoint)

    async def delete(self, stream_id: str) -> bool:
        """Forget the stream's checkpoint; whether there was one."""
        if self.in_thread:
            return await asyncio.to_thread(self._delete, stream_id)
        return self._delete(stream_id)

    async def list(self) -> dict[str, Checkpoint]:
        """Every stored checkpoint by stream id."""
        if self.in_thread:
            return await asyncio.to_thread(self._list)
        return self._list()

    def load_sync(self, stream_id: str) -> Checkpoint | None:
        """:meth:`load` without an event loop (for the command line)."""
        return self._load(stream_id)

    def save_sync(self, stream_id: str, checkpoint: Checkpoint) -> None:
        """:meth:`save` without an event loop."""
        self._save(stream_id, checkpoint)

    def delete_sync(self, stream_id: str) -> bool:
        """:meth:`delete` without an event loop."""
        return self._delete(stream_id)

    def list_sync(self) -> dict[str, Checkpoint]:
        """:meth:`list` without an event loop."""
        return self._list()

    def close(self) -> None:
        """Close the database (idempotent)."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def aclose(self) -> None:
        """Close the database (idempotent)."""
        self.close()

    async def __aenter__(self) -> SQLiteCheckpointStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"SQLiteCheckpointStore({str(self.path)!r}, in_thread={self.in_thread})"
