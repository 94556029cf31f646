"""The lease store: what a fleet keeps in its database, behind one small protocol.

Two backends pass one contract suite (``tests/test_fleet_store.py``):
:class:`~ohip_stream.fleet.PostgresLeaseStore` for workers on many hosts and
:class:`~ohip_stream.fleet.SQLiteLeaseStore` for one host (the embedded default, nothing to
install). Every time a lease is compared with "now" it is the DATABASE's clock, never a
worker's: workers on different hosts may disagree about the time, the database is one.

The rules every backend keeps:

* A claim is one atomic conditional update: it succeeds only when the lease has no owner or
  its expiry has passed, and it raises the epoch (the fencing token) by one.
* A renewal succeeds only for the owner, at its epoch, before the expiry.
* A release by the owner keeps the epoch (the next claim raises it); an operator's
  :meth:`LeaseStore.force_release` raises it at once, so that the old owner's renewals and
  checkpoint writes are refused from then on.
* :meth:`LeaseStore.save_checkpoint` writes only while the lease still has the writer's epoch,
  and holds the lease row against a concurrent claim until the write is committed; otherwise it
  raises :class:`~ohip_stream.fleet.StaleEpochError`.
* :meth:`LeaseStore.take_upgrade` is the upgrade budget of one application key shared by every
  worker (protocol §10: 150 upgrades per 2 minutes per key, across processes and hosts).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Protocol, runtime_checkable

from ohip_stream._checkpoints import Checkpoint
from ohip_stream._exceptions import ConfigurationError
from ohip_stream.fleet._model import Lease, StreamSpec, SyncResult, Worker

__all__ = ["SCHEMA_VERSION", "LeaseStore", "open_lease_store"]

#: The version of the fleet's tables this release writes (``ohip_fleet_schema``).
SCHEMA_VERSION = 1


@runtime_checkable
class LeaseStore(Protocol):
    """Leases, workers, streams, checkpoints and the upgrade budget of a fleet."""

    where: str

    async def setup(self) -> None:
        """Create (or migrate) the tables; idempotent, safe from many workers at once."""

    async def now(self) -> float:
        """The database's clock, epoch seconds."""

    # --- streams ------------------------------------------------------------------------------
    async def sync_streams(self, specs: Sequence[StreamSpec], *, prune: bool) -> SyncResult:
        """Write the streams (and a lease row for each new one); ``prune`` deletes the others."""

    async def streams(self) -> list[StreamSpec]:
        """Every stream, by name."""

    # --- workers ------------------------------------------------------------------------------
    async def heartbeat(self, worker_id: str, host: str, pid: int, ttl: float) -> None:
        """The worker is alive for ``ttl`` more seconds."""

    async def workers(self) -> list[Worker]:
        """The workers whose heartbeat has not expired, by id."""

    async def leave(self, worker_id: str) -> None:
        """The worker stops (its row is deleted)."""

    # --- leases -------------------------------------------------------------------------------
    async def leases(self) -> list[Lease]:
        """Every stream's lease, by stream name."""

    async def claim(self, stream: str, owner: str, ttl: float) -> Lease | None:
        """Take the stream if it is free or expired (epoch + 1); ``None`` when another holds it."""

    async def renew(self, stream: str, owner: str, epoch: int, ttl: float) -> float | None:
        """Extend the lease to ``ttl`` seconds from now; the seconds left, or ``None`` when the
        lease is not this owner's at this epoch any more, or expired."""

    async def renew_many(
        self, owner: str, leases: Mapping[str, int], ttl: float
    ) -> dict[str, float | None]:
        """:meth:`renew` for many leases (stream -> epoch) in one round trip."""

    async def release(self, stream: str, owner: str, epoch: int) -> bool:
        """Give the lease up (only the owner at its epoch); whether it was released."""

    async def force_release(self, stream: str) -> Lease | None:
        """An operator's release: no owner, epoch + 1 (fencing the old owner); ``None`` when the
        stream is unknown."""

    # --- checkpoints --------------------------------------------------------------------------
    async def load_checkpoint(self, stream_id: str) -> Checkpoint | None:
        """The checkpoint of ``stream_id`` (``EventStream.stream_id``)."""

    async def save_checkpoint(
        self, stream_id: str, checkpoint: Checkpoint, *, stream: str, epoch: int
    ) -> None:
        """Write it if the lease of ``stream`` still has ``epoch``; else StaleEpochError."""

    async def checkpoints(self) -> dict[str, Checkpoint]:
        """Every checkpoint by stream id."""

    # --- the upgrade budget -------------------------------------------------------------------
    async def take_upgrade(self, key_id: str, count: int, window: float, holder: str = "") -> float:
        """Record one upgrade for the key (by ``holder``) if fewer than ``count`` happened in
        the last ``window`` seconds and return 0; else record nothing and return the seconds
        to wait."""

    async def confirm_upgrade(self, key_id: str, holder: str, ago: float = 0.0) -> None:
        """The holder's upgrade happened ``ago`` seconds before now (a duration measured by the
        worker, so that the time a busy worker or database takes to get here does not count):
        its record moves to that moment, never earlier than the slot's taking, so that the
        window counts from the real upgrade."""

    async def aclose(self) -> None:
        """Close the connections; idempotent."""


def open_lease_store(database_url: str) -> LeaseStore:
    """The store for a database URL: ``sqlite:///path/fleet.db`` (``sqlite:///:memory:`` for
    tests), ``postgresql://user@host:5432/db`` or a libpq ``key=value`` string."""
    if not isinstance(database_url, str) or not database_url:
        raise ConfigurationError(
            "database_url must be a URL: sqlite:///fleet.db (one host) or "
            "postgresql://user@host:5432/dbname (many hosts)"
        )
    if database_url.startswith("sqlite:///"):
        from ohip_stream.fleet._sqlite import SQLiteLeaseStore

        return SQLiteLeaseStore(database_url[len("sqlite:///") :])
    if database_url.startswith(("postgresql://", "postgres://")) or (
        "://" not in database_url and "=" in database_url
    ):
        from ohip_stream.fleet._postgres import PostgresLeaseStore

        return PostgresLeaseStore(database_url)
    scheme = database_url.split(":", 1)[0] if ":" in database_url else "(none)"
    raise ConfigurationError(
        f"database_url has the scheme {scheme!r}: use sqlite:///path/to/fleet.db (one host) or "
        "postgresql://user@host:5432/dbname (many hosts)"
    )
