"""The buffered message reader against a real websockets server over TCP: the same messages in
the same order as ``recv()``, fragmented messages left to ``recv()``, and flow control kept."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from types import SimpleNamespace

from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from ohip_stream._connection import buffered_message_reader

Message = str | bytes | Sequence[str]


@contextlib.asynccontextmanager
async def _server(messages: list[Message]) -> AsyncIterator[str]:
    """Sends ``messages`` (a list of strings is one fragmented message), then waits."""

    async def handler(ws: ServerConnection) -> None:
        for message in messages:
            await ws.send(message)
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        yield f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}"


async def _read(ws: ClientConnection, count: int) -> tuple[list[bytes], int]:
    """Reads count messages as the stream does; also returns how many the reader gave."""
    next_buffered = buffered_message_reader(ws)
    got: list[bytes] = []
    buffered = 0
    while len(got) < count:
        message = next_buffered()
        if message is None:
            message = await ws.recv(False)
            await asyncio.sleep(0.01)  # let frames pile up in the buffer
        else:
            buffered += 1
        assert type(message) is bytes
        got.append(message)
    return got, buffered


def _as_bytes(message: Message) -> bytes:
    if isinstance(message, bytes):
        return message
    if isinstance(message, str):
        return message.encode()
    return "".join(message).encode()


async def test_the_reader_gives_what_recv_would_in_the_same_order() -> None:
    messages: list[Message] = []
    for i in range(300):
        if i % 50 == 7:
            messages.append([f"fragment-{i}-a ", f"fragment-{i}-b ", "é"])  # left to recv()
        elif i % 50 == 8:
            messages.append(f"binary-{i}".encode())
        else:
            messages.append(f'{{"n": {i}, "text": "{"x" * (i % 40)}é"}}')
    async with _server(messages) as url, connect(url, max_queue=8) as ws:
        got, buffered = await asyncio.wait_for(_read(ws, len(messages)), 20)
    assert got == [_as_bytes(m) for m in messages]
    # websockets' buffer has the shape the reader knows (if a websockets upgrade changes it,
    # the stream still works, through recv(), only slower): most messages skip recv()
    assert buffered > len(messages) // 2


async def test_reading_resumes_when_the_reader_drains_the_buffer() -> None:
    """max_queue 4 pauses reading above 4 frames: the reader must resume it, or the next
    recv() waits forever on an empty buffer while the socket is paused."""
    messages: list[Message] = [f"message {i} " + "y" * 500 for i in range(2000)]
    async with _server(messages) as url, connect(url, max_queue=4) as ws:
        got, buffered = await asyncio.wait_for(_read(ws, len(messages)), 20)
    assert got == [_as_bytes(m) for m in messages]
    assert buffered > 0


async def test_the_reader_leaves_a_message_to_a_recv_under_way() -> None:
    async with _server(["one", "two"]) as url, connect(url) as ws:
        next_buffered = buffered_message_reader(ws)
        for _ in range(1000):  # until both frames are in the buffer
            if len(ws.recv_messages.frames) == 2:
                break
            await asyncio.sleep(0.01)
        ws.recv_messages.get_in_progress = True  # as while a recv() waits for fragments
        assert next_buffered() is None
        ws.recv_messages.get_in_progress = False
        assert next_buffered() == b"one"
        assert await ws.recv(False) == b"two"
        assert next_buffered() is None


async def test_an_unknown_buffer_shape_leaves_every_message_to_recv() -> None:
    assert buffered_message_reader(SimpleNamespace())() is None  # type: ignore[arg-type]
    odd = SimpleNamespace(recv_messages=SimpleNamespace(frames=[b"x"], maybe_resume=print))
    assert buffered_message_reader(odd)() is None  # type: ignore[arg-type]
