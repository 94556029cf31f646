"""The buffer's flow control, with a recording reader (no socket)."""

from __future__ import annotations

import asyncio

from ohip_stream._buffer import Buffer


class Reader:
    def __init__(self) -> None:
        self.calls: list[str] = []

    def pause_reading(self) -> None:
        self.calls.append("pause")

    def resume_reading(self) -> None:
        self.calls.append("resume")


def _clock() -> float:
    return 7.0


def test_full_by_count_pauses_and_below_half_resumes() -> None:
    buffer = Buffer(4, 1_000_000, _clock)
    reader = Reader()
    buffer.attach(reader)
    for _ in range(4):
        buffer.push([b"x"])
    assert reader.calls == ["pause"]
    assert buffer.paused
    assert buffer.paused_at == 7.0
    buffer.take()
    buffer.take()
    assert reader.calls == ["pause"]  # 2 left: not below half of 4
    buffer.take()
    assert reader.calls == ["pause", "resume"]
    assert not buffer.paused


def test_full_by_bytes_pauses() -> None:
    buffer = Buffer(1000, 100, _clock)
    reader = Reader()
    buffer.attach(reader)
    buffer.push([b"a" * 60])
    assert reader.calls == []
    buffer.push([b"b" * 60])
    assert reader.calls == ["pause"]
    assert buffer.bytes == 120
    buffer.take()
    buffer.take()
    assert reader.calls == ["pause", "resume"]
    assert buffer.bytes == 0


def test_markers_are_kept_in_order_and_not_counted() -> None:
    buffer = Buffer(2, 100, _clock)
    marker = object()
    buffer.push([b"1"])
    buffer.put(marker)
    buffer.push([b"2"])
    assert [buffer.take(), buffer.take(), buffer.take()] == [[b"1"], marker, [b"2"]]
    assert buffer.bytes == 0


def test_when_low_calls_back_once_below_the_low_water_mark() -> None:
    buffer = Buffer(4, 1_000_000, _clock)
    calls: list[int] = []
    for _ in range(3):
        buffer.push([b"x"])
    buffer.when_low(lambda: calls.append(buffer.frames))
    assert calls == []
    buffer.take()
    assert calls == []
    buffer.take()
    assert calls == [1]
    buffer.take()
    assert calls == [1]
    buffer.when_low(lambda: calls.append(-1))
    assert calls == [1, -1]  # already low: at once


def test_clear_frames_keeps_markers() -> None:
    buffer = Buffer(10, 1000, _clock)
    marker = object()
    buffer.push([b"1"])
    buffer.put(marker)
    buffer.push([b"2"])
    buffer.clear_frames()
    assert list(buffer.items) == [marker]
    assert buffer.bytes == 0


def test_a_waiting_caller_wakes_on_push() -> None:
    async def scenario() -> list[list[bytes]]:
        buffer = Buffer(10, 1000, _clock)
        waiting = asyncio.ensure_future(buffer.wait())
        await asyncio.sleep(0)
        buffer.push([b"e"])
        await waiting
        return [buffer.take()]

    assert asyncio.run(scenario()) == [[b"e"]]


def test_a_batch_counts_its_frames_and_bytes_until_taken() -> None:
    buffer = Buffer(4, 1_000_000, _clock)
    reader = Reader()
    buffer.attach(reader)
    buffer.push([b"ab", b"cde"])
    assert (buffer.frames, buffer.bytes) == (2, 5)
    buffer.push([b"f", b"g"])
    assert reader.calls == ["pause"]  # 4 frames: full
    assert buffer.take() == [b"ab", b"cde"]
    assert (buffer.frames, buffer.bytes) == (2, 2)
    assert reader.calls == ["pause"]  # 2 left: not below half of 4
    assert buffer.take() == [b"f", b"g"]
    assert reader.calls == ["pause", "resume"]


def test_put_back_returns_frames_to_the_front() -> None:
    buffer = Buffer(10, 1000, _clock)
    marker = object()
    buffer.put(marker)
    buffer.push([b"3"])
    buffer.put_back([b"1", b"2"])
    assert (buffer.frames, buffer.bytes) == (3, 3)
    assert [buffer.take(), buffer.take(), buffer.take()] == [[b"1", b"2"], marker, [b"3"]]
