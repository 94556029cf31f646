"""Realistic OPERA Cloud business events for tests, the demo and the emulator.

Nothing here imports the server stack: :func:`make_event` and :class:`EventFactory` work without
the ``emulator`` extra. Events are plain dicts in the wire form (camelCase, every id and number a
string, protocol §3); their ``metadata`` holds placeholders that the emulator replaces with the
offset and unique id it assigns on publish.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterable, Iterator, Mapping
from datetime import date, datetime, timedelta
from typing import Any

from pydantic import BaseModel
from pydantic.alias_generators import to_camel

__all__ = [
    "DETAIL_FIELDS",
    "PLACEHOLDER_OFFSET",
    "PLACEHOLDER_UNIQUE_ID",
    "EventFactory",
    "format_oracle_timestamp",
    "make_detail",
    "make_event",
]

#: The offset of an event that has not been published yet (the emulator assigns the real one).
PLACEHOLDER_OFFSET = "0"
#: The unique id of an event that has not been published yet.
PLACEHOLDER_UNIQUE_ID = "unpublished"

#: The fields of an ``EventDetail`` in the order the emulator writes them.
DETAIL_FIELDS: tuple[str, ...] = (
    "elementName",
    "elementType",
    "elementSequence",
    "elementRole",
    "newValue",
    "oldValue",
    "scopeFrom",
    "scopeTo",
)

_MONTHS = ("JAN", "FEB", "MAR", "APR", "MAY", "JUN", "JUL", "AUG", "SEP", "OCT", "NOV", "DEC")


def format_oracle_timestamp(moment: datetime) -> str:
    """``moment`` as Oracle writes it, ``DD-MON-RR HH.MI.SS.FF AM``.

    >>> format_oracle_timestamp(datetime(2024, 4, 28, 6, 18, 59, 28027))
    '28-APR-24 06.18.59.028027 AM'
    """
    hour = moment.hour % 12 or 12
    meridiem = "AM" if moment.hour < 12 else "PM"
    return (
        f"{moment.day:02d}-{_MONTHS[moment.month - 1]}-{moment.year % 100:02d} "
        f"{hour:02d}.{moment.minute:02d}.{moment.second:02d}.{moment.microsecond:06d} {meridiem}"
    )


def _camel(key: str) -> str:
    return to_camel(key) if "_" in key else key


def make_detail(
    element_name: str,
    new_value: str | None = None,
    old_value: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One ``detail`` element in the wire form, every schema field present (``None`` if unset).

    ``extra`` takes the other fields in snake_case or camelCase (``scope_from=``, ``elementType=``).
    """
    element: dict[str, Any] = dict.fromkeys(DETAIL_FIELDS)
    element["elementName"] = element_name
    element["newValue"] = new_value
    element["oldValue"] = old_value
    for key, value in extra.items():
        element[_camel(key)] = value
    return element


def _normalise_detail(item: Any) -> Any:
    if item is None:
        return None
    if isinstance(item, BaseModel):
        item = item.model_dump(by_alias=True)
    if not isinstance(item, Mapping):
        return item  # kept as given: a test may want a detail that breaks the schema
    element: dict[str, Any] = dict.fromkeys(DETAIL_FIELDS)
    for key, value in item.items():
        element[_camel(str(key))] = value
    return element


def make_event(
    module_name: str = "RESERVATION",
    event_name: str = "NEW RESERVATION",
    hotel_id: str | None = "HOTEL1",
    primary_key: str | None = None,
    detail: Iterable[Mapping[str, Any] | BaseModel | None] | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """One event in the wire form, ready for ``Emulator.publish(events=[...])``.

    ``metadata`` holds placeholders (offset ``"0"``) that the emulator replaces on publish.
    ``primary_key`` is generated when ``None``; ``detail`` takes dicts with snake_case or camelCase
    keys (or ``EventDetail`` models) and defaults to no elements. ``extra`` sets or adds other
    top-level fields, in snake_case or camelCase (``timestamp=``, ``publisher_id=``,
    ``actionInstanceId=``); unknown fields are kept, as Oracle may add fields.

    >>> make_event("PROFILE", "NEW PROFILE", hotel_id=None)["hotelId"] is None
    True
    """
    rng = random.Random()
    event: dict[str, Any] = {
        "metadata": {"offset": PLACEHOLDER_OFFSET, "uniqueEventId": PLACEHOLDER_UNIQUE_ID},
        "moduleName": module_name,
        "eventName": event_name,
        "primaryKey": primary_key if primary_key is not None else str(rng.randint(10**5, 10**7)),
        "timestamp": format_oracle_timestamp(datetime.now()),
        "hotelId": hotel_id,
        "publisherId": str(rng.randint(100, 999)),
        "actionInstanceId": str(rng.randint(10**6, 10**8)),
        "detail": [_normalise_detail(item) for item in (detail or ())],
    }
    for key, value in extra.items():
        event[_camel(key)] = value
    return event


# --- the seeded generator ---------------------------------------------------------------------

_FIRST_NAMES = (
    "Amelia", "Oliver", "Sofia", "Liam", "Chloé", "Mateo", "Hannah", "Noah", "Aiko", "Lukas",
    "Isabella", "Arjun", "Freya", "Tomás", "Zara", "Elias", "Maja", "Yusuf", "Grace", "Henrik",
)  # fmt: skip
_LAST_NAMES = (
    "Smith", "García", "Müller", "Rossi", "Nakamura", "O'Brien", "Dubois", "Kowalski", "Silva",
    "Johansson", "Patel", "Nguyen", "Fischer", "Jensen", "Moreau", "Costa", "Brown", "Tanaka",
)  # fmt: skip
_COMPANIES = (
    "Smith &amp; Sons Ltd", "Acme Travel", "Baker &amp; Co", "Globex Corp", "Initech",
    "Oracle &amp; Partners", "Northwind Traders",
)  # fmt: skip
_ROOM_TYPES = ("STDK", "STDQ", "DLXK", "DLXT", "JRST", "EXST")
_RATE_CODES = ("BAR", "RACK", "CORP1", "AAA", "PKGBB", "ADV14", "GOV")
_MARKET_CODES = ("LEIS", "CORP", "GRP", "GOV", "WHOL")
_SOURCE_CODES = ("WEB", "GDS", "PHONE", "WALKIN", "OTA")
_ROOM_STATUSES = ("DIRTY", "CLEAN", "INSPECTED", "PICKUP")
_TRX_CODES = (("1000", "Room Charge"), ("2000", "Food &amp; Beverage"), ("3050", "Minibar"))

_DEFAULT_HOTELS = ("HOTEL1", "HOTEL2", "HOTEL3")


class _Reservation:
    __slots__ = ("adults", "arrival", "children", "departure", "first", "hotel", "id", "last")

    def __init__(self, **values: Any) -> None:
        for key, value in values.items():
            setattr(self, key, value)

    id: str
    hotel: str
    arrival: date
    departure: date
    adults: int
    children: int
    first: str
    last: str


class EventFactory:
    """A seeded generator of realistic OPERA business events (wire-form dicts).

    The same ``seed`` and ``start`` give the same sequence. Modules and events: RESERVATION (NEW
    RESERVATION, UPDATE RESERVATION, CHECK IN, CHECK OUT, CANCEL RESERVATION, NO SHOW), PROFILE
    (NEW PROFILE, UPDATE PROFILE; chain level, ``hotelId`` null), HOUSEKEEPING (UPDATE ROOM
    STATUS, NEW OUT OF ORDER), BLOCK (NEW BLOCK, UPDATE BLOCK) and CASHIERING (NEW POSTING), with
    detail elements whose old and new values follow the records' history (a new record has
    ``oldValue`` ``""``; an update repeats unchanged elements with old == new, as Oracle's full
    event mode does). ``start`` is the simulated time of the first event (default: a fixed date,
    so output does not depend on the wall clock).
    """

    def __init__(
        self,
        seed: int | None = 0,
        *,
        hotels: Iterable[str] = _DEFAULT_HOTELS,
        start: datetime | None = None,
    ) -> None:
        self._rng = random.Random(seed)
        self._hotels = tuple(hotels) or _DEFAULT_HOTELS
        self._now = start if start is not None else datetime(2024, 4, 28, 6, 18, 59, 28027)
        self._reservations: list[_Reservation] = []
        self._in_house: list[_Reservation] = []
        self._profiles: list[tuple[str, str, str]] = []
        self._blocks: list[tuple[str, str, str]] = []
        self._next_id = 900000 + self._rng.randint(0, 99999)
        self._action_instance = 10**7 + self._rng.randint(0, 10**6)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        while True:
            yield self.next_event()

    def events(self, count: int) -> list[dict[str, Any]]:
        """The next ``count`` events."""
        return [self.next_event() for _ in range(count)]

    def next_event(self) -> dict[str, Any]:
        """The next event of the simulated property."""
        rng = self._rng
        self._now += timedelta(seconds=rng.uniform(0.2, 40.0))
        roll = rng.random()
        if roll < 0.55:
            return self._reservation_event()
        if roll < 0.68:
            return self._profile_event()
        if roll < 0.80:
            return self._housekeeping_event()
        if roll < 0.86:
            return self._block_event()
        return self._cashiering_event()

    # --- helpers ---------------------------------------------------------------------------------

    def _new_id(self) -> str:
        self._next_id += self._rng.randint(1, 17)
        return str(self._next_id)

    def _event(
        self,
        module: str,
        name: str,
        primary_key: str,
        hotel: str | None,
        detail: list[dict[str, Any]],
    ) -> dict[str, Any]:
        self._action_instance += self._rng.randint(1, 5)
        return {
            "metadata": {"offset": PLACEHOLDER_OFFSET, "uniqueEventId": PLACEHOLDER_UNIQUE_ID},
            "moduleName": module,
            "eventName": name,
            "primaryKey": primary_key,
            "timestamp": format_oracle_timestamp(self._now),
            "hotelId": hotel,
            "publisherId": str(100 + self._rng.randint(0, 80)),
            "actionInstanceId": str(self._action_instance),
            "detail": detail,
        }

    def _today(self) -> date:
        return self._now.date()

    # --- RESERVATION -----------------------------------------------------------------------------

    def _reservation_event(self) -> dict[str, Any]:
        rng = self._rng
        roll = rng.random()
        if not self._reservations or roll < 0.35:
            return self._new_reservation()
        if roll < 0.60:
            return self._update_reservation()
        if roll < 0.75:
            return self._check_in()
        if roll < 0.88 and self._in_house:
            return self._check_out()
        if roll < 0.95:
            return self._cancel("CANCEL RESERVATION")
        return self._cancel("NO SHOW")

    def _stay_elements(self, res: _Reservation, old: _Reservation | None) -> list[dict[str, Any]]:
        def pair(new: object, before: object) -> tuple[str, str]:
            return str(new), ("" if old is None else str(before))

        o = old or res
        rate = self._rng.choice(_RATE_CODES)
        amount = f"{self._rng.randint(89, 420)}.00"
        room_type = self._rng.choice(_ROOM_TYPES)
        items = [
            make_detail("ARRIVAL DATE", *pair(res.arrival.isoformat(), o.arrival.isoformat())),
            make_detail(
                "DEPARTURE DATE", *pair(res.departure.isoformat(), o.departure.isoformat())
            ),
            make_detail("ADULTS", *pair(res.adults, o.adults)),
            make_detail("CHILDREN", *pair(res.children, o.children)),
            make_detail("FIRST NAME", *pair(res.first, o.first)),
            make_detail("LAST NAME", *pair(res.last, o.last)),
            make_detail("ROOM TYPE", room_type, "" if old is None else room_type),
            make_detail("RATE CODE", rate, "" if old is None else rate),
            make_detail(
                "RATE AMOUNT",
                amount,
                "" if old is None else amount,
                element_type="RESERVATION DAILY ELEMENT",
                element_sequence="1",
                scope_from=res.arrival.isoformat(),
                scope_to=(res.departure - timedelta(days=1)).isoformat(),
            ),
        ]
        if old is None:
            items.append(make_detail("MARKET CODE", self._rng.choice(_MARKET_CODES), ""))
            items.append(make_detail("SOURCE CODE", self._rng.choice(_SOURCE_CODES), ""))
            if self._rng.random() < 0.25:
                items.append(
                    make_detail(
                        "COMPANY",
                        self._rng.choice(_COMPANIES),
                        "",
                        element_type="RESERVATION PROFILE",
                        element_role="COMPANY",
                    )
                )
        return items

    def _new_reservation(self) -> dict[str, Any]:
        rng = self._rng
        arrival = self._today() + timedelta(days=rng.randint(0, 60))
        res = _Reservation(
            id=self._new_id(),
            hotel=rng.choice(self._hotels),
            arrival=arrival,
            departure=arrival + timedelta(days=rng.randint(1, 7)),
            adults=rng.randint(1, 3),
            children=rng.choice((0, 0, 0, 1, 2)),
            first=rng.choice(_FIRST_NAMES),
            last=rng.choice(_LAST_NAMES),
        )
        self._reservations.append(res)
        if len(self._reservations) > 500:
            del self._reservations[0]
        detail = self._stay_elements(res, None)
        detail.append(make_detail("RESERVATION STATUS", "RESERVED", ""))
        detail.append(make_detail("CONFIRMATION NUMBER", str(rng.randint(10**7, 10**8)), ""))
        return self._event("RESERVATION", "NEW RESERVATION", res.id, res.hotel, detail)

    def _update_reservation(self) -> dict[str, Any]:
        rng = self._rng
        res = rng.choice(self._reservations)
        old = _Reservation(**{name: getattr(res, name) for name in _Reservation.__slots__})
        change = rng.random()
        if change < 0.4:
            res.adults = max(1, res.adults + rng.choice((-1, 1)))
        elif change < 0.6:
            res.children = max(0, res.children + rng.choice((-1, 1)))
        elif change < 0.85:
            res.departure += timedelta(days=rng.choice((-1, 1, 2)))
            if res.departure <= res.arrival:
                res.departure = res.arrival + timedelta(days=1)
        else:
            res.first = rng.choice(_FIRST_NAMES)
        detail = self._stay_elements(res, old)
        return self._event("RESERVATION", "UPDATE RESERVATION", res.id, res.hotel, detail)

    def _check_in(self) -> dict[str, Any]:
        res = self._rng.choice(self._reservations)
        room = str(self._rng.randint(1, 12) * 100 + self._rng.randint(1, 40))
        self._in_house.append(res)
        if len(self._in_house) > 200:
            del self._in_house[0]
        detail = [
            make_detail("RESERVATION STATUS", "CHECKED IN", "RESERVED"),
            make_detail("ROOM", room, ""),
            make_detail("ARRIVAL DATE", self._today().isoformat(), res.arrival.isoformat()),
        ]
        return self._event("RESERVATION", "CHECK IN", res.id, res.hotel, detail)

    def _check_out(self) -> dict[str, Any]:
        res = self._in_house.pop(self._rng.randrange(len(self._in_house)))
        detail = [
            make_detail("RESERVATION STATUS", "CHECKED OUT", "CHECKED IN"),
            make_detail("DEPARTURE DATE", self._today().isoformat(), res.departure.isoformat()),
        ]
        return self._event("RESERVATION", "CHECK OUT", res.id, res.hotel, detail)

    def _cancel(self, name: str) -> dict[str, Any]:
        res = self._reservations.pop(self._rng.randrange(len(self._reservations)))
        status = "CANCELLED" if name.startswith("CANCEL") else "NO SHOW"
        detail = [make_detail("RESERVATION STATUS", status, "RESERVED")]
        if status == "CANCELLED":
            number = str(self._rng.randint(10**6, 10**7))
            detail.append(make_detail("CANCELLATION NUMBER", number, ""))
            detail.append(make_detail("CANCELLATION REASON", "GUEST REQUEST", ""))
        return self._event("RESERVATION", name, res.id, res.hotel, detail)

    # --- PROFILE (chain level: hotelId is null) --------------------------------------------------

    def _profile_event(self) -> dict[str, Any]:
        rng = self._rng
        if not self._profiles or rng.random() < 0.5:
            profile = (self._new_id(), rng.choice(_FIRST_NAMES), rng.choice(_LAST_NAMES))
            self._profiles.append(profile)
            if len(self._profiles) > 500:
                del self._profiles[0]
            pid, first, last = profile
            email = f"{first.lower()}.{last.lower()}@example.com".replace("'", "")
            detail = [
                make_detail("FIRST NAME", first, ""),
                make_detail("LAST NAME", last, ""),
                make_detail("PROFILE TYPE", "GUEST", ""),
                make_detail("EMAIL", email, "", element_type="COMMUNICATION", element_sequence="1"),
                make_detail("LANGUAGE", rng.choice(("E", "DE", "FR", "ES", "JA")), ""),
            ]
            return self._event("PROFILE", "NEW PROFILE", pid, None, detail)
        index = rng.randrange(len(self._profiles))
        pid, first, last = self._profiles[index]
        new_last = rng.choice(_LAST_NAMES)
        self._profiles[index] = (pid, first, new_last)
        detail = [
            make_detail("FIRST NAME", first, first),
            make_detail("LAST NAME", new_last, last),
            make_detail("VIP STATUS", rng.choice(("", "VIP1", "VIP2")), ""),
        ]
        return self._event("PROFILE", "UPDATE PROFILE", pid, None, detail)

    # --- HOUSEKEEPING ----------------------------------------------------------------------------

    def _housekeeping_event(self) -> dict[str, Any]:
        rng = self._rng
        hotel = rng.choice(self._hotels)
        room = str(rng.randint(1, 12) * 100 + rng.randint(1, 40))
        if rng.random() < 0.85:
            old, new = rng.sample(_ROOM_STATUSES, 2)
            detail = [
                make_detail("ROOM", room, room),
                make_detail("ROOM STATUS", new, old),
                make_detail("FO STATUS", rng.choice(("VACANT", "OCCUPIED")), ""),
            ]
            return self._event("HOUSEKEEPING", "UPDATE ROOM STATUS", room, hotel, detail)
        start = self._today() + timedelta(days=rng.randint(0, 5))
        detail = [
            make_detail("ROOM", room, ""),
            make_detail("REASON", rng.choice(("MAINT", "PAINT", "PLUMB")), ""),
            make_detail(
                "OUT OF ORDER",
                "Y",
                "",
                scope_from=start.isoformat(),
                scope_to=(start + timedelta(days=rng.randint(1, 4))).isoformat(),
            ),
        ]
        return self._event("HOUSEKEEPING", "NEW OUT OF ORDER", room, hotel, detail)

    # --- BLOCK -----------------------------------------------------------------------------------

    def _block_event(self) -> dict[str, Any]:
        rng = self._rng
        if not self._blocks or rng.random() < 0.5:
            block = (self._new_id(), rng.choice(self._hotels), f"GRP{rng.randint(100, 999)}")
            self._blocks.append(block)
            bid, hotel, code = block
            start = self._today() + timedelta(days=rng.randint(14, 120))
            detail = [
                make_detail("BLOCK CODE", code, ""),
                make_detail("BLOCK NAME", rng.choice(_COMPANIES) + " Conference", ""),
                make_detail("BLOCK STATUS", "TEN", ""),
                make_detail(
                    "ROOMS",
                    str(rng.randint(5, 60)),
                    "",
                    element_type="BLOCK GRID",
                    scope_from=start.isoformat(),
                    scope_to=(start + timedelta(days=rng.randint(1, 4))).isoformat(),
                ),
            ]
            return self._event("BLOCK", "NEW BLOCK", bid, hotel, detail)
        bid, hotel, code = rng.choice(self._blocks)
        detail = [
            make_detail("BLOCK CODE", code, code),
            make_detail("BLOCK STATUS", "DEF", "TEN"),
        ]
        return self._event("BLOCK", "UPDATE BLOCK", bid, hotel, detail)

    # --- CASHIERING ------------------------------------------------------------------------------

    def _cashiering_event(self) -> dict[str, Any]:
        rng = self._rng
        hotel = rng.choice(self._hotels)
        code, description = rng.choice(_TRX_CODES)
        detail = [
            make_detail("TRANSACTION CODE", code, ""),
            make_detail("TRANSACTION DESCRIPTION", description, ""),
            make_detail("AMOUNT", f"{rng.randint(5, 400)}.{rng.randint(0, 99):02d}", ""),
            make_detail("CURRENCY", "USD", ""),
            make_detail("BUSINESS DATE", self._today().isoformat(), ""),
        ]
        if self._in_house:
            detail.append(make_detail("RESERVATION ID", rng.choice(self._in_house).id, ""))
        return self._event("CASHIERING", "NEW POSTING", self._new_id(), hotel, detail)


def encoded_size(event: Mapping[str, Any]) -> int:
    """The size in bytes of ``event`` as compact JSON (what the emulator sends)."""
    return len(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode())
