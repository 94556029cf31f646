"""A pytest test of an integration, against a local OHIP gateway (the ``ohip_emulator`` fixture).

    pip install "ohip-stream[emulator]" pytest
    pytest examples/test_my_integration.py

The integration under test keeps a board of occupied rooms per hotel from CHECK IN and CHECK
OUT events. It is written against ``EventStream`` as production code would be; the tests feed
it events through the emulator, with no Oracle environment.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict

from ohip_stream import Event, EventStream, MemoryCheckpointStore, Timings
from ohip_stream.testing import make_detail, make_event

# --- the integration ------------------------------------------------------------------------


class RoomBoard:
    """Occupied rooms per hotel, kept up to date from business events."""

    def __init__(self) -> None:
        self.occupied: dict[str, set[str]] = defaultdict(set)
        self.rejected: list[str] = []

    def apply(self, event: Event) -> None:
        room = event.value("ROOM")
        if event.hotel_id is None or room is None:
            return
        if event.is_event("CHECK IN"):
            self.occupied[event.hotel_id].add(room)
        elif event.is_event("CHECK OUT"):
            self.occupied[event.hotel_id].discard(room)

    def dead_letter(self, raw: str, error: Exception) -> None:
        self.rejected.append(raw)


async def run_board(board: RoomBoard, max_events: int, **stream_options: object) -> None:
    """Consume until ``max_events`` events were applied (production code would run forever)."""
    async with EventStream.from_env(on_invalid=board.dead_letter, **stream_options) as stream:
        async for event in stream:
            board.apply(event)
            if stream.stats.events >= max_events:
                break


# --- the tests ------------------------------------------------------------------------------


def check_in(hotel: str, room: str) -> dict[str, object]:
    return make_event("RESERVATION", "CHECK IN", hotel_id=hotel, detail=[make_detail("ROOM", room)])


def check_out(hotel: str, room: str) -> dict[str, object]:
    return make_event(
        "RESERVATION", "CHECK OUT", hotel_id=hotel, detail=[make_detail("ROOM", room)]
    )


def test_check_ins_and_outs_reach_the_board(ohip_emulator, monkeypatch):
    for name, value in ohip_emulator.env().items():  # OHIP_GATEWAY_URL, OHIP_APP_KEY, ...
        monkeypatch.setenv(name, value)
    ohip_emulator.publish_sync(
        events=[
            check_in("HOTEL1", "101"),
            check_in("HOTEL1", "102"),
            make_event("PROFILE", "NEW PROFILE", hotel_id=None),  # not for the board
            check_in("HOTEL2", "7"),
            check_out("HOTEL1", "101"),
        ]
    )
    board = RoomBoard()

    asyncio.run(asyncio.wait_for(run_board(board, max_events=5), timeout=30))

    assert board.occupied == {"HOTEL1": {"102"}, "HOTEL2": {"7"}}
    assert ohip_emulator.connections[0].events_sent == 5


def test_invalid_events_go_to_the_dead_letter_list(ohip_emulator, monkeypatch):
    for name, value in ohip_emulator.env().items():
        monkeypatch.setenv(name, value)
    ohip_emulator.publish_sync(events=[check_in("HOTEL1", "101")])
    asyncio.run(ohip_emulator.publish_invalid(1))  # breaks the schema: no eventName
    ohip_emulator.publish_sync(events=[check_in("HOTEL1", "102")])
    board = RoomBoard()

    asyncio.run(asyncio.wait_for(run_board(board, max_events=2), timeout=30))

    assert board.occupied == {"HOTEL1": {"101", "102"}}
    assert len(board.rejected) == 1


def test_a_restart_resumes_without_applying_an_event_twice(ohip_emulator_factory, monkeypatch):
    emulator = ohip_emulator_factory(complete_gap=0.2)  # Oracle's 10 s gap, compressed
    for name, value in emulator.env().items():
        monkeypatch.setenv(name, value)
    store = MemoryCheckpointStore()  # shared by both runs, as a SQLite file would be
    fast = Timings(complete_gap=0.3)  # wait a little longer than the emulator asks
    applied: list[str] = []

    class CountingBoard(RoomBoard):
        def apply(self, event: Event) -> None:
            applied.append(event.unique_event_id)
            super().apply(event)

    emulator.publish_sync(events=[check_in("HOTEL1", "101"), check_in("HOTEL1", "102")])
    board = CountingBoard()
    asyncio.run(run_board(board, max_events=2, checkpoints=store, timings=fast))
    emulator.publish_sync(events=[check_out("HOTEL1", "101")])
    asyncio.run(run_board(board, max_events=1, checkpoints=store, timings=fast))

    assert board.occupied == {"HOTEL1": {"102"}}
    assert len(applied) == len(set(applied)) == 3  # the replayed event was not applied again
