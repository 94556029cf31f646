"""Commit bookkeeping, fed with literal positions: no event loop."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ohip_stream._checkpoints import Checkpoint
from ohip_stream._commits import Commits


@dataclass(frozen=True)
class Pos:
    offset: str | None
    unique_event_id: str | None = None


def test_an_event_is_processed_when_the_next_is_asked_for() -> None:
    commits = Commits(every=3)
    commits.hand(Pos("1", "a"))
    assert commits.checkpoint.offset is None
    assert commits.processed() is False
    assert commits.checkpoint == Checkpoint("1", "a")
    assert commits.processed() is False  # nothing handed: nothing more
    assert commits.dirty == 1


def test_a_batch_is_due_at_every() -> None:
    commits = Commits(every=2)
    commits.hand(Pos("1"))
    assert commits.processed() is False
    commits.hand(Pos("2"))
    assert commits.processed() is True
    checkpoint, count = commits.take(now=50.0)
    assert (checkpoint.offset, checkpoint.updated_at, count) == ("2", 50.0, 2)
    assert commits.pending is False


def test_the_interval_makes_the_next_event_due() -> None:
    commits = Commits(every=1000)
    commits.interval_passed()
    commits.hand(Pos("1"))
    assert commits.processed() is True
    commits.take(now=1.0)
    commits.hand(Pos("2"))
    assert commits.processed() is False  # take() restored the batch size


def test_a_failed_write_counts_again_and_blocks_after_a_batch() -> None:
    commits = Commits(every=2)
    for offset in ("1", "2"):
        commits.hand(Pos(offset))
        commits.processed()
    checkpoint, count = commits.take(now=1.0)
    commits.write_failed(count)
    assert commits.blocked is True
    assert commits.dirty == 2
    checkpoint, count = commits.take(now=2.0)
    assert (checkpoint.offset, count) == ("2", 2)
    commits.write_succeeded(checkpoint)
    assert commits.blocked is False
    assert commits.checkpoint.updated_at == 2.0


def test_a_failed_write_below_a_batch_does_not_block() -> None:
    commits = Commits(every=5)
    commits.hand(Pos("1"))
    commits.processed()
    _, count = commits.take(now=1.0)
    commits.write_failed(count)
    assert commits.failed is True
    assert commits.blocked is False


def test_a_position_processed_during_a_write_is_kept() -> None:
    commits = Commits(every=1)
    commits.hand(Pos("1"))
    commits.processed()
    written, _ = commits.take(now=1.0)
    commits.hand(Pos("2"))
    commits.processed()
    commits.write_succeeded(written)
    assert commits.checkpoint.offset == "2"
    assert commits.pending is True


def test_skipped_items_without_an_offset_move_nothing() -> None:
    commits = Commits(every=1)
    assert commits.skipped(Pos(None)) is False
    assert commits.skipped(Pos("7")) is True
    assert commits.checkpoint.offset == "7"


def test_completion_is_kept_with_the_position() -> None:
    commits = Commits(every=10, base=Checkpoint("5", "u5"))
    commits.completed(123.0)
    assert commits.checkpoint == Checkpoint("5", "u5", 123.0)
    commits.restore(Checkpoint("9", "u9", None, 1.0))
    assert commits.checkpoint.offset == "9"


def test_every_must_be_positive() -> None:
    with pytest.raises(ValueError, match="every"):
        Commits(every=0)
