"""``deliver(stream, sink)``: the loop from an :class:`~ohip_stream.EventStream` into a sink.

One task reads the stream into a bounded queue (at most one batch ahead); the caller's task
takes what is waiting, up to ``batch_size`` events, and delivers it. Nothing waits for a batch
to fill: when the stream is quiet each event goes out at once, and under load the queue fills
while the previous batch is delivered, so batches grow by themselves (no timer, no latency
added). The checkpoint moves only after the sink confirmed a batch (see
:class:`~ohip_stream.sinks.SinkCheckpoints`).
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ohip_stream._checkpoints import Checkpoint
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._logging import get_logger
from ohip_stream.sinks._protocol import Batch, Sink

if TYPE_CHECKING:
    from ohip_stream._models import Event
    from ohip_stream._stream import EventStream
    from ohip_stream.sinks._checkpoints import SinkCheckpoints

__all__ = ["DeliveryStats", "deliver"]

_log = get_logger("ohip_stream.sinks")


@dataclass
class DeliveryStats:
    """What :func:`deliver` did: events and batches delivered, the last confirmed offset."""

    events: int = 0
    batches: int = 0
    last_offset: str | None = None


class _End:
    """The stream ended (``error`` is why, when it failed)."""

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


async def _pump(
    stream: EventStream,
    queue: asyncio.Queue[Event | _End],
    checkpoints: SinkCheckpoints,
    stream_id: str,
) -> None:
    try:
        async for event in stream:
            await checkpoints.arrived(stream_id, event.metadata.offset)
            await queue.put(event)
    except asyncio.CancelledError:
        raise
    except BaseException as exc:
        await queue.put(_End(exc))
        return
    await queue.put(_End(None))


def _take(
    queue: asyncio.Queue[Event | _End], first: Event, limit: int
) -> tuple[list[Event], _End | None]:
    events = [first]
    while len(events) < limit:
        try:
            item = queue.get_nowait()
        except asyncio.QueueEmpty:
            return events, None
        if isinstance(item, _End):
            return events, item
        events.append(item)
    return events, None


def _check(sink: object, batch_size: object) -> None:
    if not isinstance(sink, Sink):
        raise ConfigurationError(
            "deliver() needs a sink (an object with a checkpoints store and an async "
            f"deliver(batch)), got {type(sink).__name__}"
        )
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigurationError(
            f"batch_size must be a whole number of at least 1, got {batch_size!r}"
        )


async def deliver(stream: EventStream, sink: Sink, *, batch_size: int = 100) -> DeliveryStats:
    """Deliver the stream's events into ``sink`` until the stream ends.

    The stream must have been made with ``checkpoints=sink.checkpoints`` (else its own
    checkpoint could pass events still in a batch) and be entered (``async with``). The loop
    ends when the stream does (``stream.request_stop()``, a signal handler); then the caller
    leaves the stream's block as usual. A :class:`~ohip_stream.sinks.DeliveryError` or a
    stream's error ends it too and is raised, the events of the failed batch not committed.

    Returns what was delivered.
    """
    _check(sink, batch_size)
    stats = DeliveryStats()
    snapshot = stream.snapshot()
    stream_id, chain_code = snapshot.stream_id, snapshot.chain_code
    checkpoints = sink.checkpoints
    queue: asyncio.Queue[Event | _End] = asyncio.Queue(maxsize=batch_size)
    pump = asyncio.ensure_future(_pump(stream, queue, checkpoints, stream_id))
    end: _End | None = None
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _End):
                end = item
                break
            events, end = _take(queue, item, batch_size)
            last = events[-1].metadata
            checkpoint = checkpoints.after(
                stream_id,
                Checkpoint(
                    offset=last.offset,
                    unique_event_id=last.unique_event_id,
                    gateway_host=snapshot.gateway_host,
                    chain_code=chain_code,
                ),
            )
            batch = Batch(stream_id, chain_code, events, checkpoint)
            async with checkpoints.delivering(batch):
                await sink.deliver(batch)
            stats.events += len(events)
            stats.batches += 1
            stats.last_offset = last.offset
            if end is not None:
                break
    finally:
        if not pump.done():
            pump.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await pump
    if end is not None and end.error is not None:
        raise end.error
    _log.info(
        "stream %s: delivered %d events in %d batches to %r",
        stream_id,
        stats.events,
        stats.batches,
        sink,
    )
    return stats
