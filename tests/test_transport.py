"""The WebSocket transport over real sockets: websockets' server, raw asyncio servers for hostile
answers, TLS with trustme, and a real CONNECT proxy."""

from __future__ import annotations

import asyncio
import base64
import gc
import hashlib
import socket
import ssl
import struct
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
import trustme
from websockets.asyncio.server import ServerConnection, serve
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from helpers.connect_proxy import ConnectProxy
from ohip_stream import _logging
from ohip_stream._handshake import Stage, network_failure
from ohip_stream._policy import Failure, FailureKind
from ohip_stream._transport import (
    MAX_RETRY_AFTER,
    NAME_NOT_FOUND,
    REFUSED,
    RESET,
    TIMED_OUT,
    TLS_HANDSHAKE,
    Failed,
    WebSocket,
    _Connection,
    open_websocket,
)

SUBPROTOCOL = "graphql-transport-ws"
#: Stands for the application key's hash in the URL's query: no reason may quote it.
KEY_HASH = "4d156d7bc9c38c000aa1e5b06e46e1f40cafe651f3cabfae9bad48803baf17bf"
GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Sink:
    """Records what the transport delivers."""

    def __init__(self, on_frame: Callable[[bytes], None] | None = None) -> None:
        self.frames: list[bytes] = []
        self.failures: list[Failure] = []
        self.ended = asyncio.Event()
        self._on_frame = on_frame

    def frames_received(self, frames: list[bytes]) -> None:
        assert not self.failures, "a frame after connection_ended"
        assert frames, "an empty read delivered"
        for data in frames:
            assert type(data) in (bytes, bytearray)
            self.frames.append(data)
            if self._on_frame is not None:
                self._on_frame(data)

    def connection_ended(self, failure: Failure) -> None:
        self.failures.append(failure)
        self.ended.set()

    async def failure(self, wait: float = 1.0) -> Failure:
        await asyncio.wait_for(self.ended.wait(), wait)
        assert len(self.failures) == 1
        return self.failures[0]


async def connect(url: str, sink: Sink | None = None, **options: Any) -> WebSocket:
    arguments: dict[str, Any] = {
        "sink": sink or Sink(),
        "subprotocol": SUBPROTOCOL,
        "headers": {"Authorization": "Bearer test-token"},
        "ssl": None,
        "proxy": None,
        "max_message_size": None,
        "open_timeout": 1.0,
        "close_timeout": 0.5,
    }
    arguments.update(options)
    return await open_websocket(url, **arguments)


async def failed(url: str, **options: Any) -> Failure:
    with pytest.raises(Failed) as info:
        await connect(url, **options)
    failure, message = info.value.failure, str(info.value)
    # The traceback's frames hold this frame: let go of the exception, so that no cycle is left
    # (a test below checks that a failed open leaves none).
    del info
    assert message == failure.reason
    assert KEY_HASH not in failure.reason
    assert "test-token" not in failure.reason
    return failure


Handler = Callable[[ServerConnection], Awaitable[None]]


@asynccontextmanager
async def ws_server(
    handler: Handler, *, tls: ssl.SSLContext | None = None, **options: Any
) -> AsyncIterator[str]:
    """A websockets server on 127.0.0.1; yields its URL with a key hash in the query."""
    options.setdefault("subprotocols", [SUBPROTOCOL])
    async with serve(handler, "127.0.0.1", 0, ssl=tls, **options) as server:
        port = server.sockets[0].getsockname()[1]
        scheme = "wss" if tls is not None else "ws"
        yield f"{scheme}://127.0.0.1:{port}/subscriptions?key={KEY_HASH}"


RawHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def raw_server(handler: RawHandler) -> AsyncIterator[str]:
    """An asyncio server that answers whatever ``handler`` writes; yields its ws:// URL."""
    tasks: set[asyncio.Task[Any]] = set()
    writers: list[asyncio.StreamWriter] = []

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)
        writers.append(writer)
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve_one, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"ws://127.0.0.1:{port}/subscriptions?key={KEY_HASH}"
    finally:
        server.close()
        for writer in writers:
            writer.transport.abort()  # a handler still reading gets its EOF and returns
        await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), 1)
        await server.wait_closed()


async def read_upgrade(reader: asyncio.StreamReader) -> str:
    """Read the upgrade request; return the 101 that accepts it with our subprotocol."""
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    key = next(
        line.split(":", 1)[1].strip()
        for line in head.split("\r\n")
        if line.lower().startswith("sec-websocket-key:")
    )
    accept = base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()
    return (
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: {SUBPROTOCOL}\r\n\r\n"
    )


def frame(opcode: int, payload: bytes, *, fin: bool = True, rsv: int = 0) -> bytes:
    """An unmasked server frame (payload under 126 bytes)."""
    assert len(payload) < 126
    return struct.pack("!BB", (0x80 if fin else 0) | rsv | opcode, len(payload)) + payload


def http_answer(status: str, headers: dict[str, str], body: bytes = b"") -> Callable[..., Any]:
    """A process_request hook that answers the upgrade with an HTTP status."""

    def process_request(connection: ServerConnection, request: Request) -> Response:
        code, _, phrase = status.partition(" ")
        all_headers = Headers(headers)
        all_headers["Content-Length"] = str(len(body))
        return Response(int(code), phrase, all_headers, body)

    return process_request


async def idle(websocket: ServerConnection) -> None:
    await websocket.wait_closed()


# --- messages ----------------------------------------------------------------------------------


async def test_messages_arrive_whole_and_in_order_then_the_close_code_and_reason() -> None:
    async def handler(websocket: ServerConnection) -> None:
        hello = await websocket.recv()
        await websocket.send(f"echo {hello}")
        await websocket.send(b"\x00\x01\xff")
        await websocket.send(["fr", "ag", "ment é"])
        await websocket.send([b"\x01", b"\x02"])
        await websocket.close(4409, "another consumer")

    sink = Sink()
    async with ws_server(handler) as url:
        websocket = await connect(url, sink)
        assert websocket.subprotocol == SUBPROTOCOL
        websocket.send_text("hello")
        failure = await sink.failure()
    assert sink.frames == [
        b"echo hello",
        b"\x00\x01\xff",
        "fragment é".encode(),
        b"\x01\x02",
    ]
    assert failure == Failure(FailureKind.CLOSE, code=4409, reason="another consumer")
    assert websocket.ended
    await asyncio.wait_for(websocket.wait_closed(), 1)


async def test_the_upgrade_carries_the_extra_headers_and_the_query() -> None:
    seen: list[Request] = []

    def process_request(connection: ServerConnection, request: Request) -> None:
        seen.append(request)

    async with ws_server(idle, process_request=process_request) as url:
        websocket = await connect(url, headers={"Authorization": "Bearer abc", "X-Extra": "1"})
        websocket.close()
        await asyncio.wait_for(websocket.wait_closed(), 1)
    assert seen[0].path == f"/subscriptions?key={KEY_HASH}"
    assert seen[0].headers.get_all("Authorization") == ["Bearer abc"]
    assert seen[0].headers["X-Extra"] == "1"


async def test_our_close_completes_the_closing_handshake() -> None:
    server_saw: list[int | None] = []

    async def handler(websocket: ServerConnection) -> None:
        await websocket.wait_closed()
        server_saw.append(websocket.close_code)

    sink = Sink()
    async with ws_server(handler) as url:
        websocket = await connect(url, sink)
        websocket.close()
        websocket.send_text("ignored once closing")
        started = time.monotonic()
        failure = await sink.failure()
        assert time.monotonic() - started < 0.4  # the server's close, not the close timeout
    assert failure.kind is FailureKind.CLOSE
    assert failure.code == 1000
    assert server_saw == [1000]
    websocket.close()  # no-op once ended
    websocket.abort()
    websocket.send_text("nobody listens")
    assert sink.failures == [failure]


async def test_abort_drops_tcp_and_ends_with_1006() -> None:
    server_saw: list[int | None] = []

    async def handler(websocket: ServerConnection) -> None:
        await websocket.wait_closed()
        server_saw.append(websocket.close_code)

    sink = Sink()
    async with ws_server(handler) as url:
        websocket = await connect(url, sink)
        websocket.abort()
        failure = await sink.failure()
        await asyncio.sleep(0.05)
    assert failure.kind is FailureKind.CLOSE
    assert failure.code == 1006
    assert server_saw == [1006]


async def test_a_server_that_drops_tcp_without_a_close_frame_gives_1006() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await read_upgrade(reader)).encode() + frame(0x1, b"last"))
        await writer.drain()
        await asyncio.sleep(0.05)

    sink = Sink()
    async with raw_server(handler) as url:
        await connect(url, sink)
        failure = await sink.failure()
    assert sink.frames == [b"last"]
    assert failure.kind is FailureKind.CLOSE
    assert failure.code == 1006


async def test_frames_that_come_with_the_101_wait_for_the_handle() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        close = frame(0x8, struct.pack("!H", 1001) + b"bye")
        writer.write((await read_upgrade(reader)).encode() + frame(0x1, b"early") + close)
        await writer.drain()
        await reader.read(100)  # the client's close echo; then this server closes TCP

    sink = Sink()
    async with raw_server(handler) as url:
        websocket = await connect(url, sink)
        assert sink.frames == []  # nothing before open_websocket returned
        failure = await sink.failure()
    assert sink.frames == [b"early"]
    assert failure == Failure(FailureKind.CLOSE, code=1001, reason="bye")
    assert websocket.ended


async def test_a_server_that_never_closes_tcp_is_dropped_after_close_timeout() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await read_upgrade(reader)).encode())
        writer.write(frame(0x8, struct.pack("!H", 4403) + b"forbidden"))
        await writer.drain()
        await reader.read()  # keeps TCP open until the client drops it

    sink = Sink()
    async with raw_server(handler) as url:
        started = time.monotonic()
        await connect(url, sink, close_timeout=0.1)
        failure = await sink.failure()
    assert 0.1 <= time.monotonic() - started < 0.8
    assert failure == Failure(FailureKind.CLOSE, code=4403, reason="forbidden")


async def test_a_framing_error_is_malformed() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write((await read_upgrade(reader)).encode() + frame(0x1, b"ok"))
        writer.write(frame(0x1, b"bad", rsv=0x40))  # RSV1 without a negotiated extension
        await writer.drain()
        await reader.read(100)  # the client's close frame (1002); then this server closes TCP

    sink = Sink()
    async with raw_server(handler) as url:
        await connect(url, sink)
        failure = await sink.failure()
    assert sink.frames == [b"ok"]
    assert failure.kind is FailureKind.MALFORMED
    assert "reserved bits" in failure.reason


@pytest.mark.parametrize("fragmented", [False, True])
async def test_a_message_above_the_limit_ends_with_1009(fragmented: bool) -> None:
    server_saw: list[int | None] = []

    async def handler(websocket: ServerConnection) -> None:
        await websocket.send("x" * 100)
        await websocket.send(["y" * 60, "y" * 60] if fragmented else "y" * 120)
        await websocket.wait_closed()
        server_saw.append(websocket.close_code)

    sink = Sink()
    async with ws_server(handler) as url:
        await connect(url, sink, max_message_size=100)
        failure = await sink.failure()
        await asyncio.sleep(0.02)
    assert sink.frames == [b"x" * 100]
    assert failure.kind is FailureKind.CLOSE
    assert failure.code == 1009
    assert server_saw == [1009]


async def test_a_websocket_ping_is_answered() -> None:
    async def handler(websocket: ServerConnection) -> None:
        pong = await websocket.ping(b"are you there")
        await asyncio.wait_for(pong, 1)
        await websocket.send("pong seen")
        await websocket.close()

    sink = Sink()
    async with ws_server(handler) as url:
        await connect(url, sink)
        failure = await sink.failure()
    assert sink.frames == [b"pong seen"]
    assert failure.code == 1000


# --- flow control ------------------------------------------------------------------------------


async def test_paused_reading_backs_the_server_up_and_resume_loses_nothing() -> None:
    count = 2000
    payload = "m" * 16_000
    sent = 0
    websocket: WebSocket | None = None

    async def handler(server_side: ServerConnection) -> None:
        nonlocal sent
        for index in range(count):
            await server_side.send(f"{index:05d}{payload}")
            sent += 1
        await server_side.close()

    def on_frame(data: bytes) -> None:
        if len(sink.frames) == 1:
            assert websocket is not None
            websocket.pause_reading()
            websocket.pause_reading()  # idempotent

    sink = Sink(on_frame)
    async with ws_server(handler, max_size=None) as url:
        websocket = await connect(url, sink)
        await asyncio.sleep(0.2)
        delivered, sent_while_paused = len(sink.frames), sent
        await asyncio.sleep(0.1)
        assert len(sink.frames) == delivered  # nothing more while paused
        assert sent == sent_while_paused < count  # the server's send blocks
        websocket.resume_reading()
        websocket.resume_reading()
        failure = await sink.failure(wait=5)
    assert failure.code == 1000
    assert [int(data[:5]) for data in sink.frames] == list(range(count))


# --- HTTP answers ------------------------------------------------------------------------------


async def test_http_400_carries_a_folded_excerpt_of_the_body() -> None:
    body = b"wrong key\n\n   hash   " + b"z" * 500
    hook = http_answer("400 Bad Request", {}, body)
    async with ws_server(idle, process_request=hook) as url:
        failure = await failed(url)
    assert failure.kind is FailureKind.HTTP
    assert failure.code == 400
    assert failure.reason.startswith("Bad Request - wrong key hash zzz")
    assert len(failure.reason) == len("Bad Request - ") + 200
    assert failure.retry_after is None


@pytest.mark.parametrize(
    ("header", "expected"),
    [("7", 7.0), ("1e12", MAX_RETRY_AFTER), ("Wed, 21 Oct 2026 07:28:00 GMT", None), ("-3", None)],
)
async def test_http_429_reads_retry_after(header: str, expected: float | None) -> None:
    hook = http_answer("429 Too Many Requests", {"Retry-After": header})
    async with ws_server(idle, process_request=hook) as url:
        failure = await failed(url)
    assert failure.kind is FailureKind.HTTP
    assert failure.code == 429
    assert failure.retry_after == expected


async def test_a_redirect_is_never_followed() -> None:
    other_host_contacts = 0

    async def other_host(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal other_host_contacts
        other_host_contacts += 1

    async with raw_server(other_host) as elsewhere:

        async def redirect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            await reader.readuntil(b"\r\n\r\n")
            writer.write(
                f"HTTP/1.1 307 Temporary Redirect\r\nLocation: {elsewhere}\r\n"
                "Content-Length: 0\r\n\r\n".encode()
            )
            await writer.drain()
            await reader.read()

        async with raw_server(redirect) as url:
            failure = await failed(url)
            await asyncio.sleep(0.05)
    assert failure.kind is FailureKind.HTTP
    assert failure.code == 307
    assert "redirect not followed" in failure.reason
    assert elsewhere.split("/")[2] not in failure.reason
    assert other_host_contacts == 0


async def test_a_subprotocol_not_confirmed() -> None:
    async with ws_server(idle, subprotocols=None) as url:
        failure = await failed(url)
    assert failure.kind is FailureKind.SUBPROTOCOL
    assert SUBPROTOCOL in failure.reason


async def test_another_subprotocol_than_ours() -> None:
    async def other(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        answer = (await read_upgrade(reader)).replace(SUBPROTOCOL, "graphql-ws")
        writer.write(answer.encode())
        await writer.drain()
        await reader.read()

    async with raw_server(other) as url:
        failure = await failed(url)
    assert failure.kind is FailureKind.SUBPROTOCOL
    assert "graphql-ws" in failure.reason


async def test_a_server_that_hangs_up_during_the_handshake() -> None:
    async def hang_up(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")

    async with raw_server(hang_up) as url:
        failure = await failed(url)
    assert failure.kind is FailureKind.NETWORK
    assert failure.reason.startswith("connection lost")


# --- network, timeouts, cancellation -----------------------------------------------------------


async def test_a_refused_port() -> None:
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    server.close()
    await server.wait_closed()
    failure = await failed(f"ws://127.0.0.1:{port}/subscriptions?key={KEY_HASH}")
    assert failure.kind is FailureKind.NETWORK
    assert failure.reason.startswith(REFUSED)


async def test_open_timeout_against_a_silent_server_closes_the_socket() -> None:
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()  # returns at the client's close
        closed.set()

    async with raw_server(silent) as url:
        started = time.monotonic()
        failure = await failed(url, open_timeout=0.2)
        assert 0.2 <= time.monotonic() - started < 0.5
        await asyncio.wait_for(closed.wait(), 1)
    assert failure.kind is FailureKind.NETWORK
    assert failure.reason.startswith(TIMED_OUT)
    assert "upgrade" in failure.reason


async def test_cancelling_open_closes_the_socket_and_propagates() -> None:
    reached = asyncio.Event()
    closed = asyncio.Event()

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.set()
        await reader.read()
        closed.set()

    async with raw_server(silent) as url:
        task = asyncio.create_task(connect(url))
        await asyncio.wait_for(reached.wait(), 1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.wait_for(closed.wait(), 1)


# --- configuration -----------------------------------------------------------------------------


async def test_headers_above_8_kb_are_refused_before_any_connection() -> None:
    failure = await failed(
        "ws://127.0.0.1:9/subscriptions", headers={"Authorization": "Bearer " + "t" * 8200}
    )
    assert failure.kind is FailureKind.CONFIG
    assert "8192" in failure.reason
    assert "tttt" not in failure.reason


@pytest.mark.parametrize(
    "headers", [{"Bad Name": "x"}, {"X-Injected": "a\r\nHost: elsewhere"}], ids=["name", "value"]
)
async def test_invalid_headers_are_refused(headers: dict[str, str]) -> None:
    failure = await failed("ws://127.0.0.1:9/subscriptions", headers=headers)
    assert failure.kind is FailureKind.CONFIG
    assert "elsewhere" not in failure.reason


@pytest.mark.parametrize(
    "proxy", ["socks5://u:s3cret@127.0.0.1:1080", "http://u:s3cret@:8080", "http://u:s3cret@h:x"]
)
async def test_a_bad_proxy_url_is_a_configuration_error(proxy: str) -> None:
    failure = await failed("ws://127.0.0.1:9/subscriptions", proxy=proxy)
    assert failure.kind is FailureKind.CONFIG
    assert "s3cret" not in failure.reason
    assert "http://[user:pass@]host:port" in failure.reason


async def test_a_bad_websocket_url_is_a_configuration_error() -> None:
    failure = await failed(f"https://gateway.example/subscriptions?key={KEY_HASH}")
    assert failure.kind is FailureKind.CONFIG


# --- TLS and the proxy -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(context)
    return context


@pytest.fixture
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    context = ssl.create_default_context()
    ca.configure_trust(context)
    return context


async def greet(websocket: ServerConnection) -> None:
    await websocket.send("over tls")
    await websocket.close()


async def test_wss_with_a_trusted_ca(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    sink = Sink()
    async with ws_server(greet, tls=server_tls) as url:
        await connect(url, sink, ssl=client_tls)
        failure = await sink.failure()
    assert sink.frames == [b"over tls"]
    assert failure.code == 1000


async def test_wss_with_an_untrusted_certificate_is_tls(server_tls: ssl.SSLContext) -> None:
    async with ws_server(greet, tls=server_tls) as url:
        failure = await failed(url, ssl=None)
    assert failure.kind is FailureKind.TLS
    assert "certificate verify failed" in failure.reason


async def test_wss_through_a_connect_proxy(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    sink = Sink()
    proxy = ConnectProxy(credentials=("user", "p@ss"))
    async with proxy, ws_server(greet, tls=server_tls) as url:
        port = url.split(":")[2].split("/")[0]
        proxy_url = f"http://user:p%40ss@127.0.0.1:{proxy.port}"
        await connect(url, sink, ssl=client_tls, proxy=proxy_url)
        failure = await sink.failure()
    assert sink.frames == [b"over tls"]
    assert failure.code == 1000
    assert proxy.tunnels == 1
    assert proxy.requests == [f"CONNECT 127.0.0.1:{port} HTTP/1.1"]


async def test_an_untrusted_certificate_through_the_proxy_is_tls(
    server_tls: ssl.SSLContext,
) -> None:
    async with ConnectProxy() as proxy, ws_server(greet, tls=server_tls) as url:
        failure = await failed(url, ssl=None, proxy=proxy.url)
    assert failure.kind is FailureKind.TLS
    assert proxy.tunnels == 1


@pytest.mark.skipif(sys.version_info < (3, 11), reason="TLS in TLS needs Python 3.11")
async def test_wss_through_an_https_proxy(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext
) -> None:
    sink = Sink()
    async with ConnectProxy(tls=server_tls) as proxy, ws_server(greet, tls=server_tls) as url:
        await connect(url, sink, ssl=client_tls, proxy=proxy.url)
        failure = await sink.failure()
    assert proxy.url.startswith("https://")
    assert sink.frames == [b"over tls"]
    assert failure.code == 1000
    assert proxy.tunnels == 1


@pytest.mark.skipif(sys.version_info >= (3, 11), reason="TLS in TLS works from Python 3.11")
async def test_wss_through_an_https_proxy_needs_python_3_11() -> None:
    failure = await failed("wss://127.0.0.1:9/subscriptions", proxy="https://127.0.0.1:1")
    assert failure.kind is FailureKind.CONFIG
    assert "3.11" in failure.reason


async def test_ws_through_a_connect_proxy() -> None:
    sink = Sink()
    async with ConnectProxy() as proxy, ws_server(greet) as url:
        await connect(url, sink, proxy=proxy.url)
        failure = await sink.failure()
    assert sink.frames == [b"over tls"]
    assert failure.code == 1000
    assert proxy.tunnels == 1


async def test_a_proxy_that_refuses_the_tunnel_is_a_network_failure() -> None:
    async with ConnectProxy(credentials=("user", "right")) as proxy, ws_server(greet) as url:
        failure = await failed(url, proxy=f"http://user:wrong@127.0.0.1:{proxy.port}")
    assert failure.kind is FailureKind.NETWORK
    assert failure.reason == "proxy refused the tunnel: HTTP 407 Proxy Authentication Required"
    assert proxy.tunnels == 0


async def test_tls_spoken_to_a_plain_server_is_a_tls_handshake_failure(
    client_tls: ssl.SSLContext,
) -> None:
    async with ws_server(greet) as url:
        failure = await failed(url.replace("ws://", "wss://"), ssl=client_tls)
    assert failure.kind is FailureKind.NETWORK
    assert failure.reason.startswith(TLS_HANDSHAKE)


async def test_an_unreachable_proxy_is_a_refused_connection() -> None:
    async with ws_server(greet) as url:
        failure = await failed(url, proxy="http://127.0.0.1:1")
    assert failure.kind is FailureKind.NETWORK
    assert failure.reason.startswith(REFUSED)
    assert "127.0.0.1:1" in failure.reason


async def test_server_text_in_a_reason_is_redacted() -> None:
    secret = "raw-application-key-0f3c"
    _logging.register_secret(secret)
    hook = http_answer("400 Bad Request", {}, f"unknown key {secret}".encode())
    async with ws_server(idle, process_request=hook) as url:
        failure = await failed(url)
    assert secret not in failure.reason
    assert failure.reason.startswith("Bad Request - unknown key [REDACTED]")

    async def handler(websocket: ServerConnection) -> None:
        await websocket.close(4400, f"bad input {secret}")

    sink = Sink()
    async with ws_server(handler) as url:
        await connect(url, sink)
        failure = await sink.failure()
    assert failure.code == 4400
    assert secret not in failure.reason


@pytest.mark.parametrize(
    ("error", "kind", "start"),
    [
        (socket.gaierror(-2, "Name or service not known"), FailureKind.NETWORK, NAME_NOT_FOUND),
        (ConnectionRefusedError(111, "Connection refused"), FailureKind.NETWORK, REFUSED),
        (TimeoutError(110, "Connection timed out"), FailureKind.NETWORK, TIMED_OUT),
        (ConnectionResetError(104, "Connection reset by peer"), FailureKind.NETWORK, RESET),
        (ssl.SSLError(1, "[SSL: WRONG_VERSION_NUMBER]"), FailureKind.NETWORK, TLS_HANDSHAKE),
        (ssl.SSLCertVerificationError(1, "certificate verify failed"), FailureKind.TLS, ""),
    ],
)
def test_os_errors_are_told_apart(error: OSError, kind: FailureKind, start: str) -> None:
    failure = network_failure(error, Stage("connecting to gateway.example:443"))
    assert failure.kind is kind
    assert failure.reason.startswith(start)
    assert failure.code is None


# --- resources ---------------------------------------------------------------------------------


FDS = Path("/proc/self/fd")
HAS_FDS = FDS.is_dir()


def open_fds() -> int:
    return len(list(FDS.iterdir()))


async def test_failures_and_ends_leave_no_socket_and_no_reference_cycle() -> None:
    if not HAS_FDS:
        pytest.skip("needs /proc/self/fd")

    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def scenarios() -> None:
        hook = http_answer("400 Bad Request", {}, b"no")
        async with ws_server(idle, process_request=hook) as url:
            await failed(url)
        async with raw_server(silent) as url:
            await failed(url, open_timeout=0.05)
        async with ws_server(greet) as url:
            sink = Sink()
            await connect(url, sink)
            await sink.failure()
            await failed(url, proxy="http://127.0.0.1:1")

    await scenarios()  # warm up what is made once (loop internals, imports)
    gc.collect()
    before = open_fds()
    gc.disable()
    gc.set_debug(gc.DEBUG_SAVEALL)
    try:
        await scenarios()
        await asyncio.sleep(0.01)
        gc.collect()
        ours = (_Connection, WebSocket, Failed, Sink)
        cyclic = [type(item).__name__ for item in gc.garbage if isinstance(item, ours)]
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert cyclic == []
    assert open_fds() == before
