"""A fleet that delivers into a sink: ``Fleet(url, streams=..., sink=sink)``.

Per stream, the batches are the stream's own commits. The fleet's handler only keeps each event
(it returns at once), and the stream's checkpoint store is a :class:`SinkCheckpointStore`: each
commit the stream makes (``commit_every`` events, ``commit_interval``, a rotation, a stop)
first delivers the events processed up to that checkpoint, then writes the checkpoint:

* a sink that writes the checkpoint itself (:class:`~ohip_stream.sinks.PostgresSink`) does both
  in one transaction on the fleet's database, whose first statement takes the stream's lease row
  ``FOR SHARE`` and compares its epoch: a stale epoch rolls the whole batch back (nothing is
  written), and the stream stops in this worker at once, as after any stale checkpoint write.
  The row stays locked until the commit, so a new owner's claim waits for it: no batch of an
  old epoch lands after the stream changed hands.
* any other sink (NATS, webhook) delivers, then the checkpoint is written fenced, as every fleet
  checkpoint is. A worker whose lease moved meanwhile may have delivered that batch before its
  checkpoint write was refused; the next owner delivers it again under the same keys
  (``Nats-Msg-Id``, ``Idempotency-Key``), which make the repeat harmless.

A failed delivery is a failed commit: a transient one
(:class:`~ohip_stream.sinks.DeliveryUnavailableError`) is retried by the stream with backoff,
which hands out at most one batch more meanwhile; a permanent one ends the stream in this
worker (the fleet logs it and may start it again later, here or elsewhere).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ohip_stream._exceptions import CheckpointError, CheckpointUnavailableError, ConfigurationError
from ohip_stream.fleet._errors import StaleEpochError
from ohip_stream.fleet._fenced import FencedCheckpointStore
from ohip_stream.fleet._runner import Handler
from ohip_stream.fleet._store import LeaseStore
from ohip_stream.sinks._protocol import Batch, DeliveryError, DeliveryUnavailableError, Sink

if TYPE_CHECKING:
    from ohip_stream._checkpoints import Checkpoint
    from ohip_stream._models import Event
    from ohip_stream.fleet._model import StreamSpec

__all__ = ["FleetSinks", "SinkCheckpointStore", "sink_or_handler"]

# The checkpoints table the fleet reads (PostgresLeaseStore's); a sink writing elsewhere would
# leave the fleet resuming from a position the sink never moved.
_FLEET_CHECKPOINTS = "ohip_stream_checkpoints"
_LEASE_EPOCH = "SELECT epoch FROM ohip_fleet_leases WHERE stream = %s FOR SHARE"


def _writes_offset(sink: Sink) -> bool:
    return bool(sink.checkpoints.sink_writes_offset)


class SinkCheckpointStore(FencedCheckpointStore):
    """The checkpoint store of one owned stream whose events go to a sink (see the module).

    ``keep(event)`` is called for each event handed out; ``save`` delivers the kept events up
    to the checkpoint's offset with it, fenced by this store's epoch.
    """

    def __init__(
        self,
        store: LeaseStore,
        stream: str,
        epoch: int,
        *,
        sink: Sink,
        on_stale: Callable[[StaleEpochError], None] | None = None,
    ) -> None:
        super().__init__(store, stream, epoch, on_stale=on_stale)
        self.sink = sink
        self._in_transaction = _writes_offset(sink)
        self._kept: list[Event] = []

    @property
    def kept(self) -> int:
        """Events handed out and not delivered yet."""
        return len(self._kept)

    def keep(self, event: Event) -> None:
        """An event was handed out: it goes with the commit that covers it."""
        self._kept.append(event)

    def _due(self, offset: str | None) -> int:
        """How many kept events the checkpoint at ``offset`` covers (kept in order)."""
        kept = self._kept
        if offset is None or not kept:
            return 0
        last = int(offset)
        count = len(kept)
        while count and int(kept[count - 1].metadata.offset) > last:
            count -= 1
        return count

    async def _check_epoch(self, conn: Any) -> None:
        """The fence run first in the sink's transaction (psycopg's connection)."""
        cursor = await conn.execute(_LEASE_EPOCH, (self.stream,))
        row = await cursor.fetchone()
        current = None if row is None else int(row[0])
        if current != self.epoch:
            raise StaleEpochError(self.stream, self.epoch, current)

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        """Deliver the events the checkpoint covers, and write it; fenced by the epoch (a
        rejected batch, like a rejected checkpoint, makes the store stale)."""
        self._refuse_if_stale()
        count = self._due(checkpoint.offset)
        if count == 0:
            await super().save(stream_id, checkpoint)
            return
        batch = Batch(
            stream_id,
            checkpoint.chain_code or "",
            self._kept[:count],
            checkpoint,
            fence=self._check_epoch if self._in_transaction else None,
        )
        try:
            await self.sink.deliver(batch)
        except StaleEpochError as exc:
            self._reject(exc)
            raise
        except DeliveryUnavailableError as exc:
            raise CheckpointUnavailableError(f"stream {self.stream}: {exc}") from exc
        except DeliveryError as exc:
            raise CheckpointError(f"stream {self.stream}: {exc}") from exc
        if not self._in_transaction:
            await super().save(stream_id, checkpoint)
        del self._kept[:count]

    def _reject(self, exc: StaleEpochError) -> None:
        self._kept.clear()  # nothing more is delivered from this store
        super()._reject(exc)

    def __repr__(self) -> str:
        return f"SinkCheckpointStore(stream={self.stream!r}, epoch={self.epoch})"


class FleetSinks:
    """What a :class:`~ohip_stream.fleet.Fleet` made with ``sink=`` gives its streams: the
    handler that keeps each event, and a :class:`SinkCheckpointStore` per lease."""

    def __init__(self, sink: object, store: LeaseStore, handler: object = None) -> None:
        if handler is not None:
            raise ConfigurationError(
                "give the fleet a handler or a sink, not both (the sink is the handler)"
            )
        if not isinstance(sink, Sink):
            raise ConfigurationError(
                "sink must be a sink (an object with a checkpoints store and an async "
                f"deliver(batch)), such as PostgresSink, got {type(sink).__name__}"
            )
        if _writes_offset(sink):
            _check_same_database(sink, store)
        self.sink = sink
        self._stores: dict[str, SinkCheckpointStore] = {}

    def store_for(
        self,
        store: LeaseStore,
        stream: str,
        epoch: int,
        *,
        on_stale: Callable[[StaleEpochError], None] | None = None,
    ) -> SinkCheckpointStore:
        """The checkpoint store of a lease just taken (it replaces the stream's earlier one: a
        worker runs a stream at most once at a time)."""
        found = SinkCheckpointStore(store, stream, epoch, sink=self.sink, on_stale=on_stale)
        self._stores[stream] = found
        return found

    def handle(self, stream: StreamSpec, event: Event) -> None:
        """The fleet's handler: the event waits for the commit that delivers it."""
        self._stores[stream.name].keep(event)

    def __repr__(self) -> str:
        return f"FleetSinks({self.sink!r})"


def sink_or_handler(
    sink: Sink | None, store: LeaseStore, handler: Handler | None
) -> tuple[FleetSinks | None, Handler]:
    """The fleet's handler: the user's, or (with a sink) one that keeps each event for the
    sink; and the :class:`FleetSinks` that make the streams' stores (``None``: no sink)."""
    if sink is None:
        if not callable(handler):
            raise ConfigurationError("handler must be a function handler(stream, event)")
        return None, handler
    sinks = FleetSinks(sink, store, handler)
    return sinks, sinks.handle


def _check_same_database(sink: Sink, store: LeaseStore) -> None:
    """A sink that writes the checkpoint in its own transaction must write it where the fleet
    reads it, beside the lease it checks: the fleet's PostgreSQL database."""
    from ohip_stream.fleet._postgres import PostgresLeaseStore

    if not isinstance(store, PostgresLeaseStore):
        raise ConfigurationError(
            f"{sink!r} writes the checkpoint in its own transaction, with the lease's epoch: "
            "the fleet must be on the same PostgreSQL database (Fleet('postgresql://...'), "
            f"not {store.where})"
        )
    table = getattr(sink, "checkpoint_table", _FLEET_CHECKPOINTS)
    if table != _FLEET_CHECKPOINTS:
        raise ConfigurationError(
            f"{sink!r} writes checkpoints to {table!r}; in a fleet they must go to the fleet's "
            f"table {_FLEET_CHECKPOINTS!r} (leave checkpoint_table at its default)"
        )
