"""WebhookSink against a real local HTTP server that fails 30 % of requests and sometimes
answers too late: every event delivered, duplicates only with the same idempotency key, the
checkpoint never ahead of a 2xx; signatures as Standard Webhooks specifies."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from helpers.streams import FAST_TIMINGS, emulator_auth
from ohip_stream import Checkpoint, ConfigurationError, Event, EventStream, MemoryCheckpointStore
from ohip_stream.sinks import Batch, DeliveryError, WebhookSink, deliver, sign
from ohip_stream.testing import Emulator, make_event

SECRET = "whsec_" + base64.b64encode(b"a key of twenty-four b..").decode()


def verify(secret: str, headers: Any, body: bytes) -> bool:
    """A receiver's check, written from the specification (not with the sink's code)."""
    header = headers.get("webhook-signature")
    if not header:
        return False
    key = base64.b64decode(secret.removeprefix("whsec_"))
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    expected = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    given = [s.split(",", 1)[1] for s in header.split() if s.startswith("v1,")]
    return any(hmac.compare_digest(expected, s) for s in given)


@dataclass
class Receiver:
    """A webhook endpoint: fails ``failure_rate`` of requests (500/502/503), answers
    ``slow_rate`` of them after ``slow`` seconds, refuses the offsets in ``refuse`` (400)."""

    failure_rate: float = 0.0
    slow_rate: float = 0.0
    slow: float = 0.0
    refuse: set[str] = field(default_factory=set)
    requests: list[dict[str, Any]] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)  # idempotency key -> 2xx answers
    rng: random.Random = field(default_factory=lambda: random.Random(3))
    lock: threading.Lock = field(default_factory=threading.Lock)
    url: str = ""

    def handle(self, handler: BaseHTTPRequestHandler) -> None:
        body = handler.rfile.read(int(handler.headers["Content-Length"]))
        event = json.loads(body)
        key = handler.headers["Idempotency-Key"]
        with self.lock:
            roll, slow_roll = self.rng.random(), self.rng.random()
        offset = event["metadata"]["offset"]
        if offset in self.refuse:
            status = 400
        elif roll < self.failure_rate:
            status = (500, 502, 503)[int(roll * 100) % 3]
        else:
            status = 204
        record = {
            "key": key,
            "id": handler.headers["webhook-id"],
            "uid": event["metadata"]["uniqueEventId"],
            "offset": offset,
            "signed": verify(SECRET, handler.headers, body),
            "status": status,
        }
        with self.lock:
            self.requests.append(record)
            if status == 204:
                self.accepted[key] = self.accepted.get(key, 0) + 1
        if slow_roll < self.slow_rate:
            time.sleep(self.slow)
        handler.send_response(status)
        handler.send_header("Content-Length", "0")
        handler.end_headers()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    endpoint = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            endpoint.handle(self)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    endpoint.url = f"http://127.0.0.1:{server.server_port}/hooks/opera"
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield endpoint
    server.shutdown()
    server.server_close()


class CheckedStore(MemoryCheckpointStore):
    """Fails the test if a checkpoint is written past an event without its 2xx."""

    def __init__(self) -> None:
        super().__init__()
        self.handled: set[int] = set()  # offsets with a 2xx seen by the sink, or dead-lettered
        self.offsets: list[int] = []

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        if checkpoint.offset is not None:
            upto = int(checkpoint.offset)
            missing = set(range(1, upto + 1)) - self.handled
            assert not missing, f"checkpoint {upto} written before a 2xx of {sorted(missing)}"
            self.offsets.append(upto)
        await super().save(stream_id, checkpoint)


def event(offset: int) -> Event:
    wire = make_event()
    wire["metadata"] = {"offset": str(offset), "uniqueEventId": f"uid-{offset}"}
    return Event.model_validate(wire)


def batch(*offsets: int) -> Batch:
    events = [event(o) for o in offsets]
    last = events[-1].metadata
    return Batch("s1", "CHAIN", events, Checkpoint(last.offset, last.unique_event_id))


async def test_every_event_arrives_through_failures_and_slow_answers(receiver: Receiver) -> None:
    receiver.failure_rate, receiver.slow_rate, receiver.slow = 0.3, 0.1, 0.3
    store = CheckedStore()
    count = 60

    def delivered(event: Event, attempts: int) -> None:
        store.handled.add(int(event.metadata.offset))
        if len(store.handled) >= count:
            stream.request_stop()

    sink = WebhookSink(
        receiver.url,
        checkpoints=store,
        secret=SECRET,
        on_delivered=delivered,
        max_attempts=30,
        first_wait=0.005,
        max_wait=0.02,
        timeout=0.15,  # a slow answer (0.3 s) times out: the event is sent again
    )
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(count)
        async with sink:
            stream = EventStream(
                gateway_url=emu.gateway_url,
                app_key=emu.app_key,
                chain_code=emu.chain_code,
                auth=emulator_auth(emu),
                checkpoints=sink.checkpoints,
                timings=FAST_TIMINGS,
            )
            async with stream:
                await asyncio.wait_for(deliver(stream, sink, batch_size=10), 60)
        ids = {e["metadata"]["uniqueEventId"] for e in emu.events()}

    requests = receiver.requests
    assert {r["uid"] for r in requests if r["status"] == 204} == ids  # every event arrived
    assert sum(r["status"] >= 500 for r in requests) > 10  # the failures happened...
    assert any(n > 1 for n in receiver.accepted.values())  # ...and slow 2xx came again
    # Every copy of an event carries its uniqueEventId as the key and the webhook-id.
    assert all(r["key"] == r["id"] == r["uid"] for r in requests)
    assert all(r["signed"] for r in requests)
    assert store.offsets
    assert store.offsets[-1] == count


async def test_a_refused_event_goes_to_the_dead_letter_callback(receiver: Receiver) -> None:
    receiver.refuse = {"2"}
    dead: list[tuple[str, str]] = []

    async def dead_letter(event: Event, reason: str) -> None:
        dead.append((event.metadata.offset, reason))

    store = MemoryCheckpointStore()
    sink = WebhookSink(receiver.url, checkpoints=store, on_dead_letter=dead_letter)
    async with sink, sink.checkpoints.delivering(batch(1, 2, 3)):
        await sink.deliver(batch(1, 2, 3))

    assert dead == [("2", "the endpoint refused it (HTTP 400)")]
    assert [r["offset"] for r in receiver.requests] == ["1", "2", "3"]  # a 400 is not retried
    saved = await store.load("s1")
    assert saved is not None
    assert saved.offset == "3"


async def test_without_a_dead_letter_callback_the_batch_fails_uncommitted(
    receiver: Receiver,
) -> None:
    receiver.failure_rate = 1.0
    store = MemoryCheckpointStore()
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    sink = WebhookSink(
        receiver.url, checkpoints=store, max_attempts=4, first_wait=1.0, max_wait=8.0, sleep=sleep
    )
    async with sink:
        with pytest.raises(DeliveryError, match="no 2xx after 4 attempts") as caught:
            async with sink.checkpoints.delivering(batch(1)):
                await sink.deliver(batch(1))

    assert caught.value.retriable
    assert len(receiver.requests) == 4
    assert len(sleeps) == 3
    assert all(0 <= s <= 8.0 for s in sleeps)
    assert await store.load("s1") is None


async def test_events_of_a_batch_may_go_concurrently(receiver: Receiver) -> None:
    store = MemoryCheckpointStore()
    async with WebhookSink(receiver.url, checkpoints=store, concurrency=4) as sink:
        await sink.deliver(batch(*range(1, 13)))
    assert sorted(int(r["offset"]) for r in receiver.requests) == list(range(1, 13))


def test_the_signature_is_the_standard_webhooks_test_vector() -> None:
    key = base64.b64decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
    got = sign(key, "msg_p5jXN8AQM9LWM0D4loKWxJek", 1614265330, b'{"test": 2432232314}')
    assert got == "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="


def test_each_attempt_is_signed_with_its_own_timestamp() -> None:
    now = [1000.0]
    sink = WebhookSink(
        "http://127.0.0.1:9/h",
        checkpoints=MemoryCheckpointStore(),
        secret=SECRET,
        clock=lambda: now[0],
    )
    first = sink.headers(event(1), b"{}")
    now[0] = 1007.9
    second = sink.headers(event(1), b"{}")
    assert (first["webhook-timestamp"], second["webhook-timestamp"]) == ("1000", "1007")
    assert first["webhook-id"] == second["webhook-id"] == second["idempotency-key"] == "uid-1"
    assert first["webhook-signature"] != second["webhook-signature"]
    assert verify(SECRET, second, b"{}")
    assert SECRET not in repr(sink)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"url": "ftp://x/h"}, "http"),
        ({"url": "not a url"}, "http"),
        ({"secret": "plain"}, "whsec_"),
        ({"secret": "whsec_!!!"}, "base64"),
        ({"secret": "whsec_" + base64.b64encode(b"short").decode()}, "16 bytes"),
        ({"max_attempts": 0}, "max_attempts"),
        ({"concurrency": 1.5}, "concurrency"),
        ({"timeout": 0}, "timeout"),
    ],
)
def test_bad_settings_are_refused(kwargs: dict[str, Any], message: str) -> None:
    settings: dict[str, Any] = {
        "url": "https://example.com/h",
        "checkpoints": MemoryCheckpointStore(),
    }
    settings.update(kwargs)
    with pytest.raises(ConfigurationError, match=message) as caught:
        WebhookSink(**settings)
    assert "!!!" not in str(caught.value)


def test_plain_http_to_another_host_is_warned_about(caplog: pytest.LogCaptureFixture) -> None:
    store = MemoryCheckpointStore()
    with caplog.at_level("WARNING", logger="ohip_stream.sinks"):
        WebhookSink("http://127.0.0.1:8080/h", checkpoints=store)
        assert not caplog.records
        WebhookSink("http://partner.example.com/h", checkpoints=store)
    assert "partner.example.com is plain http" in caplog.text
