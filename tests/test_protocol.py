"""The sans-I/O graphql-transport-ws client, fed literal frames with no event loop."""

from __future__ import annotations

import json
from typing import Any

import pytest

from ohip_stream import ConfigurationError, EventValidationError, ProtocolError
from ohip_stream._models import Event
from ohip_stream._net import subscription_url
from ohip_stream._protocol import (
    SUBPROTOCOL,
    ClientProtocol,
    Closed,
    Complete,
    ConnectionAck,
    ErrorMessage,
    InvalidNext,
    Next,
    Ping,
    Pong,
    QueryResult,
    State,
    event_of_frame,
    hash_app_key,
    read_event_frame,
)

# --- literal frames (protocol §1-§4; the fact sheet's appendix A, B and F) ---------------------

SUB_ID = "8d0d3f9e-1c2a-4b7e-9a55-2f4f2d1b6c10"
ACK = '{ "type": "connection_ack" }'
PING = '{"type":"ping"}'
PONG = '{"type":"pong"}'
SERVER_COMPLETE = '{\n  "id": "' + SUB_ID + '",\n  "type": "complete"\n}'

# Appendix F, verbatim apart from the opaque uniqueEventId.
NEXT_F = """{
  "id": "8d0d3f9e-1c2a-4b7e-9a55-2f4f2d1b6c10",
  "type": "next",
  "payload": {
    "data": {
      "newEvent": {
        "metadata": { "offset": "194", "uniqueEventId": "a1b2c3" },
        "moduleName": "RESERVATION",
        "eventName": "UPDATE RESERVATION",
        "primaryKey": "987654",
        "timestamp": "28-APR-24 06.18.59.028027 AM",
        "hotelId": "HOTEL1",
        "publisherId": "159",
        "actionInstanceId": "1234567",
        "detail": [
          { "elementName": "ADULTS", "elementType": null, "elementSequence": null,
            "elementRole": null, "newValue": "2", "oldValue": "1", "scopeFrom": null,
            "scopeTo": null },
          { "elementName": "ARRIVAL DATE", "elementType": null, "elementSequence": null,
            "elementRole": null, "newValue": "2024-05-01", "oldValue": "2024-05-01",
            "scopeFrom": null, "scopeTo": null }
        ]
      }
    }
  }
}"""

# Appendix B, the replay subscribe of OHIPU c_replaying_messages.htm.
SUBSCRIBE_PAYLOAD: dict[str, Any] = {
    "variables": {},
    "extensions": {},
    "operationName": None,
    "query": (
        'subscription { newEvent(input: { chainCode: "OHIPCN" offset: "193" } ) '
        "{ metadata { offset } moduleName eventName detail { oldValue newValue elementName } } }"
    ),
}
STATUS_QUERY: dict[str, Any] = {"query": "query { connection { id status } }", "variables": {}}
INIT_PAYLOAD = {
    "Authorization": "Bearer <Access_Token>",
    "x-app-key": "<Application_Key>",
    "enterpriseId": "ENT1",
}


def event_dict(offset: str = "195", **changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "metadata": {"offset": offset, "uniqueEventId": f"u{offset}"},
        "moduleName": "PROFILE",
        "eventName": "NEW PROFILE",
        "primaryKey": "42",
        "timestamp": "2024-04-28T06:18:59Z",
        "hotelId": None,
        "detail": [{"elementName": "FIRST NAME", "newValue": "Ann &amp; Bo", "oldValue": ""}],
    }
    data.update(changes)
    return data


def next_frame(data: Any, op_id: str = SUB_ID, **payload_extra: Any) -> str:
    payload = {"data": {"newEvent": data}} if data is not ... else {}
    payload.update(payload_extra)
    return json.dumps({"id": op_id, "type": "next", "payload": payload})


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def new(clock: FakeClock | None = None) -> ClientProtocol:
    if clock is None:
        return ClientProtocol(subscription_id=SUB_ID)
    return ClientProtocol(subscription_id=SUB_ID, clock=clock)


def acknowledged(clock: FakeClock | None = None) -> ClientProtocol:
    proto = new(clock)
    proto.connection_init(INIT_PAYLOAD)
    assert isinstance(proto.receive(ACK), ConnectionAck)
    return proto


def subscribed(clock: FakeClock | None = None) -> ClientProtocol:
    proto = acknowledged(clock)
    proto.subscribe(SUBSCRIBE_PAYLOAD)
    return proto


def completing(clock: FakeClock | None = None) -> ClientProtocol:
    proto = subscribed(clock)
    proto.complete()
    return proto


def ended() -> ClientProtocol:
    proto = subscribed()
    assert proto.receive(SERVER_COMPLETE) == Complete(SUB_ID)
    return proto


def closed() -> ClientProtocol:
    proto = subscribed()
    proto.receive_close(1000)
    return proto


BUILDERS = {
    "open": new,
    "init_sent": lambda: _init_sent(),
    "acknowledged": acknowledged,
    "subscribed": subscribed,
    "completing": completing,
    "ended": ended,
    "closed": closed,
}


def _init_sent() -> ClientProtocol:
    proto = new()
    proto.connection_init(INIT_PAYLOAD)
    return proto


def protocols(*states: str) -> list[Any]:
    return [pytest.param(BUILDERS[state], id=state) for state in states]


# --- url and key hash (protocol §1) -----------------------------------------------------------


def test_hash_app_key_test_vector() -> None:
    digest = hash_app_key("ABC-123")
    assert digest == "4d156d7bc9c38c000aa1e5b06e46e1f40cafe651f3cabfae9bad48803baf17bf"
    assert digest == digest.lower()


def test_hash_app_key_is_utf8() -> None:
    assert hash_app_key("clé") == hash_app_key("cl\u00e9")
    assert len(hash_app_key("")) == 64


@pytest.mark.parametrize(
    ("gateway", "expected"),
    [
        ("https://gw.example.com", "wss://gw.example.com/subscriptions"),
        ("https://gw.example.com/", "wss://gw.example.com/subscriptions"),
        ("http://localhost:8080", "ws://localhost:8080/subscriptions"),
        ("https://gw.example.com/prefix/", "wss://gw.example.com/prefix/subscriptions"),
        ("  https://gw.example.com/a/b  ", "wss://gw.example.com/a/b/subscriptions"),
        ("wss://gw.example.com", "wss://gw.example.com/subscriptions"),
        ("ws://127.0.0.1:9", "ws://127.0.0.1:9/subscriptions"),
        ("https://[::1]:8443", "wss://[::1]:8443/subscriptions"),
    ],
)
def test_subscription_url(gateway: str, expected: str) -> None:
    url = subscription_url(gateway, "ABC-123")
    assert url == expected + "?key=" + hash_app_key("ABC-123")


@pytest.mark.parametrize(
    "gateway",
    [
        "gw.example.com",
        "ftp://gw.example.com",
        "https://",
        "",
        "https://[::1",
        "https://gw.example.com:notaport",
        "https://gw.example.com:99999",
        "https://gw.example.com/?x=1#frag",
        "https://user:pw@gw.example.com",
    ],
)
def test_subscription_url_refuses_bad_urls(gateway: str) -> None:
    with pytest.raises(ConfigurationError, match="gateway_url") as info:
        subscription_url(gateway, "secret-app-key")
    assert "secret-app-key" not in str(info.value)


def test_subprotocol_name() -> None:
    assert SUBPROTOCOL == "graphql-transport-ws"


# --- the happy path ---------------------------------------------------------------------------


def state_of(proto: ClientProtocol) -> State:
    # A call, so that a type checker does not narrow the state between two commands.
    return proto.state


def test_full_lifecycle(clock: FakeClock) -> None:
    proto = new(clock)
    assert state_of(proto) is State.OPEN
    init = json.loads(proto.connection_init(INIT_PAYLOAD))
    assert init == {"type": "connection_init", "payload": INIT_PAYLOAD}
    assert state_of(proto) is State.INIT_SENT

    assert proto.receive(ACK) == ConnectionAck(None)
    assert state_of(proto) is State.ACKNOWLEDGED

    sub = json.loads(proto.subscribe(SUBSCRIBE_PAYLOAD))
    assert sub == {"id": SUB_ID, "type": "subscribe", "payload": SUBSCRIBE_PAYLOAD}
    assert state_of(proto) is State.SUBSCRIBED

    clock.now = 150.0
    received = proto.receive(NEXT_F)
    assert isinstance(received, Next)
    event = received.event
    assert isinstance(event, Event)
    assert event.metadata.offset == "194"
    assert event.event_name == "UPDATE RESERVATION"
    assert event.element("adults") is not None
    assert proto.last_alive == 150.0

    assert json.loads(proto.complete()) == {"id": SUB_ID, "type": "complete"}
    assert state_of(proto) is State.COMPLETING
    # In flight after our complete (protocol §4): events, pings, pongs, the server's complete.
    assert isinstance(proto.receive(next_frame(event_dict("195"))), Next)
    assert isinstance(proto.receive(PING), Ping)
    assert proto.data_to_send() == [PONG]
    assert isinstance(proto.receive(PONG), Pong)
    assert proto.receive(SERVER_COMPLETE) == Complete(SUB_ID)
    assert state_of(proto) is State.COMPLETING
    assert isinstance(proto.receive(next_frame(event_dict("196"))), Next)
    assert proto.receive_close(1000, "") == Closed(1000, "")
    assert state_of(proto) is State.CLOSED


def test_connection_ack_with_payload() -> None:
    proto = new()
    proto.connection_init({})
    ack = proto.receive('{"type":"connection_ack","payload":{"server":"ohip"}}')
    assert ack == ConnectionAck({"server": "ohip"})


def test_connection_init_keeps_extra_keys_and_copies() -> None:
    proto = new()
    payload = dict(INIT_PAYLOAD)
    frame = proto.connection_init(payload)
    payload["x-app-key"] = "changed"
    assert json.loads(frame)["payload"]["x-app-key"] == "<Application_Key>"
    assert json.loads(frame)["payload"]["enterpriseId"] == "ENT1"


def test_default_ids_and_clock() -> None:
    proto = ClientProtocol()
    assert proto.subscription_id == "1"
    assert proto.last_alive > 0
    proto.connection_init({})
    proto.receive(ACK)
    assert json.loads(proto.subscribe({}))["id"] == "1"


def test_bytes_frames_are_accepted() -> None:
    proto = new()
    proto.connection_init({})
    assert isinstance(proto.receive(ACK.encode()), ConnectionAck)
    proto.subscribe(SUBSCRIBE_PAYLOAD)
    assert isinstance(proto.receive(NEXT_F.encode()), Next)
    assert isinstance(proto.receive(PING.encode()), Ping)


# --- ping / pong and liveness (protocol §4) ---------------------------------------------------


@pytest.mark.parametrize(
    "build", protocols("open", "init_sent", "acknowledged", "subscribed", "completing", "ended")
)
def test_ping_is_answered_in_every_open_state(build: Any) -> None:
    proto = build()
    assert not proto.has_data_to_send
    assert proto.receive(PING) == Ping(None)
    assert proto.has_data_to_send
    assert proto.receive('{"type":"ping","payload":{"n":1}}') == Ping({"n": 1})
    assert proto.data_to_send() == [PONG, PONG]
    assert proto.data_to_send() == []
    assert not proto.has_data_to_send


@pytest.mark.parametrize(
    "build", protocols("open", "init_sent", "acknowledged", "subscribed", "completing", "ended")
)
def test_client_ping(build: Any) -> None:
    assert build().ping() == '{"type":"ping"}'


def test_no_ping_after_close() -> None:
    with pytest.raises(ProtocolError, match="closed"):
        closed().ping()


def test_pong_and_next_update_last_alive(clock: FakeClock) -> None:
    proto = subscribed(clock)
    assert proto.last_alive == 100.0
    clock.now = 110.0
    assert proto.receive(PONG) == Pong(None)
    assert proto.last_alive == 110.0
    clock.now = 120.0
    assert isinstance(proto.receive(PING), Ping)
    assert proto.last_alive == 110.0  # a server ping is not our proof of life
    clock.now = 130.0
    proto.receive(NEXT_F)
    assert proto.last_alive == 130.0
    clock.now = 140.0
    proto.receive('{"type":"pong","payload":{"latency":3}}')
    assert proto.last_alive == 140.0


def test_invalid_event_is_still_a_sign_of_life(clock: FakeClock) -> None:
    proto = subscribed(clock)
    clock.now = 200.0
    assert isinstance(proto.receive(next_frame(event_dict(offset=195))), InvalidNext)  # type: ignore[arg-type]
    assert proto.last_alive == 200.0


def test_query_result_is_no_sign_of_life(clock: FakeClock) -> None:
    proto = acknowledged(clock)
    op_id, _ = proto.query(STATUS_QUERY)
    clock.now = 500.0
    proto.receive(json.dumps({"id": op_id, "type": "next", "payload": {"data": {}}}))
    assert proto.last_alive == 100.0


@pytest.mark.parametrize("frame", ['{"type":"ping","payload":[1]}', '{"type":"pong","payload":3}'])
def test_ping_pong_payload_must_be_an_object(frame: str) -> None:
    proto = subscribed()
    with pytest.raises(ProtocolError, match="payload must be an object"):
        proto.receive(frame)
    assert proto.data_to_send() == []  # a malformed ping gets no pong


# --- events -----------------------------------------------------------------------------------


def test_next_with_unknown_fields_is_kept() -> None:
    data = event_dict(newTopLevel={"x": 1})
    data["detail"][0]["newDetailField"] = "y"
    received = subscribed().receive(next_frame(data))
    assert isinstance(received, Next)
    assert received.event.model_extra == {"newTopLevel": {"x": 1}}


def test_next_with_null_detail_items() -> None:
    received = subscribed().receive(next_frame(event_dict(detail=[None])))
    assert isinstance(received, Next)
    assert received.event.detail == (None,)


@pytest.mark.parametrize(
    ("data", "offset"),
    [
        pytest.param(event_dict(offset=195), None, id="int-offset"),  # type: ignore[arg-type]
        pytest.param(event_dict(moduleName=None), "195", id="null-module"),
        pytest.param(event_dict(detail=[{"newValue": "x"}]), "195", id="detail-without-name"),
        pytest.param({"moduleName": "X"}, None, id="no-metadata"),
        pytest.param(event_dict(metadata="194"), None, id="metadata-not-object"),
        pytest.param(None, None, id="null-event"),
        pytest.param([1, 2], None, id="event-not-object"),
    ],
)
def test_invalid_events(data: Any, offset: str | None) -> None:
    raw = next_frame(data)
    received = subscribed().receive(raw)
    assert isinstance(received, InvalidNext)
    assert received.raw == raw
    assert received.offset == offset
    assert isinstance(received.error, EventValidationError)
    assert received.error.raw == raw
    assert received.error.offset == offset
    where = f"offset {offset}" if offset else "without a readable offset"
    assert where in str(received.error)
    assert "does not fit the model" in str(received.error)


def test_invalid_event_text_that_python_and_pydantic_read_differently() -> None:
    # A lone surrogate escape: json.loads reads it, the one-pass parser does not.
    raw = next_frame(event_dict(primaryKey="x")).replace('"x"', '"\\ud800"')
    received = subscribed().receive(raw)
    assert isinstance(received, InvalidNext)
    assert received.offset == "195"


def test_invalid_event_names_at_most_five_problems() -> None:
    data: dict[str, Any] = {"metadata": {}, "detail": [{}, {}, {}, {}]}
    received = subscribed().receive(next_frame(data))
    assert isinstance(received, InvalidNext)
    assert str(received.error).count(":") <= 6


def test_next_without_data_is_invalid() -> None:
    received = subscribed().receive(next_frame(...))
    assert isinstance(received, InvalidNext)
    frame = json.dumps({"id": SUB_ID, "type": "next", "payload": {"data": None}})
    assert isinstance(subscribed().receive(frame), InvalidNext)


def test_next_with_errors_and_no_data_is_an_error_message() -> None:
    errors = [{"message": "Subscription field must return Async Iterable"}]
    frame = json.dumps({"id": SUB_ID, "type": "next", "payload": {"data": None, "errors": errors}})
    proto = subscribed()
    received = proto.receive(frame)
    assert received == ErrorMessage(SUB_ID, tuple(errors))
    assert isinstance(received, ErrorMessage)
    assert received.message == "Subscription field must return Async Iterable"
    assert state_of(proto) is State.SUBSCRIBED  # execution errors do not end the subscription


def test_next_with_errors_beside_an_event_gives_the_event() -> None:
    frame = next_frame(event_dict(), errors=[{"message": "partial"}])
    assert isinstance(subscribed().receive(frame), Next)


def test_next_with_non_list_errors_and_no_data() -> None:
    frame = json.dumps({"id": SUB_ID, "type": "next", "payload": {"data": None, "errors": "x"}})
    assert isinstance(subscribed().receive(frame), InvalidNext)


@pytest.mark.parametrize("payload", ["[]", '"x"', "null", "1"])
def test_next_payload_must_be_an_object(payload: str) -> None:
    with pytest.raises(ProtocolError, match="payload is not an object"):
        subscribed().receive('{"id":"' + SUB_ID + '","type":"next","payload":' + payload + "}")


# --- error / complete from the server ---------------------------------------------------------


def test_server_error_ends_the_subscription() -> None:
    proto = subscribed()
    frame = json.dumps({"id": SUB_ID, "type": "error", "payload": [{"message": "bad input"}]})
    received = proto.receive(frame)
    assert isinstance(received, ErrorMessage)
    assert received.message == "bad input"
    assert state_of(proto) is State.ENDED
    with pytest.raises(ProtocolError, match="state ended"):
        proto.receive(NEXT_F)
    with pytest.raises(ProtocolError, match="no running subscription"):
        proto.complete()


def test_server_error_after_our_complete() -> None:
    proto = completing()
    frame = json.dumps({"id": SUB_ID, "type": "error", "payload": []})
    received = proto.receive(frame)
    assert received == ErrorMessage(SUB_ID, ())
    assert isinstance(received, ErrorMessage)
    assert received.message == "the server sent an error without a message"
    assert state_of(proto) is State.COMPLETING


def test_error_message_without_usable_message() -> None:
    assert ErrorMessage("1", ("text", {"message": 3}, {"path": []})).message == (
        "the server sent an error without a message"
    )
    assert ErrorMessage("1", ("text", {"message": "second"})).message == "second"


@pytest.mark.parametrize("payload", ["{}", '"boom"', "null"])
def test_error_payload_must_be_a_list(payload: str) -> None:
    with pytest.raises(ProtocolError, match="not a list of errors"):
        subscribed().receive('{"id":"' + SUB_ID + '","type":"error","payload":' + payload + "}")


def test_server_complete_ends_the_subscription() -> None:
    proto = ended()
    assert state_of(proto) is State.ENDED
    with pytest.raises(ProtocolError, match="state ended"):
        proto.receive(SERVER_COMPLETE)
    with pytest.raises(ProtocolError, match="one subscription per connection"):
        proto.subscribe(SUBSCRIBE_PAYLOAD)
    # Pings still flow until the socket closes.
    assert isinstance(proto.receive(PING), Ping)


# --- query operations -------------------------------------------------------------------------


def test_query_then_result_then_complete_then_subscribe() -> None:
    proto = acknowledged()
    op_id, frame = proto.query(STATUS_QUERY)
    assert op_id == "q1"
    assert json.loads(frame) == {"id": "q1", "type": "subscribe", "payload": STATUS_QUERY}
    answer = {"data": {"connection": {"id": "OHIPCN", "status": "Inactive"}}}
    result = proto.receive(json.dumps({"id": "q1", "type": "next", "payload": answer}))
    assert result == QueryResult("q1", answer["data"], ())
    assert proto.receive('{"id":"q1","type":"complete"}') == Complete("q1")
    assert state_of(proto) is State.ACKNOWLEDGED
    # The id is forgotten once completed.
    with pytest.raises(ProtocolError, match="unknown operation id 'q1'"):
        proto.receive(json.dumps({"id": "q1", "type": "next", "payload": answer}))
    op2, _ = proto.query(STATUS_QUERY)
    assert op2 == "q2"
    proto.subscribe(SUBSCRIBE_PAYLOAD)
    # A query answer may still arrive after the subscribe.
    result = proto.receive(json.dumps({"id": "q2", "type": "next", "payload": answer}))
    assert isinstance(result, QueryResult)
    assert proto.receive('{"id":"q2","type":"complete"}') == Complete("q2")
    assert state_of(proto) is State.SUBSCRIBED


def test_query_result_with_errors_and_no_data() -> None:
    proto = acknowledged()
    op_id, _ = proto.query(STATUS_QUERY)
    frame = {"id": op_id, "type": "next", "payload": {"data": None, "errors": [{"message": "x"}]}}
    assert proto.receive(json.dumps(frame)) == QueryResult(op_id, None, ({"message": "x"},))
    frame["payload"] = {"data": [1]}
    assert proto.receive(json.dumps(frame)) == QueryResult(op_id, None, ())


def test_query_error_forgets_the_operation() -> None:
    proto = acknowledged()
    op_id, _ = proto.query(STATUS_QUERY)
    frame = json.dumps({"id": op_id, "type": "error", "payload": [{"message": "no"}]})
    assert proto.receive(frame) == ErrorMessage(op_id, ({"message": "no"},))
    assert state_of(proto) is State.ACKNOWLEDGED
    with pytest.raises(ProtocolError, match="unknown operation"):
        proto.receive(json.dumps({"id": op_id, "type": "complete"}))


@pytest.mark.parametrize(
    "build", protocols("open", "init_sent", "subscribed", "completing", "ended", "closed")
)
def test_query_needs_ack_and_no_subscription(build: Any) -> None:
    with pytest.raises(ProtocolError, match="cannot send a query"):
        build().query(STATUS_QUERY)


# --- forbidden orders -------------------------------------------------------------------------


@pytest.mark.parametrize("build", protocols("open", "init_sent"))
def test_subscribe_before_ack(build: Any) -> None:
    with pytest.raises(ProtocolError, match="before the server sent connection_ack"):
        build().subscribe(SUBSCRIBE_PAYLOAD)


@pytest.mark.parametrize("build", protocols("subscribed", "completing", "ended"))
def test_second_subscription(build: Any) -> None:
    with pytest.raises(ProtocolError, match="one subscription per connection"):
        build().subscribe(SUBSCRIBE_PAYLOAD)


def test_subscribe_after_close() -> None:
    proto = acknowledged()
    proto.receive_close(1006)
    with pytest.raises(ProtocolError, match="connection is closed"):
        proto.subscribe(SUBSCRIBE_PAYLOAD)


@pytest.mark.parametrize(
    "build", protocols("init_sent", "acknowledged", "subscribed", "completing", "ended", "closed")
)
def test_init_twice(build: Any) -> None:
    with pytest.raises(ProtocolError, match="cannot send connection_init"):
        build().connection_init(INIT_PAYLOAD)


@pytest.mark.parametrize(
    "build", protocols("open", "init_sent", "acknowledged", "completing", "ended", "closed")
)
def test_complete_without_subscription(build: Any) -> None:
    with pytest.raises(ProtocolError, match="cannot send complete"):
        build().complete()


@pytest.mark.parametrize(
    "build", protocols("open", "acknowledged", "subscribed", "completing", "ended")
)
def test_unexpected_ack(build: Any) -> None:
    proto = build()
    with pytest.raises(ProtocolError, match="unexpected connection_ack"):
        proto.receive(ACK)


@pytest.mark.parametrize("frame", [ACK, PING, PONG, NEXT_F, SERVER_COMPLETE, "garbage", b"\xff"])
def test_frames_after_close(frame: str | bytes) -> None:
    proto = subscribed()
    assert proto.receive_close(None) == Closed(1006, "")
    with pytest.raises(ProtocolError, match="after the connection closed"):
        proto.receive(frame)


def test_close_with_code_and_reason_in_any_state() -> None:
    assert new().receive_close(4401, "Unauthorised") == Closed(4401, "Unauthorised")
    proto = completing()
    assert proto.receive_close(1000) == Closed(1000)
    assert state_of(proto) is State.CLOSED


@pytest.mark.parametrize("kind", ["next", "complete", "error"])
@pytest.mark.parametrize("build", protocols("open", "init_sent", "acknowledged"))
def test_operation_frames_before_subscribe(kind: str, build: Any) -> None:
    frame = {"id": SUB_ID, "type": kind, "payload": {"data": None} if kind == "next" else []}
    if kind == "complete":
        del frame["payload"]
    with pytest.raises(ProtocolError, match=f"received {kind} for a subscription in state"):
        build().receive(json.dumps(frame))


@pytest.mark.parametrize("kind", ["next", "complete", "error"])
@pytest.mark.parametrize("op_id", ["2", "q1", 7])
def test_operation_frames_for_unknown_ids(kind: str, op_id: object) -> None:
    frame = {"id": op_id, "type": kind, "payload": []}
    if kind == "next":
        frame["payload"] = {"data": {"newEvent": event_dict()}}
    if op_id == 7:
        with pytest.raises(ProtocolError, match=f"malformed {kind}: it has no operation id"):
            subscribed().receive(json.dumps(frame))
    else:
        with pytest.raises(ProtocolError, match=f"unknown (operation|subscription) id '{op_id}'"):
            subscribed().receive(json.dumps(frame))


@pytest.mark.parametrize("kind", ["next", "complete", "error"])
@pytest.mark.parametrize("op_id", [None, "", "missing"])
def test_operation_frames_without_an_id(kind: str, op_id: str | None) -> None:
    frame: dict[str, Any] = {"type": kind, "payload": []}
    if op_id != "missing":
        frame["id"] = op_id
    with pytest.raises(ProtocolError, match=f"malformed {kind}: it has no operation id"):
        subscribed().receive(json.dumps(frame))


@pytest.mark.parametrize("kind", ["subscribe", "connection_init"])
def test_server_sent_client_messages(kind: str) -> None:
    for proto in (new(), subscribed()):
        with pytest.raises(ProtocolError, match=f"the server sent '{kind}'"):
            proto.receive(json.dumps({"type": kind, "id": SUB_ID, "payload": {}}))


@pytest.mark.parametrize("kind", ["data", "ka", "connection_error", "NEXT", ""])
def test_unknown_type(kind: str) -> None:
    with pytest.raises(ProtocolError, match="unknown message type"):
        subscribed().receive(json.dumps({"type": kind}))


@pytest.mark.parametrize("frame", ["{}", '{"type":null}', '{"type":1}', '{"id":"1"}'])
def test_no_type(frame: str) -> None:
    with pytest.raises(ProtocolError, match="no message type"):
        subscribed().receive(frame)


@pytest.mark.parametrize("frame", ["", "not json", "{", '{"type":"ping"', "\x00"])
def test_not_json(frame: str) -> None:
    for proto in (new(), subscribed()):
        with pytest.raises(ProtocolError, match="not JSON"):
            proto.receive(frame)


@pytest.mark.parametrize("frame", ["[]", '"ping"', "1", "null", "true", '[{"type":"ping"}]'])
def test_not_an_object(frame: str) -> None:
    with pytest.raises(ProtocolError, match="not a JSON object"):
        subscribed().receive(frame)


@pytest.mark.parametrize("build", protocols("open", "subscribed"))
def test_invalid_utf8(build: Any) -> None:
    with pytest.raises(ProtocolError, match="not UTF-8"):
        build().receive(b'{"type":"ping","x":"\xff"}')


def test_long_frames_are_cut_in_messages() -> None:
    with pytest.raises(ProtocolError) as info:
        subscribed().receive("x" * 500)
    assert "x" * 80 + "..." in str(info.value)
    assert "x" * 81 not in str(info.value)
    with pytest.raises(ProtocolError) as info:
        subscribed().receive("[1]")
    assert "'[1]'" in str(info.value)
    assert "..." not in str(info.value)


def test_a_broken_frame_is_a_protocol_error_that_the_stream_retries_by_policy() -> None:
    # Not retriable as a class: the user sees it only once the same offset failed again and
    # again; the stream's policy retries a single broken frame.
    with pytest.raises(ProtocolError) as info:
        subscribed().receive("nope")
    assert info.value.retriable is False


def test_json_nested_too_deeply_is_a_protocol_error() -> None:
    proto = ClientProtocol()
    deep = "[" * 100_000 + "]" * 100_000
    with pytest.raises(ProtocolError, match="nested too deeply"):
        proto.receive('{"type":"ping","payload":' + deep + "}")


def test_an_event_too_deep_to_validate_is_a_protocol_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import ohip_stream._protocol as protocol_module

    def too_deep(data: object) -> object:
        raise RecursionError

    proto = ClientProtocol()
    proto.connection_init({})
    proto.receive('{"type":"connection_ack"}')
    proto.subscribe({"query": "subscription { newEvent }"})
    monkeypatch.setattr(protocol_module, "event_from_data", too_deep)
    frame = '{"id":"1","type":"next","payload":{"data":{"newEvent":{"a":1}}}}'
    with pytest.raises(ProtocolError, match="nested too deeply"):
        proto.receive(frame)


def test_receive_event_is_the_hot_path_and_leaves_the_rest_to_receive(clock: FakeClock) -> None:
    proto = acknowledged(clock)
    frame = next_frame(event_dict("200"))
    assert proto.receive_event(frame) is None  # not subscribed yet
    proto.subscribe(SUBSCRIBE_PAYLOAD)
    clock.now = 170.0
    event = proto.receive_event(frame.encode())  # undecoded bytes are read as they are
    assert isinstance(event, Event)
    assert event.metadata.offset == "200"
    assert proto.last_alive == 100.0  # the caller knows when it read; receive() stamps
    assert proto.receive_event(PING) is None
    assert proto.receive_event(next_frame(event_dict("201"), op_id="other")) is None
    with pytest.raises(ProtocolError, match="unknown operation id"):
        proto.receive(next_frame(event_dict("201"), op_id="other"))
    assert proto.receive_event(next_frame(event_dict("202", moduleName=None))) is None
    assert isinstance(proto.receive(frame), Next)
    assert proto.last_alive == 170.0
    proto.complete()
    assert isinstance(proto.receive_event(frame), Event)  # in flight after our complete


# --- reading buffered event frames (the caller's side, no connection state) --------------------


def test_event_of_frame_is_the_valid_event_of_the_subscription_or_none() -> None:
    frame = next_frame(event_dict("7")).encode()
    event = event_of_frame(frame, SUB_ID)
    assert event is not None
    assert event.metadata.offset == "7"
    assert event_of_frame(frame, "another-id") is None
    assert event_of_frame(b'{"type":"ping"}', SUB_ID) is None


def test_read_event_frame_reads_valid_and_invalid_events() -> None:
    valid = read_event_frame(next_frame(event_dict("8")).encode(), SUB_ID)
    assert isinstance(valid, Next)
    assert valid.event.metadata.offset == "8"
    broken = event_dict("9")
    del broken["eventName"]
    invalid = read_event_frame(next_frame(broken).encode(), SUB_ID)
    assert isinstance(invalid, InvalidNext)
    assert invalid.offset == "9"
    assert invalid.unique_event_id is None
    assert "eventName" in str(invalid.error)


def test_a_valid_event_in_an_unusual_envelope_is_still_read() -> None:
    # A payload key the strict one-pass envelope does not expect: the slow path reads it.
    frame = next_frame(event_dict("10"), extensions={"trace": "x"}).encode()
    found = read_event_frame(frame, SUB_ID)
    assert isinstance(found, Next)
    assert found.event.metadata.offset == "10"


@pytest.mark.parametrize(
    "frame",
    [
        b"not json",
        b'["a list"]',
        b'{"type":"pong"}',
        json.dumps({"id": "other", "type": "next", "payload": {}}).encode(),
        json.dumps(
            {"id": SUB_ID, "type": "next", "payload": {"errors": [{"message": "x"}]}}
        ).encode(),
    ],
)
def test_read_event_frame_leaves_other_frames_to_the_connection(frame: bytes) -> None:
    assert read_event_frame(frame, SUB_ID) is None


def test_read_event_frame_refuses_a_next_without_a_payload_object() -> None:
    frame = json.dumps({"id": SUB_ID, "type": "next", "payload": [1]}).encode()
    with pytest.raises(ProtocolError, match="payload is not an object"):
        read_event_frame(frame, SUB_ID)
    nested = "[" * 5000 + "]" * 5000
    deep = '{"id":"' + SUB_ID + '","type":"next","payload":{"data":{"newEvent":' + nested + "}}}"
    found = read_event_frame(deep.encode(), SUB_ID)
    assert found is None or isinstance(found, InvalidNext)


@pytest.mark.parametrize(
    "offset", ["123456789012345678901", "\u0661\u0662", "\u00b2", "", "-1", "1.0", " 1", "1\n"]
)
def test_an_unsendable_offset_makes_an_invalid_event_without_an_offset(offset: str) -> None:
    # An offset the stream could never send back in a subscription fails the event model, so
    # it goes to the dead-letter path and never into a checkpoint.
    raw = next_frame(event_dict(offset)).encode()
    assert event_of_frame(raw, SUB_ID) is None
    item = read_event_frame(raw, SUB_ID)
    assert isinstance(item, InvalidNext)
    assert item.offset is None
    assert item.raw == raw.decode()
    assert "metadata.offset" in str(item.error)
