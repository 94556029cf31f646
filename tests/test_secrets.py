"""Secrets never leak: a full session with failures at DEBUG on the root logger, and the CLI
with ``--verbose`` (issue 8).

The session meets a 4401 (token expired: refreshed), 1006 drops, a 4409 lockout, an invalid
event, then revoked credentials (AuthenticationError). Every record that reached the root logger
(ours, websockets, httpx, httpcore, aiohttp and the emulator), formatted with its exception
text, every ``repr`` and ``str`` of the library's objects and errors, and everything the CLI
printed, must hold none of: the client secret, the password, any access token the gateway
issued, the Basic credentials, the raw application key, the key hash.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.streams import FAST_TIMINGS, emulator_auth
from helpers.streams import take_offsets as _take
from ohip_stream import (
    AuthenticationError,
    EventStream,
    OAuthPassword,
    OhipError,
    SQLiteCheckpointStore,
)
from ohip_stream._protocol import hash_app_key
from ohip_stream._settings import OhipSettings
from ohip_stream.cli import main as cli_main
from ohip_stream.testing import Emulator

TIMINGS = FAST_TIMINGS


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.setFormatter(logging.Formatter("%(name)s %(levelname)s %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def texts(self) -> Iterator[tuple[str, str]]:
        for record in self.records:
            yield record.name, self.format(record)


@pytest.fixture
def root_debug() -> Iterator[_Capture]:
    root = logging.getLogger()
    capture = _Capture()
    level = root.level
    root.addHandler(capture)
    root.setLevel(logging.DEBUG)
    try:
        yield capture
    finally:
        root.removeHandler(capture)
        root.setLevel(level)


def secrets_of(emu: Emulator) -> dict[str, str]:
    """Everything that must never be shown, with a name for the failure message."""
    basic = base64.b64encode(f"{emu.client_id}:{emu.client_secret}".encode()).decode()
    found = {
        "client secret": emu.client_secret,
        "password": emu.password,
        "raw app key": emu.app_key,
        "key hash": hash_app_key(emu.app_key),
        "basic credentials": basic,
    }
    # Every access token the gateway issued (the OAuth endpoint's and issue_token()'s).
    for index, value in enumerate(list(emu._server.tokens)):
        found[f"access token {index}"] = value
    return found


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    return [name for name, value in secrets.items() if value and value in text]


async def test_a_session_with_failures_logs_no_secret_at_debug(
    root_debug: _Capture, tmp_path: Path
) -> None:
    async with Emulator(complete_gap=0.2, server_ping_interval=0.2) as emu:
        await emu.publish(3)
        invalid: list[tuple[str, Exception]] = []

        def dead_letter(raw: str, error: Exception) -> None:
            invalid.append((raw, error))

        auth = emulator_auth(emu)
        store = SQLiteCheckpointStore(tmp_path / "cp.db")
        objects: list[Any] = [auth, store, emu]
        errors: list[BaseException] = []
        async with auth:
            stream = EventStream(
                gateway_url=emu.gateway_url,
                app_key=emu.app_key,
                chain_code=emu.chain_code,
                auth=auth,
                checkpoints=store,
                timings=TIMINGS,
                lock_dir=tmp_path / "locks",
                on_invalid=dead_letter,
            )
            objects.append(stream)
            async with stream:
                assert await _take(stream, 3) == ["1", "2", "3"]
                objects.append(await auth.get_token())
                objects.append(stream._connector.session if stream._connector else None)
                await emu.expire_tokens()  # 4401: a new token
                await emu.publish(1)
                assert await _take(stream, 1) == ["4"]
                await emu.drop()  # 1006
                await emu.publish(1)
                assert await _take(stream, 1) == ["5"]
                await emu.drop()
                await emu.close_with(4409, "Conflict: another consumer")  # lockout, if connected
                await emu.publish(1)
                assert await _take(stream, 1) == ["6"]
                await emu.send_invalid_event()
                await emu.publish(1)
                assert await _take(stream, 1) == ["7"]
                assert len(invalid) == 1
                objects.append(invalid[0][1])
                await emu.revoke_credentials()
                await emu.expire_tokens()  # 4401, and the token endpoint says 401
                with pytest.raises(AuthenticationError) as caught:
                    await _take(stream, 1)
                errors.append(caught.value)
            objects.append(stream.stats)
        # The password grant refused: a wrong password, then the right one while revoked.
        for password in ("wrong-" + emu.password, emu.password):
            async with OAuthPassword(
                gateway_url=emu.gateway_url,
                client_id=emu.client_id,
                client_secret=emu.client_secret,
                app_key=emu.app_key,
                username=emu.username,
                password=password,
            ) as grant:
                objects.append(grant)
                with pytest.raises(OhipError) as refused:
                    await grant.get_token()
                errors.append(refused.value)
        await emu.restore_credentials()
        settings = OhipSettings.load(env_file=None, **_settings_values(emu))
        objects += [settings, settings.token_provider()]
        store.close()
        secrets = secrets_of(emu)
        secrets["wrong password"] = "wrong-" + emu.password

    # The session did meet the failures, and the gateway issued several tokens.
    assert stream.stats.reconnects.get("4401", 0) >= 1
    assert stream.stats.reconnects.get("1006", 0) >= 1
    assert sum(name.startswith("access token") for name in secrets) >= 2
    assert len(root_debug.records) > 100
    assert {"ohip_stream.websockets", "httpx", "httpcore.http11", "ohip_stream.stream"} <= {
        r.name for r in root_debug.records
    }, "the capture must include the libraries' DEBUG records"
    assert any(r.name.startswith(("aiohttp", "ohip_stream.testing")) for r in root_debug.records)
    for name, text in root_debug.texts():
        assert not leaks(text, secrets), (name, leaks(text, secrets), text[:300])
    for obj in objects:
        for text in (repr(obj), str(obj)):
            assert not leaks(text, secrets), (type(obj).__name__, leaks(text, secrets), text)
    for error in errors:
        chain: BaseException | None = error
        while chain is not None:
            for text in (str(chain), repr(chain), *map(str, chain.args)):
                assert not leaks(text, secrets), (type(chain).__name__, text)
            chain = chain.__cause__ or chain.__context__
    for field in dataclasses.fields(stream.stats):
        assert not leaks(str(getattr(stream.stats, field.name)), secrets)


def _settings_values(emu: Emulator) -> dict[str, Any]:
    return {
        "gateway_url": emu.gateway_url,
        "app_key": emu.app_key,
        "chain_code": emu.chain_code,
        "client_id": emu.client_id,
        "client_secret": emu.client_secret,
        "enterprise_id": emu.enterprise_id,
    }


def test_the_cli_with_verbose_prints_no_secret(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in [n for n in os.environ if n.startswith("OHIP_")]:
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    with Emulator(complete_gap=0.2, server_ping_interval=0.2) as emu:
        emu.publish_sync(10)
        for name, value in emu.env().items():
            monkeypatch.setenv(name, value)
        monkeypatch.setenv("OHIP_LOCK_DIR", str(tmp_path / "locks"))
        monkeypatch.setenv("OHIP_CHECKPOINT_DB", str(tmp_path / "cp.db"))
        for field, value in (("COMPLETE_GAP", "0.3"), ("PING_INTERVAL", "0.2"), ("LOCKOUT", "0.3")):
            monkeypatch.setenv(f"OHIP_TIMINGS__{field}", value)
        outputs: list[tuple[list[str], int, str]] = []

        def run(*argv: str) -> int:
            code = cli_main(list(argv))
            out, err = capsys.readouterr()
            outputs.append((list(argv), code, out + err))
            return code

        assert run("-vv", "tail", "--max-events", "3") == 0
        assert run("tail", "-v", "--max-events", "1") == 0
        assert run("--verbose", "checkpoint", "show", "--json") == 0
        assert run("--verbose", "replay", "--from-offset", "1", "--to-offset", "3") == 0
        # Failures, with --verbose showing where they came from.
        monkeypatch.setenv("OHIP_CLIENT_SECRET", "wrong-" + emu.client_secret)
        assert run("-vv", "tail", "--max-events", "1") == 1
        monkeypatch.setenv("OHIP_CLIENT_SECRET", emu.client_secret)
        asyncio.run(emu.revoke_credentials())
        assert run("-vv", "tail", "--max-events", "1") == 1
        asyncio.run(emu.restore_credentials())
        monkeypatch.setenv("OHIP_USERNAME", emu.username)
        monkeypatch.setenv("OHIP_PASSWORD", emu.password)
        assert run("-vv", "tail", "--max-events", "1") == 2  # both grants at once
        secrets = secrets_of(emu)
        secrets["wrong secret"] = "wrong-" + emu.client_secret
    printed = "\n".join(text for _, _, text in outputs)
    assert "DEBUG" in printed  # -vv did turn on the libraries' DEBUG records
    assert "Traceback" in printed  # and showed where the failures came from
    for argv, code, text in outputs:
        assert not leaks(text, secrets), (argv, code, leaks(text, secrets))
