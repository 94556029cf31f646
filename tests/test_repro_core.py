"""The five defects of the core redesign (issue 17), each as a test through the public API,
plus the ``uniqueEventId`` de-duplication through a whole stream.

Real sockets: the emulator, or a small hostile gateway (``helpers.hostile``) where a server
must misbehave (a drain that never ends).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from helpers.hostile import hostile_gateway, next_frame
from helpers.streams import emulator_auth
from ohip_stream import (
    AccessToken,
    EventStream,
    MemoryCheckpointStore,
    StaticToken,
    Timings,
    TransportError,
)
from ohip_stream.testing import Emulator

QUICK = {"complete_gap": 0.2, "backoff_min": 0.02, "backoff_max": 0.2, "drop_wait": 0.05}


def _stream(emu: Emulator, auth: Any, lock_dir: Path, **kwargs: Any) -> EventStream:
    return EventStream(
        gateway_url=emu.gateway_url,
        app_key=emu.app_key,
        chain_code=emu.chain_code,
        auth=auth,
        lock_dir=lock_dir,
        **kwargs,
    )


def _subscribed(emu: Emulator) -> list[Any]:
    return [c for c in emu.connections if "subscribe" in c.message_types]


async def _until(check: Any, seconds: float = 3.0) -> None:
    deadline = time.monotonic() + seconds
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("the condition did not hold in time")
        await asyncio.sleep(0.02)


# --- 1. no busy loop while a due rotation waits for the buffer to drain ------------------------


async def test_a_due_rotation_held_back_by_a_full_buffer_does_not_spin(tmp_path: Path) -> None:
    async with Emulator(complete_gap=0.2) as emu:
        # More than the buffer holds (it fills and the rotation is held back), but few enough
        # that what is still in flight fits in it when the block is left.
        await emu.publish(80)
        async with emulator_auth(emu) as auth:
            timings = Timings(rotate_after=0.2, **QUICK)
            stream = _stream(emu, auth, tmp_path, timings=timings, queue_size=50)
            async with stream:
                await anext(stream)  # then the handler is "busy": nothing more is taken
                await asyncio.sleep(0.4)  # the buffer fills and the rotation falls due
                wall0, cpu0 = time.monotonic(), time.process_time()
                await asyncio.sleep(1.0)
                cpu = time.process_time() - cpu0
                wall = time.monotonic() - wall0
                # The rotation is due and waits for the caller: no complete was sent meanwhile.
                assert stream.state.value == "completing"
                assert stream.stats.rotations == 0
                assert "complete" not in emu.connections[0].message_types
        assert cpu < 0.3, f"{cpu:.2f} s of CPU in {wall:.2f} s while the rotation waited"


# --- 2. and 3. a stop never subscribes again and is no rotation, no reconnect -----------------


async def test_request_stop_never_subscribes_again_and_counts_nothing(tmp_path: Path) -> None:
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(5)
        async with emulator_auth(emu) as auth:
            stream = _stream(emu, auth, tmp_path, timings=Timings(**QUICK))
            async with stream:
                seen = 0
                async for _ in stream:
                    seen += 1
                    if seen == 5:
                        stream.request_stop()
                # The application lingers in the block (cleanup after SIGTERM): the server's
                # close in answer to the stop's complete must not start a new subscription.
                await asyncio.sleep(0.8)
                connections = emu.connections
                assert len(connections) == 1
                assert [c for c in connections[1:] if "subscribe" in c.message_types] == []
                assert connections[0].message_types.count("subscribe") == 1
                assert "complete" in connections[0].message_types
                assert stream.stats.rotations == 0
                assert stream.stats.reconnects == {}
        assert stream.stats.rotations == 0
        assert stream.stats.reconnects == {}


async def test_one_rotation_counts_as_exactly_one(tmp_path: Path) -> None:
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(3)
        async with emulator_auth(emu) as auth:
            stream = _stream(emu, auth, tmp_path, timings=Timings(rotate_after=0.4, **QUICK))
            async with stream:

                async def consume() -> None:
                    async for _ in stream:
                        pass

                consumer = asyncio.create_task(consume())
                # Stop once the rotation's new connection subscribed (before it rotates again).
                await _until(lambda: len(_subscribed(emu)) >= 2)
                stream.request_stop()
                await asyncio.wait_for(consumer, 3)
                assert stream.stats.rotations == 1
                assert stream.stats.reconnects == {"rotation": 1}
        assert len(_subscribed(emu)) == 2
        assert emu.overlapping_subscriptions() == []


# --- 4. a static token past iat + rotate_after: no rotation storm ----------------------------


async def test_a_static_token_past_its_rotation_time_does_not_storm(tmp_path: Path) -> None:
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(5)
        token = await emu.issue_token()
        await asyncio.sleep(0.3)  # the token is now older than rotate_after
        timings = Timings(rotate_after=0.1, **QUICK)
        stream = _stream(emu, StaticToken(token), tmp_path, timings=timings)
        async with stream:

            async def consume() -> None:
                async for _ in stream:
                    pass

            with pytest.raises(asyncio.TimeoutError):
                await asyncio.wait_for(consume(), 1.5)
        assert len(emu.connections) <= 2
        assert stream.stats.rotations <= 1


# --- 5. cancellation: aclose() cancelled during a drain; KeyboardInterrupt in the run -----------


async def test_cancelling_aclose_during_a_drain_propagates_and_releases(tmp_path: Path) -> None:
    async def one_event_then_silence(ws: Any, _init: dict[str, Any]) -> None:
        await ws.send(next_frame("1"))  # then never answers complete, never closes

    async with hostile_gateway(one_event_then_silence) as gw:
        kwargs: dict[str, Any] = {
            "gateway_url": gw.url,
            "app_key": "k-123",
            "chain_code": "OHIPCN",
            "auth": StaticToken("t-123"),
            "lock_dir": tmp_path,
            "timings": Timings(drain_timeout=30, **QUICK),
        }
        stream = EventStream(**kwargs)
        await stream.__aenter__()
        event = await asyncio.wait_for(anext(stream), 3)
        assert event.metadata.offset == "1"
        closing = asyncio.create_task(stream.aclose())
        await asyncio.sleep(0.3)  # the stream sent complete and waits for the server's close
        assert not closing.done()
        assert any(isinstance(f, dict) and f.get("type") == "complete" for f in gw.frames)
        started = time.monotonic()
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert time.monotonic() - started < 2
        assert stream.state.value == "closed"
        # The guard was released: a new stream of the same id can be entered at once.
        again = EventStream(**kwargs)
        assert again.stream_id == stream.stream_id
        async with again:
            pass


_INTERRUPTED = """
import asyncio, sys
from ohip_stream import AccessToken, EventStream

class Interrupting:
    async def get_token(self) -> AccessToken:
        raise KeyboardInterrupt

    def invalidate(self, token: AccessToken) -> None:
        pass

async def main() -> None:
    async with EventStream(gateway_url="http://127.0.0.1:9", app_key="k-123",
                           chain_code="OHIPCN", auth=Interrupting(),
                           lock_dir=sys.argv[1]) as stream:
        await asyncio.wait_for(anext(stream), 10)

asyncio.run(main())
"""


def test_keyboard_interrupt_in_the_run_is_not_a_transport_error(tmp_path: Path) -> None:
    # KeyboardInterrupt escapes asyncio's loop; a subprocess keeps it away from pytest's.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _INTERRUPTED, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("KeyboardInterrupt"), done.stderr
    assert TransportError.__name__ not in done.stderr, done.stderr
    assert AccessToken.__name__  # the script's provider follows the public protocol


# --- uniqueEventId de-duplication through the stream ------------------------------------------


async def test_an_event_republished_under_a_new_offset_is_handed_out_once(tmp_path: Path) -> None:
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(3)
        store = MemoryCheckpointStore()
        async with emulator_auth(emu) as auth:
            stream = _stream(emu, auth, tmp_path, checkpoints=store, timings=Timings(**QUICK))
            async with stream:
                got: list[str] = []
                async for event in stream:
                    got.append(event.metadata.offset)
                    if len(got) == 3:
                        break
                # The gateway sends event 2 again under a new, higher offset (same unique id),
                # then a genuinely new event.
                again = dict(emu.events()[1])
                again["metadata"] = {**again["metadata"], "offset": "50"}
                sent = await emu.send_raw(
                    json.dumps(
                        {"id": "1", "type": "next", "payload": {"data": {"newEvent": again}}}
                    )
                )
                assert sent == 1
                await emu.publish(1)
                async for event in stream:
                    got.append(event.metadata.offset)
                    break
                assert got == ["1", "2", "3", "4"]
                assert stream.stats.duplicates == 1
                assert stream.stats.events == 4


async def test_leaving_the_block_with_a_full_buffer_returns_promptly(tmp_path: Path) -> None:
    # A stop with the socket paused (the caller fell behind): the drain must read on to the
    # server's close instead of refilling the buffer and pausing again behind the close frame.
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(300)
        async with emulator_auth(emu) as auth:
            stream = _stream(emu, auth, tmp_path, timings=Timings(**QUICK), queue_size=20)
            async with stream:
                await anext(stream)
                await asyncio.sleep(0.3)  # the buffer fills; reading pauses
                started = time.monotonic()
                await asyncio.wait_for(stream.aclose(), 3)  # what leaving the block does
            took = time.monotonic() - started
        assert emu.connections[0].closed_by == "server"
        assert took < 3, f"leaving the block took {took:.1f} s"
