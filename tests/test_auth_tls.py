"""The token providers over a real socket: TLS verification, network failures, hostile
token endpoints (a trickle, a flood) and connections left open."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ohip_stream import (
    AuthenticationError,
    ConfigurationError,
    OAuthClientCredentials,
    TransportError,
)

trustme = pytest.importorskip("trustme")


@dataclass
class TokenServer:
    url: str
    ca_file: Path
    requests: list[bytes] = field(default_factory=list)


async def _serve_one(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, requests: list[bytes]
) -> None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        length = 0
        for line in head.split(b"\r\n"):
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        body = await reader.readexactly(length)
        requests.append(head + body)
        payload = json.dumps(
            {"access_token": "opaque-tls-token", "expires_in": 3600, "token_type": "Bearer"}
        ).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: "
            + str(len(payload)).encode()
            + b"\r\nConnection: close\r\n\r\n"
            + payload
        )
        await writer.drain()
    except (asyncio.IncompleteReadError, ConnectionError, ssl.SSLError):
        pass  # the client refused our certificate
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()


@pytest.fixture
async def token_server(tmp_path: Path) -> AsyncIterator[TokenServer]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    cert.configure_cert(server_ctx)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))
    requests: list[bytes] = []
    server = await asyncio.start_server(
        lambda r, w: _serve_one(r, w, requests), "127.0.0.1", 0, ssl=server_ctx
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield TokenServer(url=f"https://127.0.0.1:{port}", ca_file=ca_file, requests=requests)
    finally:
        server.close()
        await server.wait_closed()


def _provider(gateway_url: str, **options: object) -> OAuthClientCredentials:
    return OAuthClientCredentials(
        gateway_url=gateway_url,
        client_id="client",
        client_secret="tls-client-secret",
        app_key="tls-app-key",
        enterprise_id="ENT1",
        **options,  # type: ignore[arg-type]
    )


async def test_untrusted_certificate_names_verify(token_server: TokenServer) -> None:
    async with _provider(token_server.url, retries=0) as provider:
        with pytest.raises(ConfigurationError, match="not trusted") as info:
            await provider.get_token()
    assert "verify=" in str(info.value)
    assert token_server.requests == []


async def test_ca_file_makes_the_certificate_trusted(token_server: TokenServer) -> None:
    async with _provider(token_server.url, verify=str(token_server.ca_file)) as provider:
        token = await provider.get_token()
    assert token.value == "opaque-tls-token"
    assert len(token_server.requests) == 1
    assert token_server.requests[0].startswith(b"POST /oauth/v1/tokens HTTP/1.1\r\n")


async def test_ssl_context_is_accepted(token_server: TokenServer) -> None:
    context = ssl.create_default_context(cafile=str(token_server.ca_file))
    async with _provider(token_server.url, verify=context) as provider:
        assert (await provider.get_token()).value == "opaque-tls-token"


async def test_refused_connection_is_a_transport_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Nothing listens on the port now.
    slept: list[float] = []

    async def no_wait(seconds: float) -> None:
        slept.append(seconds)

    async with _provider(f"http://127.0.0.1:{port}", retries=2, sleep=no_wait) as provider:
        with pytest.raises(TransportError, match="attempt 3 of 3"):
            await provider.get_token()
    assert len(slept) == 2


# --------------------------------------------------------------------------------------------
# Hostile token endpoints over plain http on this host: a deadline and a size cap (hardening
# issue, item 14), and nothing left open after a fetch (first-contact issue: ResourceWarning).

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
TOKEN_ANSWER = json.dumps(
    {"access_token": "opaque-plain-token", "expires_in": 3600, "token_type": "Bearer"}
).encode()


@contextlib.asynccontextmanager
async def plain_server(handler: Handler) -> AsyncIterator[str]:
    """A server on a free local port that answers each connection with ``handler``."""
    tasks: list[asyncio.Task[None]] = []

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.append(task)  # type: ignore[arg-type]
        try:
            await reader.readuntil(b"\r\n\r\n")
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client gave up on the answer
        finally:
            writer.close()

    server = await asyncio.start_server(run, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def _no_wait(seconds: float) -> None:
    pass


async def test_a_trickling_answer_is_cut_at_the_deadline() -> None:
    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # Each byte arrives well within the read timeout; the whole never does.
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 100000\r\n\r\n")
        while True:
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(0.02)

    loop = asyncio.get_running_loop()
    async with plain_server(trickle) as url:
        provider = _provider(url, deadline=0.3, timeout=5.0, retries=1, sleep=_no_wait)
        started = loop.time()
        with pytest.raises(TransportError, match=r"deadline=0\.3 s \(attempt 2 of 2\)") as info:
            await asyncio.wait_for(provider.get_token(), 5.0)
        elapsed = loop.time() - started
    assert info.value.retriable
    assert 0.6 <= elapsed < 2.0  # two attempts of 0.3 s, not the 5 s read timeout


async def test_slow_headers_are_cut_at_the_deadline() -> None:
    async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        await writer.drain()
        await asyncio.Event().wait()

    async with plain_server(silent) as url:
        provider = _provider(url, deadline=0.2, timeout=5.0, retries=0)
        with pytest.raises(TransportError, match="deadline"):
            await asyncio.wait_for(provider.get_token(), 3.0)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
async def test_a_huge_answer_is_refused_at_the_cap(declared: bool) -> None:
    sent = 0

    async def flood(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal sent
        total = 64 * 1024 * 1024
        if declared:
            writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % total)
        else:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        chunk = b"x" * 65536
        while sent < total:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if not declared else chunk)
            await writer.drain()
            sent += len(chunk)

    async with plain_server(flood) as url:
        provider = _provider(url, max_response_size=256 * 1024, retries=0)
        with pytest.raises(AuthenticationError, match=r"max_response_size=262144") as info:
            await asyncio.wait_for(provider.get_token(), 5.0)
    assert info.value.status == 200
    assert sent < 16 * 1024 * 1024  # the client stopped reading long before the end


async def test_nothing_stays_open_after_a_fetch_without_async_with() -> None:
    closed = asyncio.Event()
    requests = 0

    async def keep_alive(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal requests
        requests += 1
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
            % len(TOKEN_ANSWER)
            + TOKEN_ANSWER
        )
        await writer.drain()
        # A keep-alive answer: the connection stays open until the client closes it (the
        # request's form body is still unread: read to the end of the stream).
        await reader.read()
        closed.set()

    async with plain_server(keep_alive) as url:
        provider = _provider(url)  # never entered, never closed
        token = await provider.get_token()
        assert token.value == "opaque-plain-token"
        await asyncio.wait_for(closed.wait(), 5.0)
    assert requests == 1
