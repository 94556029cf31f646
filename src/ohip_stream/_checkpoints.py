"""Where a stream remembers how far it got: the last processed offset, per stream.

OHIP has no server-side acknowledgement: persisting the offset after the event was processed IS
the acknowledgement (protocol §3). A :class:`Checkpoint` also keeps when the stream's last
connection was completed, so that the gap before the next subscribe (protocol §4) holds across
process restarts, and which gateway host and chain code the stream is, so that a list of
checkpoints says more than opaque stream ids.

Every failure of a store is a :class:`~ohip_stream.CheckpointError` that names the store and
what to check; a transient one (a locked database, a full disk, a lost database connection) is
its subclass :class:`~ohip_stream.CheckpointUnavailableError`, which the stream retries.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar, runtime_checkable

from ohip_stream._checkpoints_sqlite import sqlite_failure, sqlite_failure_kind
from ohip_stream._exceptions import CheckpointError, ConfigurationError
from ohip_stream._logging import get_logger

__all__ = ["Checkpoint", "CheckpointStore", "MemoryCheckpointStore", "SQLiteCheckpointStore"]

_T = TypeVar("_T")

# A gateway host is a name or address with an optional port: nothing that could carry a
# credential (user:password@) or a path/query (where an application key could hide).
_NOT_IN_A_HOST = frozenset("@/?#\\ \t\r\n")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """How far a stream got.

    ``offset`` is the last processed event's offset (a digit string, never an int);
    ``completed_at`` the epoch time the last connection of the stream was completed and closed;
    ``updated_at`` when this checkpoint was written. ``gateway_host`` (``host`` or
    ``host:port``) and ``chain_code`` say which stream this is, for people reading a list of
    checkpoints; they hold no secret and no key.
    """

    offset: str | None = None
    unique_event_id: str | None = None
    completed_at: float | None = None
    updated_at: float = 0.0
    gateway_host: str | None = None
    chain_code: str | None = None

    def __post_init__(self) -> None:
        host = self.gateway_host
        if host is not None and (not host or not _NOT_IN_A_HOST.isdisjoint(host)):
            # The value itself is not echoed: it may hold the credentials it must not hold.
            raise ConfigurationError(
                "Checkpoint.gateway_host must be a host name with an optional port, such as "
                "'api.example.com' or 'api.example.com:8443': not empty, not a URL, no user or "
                "password, no spaces"
            )


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
        """Keep the checkpoint (an unset ``updated_at`` gets the time of the save)."""
        if not checkpoint.updated_at:
            checkpoint = replace(checkpoint, updated_at=time.time())
        self._data[stream_id] = checkpoint

    async def delete(self, stream_id: str) -> bool:
        """Forget the stream's checkpoint; whether there was one."""
        return self._data.pop(stream_id, None) is not None

    async def list(self) -> dict[str, Checkpoint]:
        """Every stored checkpoint by stream id, in stream id order."""
        return dict(sorted(self._data.items()))

    async def aclose(self) -> None:
        """Nothing to release (the checkpoints stay readable)."""

    async def __aenter__(self) -> MemoryCheckpointStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"MemoryCheckpointStore(streams={len(self._data)})"


_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    stream_id TEXT PRIMARY KEY,
    offset TEXT,
    unique_event_id TEXT,
    completed_at REAL,
    updated_at REAL NOT NULL,
    gateway_host TEXT,
    chain_code TEXT
)
"""

# Columns added after the first release: a file written before them gains them when opened.
_ADDED_COLUMNS = ("gateway_host", "chain_code")

_COLUMNS = "offset, unique_event_id, completed_at, updated_at, gateway_host, chain_code"

_UPSERT = (
    f"INSERT INTO checkpoints (stream_id, {_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?) "
    "ON CONFLICT(stream_id) DO UPDATE SET offset = excluded.offset, "
    "unique_event_id = excluded.unique_event_id, completed_at = excluded.completed_at, "
    "updated_at = excluded.updated_at, gateway_host = excluded.gateway_host, "
    "chain_code = excluded.chain_code"
)

_Row = tuple[str | None, str | None, float | None, float, str | None, str | None]

_log = get_logger("ohip_stream.checkpoints")

#: Saves between two checkpoints of the WAL into the database file (a save adds a page or two
#: to the WAL; SQLite's own automatic checkpoint comes at 1,000 pages).
WAL_MERGE_EVERY = 200


def checkpoint_row(stream_id: str, cp: Checkpoint) -> tuple[Any, ...]:
    """The row a store writes: the stream id, then the checkpoint's fields in their order (an
    unset ``updated_at`` gets the time now)."""
    return (
        stream_id,
        cp.offset,
        cp.unique_event_id,
        cp.completed_at,
        cp.updated_at or time.time(),
        cp.gateway_host,
        cp.chain_code,
    )


def _checkpoint(row: _Row) -> Checkpoint:
    return Checkpoint(row[0], row[1], row[2], row[3], row[4], row[5])


class SQLiteCheckpointStore:
    """Durable checkpoints in a SQLite file (WAL journal, one row per stream).

    The event loop (and the stream's pings) never waits on the disk or on a lock: a save is
    first tried on the loop's thread without waiting (no lock wait, no disk sync: the journal is
    a WAL written with ``synchronous=NORMAL``, and the WAL is checkpointed into the database in
    a worker thread); a save that would wait, and every other operation, runs in a worker
    thread. A database locked by another program is waited for up to ``busy_timeout`` seconds,
    then the operation raises :class:`~ohip_stream.CheckpointUnavailableError` (the stream
    retries it). ``in_thread=False`` runs every operation on the caller's thread instead: a
    locked database then blocks the event loop for up to ``busy_timeout``.

    Before each operation the store checks that the path still names the file it opened: a
    checkpoint file deleted or replaced under a running consumer raises
    :class:`~ohip_stream.CheckpointError` instead of writing on to a file nobody will read.

    Safe to share between streams of one process; across processes the stream guard keeps one
    writer per stream.
    """

    def __init__(
        self, path: str | Path, *, in_thread: bool = True, busy_timeout: float = 5.0
    ) -> None:
        if (
            isinstance(busy_timeout, bool)
            or not isinstance(busy_timeout, (int, float))
            or not math.isfinite(busy_timeout)
            or busy_timeout < 0
        ):
            raise ConfigurationError(
                f"busy_timeout must be a number of seconds, 0 or more, got {busy_timeout!r}"
            )
        self.path = Path(path)
        self.in_thread = in_thread
        self.busy_timeout = float(busy_timeout)
        self._conn: sqlite3.Connection | None = None
        # (st_dev, st_ino) of the file the connection opened; None for an in-memory database.
        self._identity: tuple[int, int] | None = None
        self._lock = threading.Lock()
        self._closed = False
        # Saves since the WAL was last checkpointed (with in_thread; see save).
        self._unmerged = 0

    # --- the connection -----------------------------------------------------------------------

    def _failure(self, action: str, exc: sqlite3.Error | OSError) -> CheckpointError:
        return sqlite_failure(self.path, action, exc, busy_timeout=self.busy_timeout)

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise CheckpointError(
                f"the checkpoint database {self.path} is closed: use a store that is open "
                "(a closed store does not reopen)"
            )
        if self._conn is None:
            if str(self.path) != ":memory:" and not self.path.parent.exists():
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                check_same_thread=False,
                isolation_level=None,
            )
            try:
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                if self.in_thread:
                    # a checkpoint of the WAL syncs the disk: the worker thread runs them
                    conn.execute("PRAGMA wal_autocheckpoint=0")
                _migrate(conn)
                self._identity = self._file_identity()
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _file_identity(self) -> tuple[int, int] | None:
        if str(self.path) == ":memory:":
            return None
        st = os.stat(self.path)
        return (st.st_dev, st.st_ino)

    def _check_same_file(self) -> None:
        """Raise if the path no longer names the file the connection opened."""
        if self._identity is None:
            return
        try:
            current: tuple[int, int] | None = self._file_identity()
        except (FileNotFoundError, NotADirectoryError):
            current = None
        if current != self._identity:
            raise CheckpointError(
                f"the checkpoint database {self.path} was deleted or replaced while this "
                "consumer was running: offsets written now would be lost (the next run reads "
                "the path, not this file). Stop the consumer, restore the file (or set the "
                "offset with `ohip-stream checkpoint set`), then start it again"
            )

    def _run(self, action: str, op: Callable[[sqlite3.Connection], _T]) -> _T:
        """``op`` on the open connection, under the store's lock, with errors mapped."""
        with self._lock:
            try:
                conn = self._connection()
                self._check_same_file()
                return op(conn)
            except (sqlite3.Error, OSError) as exc:
                raise self._failure(action, exc) from exc

    async def _call(self, func: Callable[[], _T]) -> _T:
        if self.in_thread:
            return await asyncio.to_thread(func)
        return func()

    # --- operations ---------------------------------------------------------------------------

    def _load(self, stream_id: str) -> Checkpoint | None:
        def op(conn: sqlite3.Connection) -> _Row | None:
            cursor = conn.execute(
                f"SELECT {_COLUMNS} FROM checkpoints WHERE stream_id = ?", (stream_id,)
            )
            row: _Row | None = cursor.fetchone()
            return row

        row = self._run("read", op)
        return None if row is None else _checkpoint(row)

    def _save(self, stream_id: str, cp: Checkpoint) -> None:
        values = checkpoint_row(stream_id, cp)
        self._run("write", lambda conn: conn.execute(_UPSERT, values))

    def _save_without_waiting(self, stream_id: str, cp: Checkpoint) -> bool:
        """Save on the caller's thread if nothing has to be waited for; False (nothing written)
        when the connection is not open yet (opening may create the file), the worker thread
        is using it, or another connection holds the database's lock."""
        if self._conn is None or not self._lock.acquire(blocking=False):
            return False
        try:
            conn = self._conn
            if conn is None:
                return False
            try:
                self._check_same_file()
                conn.execute("PRAGMA busy_timeout = 0")
                try:
                    conn.execute(_UPSERT, checkpoint_row(stream_id, cp))
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {round(self.busy_timeout * 1000)}")
            except (sqlite3.Error, OSError) as exc:
                if sqlite_failure_kind(exc) == "locked":
                    return False
                raise self._failure("write", exc) from exc
            return True
        finally:
            self._lock.release()

    def _merge_wal(self) -> None:
        self._run(
            "merge the journal into", lambda conn: conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        )

    def _delete(self, stream_id: str) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute("DELETE FROM checkpoints WHERE stream_id = ?", (stream_id,))
            return cursor.rowcount > 0

        return self._run("delete from", op)

    def _list(self) -> dict[str, Checkpoint]:
        def op(conn: sqlite3.Connection) -> list[Any]:
            cursor = conn.execute(
                f"SELECT stream_id, {_COLUMNS} FROM checkpoints ORDER BY stream_id"
            )
            return cursor.fetchall()

        return {row[0]: _checkpoint(row[1:]) for row in self._run("read", op)}

    async def load(self, stream_id: str) -> Checkpoint | None:
        """The stream's checkpoint, or ``None``."""
        return await self._call(lambda: self._load(stream_id))

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        """Write the checkpoint durably (one transaction; an unset ``updated_at`` gets now)."""
        if not self.in_thread:
            self._save(stream_id, checkpoint)
            return
        # Why not always the thread: while the event loop's thread is busy (a consumer reading
        # a backlog), a worker thread waits for the GIL at each step, and the hand-off costs the
        # caller milliseconds, far more than the write.
        if not self._save_without_waiting(stream_id, checkpoint):
            await asyncio.to_thread(self._save, stream_id, checkpoint)
        self._unmerged += 1
        if self._unmerged >= WAL_MERGE_EVERY:
            self._unmerged = 0
            try:
                await asyncio.to_thread(self._merge_wal)
            except CheckpointError as exc:
                # The checkpoint is written: a merge that failed is only tried again later (the
                # WAL grows meanwhile), and a file that is gone fails the next save anyway.
                _log.warning(
                    "the SQLite checkpoint journal was not merged (retried later): %s", exc
                )

    async def delete(self, stream_id: str) -> bool:
        """Forget the stream's checkpoint; whether there was one."""
        return await self._call(lambda: self._delete(stream_id))

    async def list(self) -> dict[str, Checkpoint]:
        """Every stored checkpoint by stream id, in stream id order."""
        return await self._call(self._list)

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
        await self._call(self.close)

    async def __aenter__(self) -> SQLiteCheckpointStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return (
            f"SQLiteCheckpointStore({str(self.path)!r}, in_thread={self.in_thread}, "
            f"busy_timeout={self.busy_timeout:g})"
        )


def _migrate(conn: sqlite3.Connection) -> None:
    """Create the table, or add the columns a file written by an older release lacks.

    The common case (an up-to-date file) only reads the schema; a change is made in one
    ``BEGIN IMMEDIATE`` transaction, so that two processes opening an old file at once do
    not both add a column.
    """
    if _missing_columns(conn) == ():
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(_SCHEMA)
        for column in _missing_columns(conn) or ():
            conn.execute(f"ALTER TABLE checkpoints ADD COLUMN {column} TEXT")
        conn.execute("COMMIT")
    except BaseException:
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


def _missing_columns(conn: sqlite3.Connection) -> tuple[str, ...] | None:
    """The added columns the table lacks; ``None`` when there is no table yet."""
    names = {row[1] for row in conn.execute("PRAGMA table_info(checkpoints)")}
    if not names:
        return None
    return tuple(column for column in _ADDED_COLUMNS if column not in names)
