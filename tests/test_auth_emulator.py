"""The token providers against the emulator's OAuth endpoint, over a real socket (protocol §8)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from helpers.streams import FAST_TIMINGS, take_offsets
from ohip_stream import (
    AuthenticationError,
    ConfigurationError,
    EventStream,
    OAuthClientCredentials,
    OAuthPassword,
    TokenProvider,
)

pytest.importorskip("aiohttp")
from ohip_stream.testing import Emulator


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator() as emulator:
        yield emulator


def client_credentials(emu: Emulator, **overrides: Any) -> OAuthClientCredentials:
    kwargs: dict[str, Any] = {
        "gateway_url": emu.gateway_url,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "app_key": emu.app_key,
        "enterprise_id": emu.enterprise_id,
        "retries": 0,
    }
    kwargs.update(overrides)
    return OAuthClientCredentials(**kwargs)


def password_grant(emu: Emulator, **overrides: Any) -> OAuthPassword:
    kwargs: dict[str, Any] = {
        "gateway_url": emu.gateway_url,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "app_key": emu.app_key,
        "username": emu.username,
        "password": emu.password,
        "retries": 0,
    }
    kwargs.update(overrides)
    return OAuthPassword(**kwargs)


def secrets_of(emu: Emulator) -> tuple[str, ...]:
    return (emu.client_secret, emu.password, emu.app_key)


async def test_client_credentials_against_the_emulator(emu: Emulator) -> None:
    async with client_credentials(emu) as provider:
        assert isinstance(provider, TokenProvider)
        token = await provider.get_token()
        assert token.value.count(".") == 2  # JWT-shaped
        assert token.lifetime is not None
        assert 3598 <= token.lifetime <= 3600
        assert await provider.get_token() is token
        assert provider.enterprise_id == emu.enterprise_id


async def test_password_grant_against_the_emulator(emu: Emulator) -> None:
    async with password_grant(emu) as provider:
        token = await provider.get_token()
        assert token.expires_at is not None


async def test_short_lived_tokens_follow_the_shared_clock() -> None:
    clock = FakeClock()
    async with (
        Emulator(token_ttl=120, clock=clock) as emu,
        client_credentials(emu, clock=clock, margin=300) as provider,
    ):
        first = await provider.get_token()
        assert first.expires_at == clock.now + 120
        clock.now += 59
        assert await provider.get_token() is first
        clock.now += 1  # half the life: the 300 s margin is capped at 60 s
        second = await provider.get_token()
        assert second.value != first.value
        assert second.issued_at == clock.now


async def test_concurrent_callers_share_one_token(emu: Emulator) -> None:
    async with client_credentials(emu) as provider:
        tokens = await asyncio.gather(*(provider.get_token() for _ in range(50)))
    assert len({t.value for t in tokens}) == 1


async def test_invalidate_gets_a_new_token(emu: Emulator) -> None:
    async with client_credentials(emu) as provider:
        first = await provider.get_token()
        provider.invalidate(first)
        second = await provider.get_token()
    assert second.value != first.value


@pytest.mark.parametrize(
    ("overrides", "status", "hint"),
    [
        ({"client_secret": "wrong-client-secret"}, 401, "client id and secret"),
        ({"enterprise_id": "OTHER1"}, 400, "grant type"),
    ],
)
async def test_refusals_from_the_emulator(
    emu: Emulator, overrides: dict[str, Any], status: int, hint: str
) -> None:
    async with client_credentials(emu, **overrides) as provider:
        with pytest.raises(AuthenticationError) as info:
            await provider.get_token()
    assert info.value.status == status
    assert hint in str(info.value)
    for secret in (*secrets_of(emu), "wrong-client-secret"):
        assert secret not in str(info.value)
        assert secret not in repr(info.value)


async def test_wrong_password_is_refused(emu: Emulator) -> None:
    async with password_grant(emu, password="not-the-password") as provider:
        with pytest.raises(AuthenticationError) as info:
            await provider.get_token()
    assert info.value.status == 401
    assert "not-the-password" not in str(info.value)
    assert emu.password not in str(info.value)


async def test_revoked_credentials_then_restored(emu: Emulator) -> None:
    async with client_credentials(emu) as provider:
        await emu.revoke_credentials()
        with pytest.raises(AuthenticationError, match="HTTP 401"):
            await provider.get_token()
        await emu.restore_credentials()
        assert (await provider.get_token()).value


async def test_no_secret_in_any_log_record_over_a_real_socket(
    emu: Emulator, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with password_grant(emu) as provider:
        token = await provider.get_token()
    async with password_grant(emu, password="wrong-password-value") as provider:
        with pytest.raises(AuthenticationError):
            await provider.get_token()
    # httpcore logs every step of the real connection at DEBUG: those records are checked too.
    assert any(r.name.startswith("httpcore") for r in caplog.records)
    for record in caplog.records:
        message = record.getMessage()
        for secret in (*secrets_of(emu), token.value, "wrong-password-value"):
            assert secret not in message


async def test_tls_emulator_needs_its_ca(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1", "localhost")
    certfile = tmp_path / "cert.pem"
    keyfile = tmp_path / "key.pem"
    cafile = tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(certfile))
    cert.private_key_pem.write_to_path(str(keyfile))
    ca.cert_pem.write_to_path(str(cafile))
    async with Emulator(ssl_certfile=certfile, ssl_keyfile=keyfile) as emu:
        assert emu.gateway_url.startswith("https://")
        async with client_credentials(emu) as provider:
            with pytest.raises(ConfigurationError, match="verify="):
                await provider.get_token()
        async with client_credentials(emu, verify=cafile) as provider:
            assert (await provider.get_token()).value


async def test_a_stream_with_a_provider_never_closed_leaves_no_connection(tmp_path: Path) -> None:
    # The common use: EventStream(auth=OAuthClientCredentials(...)) without `async with auth`
    # and without aclose(). The provider must hold no connection to the token endpoint once
    # the stream is done (an idle one is an unclosed transport: a ResourceWarning).
    psutil = pytest.importorskip("psutil")
    async with Emulator(complete_gap=0.2) as emu:
        await emu.publish(2)
        auth = client_credentials(emu)
        async with EventStream(
            gateway_url=emu.gateway_url,
            app_key=emu.app_key,
            chain_code=emu.chain_code,
            auth=auth,
            timings=FAST_TIMINGS,
            lock_dir=tmp_path / "locks",
        ) as stream:
            assert await take_offsets(stream, 2) == ["1", "2"]
        open_to_emulator = [
            c
            for c in psutil.Process().net_connections(kind="tcp")
            if c.raddr and c.raddr.port == emu.port and c.status == psutil.CONN_ESTABLISHED
        ]
        assert open_to_emulator == []
