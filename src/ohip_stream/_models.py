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


class EventMetadata(BaseModel):
    """Where the event sits in the stream: its offset (a digit string) and its unique id."""

    model_config = _MODEL_CONFIG

    offset: str
    unique_event_id: str


class EventDetail(BaseModel):
    """One data element of the changed record (``ADULTS``, ``ARRIVAL DATE``, ``FIRST NAME``...).

    A new record has ``old_value == ""``, a cleared field ``new_value == ""``; older gateways send
    ``None`` for both cases. Without ``delta`` unchanged elements come with old == new.
    """

    model_config = _MODEL_CONFIG

    element_name: str
    new_value: str | None = None
    old_value: str | None = None
    scope_from: str | None = None
    scope_to: str | None = None
    element_sequence: str | None = None
    element_type: str | None = None
    element_role: str | None = None

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
    module_name: str
    event_name: str
    primary_key: str
    timestamp: str
    hotel_id: str | None = None
    publisher_id: str | None = None
    action_instance_id: str | None = None
    # The schema allows null items in the list ([EventDetail]!); they are kept as they came.
    # Not strict: the wire's list (a decoded frame, ``model_dump(mode="json")``) becomes a tuple;
    # each item stays strict.
    detail: tuple[EventDetail | None, ...] = Field(default=(), strict=False)

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
_validate_next_json: Callable[[str | bytes], NextFrame] = _NEXT_FRAME.validator.validate_json


def parse_next_frame(raw: str | bytes) -> NextFrame:
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
