"""The test kit around the emulator: fixtures, the foreground runner, the generator, logging."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect

from ohip_stream._models import Event
from ohip_stream.testing import Emulator as LazyEmulator
from ohip_stream.testing import EventFactory, make_detail, make_event

SCOPE = "urn:opc:hgbu:ws:__myscopes__"


# --- the pytest fixtures -------------------------------------------------------------------------


def test_the_fixture_gives_a_running_emulator_in_a_sync_test(ohip_emulator: LazyEmulator) -> None:
    assert ohip_emulator.running
    assert ohip_emulator.publish_sync(3) == ["1", "2", "3"]
    assert len(ohip_emulator.events()) == 3
    response = httpx.post(
        ohip_emulator.token_url,
        data={"grant_type": "client_credentials", "scope": SCOPE},
        headers={"x-app-key": ohip_emulator.app_key, "enterpriseId": ohip_emulator.enterprise_id},
        auth=(ohip_emulator.client_id, ohip_emulator.client_secret),
        trust_env=False,
    )
    assert response.status_code == 200


async def test_the_fixture_works_in_async_tests(ohip_emulator: LazyEmulator) -> None:
    assert await ohip_emulator.publish(1) == ["1"]
    token = await ohip_emulator.issue_token()
    async with connect(
        ohip_emulator.subscriptions_url, subprotocols=["graphql-transport-ws"], proxy=None
    ) as ws:
        init = {"Authorization": f"Bearer {token}", "x-app-key": ohip_emulator.app_key}
        await ws.send(json.dumps({"type": "connection_init", "payload": init}))
        assert json.loads(await ws.recv()) == {"type": "connection_ack"}


def test_the_factory_fixture_makes_configured_emulators(
    ohip_emulator_factory: Callable[..., LazyEmulator],
) -> None:
    first = ohip_emulator_factory(chain_code="CHAIN1", first_offset=100)
    second = ohip_emulator_factory(chain_code="CHAIN2")
    assert first.port != second.port
    assert first.publish_sync(1) == ["100"]
    assert first.env()["OHIP_CHAIN_CODE"] == "CHAIN1"
    assert second.events() == []


# --- the foreground runner -----------------------------------------------------------------------


async def test_serve_foreground_writes_the_env_file_and_publishes(tmp_path: Path) -> None:
    from ohip_stream.testing import serve_foreground

    env_file = tmp_path / "emulator.env"
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.ensure_future(
        serve_foreground(
            host="127.0.0.1",
            port=0,
            rate=50.0,
            env_file=env_file,
            chain_code="DEMO",
            backlog=5,
            fast_replay=False,
            out=out,
            stop=stop,
            complete_gap=0.5,
        )
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while "publishing" not in out.getvalue():
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    lines = env_file.read_text().splitlines()
    assert lines[0].startswith("# written by ohip-stream emulator")
    assert env_file.stat().st_mode & 0o777 == 0o600
    env = dict(line.split("=", 1) for line in lines[1:])
    assert env["OHIP_CHAIN_CODE"] == "DEMO"
    assert env["OHIP_GATEWAY_URL"] in out.getvalue()
    assert str(env_file) in out.getvalue()
    for secret in (env["OHIP_APP_KEY"], env["OHIP_CLIENT_SECRET"]):
        assert secret not in out.getvalue()
    await asyncio.sleep(0.3)  # some events at 50 per second
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(
            env["OHIP_GATEWAY_URL"] + "/oauth/v1/tokens",
            data={"grant_type": "client_credentials", "scope": SCOPE},
            headers={"x-app-key": env["OHIP_APP_KEY"], "enterpriseId": env["OHIP_ENTERPRISE_ID"]},
            auth=(env["OHIP_CLIENT_ID"], env["OHIP_CLIENT_SECRET"]),
        )
    assert response.status_code == 200
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    assert out.getvalue().rstrip().endswith("stopping")


async def test_serve_foreground_leaves_a_users_env_file_alone(tmp_path: Path) -> None:
    from ohip_stream import ConfigurationError
    from ohip_stream.testing import serve_foreground

    users = tmp_path / ".env"
    users.write_text("DATABASE_URL=postgres://me\nOHIP_CLIENT_SECRET=real\n")
    users.chmod(0o644)
    with pytest.raises(ConfigurationError, match=r"\.env.*not written by the emulator"):
        await serve_foreground(port=0, rate=0, env_file=users, stop=asyncio.Event())
    assert users.read_text() == "DATABASE_URL=postgres://me\nOHIP_CLIENT_SECRET=real\n"
    assert users.stat().st_mode & 0o777 == 0o644


async def test_serve_foreground_rewrites_its_own_env_file(tmp_path: Path) -> None:
    from ohip_stream.testing import serve_foreground
    from ohip_stream.testing._foreground import ENV_MARKER

    ours = tmp_path / ".env"
    ours.write_text(ENV_MARKER + "\nOHIP_GATEWAY_URL=http://old\n")
    out = io.StringIO()
    stop = asyncio.Event()
    task = asyncio.ensure_future(
        serve_foreground(port=0, rate=0, env_file=ours, out=out, stop=stop)
    )
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while "Ctrl-C" not in out.getvalue():
        assert loop.time() < deadline
        await asyncio.sleep(0.02)
    stop.set()
    assert await asyncio.wait_for(task, 5) == 0
    text = ours.read_text()
    assert text.startswith(ENV_MARKER + "\n")
    assert "http://old" not in text
    assert "OHIP_CLIENT_SECRET=" in text


def test_the_foreground_and_the_cli_share_one_marker() -> None:
    # Either tool must recognise the other's file, so the two marker lines are the same text.
    pytest.importorskip("typer")
    from ohip_stream._cli._emulator import MARKER
    from ohip_stream.testing._foreground import ENV_MARKER

    assert ENV_MARKER == MARKER


def test_python_m_runs_until_sigterm(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "ohip_stream.testing",
            *("--port", "0", "--rate", "5", "--env-file", str(env_file), "--backlog", "3"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "error"},
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert first.startswith("OHIP emulator listening on http://127.0.0.1:")
        while "publishing" not in process.stdout.readline():
            pass
        process.send_signal(signal.SIGTERM)
        output, errors = process.communicate(timeout=10)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0, errors
    assert "stopping" in output
    assert "OHIP_APP_KEY=" in env_file.read_text()


# --- the generator -------------------------------------------------------------------------------


def test_generated_events_validate_and_cover_the_modules() -> None:
    events = EventFactory(seed=7).events(1500)
    for event in events:
        Event.model_validate(event)
        Event.model_validate_json(json.dumps(event))
    names = {(e["moduleName"], e["eventName"]) for e in events}
    for expected in [
        ("RESERVATION", "NEW RESERVATION"),
        ("RESERVATION", "UPDATE RESERVATION"),
        ("RESERVATION", "CHECK IN"),
        ("RESERVATION", "CHECK OUT"),
        ("RESERVATION", "CANCEL RESERVATION"),
        ("RESERVATION", "NO SHOW"),
        ("PROFILE", "NEW PROFILE"),
        ("PROFILE", "UPDATE PROFILE"),
        ("HOUSEKEEPING", "UPDATE ROOM STATUS"),
        ("BLOCK", "NEW BLOCK"),
        ("CASHIERING", "NEW POSTING"),
    ]:
        assert expected in names
    assert all(e["hotelId"] is None for e in events if e["moduleName"] == "PROFILE")
    assert {e["hotelId"] for e in events} >= {"HOTEL1", "HOTEL2", "HOTEL3", None}
    new = [e for e in events if e["eventName"] == "NEW RESERVATION"]
    assert all(d["oldValue"] == "" for e in new for d in e["detail"])
    element_names = {d["elementName"] for e in events for d in e["detail"]}
    assert {"ADULTS", "CHILDREN", "ARRIVAL DATE", "DEPARTURE DATE", "ROOM TYPE", "RATE CODE"} <= (
        element_names
    )
    assert {"FIRST NAME", "LAST NAME", "ROOM STATUS"} <= element_names
    assert any("&amp;" in (d["newValue"] or "") for e in events for d in e["detail"])
    assert any(d["scopeFrom"] and d["scopeTo"] for e in events for d in e["detail"])
    updates = [e for e in events if e["eventName"] == "UPDATE RESERVATION"]
    assert any(d["oldValue"] == d["newValue"] for e in updates for d in e["detail"])
    assert any(d["oldValue"] != d["newValue"] for e in updates for d in e["detail"])
    parsed = Event.model_validate(events[0])
    assert parsed.occurred_at is not None  # Oracle's 28-APR-24 06.18.59.028027 AM form
    assert all(e["publisherId"].isdigit() and e["actionInstanceId"].isdigit() for e in events)


def test_the_generator_is_seeded() -> None:
    assert EventFactory(3).events(50) == EventFactory(3).events(50)
    assert EventFactory(3).events(50) != EventFactory(4).events(50)


def test_make_event_builds_the_wire_form() -> None:
    event = make_event(
        "PROFILE",
        "UPDATE PROFILE",
        hotel_id=None,
        primary_key="77",
        detail=[
            {"element_name": "LAST NAME", "old_value": "Smith", "new_value": "Jones"},
            make_detail("FIRST NAME", "Ann", "Ann"),
        ],
        publisher_id="12",
        customField="kept",
    )
    assert event["primaryKey"] == "77"
    assert event["publisherId"] == "12"
    assert event["customField"] == "kept"
    assert event["detail"][0]["elementName"] == "LAST NAME"
    assert event["detail"][0]["scopeFrom"] is None
    model = Event.model_validate(event)
    assert [d.element_name for d in model.changed_elements()] == ["LAST NAME"]
    assert make_event()["primaryKey"].isdigit()


def test_make_event_needs_no_aiohttp() -> None:
    code = (
        "import sys; sys.modules['aiohttp'] = None\n"
        "from ohip_stream.testing import make_event, EventFactory\n"
        "assert make_event()['moduleName'] == 'RESERVATION'\n"
        "EventFactory(1).events(10)\n"
        "try:\n"
        "    from ohip_stream.testing import Emulator\n"
        "except ModuleNotFoundError as exc:\n"
        "    assert 'ohip-stream[emulator]' in str(exc)\n"
        "else:\n"
        "    raise SystemExit('Emulator imported without aiohttp')\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert result.returncode == 0, result.stderr


# --- logs hold no secret -------------------------------------------------------------------------


async def test_no_secret_or_key_hash_in_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    async with LazyEmulator(complete_gap=0.1) as emu:
        await emu.publish(2)
        async with httpx.AsyncClient(trust_env=False) as http:
            response = await http.post(
                emu.token_url,
                data={"grant_type": "password", "username": emu.username, "password": emu.password},
                headers={"x-app-key": emu.app_key},
                auth=(emu.client_id, emu.client_secret),
            )
            token = response.json()["access_token"]
            refused = await http.post(
                emu.token_url,
                data={"grant_type": "client_credentials", "scope": SCOPE},
                headers={"x-app-key": emu.app_key, "enterpriseId": "WRONG"},
                auth=(emu.client_id, emu.client_secret),
            )
            assert refused.status_code == 400
        async with connect(
            emu.subscriptions_url, subprotocols=["graphql-transport-ws"], proxy=None
        ) as ws:
            init = {"Authorization": f"Bearer {token}", "x-app-key": emu.app_key}
            await ws.send(json.dumps({"type": "connection_init", "payload": init}))
            await ws.recv()
            query = 'subscription { newEvent(input: { chainCode: "OHIPCN" }) { primaryKey } }'
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
            await ws.recv()
            await ws.recv()
            await ws.send(json.dumps({"id": "1", "type": "complete"}))
            await ws.wait_closed()
        secrets = (emu.app_key, emu.key_hash, emu.client_secret, emu.password, token)
    text = caplog.text + "\n".join(str(record.args) for record in caplog.records)
    assert "connection 1 opened" in text
    for secret in secrets:
        assert secret not in text
