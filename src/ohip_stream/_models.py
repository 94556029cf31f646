"""Pydantic models of an OHIP business event (the ``EventHeader`` of the streaming schema).

Attributes are snake_case with the wire's camelCase as aliases; unknown fields are kept (Oracle
adds fields without notice), and every model is immutable. Every id and number stays a string,
as on the wire: ``event.metadata.offset`` is ``"193"``, never ``193``.

``model_dump(by_alias=True)`` gives the wire form back. :func:`parse_next_frame` validates a whole
``next`` frame from its raw text in one pass, which is the hot path of the stream.
"""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, with_config
from pydantic.alias_generators import to_camel
from typing_extensions import TypedDict

__all__ = [
    "Event",
    "EventDetail",
    "EventMetadata",
    "NextFrame",
    "parse_next_frame",
    "parse_timestamp",
]

_MODEL_CONFIG = ConfigDict(
    alias_generator=to_camel,
    populate_by_name=True,
    extra="allow",
    frozen=True,
    strict=True,
)


#: The schema's rule for an offset (``String`` of ASCII digits, at most 20: the subscription's
#: ``offset`` argument), applied to every event's offset as it is validated, so that an offset
#: the stream could not send back never reaches a checkpoint. tests/test_query.py checks it
#: against the bundled schema.
OFFSET_PATTERN = r"^[0-9]{1,20}$"


class EventMetadata(BaseModel):
    """Where the event sits in the stream: its offset (a digit string) and its unique id."""

    model_config = _MODEL_CONFIG

    offset: str = Field(pattern=OFFSET_PATTERN)
    """The event's position in the chain's stream (``offset`` on the wire): 1 to 20 ASCII
    digits kept as a string, such as ``"193"``. Persist it after processing to resume after it.
    An event whose offset breaks this rule is invalid: it could never be sent back in a
    subscription."""
    unique_event_id: str
    """A unique id of the event (``uniqueEventId``): the same event replayed after a reconnect
    has the same id, so it is the key for de-duplication downstream."""


class EventDetail(BaseModel):
    """One data element of the changed record (``ADULTS``, ``ARRIVAL DATE``, ``FIRST NAME``...).

    A new record has ``old_value == ""``, a cleared field ``new_value == ""``; older gateways send
    ``None`` for both cases. Without ``delta`` unchanged elements come with old == new.
    """

    model_config = _MODEL_CONFIG

    element_name: str
    """The element's name (``elementName``), such as ``ARRIVAL DATE``; collections repeat it."""
    new_value: str | None = None
    """The value after the change (``newValue``), as sent: HTML entities are not decoded (see
    :attr:`new_text`)."""
    old_value: str | None = None
    """The value before the change (``oldValue``); ``""`` for a new record."""
    scope_from: str | None = None
    """The first date the value applies to (``scopeFrom``, ``YYYY-MM-DD``), for date-ranged
    elements such as a rate."""
    scope_to: str | None = None
    """The last date the value applies to (``scopeTo``, ``YYYY-MM-DD``)."""
    element_sequence: str | None = None
    """``elementSequence``: with :attr:`element_type` and :attr:`element_role`, tells which
    item of a collection (several phone numbers, several rates) the element belongs to."""
    element_type: str | None = None
    """``elementType``: correlates the items of a collection (see :attr:`element_sequence`)."""
    element_role: str | None = None
    """``elementRole``: correlates the items of a collection (see :attr:`element_sequence`)."""

    @property
    def changed(self) -> bool:
        """Whether the value changed (``None`` and ``""`` count as the same empty value)."""
        return (self.new_value or "") != (self.old_value or "")

    @property
    def new_text(self) -> str | None:
        """``new_value`` with HTML entities decoded (``&amp;`` -> ``&``)."""
        return None if self.new_value is None else html.unescape(self.new_value)

    @property
    def old_text(self) -> str | None:
        """``old_value`` with HTML entities decoded."""
        return None if self.old_value is None else html.unescape(self.old_value)


class Event(BaseModel):
    """One OPERA Cloud business event, as delivered by ``newEvent``."""

    model_config = _MODEL_CONFIG

    metadata: EventMetadata
    """The event's offset and unique id (see :class:`EventMetadata`)."""
    module_name: str
    """The OPERA module that raised the event (``moduleName``), such as ``RESERVATION``."""
    event_name: str
    """What happened (``eventName``), such as ``CHECK IN`` or ``UPDATE RESERVATION``."""
    primary_key: str
    """The id of the changed record (``primaryKey``), such as a reservation id: what a
    follow-up REST call asks for."""
    timestamp: str
    """When the change happened (``timestamp``), as the gateway formats it; see
    :attr:`occurred_at` for a ``datetime``."""
    hotel_id: str | None = None
    """The property the event belongs to (``hotelId``); ``None`` for chain-level events."""
    publisher_id: str | None = None
    """The publisher of the event (``publisherId``), when the gateway sends one."""
    action_instance_id: str | None = None
    """The id of the action instance that produced the event (``actionInstanceId``), when the
    gateway sends one; one user action can emit several events."""
    # The schema allows null items in the list ([EventDetail]!); they are kept as they came.
    # Not strict: the wire's list (a decoded frame, ``model_dump(mode="json")``) becomes a tuple;
    # each item stays strict.
    detail: tuple[EventDetail | None, ...] = Field(default=(), strict=False)
    """The data elements of the changed record (``detail``), in the order sent; with ``delta``
    only the changed ones. See :meth:`element`, :meth:`value` and :meth:`changed_elements`."""

    @property
    def offset(self) -> str:
        """Shortcut for ``metadata.offset``."""
        return self.metadata.offset

    @property
    def unique_event_id(self) -> str:
        """Shortcut for ``metadata.unique_event_id``."""
        return self.metadata.unique_event_id

    def elements(self, name: str) -> list[EventDetail]:
        """Every detail element called ``name`` (case-insensitive; collections repeat names)."""
        wanted = name.casefold()
        return [d for d in self.detail if d is not None and d.element_name.casefold() == wanted]

    def element(self, name: str) -> EventDetail | None:
        """The first detail element called ``name`` (case-insensitive), or ``None``."""
        found = self.elements(name)
        return found[0] if found else None

    def value(self, name: str, default: str | None = None) -> str | None:
        """The new value of element ``name`` with HTML entities decoded, or ``default``."""
        found = self.element(name)
        if found is None or found.new_value is None:
            return default
        return found.new_text

    def changed_elements(self) -> list[EventDetail]:
        """The detail elements whose value changed."""
        return [d for d in self.detail if d is not None and d.changed]

    def is_module(self, name: str) -> bool:
        """Whether ``module_name`` is ``name``, compared case-insensitively."""
        return self.module_name.casefold() == name.casefold()

    def is_event(self, name: str) -> bool:
        """Whether ``event_name`` is ``name``, compared case-insensitively."""
        return self.event_name.casefold() == name.casefold()

    @property
    def occurred_at(self) -> datetime | None:
        """A best-effort ``datetime`` from ``timestamp``; ``None`` when the form is unknown."""
        return parse_timestamp(self.timestamp)


# Oracle's DD-MON-RR HH.MI.SS.FF AM, e.g. "28-APR-24 06.18.59.028027 AM".
_ORACLE_TIMESTAMP = re.compile(
    r"^(\d{1,2})-([A-Za-z]{3})-(\d{2}|\d{4}) (\d{1,2})\.(\d{2})\.(\d{2})(?:\.(\d{1,9}))?"
    r"(?: ?([AaPp][Mm]))?$"
)
_MONTHS = {
    m: i
    for i, m in enumerate(
        ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"), 1
    )
}


def parse_timestamp(value: str | None) -> datetime | None:
    """Parse the timestamp forms seen on OHIP; anything else gives ``None``, never an error.

    Known forms: ISO 8601 (with or without an offset, ``Z`` accepted), Oracle's
    ``DD-MON-RR HH.MI.SS.FF AM``, and epoch milliseconds or seconds as digits. A value without a
    zone is returned naive: the gateway does not say which zone it means.
    """
    if not value:
        return None
    text = value.strip()
    try:
        if text.isdigit():
            number = int(text)
            seconds = number / 1000 if number > 10**11 else number
            return datetime.fromtimestamp(seconds, tz=timezone.utc)
        match = _ORACLE_TIMESTAMP.match(text)
        if match is not None:
            return _oracle_datetime(match)
        iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
        return datetime.fromisoformat(iso)
    except (ValueError, OverflowError, OSError):
        return None


def _oracle_datetime(match: re.Match[str]) -> datetime | None:
    day, month_name, year_text, hour_text, minute, second, fraction, meridiem = match.groups()
    month = _MONTHS.get(month_name.upper())
    if month is None:
        return None
    year = int(year_text)
    if len(year_text) == 2:  # RR: 00-49 -> 2000s, 50-99 -> 1900s
        year += 2000 if year < 50 else 1900
    hour = int(hour_text)
    if meridiem is not None:
        if not 1 <= hour <= 12:
            return None
        hour = hour % 12 + (12 if meridiem.upper() == "PM" else 0)
    micro = int((fraction or "0")[:6].ljust(6, "0"))
    return datetime(year, month, int(day), hour, int(minute), int(second), micro)


# --- the hot path: one pass from the raw ``next`` frame to an Event ----------------------------


# The envelope is plain dicts: a TypedDict costs less to build than a model per level (one
# model, the Event, per frame), and is read with subscripts, which cost less than model
# attributes on the hot path.


@with_config(ConfigDict(strict=True))
class _NewEventData(TypedDict):
    """``payload.data`` of a ``next`` message: the subscription's one field."""

    newEvent: Event


@with_config(ConfigDict(strict=True))
class _NextPayload(TypedDict):
    """``payload`` of a ``next`` message."""

    data: _NewEventData


@with_config(ConfigDict(strict=True))
class NextFrame(TypedDict):
    """A graphql-transport-ws ``next`` message that carries one ``newEvent``, as validated by
    :func:`parse_next_frame`: ``frame["payload"]["data"]["newEvent"]`` is the :class:`Event`.
    Other members of the message are left out."""

    id: str
    type: Literal["next"]
    payload: _NextPayload


_NEXT_FRAME: TypeAdapter[NextFrame] = TypeAdapter(NextFrame)
# The core validator itself: this runs once per event, and the adapter's method adds a Python
# call with keyword handling around the same validator.
_validate_next_json: Callable[[str | bytes | bytearray], NextFrame] = (
    _NEXT_FRAME.validator.validate_json
)


def parse_next_frame(raw: str | bytes | bytearray) -> NextFrame:
    """Validate a whole ``next`` frame from its raw text in one pass (raises
    ``pydantic.ValidationError``); ``parse_next_frame(raw)["payload"]["data"]["newEvent"]`` is the
    :class:`Event`."""
    frame: NextFrame = _validate_next_json(raw)
    return frame


def event_from_data(data: Any) -> Event:
    """Validate the ``newEvent`` object of an already decoded ``next`` payload.

    It goes through JSON so that the rules are exactly those of :func:`parse_next_frame` (this
    is the slow path, for frames the one-pass parse refused).
    """
    return Event.model_validate_json(json.dumps(data))
