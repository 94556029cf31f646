"""TLS end to end against the emulator with certificates from trustme (issue 8).

An untrusted certificate is a clear ``ConfigurationError`` at once (no retries); ``ssl=`` (the
stream: an ``SSLContext`` or a CA file path) and ``verify=`` (the token provider) with the
test CA work end to end; plain ``ws://`` / ``http://`` to a host that is not this one is
refused unless ``allow_insecure=True``.
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from helpers.streams import FAST_TIMINGS, take_offsets
from helpers.streams import emulator_auth as _auth
from ohip_stream import (
    ConfigurationError,
    EventStream,
    OAuthClientCredentials,
    OAuthPassword,
    StaticToken,
)
from ohip_stream.testing import Emulator

trustme = pytest.importorskip("trustme")

TIMINGS = FAST_TIMINGS


@dataclass
class TlsGateway:
    emu: Emulator
    ca_file: Path
    context: ssl.SSLContext


def _write_cert(tmp_path: Path, name: str, *hosts: str) -> tuple[Path, Path, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert(*hosts)
    certfile, keyfile, ca_file = (
        tmp_path / f"{name}-cert.pem",
        tmp_path / f"{name}-key.pem",
        tmp_path / f"{name}-ca.pem",
    )
    cert.private_key_and_cert_chain_pem.write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(ca_file))
    return certfile, keyfile, ca_file


@pytest.fixture
async def gateway(tmp_path: Path) -> AsyncIterator[TlsGateway]:
    certfile, keyfile, ca_file = _write_cert(tmp_path, "gw", "127.0.0.1", "localhost")
    async with Emulator(
        complete_gap=0.2, server_ping_interval=0.2, ssl_certfile=certfile, ssl_keyfile=keyfile
    ) as emu:
        assert emu.gateway_url.startswith("https://")
        yield TlsGateway(emu, ca_file, ssl.create_default_context(cafile=str(ca_file)))


def _stream(emu: Emulator, tmp_path: Path, **kwargs: Any) -> EventStream:
    return EventStream(
        gateway_url=emu.gateway_url,
        app_key=emu.app_key,
        chain_code=emu.chain_code,
        timings=TIMINGS,
        lock_dir=tmp_path / "locks",
        **kwargs,
    )


async def test_an_unknown_ca_is_refused_at_once_with_a_clear_error(
    gateway: TlsGateway, tmp_path: Path
) -> None:
    emu = gateway.emu
    await emu.publish(2)
    token = await emu.issue_token()
    # The stream's own TLS (a static token: no token request to fail first).
    async with _stream(emu, tmp_path, auth=StaticToken(token)) as stream:
        with pytest.raises(ConfigurationError, match=r"(?i)certificate") as caught:
            await asyncio.wait_for(take_offsets(stream, 1), 10)
    assert "ssl=" in str(caught.value)
    assert stream.stats.reconnects == {}  # fatal at once: no retry against an untrusted gateway
    assert emu.upgrades == []  # nothing got past the handshake
    # The token provider's TLS.
    async with _auth(emu) as auth:
        with pytest.raises(ConfigurationError, match=r"(?i)certificate") as refused:
            await auth.get_token()
    assert "verify=" in str(refused.value)
    # Both together: the first error is the provider's, just as clear.
    async with _auth(emu) as auth, _stream(emu, tmp_path, auth=auth) as stream:
        with pytest.raises(ConfigurationError, match=r"(?i)certificate"):
            await asyncio.wait_for(take_offsets(stream, 1), 10)


async def test_a_certificate_for_another_host_is_refused(tmp_path: Path) -> None:
    certfile, keyfile, ca_file = _write_cert(tmp_path, "other", "gateway.example.com")
    async with Emulator(ssl_certfile=certfile, ssl_keyfile=keyfile) as emu:
        token = await emu.issue_token()
        stream = _stream(emu, tmp_path, auth=StaticToken(token), ssl=ca_file)
        async with stream:
            with pytest.raises(ConfigurationError, match=r"(?i)certificate"):
                await asyncio.wait_for(take_offsets(stream, 1), 10)
        async with _auth(emu, verify=str(ca_file)) as auth:
            with pytest.raises(ConfigurationError, match=r"(?i)certificate"):
                await auth.get_token()


@pytest.mark.parametrize("how", ["context", "ca_file"])
async def test_the_test_ca_works_end_to_end(gateway: TlsGateway, tmp_path: Path, how: str) -> None:
    emu = gateway.emu
    await emu.publish(3)
    ssl_option: Any = gateway.context if how == "context" else gateway.ca_file
    verify: Any = gateway.context if how == "context" else str(gateway.ca_file)
    async with (
        _auth(emu, verify=verify) as auth,
        _stream(emu, tmp_path, auth=auth, ssl=ssl_option) as stream,
    ):
        assert await take_offsets(stream, 3) == ["1", "2", "3"]
        await emu.drop()  # and again after a reconnect over TLS
        await emu.publish(1)
        assert await take_offsets(stream, 1) == ["4"]
    assert stream.stats.reconnects.get("1006") == 1
    assert all(u.status == 101 for u in emu.upgrades)


async def test_the_password_grant_verifies_with_the_test_ca(gateway: TlsGateway) -> None:
    emu = gateway.emu
    async with OAuthPassword(
        gateway_url=emu.gateway_url,
        client_id=emu.client_id,
        client_secret=emu.client_secret,
        app_key=emu.app_key,
        username=emu.username,
        password=emu.password,
        verify=str(gateway.ca_file),
    ) as auth:
        token = await auth.get_token()
    assert token.value


@pytest.mark.parametrize(
    "url", ["http://gateway.example.com", "ws://gateway.example.com", "http://10.1.2.3:8080"]
)
async def test_plain_text_to_another_host_is_refused_unless_allowed(
    tmp_path: Path, url: str
) -> None:
    key = "0f5e4a2c-1111-4222-8333-444455556666"
    with pytest.raises(ConfigurationError, match="allow_insecure"):
        EventStream(
            gateway_url=url,
            app_key=key,
            chain_code="OHIPCN",
            auth=StaticToken("t" * 40),
            lock_dir=tmp_path / "locks",
        )
    async with EventStream(
        gateway_url=url,
        app_key=key,
        chain_code="OHIPCN",
        auth=StaticToken("t" * 40),
        lock_dir=tmp_path / "locks",
        allow_insecure=True,
    ):
        pass
    if url.startswith("http:"):
        kwargs: dict[str, Any] = {
            "gateway_url": url,
            "client_id": "client",
            "client_secret": "s3cret-value",
            "app_key": key,
        }
        with pytest.raises(ConfigurationError, match="allow_insecure"):
            OAuthClientCredentials(enterprise_id="ENT1", **kwargs)
        with pytest.raises(ConfigurationError, match="allow_insecure"):
            OAuthPassword(username="u", password="p4ssword", **kwargs)
        OAuthClientCredentials(enterprise_id="ENT1", allow_insecure=True, **kwargs)
        OAuthPassword(username="u", password="p4ssword", allow_insecure=True, **kwargs)


@pytest.mark.parametrize("url", ["http://127.0.0.1:9", "http://localhost:9", "http://[::1]:9"])
def test_plain_http_on_this_host_needs_no_permission(url: str) -> None:
    OAuthClientCredentials(
        gateway_url=url,
        client_id="client",
        client_secret="s3cret-value",
        app_key="0f5e4a2c-1111-4222-8333-444455556666",
        enterprise_id="ENT1",
    )
