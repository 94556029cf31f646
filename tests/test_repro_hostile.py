"""The hardening findings of issue 19, one test (or a few) per numbered item, through
``EventStream`` against the emulator or a hostile gateway of ``helpers.hostile``.

Item 14 (the token endpoint's deadline and body cap) is covered by ``tests/test_auth.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import time
import tracemalloc
import uuid
from pathlib import Path
from typing import Any

import pytest

from helpers.hostile import frame, hostile_gateway, http_answer, next_frame
from helpers.streams import emulator_auth
from ohip_stream import (
    Checkpoint,
    CheckpointError,
    ConfigurationError,
    ConnectionRejectedError,
    ConsumerAlreadyRunningError,
    EventStream,
    MemoryCheckpointStore,
    OhipError,
    ProtocolError,
    RateLimitedError,
    SQLiteCheckpointStore,
    StaticToken,
    Timings,
)
from ohip_stream._net import legacy_stream_id
from ohip_stream._resume import MAX_ID_CHARS
from ohip_stream.testing import Emulator

QUICK = {"complete_gap": 0.2, "backoff_min": 0.02, "backoff_max": 0.2, "drop_wait": 0.05}
TOKEN = "SECRET-TOKEN-XYZ-0123456789"
APP_KEY = "RAW-APP-KEY-0123456789"
KEY_HASH = hashlib.sha256(APP_KEY.encode()).hexdigest()
SECRETS = (TOKEN, APP_KEY, KEY_HASH)


def _hostile_stream(url: str, lock_dir: Path, **kwargs: Any) -> EventStream:
    kwargs.setdefault("timings", Timings(**QUICK))
    return EventStream(
        gateway_url=url,
        app_key=APP_KEY,
        chain_code="OHIPCN",
        auth=StaticToken(TOKEN),
        lock_dir=lock_dir,
        **kwargs,
    )


def _emu_stream(emu: Emulator, auth: Any, lock_dir: Path, **kwargs: Any) -> EventStream:
    kwargs.setdefault("timings", Timings(**QUICK))
    return EventStream(
        gateway_url=emu.gateway_url,
        app_key=emu.app_key,
        chain_code=emu.chain_code,
        auth=auth,
        lock_dir=lock_dir,
        **kwargs,
    )


async def _first_error(stream: EventStream, seconds: float = 3.0) -> BaseException:
    try:
        async with stream:
            await asyncio.wait_for(anext(stream), seconds)
    except OhipError as exc:
        return exc
    raise AssertionError("the stream raised no library error")


def _assert_no_secret(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- 1. no secret follows a redirect --------------------------------------------------------------


async def test_a_redirect_on_the_upgrade_is_not_followed_to_another_host(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def listen(_ws: Any, _init: dict[str, Any]) -> None:
        return None

    caplog.set_level(logging.DEBUG, logger="ohip_stream")
    async with hostile_gateway(listen) as other:
        target = other.url.replace("http://", "ws://") + "/x"
        async with hostile_gateway(
            process_request=http_answer(307, Location=target)
        ) as redirecting:
            stream = _hostile_stream(redirecting.url, tmp_path)
            async with stream:
                with pytest.raises(
                    ConnectionRejectedError, match="redirect is not followed"
                ) as info:
                    await asyncio.wait_for(anext(stream), 5)
    assert info.value.status == 307
    assert other.connections == 0
    assert other.frames == []
    _assert_no_secret(caplog.text)


async def test_a_same_origin_redirect_loop_is_one_refused_upgrade(
    tmp_path: Path,
) -> None:
    requests: list[str] = []
    loop_back = http_answer(307, Location="/self")

    def count(connection: Any, request: Any) -> Any:
        requests.append(request.path)
        return loop_back(connection, request)

    async with hostile_gateway(process_request=count) as gw:
        stream = EventStream(
            gateway_url=gw.url,
            app_key=f"redirect-loop-{uuid.uuid4()}",  # a budget of its own
            chain_code="OHIPCN",
            auth=StaticToken(TOKEN),
            lock_dir=tmp_path,
            timings=Timings(upgrade_budget=(4, 120), max_rate_limited_wait=0.5, **QUICK),
        )
        error = await _first_error(stream)
    # Not followed, and not retried: a redirect will not change by asking again.
    assert isinstance(error, ConnectionRejectedError)
    assert len(requests) == 1
    assert "/self" not in requests


# --- 2. the lock directory: no symlink, no FIFO, no shared world-writable default -----------------


async def test_a_world_writable_lock_dir_is_refused(tmp_path: Path) -> None:
    locks = tmp_path / "ohip-stream-locks"
    locks.mkdir()
    locks.chmod(0o777)
    stream = EventStream(
        gateway_url="https://gw.example.com",
        app_key="app-key-1",
        chain_code="OHIPCN",
        auth=StaticToken("tok-1"),
        lock_dir=locks,
    )
    with pytest.raises(ConfigurationError, match="lock"):
        async with stream:
            pass


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
async def test_a_planted_lock_file_is_never_written_through(tmp_path: Path, kind: str) -> None:
    locks = tmp_path / "locks"
    locks.mkdir(mode=0o700)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious\n")
    stream = EventStream(
        gateway_url="https://gw.example.com",
        app_key="app-key-1",
        chain_code="OHIPCN",
        auth=StaticToken("tok-1"),
        lock_dir=locks,
    )
    planted = locks / f"{stream.stream_id}.pid"
    if kind == "symlink":
        planted.symlink_to(victim)
    else:
        os.mkfifo(planted)

    async def enter() -> None:
        async with stream:
            pass

    # Refused or not, never through the link and never blocked on the FIFO.
    with contextlib.suppress(OhipError):
        await asyncio.wait_for(enter(), 3)
    assert victim.read_text() == "precious\n"


# --- 3. secrets echoed by the server never enter an exception -------------------------------------


def _echo(init: dict[str, Any]) -> str:
    return f"bad input near {init['payload']['Authorization']} {APP_KEY} {KEY_HASH}"


async def test_a_secret_echoed_in_a_close_reason_is_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ohip_stream")

    async def close_with_echo(ws: Any, init: dict[str, Any]) -> None:
        await ws.close(4400, _echo(init)[:120])

    async with hostile_gateway(close_with_echo) as gw:
        error = await _first_error(_hostile_stream(gw.url, tmp_path))
    _assert_no_secret(f"{error!s} {error!r} {vars(error)!r}")
    _assert_no_secret(caplog.text)


async def test_a_secret_echoed_in_an_error_frame_is_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ohip_stream")

    async def error_with_echo(ws: Any, init: dict[str, Any]) -> None:
        await ws.send(frame({"id": "1", "type": "error", "payload": [{"message": _echo(init)}]}))

    async with hostile_gateway(error_with_echo) as gw:
        error = await _first_error(_hostile_stream(gw.url, tmp_path))
    _assert_no_secret(f"{error!s} {error!r} {vars(error)!r}")
    _assert_no_secret(caplog.text)


async def test_a_secret_echoed_in_an_http_400_body_is_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ohip_stream")
    body = f"rejected: Bearer {TOKEN} key {APP_KEY} hash {KEY_HASH}".encode()
    async with hostile_gateway(process_request=http_answer(400, body)) as gw:
        error = await _first_error(_hostile_stream(gw.url, tmp_path, first_contact_tries=1))
    _assert_no_secret(f"{error!s} {error!r} {vars(error)!r}")
    _assert_no_secret(caplog.text)


async def test_a_secret_in_a_malformed_frame_is_redacted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    async def malformed(ws: Any, init: dict[str, Any]) -> None:
        await ws.send('{"id":"1","type":"next","payload": ' + json.dumps(_echo(init)) + " oops")

    caplog.set_level(logging.DEBUG, logger="ohip_stream")
    async with hostile_gateway(malformed) as gw:
        error = await _first_error(_hostile_stream(gw.url, tmp_path), seconds=5)
    assert isinstance(error, ProtocolError)
    _assert_no_secret(f"{error!s} {error!r} {vars(error)!r}")
    _assert_no_secret(caplog.text)


# --- 4. a proxy password in errors and logs -------------------------------------------------------


def test_a_proxy_password_is_not_in_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError) as caught:
        EventStream(
            gateway_url="https://gw.example.com",
            app_key="app-key-1",
            chain_code="OHIPCN",
            auth=StaticToken("tok-1"),
            proxy="socks5://user:PROXY-PASSWORD-1@proxy.example:1080",
        )
    assert "PROXY-PASSWORD-1" not in f"{caught.value!s} {caught.value!r}"


async def test_a_proxy_password_is_not_in_a_transport_error_or_the_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="ohip_stream")
    stream = EventStream(
        gateway_url="https://gw.example.com",
        app_key="app-key-1",
        chain_code="OHIPCN",
        auth=StaticToken("tok-1"),
        proxy=f"http://user:PROXY-PASSWORD-2@127.0.0.1:{_free_port()}",
        lock_dir=tmp_path,
        first_contact_tries=1,
        timings=Timings(**QUICK),
    )
    error = await _first_error(stream)
    assert "PROXY-PASSWORD-2" not in f"{error!s} {error!r}"
    assert "PROXY-PASSWORD-2" not in caplog.text


# --- 5. offsets no subscription can send back -----------------------------------------------------


@pytest.mark.parametrize("bad", ["123456789012345678901", "\u0661\u0662", "\u00b2"])
async def test_an_unsendable_offset_is_dead_lettered_never_checkpointed(
    tmp_path: Path, bad: str
) -> None:
    async def odd_offsets(ws: Any, _init: dict[str, Any]) -> None:
        await ws.send(next_frame("1"))
        await ws.send(next_frame(bad, uid="odd"))
        await ws.send(next_frame("3"))

    dead: list[str] = []
    store = MemoryCheckpointStore()
    async with hostile_gateway(odd_offsets) as gw:
        stream = _hostile_stream(
            gw.url,
            tmp_path,
            checkpoints=store,
            commit_every=1,
            on_invalid=lambda raw, _error: dead.append(raw),
            timings=Timings(drain_timeout=0.3, **QUICK),
        )
        got: list[str] = []
        async with stream:
            async for event in stream:
                got.append(event.metadata.offset)
                if event.metadata.offset == "3":
                    break
            await asyncio.sleep(0.3)  # a reconnect loop would show here
            assert gw.connections == 1
        checkpoint = await store.load(stream.stream_id)
    assert got == ["1", "3"]
    assert len(dead) == 1
    assert bad in json.loads(dead[0])["payload"]["data"]["newEvent"]["metadata"]["offset"]
    assert stream.stats.invalid == 1
    assert checkpoint is not None
    assert checkpoint.offset == "3"


@pytest.mark.parametrize("bad", ["123456789012345678901", "\u0661\u0662", "-1", "1e3"])
def test_an_unsendable_offset_is_refused_as_a_start(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="offset"):
        EventStream(
            gateway_url="https://gw.example.com",
            app_key="app-key-1",
            chain_code="OHIPCN",
            auth=StaticToken("tok-1"),
            offset=bad,
        )


# --- 6. an offset reset is logged, counted and delivered ------------------------------------------


def _resetting_gateway() -> Any:
    connections = [0]

    async def resets(ws: Any, _init: dict[str, Any]) -> None:
        connections[0] += 1
        if connections[0] == 1:
            await ws.send(next_frame("100"))
            await ws.close(1001, "maintenance")
        else:
            for offset in ("1", "2", "3"):
                await ws.send(next_frame(offset, uid=f"new-{offset}"))

    return resets


async def test_an_offset_reset_is_logged_counted_and_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ohip_stream")
    async with hostile_gateway(_resetting_gateway()) as gw:
        stream = _hostile_stream(gw.url, tmp_path, timings=Timings(drain_timeout=0.3, **QUICK))
        got: list[str] = []
        async with stream:
            async for event in stream:
                got.append(event.metadata.offset)
                if len(got) == 4:
                    break
    assert got == ["100", "1", "2", "3"]
    assert stream.stats.resets >= 1
    assert stream.stats.duplicates == 0
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert any("reset" in r.getMessage() for r in warnings)


async def test_an_offset_reset_can_stop_the_stream(tmp_path: Path) -> None:
    async with hostile_gateway(_resetting_gateway()) as gw:
        stream = _hostile_stream(
            gw.url,
            tmp_path,
            on_offset_reset="raise",
            timings=Timings(drain_timeout=0.3, **QUICK),
        )
        got: list[str] = []

        async def consume() -> None:
            async with stream:
                async for event in stream:
                    got.append(event.metadata.offset)

        with pytest.raises(ProtocolError, match="reset"):
            await consume()
    assert got == ["100"]


# --- 7. a dead-letter callback that raises: the frame comes again ---------------------------------


async def test_a_failing_dead_letter_callback_is_called_again(tmp_path: Path) -> None:
    calls: list[str] = []

    def dead_letter(_raw: str, error: Exception) -> None:
        calls.append(str(getattr(error, "offset", None)))
        if len(calls) == 1:
            raise RuntimeError("dead-letter store down")

    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(3)
        await emu.publish_invalid(1)  # offset 4
        await emu.publish(3)
        store = MemoryCheckpointStore()
        async with emulator_auth(emu) as auth:
            stream = _emu_stream(
                emu, auth, tmp_path, checkpoints=store, on_invalid=dead_letter, commit_every=1
            )
            got: list[str] = []

            async def until_the_callback_fails() -> None:
                async for event in stream:
                    got.append(event.metadata.offset)

            async with stream:
                with pytest.raises(RuntimeError, match="dead-letter store down"):
                    await until_the_callback_fails()
                held = await store.load(stream.stream_id)
                assert held is None or int(held.offset or 0) < 4
                async for event in stream:
                    got.append(event.metadata.offset)
                    if event.metadata.offset == "7":
                        break
            final = await store.load(stream.stream_id)
    assert calls == ["4", "4"]
    assert got == ["1", "2", "3", "5", "6", "7"]
    assert final is not None
    assert final.offset == "7"


# --- 8. a failing checkpoint store ----------------------------------------------------------------


class _FlakyStore(MemoryCheckpointStore):
    """Fails its first ``save`` with an I/O error, then works."""

    def __init__(self) -> None:
        super().__init__()
        self.failures = 0

    async def save(self, stream_id: str, checkpoint: Any) -> None:
        if self.failures == 0:
            self.failures += 1
            raise OSError(5, "transient I/O error")
        await super().save(stream_id, checkpoint)


async def test_a_failed_save_during_a_rotation_does_not_end_the_stream(tmp_path: Path) -> None:
    async with Emulator(complete_gap=0.2) as emu:
        store = _FlakyStore()
        async with emulator_auth(emu) as auth:
            stream = _emu_stream(
                emu,
                auth,
                tmp_path,
                checkpoints=store,
                commit_interval=100,
                timings=Timings(rotate_after=0.3, **QUICK),
            )
            got: list[str] = []
            async with stream:
                await emu.publish(1)
                async for event in stream:
                    got.append(event.metadata.offset)
                    if stream.stats.rotations >= 2:
                        break
                    await emu.publish(1)
                    await asyncio.sleep(0.05)
            checkpoint = await store.load(stream.stream_id)
    assert store.failures == 1
    assert checkpoint is not None
    assert checkpoint.offset == got[-1]


@pytest.mark.parametrize("busy_timeout", [5.0, 0.2])
async def test_a_locked_sqlite_database_never_blocks_the_loop(
    tmp_path: Path, busy_timeout: float
) -> None:
    # Locked for 1 s: within the store's busy timeout (the commit waits in its thread), or past
    # it (CheckpointUnavailableError: retried with backoff while handing out stops).
    path = tmp_path / "locked.db"
    lag = [0.0]

    async def ticker() -> None:
        while True:
            before = time.monotonic()
            await asyncio.sleep(0.02)
            lag[0] = max(lag[0], time.monotonic() - before - 0.02)

    ticking = asyncio.create_task(ticker())
    other: sqlite3.Connection | None = None
    try:
        async with Emulator(complete_gap=0.2) as emu:
            await emu.publish(300)
            async with (
                emulator_auth(emu) as auth,
                SQLiteCheckpointStore(path, busy_timeout=busy_timeout) as store,
            ):
                stream = _emu_stream(emu, auth, tmp_path, checkpoints=store, commit_every=20)
                count = 0
                locked = False
                handed_while_locked = 0

                def release(connection: sqlite3.Connection) -> None:
                    nonlocal locked
                    connection.rollback()
                    locked = False

                async with stream:
                    async for event in stream:
                        count += 1
                        if locked:
                            handed_while_locked = int(event.metadata.offset)
                        if event.metadata.offset == "30":
                            # Another program holds a write lock for a second.
                            other = sqlite3.connect(path, isolation_level=None)
                            other.execute("BEGIN EXCLUSIVE")
                            locked = True
                            asyncio.get_running_loop().call_later(1.0, release, other)
                        if count == 300:
                            break
                checkpoint = await store.load(stream.stream_id)
    finally:
        ticking.cancel()
        if other is not None:
            other.close()
    assert count == 300
    # The last commit before the lock was at offset 20 or 40 (batches of 20): the stream hands
    # out at most one batch past it while the commits wait (not the 270 events on hand).
    assert 30 < handed_while_locked <= 40 + 20 + 1, handed_while_locked
    assert lag[0] < 0.5, f"the event loop was blocked for {lag[0]:.2f} s"
    assert checkpoint is not None
    assert checkpoint.offset == "300"


async def test_a_deleted_checkpoint_file_raises_a_checkpoint_error(tmp_path: Path) -> None:
    folder = tmp_path / "state"
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(200)
        async with emulator_auth(emu) as auth, SQLiteCheckpointStore(folder / "o.db") as store:
            stream = _emu_stream(emu, auth, tmp_path, checkpoints=store, commit_every=5)

            async def consume() -> None:
                async with stream:
                    async for event in stream:
                        if event.metadata.offset == "10":
                            shutil.rmtree(folder)
                        if event.metadata.offset == "200":
                            break

            with pytest.raises(CheckpointError):
                await consume()


# --- 10. a server complete without a close --------------------------------------------------------


async def test_a_complete_without_close_is_closed_after_the_drain_timeout(tmp_path: Path) -> None:
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(2)
        async with emulator_auth(emu) as auth:
            stream = _emu_stream(emu, auth, tmp_path, timings=Timings(drain_timeout=0.3, **QUICK))
            got: list[str] = []
            async with stream:
                async for event in stream:
                    got.append(event.metadata.offset)
                    if len(got) == 2:
                        assert await emu.complete_without_close() == 1
                        await emu.publish(2)
                    if len(got) == 4:
                        break
        first = emu.connections[0]
    assert got == ["1", "2", "3", "4"]
    assert first.closed_by == "client"
    assert first.close_code == 1000
    assert len([c for c in emu.connections if "subscribe" in c.message_types]) == 2


# --- 11. and 12. one stream, one guard, one id ----------------------------------------------------


@pytest.mark.parametrize(("first", "second"), [("app_key", "stream"), ("stream", "app_key")])
async def test_mixed_guard_scopes_exclude_each_other(
    tmp_path: Path, first: str, second: str
) -> None:
    common: dict[str, Any] = {
        "gateway_url": "https://gw.example.com",
        "app_key": "app-key-1",
        "chain_code": "OHIPCN",
        "auth": StaticToken("tok-1"),
        "lock_dir": tmp_path,
    }
    async with EventStream(guard_scope=first, **common):  # type: ignore[arg-type]
        with pytest.raises(ConsumerAlreadyRunningError):
            async with EventStream(guard_scope=second, **common):  # type: ignore[arg-type]
                pass


def test_localhost_and_127_0_0_1_give_one_stream_id() -> None:
    def stream_id(url: str) -> str:
        return EventStream(
            gateway_url=url, app_key="app-key-1", chain_code="OHIPCN", auth=StaticToken("t")
        ).stream_id

    assert stream_id("http://localhost:8080") == stream_id("http://127.0.0.1:8080")
    assert stream_id("https://GW.example.com:443/") == stream_id("https://gw.example.com")


async def test_a_checkpoint_under_the_old_localhost_id_is_found(tmp_path: Path) -> None:
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(5)
        url = emu.gateway_url.replace("127.0.0.1", "localhost")
        old_id = legacy_stream_id(url, emu.chain_code, emu.app_key)
        assert old_id is not None
        store = MemoryCheckpointStore()
        done = emu.events()[2]["metadata"]
        await store.save(old_id, Checkpoint(offset="3", unique_event_id=done["uniqueEventId"]))
        async with emulator_auth(emu) as auth:
            stream = EventStream(
                gateway_url=url,
                app_key=emu.app_key,
                chain_code=emu.chain_code,
                auth=auth,
                checkpoints=store,
                lock_dir=tmp_path,
                timings=Timings(**QUICK),
            )
            assert stream.stream_id != old_id
            async with stream:
                first = await asyncio.wait_for(anext(stream), 5)
        moved = await store.load(stream.stream_id)
    # Resumed after the checkpoint stored under the old id (not from the start).
    assert first.metadata.offset == "4"
    assert moved is not None


# --- 13. Retry-After: 1e12 ------------------------------------------------------------------------


async def test_a_huge_retry_after_past_max_rate_limited_wait_raises(tmp_path: Path) -> None:
    answer = http_answer(429, b"slow down", Retry_After="1e12")
    async with hostile_gateway(process_request=answer) as gw:
        stream = _hostile_stream(
            gw.url, tmp_path, timings=Timings(max_rate_limited_wait=5, **QUICK)
        )
        error = await _first_error(stream)
    assert isinstance(error, RateLimitedError)


async def test_a_huge_retry_after_is_capped(tmp_path: Path) -> None:
    answer = http_answer(429, b"slow down", Retry_After="1e12")
    async with hostile_gateway(process_request=answer) as gw:
        stream = _hostile_stream(gw.url, tmp_path)
        async with stream:
            taking = asyncio.ensure_future(anext(stream))
            deadline = time.monotonic() + 3
            while stream.waiting is None:
                if time.monotonic() > deadline:
                    break
                await asyncio.sleep(0.02)
            waiting = stream.waiting
            stream.request_stop()
            taking.cancel()
            await asyncio.gather(taking, return_exceptions=True)
    assert waiting is not None
    assert waiting.until - time.time() <= 3600 + 1


# --- 15. unique ids of 100 KB ---------------------------------------------------------------------


async def test_huge_unique_ids_are_bounded_in_memory(tmp_path: Path) -> None:
    count = 200
    size = 100_000

    async def huge_ids(ws: Any, _init: dict[str, Any]) -> None:
        for offset in range(1, count + 1):
            await ws.send(next_frame(str(offset), uid=f"{offset:06d}" + "x" * size))
        # The first one again under a new offset: still a duplicate.
        await ws.send(next_frame(str(count + 1), uid="000001" + "x" * size))
        await ws.send(next_frame(str(count + 2)))

    assert size > MAX_ID_CHARS
    async with hostile_gateway(huge_ids) as gw:
        stream = _hostile_stream(gw.url, tmp_path, timings=Timings(drain_timeout=0.3, **QUICK))
        async with stream:
            tracemalloc.start()
            try:
                base = tracemalloc.get_traced_memory()[0]
                async for event in stream:
                    if event.metadata.offset == str(count + 2):
                        break
                held = tracemalloc.get_traced_memory()[0] - base
            finally:
                tracemalloc.stop()
    assert stream.stats.events == count + 1
    assert stream.stats.duplicates == 1
    # Kept as they came, the ids alone would hold count * size = 20 MB.
    assert held < 5_000_000, f"{held / 1e6:.1f} MB still held"


# --- 16. configuration errors of other types ------------------------------------------------------


def test_a_missing_gateway_url_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="gateway_url"):
        EventStream(
            gateway_url=None,  # type: ignore[arg-type]
            app_key="app-key-1",
            chain_code="OHIPCN",
            auth=StaticToken("tok-1"),
        )


def test_a_bad_ohip_timings_is_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.chdir(tmp_path)  # no .env file
    monkeypatch.setenv("OHIP_GATEWAY_URL", "https://gw.example.com")
    monkeypatch.setenv("OHIP_APP_KEY", "app-key-1")
    monkeypatch.setenv("OHIP_CHAIN_CODE", "OHIPCN")
    monkeypatch.setenv("OHIP_CLIENT_ID", "client")
    monkeypatch.setenv("OHIP_CLIENT_SECRET", "secret-1")
    monkeypatch.setenv("OHIP_ENTERPRISE_ID", "ENT1")
    monkeypatch.setenv("OHIP_TIMINGS", "x")
    with pytest.raises(ConfigurationError, match="OHIP_TIMINGS"):
        EventStream.from_env()


# --- 5. and 16. through the command line ---------------------------------------------------------


@pytest.fixture
def cli_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """A configured environment (nothing listens at the gateway) and a private lock dir."""
    pytest.importorskip("typer")
    for name in list(os.environ):
        if name.startswith("OHIP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    values = {
        "GATEWAY_URL": f"http://127.0.0.1:{_free_port()}",
        "APP_KEY": "app-key-1",
        "CHAIN_CODE": "OHIPCN",
        "CLIENT_ID": "client",
        "CLIENT_SECRET": "secret-1",
        "ENTERPRISE_ID": "ENT1",
        "CHECKPOINT_DB": str(tmp_path / "offsets.db"),
        "LOCK_DIR": str(tmp_path / "locks"),
    }
    for name, value in values.items():
        monkeypatch.setenv(f"OHIP_{name}", value)
    return tmp_path / "offsets.db"


@pytest.mark.parametrize("bad", ["123456789012345678901", "\u0661\u0662", "\u00b2"])
@pytest.mark.parametrize("command", [["checkpoint", "set"], ["replay", "--from-offset"]])
def test_the_cli_refuses_an_unsendable_offset(
    cli_env: Path, capsys: pytest.CaptureFixture[str], command: list[str], bad: str
) -> None:
    from ohip_stream.cli import main

    code = main([*command, bad])
    err = capsys.readouterr().err
    assert code != 0
    assert "offset" in err
    assert "Traceback" not in err
    if cli_env.exists():
        assert bad not in cli_env.read_bytes().decode("utf-8", "replace")


def test_the_cli_names_a_bad_ohip_timings(
    cli_env: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from ohip_stream.cli import main

    monkeypatch.setenv("OHIP_TIMINGS", "x")
    code = main(["checkpoint", "show"])
    err = capsys.readouterr().err
    assert code != 0
    assert "OHIP_TIMINGS" in err
    assert "unexpected" not in err.lower()
    assert "Traceback" not in err
