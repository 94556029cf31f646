"""The token providers over a real socket: TLS verification and network failures."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ohip_stream import ConfigurationError, OAuthClientCredentials, TransportError

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
