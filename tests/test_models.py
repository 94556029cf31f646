"""The event models: aliases, unknown fields, immutability, helpers, timestamps."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from ohip_stream import Event, EventDetail, EventMetadata
from ohip_stream._models import NextFrame, event_from_data, parse_next_frame, parse_timestamp

# The fact sheet's appendix F event (uniqueEventId made concrete).
WIRE: dict[str, Any] = {
    "metadata": {"offset": "194", "uniqueEventId": "a1b2c3"},
    "moduleName": "RESERVATION",
    "eventName": "UPDATE RESERVATION",
    "primaryKey": "987654",
    "timestamp": "28-APR-24 06.18.59.028027 AM",
    "hotelId": "HOTEL1",
    "publisherId": "159",
    "actionInstanceId": "1234567",
    "detail": [
        {
            "elementName": "ADULTS",
            "elementType": None,
            "elementSequence": None,
            "elementRole": None,
            "newValue": "2",
            "oldValue": "1",
            "scopeFrom": None,
            "scopeTo": None,
        },
        {
            "elementName": "ARRIVAL DATE",
            "elementType": None,
            "elementSequence": None,
            "elementRole": None,
            "newValue": "2024-05-01",
            "oldValue": "2024-05-01",
            "scopeFrom": None,
            "scopeTo": None,
        },
    ],
}


def wire(**changes: Any) -> dict[str, Any]:
    data: dict[str, Any] = json.loads(json.dumps(WIRE))
    data.update(changes)
    return data


def event(**changes: Any) -> Event:
    return Event.model_validate_json(json.dumps(wire(**changes)))


# --- aliases, unknown fields, immutability, round trips ---------------------------------------


def test_wire_names_become_snake_case() -> None:
    ev = event()
    assert ev.metadata.offset == "194"
    assert ev.metadata.unique_event_id == "a1b2c3"
    assert ev.offset == "194"
    assert ev.unique_event_id == "a1b2c3"
    assert ev.module_name == "RESERVATION"
    assert ev.event_name == "UPDATE RESERVATION"
    assert ev.primary_key == "987654"
    assert ev.hotel_id == "HOTEL1"
    assert ev.publisher_id == "159"
    assert ev.action_instance_id == "1234567"
    assert ev.detail[0] is not None
    assert ev.detail[0].element_name == "ADULTS"
    assert ev.detail[0].new_value == "2"
    assert ev.detail[0].old_value == "1"


def test_snake_case_names_are_accepted_too() -> None:
    ev = Event(
        metadata=EventMetadata(offset="1", unique_event_id="u"),
        module_name="PROFILE",
        event_name="NEW PROFILE",
        primary_key="42",
        timestamp="2024-04-28T06:18:59Z",
        detail=(EventDetail(element_name="FIRST NAME", new_value="Ann"),),
    )
    dumped = ev.model_dump(by_alias=True)
    assert dumped["metadata"] == {"offset": "1", "uniqueEventId": "u"}
    assert dumped["moduleName"] == "PROFILE"
    assert dumped["hotelId"] is None
    assert dumped["detail"][0]["elementName"] == "FIRST NAME"
    assert ev.model_dump()["module_name"] == "PROFILE"


def test_python_dicts_validate_in_both_spellings() -> None:
    camel = Event.model_validate(wire())
    snake = Event.model_validate(
        {
            "metadata": {"offset": "194", "unique_event_id": "a1b2c3"},
            "module_name": "RESERVATION",
            "event_name": "UPDATE RESERVATION",
            "primary_key": "987654",
            "timestamp": "28-APR-24 06.18.59.028027 AM",
            "hotel_id": "HOTEL1",
            "publisher_id": "159",
            "action_instance_id": "1234567",
            "detail": [
                {"element_name": "ADULTS", "new_value": "2", "old_value": "1"},
                {
                    "element_name": "ARRIVAL DATE",
                    "new_value": "2024-05-01",
                    "old_value": "2024-05-01",
                },
            ],
        }
    )
    assert camel == snake
    assert isinstance(camel.detail, tuple)


def test_unknown_fields_are_kept_and_dumped() -> None:
    data = wire(newField={"nested": [1, 2]}, anotherOne="x")
    data["metadata"]["partition"] = "7"
    data["detail"][0]["elementLabel"] = "Adults"
    ev = Event.model_validate_json(json.dumps(data))
    assert ev.model_extra == {"newField": {"nested": [1, 2]}, "anotherOne": "x"}
    assert ev.metadata.model_extra == {"partition": "7"}
    assert ev.detail[0] is not None
    assert ev.detail[0].model_extra == {"elementLabel": "Adults"}
    dumped = ev.model_dump(by_alias=True, mode="json")
    assert dumped["newField"] == {"nested": [1, 2]}
    assert dumped["metadata"]["partition"] == "7"
    assert dumped["detail"][0]["elementLabel"] == "Adults"


def test_model_dump_by_alias_gives_the_wire_form_back() -> None:
    ev = event()
    assert ev.model_dump(by_alias=True, mode="json") == WIRE
    assert json.loads(ev.model_dump_json(by_alias=True)) == WIRE
    # And back again, through Python objects and through JSON.
    assert Event.model_validate(ev.model_dump(by_alias=True)) == ev
    assert Event.model_validate(ev.model_dump(by_alias=True, mode="json")) == ev
    assert Event.model_validate_json(ev.model_dump_json(by_alias=True)) == ev
    assert Event.model_validate(ev.model_dump()) == ev


def test_models_are_frozen() -> None:
    ev = event()
    with pytest.raises(ValidationError):
        ev.module_name = "PROFILE"
    with pytest.raises(ValidationError):
        ev.metadata.offset = "1"
    detail = ev.detail[0]
    assert detail is not None
    with pytest.raises(ValidationError):
        detail.new_value = "3"
    with pytest.raises(TypeError):
        ev.detail[0] = None  # type: ignore[index]
    assert hash(ev.metadata) == hash(EventMetadata(offset="194", unique_event_id="a1b2c3"))


@pytest.mark.parametrize("offset", [194, 194.0, None, True])
def test_offset_stays_a_string(offset: Any) -> None:
    data = wire(metadata={"offset": offset, "uniqueEventId": "u"})
    with pytest.raises(ValidationError):
        Event.model_validate_json(json.dumps(data))
    with pytest.raises(ValidationError):
        Event.model_validate(data)


@pytest.mark.parametrize(
    "changes",
    [
        {"primaryKey": 987654},
        {"hotelId": 1},
        {"detail": [{"elementName": "ADULTS", "newValue": 2}]},
        {"detail": [{"newValue": "2"}]},
        {"detail": "ADULTS"},
        {"detail": None},
        {"moduleName": None},
    ],
)
def test_numbers_and_missing_names_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        Event.model_validate_json(json.dumps(wire(**changes)))


def test_optional_fields_and_null_detail_items() -> None:
    data = {
        "metadata": {"offset": "1", "uniqueEventId": "u"},
        "moduleName": "PROFILE",
        "eventName": "NEW PROFILE",
        "primaryKey": "42",
        "timestamp": "",
        "detail": [None, {"elementName": "FIRST NAME"}],
    }
    ev = Event.model_validate_json(json.dumps(data))
    assert ev.hotel_id is None
    assert ev.detail[0] is None
    assert ev.element("first name") is not None
    assert ev.changed_elements() == []
    assert ev.occurred_at is None
    no_detail = dict(data)
    del no_detail["detail"]
    assert Event.model_validate_json(json.dumps(no_detail)).detail == ()


# --- helpers ----------------------------------------------------------------------------------

COLLECTION = wire(
    detail=[
        {
            "elementName": "Membership Number",
            "newValue": "A1",
            "oldValue": "",
            "elementSequence": "1",
        },
        {
            "elementName": "MEMBERSHIP NUMBER",
            "newValue": "B2",
            "oldValue": None,
            "elementSequence": "2",
        },
        None,
        {"elementName": "COMPANY", "newValue": "Smith &amp; Sons", "oldValue": "Smith"},
        {"elementName": "NOTE", "newValue": None, "oldValue": "old"},
        {"elementName": "EMPTY", "newValue": "", "oldValue": None},
        {"elementName": "CLEARED", "newValue": "", "oldValue": "was"},
        {"elementName": "SAME", "newValue": "x", "oldValue": "x"},
    ]
)


def test_element_is_case_insensitive_and_first() -> None:
    ev = Event.model_validate_json(json.dumps(COLLECTION))
    found = ev.element("membership number")
    assert found is not None
    assert found.new_value == "A1"
    assert ev.element("MeMbErShIp NuMbEr") == found
    assert ev.element("missing") is None


def test_elements_returns_every_match() -> None:
    ev = Event.model_validate_json(json.dumps(COLLECTION))
    values = [d.new_value for d in ev.elements("Membership number")]
    assert values == ["A1", "B2"]
    assert ev.elements("nothing") == []


def test_value_decodes_html_entities() -> None:
    ev = Event.model_validate_json(json.dumps(COLLECTION))
    assert ev.value("company") == "Smith & Sons"
    assert ev.value("NOTE") is None
    assert ev.value("NOTE", "n/a") == "n/a"
    assert ev.value("missing", "n/a") == "n/a"
    assert ev.value("EMPTY", "n/a") == ""
    company = ev.element("COMPANY")
    assert company is not None
    assert company.new_value == "Smith &amp; Sons"  # the raw value stays as received
    assert company.new_text == "Smith & Sons"
    assert company.old_text == "Smith"
    note = ev.element("NOTE")
    assert note is not None
    assert note.new_text is None
    assert note.old_text == "old"
    empty = ev.element("EMPTY")
    assert empty is not None
    assert empty.old_text is None


def test_changed_elements_treats_empty_and_null_alike() -> None:
    ev = Event.model_validate_json(json.dumps(COLLECTION))
    changed = [d.element_name for d in ev.changed_elements()]
    assert changed == ["Membership Number", "MEMBERSHIP NUMBER", "COMPANY", "NOTE", "CLEARED"]
    assert "EMPTY" not in changed  # "" and None are the same empty value
    assert "SAME" not in changed
    appendix_f = event()
    assert [d.element_name for d in appendix_f.changed_elements()] == ["ADULTS"]


@pytest.mark.parametrize(
    ("new", "old", "changed"),
    [("", "", False), (None, None, False), ("", None, False), (None, "", False), ("a", "", True)],
)
def test_detail_changed(new: str | None, old: str | None, changed: bool) -> None:
    assert EventDetail(element_name="X", new_value=new, old_value=old).changed is changed


def test_is_module_and_is_event_ignore_case() -> None:
    ev = event(moduleName="Reservation", eventName="Check In")
    assert ev.is_module("RESERVATION")
    assert ev.is_module("reservation")
    assert not ev.is_module("PROFILE")
    assert ev.is_event("CHECK IN")
    assert not ev.is_event("CHECK OUT")


def test_occurred_at() -> None:
    assert event().occurred_at == datetime(2024, 4, 28, 6, 18, 59, 28027)


# --- the one-pass next frame ------------------------------------------------------------------


def test_parse_next_frame_str_and_bytes() -> None:
    raw = json.dumps({"id": "1", "type": "next", "payload": {"data": {"newEvent": WIRE}}})
    frame: NextFrame = parse_next_frame(raw)
    assert frame == {"id": "1", "type": "next", "payload": {"data": {"newEvent": event()}}}
    assert type(frame["payload"]["data"]["newEvent"]) is Event
    assert parse_next_frame(raw.encode()) == frame
    # other members of the message are left out
    extra = {"id": "1", "type": "next", "payload": {"data": {"newEvent": WIRE}, "x": 1}, "y": 2}
    assert parse_next_frame(json.dumps(extra)) == frame


@pytest.mark.parametrize(
    "message",
    [
        {"id": "1", "type": "complete"},
        {"id": 1, "type": "next", "payload": {"data": {"newEvent": WIRE}}},
        {"id": "1", "type": "next", "payload": {"data": None}},
        {"id": "1", "type": "next", "payload": {"data": {"newEvent": {**WIRE, "primaryKey": 1}}}},
    ],
)
def test_parse_next_frame_refuses_other_frames(message: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        parse_next_frame(json.dumps(message))


def test_event_from_data_has_the_same_rules() -> None:
    assert event_from_data(wire()) == event()
    with pytest.raises(ValidationError):
        event_from_data(wire(metadata={"offset": 194, "uniqueEventId": "u"}))
    with pytest.raises(ValidationError):
        event_from_data(None)


# --- timestamps -------------------------------------------------------------------------------

UTC = timezone.utc


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # Oracle's DD-MON-RR HH.MI.SS.FF AM (the sample on the wire).
        ("28-APR-24 06.18.59.028027 AM", datetime(2024, 4, 28, 6, 18, 59, 28027)),
        ("28-APR-24 06.18.59.028027 PM", datetime(2024, 4, 28, 18, 18, 59, 28027)),
        ("28-APR-24 12.00.00.000000 AM", datetime(2024, 4, 28, 0, 0, 0)),  # midnight
        ("28-APR-24 12.30.15.5 PM", datetime(2024, 4, 28, 12, 30, 15, 500000)),  # noon
        ("28-APR-24 01.02.03 PM", datetime(2024, 4, 28, 13, 2, 3)),
        ("28-APR-24 11.59.59.999999 PM", datetime(2024, 4, 28, 23, 59, 59, 999999)),
        ("1-jan-24 06.18.59 am", datetime(2024, 1, 1, 6, 18, 59)),
        ("28-APR-24 06.18.59.028027AM", datetime(2024, 4, 28, 6, 18, 59, 28027)),
        ("28-APR-24 06.18.59.123456789 AM", datetime(2024, 4, 28, 6, 18, 59, 123456)),
        ("28-APR-2024 18.18.59", datetime(2024, 4, 28, 18, 18, 59)),  # 24-hour, no meridiem
        ("28-APR-24 00.00.00", datetime(2024, 4, 28, 0, 0, 0)),
        ("28-APR-49 06.18.59 AM", datetime(2049, 4, 28, 6, 18, 59)),  # RR: 00-49 -> 20xx
        ("28-APR-50 06.18.59 AM", datetime(1950, 4, 28, 6, 18, 59)),  # RR: 50-99 -> 19xx
        ("  28-DEC-99 06.18.59 AM  ", datetime(1999, 12, 28, 6, 18, 59)),
        # ISO 8601.
        ("2024-04-28T06:18:59Z", datetime(2024, 4, 28, 6, 18, 59, tzinfo=UTC)),
        ("2024-04-28T06:18:59.028027z", datetime(2024, 4, 28, 6, 18, 59, 28027, tzinfo=UTC)),
        (
            "2024-04-28T06:18:59+02:00",
            datetime(2024, 4, 28, 6, 18, 59, tzinfo=timezone(timedelta(hours=2))),
        ),
        (
            "2024-04-28T06:18:59.5-05:30",
            datetime(
                2024, 4, 28, 6, 18, 59, 500000, tzinfo=timezone(-timedelta(hours=5, minutes=30))
            ),
        ),
        ("2024-04-28T06:18:59", datetime(2024, 4, 28, 6, 18, 59)),
        ("2024-04-28 06:18:59", datetime(2024, 4, 28, 6, 18, 59)),
        ("2024-04-28", datetime(2024, 4, 28)),
        # Epoch milliseconds and seconds.
        ("1714285139028", datetime(2024, 4, 28, 6, 18, 59, 28000, tzinfo=UTC)),
        ("1714285139", datetime(2024, 4, 28, 6, 18, 59, tzinfo=UTC)),
        ("0", datetime(1970, 1, 1, tzinfo=UTC)),
    ],
)
def test_parse_timestamp_forms(text: str, expected: datetime) -> None:
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed is not None
    assert (parsed.tzinfo is None) == (expected.tzinfo is None)


@pytest.mark.parametrize(
    "text",
    [
        None,
        "",
        "   ",
        "yesterday",
        "28-XYZ-24 06.18.59 AM",  # no such month
        "31-FEB-24 06.18.59 AM",  # no such day
        "28-APR-24 00.18.59 AM",  # hour 0 does not exist on a 12-hour clock
        "28-APR-24 13.18.59 PM",
        "28-APR-24 25.00.00",
        "28-APR-24 06.61.00",
        "28-APR-0000 06.18.59",
        "2024-13-01T00:00:00",
        "2024-04-28T06:18:59+02:00Z",
        "99999999999999999999",  # milliseconds far beyond year 9999
        "9" * 5000,  # more digits than int() takes
        "\u00b2",  # a digit to str.isdigit, not to int()
        "\x00",
    ],
)
def test_parse_timestamp_garbage_is_none(text: str | None) -> None:
    assert parse_timestamp(text) is None


@given(st.text())
def test_parse_timestamp_never_raises(text: str) -> None:
    result = parse_timestamp(text)
    assert result is None or isinstance(result, datetime)


@given(
    st.from_regex(
        r"\A[0-9]{1,2}-[A-Za-z]{3}-([0-9]{2}|[0-9]{4}) [0-9]{1,2}\.[0-9]{2}\.[0-9]{2}"
        r"(\.[0-9]{1,9})?( ?[AaPp][Mm])?\Z"
    )
)
def test_parse_timestamp_never_raises_on_oracle_shapes(text: str) -> None:
    result = parse_timestamp(text)
    assert result is None or result.tzinfo is None


@given(st.integers(min_value=0, max_value=10**25))
def test_parse_timestamp_never_raises_on_digits(number: int) -> None:
    result = parse_timestamp(str(number))
    assert result is None or result.tzinfo is UTC
