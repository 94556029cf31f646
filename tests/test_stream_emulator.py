"""EventStream against the emulator over real sockets, timings compressed (issue: EventStream)."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import random
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from helpers.streams import FAST_TIMINGS
from helpers.streams import emulator_auth as auth_for
from ohip_stream import (
    AuthenticationError,
    CheckpointError,
    ConnectionRejectedError,
    ConsumerAlreadyRunningError,
    Event,
    EventStream,
    EventValidationError,
    MemoryCheckpointStore,
    SQLiteCheckpointStore,
    StaticToken,
    StreamState,
    SubscriptionError,
)
from ohip_stream._protocol import hash_app_key
from ohip_stream._stream import stream_id_for
from ohip_stream.testing import Emulator

GAP = FAST_TIMINGS.complete_gap
TIMINGS = FAST_TIMINGS.model_copy(update={"rotate_after": 3000})


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(complete_gap=GAP, server_ping_interval=0.2) as emulator:
        yield emulator


def stream_for(emu: Emulator, tmp_path: Path, **overrides: Any) -> EventStream:
    values: dict[str, Any] = {
        "gateway_url": emu.gateway_url,
        "app_key": emu.app_key,
        "chain_code": emu.chain_code,
        "auth": auth_for(emu),
        "timings": TIMINGS,
        "lock_dir": tmp_path / "locks",
        "checkpoints": MemoryCheckpointStore(),
    }
    values.update(overrides)
    stream = EventStream(**values)
    if "auth" not in overrides:
        stream._adopt(values["auth"])  # closed with the stream
    return stream


async def take(stream: EventStream, count: int, timeout: float = 30.0) -> list[Event]:
    events: list[Event] = []

    async def run() -> None:
        async for event in stream:
            events.append(event)
            if len(events) >= count:
                break

    await asyncio.wait_for(run(), timeout)
    return events


def _streaming(emu: Emulator) -> bool:
    """Whether a connection is open and its subscription was not completed by the client."""
    return any(r.open and not r.complete_before_close for r in emu.connections)


def offsets(events: list[Event]) -> list[int]:
    return [int(e.metadata.offset) for e in events]


async def test_every_offset_once_in_order_across_rotations_and_drops(
    emu: Emulator, tmp_path: Path
) -> None:
    total = 10_000
    await emu.publish(count=total)
    rng = random.Random(7)
    drop_at = set(rng.sample(range(500, total - 500), 5))
    timings = TIMINGS.model_copy(update={"rotate_after": 0.25})
    seen: list[int] = []
    pending_drops = 0
    drops = 0
    async with stream_for(emu, tmp_path, timings=timings, queue_size=200) as stream:
        async for event in stream:
            seen.append(int(event.metadata.offset))
            if len(seen) in drop_at:
                pending_drops += 1
            # A drop only counts when a connection was live and not completing (a drop in a
            # rotation's gap or drain ends that rotation instead: no 1006 to count).
            if pending_drops and _streaming(emu) and await emu.drop():
                pending_drops -= 1
                drops += 1
            if len(seen) % 1000 == 0:
                # A consumer that pauses now and then lets the rotation deadline pass mid-stream.
                await asyncio.sleep(0.3)
            if len(seen) >= total:
                break
    assert seen == list(range(1, total + 1))
    assert drops == 5
    assert stream.stats.events == total
    assert stream.stats.rotations >= 3
    assert stream.stats.reconnects.get("1006", 0) >= 1
    assert stream.stats.reconnects["rotation"] == stream.stats.rotations
    assert stream.stats.gaps == 0
    records = emu.connections
    # Every rotation completed first and let the server close.
    planned = [r for r in records if r.complete_before_close]
    # A drop can land between our complete and the server reading it: at most one per drop.
    assert len(planned) >= stream.stats.rotations - drops
    assert all(r.closed_by in ("server", "abort") for r in planned)


async def hold_stream(emu: Emulator) -> websockets.asyncio.client.ClientConnection:
    """Another consumer of the stream: a plain client sending Oracle's documented messages."""
    token = await emu.issue_token()
    url = emu.gateway_url.replace("http", "ws") + "/subscriptions?key=" + hash_app_key(emu.app_key)
    holder = await connect(url, subprotocols=[websockets.Subprotocol("graphql-transport-ws")])
    init = {"Authorization": f"Bearer {token}", "x-app-key": emu.app_key}
    await holder.send(json.dumps({"type": "connection_init", "payload": init}))
    assert json.loads(await holder.recv())["type"] == "connection_ack"
    query = (
        f'subscription {{ newEvent(input: {{chainCode: "{emu.chain_code}"}}) '
        "{ metadata { offset uniqueEventId } primaryKey } }"
    )
    payload = {"query": query, "variables": {}}
    await holder.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
    return holder


async def release(holder: websockets.asyncio.client.ClientConnection, after: float) -> None:
    await asyncio.sleep(after)
    await holder.send(json.dumps({"id": "1", "type": "complete"}))
    async for _ in holder:  # drain until the server closes
        pass


async def test_lockout_4409_is_waited_out_then_resumes(emu: Emulator, tmp_path: Path) -> None:
    await emu.publish(count=5)
    holder = await hold_stream(emu)
    releaser = asyncio.create_task(release(holder, 0.5))
    # The holder consumed the stream's position: replay from the start explicitly.
    async with stream_for(emu, tmp_path, offset="1") as stream:
        events = await take(stream, 5)
    await releaser
    assert offsets(events) == [1, 2, 3, 4, 5]
    assert stream.stats.lockouts >= 1
    assert stream.stats.reconnects.get("4409", 0) >= 1
    assert any(r.close_code == 4409 for r in emu.connections)


async def test_one_4401_refreshes_the_token_once(emu: Emulator, tmp_path: Path) -> None:
    await emu.publish(count=3)
    auth = auth_for(emu)
    async with stream_for(emu, tmp_path, auth=auth) as stream:
        first = await take(stream, 3)
        await emu.expire_tokens()  # the live connection is closed with 4401
        await emu.publish(count=3)
        more = await take(stream, 3)
    await auth.aclose()
    assert offsets(first + more) == [1, 2, 3, 4, 5, 6]
    assert stream.stats.reconnects.get("4401") == 1
    assert any(r.close_code == 4401 for r in emu.connections)


async def test_two_4401_in_a_row_is_an_authentication_error(emu: Emulator, tmp_path: Path) -> None:
    async with stream_for(emu, tmp_path, auth=StaticToken("not-a-token-of-this-gateway")) as s:
        with pytest.raises(AuthenticationError, match=r"4401|two"):
            await take(s, 1)
    assert [r.close_code for r in emu.connections] == [4401, 4401]


async def test_http_400_is_fatal_at_once(emu: Emulator, tmp_path: Path) -> None:
    stream = stream_for(emu, tmp_path, app_key="11111111-2222-4333-8444-555555555555")
    async with stream:
        with pytest.raises(ConnectionRejectedError, match="hash"):
            await take(stream, 1)
    assert [u.status for u in emu.upgrades] == [400]


async def test_4400_is_a_clear_subscription_error(emu: Emulator, tmp_path: Path) -> None:
    await emu.publish(count=1)
    async with stream_for(emu, tmp_path) as stream:
        await take(stream, 1)
        await emu.close_with(4400, "Invalid value for chainCode")
        with pytest.raises(SubscriptionError, match="chainCode"):
            await take(stream, 1)


async def test_pings_complete_and_gap_are_kept(emu: Emulator, tmp_path: Path) -> None:
    timings = TIMINGS.model_copy(update={"rotate_after": 0.3})
    await emu.publish(count=3)
    async with stream_for(emu, tmp_path, timings=timings) as stream:
        await take(stream, 3)
        await asyncio.sleep(1.2)  # a few rotations of an idle stream
        await emu.publish(count=2)
        await take(stream, 2)
    records = [r for r in emu.connections if r.subscribed_at is not None]
    assert len(records) >= 3
    for record in records:
        pings = [t for t, kind in record.client_messages if kind == "ping"]
        end = record.closed_at or record.opened_at
        # A ping at least every ping_interval (scaled), with slack for the scheduler.
        marks = [record.opened_at, *pings, end]
        assert max(b - a for a, b in itertools.pairwise(marks)) < 0.1 * 5
        assert record.complete_before_close, record
        assert record.closed_by == "server"
    for before, after in itertools.pairwise(records):
        assert before.completed_at is not None
        assert after.subscribed_at is not None
        assert after.subscribed_at - before.completed_at >= GAP


async def test_gap_holds_across_a_restart_in_a_new_process(emu: Emulator, tmp_path: Path) -> None:
    await emu.publish(count=4)
    db = tmp_path / "offsets.db"
    script = tmp_path / "consume.py"
    script.write_text(
        "import asyncio, sys\n"
        "from ohip_stream import EventStream, OAuthClientCredentials, SQLiteCheckpointStore,"
        " Timings\n"
        "async def main():\n"
        "    gw, key, cid, secret, ent, db, n, locks = sys.argv[1:]\n"
        "    auth = OAuthClientCredentials(gateway_url=gw, client_id=cid, client_secret=secret,"
        " app_key=key, enterprise_id=ent)\n"
        f"    timings = Timings(complete_gap={GAP}, ping_interval=0.1, liveness_timeout=2,"
        " lockout=0.3, backoff_min=0.02, backoff_max=0.2)\n"
        "    store = SQLiteCheckpointStore(db)\n"
        "    async with auth, EventStream(gateway_url=gw, app_key=key, chain_code='OHIPCN',"
        " auth=auth, checkpoints=store, timings=timings, lock_dir=locks) as s:\n"
        "        got = 0\n"
        "        async for e in s:\n"
        "            print(e.metadata.offset, flush=True)\n"
        "            got += 1\n"
        "            if got >= int(n): break\n"
        "    store.close()\n"
        "asyncio.run(main())\n"
    )
    args = [
        emu.gateway_url,
        emu.app_key,
        emu.client_id,
        emu.client_secret,
        emu.enterprise_id,
        str(db),
    ]

    def run(n: int) -> list[str]:
        done = subprocess.run(
            [sys.executable, str(script), *args, str(n), str(tmp_path / "locks")],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout.split()

    assert await asyncio.to_thread(run, 2) == ["1", "2"]
    assert await asyncio.to_thread(run, 2) == ["3", "4"]
    records = [r for r in emu.connections if r.subscribed_at is not None]
    assert len(records) == 2
    assert records[0].complete_before_close
    assert records[0].completed_at is not None
    assert records[1].subscribed_at is not None
    assert records[1].subscribed_at - records[0].completed_at >= GAP
    assert not emu.subscribe_rejections


async def test_second_consumer_refused_in_process_and_thread(emu: Emulator, tmp_path: Path) -> None:
    async with stream_for(emu, tmp_path):
        with pytest.raises(ConsumerAlreadyRunningError):
            async with stream_for(emu, tmp_path):
                pass
        errors: list[BaseException] = []

        def in_thread() -> None:
            async def enter() -> None:
                async with stream_for(emu, tmp_path):
                    pass

            try:
                asyncio.run(enter())
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=in_thread)
        thread.start()
        thread.join()
        assert len(errors) == 1
        assert isinstance(errors[0], ConsumerAlreadyRunningError)
    assert emu.upgrades == []  # refused before any network I/O


async def test_slow_consumer_keeps_the_queue_bounded(emu: Emulator, tmp_path: Path) -> None:
    await emu.publish(count=3000)
    high = 0
    async with stream_for(emu, tmp_path, queue_size=50) as stream:
        count = 0
        assert stream._iteration is not None
        buffer = stream._iteration.buffer
        async for _ in stream:
            high = max(high, len(buffer.items))
            count += 1
            if count % 100 == 0:
                await asyncio.sleep(0.02)
            if count >= 3000:
                break
    # At most queue_size frames, plus what one socket read already held when reading paused.
    frame = min(len(json.dumps(event)) for event in emu.events())
    assert high <= 50 + 256 * 1024 // frame
    assert stream.stats.reconnects == {}


async def test_break_commits_the_last_event_and_an_exception_does_not(
    emu: Emulator, tmp_path: Path
) -> None:
    await emu.publish(count=10)
    store = MemoryCheckpointStore()
    async with stream_for(emu, tmp_path, checkpoints=store) as stream:
        async for event in stream:
            if event.metadata.offset == "3":
                break
    saved = await store.load(stream.stream_id)
    assert saved is not None
    assert saved.offset == "3"

    async def fail_on_first() -> None:
        async with stream_for(emu, tmp_path, checkpoints=store) as failing:
            async for event in failing:
                assert event.metadata.offset == "4"
                raise RuntimeError("the handler failed")

    with pytest.raises(RuntimeError):
        await fail_on_first()
    saved = await store.load(stream.stream_id)
    assert saved is not None
    assert saved.offset == "3"  # event 4 was not processed: it comes again

    async with stream_for(emu, tmp_path, checkpoints=store) as stream:
        again = await take(stream, 2)
        assert offsets(again) == [4, 5]
        # Iterating again after a break continues where it stopped.
        more = await take(stream, 1)
        assert offsets(more) == [6]


async def test_commits_come_in_batches_by_count_and_by_time(emu: Emulator, tmp_path: Path) -> None:
    await emu.publish(count=12)
    store = MemoryCheckpointStore()
    saved: list[str | None] = []
    save = store.save

    async def recording_save(stream_id: str, checkpoint: Any) -> None:
        saved.append(checkpoint.offset)
        await save(stream_id, checkpoint)

    store.save = recording_save  # type: ignore[method-assign]
    async with stream_for(
        emu, tmp_path, checkpoints=store, commit_every=5, commit_interval=0.3
    ) as stream:
        assert offsets(await take(stream, 11)) == list(range(1, 12))
        # By count: a commit when the 5th and the 10th events are processed, not before.
        assert saved == ["5", "10"]
        # Event 11 counts as processed once event 12 is asked for; by time, it is committed
        # within commit_interval even though no further event is asked for.
        event = await take(stream, 1)
        assert offsets(event) == [12]
        await asyncio.sleep(0.6)
        assert saved[-1] == "11"
        # Asking for the next event on a quiet stream commits event 12 (its time has come).
        waiting = asyncio.create_task(take(stream, 1, timeout=5))
        await asyncio.sleep(0.6)
        assert saved[-1] == "12"
        await emu.publish(count=1)
        assert offsets(await waiting) == [13]
    assert saved[-1] == "13"  # leaving the block commits the last event


def _pongs(emu: Emulator) -> int:
    return sum(1 for c in emu.connections for _, kind in c.client_messages if kind == "pong")


async def test_a_busy_caller_still_answers_server_pings(emu: Emulator, tmp_path: Path) -> None:
    # While the caller is busy with an event, the connection's reader (the transport's
    # data_received) still answers the server's pings (every 0.2 s here) at once.
    await emu.publish(count=3)
    seen: list[str] = []
    async with stream_for(emu, tmp_path) as stream:
        async for event in stream:
            seen.append(event.metadata.offset)
            if len(seen) == 1:
                before = _pongs(emu)
                await asyncio.sleep(1.0)  # busy with the event
                assert _pongs(emu) - before >= 3
            if len(seen) == 3:
                break
    assert seen == ["1", "2", "3"]


async def test_request_stop_ends_a_caller_waiting_on_a_quiet_stream(
    emu: Emulator, tmp_path: Path
) -> None:
    await emu.publish(count=1)
    store = MemoryCheckpointStore()
    loop = asyncio.get_running_loop()
    seen: list[str] = []

    async def consume() -> None:
        async with stream_for(emu, tmp_path, checkpoints=store) as stream:
            async for event in stream:
                seen.append(event.metadata.offset)
                # The caller then waits on the socket for an event that does not come.
                loop.call_later(0.3, stream.request_stop)

    await asyncio.wait_for(consume(), 10)
    assert seen == ["1"]
    saved = await store.load(stream_id_for(emu.gateway_url, emu.chain_code, emu.app_key))
    assert saved is not None
    assert saved.offset == "1"
    record = emu.connections[-1]
    assert record.complete_before_close  # completed, then closed by the server


async def test_invalid_events_raise_skip_or_reach_the_callback(
    emu: Emulator, tmp_path: Path
) -> None:
    await emu.publish(count=1)
    bad = await emu.publish_invalid(count=1)
    await emu.publish(count=1)

    async with stream_for(emu, tmp_path) as stream:
        first = await take(stream, 1)
        with pytest.raises(EventValidationError) as caught:
            await take(stream, 1)
        assert caught.value.offset == bad[0]
        assert bad[0] in caught.value.raw
        rest = await take(stream, 1)  # the stream stays usable
    assert offsets(first + rest) == [1, 3]
    assert stream.stats.invalid == 1

    dead: list[tuple[str, Exception]] = []

    async def dead_letter(raw: str, error: Exception) -> None:
        dead.append((raw, error))

    async with stream_for(emu, tmp_path, on_invalid=dead_letter, offset="1") as stream:
        assert offsets(await take(stream, 2)) == [1, 3]
    assert len(dead) == 1
    assert bad[0] in dead[0][0]
    assert isinstance(dead[0][1], EventValidationError)

    async with stream_for(emu, tmp_path, on_invalid="skip", offset="1") as stream:
        assert offsets(await take(stream, 2)) == [1, 3]


async def test_an_invalid_event_after_a_valid_one_is_dead_lettered_once_while_the_caller_reads(
    emu: Emulator, tmp_path: Path
) -> None:
    # The caller reads the socket itself while it asks for events: a valid event, then an
    # invalid one in the next frame. The invalid one goes to the dead-letter path once; the valid
    # one before it is not handed out again.
    dead: list[str] = []
    valid: list[str] = []
    invalid: list[str] = []

    def dead_letter(raw: str, error: Exception) -> None:
        dead.append(raw)

    async with stream_for(emu, tmp_path, on_invalid=dead_letter) as stream:
        valid += await emu.publish(count=1)
        got = await take(stream, 1)
        for _ in range(10):
            valid += await emu.publish(count=1)
            invalid += await emu.publish_invalid(count=1)
            valid += await emu.publish(count=1)
            got += await take(stream, 2)
    assert offsets(got) == [int(o) for o in valid]
    assert len(dead) == len(invalid) == 10
    for offset, raw in zip(invalid, dead, strict=True):
        assert json.loads(raw)["payload"]["data"]["newEvent"]["metadata"]["offset"] == offset
    assert stream.stats.invalid == 10
    assert stream.stats.duplicates == 0


async def test_resume_from_checkpoint_drops_the_replayed_event(
    emu: Emulator, tmp_path: Path
) -> None:
    await emu.publish(count=6)
    store = SQLiteCheckpointStore(tmp_path / "cp.db")
    async with stream_for(emu, tmp_path, checkpoints=store) as stream:
        assert offsets(await take(stream, 3)) == [1, 2, 3]
    async with stream_for(emu, tmp_path, checkpoints=store) as stream:
        assert offsets(await take(stream, 3)) == [4, 5, 6]
    assert stream.stats.duplicates == 1  # offset 3, replayed inclusively
    assert emu.connections[-1].subscribe_inputs[-1]["offset"] == "3"
    store.close()


async def test_explicit_offset_overrides_the_checkpoint(emu: Emulator, tmp_path: Path) -> None:
    await emu.publish(count=7)
    store = MemoryCheckpointStore()
    async with stream_for(emu, tmp_path, checkpoints=store) as stream:
        assert offsets(await take(stream, 5)) == [1, 2, 3, 4, 5]
    async with stream_for(emu, tmp_path, checkpoints=store, offset="2") as stream:
        assert offsets(await take(stream, 3)) == [2, 3, 4]


async def test_explicit_offset_and_highest(emu: Emulator, tmp_path: Path) -> None:
    await emu.publish(count=5)
    async with stream_for(emu, tmp_path, offset="4") as stream:
        assert offsets(await take(stream, 2)) == [4, 5]
    async with stream_for(emu, tmp_path, start_at_highest=True) as stream:
        await emu.publish(count=1)
        got = await take(stream, 1)
        assert int(got[0].metadata.offset) >= 5


async def test_lost_events_are_counted_as_a_gap(tmp_path: Path) -> None:
    async with Emulator(complete_gap=GAP, first_offset=100) as emu:
        await emu.publish(count=2)
        async with stream_for(emu, tmp_path, offset="50") as stream:
            assert offsets(await take(stream, 1)) == [100]
        assert stream.stats.gaps == 49


async def test_standby_waits_for_the_active_consumer(emu: Emulator, tmp_path: Path) -> None:
    await emu.publish(count=2)
    holder = await hold_stream(emu)  # the active consumer, on another host
    async with stream_for(emu, tmp_path, standby=True, offset="1") as standby:
        waiting = asyncio.create_task(take(standby, 2, timeout=20))
        await asyncio.sleep(0.6)
        assert not waiting.done()  # the stream is held by the active consumer
        await release(holder, 0)
        got = await waiting
    assert offsets(got) == [1, 2]
    assert not any(r.close_code == 4409 for r in emu.connections)


async def test_a_frame_too_large_at_the_same_offset_three_times_is_fatal(
    emu: Emulator, tmp_path: Path
) -> None:
    from ohip_stream import MessageTooLargeError
    from ohip_stream.testing import make_detail, make_event

    big = make_event(detail=[make_detail("COMMENTS", "x" * 8000, "")])
    await emu.publish(count=1)
    await emu.publish(events=[big])
    async with stream_for(emu, tmp_path, max_message_size=4096, offset="1") as stream:
        assert offsets(await take(stream, 1)) == [1]
        with pytest.raises(MessageTooLargeError, match="max_message_size"):
            await take(stream, 1)
    assert stream.stats.reconnects.get("1009") == 2


async def test_anext_and_async_for_share_one_iteration(emu: Emulator, tmp_path: Path) -> None:
    # The how-to's loop: anext(stream), catching EventValidationError and going on; then an
    # async for picks up where anext stopped, and the last event it handed out is committed.
    await emu.publish(count=2)
    bad = await emu.publish_invalid(count=1)
    await emu.publish(count=3)
    store = MemoryCheckpointStore()
    got: list[int] = []
    errors: list[str | None] = []
    async with stream_for(emu, tmp_path, checkpoints=store) as stream:
        while len(got) + len(errors) < 4:
            try:
                event = await asyncio.wait_for(anext(stream), 10)
            except EventValidationError as error:
                errors.append(error.offset)
                continue
            got.append(int(event.metadata.offset))
        got.extend(offsets(await take(stream, 2)))
    assert got == [1, 2, 4, 5, 6]
    assert errors == bad
    saved = await store.load(stream.stream_id)
    assert saved is not None
    assert saved.offset == "6"


def _next_frame(offset: int) -> str:
    event = {
        "metadata": {"offset": str(offset), "uniqueEventId": f"u{offset}"},
        "moduleName": "RESERVATION",
        "eventName": "CHECK IN",
        "primaryKey": "42",
        "timestamp": "28-APR-24 06.18.59.028027 AM",
        "detail": [],
    }
    return json.dumps({"id": "1", "type": "next", "payload": {"data": {"newEvent": event}}})


def _stream_on(port: int, tmp_path: Path, liveness_timeout: float) -> EventStream:
    return EventStream(
        gateway_url=f"http://127.0.0.1:{port}",
        app_key="key-1",
        chain_code="OHIPCN",
        auth=StaticToken("token"),
        timings=TIMINGS.model_copy(update={"liveness_timeout": liveness_timeout}),
        lock_dir=tmp_path,
        checkpoints=MemoryCheckpointStore(),
    )


@contextlib.asynccontextmanager
async def _scripted_gateway(
    script: Callable[[ServerConnection, int], Awaitable[None]],
) -> AsyncIterator[int]:
    """A bare graphql-transport-ws server that never answers a ping: each connection is
    acknowledged and subscribed, then ``script(ws, n)`` runs (``n`` counts connections from 1)
    until the client closes. Yields the port."""

    async def handler(ws: ServerConnection) -> None:
        nonlocal connections
        connections += 1
        await ws.recv()  # connection_init
        await ws.send('{"type":"connection_ack"}')
        await ws.recv()  # subscribe
        await script(ws, connections)
        # Read (and ignore) what the client sends until it goes: a server that stops reading
        # would not notice the client's close until its own close timeout.
        async for _ in ws:
            pass

    connections = 0
    async with serve(
        handler, "127.0.0.1", 0, subprotocols=[websockets.Subprotocol("graphql-transport-ws")]
    ) as server:
        yield server.sockets[0].getsockname()[1]


async def test_a_silent_server_trips_liveness_and_the_stream_reconnects(tmp_path: Path) -> None:
    """No pong and no event within liveness_timeout: the link is dead, reconnect (protocol §4)."""
    connections: list[int] = []

    async def silent_once(ws: ServerConnection, n: int) -> None:
        connections.append(n)
        if n > 1:  # the first connection gets nothing, until the client gives up
            await ws.send(_next_frame(1))

    async with _scripted_gateway(silent_once) as port:
        stream = _stream_on(port, tmp_path, liveness_timeout=0.5)
        async with stream:
            got = await take(stream, 1, timeout=10)
    assert offsets(got) == [1]
    assert connections == [1, 2]
    assert stream.stats.reconnects == {"liveness": 1}


@pytest.mark.parametrize("busy", [0.0, 1.0], ids=["caller-reads", "busy-caller"])
async def test_events_keep_a_connection_alive_while_pongs_are_held_back(
    tmp_path: Path, busy: float
) -> None:
    """A server that answers no ping but keeps sending events is alive (protocol §4), for three
    times liveness_timeout: read by the caller itself, event after event, or queued by the
    stream's task while the caller is busy with the first event for twice liveness_timeout."""
    connections: list[int] = []

    async def steady(ws: ServerConnection, n: int) -> None:
        connections.append(n)
        for offset in range(1, 31):
            await ws.send(_next_frame(offset))
            await asyncio.sleep(0.05)

    async with _scripted_gateway(steady) as port:
        stream = _stream_on(port, tmp_path, liveness_timeout=0.5)
        async with stream:
            got = await take(stream, 1, timeout=10)
            await asyncio.sleep(busy)
            got += await take(stream, 29, timeout=10)
    assert offsets(got) == list(range(1, 31))
    assert connections == [1]
    assert stream.stats.reconnects == {}


async def test_cancelling_the_consumer_still_completes_and_releases(
    emu: Emulator, tmp_path: Path
) -> None:
    await emu.publish(count=2)
    store = MemoryCheckpointStore()

    async def consume() -> None:
        async with stream_for(emu, tmp_path, checkpoints=store) as stream:
            async for _ in stream:
                await asyncio.sleep(30)  # the handler is slow; the task gets cancelled

    task = asyncio.create_task(consume())
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 10)
    records = [r for r in emu.connections if r.subscribed_at is not None]
    assert records[-1].complete_before_close
    # The guard was released: the stream can be consumed again, and event 1 comes again
    # (it was being processed when the task was cancelled, so it was not committed).
    async with stream_for(emu, tmp_path, checkpoints=store, offset="1") as stream:
        assert offsets(await take(stream, 1)) == [1]
    saved = await store.load(stream.stream_id)
    assert saved is not None


async def test_a_cached_token_past_its_rotation_deadline_is_replaced_before_connecting(
    emu: Emulator, tmp_path: Path
) -> None:
    import time

    from ohip_stream import AccessToken

    class Provider:
        enterprise_id = None
        margin = 0.0

        def __init__(self, stale: str, fresh: str) -> None:
            now = time.time()
            self.tokens = [
                AccessToken(stale, now - 4000, now + 100),  # issued 66 minutes ago
                AccessToken(fresh, now, now + 3600),
            ]
            self.invalidated: list[AccessToken] = []

        async def get_token(self) -> AccessToken:
            return self.tokens[0]

        def invalidate(self, token: AccessToken) -> None:
            self.invalidated.append(token)
            if token is self.tokens[0] and len(self.tokens) > 1:
                self.tokens.pop(0)

        async def aclose(self) -> None:
            pass

    await emu.publish(count=1)
    provider = Provider(await emu.issue_token(), await emu.issue_token())
    async with stream_for(emu, tmp_path, auth=provider) as stream:
        assert offsets(await take(stream, 1)) == [1]
    assert len(provider.invalidated) == 1
    assert len(emu.connections) == 1  # no connection that would rotate at once


async def test_a_snapshot_says_where_the_stream_stands(emu: Emulator, tmp_path: Path) -> None:
    await emu.publish(count=3)
    async with stream_for(emu, tmp_path, commit_every=1) as stream:
        before = stream.snapshot()
        assert before.state is StreamState.CONNECTING
        assert before.checkpoint_offset is None
        count = 0
        async for _ in stream:
            count += 1
            if count == 3:
                break
        await stream.commit()
        snapshot = stream.snapshot()
    assert snapshot.state is StreamState.LIVE
    assert snapshot.stats.events == 3
    assert snapshot.checkpoint_offset == "3"
    assert snapshot.checkpoint_updated_at is not None
    assert snapshot.last_event_timestamp == emu.events()[2]["timestamp"]
    assert snapshot.token_expires_at is not None
    assert snapshot.upgrades_used >= 1
    assert snapshot.chain_code == emu.chain_code
    assert stream.snapshot().state is StreamState.CLOSED
    snapshot.stats.events = 99  # a copy: the stream's own counters are untouched
    assert stream.stats.events == 3


async def test_each_commit_batch_is_one_process_duration_for_telemetry(
    emu: Emulator, tmp_path: Path
) -> None:
    from ohip_stream import Telemetry

    await emu.publish(count=4)
    telemetry = Telemetry()
    batches: list[tuple[int, float]] = []
    async with stream_for(emu, tmp_path, commit_every=2) as stream:
        telemetry.watch(stream)
        remove = stream.add_commit_listener(lambda count, seconds: batches.append((count, seconds)))
        count = 0
        async for _ in stream:
            count += 1
            if count == 4:
                break
        remove()
    assert [count for count, _ in batches][:1] == [2]
    assert all(seconds >= 0 for _, seconds in batches)
    watched = telemetry._watched[stream.stream_id]
    assert watched.process_count >= 2  # the batch of 2 events, then the rest at the block's end


class _RefusingStore(MemoryCheckpointStore):
    """Writes until told to refuse, then refuses for good (a fleet's stale epoch)."""

    def __init__(self) -> None:
        super().__init__()
        self.refuse = False

    async def save(self, stream_id: str, checkpoint: Any) -> None:
        if self.refuse:
            raise CheckpointError("the lease's epoch moved: this worker may not write")
        await super().save(stream_id, checkpoint)


async def test_a_refused_timed_commit_hands_out_nothing_more(emu: Emulator, tmp_path: Path) -> None:
    # A permanent store error in a commit nobody awaits (the commit interval's) ends the stream
    # before the next event, not after the frames already buffered: they were never processed.
    await emu.publish(count=30)
    store = _RefusingStore()
    stream = stream_for(emu, tmp_path, checkpoints=store, commit_interval=0.05)

    async def consume() -> None:
        async with stream:
            # the first events: one commit is awaited (the interval passed while connecting),
            # the event after it is processed and waits for the next, timed, commit
            assert offsets(await take(stream, 3)) == [1, 2, 3]
            store.refuse = True
            await asyncio.sleep(0.3)  # the interval passes; the timed commit is refused
            with pytest.raises(CheckpointError, match="epoch moved"):
                await take(stream, 1)

    with pytest.raises(CheckpointError):  # leaving the block cannot commit either
        await consume()
    assert stream.stats.events == 3
