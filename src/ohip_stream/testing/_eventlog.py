"""The gateway's event logs: one ordered log per chain, events encoded once (pure).

Offsets are consecutive integers from ``first_offset`` (protocol §6); each event's text is the
wire form of ``newEvent`` built once at publish time, so a replay of thousands of events costs a
string concatenation per frame. Time is passed in as wall seconds; nothing here touches a loop.
"""

from __future__ import annotations

import bisect
import json
import uuid
from collections.abc import Mapping
from typing import Any

from ohip_stream.testing._events import EventFactory, encoded_size, make_detail

__all__ = ["ChainLog", "StoredEvent", "backlog_templates", "broken_event", "dumps"]

dumps = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


class StoredEvent:
    """One event of a chain's log, pre-encoded once at publish time."""

    __slots__ = ("_delta", "encoded", "hotel_id", "offset", "offset_text", "published_at")

    def __init__(self, offset: int, published_at: float, hotel_id: str | None, encoded: str):
        self.offset = offset
        self.offset_text = str(offset)
        self.published_at = published_at
        self.hotel_id = hotel_id
        self.encoded = encoded
        self._delta: str | None = None

    def data(self) -> Any:
        """The event as a fresh dict (the wire form)."""
        return json.loads(self.encoded)

    def delta(self) -> str:
        """The event with only the detail elements whose value changed (``delta: true``)."""
        if self._delta is None:
            data = self.data()
            detail = data.get("detail") if isinstance(data, dict) else None
            if isinstance(detail, list):
                data["detail"] = [
                    item
                    for item in detail
                    if not isinstance(item, dict) or item.get("oldValue") != item.get("newValue")
                ]
                self._delta = dumps(data)
            else:
                self._delta = self.encoded
        return self._delta


class ChainLog:
    """The ordered event log of one chain: offsets are consecutive integers (protocol §6)."""

    def __init__(self, chain_code: str, first_offset: int) -> None:
        self.chain_code = chain_code
        self.first_offset = first_offset
        self.events: list[StoredEvent] = []
        self.times: list[float] = []
        # An opaque uniqueEventId: a random prefix per log and the offset in hex.
        base = uuid.uuid4().hex
        self._unique_prefix = f"{base[:8]}-{base[8:12]}-4{base[13:16]}-{base[16:20]}-"

    @property
    def next_offset(self) -> int:
        """The offset the next published event gets."""
        return self.first_offset + len(self.events)

    def unique_id(self, offset: int) -> str:
        """The ``uniqueEventId`` of the event at ``offset``."""
        return f"{self._unique_prefix}{offset:012x}"

    def append(self, published_at: float, hotel_id: str | None, encoded: str) -> StoredEvent:
        """Append an already encoded event (its metadata must carry :attr:`next_offset`)."""
        stored = StoredEvent(self.next_offset, published_at, hotel_id, encoded)
        self.events.append(stored)
        self.times.append(published_at)
        return stored

    def store(self, event: Mapping[str, Any], published_at: float) -> str:
        """Append ``event`` with the offset and unique id the gateway assigns; its offset."""
        body = dict(event)
        metadata = body.pop("metadata", None)
        metadata = dict(metadata) if isinstance(metadata, Mapping) else {}
        offset = self.next_offset
        metadata["offset"] = str(offset)
        metadata["uniqueEventId"] = self.unique_id(offset)
        rest = dumps(body)
        encoded = '{"metadata":' + dumps(metadata) + ("," + rest[1:] if body else "}")
        hotel = body.get("hotelId")
        self.append(published_at, hotel if isinstance(hotel, str) else None, encoded)
        return str(offset)

    def load_backlog(self, count: int, published_at: float, seed: int | None) -> list[str]:
        """Append ``count`` events of about 700 bytes from cached templates; first and last."""
        templates = backlog_templates(seed)
        first = self.next_offset
        unique = self.unique_id
        for index in range(count):
            hotel, rest = templates[index % len(templates)]
            offset = first + index
            encoded = (
                '{"metadata":{"offset":"'
                + str(offset)
                + '","uniqueEventId":"'
                + unique(offset)
                + '"},'
                + rest
            )
            self.append(published_at, hotel, encoded)
        return [str(first), str(first + count - 1)] if count else []

    def first_retained(self, cutoff: float) -> int:
        """The offset of the oldest event published at or after ``cutoff`` (7-day retention)."""
        return self.first_offset + bisect.bisect_left(self.times, cutoff)

    def index_of(self, offset: int) -> int:
        """The list index of ``offset`` in :attr:`events` (may be past the end)."""
        return offset - self.first_offset


def broken_event(index: int) -> dict[str, Any]:
    """An event that breaks the schema (``primaryKey`` a number, no ``eventName``)."""
    return {
        "moduleName": "RESERVATION",
        "primaryKey": 100000 + index,
        "timestamp": "not a timestamp",
        "hotelId": "HOTEL1",
        "detail": [{"elementName": None, "newValue": 2}],
    }


_TEMPLATE_CACHE: dict[int | None, list[tuple[str | None, str]]] = {}


def backlog_templates(seed: int | None) -> list[tuple[str | None, str]]:
    """Encoded events without their metadata, each about 700 bytes (fast replay)."""
    cached = _TEMPLATE_CACHE.get(seed)
    if cached is not None:
        return cached
    factory = EventFactory(seed)
    templates: list[tuple[str | None, str]] = []
    while len(templates) < 256:
        event = factory.next_event()
        detail = event["detail"]
        while encoded_size(event) > 760 and len(detail) > 1:
            detail.pop()
        filler = 0
        while encoded_size(event) < 640:
            filler += 1
            detail.append(make_detail(f"UDF CHAR{filler:02d}", "Y", "Y"))
        event.pop("metadata")
        hotel = event.get("hotelId")
        templates.append((hotel if isinstance(hotel, str) else None, dumps(event)[1:]))
    _TEMPLATE_CACHE[seed] = templates
    return templates
