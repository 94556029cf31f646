"""The emulator's gateway rules, fed literal values: no event loop, no socket (protocol §1-§8).

Times are wall seconds passed in by hand; connections are their record ids.
"""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from ohip_stream.testing import ConnectionRecord, make_event
from ohip_stream.testing._eventlog import ChainLog
from ohip_stream.testing._gateway import (
    EmulatorConfig,
    Gateway,
    StartPlan,
    UpgradeBudget,
    hash_app_key,
    hotel_filter,
    truncate_reason,
)
from ohip_stream.testing._graphql import (
    Invalid,
    QueryRequest,
    SubscriptionRequest,
    answer_query,
    input_error,
    read_subscribe,
    renderer,
    subscribe_id,
)
from ohip_stream.testing._oauth import (
    Credentials,
    InitRefusal,
    OAuthRefusal,
    Token,
    TokenBook,
    TokenGrant,
    basic_credentials,
    check_init,
    decide_token_request,
)

T0 = 1_700_000_000.0
DAY = 86400.0
CHAIN = "OHIPCN"


def gateway(**settings: Any) -> Gateway:
    config = EmulatorConfig(**settings)
    return Gateway(config, hash_app_key("emulator-key"))


def publish(gw: Gateway, count: int, at: float, chain: str = CHAIN, **fields: Any) -> list[str]:
    log = gw.log(chain)
    return [log.store(make_event(**fields), at) for _ in range(count)]


def start(gw: Gateway, at: float, **values: Any) -> int:
    return gw.start_position(CHAIN, {"chainCode": CHAIN, **values}, at)


# --- offsets, replay, retention (protocol §6) ---------------------------------------------------


def test_offsets_are_consecutive_from_first_offset_with_unique_ids() -> None:
    gw = gateway(first_offset=190)
    assert publish(gw, 3, T0) == ["190", "191", "192"]
    stored = [event.data() for event in gw.log(CHAIN).events]
    assert [event["metadata"]["offset"] for event in stored] == ["190", "191", "192"]
    assert len({event["metadata"]["uniqueEventId"] for event in stored}) == 3
    assert gw.log(CHAIN).next_offset == 193


def test_replay_from_an_offset_is_inclusive() -> None:
    gw = gateway()
    publish(gw, 10, T0)
    assert start(gw, T0, offset="4") == 4
    assert start(gw, T0, offset="10") == 10
    assert start(gw, T0, offset="99") == 99  # past the end: waits for offset 99


def test_offset_type_highest_starts_at_the_newest_event() -> None:
    gw = gateway()
    assert start(gw, T0, offsetType="highest") == 1  # empty log: the next event published
    publish(gw, 5, T0)
    assert start(gw, T0, offsetType="highest") == 5


def test_retention_drops_events_older_than_seven_days() -> None:
    gw = gateway()
    publish(gw, 2, T0)  # offsets 1, 2
    publish(gw, 2, T0 + 2 * DAY)  # offsets 3, 4
    assert start(gw, T0 + 7 * DAY, offset="1") == 1  # exactly 7 days old: still kept
    assert start(gw, T0 + 7 * DAY + 1, offset="1") == 3  # the first two are gone for good
    assert start(gw, T0 + 7 * DAY + 1, offset="4") == 4
    assert start(gw, T0 + 7 * DAY + 1) == 3  # a first subscription: the oldest retained
    assert start(gw, T0 + 9 * DAY + 1, offset="1") == 5  # everything gone: the next event
    short = gateway(retention=100.0)
    publish(short, 2, T0)
    publish(short, 2, T0 + 150)
    assert start(short, T0 + 150, offset="1") == 3


def test_first_subscription_without_offset_starts_at_the_oldest_event() -> None:
    gw = gateway()
    publish(gw, 3, T0)
    assert start(gw, T0) == 1


def test_resume_position_lasts_24_hours() -> None:
    gw = gateway()
    publish(gw, 6, T0)
    plan = gw.accept(1, CHAIN, {"chainCode": CHAIN}, T0)
    assert plan.position == 1
    # the connection sent offsets 1..4 and closed: the next subscribe resumes at 5
    gw.release(1, CHAIN, dropped=False, resume_position=5, at=T0 + 10)
    gw.forget(1, CHAIN)
    assert start(gw, T0 + 10 + DAY - 1) == 5
    assert start(gw, T0 + 10 + DAY) == 1  # past 24 hours: back to the oldest retained
    assert start(gw, T0 + 10 + 60, offset="2") == 2  # an explicit offset always wins


def test_a_closing_connection_keeps_the_resume_position_until_it_is_gone() -> None:
    gw = gateway()
    publish(gw, 9, T0)
    gw.accept(1, CHAIN, {"chainCode": CHAIN}, T0)
    gw.release(1, CHAIN, dropped=False, resume_position=3, at=T0 + 1)  # the close begins
    gw.accept(2, CHAIN, {"chainCode": CHAIN}, T0 + 1)
    gw.release(2, CHAIN, dropped=False, resume_position=8, at=T0 + 2)  # not the owner yet
    assert start(gw, T0 + 3) == 3
    gw.release(1, CHAIN, dropped=False, resume_position=4, at=T0 + 3)  # one more was sent
    gw.forget(1, CHAIN)
    assert start(gw, T0 + 4) == 4
    gw.release(2, CHAIN, dropped=False, resume_position=8, at=T0 + 5)
    assert start(gw, T0 + 6) == 8


# --- one consumer per stream (§7), the gap after complete (§4), the hold after a drop ----------


def test_one_holder_per_stream_and_4409_for_a_second() -> None:
    gw = gateway()
    assert gw.admit(1, CHAIN, T0) is None
    gw.accept(1, CHAIN, {"chainCode": CHAIN}, T0)
    assert gw.stream(CHAIN).holder == 1
    assert gw.admit(2, CHAIN, T0) == (
        "Conflict: stream OHIPCN already has a consumer (connection 1); "
        "only one consumer per stream"
    )
    assert gw.stream(CHAIN).holder == 1  # a refused subscription holds nothing
    assert gw.admit(3, "OTHER", T0) is None  # another chain is another stream
    assert gw.connection_status()["status"] == "Active"
    gw.release(1, CHAIN, dropped=False, resume_position=None, at=T0 + 1)
    assert gw.stream(CHAIN).holder is None
    assert gw.admit(2, CHAIN, T0 + 1) is None  # closed without complete: no gap
    assert gw.connection_status() == {"id": gw.stream(CHAIN).id, "status": "Inactive"}


def test_the_gap_after_complete_gives_4409_inside_it_and_is_accepted_after() -> None:
    gw = gateway(complete_gap=10.0)
    gw.accept(1, CHAIN, {"chainCode": CHAIN}, T0)
    gw.complete(CHAIN, T0 + 5)
    gw.release(1, CHAIN, dropped=False, resume_position=None, at=T0 + 5.5)
    assert gw.admit(2, CHAIN, T0 + 14.5) == (
        "Conflict: subscribed too soon after complete (9.5 s; wait 10 s)"
    )
    assert gw.admit(2, CHAIN, T0 + 15) is None


def test_a_drop_holds_the_stream_for_hold_after_drop() -> None:
    gw = gateway(hold_after_drop=30.0)
    gw.accept(1, CHAIN, {"chainCode": CHAIN}, T0)
    gw.release(1, CHAIN, dropped=True, resume_position=None, at=T0 + 1)
    assert gw.admit(2, CHAIN, T0 + 30.9) == (
        "Conflict: stream OHIPCN is still held after an abrupt disconnect"
    )
    assert gw.admit(2, CHAIN, T0 + 31) is None
    no_hold = gateway()
    no_hold.accept(1, CHAIN, {"chainCode": CHAIN}, T0)
    no_hold.release(1, CHAIN, dropped=True, resume_position=None, at=T0 + 1)
    assert no_hold.admit(2, CHAIN, T0 + 1) is None  # the default: no hold


def test_fast_replay_lifts_the_one_consumer_rules_and_the_budget() -> None:
    gw = gateway(fast_replay=True, upgrade_budget=(1, 60.0))
    gw.accept(1, CHAIN, {"chainCode": CHAIN}, T0)
    gw.complete(CHAIN, T0)
    assert gw.admit(2, CHAIN, T0) is None
    assert [gw.upgrade(T0) for _ in range(3)] == [None, None, None]


# --- the upgrade budget (protocol §1, §10) ----------------------------------------------------


def test_429_after_the_budget_with_retry_after() -> None:
    budget = UpgradeBudget(3, 120.0)
    assert [budget.admit(T0 + n) for n in range(3)] == [None, None, None]
    assert budget.admit(T0 + 3) == 117  # the oldest upgrade leaves the window at T0 + 120
    assert budget.admit(T0 + 120.5) == 1  # refused attempts count: the window stays full
    assert budget.admit(T0 + 122) is None
    gw = gateway(upgrade_budget=(2, 60.0))
    assert [gw.upgrade(T0), gw.upgrade(T0), gw.upgrade(T0 + 1)] == [None, None, 59]


# --- filters and shapes (protocol §2, §3) -------------------------------------------------------


def test_hotel_code_filter_passes_only_its_hotels() -> None:
    assert hotel_filter("HOTEL2, HOTEL3,") == frozenset({"HOTEL2", "HOTEL3"})
    assert hotel_filter(None) is None
    plan = StartPlan(position=1, hotels=hotel_filter("HOTEL2,HOTEL3"), delta=False)
    assert [plan.passes(h) for h in ("HOTEL1", "HOTEL2", "HOTEL3", None)] == [
        False,
        True,
        True,
        False,  # a chain-level event passes no hotel filter
    ]
    everything = StartPlan(position=1, hotels=None, delta=False)
    assert everything.passes(None)
    gw = gateway()
    accepted = gw.accept(1, CHAIN, {"chainCode": CHAIN, "hotelCode": "H1", "delta": True}, T0)
    assert (accepted.hotels, accepted.delta) == (frozenset({"H1"}), True)


def test_delta_sends_only_the_elements_whose_value_changed() -> None:
    log = ChainLog(CHAIN, 1)
    detail = [
        {"elementName": "ADULTS", "oldValue": "1", "newValue": "2"},
        {"elementName": "ARRIVAL DATE", "oldValue": "2024-05-01", "newValue": "2024-05-01"},
        {"elementName": "NOTE", "oldValue": "", "newValue": "late"},
    ]
    log.store(make_event(detail=detail), T0)
    (stored,) = log.events
    as_delta = json.loads(renderer(True, None)(stored))
    assert [item["elementName"] for item in as_delta["detail"]] == ["ADULTS", "NOTE"]
    assert renderer(False, None)(stored) == stored.encoded
    assert len(stored.data()["detail"]) == 3  # the log keeps every element


def test_a_partial_selection_shapes_the_event() -> None:
    query = (
        'subscription { newEvent(input: {chainCode: "OHIPCN"}) '
        "{ metadata { offset } e: eventName } }"
    )
    request = read_subscribe({"query": query})
    assert isinstance(request, SubscriptionRequest)
    assert request.values == {"chainCode": "OHIPCN"}
    assert request.selection is not None
    assert not request.selection.full
    log = ChainLog(CHAIN, 7)
    log.store(make_event(event_name="CHECK IN"), T0)
    shaped = json.loads(renderer(False, request.selection)(log.events[0]))
    assert shaped == {"metadata": {"offset": "7"}, "e": "CHECK IN"}


# --- the subscribe document and its limits -> 4400 (protocol §2, §5) ---------------------------


def test_subscribe_needs_an_id_and_a_query() -> None:
    assert subscribe_id({"id": "1", "payload": {"query": "{ x }"}}) == "1"
    assert subscribe_id({"id": "", "payload": {"query": "{ x }"}}) is None
    assert subscribe_id({"id": "1", "payload": {}}) is None
    assert subscribe_id({"payload": {"query": "{ x }"}}) is None


@pytest.mark.parametrize(
    ("query", "reason"),
    [
        ("subscription {", "Syntax Error: Expected Name, found <EOF>."),
        (
            'subscription { newEvent(input: {chainCode: "A"}) { nope } }',
            "Cannot query field 'nope' on type 'EventHeader'.",
        ),
        (
            'subscription { newEvent(input: {chainCode: "A" offset: 5}) { eventName } }',
            "String cannot represent a non string value: 5",
        ),
    ],
)
def test_syntax_and_schema_errors_are_4400_with_the_validator_message(
    query: str, reason: str
) -> None:
    assert read_subscribe({"query": query}) == Invalid(reason, 4400)


def test_operations_variables_and_inline_input() -> None:
    query = (
        "subscription S($input: NewEventInput!) { newEvent(input: $input) { metadata { offset } } }"
    )
    request = read_subscribe(
        {"query": query, "variables": {"input": {"chainCode": "OHIPCN", "offset": "3"}}}
    )
    assert isinstance(request, SubscriptionRequest)
    assert request.values == {"chainCode": "OHIPCN", "offset": "3"}
    assert read_subscribe({"query": query, "variables": "x"}) == Invalid(
        "variables must be an object"
    )
    assert read_subscribe({"query": query, "operationName": "T"}) == Invalid(
        "Unknown or ambiguous operation"
    )
    assert read_subscribe({"query": "mutation { x }"}) == Invalid(
        "The mutation operation is not supported by the schema."
    )


@pytest.mark.parametrize(
    ("values", "fragment"),
    [
        ({"chainCode": "X" * 21}, "chainCode 'XXXXXXXXXXXXXXXXXXXXX' is 21 characters long"),
        ({"chainCode": "OHIP CN!"}, "chainCode 'OHIP CN!' does not match the pattern"),
        ({"chainCode": "OHIPCN", "offset": "12a"}, "offset '12a' does not match the pattern"),
        ({"chainCode": "OHIPCN", "offset": "1" * 21}, "is 21 characters long; the limit is 20"),
        ({"chainCode": "OHIPCN", "offsetType": "lowest"}, "offsetType 'lowest' does not match"),
        ({"chainCode": "OHIPCN", "hotelCode": "H" * 51}, "is 51 characters long; the limit is 50"),
        ({"chainCode": "OHIPCN", "offset": "1", "offsetType": "highest"}, "not both"),
        ({"offset": "1"}, "chainCode is required"),
    ],
)
def test_input_limits_give_a_4400_message_naming_the_field(
    values: dict[str, Any], fragment: str
) -> None:
    reason = input_error(values)
    assert reason is not None
    assert fragment in reason


def test_inputs_within_the_limits_pass() -> None:
    assert input_error({"chainCode": "OHIPCN", "offset": "1" * 20, "delta": True}) is None
    assert input_error({"chainCode": "A-1 _%#$&", "hotelCode": "H1,H2"}) is None
    assert input_error({"chainCode": "OHIPCN", "offsetType": "highest"}) is None


def test_the_connection_query_is_answered_from_the_gateway() -> None:
    gw = gateway()
    request = read_subscribe({"query": "query { connection { id status } }"})
    assert isinstance(request, QueryRequest)
    root = {"connection": gw.connection_status()}
    assert answer_query(request, root) == {
        "data": {"connection": {"id": gw.stream(CHAIN).id, "status": "Inactive"}}
    }


def test_close_reasons_are_cut_to_123_bytes_on_a_character_boundary() -> None:
    assert truncate_reason("short") == b"short"
    cut = truncate_reason("é" * 100)
    assert len(cut) == 122
    assert cut.decode("utf-8") == "é" * 61


# --- tokens, the token endpoint, connection_init (protocol §1, §8) ----------------------------


CREDENTIALS = Credentials(
    app_key="0b5d7c9e-1f2a-4b3c-8d4e-5f6a7b8c9d0e",
    client_id="client",
    client_secret="s3cret",
    enterprise_id="ENT1",
    username="user",
    password="pa55",
)


def headers(client: str = "client", secret: str = "s3cret", **extra: str) -> dict[str, str]:
    basic = base64.b64encode(f"{client}:{secret}".encode()).decode()
    return {
        "Authorization": f"Basic {basic}",
        "x-app-key": CREDENTIALS.app_key,
        "enterpriseId": "ENT1",
        **extra,
    }


def test_the_token_endpoint_grants_and_refusals() -> None:
    grant = {"grant_type": "client_credentials", "scope": "urn:opc:hgbu:ws:__myscopes__"}
    password = {"grant_type": "password", "username": "user", "password": "pa55"}

    def decide(h: dict[str, str], form: dict[str, str], revoked: bool = False) -> object:
        return decide_token_request(CREDENTIALS, h, form, revoked=revoked)

    assert decide(headers(), grant) == TokenGrant("client")
    assert decide(headers(), password) == TokenGrant("user")
    assert decide(headers(secret="wrong"), grant) == OAuthRefusal(
        401, "invalid_client", "Invalid client id or client secret"
    )
    assert decide(headers(**{"x-app-key": "other"}), grant) == OAuthRefusal(
        401, "invalid_client", "Invalid or missing x-app-key header"
    )
    assert decide(headers(enterpriseId="ENT2"), grant) == OAuthRefusal(
        400, "invalid_request", "Invalid or missing enterpriseId header"
    )
    assert decide(headers(), {"grant_type": "client_credentials"}) == OAuthRefusal(
        400, "invalid_request", "client_credentials needs a scope"
    )
    assert decide(headers(), {**password, "password": "no"}) == OAuthRefusal(
        401, "invalid_grant", "Invalid username or password"
    )
    assert decide(headers(), {}) == OAuthRefusal(400, "invalid_request", "grant_type is required")
    assert decide(headers(), {"grant_type": "implicit"}) == OAuthRefusal(
        400, "unsupported_grant_type", "Use client_credentials or password"
    )
    assert decide(headers(), grant, revoked=True) == OAuthRefusal(
        401, "invalid_client", "The client credentials were revoked"
    )


def test_basic_credentials_parsing() -> None:
    assert basic_credentials(headers()["Authorization"]) == ("client", "s3cret")
    assert basic_credentials("Basic !!!") is None
    assert basic_credentials("Bearer abc") is None
    assert basic_credentials("Basic " + base64.b64encode(b"no-colon").decode()) is None
    assert basic_credentials(None) is None


def test_tokens_expire_after_their_ttl() -> None:
    book = TokenBook(CREDENTIALS, ttl=3600.0)
    token = book.issue(T0)
    assert (token.issued_at, token.expires_at, token.subject) == (T0, T0 + 3600.0, "client")
    claims = json.loads(base64.urlsafe_b64decode(token.value.split(".")[1] + "=="))
    assert (claims["iat"], claims["exp"]) == (int(T0), int(T0 + 3600))
    assert list(book) == [token.value]
    book.expire_all(T0 + 10)
    assert token.expires_at == T0 + 10
    assert CREDENTIALS.client_secret not in repr(CREDENTIALS)
    assert token.value not in repr(token)


def test_connection_init_checks_the_token_and_the_raw_app_key() -> None:
    book = TokenBook(CREDENTIALS, ttl=60.0)
    token = book.issue(T0)
    key_hash = hash_app_key(CREDENTIALS.app_key)

    def init(payload: object, now: float = T0 + 1, revoked: bool = False) -> Token | InitRefusal:
        return check_init(payload, book, CREDENTIALS, key_hash, revoked=revoked, now=now)

    good = {"Authorization": f"Bearer {token.value}", "x-app-key": CREDENTIALS.app_key}
    assert init(good) is token
    assert init({**good, "enterpriseId": "ENT1"}) is token  # extra payload keys are allowed
    prefix = "Unauthorised - Invalid credentials - "
    assert init(good, now=T0 + 60) == InitRefusal("token expired")
    assert init({**good, "x-app-key": key_hash.upper()}) == InitRefusal(
        prefix + "Check you are sending the application key, not the hash: "
        "send the application key, not its hash"
    )
    assert init({**good, "x-app-key": "other"}) == InitRefusal(prefix + "Invalid API Key")
    assert init({**good, "Authorization": "Bearer nope"}) == InitRefusal(
        prefix + "Invalid Auth Token"
    )
    assert init({"x-app-key": CREDENTIALS.app_key}) == InitRefusal(
        prefix + "send Authorization: Bearer <access token>"
    )
    assert init(good, revoked=True) == InitRefusal(prefix + "the credentials were revoked")
    assert InitRefusal("x").code == 4401


# --- the records: were two subscriptions of one stream open at once? ---------------------------


def record(number: int, stream: str | None, opened: float | None, closed: float | None) -> Any:
    found = ConnectionRecord(id=number, opened_at=T0)
    found.stream_key = stream
    found.subscribed_monotonic = opened
    found.closed_monotonic = closed
    return found


def test_records_tell_whether_two_subscriptions_overlapped() -> None:
    first = record(1, "s", 10.0, 20.0)
    assert not first.overlaps(record(2, "s", 20.0, 30.0))  # one after the other
    assert first.overlaps(record(3, "s", 19.9, 30.0))
    assert first.overlaps(record(4, "s", 15.0, None))  # still open
    assert not first.overlaps(record(5, "other", 15.0, 16.0))  # another stream
    assert not first.overlaps(record(6, "s", None, 16.0))  # refused: never held the stream
    assert record(7, "s", 5.0, None).overlaps(first)


def test_the_rules_need_no_server_stack() -> None:
    code = (
        "import sys\n"
        "import ohip_stream.testing._gateway, ohip_stream.testing._graphql\n"
        "import ohip_stream.testing._oauth, ohip_stream.testing._eventlog\n"
        "print(sorted(m for m in ('aiohttp', 'ohip_stream.testing._session') "
        "if m in sys.modules))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert done.stdout.strip() == "[]"
    for name in ("_gateway", "_graphql", "_oauth", "_eventlog"):
        source = Path(__file__).parent.parent / "src/ohip_stream/testing" / f"{name}.py"
        text = source.read_text(encoding="utf-8")
        imports = [line for line in text.splitlines() if line.startswith(("import ", "from "))]
        assert not [line for line in imports if "asyncio" in line or "aiohttp" in line]
