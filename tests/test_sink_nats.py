"""NatsSink against the real NATS JetStream: message id = uniqueEventId (a replay is dropped by
the broker), subjects from the template, the checkpoint written after the acks."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from helpers.services import nats_url_or_skip
from ohip_stream import Checkpoint, ConfigurationError, Event, MemoryCheckpointStore
from ohip_stream.sinks import (
    Batch,
    DeliveryError,
    DeliveryUnavailableError,
    NatsSink,
    deliver,
    subject_for,
)
from ohip_stream.testing import make_event


def event(offset: int, name: str = "CHECK IN", hotel: str | None = "HOTEL.1") -> Event:
    wire = make_event(event_name=name, hotel_id=hotel)
    wire["metadata"] = {"offset": str(offset), "uniqueEventId": f"uid-{offset}"}
    return Event.model_validate(wire)


def batch(*offsets: int) -> Batch:
    events = [event(o) for o in offsets]
    last = events[-1].metadata
    return Batch("stream1", "CHAIN1", events, Checkpoint(last.offset, last.unique_event_id))


@pytest.fixture
async def jetstream() -> AsyncIterator[tuple[str, str]]:
    """The broker's URL and a fresh stream name (deleted afterwards, when it was created)."""
    url = nats_url_or_skip()
    import nats
    from nats.js.errors import NotFoundError

    name = f"SINK{uuid.uuid4().hex[:10].upper()}"
    yield url, name
    nc = await nats.connect(url)
    try:
        await nc.jetstream().delete_stream(name)
    except NotFoundError:
        pass
    finally:
        await nc.close()


async def read_all(url: str, stream: str) -> list[Any]:
    import nats

    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        total = (await js.stream_info(stream)).state.messages
        sub = await js.subscribe(f"{stream.lower()}.>", ordered_consumer=True)
        messages = [await sub.next_msg(timeout=5) for _ in range(total)]
        await sub.unsubscribe()
        return messages
    finally:
        await nc.close()


async def test_events_are_published_once_with_their_unique_id(
    jetstream: tuple[str, str],
) -> None:
    url, name = jetstream
    subject = name.lower() + ".{chain}.{hotel}.{event}"
    sink = NatsSink(
        url,
        subject=subject,
        checkpoints=MemoryCheckpointStore(),
        stream=name,
        create_stream=True,
    )
    async with sink:
        await sink.deliver(batch(1, 2, 3))
        await sink.deliver(batch(2, 3, 4))  # a resume after a crash replays 2 and 3

    messages = await read_all(url, name)
    assert [m.headers["Nats-Msg-Id"] for m in messages] == ["uid-1", "uid-2", "uid-3", "uid-4"]
    # Dots and spaces are not subject tokens: "HOTEL.1" and "CHECK IN" become tokens.
    assert {m.subject for m in messages} == {f"{name.lower()}.CHAIN1.HOTEL_1.CHECK_IN"}
    assert Event.model_validate_json(messages[0].data).metadata.offset == "1"


async def test_the_checkpoint_moves_after_the_acks(jetstream: tuple[str, str]) -> None:
    url, name = jetstream
    store = MemoryCheckpointStore()
    sink = NatsSink(
        url, subject=name.lower() + ".{module}", checkpoints=store, stream=name, create_stream=True
    )
    async with sink, sink.checkpoints.delivering(batch(1, 2)):
        await sink.deliver(batch(1, 2))
    saved = await store.load("stream1")
    assert saved is not None
    assert saved.offset == "2"


async def test_a_subject_no_stream_holds_is_a_delivery_error(jetstream: tuple[str, str]) -> None:
    url, name = jetstream
    sink = NatsSink(
        url, subject="nowhere-" + name + ".{event}", checkpoints=MemoryCheckpointStore()
    )
    async with sink:
        with pytest.raises(DeliveryError, match="no JetStream stream holds") as caught:
            await sink.deliver(batch(1))
    assert not isinstance(caught.value, DeliveryUnavailableError)


async def test_a_publish_the_broker_refuses_fails_the_batch_for_good(
    jetstream: tuple[str, str],
) -> None:
    url, name = jetstream
    template = name.lower() + ".{event}"
    async with NatsSink(url, subject=template, stream=name, create_stream=True) as sink:
        await sink.deliver(batch(1))
    # The subjects are the stream's, but the publishes expect another stream: refused.
    wrong = NatsSink(url, subject=template, stream=name + "X", checkpoints=MemoryCheckpointStore())
    async with wrong:
        with pytest.raises(DeliveryError, match="refused") as caught:
            await wrong.deliver(batch(2, 3))
    assert not isinstance(caught.value, DeliveryUnavailableError)
    assert len(await read_all(url, name)) == 1


async def test_an_unreachable_broker_is_a_retriable_delivery_error() -> None:
    sink = NatsSink(
        "nats://user:s3cretpass@127.0.0.1:9",
        checkpoints=MemoryCheckpointStore(),
        reconnect_attempts=1,
    )
    with pytest.raises(DeliveryError) as caught:
        await sink.deliver(batch(1))
    await sink.aclose()
    assert caught.value.retriable
    assert "s3cretpass" not in str(caught.value)
    assert "s3cretpass" not in repr(sink)


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("ohip.{nope}", "uses nope"),
        ("ohip..{event}", "not a NATS subject"),
        ("ohip.*.{event}", "not a NATS subject"),
        ("ohip.{event", "not a valid template"),
        ("", "template"),
    ],
)
def test_a_bad_subject_template_is_refused(template: str, message: str) -> None:
    with pytest.raises(ConfigurationError, match=message):
        NatsSink(subject=template, checkpoints=MemoryCheckpointStore())


def test_create_stream_needs_its_name() -> None:
    with pytest.raises(ConfigurationError, match="stream="):
        NatsSink(checkpoints=MemoryCheckpointStore(), create_stream=True)


def test_subject_values_become_tokens() -> None:
    got = subject_for("o.{chain}.{hotel}.{module}.{event}", event(1, hotel=None), "CH 1")
    assert got == "o.CH_1._.RESERVATION.CHECK_IN"


async def test_deliver_checks_its_arguments_before_connecting() -> None:
    sink = NatsSink(checkpoints=MemoryCheckpointStore())
    with pytest.raises(ConfigurationError, match="batch_size"):
        await deliver(None, sink, batch_size=0)  # type: ignore[arg-type]
