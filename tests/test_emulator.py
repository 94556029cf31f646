"""The emulator over real sockets, driven by a plain websockets client and httpx.

The client sends exactly what Oracle's docs show (protocol §1-§4); timings are compressed.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from ohip_stream._models import Event
from ohip_stream.testing import Emulator, make_event

SUBPROTOCOLS: Any = ["graphql-transport-ws"]
SCOPE = "urn:opc:hgbu:ws:__myscopes__"
FIELDS = (
    "metadata { offset uniqueEventId } moduleName eventName primaryKey timestamp hotelId "
    "publisherId actionInstanceId detail { elementName elementType elementSequence elementRole "
    "newValue oldValue scopeFrom scopeTo }"
)


class FakeClock:
    """A wall clock the test moves by hand."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# --- helpers ------------------------------------------------------------------------------------


def subscribe_message(input_literal: str, sub_id: str = "1") -> str:
    """Oracle's subscribe message, the input inline (protocol §2)."""
    query = f"subscription {{ newEvent(input: {{ {input_literal} }}) {{ {FIELDS} }} }}"
    return json.dumps(
        {
            "id": sub_id,
            "type": "subscribe",
            "payload": {
                "variables": {},
                "extensions": {},
                "operationName": None,
                "query": query,
            },
        }
    )


def init_message(token: str, app_key: str) -> str:
    return json.dumps(
        {
            "type": "connection_init",
            "payload": {"Authorization": f"Bearer {token}", "x-app-key": app_key},
        }
    )


async def fetch_token(emu: Emulator, **kwargs: Any) -> str:
    verify = kwargs.pop("verify", True)
    async with httpx.AsyncClient(verify=verify, trust_env=False) as http:
        response = await http.post(
            emu.token_url,
            data={"grant_type": "client_credentials", "scope": SCOPE},
            headers={"x-app-key": emu.app_key, "enterpriseId": emu.enterprise_id},
            auth=(emu.client_id, emu.client_secret),
        )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


@contextlib.asynccontextmanager
async def session(
    emu: Emulator, token: str | None = None, *, init: bool = True, **connect_kwargs: Any
) -> AsyncIterator[ClientConnection]:
    """A connection, initialised and acknowledged unless ``init=False``."""
    connect_kwargs.setdefault("proxy", None)
    async with connect(emu.subscriptions_url, subprotocols=SUBPROTOCOLS, **connect_kwargs) as ws:
        if init:
            token = token or await emu.issue_token()
            await ws.send(init_message(token, emu.app_key))
            assert json.loads(await recv(ws)) == {"type": "connection_ack"}
        yield ws


async def recv(ws: ClientConnection, timeout: float = 3.0) -> str:
    data = await asyncio.wait_for(ws.recv(), timeout)
    assert isinstance(data, str)
    return data


async def recv_event(ws: ClientConnection, timeout: float = 3.0) -> dict[str, Any]:
    """The next ``newEvent`` (server pings are answered and skipped)."""
    while True:
        message = json.loads(await recv(ws, timeout))
        if message["type"] == "ping":
            await ws.send('{"type":"pong"}')
            continue
        assert message["type"] == "next", message
        event: dict[str, Any] = message["payload"]["data"]["newEvent"]
        return event


async def offsets(ws: ClientConnection, count: int) -> list[str]:
    return [(await recv_event(ws))["metadata"]["offset"] for _ in range(count)]


async def closed(ws: ClientConnection, timeout: float = 3.0) -> tuple[int | None, str | None]:
    """Read until the connection closes; the close code and reason the client saw."""

    async def drain() -> None:
        with contextlib.suppress(ConnectionClosed):
            while True:
                await ws.recv()

    await asyncio.wait_for(drain(), timeout)
    return ws.close_code, ws.close_reason


async def nothing_more(ws: ClientConnection, wait: float = 0.2) -> None:
    with pytest.raises((asyncio.TimeoutError, TimeoutError)):
        await asyncio.wait_for(ws.recv(), wait)


async def wait_until(check: Callable[[], bool], timeout: float = 3.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
async def emu() -> AsyncIterator[Emulator]:
    async with Emulator(complete_gap=0.2) as emulator:
        yield emulator


# --- OAuth (protocol §8) ------------------------------------------------------------------------


def _claims(token: str) -> dict[str, Any]:
    header, body, signature = token.split(".")
    assert signature
    claims: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    assert json.loads(base64.urlsafe_b64decode(header + "=" * (-len(header) % 4)))["typ"] == "JWT"
    return claims


async def test_oauth_both_grants_issue_jwt_shaped_tokens(emu: Emulator) -> None:
    async with httpx.AsyncClient(trust_env=False) as http:
        client_credentials = await http.post(
            emu.token_url,
            data={"grant_type": "client_credentials", "scope": SCOPE},
            headers={"x-app-key": emu.app_key, "enterpriseId": emu.enterprise_id},
            auth=(emu.client_id, emu.client_secret),
        )
        password = await http.post(
            emu.token_url,
            data={"grant_type": "password", "username": emu.username, "password": emu.password},
            headers={"x-app-key": emu.app_key},
            auth=(emu.client_id, emu.client_secret),
        )
    for response in (client_credentials, password):
        assert response.status_code == 200
        body = response.json()
        assert body["expires_in"] == 3600
        assert body["token_type"] == "Bearer"
        assert body["oracle_tk_context"] == "user_assertion"
        claims = _claims(body["access_token"])
        assert claims["exp"] - claims["iat"] == 3600
        assert claims["jti"]
    assert _claims(client_credentials.json()["access_token"])["sub"] == emu.client_id
    assert _claims(password.json()["access_token"])["sub"] == emu.username
    assert emu.enterprise_id.isalnum()
    assert emu.enterprise_id.isupper()
    assert len(emu.enterprise_id) <= 8


@pytest.mark.parametrize(
    ("change", "status", "error"),
    [
        ({"auth": ("wrong", "secret")}, 401, "invalid_client"),
        ({"app_key": "not-the-key"}, 401, "invalid_client"),
        ({"enterprise": "OTHER"}, 400, "invalid_request"),
        ({"data": {"scope": SCOPE}}, 400, "invalid_request"),
        ({"data": {"grant_type": "authorization_code"}}, 400, "unsupported_grant_type"),
        (
            {"data": {"grant_type": "password", "username": "u", "password": "p"}},
            401,
            "invalid_grant",
        ),
    ],
)
async def test_oauth_refusals(
    emu: Emulator, change: dict[str, Any], status: int, error: str
) -> None:
    headers = {"x-app-key": change.get("app_key", emu.app_key)}
    headers["enterpriseId"] = change.get("enterprise", emu.enterprise_id)
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(
            emu.token_url,
            data=change.get("data", {"grant_type": "client_credentials", "scope": SCOPE}),
            headers=headers,
            auth=change.get("auth", (emu.client_id, emu.client_secret)),
        )
    assert response.status_code == status
    assert response.json()["error"] == error
    assert response.json()["error_description"]


# --- the upgrade (protocol §1) -------------------------------------------------------------------


@pytest.mark.parametrize("url_of", ["wrong", "upper", "missing", "path"])
async def test_bad_key_or_url_is_http_400(emu: Emulator, url_of: str) -> None:
    base = emu.subscriptions_url.split("?")[0]
    url = {
        "wrong": f"{base}?key={'0' * 64}",
        "upper": f"{base}?key={emu.key_hash.upper()}",
        "missing": base,
        "path": emu.subscriptions_url.replace("/subscriptions", "/graphql"),
    }[url_of]
    with pytest.raises(InvalidStatus) as caught:
        async with connect(url, subprotocols=SUBPROTOCOLS, proxy=None):
            pass
    assert caught.value.response.status_code == 400
    assert b"Incorrect key or URL" in caught.value.response.body
    assert [u.status for u in emu.upgrades] == [400]
    assert emu.connections == []


async def test_upgrade_budget_gives_429_with_retry_after() -> None:
    async with Emulator(upgrade_budget=(2, 60.0)) as emu:
        for _ in range(2):
            async with session(emu, init=False):
                pass
        with pytest.raises(InvalidStatus) as caught:
            async with session(emu, init=False):
                pass
        assert caught.value.response.status_code == 429
        assert int(caught.value.response.headers["Retry-After"]) > 0
        assert [u.status for u in emu.upgrades] == [101, 101, 429]


async def test_reject_upgrades_on_demand(emu: Emulator) -> None:
    await emu.reject_upgrades(503, count=2)
    for _ in range(2):
        with pytest.raises(InvalidStatus) as caught:
            async with session(emu, init=False):
                pass
        assert caught.value.response.status_code == 503
    async with session(emu):
        pass
    assert [u.status for u in emu.upgrades] == [503, 503, 101]


# --- connection_init (protocol §1) ---------------------------------------------------------------


async def test_hash_as_app_key_is_4401(emu: Emulator) -> None:
    token = await fetch_token(emu)
    async with session(emu, init=False) as ws:
        await ws.send(init_message(token, emu.key_hash))
        code, reason = await closed(ws)
    assert code == 4401
    assert reason is not None
    assert "not the hash" in reason
    assert "send the application key, not its hash" in (emu.connections[0].close_reason or "")


@pytest.mark.parametrize("what", ["wrong key", "unknown token", "no bearer"])
async def test_bad_credentials_at_init_are_4401(emu: Emulator, what: str) -> None:
    token = await emu.issue_token()
    payload: dict[str, Any] = {"Authorization": f"Bearer {token}", "x-app-key": emu.app_key}
    if what == "wrong key":
        payload["x-app-key"] = "11111111-2222-4333-8444-555555555555"
    elif what == "unknown token":
        payload["Authorization"] = "Bearer eyJhbGciOiJub25lIn0.eyJzdWIiOiJ4In0.c2ln"
    else:
        del payload["Authorization"]
    async with session(emu, init=False) as ws:
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        code, _ = await closed(ws)
    assert code == 4401


async def test_extra_init_payload_keys_and_upgrade_authorization_header_are_allowed(
    emu: Emulator,
) -> None:
    token = await fetch_token(emu)
    async with connect(
        emu.subscriptions_url,
        subprotocols=SUBPROTOCOLS,
        additional_headers={"Authorization": f"Bearer {token}"},
        proxy=None,
    ) as ws:
        assert ws.subprotocol == "graphql-transport-ws"
        payload = {
            "Authorization": f"Bearer {token}",
            "x-app-key": emu.app_key,
            "enterpriseId": emu.enterprise_id,
        }
        await ws.send(json.dumps({"type": "connection_init", "payload": payload}))
        assert json.loads(await recv(ws)) == {"type": "connection_ack"}


async def test_the_subprotocol_is_required(emu: Emulator) -> None:
    async with connect(emu.subscriptions_url, proxy=None) as ws:
        assert ws.subprotocol is None
        assert await closed(ws) == (4406, "Subprotocol not acceptable")


async def test_init_rules_timeout_reinit_and_subscribe_before_init() -> None:
    async with Emulator(init_timeout=0.3) as emu:
        async with session(emu, init=False) as ws:
            assert await closed(ws) == (4408, "Connection initialisation timeout")
        async with session(emu) as ws:
            await ws.send(init_message(await emu.issue_token(), emu.app_key))
            assert await closed(ws) == (4429, "Too many initialisation requests")
        async with session(emu, init=False) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            code, _ = await closed(ws)
            assert code == 4401


async def test_expired_token_is_refused_and_live_connection_closed() -> None:
    clock = FakeClock()
    async with Emulator(clock=clock, token_ttl=60.0) as emu:
        old = await fetch_token(emu)
        clock.advance(61)
        async with session(emu, init=False) as ws:
            await ws.send(init_message(old, emu.app_key))
            assert await closed(ws) == (4401, "token expired")
        # a live connection is closed when its token expires (checked every second)
        async with session(emu, await fetch_token(emu)) as ws:
            clock.advance(61)
            assert await closed(ws, timeout=2.5) == (4401, "token expired")
        # and at once on expire_tokens()
        async with session(emu) as ws:
            assert await emu.expire_tokens() == 1
            assert await closed(ws) == (4401, "token expired")


async def test_revoked_credentials_refuse_oauth_and_tokens_until_restored(emu: Emulator) -> None:
    token = await fetch_token(emu)
    await emu.revoke_credentials()
    async with httpx.AsyncClient(trust_env=False) as http:
        response = await http.post(
            emu.token_url,
            data={"grant_type": "client_credentials", "scope": SCOPE},
            headers={"x-app-key": emu.app_key, "enterpriseId": emu.enterprise_id},
            auth=(emu.client_id, emu.client_secret),
        )
    assert response.status_code == 401
    async with session(emu, init=False) as ws:
        await ws.send(init_message(token, emu.app_key))
        code, _ = await closed(ws)
        assert code == 4401
    await emu.restore_credentials()
    async with session(emu, token):
        pass


# --- subscribe (protocol §2) ---------------------------------------------------------------------


@pytest.mark.parametrize("form", ["inline", "variables"])
async def test_invalid_chain_code_is_4400_with_a_message(emu: Emulator, form: str) -> None:
    async with session(emu) as ws:
        if form == "inline":
            await ws.send(subscribe_message('chainCode: "A!"'))
        else:
            query = (
                "subscription Events($input: NewEventInput!) "
                f"{{ newEvent(input: $input) {{ {FIELDS} }} }}"
            )
            payload = {"variables": {"input": {"chainCode": "A!"}}, "query": query}
            await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        code, reason = await closed(ws)
    assert code == 4400
    assert reason is not None
    assert "chainCode" in reason
    assert "'A!'" in reason
    assert emu.connections[0].subscribe_inputs == [{"chainCode": "A!"}]


@pytest.mark.parametrize(
    ("query", "fragment"),
    [
        ('subscription { newEvent(input: {chainCode: "X"}) { nope } }', "Cannot query field"),
        ('subscription { newEvent(input: {chainCode: "X"}) {', "Syntax Error"),
        (
            'subscription { newEvent(input: {chainCode: "X", offset: "1a"}) { primaryKey } }',
            "offset",
        ),
        ('subscription { newEvent(input: {offset: "1"}) { primaryKey } }', "chainCode"),
    ],
)
async def test_schema_errors_are_4400(emu: Emulator, query: str, fragment: str) -> None:
    async with session(emu) as ws:
        payload = {"variables": {}, "extensions": {}, "operationName": None, "query": query}
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": payload}))
        code, reason = await closed(ws)
    assert code == 4400
    assert fragment in (emu.connections[0].close_reason or "")
    assert reason


async def test_variables_input_is_accepted(emu: Emulator) -> None:
    await emu.publish(3)
    query = f"subscription ($input: NewEventInput!) {{ newEvent(input: $input) {{ {FIELDS} }} }}"
    payload = {"variables": {"input": {"chainCode": "OHIPCN", "offset": "2"}}, "query": query}
    async with session(emu) as ws:
        await ws.send(json.dumps({"id": "7", "type": "subscribe", "payload": payload}))
        assert await offsets(ws, 2) == ["2", "3"]


async def test_replay_from_offset_is_inclusive_then_live(emu: Emulator) -> None:
    assert await emu.publish(10) == [str(n) for n in range(1, 11)]
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN" offset: "4"'))
        assert await offsets(ws, 7) == [str(n) for n in range(4, 11)]
        await nothing_more(ws)
        await emu.publish(2)
        assert await offsets(ws, 2) == ["11", "12"]
    record = emu.connections[0]
    assert (record.first_offset_sent, record.last_offset_sent, record.events_sent) == ("4", "12", 9)


async def test_events_are_full_and_unique(emu: Emulator) -> None:
    await emu.publish(20)
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN"'))
        received = [await recv_event(ws) for _ in range(20)]
    assert received == emu.events()
    assert len({event["metadata"]["uniqueEventId"] for event in received}) == 20
    for event in received:
        Event.model_validate_json(json.dumps(event))


async def test_resume_without_offset_and_first_ever_starts_at_oldest() -> None:
    clock = FakeClock()
    async with Emulator(clock=clock, complete_gap=5.0, resume_ttl=100.0) as emu:
        await emu.publish(3)
        async with session(emu) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            assert await offsets(ws, 3) == ["1", "2", "3"]  # first ever: the oldest event
            await ws.send(json.dumps({"id": "1", "type": "complete"}))
            assert await closed(ws) == (1000, "Normal Closure")
        await emu.publish(2)
        clock.advance(6)  # past the gap
        async with session(emu) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            assert await offsets(ws, 2) == ["4", "5"]  # where the last connection stopped
        clock.advance(101)  # past the resume window: back to the oldest retained event
        async with session(emu) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            assert await offsets(ws, 1) == ["1"]


async def test_highest_starts_at_the_newest_event(emu: Emulator) -> None:
    await emu.publish(5)
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN" offsetType: "highest"'))
        assert await offsets(ws, 1) == ["5"]
        await nothing_more(ws)
        await emu.publish(1)
        assert await offsets(ws, 1) == ["6"]


async def test_retention_drops_old_events() -> None:
    clock = FakeClock()
    async with Emulator(clock=clock, retention=100.0) as emu:
        await emu.publish(2)
        clock.advance(150)
        await emu.publish(2)
        async with session(emu) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN" offset: "1"'))
            assert await offsets(ws, 2) == ["3", "4"]


async def test_delta_sends_only_changed_elements(emu: Emulator) -> None:
    detail = [
        {"element_name": "ADULTS", "old_value": "1", "new_value": "2"},
        {"elementName": "ARRIVAL DATE", "oldValue": "2024-05-01", "newValue": "2024-05-01"},
    ]
    await emu.publish(events=[make_event("RESERVATION", "UPDATE RESERVATION", detail=detail)])
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN" delta: true'))
        event = await recv_event(ws)
    assert [d["elementName"] for d in event["detail"]] == ["ADULTS"]
    assert len(emu.events()[0]["detail"]) == 2


async def test_hotel_code_filters_and_skips_chain_level_events(emu: Emulator) -> None:
    await emu.publish(
        events=[
            make_event(hotel_id="HOTEL1"),
            make_event("PROFILE", "NEW PROFILE", hotel_id=None),
            make_event(hotel_id="HOTEL2"),
            make_event(hotel_id="HOTEL3"),
        ]
    )
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN" hotelCode: "HOTEL2,HOTEL3"'))
        received = [await recv_event(ws) for _ in range(2)]
        await nothing_more(ws)
    assert [(e["hotelId"], e["metadata"]["offset"]) for e in received] == [
        ("HOTEL2", "3"),
        ("HOTEL3", "4"),
    ]


async def test_a_partial_selection_gets_only_its_fields(emu: Emulator) -> None:
    await emu.publish(1)
    query = (
        'subscription { newEvent(input: {chainCode: "OHIPCN"}) '
        "{ metadata { offset } e: eventName } }"
    )
    async with session(emu) as ws:
        await ws.send(json.dumps({"id": "1", "type": "subscribe", "payload": {"query": query}}))
        assert await recv_event(ws) == {
            "metadata": {"offset": "1"},
            "e": emu.events()[0]["eventName"],
        }


async def test_second_subscription_on_one_connection_is_4409(emu: Emulator) -> None:
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN"'))
        await ws.send(subscribe_message('chainCode: "OHIPCN"', sub_id="2"))
        assert await closed(ws) == (4409, "Subscriber for 2 already exists")


# --- one consumer per stream (protocol §7), the gap (protocol §4) ------------------------------


async def test_second_consumer_is_4409_and_a_refused_one_holds_nothing(emu: Emulator) -> None:
    async with session(emu) as first:
        await first.send(subscribe_message('chainCode: "OHIPCN"'))
        await wait_until(lambda: emu.connections[0].subscribed_at is not None)
        async with session(emu) as second:  # acknowledged, refused at subscribe
            await second.send(subscribe_message('chainCode: "OHIPCN"'))
            code, reason = await closed(second)
            assert code == 4409
            assert reason is not None
            assert "consumer" in reason
        # another chain of the same key is another stream
        async with session(emu) as other:
            await other.send(subscribe_message('chainCode: "OTHER"'))
            await nothing_more(other)
        await emu.publish(1)
        assert await offsets(first, 1) == ["1"]
    # the first left without complete: no gap; the refused one held nothing
    async with session(emu) as third:
        await third.send(subscribe_message('chainCode: "OHIPCN"'))
        await emu.publish(1)
        assert await offsets(third, 1) == ["2"]  # resumed after the last event sent
    assert [r.connection_id for r in emu.subscribe_rejections] == [2]


async def test_subscribe_within_the_gap_after_complete_is_4409(emu: Emulator) -> None:
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN"'))
        await wait_until(lambda: emu.connections[0].subscribed_at is not None)
        await ws.send(json.dumps({"id": "1", "type": "complete"}))
        assert await closed(ws) == (1000, "Normal Closure")
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN"'))
        code, _ = await closed(ws)
    assert code == 4409
    assert "subscribed too soon after complete" in (emu.connections[1].close_reason or "")
    await asyncio.sleep(0.25)  # complete_gap=0.2
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN"'))
        await nothing_more(ws)


async def test_hold_after_drop() -> None:
    clock = FakeClock()
    async with Emulator(clock=clock, hold_after_drop=30.0) as emu:
        async with session(emu) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            await wait_until(lambda: emu.connections[0].subscribed_at is not None)
            assert await emu.drop() == 1
            assert await closed(ws) == (1006, "")
        async with session(emu) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            code, _ = await closed(ws)
            assert code == 4409
        clock.advance(31)
        async with session(emu) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            await nothing_more(ws)


async def test_connection_status_query_then_subscribe_on_the_same_socket(emu: Emulator) -> None:
    status_query = json.dumps(
        {
            "id": "q1",
            "type": "subscribe",
            "payload": {"query": "query { connection { id status } }"},
        }
    )
    async with session(emu) as standby:
        await standby.send(status_query)
        answer = json.loads(await recv(standby))
        assert answer["payload"]["data"]["connection"]["status"] == "Inactive"
        assert json.loads(await recv(standby)) == {"id": "q1", "type": "complete"}
        async with session(emu) as active:
            await active.send(subscribe_message('chainCode: "OHIPCN"'))
            await wait_until(lambda: emu.connections[1].subscribed_at is not None)
            await standby.send(status_query.replace("q1", "q2"))
            answer = json.loads(await recv(standby))
            assert answer["payload"]["data"]["connection"]["status"] == "Active"
            assert json.loads(await recv(standby))["type"] == "complete"
        # the active one is gone (closed without complete): the standby takes over
        await wait_until(lambda: not emu.connections[1].open)
        await standby.send(status_query.replace("q1", "q3"))
        assert json.loads(await recv(standby))["payload"]["data"]["connection"]["status"] == (
            "Inactive"
        )
        await recv(standby)
        await standby.send(subscribe_message('chainCode: "OHIPCN"'))
        await emu.publish(1)
        assert await offsets(standby, 1) == ["1"]
        await standby.send(
            json.dumps(
                {"id": "h", "type": "subscribe", "payload": {"query": "{ getHelp { email } }"}}
            )
        )
        assert json.loads(await recv(standby))["payload"]["data"]["getHelp"]["email"]


# --- complete (protocol §4) --------------------------------------------------------------------


async def test_complete_stops_new_events_and_the_server_closes(emu: Emulator) -> None:
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN"'))
        await emu.publish(2)
        assert await offsets(ws, 2) == ["1", "2"]
        await ws.send(json.dumps({"id": "1", "type": "complete"}))
        await wait_until(lambda: emu.connections[0].completed_at is not None)
        await emu.publish(1)  # arrives after the complete: not sent
        assert await closed(ws) == (1000, "Normal Closure")
    record = emu.connections[0]
    assert record.closed_by == "server"
    assert record.complete_before_close
    assert record.events_sent == 2
    assert record.events_after_complete == 0


async def test_complete_sends_what_is_in_flight_then_closes() -> None:
    async with Emulator() as emu:
        await emu.load_backlog(20_000)
        async with session(emu, max_queue=2) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            received = await offsets(ws, 5)
            await ws.send(json.dumps({"id": "1", "type": "complete"}))
            with contextlib.suppress(ConnectionClosed):
                while True:
                    received.append((await recv_event(ws))["metadata"]["offset"])
            assert (ws.close_code, ws.close_reason) == (1000, "Normal Closure")
        record = emu.connections[0]
        assert received == [str(n) for n in range(1, len(received) + 1)]
        assert len(received) == record.events_sent < 20_000
        assert record.events_after_complete <= 3
        assert record.closed_by == "server"


async def test_a_slow_client_slows_the_server() -> None:
    async with Emulator(fast_replay=True) as emu:
        await emu.load_backlog(30_000)
        # a client whose queue is full stops reading: it would not see a close frame in time
        async with session(emu, max_queue=2, close_timeout=0.1) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            assert await offsets(ws, 3) == ["1", "2", "3"]
            await asyncio.sleep(0.3)
            assert emu.connections[0].events_sent < 30_000


async def test_client_close_after_complete_counts_as_completed(emu: Emulator) -> None:
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN"'))
        await ws.send(json.dumps({"id": "1", "type": "complete"}))
        await ws.close()
    await wait_until(lambda: not emu.connections[0].open)
    assert emu.connections[0].complete_before_close
    async with session(emu) as again:
        await again.send(subscribe_message('chainCode: "OHIPCN"'))
        code, _ = await closed(again)
        assert code == 4409  # inside the gap


async def test_complete_without_close_keeps_the_socket_open_and_answers_pings() -> None:
    clock = FakeClock()
    async with Emulator(clock=clock, complete_gap=5.0) as emu:
        await _complete_without_close_scenario(emu, clock)


async def _complete_without_close_scenario(emu: Emulator, clock: FakeClock) -> None:
    assert await emu.complete_without_close() == 0  # nothing subscribed yet
    await emu.publish(2)
    async with session(emu) as ws, session(emu) as rival:
        await ws.send(subscribe_message('chainCode: "OHIPCN"', sub_id="s1"))
        assert await offsets(ws, 2) == ["1", "2"]
        assert await emu.complete_without_close() == 1
        assert json.loads(await recv(ws)) == {"id": "s1", "type": "complete"}
        await emu.publish(1)  # no event follows the server's complete
        await nothing_more(ws)
        await ws.send('{"type":"ping"}')
        assert json.loads(await recv(ws)) == {"type": "pong"}
        assert await emu.complete_without_close() == 0  # already completed
        record = emu.connections[0]
        assert record.open
        assert record.server_completed_at is not None
        assert record.completed_at is None  # the client never sent complete
        assert (record.events_sent, record.last_offset_sent) == (2, "2")
        # the stream stays held while the socket is open (protocol §7)
        await rival.send(subscribe_message('chainCode: "OHIPCN"'))
        code, reason = await closed(rival)
        assert code == 4409
        assert "already has a consumer" in (reason or "")
        await ws.close()  # the client closes after its drain timeout (1000)
    first = emu.connections[0]
    assert (first.close_code, first.closed_by) == (1000, "client")
    async with session(emu) as again:  # inside the gap counted from the server's complete
        await again.send(subscribe_message('chainCode: "OHIPCN"'))
        code, reason = await closed(again)
        assert code == 4409
        assert "too soon after complete" in (reason or "")
    clock.advance(5.0)  # the gap is over
    async with session(emu) as later:  # resumes after the last event sent
        await later.send(subscribe_message('chainCode: "OHIPCN"'))
        assert await offsets(later, 1) == ["3"]


async def test_records_tell_whether_subscriptions_of_a_stream_overlapped(emu: Emulator) -> None:
    async with session(emu) as first:
        await first.send(subscribe_message('chainCode: "OHIPCN"'))
        await wait_until(lambda: emu.connections[0].subscribed_at is not None)
        async with session(emu) as refused:
            await refused.send(subscribe_message('chainCode: "OHIPCN"'))
            assert (await closed(refused))[0] == 4409
        async with session(emu) as other:
            await other.send(subscribe_message('chainCode: "OTHER"'))
            await wait_until(lambda: emu.connections[2].subscribed_at is not None)
    await wait_until(lambda: not emu.connections[0].open)
    async with session(emu) as after:
        await after.send(subscribe_message('chainCode: "OHIPCN"'))
        await wait_until(lambda: emu.connections[3].subscribed_at is not None)
    await wait_until(lambda: not emu.connections[3].open)
    records = emu.connections
    one, two, other_chain, four = records
    assert one.stream_key == four.stream_key != other_chain.stream_key
    assert two.stream_key is None  # refused: it never held the stream
    assert one.subscribed_monotonic is not None
    assert one.closed_monotonic is not None
    assert one.subscribed_monotonic <= one.closed_monotonic
    assert emu.overlapping_subscriptions() == []
    async with Emulator(fast_replay=True) as lax:  # no one-consumer rule: they overlap
        async with session(lax) as a, session(lax) as b:
            for ws in (a, b):
                await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            await wait_until(lambda: all(r.subscribed_at for r in lax.connections))
            pairs = lax.overlapping_subscriptions()
        assert [(x.id, y.id) for x, y in pairs] == [(1, 2)]


# --- pings (protocol §4) -------------------------------------------------------------------------


async def test_idle_close_without_client_pings() -> None:
    async with Emulator(idle_timeout=0.5) as emu, session(emu) as ws:
        assert await closed(ws) == (1000, "idle: no ping received")


async def test_server_pings_and_pongs() -> None:
    async with Emulator(server_ping_interval=0.2, idle_timeout=0.6) as emu:
        async with session(emu) as ws:
            assert json.loads(await recv(ws)) == {"type": "ping"}
            await ws.send('{"type":"pong"}')
            for _ in range(4):  # pinging keeps the connection open past idle_timeout
                await ws.send('{"type":"ping"}')
                while json.loads(await recv(ws))["type"] != "pong":
                    pass
                await asyncio.sleep(0.2)
        record = emu.connections[0]
        assert "pong" in record.message_types
        assert record.pings_received == record.pongs_sent == 4
        assert record.close_code == 1000
        assert record.closed_by == "client"


@pytest.mark.parametrize("defer", [True, False])
async def test_pong_deferred_during_a_burst(emu: Emulator, defer: bool) -> None:
    async with session(emu, max_queue=2) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN"'))
        await wait_until(lambda: emu.connections[0].subscribed_at is not None)
        burst = asyncio.ensure_future(emu.burst(3000, defer_pong=defer))
        kinds = [json.loads(await recv(ws))["type"]]
        await ws.send('{"type":"ping"}')
        while len(kinds) < 3001:
            kinds.append(json.loads(await recv(ws))["type"])
        assert len(await burst) == 3000
    pong_at = kinds.index("pong")
    if defer:
        assert pong_at == 3000  # after the last event of the burst
    else:
        assert pong_at < 3000


async def test_a_burst_does_not_wait_on_a_filtered_subscription(emu: Emulator) -> None:
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN" hotelCode: "NOWHERE"'))
        await wait_until(lambda: emu.connections[0].subscribed_at is not None)
        await ws.send('{"type":"ping"}')
        assert len(await asyncio.wait_for(emu.burst(20), 2.0)) == 20
        assert json.loads(await recv(ws)) == {"type": "pong"}


# --- faults (protocol §9) ------------------------------------------------------------------------


async def test_drop_gives_1006(emu: Emulator) -> None:
    async with session(emu) as ws:
        await emu.drop()
        code, _ = await closed(ws)
    assert code == 1006
    assert emu.connections[0].closed_by == "abort"
    assert emu.connections[0].close_code == 1006


async def test_close_with_any_code_and_a_truncated_reason(emu: Emulator) -> None:
    reason = "maintenance " + "é" * 100
    async with session(emu) as ws:
        assert await emu.close_with(1001, reason) == 1
        code, wire_reason = await closed(ws)
    assert code == 1001
    assert wire_reason is not None
    assert len(wire_reason.encode()) <= 123
    assert reason.startswith(wire_reason)
    assert emu.connections[0].close_reason == reason


async def test_send_raw_invalid_and_oversized(emu: Emulator) -> None:
    # with no live subscription nothing is sent, and the empty answers say so
    assert await emu.send_invalid_event() == ""
    assert await emu.send_oversized(200_000) == 0
    await emu.publish(1)
    async with session(emu, max_size=100_000) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN"', sub_id="abc"))
        await recv_event(ws)
        assert await emu.send_raw("not json {") == 1
        assert await recv(ws) == "not json {"
        raw = await emu.send_invalid_event()
        assert await recv(ws) == raw
        frame = json.loads(raw)
        assert frame["id"] == "abc"
        assert frame["type"] == "next"
        with pytest.raises(ValueError, match="validation error"):
            Event.model_validate_json(json.dumps(frame["payload"]["data"]["newEvent"]))
        assert await emu.send_oversized(200_000) == 1
        await closed(ws)
    # the client refused a frame above its max_size with 1009
    assert (emu.connections[0].close_code, emu.connections[0].closed_by) == (1009, "client")
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN" offset: "1"'))
        await recv_event(ws)
        await emu.send_oversized(200_000)
        big = await recv(ws)
        assert 190_000 < len(big.encode()) < 210_000
        assert json.loads(big)["payload"]["data"]["newEvent"]["metadata"]["offset"] == "1"
    assert len(emu.events()) == 1  # nothing of this was stored


async def test_publish_invalid_events_are_replayed_with_their_offset(emu: Emulator) -> None:
    await emu.publish(1)
    assert await emu.publish_invalid(1) == ["2"]
    async with session(emu) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN" offset: "2"'))
        event = await recv_event(ws)
    assert event["metadata"]["offset"] == "2"
    assert "eventName" not in event
    assert isinstance(event["primaryKey"], int)
    with pytest.raises(ValueError, match="validation error"):
        Event.model_validate_json(json.dumps(event))


async def test_restart_keeps_the_port_the_log_and_the_tokens(emu: Emulator) -> None:
    await emu.publish(3)
    port = emu.port
    token = await fetch_token(emu)
    async with session(emu, token) as ws:
        await emu.restart()
        code, _ = await closed(ws)
        assert code == 1006
    assert emu.port == port
    assert [e["metadata"]["offset"] for e in emu.events()] == ["1", "2", "3"]
    async with session(emu, token) as ws:
        await ws.send(subscribe_message('chainCode: "OHIPCN" offset: "3"'))
        assert await offsets(ws, 1) == ["3"]
    assert (await fetch_token(emu)) != token


async def test_tls_over_https_and_wss(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    authority = trustme.CA()
    certificate = authority.issue_cert("127.0.0.1", "localhost")
    certfile, keyfile = tmp_path / "cert.pem", tmp_path / "key.pem"
    certfile.write_bytes(b"".join(blob.bytes() for blob in certificate.cert_chain_pems))
    certificate.private_key_pem.write_to_path(str(keyfile))
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    async with Emulator(ssl_certfile=certfile, ssl_keyfile=keyfile) as emu:
        assert emu.gateway_url.startswith("https://")
        assert emu.subscriptions_url.startswith("wss://")
        token = await fetch_token(emu, verify=client_context)
        await emu.publish(1)
        async with session(emu, token, ssl=client_context) as ws:
            await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            assert await offsets(ws, 1) == ["1"]


async def test_fast_replay_lifts_the_one_consumer_rules() -> None:
    async with Emulator(fast_replay=True, upgrade_budget=(1, 60.0)) as emu:
        assert await emu.load_backlog(5000) == ["1", "5000"]
        async with session(emu) as one, session(emu) as two:
            for ws in (one, two):
                await ws.send(subscribe_message('chainCode: "OHIPCN"'))
            for ws in (one, two):
                received = await offsets(ws, 5000)
                assert received[-1] == "5000"
        sizes = [len(json.dumps(event)) for event in emu.events()[:256]]
        assert 550 < sum(sizes) / len(sizes) < 850
        for event in emu.events()[:50]:
            Event.model_validate_json(json.dumps(event))


# --- records, public surface ----------------------------------------------------------------------


async def test_records_describe_each_connection(emu: Emulator) -> None:
    await emu.publish(2)
    async with session(emu) as ws:
        await ws.send('{"type":"ping"}')
        await recv(ws)
        await ws.send(subscribe_message('chainCode: "OHIPCN" offset: "1"'))
        await offsets(ws, 2)
        await ws.send(json.dumps({"id": "1", "type": "complete"}))
        await closed(ws)
    (record,) = emu.connections
    assert record.message_types == ["connection_init", "ping", "subscribe", "complete"]
    assert record.subscribe_inputs == [{"chainCode": "OHIPCN", "offset": "1"}]
    assert record.subscription_id == "1"
    assert record.chain_code == "OHIPCN"
    assert record.opened_at <= record.subscribed_at <= record.completed_at  # type: ignore[operator]
    assert (record.close_code, record.closed_by, record.events_sent) == (1000, "server", 2)
    snapshot = emu.connections[0]
    snapshot.client_messages.clear()
    assert emu.connections[0].client_messages  # a copy: the server's record is untouched


async def test_repr_and_env_hold_no_secret_in_repr(emu: Emulator, tmp_path: Path) -> None:
    text = repr(emu)
    for secret in (emu.app_key, emu.key_hash, emu.client_secret, emu.password):
        assert secret not in text
    env = emu.env()
    assert env["OHIP_GATEWAY_URL"] == emu.gateway_url
    assert env["OHIP_APP_KEY"] == emu.app_key
    assert set(env) == {
        "OHIP_GATEWAY_URL",
        "OHIP_APP_KEY",
        "OHIP_CHAIN_CODE",
        "OHIP_CLIENT_ID",
        "OHIP_CLIENT_SECRET",
        "OHIP_ENTERPRISE_ID",
    }
    path = emu.write_env_file(tmp_path / ".env")
    assert f"OHIP_CLIENT_SECRET={emu.client_secret}" in path.read_text().splitlines()
    assert path.stat().st_mode & 0o077 == 0


async def test_event_models_can_be_published(emu: Emulator) -> None:
    model = Event.model_validate_json(json.dumps(make_event(primary_key="42")))
    await emu.publish(events=[model])
    (stored,) = emu.events()
    assert stored["primaryKey"] == "42"
    assert stored["metadata"]["offset"] == "1"


async def test_start_and_stop_are_idempotent_and_methods_need_a_running_emulator() -> None:
    emulator = Emulator()
    with pytest.raises(RuntimeError, match="not running"):
        await emulator.publish(1)
    emulator.start()
    emulator.start()
    port = emulator.port
    assert port > 0
    emulator.stop()
    emulator.stop()
    assert not emulator.running
