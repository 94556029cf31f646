"""The lease store in a SQLite file: a fleet on one host, with nothing else installed.

stdlib ``sqlite3``, one connection used from one thread of the store's own (operations queue
there in order), so that the event loop never waits on the disk and a busy database never
takes the threads of the loop's default executor. Every write is one ``BEGIN IMMEDIATE``
transaction: SQLite then serializes writers across processes, which makes a claim an atomic
conditional update. "Now" is SQLite's own clock (``julianday('now')``), which on one host is the
host's clock. The checkpoints live in the table :class:`~ohip_stream.SQLiteCheckpointStore`
uses (``checkpoints``), so ``ohip-stream checkpoint show`` reads the same file.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from ohip_stream._checkpoints import _COLUMNS as _CHECKPOINT_COLUMNS
from ohip_stream._checkpoints import _SCHEMA as _CHECKPOINT_SCHEMA
from ohip_stream._checkpoints import _UPSERT, Checkpoint, _checkpoint
from ohip_stream.fleet._errors import (
    LeaseStoreError,
    LeaseStoreUnavailableError,
    StaleEpochError,
)
from ohip_stream.fleet._model import Lease, StreamSpec, SyncResult, Worker
from ohip_stream.fleet._store import SCHEMA_VERSION

__all__ = ["SQLiteLeaseStore"]

_T = TypeVar("_T")

_NOW = "((julianday('now') - 2440587.5) * 86400.0)"

_TABLES = (
    "CREATE TABLE IF NOT EXISTS ohip_fleet_schema (version INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ohip_fleet_streams (name TEXT PRIMARY KEY, "
    "environment TEXT NOT NULL, chain_code TEXT NOT NULL, spec TEXT NOT NULL, "
    "updated_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ohip_fleet_leases (stream TEXT PRIMARY KEY, owner TEXT, "
    "epoch INTEGER NOT NULL DEFAULT 0, expires_at REAL, acquired_at REAL)",
    "CREATE TABLE IF NOT EXISTS ohip_fleet_workers (worker_id TEXT PRIMARY KEY, "
    "host TEXT NOT NULL, pid INTEGER NOT NULL, started_at REAL NOT NULL, "
    "expires_at REAL NOT NULL)",
    "CREATE TABLE IF NOT EXISTS ohip_fleet_upgrades (key_id TEXT NOT NULL, at REAL NOT NULL, "
    "holder TEXT NOT NULL DEFAULT '')",
    "CREATE INDEX IF NOT EXISTS ohip_fleet_upgrades_key ON ohip_fleet_upgrades (key_id, at)",
    _CHECKPOINT_SCHEMA,
)

_LEASE_COLUMNS = f"stream, owner, epoch, expires_at - {_NOW}, acquired_at"


def _lease(row: Any) -> Lease:
    stream, owner, epoch, remaining, acquired_at = row
    return Lease(stream, owner, int(epoch), None if owner is None else remaining, acquired_at)


class SQLiteLeaseStore:
    """Leases, workers, streams, checkpoints and the upgrade budget in one SQLite file."""

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        self.where = f"SQLite {self.path}"
        self.busy_timeout = busy_timeout
        self._conn: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ohip-fleet-sqlite")
        self._closed = False

    # --- plumbing -------------------------------------------------------------------------------

    def _connection(self) -> sqlite3.Connection:
        if self._closed:
            raise LeaseStoreError(f"the lease store {self.where} is closed")
        if self._conn is None:
            if str(self.path) != ":memory:":
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(
                str(self.path),
                timeout=self.busy_timeout,
                isolation_level=None,
                check_same_thread=False,
            )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            self._conn = conn
        return self._conn

    def _sync(self, op: Callable[[sqlite3.Connection], _T], *, write: bool) -> _T:
        with self._lock:
            conn = self._connection()
            try:
                conn.execute("BEGIN IMMEDIATE" if write else "BEGIN")
                try:
                    result = op(conn)
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                conn.execute("COMMIT")
                return result
            except sqlite3.OperationalError as exc:
                raise LeaseStoreUnavailableError(
                    f"the fleet database {self.where} is busy or unreadable: {exc} (check the "
                    "disk, and that no other program holds a lock on the file)"
                ) from exc
            except sqlite3.Error as exc:
                raise LeaseStoreError(f"the fleet database {self.where} failed: {exc}") from exc

    async def _run(self, op: Callable[[sqlite3.Connection], _T], *, write: bool = True) -> _T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(
            self._thread, functools.partial(self._sync, op, write=write)
        )

    # --- schema ---------------------------------------------------------------------------------

    async def setup(self) -> None:
        def op(conn: sqlite3.Connection) -> None:
            for statement in _TABLES:
                conn.execute(statement)
            row = conn.execute("SELECT max(version) FROM ohip_fleet_schema").fetchone()
            version = row[0] if row else None
            if version is None:
                conn.execute(
                    "INSERT INTO ohip_fleet_schema (version) VALUES (?)", (SCHEMA_VERSION,)
                )
            elif version > SCHEMA_VERSION:
                raise LeaseStoreError(
                    f"the fleet database {self.where} has schema version {version}, newer than "
                    f"this release's {SCHEMA_VERSION}: upgrade ohip-stream on this worker"
                )

        await self._run(op)

    async def now(self) -> float:
        return await self._run(
            lambda c: float(c.execute(f"SELECT {_NOW}").fetchone()[0]), write=False
        )

    # --- streams --------------------------------------------------------------------------------

    async def sync_streams(self, specs: Sequence[StreamSpec], *, prune: bool) -> SyncResult:
        def op(conn: sqlite3.Connection) -> SyncResult:
            old = dict(conn.execute("SELECT name, spec FROM ohip_fleet_streams").fetchall())
            added: list[str] = []
            updated: list[str] = []
            unchanged: list[str] = []
            for spec in specs:
                text = spec.to_json()
                if old.get(spec.name) == text:
                    unchanged.append(spec.name)
                    continue
                (updated if spec.name in old else added).append(spec.name)
                conn.execute(
                    "INSERT INTO ohip_fleet_streams (name, environment, chain_code, spec, "
                    f"updated_at) VALUES (?, ?, ?, ?, {_NOW}) ON CONFLICT(name) DO UPDATE SET "
                    "environment = excluded.environment, chain_code = excluded.chain_code, "
                    "spec = excluded.spec, updated_at = excluded.updated_at",
                    (spec.name, spec.environment, spec.chain_code, text),
                )
                conn.execute(
                    "INSERT INTO ohip_fleet_leases (stream, epoch) VALUES (?, 0) "
                    "ON CONFLICT(stream) DO NOTHING",
                    (spec.name,),
                )
            names = {spec.name for spec in specs}
            removed = sorted(set(old) - names) if prune else []
            for name in removed:
                conn.execute("DELETE FROM ohip_fleet_streams WHERE name = ?", (name,))
                conn.execute("DELETE FROM ohip_fleet_leases WHERE stream = ?", (name,))
            return SyncResult(tuple(added), tuple(updated), tuple(removed), tuple(unchanged))

        return await self._run(op)

    async def streams(self) -> list[StreamSpec]:
        rows = await self._run(
            lambda c: c.execute("SELECT spec FROM ohip_fleet_streams ORDER BY name").fetchall(),
            write=False,
        )
        return [StreamSpec.from_json(row[0]) for row in rows]

    # --- workers --------------------------------------------------------------------------------

    async def heartbeat(self, worker_id: str, host: str, pid: int, ttl: float) -> None:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO ohip_fleet_workers (worker_id, host, pid, started_at, expires_at) "
                f"VALUES (?, ?, ?, {_NOW}, {_NOW} + ?) ON CONFLICT(worker_id) DO UPDATE SET "
                "expires_at = excluded.expires_at",
                (worker_id, host, pid, ttl),
            )
            # Workers long gone are forgotten (an hour after their heartbeat expired).
            conn.execute(f"DELETE FROM ohip_fleet_workers WHERE expires_at < {_NOW} - 3600")

        await self._run(op)

    async def workers(self) -> list[Worker]:
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT worker_id, host, pid, expires_at - {_NOW} FROM ohip_fleet_workers "
                f"WHERE expires_at > {_NOW} ORDER BY worker_id"
            ).fetchall(),
            write=False,
        )
        return [Worker(*row) for row in rows]

    async def leave(self, worker_id: str) -> None:
        await self._run(
            lambda c: c.execute("DELETE FROM ohip_fleet_workers WHERE worker_id = ?", (worker_id,))
        )

    # --- leases ---------------------------------------------------------------------------------

    async def leases(self) -> list[Lease]:
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT {_LEASE_COLUMNS} FROM ohip_fleet_leases ORDER BY stream"
            ).fetchall(),
            write=False,
        )
        return [_lease(row) for row in rows]

    async def claim(self, stream: str, owner: str, ttl: float) -> Lease | None:
        def op(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute(
                f"UPDATE ohip_fleet_leases SET owner = ?, epoch = epoch + 1, "
                f"expires_at = {_NOW} + ?, acquired_at = {_NOW} WHERE stream = ? AND "
                f"(owner IS NULL OR expires_at IS NULL OR expires_at <= {_NOW}) "
                f"RETURNING {_LEASE_COLUMNS}",
                (owner, ttl, stream),
            ).fetchone()
            return None if row is None else _lease(row)

        return await self._run(op)

    async def renew(self, stream: str, owner: str, epoch: int, ttl: float) -> float | None:
        def op(conn: sqlite3.Connection) -> float | None:
            row = conn.execute(
                f"UPDATE ohip_fleet_leases SET expires_at = {_NOW} + ? WHERE stream = ? AND "
                f"owner = ? AND epoch = ? AND expires_at > {_NOW} "
                f"RETURNING expires_at - {_NOW}",
                (ttl, stream, owner, epoch),
            ).fetchone()
            return None if row is None else float(row[0])

        return await self._run(op)

    async def renew_many(
        self, owner: str, leases: Mapping[str, int], ttl: float
    ) -> dict[str, float | None]:
        def op(conn: sqlite3.Connection) -> dict[str, float | None]:
            found: dict[str, float | None] = {}
            for stream, epoch in leases.items():
                row = conn.execute(
                    f"UPDATE ohip_fleet_leases SET expires_at = {_NOW} + ? WHERE stream = ? AND "
                    f"owner = ? AND epoch = ? AND expires_at > {_NOW} "
                    f"RETURNING expires_at - {_NOW}",
                    (ttl, stream, owner, epoch),
                ).fetchone()
                found[stream] = None if row is None else float(row[0])
            return found

        return await self._run(op)

    async def release(self, stream: str, owner: str, epoch: int) -> bool:
        def op(conn: sqlite3.Connection) -> bool:
            cursor = conn.execute(
                "UPDATE ohip_fleet_leases SET owner = NULL, expires_at = NULL WHERE stream = ? "
                "AND owner = ? AND epoch = ?",
                (stream, owner, epoch),
            )
            return cursor.rowcount > 0

        return await self._run(op)

    async def force_release(self, stream: str) -> Lease | None:
        def op(conn: sqlite3.Connection) -> Lease | None:
            row = conn.execute(
                "UPDATE ohip_fleet_leases SET owner = NULL, expires_at = NULL, "
                f"epoch = epoch + 1 WHERE stream = ? RETURNING {_LEASE_COLUMNS}",
                (stream,),
            ).fetchone()
            return None if row is None else _lease(row)

        return await self._run(op)

    # --- checkpoints ----------------------------------------------------------------------------

    async def load_checkpoint(self, stream_id: str) -> Checkpoint | None:
        row = await self._run(
            lambda c: c.execute(
                f"SELECT {_CHECKPOINT_COLUMNS} FROM checkpoints WHERE stream_id = ?", (stream_id,)
            ).fetchone(),
            write=False,
        )
        return None if row is None else _checkpoint(row)

    async def save_checkpoint(
        self, stream_id: str, checkpoint: Checkpoint, *, stream: str, epoch: int
    ) -> None:
        cp = checkpoint

        def op(conn: sqlite3.Connection) -> None:
            # BEGIN IMMEDIATE holds the write lock: no claim can change the epoch between this
            # check and the write.
            row = conn.execute(
                "SELECT epoch FROM ohip_fleet_leases WHERE stream = ?", (stream,)
            ).fetchone()
            current = None if row is None else int(row[0])
            if current != epoch:
                raise StaleEpochError(stream, epoch, current)
            updated = cp.updated_at or float(conn.execute(f"SELECT {_NOW}").fetchone()[0])
            conn.execute(
                _UPSERT,
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
        rows = await self._run(
            lambda c: c.execute(
                f"SELECT stream_id, {_CHECKPOINT_COLUMNS} FROM checkpoints ORDER BY stream_id"
            ).fetchall(),
            write=False,
        )
        return {row[0]: _checkpoint(row[1:]) for row in rows}

    # --- the upgrade budget -----------------------------------------------------------------

    async def take_upgrade(self, key_id: str, count: int, window: float, holder: str = "") -> float:
        def op(conn: sqlite3.Connection) -> float:
            now = float(conn.execute(f"SELECT {_NOW}").fetchone()[0])
            conn.execute(
                "DELETE FROM ohip_fleet_upgrades WHERE key_id = ? AND at <= ?",
                (key_id, now - window),
            )
            times = [
                row[0]
                for row in conn.execute(
                    "SELECT at FROM ohip_fleet_upgrades WHERE key_id = ? ORDER BY at", (key_id,)
                ).fetchall()
            ]
            if len(times) >= count:
                return max(0.001, float(times[len(times) - count]) + window - now)
            conn.execute(
                "INSERT INTO ohip_fleet_upgrades (key_id, at, holder) VALUES (?, ?, ?)",
                (key_id, now, holder),
            )
            return 0.0

        return await self._run(op)

    async def confirm_upgrade(self, key_id: str, holder: str, ago: float = 0.0) -> None:
        await self._run(
            lambda c: c.execute(
                f"UPDATE ohip_fleet_upgrades SET at = max(at, {_NOW} - ?) "
                "WHERE key_id = ? AND holder = ?",
                (ago, key_id, holder),
            )
        )

    async def aclose(self) -> None:
        def close() -> None:
            with self._lock:
                self._closed = True
                if self._conn is not None:
                    self._conn.close()
                    self._conn = None

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._thread, close)
        self._thread.shutdown(wait=False)

    def __repr__(self) -> str:
        return f"SQLiteLeaseStore({str(self.path)!r})"
