"""Deliver events where they are needed, with one effect per event.

::

    from ohip_stream import EventStream
    from ohip_stream.sinks import PostgresSink, deliver

    async with PostgresSink("postgresql://app@db/opera") as sink:
        async with EventStream(..., checkpoints=sink.checkpoints) as stream:
            stream.install_signal_handlers()
            await deliver(stream, sink)

:class:`PostgresSink` writes the events and the stream's checkpoint in one transaction;
:class:`NatsSink` publishes to JetStream with ``uniqueEventId`` as the message id and commits
after the broker's acks; :class:`WebhookSink` POSTs signed requests with an idempotency key and
commits after the 2xx answers. :class:`Sink` is the protocol for your own.
"""

from ohip_stream.sinks._checkpoints import SinkCheckpoints
from ohip_stream.sinks._nats import NatsSink, subject_for
from ohip_stream.sinks._postgres import BatchCallback, Fence, PostgresSink
from ohip_stream.sinks._protocol import Batch, DeliveryError, DeliveryUnavailableError, Sink
from ohip_stream.sinks._runner import DeliveryStats, deliver
from ohip_stream.sinks._webhook import DeadLetter, WebhookSink, sign

__all__ = [
    "Batch",
    "BatchCallback",
    "DeadLetter",
    "DeliveryError",
    "DeliveryStats",
    "DeliveryUnavailableError",
    "Fence",
    "NatsSink",
    "PostgresSink",
    "Sink",
    "SinkCheckpoints",
    "WebhookSink",
    "deliver",
    "sign",
    "subject_for",
]
