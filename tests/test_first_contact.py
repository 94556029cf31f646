"""A first-contact mistake (a wrong URL, port or scheme) ends the stream with one clear line;
after a first subscription, network failures are retried forever."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from ohip_stream import EventStream, StaticToken, Timings, TransportError
from ohip_stream.testing import Emulator

FAST = Timings(backoff_min=0.05, backoff_max=0.2, complete_gap=0.2, lockout=0.3, drop_wait=0.05)


def _stream(url: str, tmp_path: Path, **options: object) -> EventStream:
    return EventStream(
        gateway_url=url,
        app_key="0f5e4a2c-1111-4222-8333-444455556666",
        chain_code="OHIPCN",
        auth=StaticToken("t" * 40),
        timings=FAST,
        lock_dir=tmp_path / "locks",
        **options,  # type: ignore[arg-type]
    )


async def _first_event(stream: EventStream) -> None:
    async with stream:
        await asyncio.wait_for(anext(stream), 20)


async def test_a_refused_gateway_ends_after_a_few_tries(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(
        TransportError, match=r"cannot reach the gateway at 127\.0\.0\.1:1 .*3 tries"
    ):
        await _first_event(_stream("http://127.0.0.1:1", tmp_path))
    assert time.monotonic() - started < 10


@pytest.fixture
async def plain_http_port() -> AsyncIterator[int]:
    """A server that answers anything with a plain HTTP line (https to it fails the handshake)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        yield server.sockets[0].getsockname()[1]


async def test_https_to_a_plain_server_ends_with_the_tls_handshake_named(
    tmp_path: Path, plain_http_port: int
) -> None:
    stream = _stream(f"https://127.0.0.1:{plain_http_port}", tmp_path, first_contact_tries=2)
    with pytest.raises(TransportError, match="TLS handshake"):
        await _first_event(stream)


async def test_after_a_first_subscription_drops_are_retried(tmp_path: Path) -> None:
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(1)
        token = await emu.issue_token()
        stream = EventStream(
            gateway_url=emu.gateway_url,
            app_key=emu.app_key,
            chain_code=emu.chain_code,
            auth=StaticToken(token),
            timings=FAST,
            lock_dir=tmp_path / "locks",
            first_contact_tries=1,
        )
        async with stream:
            assert (await asyncio.wait_for(anext(stream), 10)).metadata.offset == "1"
            for _ in range(3):
                await emu.drop()
            await emu.publish(1)
            assert (await asyncio.wait_for(anext(stream), 10)).metadata.offset == "2"


@pytest.mark.slow
def test_tail_against_a_wrong_url_exits_non_zero_with_one_line(tmp_path: Path) -> None:
    pytest.importorskip("typer")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OHIP_")}
    env.update(
        OHIP_APP_KEY="0f5e4a2c-1111-4222-8333-444455556666",
        OHIP_CHAIN_CODE="OHIPCN",
        OHIP_CLIENT_ID="client",
        OHIP_CLIENT_SECRET="secret-value",
        OHIP_ENTERPRISE_ID="ENT1",
        OHIP_LOCK_DIR=str(tmp_path / "locks"),
        OHIP_TIMINGS__BACKOFF_MIN="0.05",
        OHIP_TIMINGS__BACKOFF_MAX="0.2",
    )
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "ohip_stream", "tail", "--gateway-url", "http://127.0.0.1:1"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if line.startswith("ohip-stream: error:")]
    assert len(errors) == 1, result.stderr
    assert "127.0.0.1:1" in errors[0]
    assert "--gateway-url" in errors[0]
    assert "Traceback" not in result.stderr
