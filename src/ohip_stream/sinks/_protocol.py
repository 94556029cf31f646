"""What a sink is: the :class:`Sink` protocol, the :class:`Batch` it receives, its errors.

A sink delivers events somewhere (a table, a broker, an HTTP endpoint) with one effect per
event. The guarantee rests on two rules, split between the sink and the runner
(:func:`~ohip_stream.sinks.deliver`):

1. The stream's checkpoint never passes an event the sink has not finished with. The stream
   counts an event as processed as soon as the next one is asked for; the runner asks ahead of
   the sink, so the stream's own checkpoint writes go through :class:`SinkCheckpoints`, which
   holds them back to the last offset the sink confirmed.
2. Delivering an event again has no second effect. After a crash the stream resumes after the
   last confirmed offset, so the events of the batch that was in flight come again: the sink
   makes the repeat harmless, by keying on ``uniqueEventId`` (a unique row, a broker's
   message id, an idempotency key) or by writing the checkpoint in the same transaction as the
   events (then nothing of the batch was written, or all of it with the checkpoint).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from ohip_stream._exceptions import OhipError

if TYPE_CHECKING:
    from ohip_stream._checkpoints import Checkpoint
    from ohip_stream._models import Event
    from ohip_stream.sinks._checkpoints import SinkCheckpoints

__all__ = ["Batch", "DeliveryError", "DeliveryUnavailableError", "Sink"]


class DeliveryError(OhipError):
    """A sink could not deliver a batch; nothing of it is committed (it comes again after a
    restart). The message names the sink's destination and what to check, never a secret."""


class DeliveryUnavailableError(DeliveryError):
    """The destination is down or unreachable for now (a lost database connection, a broker
    that does not answer, an endpoint that keeps failing): a restart later can succeed."""

    retriable = True


@dataclass(frozen=True, slots=True)
class Batch:
    """Consecutive events of one stream, oldest first, and the checkpoint after the last one.

    ``checkpoint`` is what the stream's store holds once the batch is delivered: the last
    event's offset and unique id, with the stream's last completion time (``completed_at``)
    kept, so a transactional sink can write it beside the events.

    ``fence`` is set when the batch comes from a fleet's stream whose checkpoint the sink
    writes itself: ``await fence(conn)`` with the sink's connection, first in its transaction,
    checks that the fleet's lease still has the epoch the batch was read under (and holds the
    lease row against a new owner until the commit); it raises
    :class:`~ohip_stream.fleet.StaleEpochError` when it does not, and the transaction must
    then roll back.
    """

    stream_id: str
    chain_code: str
    events: Sequence[Event]
    checkpoint: Checkpoint
    fence: Callable[[Any], Awaitable[None]] | None = None


@runtime_checkable
class Sink(Protocol):
    """A destination for events, with one effect per event.

    ``checkpoints`` is the store to give the stream (``EventStream(checkpoints=sink.checkpoints)``):
    a :class:`SinkCheckpoints` over the sink's durable store.

    ``deliver(batch)`` returns only once every event of the batch has had its effect (a
    committed transaction, a broker's ack, a 2xx) and raises :class:`DeliveryError` when it
    could not; it must tolerate receiving, after a crash, events it already delivered (rule 2
    of this module). When ``checkpoints.sink_writes_offset`` is true, ``deliver`` also writes
    ``batch.checkpoint`` to the store, in the same transaction as the events; otherwise the
    runner writes it after ``deliver`` returns. Such a sink runs ``batch.fence`` (when set)
    first in that transaction.
    """

    @property
    def checkpoints(self) -> SinkCheckpoints:
        """The checkpoint store to give the stream."""
        ...

    async def deliver(self, batch: Batch) -> None:
        """Give every event of ``batch`` its one effect, or raise :class:`DeliveryError`."""
        ...
