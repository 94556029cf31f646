"""Resume and de-duplication, fed with literal offsets and ids: no event loop."""

from __future__ import annotations

import pytest

from ohip_stream._resume import MAX_ID_CHARS, Resume, Verdict


def test_new_events_advance_the_last_offset() -> None:
    resume = Resume(window=10)
    assert resume.accept("5", "a") is Verdict.NEW
    assert resume.accept("6", "b") is Verdict.NEW
    assert (resume.last, resume.last_offset) == (6, "6")


def test_a_replayed_offset_is_a_duplicate() -> None:
    resume = Resume(window=10)
    resume.accept("5", "a")
    assert resume.accept("5", "a") is Verdict.DUPLICATE
    assert resume.accept("4", "z-seen-before-as-4") is Verdict.RESET


def test_a_known_unique_id_at_a_higher_offset_is_a_duplicate() -> None:
    # The uniqueEventId branch: the same event under a new offset (a republish) is dropped.
    resume = Resume(window=10)
    resume.accept("5", "same-event")
    assert resume.accept("9", "same-event") is Verdict.DUPLICATE
    assert resume.last == 5


def test_the_unique_id_window_forgets_after_two_generations() -> None:
    resume = Resume(window=2)
    for number, uid in enumerate(["a", "b", "c", "d", "e"], start=1):
        resume.accept(str(number), uid)
    # "a" and "b" were in the generation dropped when "e" filled the young one again.
    assert resume.accept("10", "d") is Verdict.DUPLICATE
    assert resume.accept("11", "a") is Verdict.NEW


def test_long_ids_are_kept_as_digests_and_still_match() -> None:
    resume = Resume(window=10)
    long_id = "x" * (MAX_ID_CHARS * 1000)
    resume.accept("1", long_id)
    stored = [key for generation in (resume._young, resume._old) for key in generation]
    assert all(len(key) <= MAX_ID_CHARS for key in stored)
    assert resume.accept("2", long_id) is Verdict.DUPLICATE
    assert resume.accept("3", long_id + "y") is Verdict.NEW


def test_a_checkpoint_is_already_processed() -> None:
    resume = Resume(window=10)
    resume.restore("193", "u193")
    offset, highest, asked = resume.subscription_start(None, False)
    assert (offset, highest, asked) == ("193", False, 193)
    resume.arm(asked)
    assert resume.accept("193", "u193") is Verdict.DUPLICATE
    assert resume.accept("194", "u194") is Verdict.NEW


def test_an_explicit_start_applies_until_an_event_was_seen() -> None:
    resume = Resume(window=10)
    resume.restore("500", "u500")
    assert resume.subscription_start("7", False) == ("7", False, 7)
    assert resume.subscription_start(None, False) == ("500", False, 500)
    fresh = Resume(window=10)
    assert fresh.subscription_start("7", False) == ("7", False, 7)
    assert fresh.subscription_start(None, True) == (None, True, None)
    fresh.arm(None)
    fresh.accept("8", "u8")
    assert fresh.subscription_start("7", True) == ("8", False, 8)


def test_a_first_event_beyond_the_asked_offset_counts_the_lost_events() -> None:
    resume = Resume(window=10)
    resume.restore("100", "u100")
    resume.arm(100)
    assert resume.accept("150", "u150") is Verdict.GAP
    assert resume.take_lost() == 49
    assert resume.take_lost() == 0  # said once
    assert resume.accept("151", "u151") is Verdict.NEW


def test_the_inclusive_replay_or_the_next_offset_is_no_gap() -> None:
    for first in ("100", "101"):
        resume = Resume(window=10)
        resume.restore("100", "u100")
        resume.arm(100)
        assert resume.accept(first, f"u{first}") in (Verdict.NEW, Verdict.DUPLICATE)
        assert resume.lost == 0


def test_a_hotel_filter_turns_gap_detection_off() -> None:
    resume = Resume(window=10, filtered=True)
    resume.arm(100)
    assert resume.accept("150", "u150") is Verdict.NEW


def test_an_offset_reset_is_reported_then_followed() -> None:
    resume = Resume(window=10)
    resume.accept("100", "u100")
    resume.arm(100)
    assert resume.accept("1", "new-1") is Verdict.RESET
    assert resume.accept("2", "new-2") is Verdict.NEW
    assert resume.last_offset == "2"


def test_invalid_events_are_new_once() -> None:
    resume = Resume(window=10)
    resume.accept("3", "a")
    assert resume.accept_invalid("4") is True
    assert resume.accept_invalid("4") is False
    assert resume.accept_invalid(None) is True
    assert resume.accept_invalid("\u00b2") is True
    assert resume.last_offset == "4"


def test_a_new_subscription_forgets_a_gap_not_taken() -> None:
    resume = Resume(window=10)
    resume.arm(100)
    assert resume.accept("150", "u150") is Verdict.GAP
    resume.arm(150)
    assert resume.lost == 0
    assert resume.accept("151", "u151") is Verdict.NEW


def test_window_must_be_positive() -> None:
    with pytest.raises(ValueError, match="window"):
        Resume(window=0)
