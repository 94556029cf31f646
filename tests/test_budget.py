"""The upgrade budget (protocol §1): the window, the per-key registry, the file format, the cap.

Pure: no event loop, no clock; times are literal numbers.
"""

from __future__ import annotations

import gc
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ohip_stream import ConfigurationError, RateLimitedError, Timings
from ohip_stream._budget import (
    UpgradeBudget,
    format_upgrades,
    key_id,
    parse_upgrades,
    rate_limited_wait,
    shared_budget,
)

T = Timings()


def test_budget_allows_count_then_waits_for_the_oldest() -> None:
    budget = UpgradeBudget(3, 10.0)
    assert len(budget) == 0
    for now in (0.0, 1.0, 2.0):
        assert budget.wait_time(now) == 0
        budget.record(now)
    assert len(budget) == 3
    assert budget.wait_time(2.5) == pytest.approx(7.5)
    assert budget.wait_time(9.999) == pytest.approx(0.001)
    assert budget.wait_time(10.0) == 0  # the upgrade at 0 left the window at 10
    assert len(budget) == 2
    budget.record(10.0)
    assert budget.wait_time(10.5) == pytest.approx(0.5)  # the one at 1.0 leaves at 11.0
    assert budget.wait_time(100.0) == 0
    assert len(budget) == 0


def test_budget_counts_upgrades_recorded_over_the_limit() -> None:
    budget = UpgradeBudget(2, 10.0)
    for now in (0.0, 1.0, 2.0, 3.0):
        budget.record(now)
    assert len(budget) == 4
    # Two must leave before one more may go: the one at 2.0 leaves at 12.0.
    assert budget.wait_time(5.0) == pytest.approx(7.0)


def test_budget_default_is_oracles_limit() -> None:
    count, window = T.upgrade_budget
    budget = UpgradeBudget(count, window)
    for i in range(150):
        assert budget.wait_time(i * 0.1) == 0
        budget.record(i * 0.1)
    assert budget.wait_time(15.0) == pytest.approx(105.0)
    assert "used=150" in repr(budget)


@pytest.mark.parametrize(("count", "window"), [(0, 10.0), (5, 0.0), (5, -1.0)])
def test_budget_refuses_nonsense(count: int, window: float) -> None:
    with pytest.raises(ConfigurationError):
        UpgradeBudget(count, window)


@given(
    times=st.lists(st.floats(min_value=0, max_value=1000), max_size=60).map(sorted),
    count=st.integers(1, 10),
    window=st.floats(min_value=0.1, max_value=100),
)
def test_budget_never_lets_more_than_count_in_a_window(
    times: list[float], count: int, window: float
) -> None:
    budget = UpgradeBudget(count, window)
    accepted: list[float] = []
    last = 0.0
    for now in times:
        at = max(now, last)  # the caller's clock never goes back
        for _ in range(5):
            wait = budget.wait_time(at)
            assert wait >= 0
            if wait == 0:
                break
            at += wait
        assert budget.wait_time(at) == 0
        budget.record(at)
        accepted.append(at)
        last = at
    accepted.sort()
    for i, start in enumerate(accepted):
        inside = [t for t in accepted[i:] if t < start + window]
        assert len(inside) <= count


# --- the per-key registry ----------------------------------------------------------------------


def test_shared_budget_is_one_per_key_count_and_window() -> None:
    first, made = shared_budget("  key-A ", 150, 120.0)
    assert made is True
    again, made_again = shared_budget("key-A", 150, 120.0)
    assert again is first  # the key is stripped: one budget for both spellings
    assert made_again is False
    other, made_other = shared_budget("key-B", 150, 120.0)
    assert other is not first
    assert made_other is True
    resized, made_resized = shared_budget("key-A", 10, 120.0)
    assert resized is not first
    assert made_resized is True


def test_shared_budget_goes_with_its_last_holder() -> None:
    budget, _ = shared_budget("key-gone", 5, 10.0)
    budget.record(1.0)
    del budget
    gc.collect()
    fresh, made = shared_budget("key-gone", 5, 10.0)
    assert made is True
    assert len(fresh) == 0


def test_shared_budget_refuses_nonsense() -> None:
    with pytest.raises(ConfigurationError, match="upgrade_budget"):
        shared_budget("key-C", 0, 10.0)


def test_key_id_is_a_digest_never_the_key_nor_its_hash() -> None:
    raw = "0d4c9a4e-7a52-4b1e-9d3c-2f5a1b6c7d8e"
    digest = key_id(raw)
    assert digest == key_id(f" {raw}\n")
    assert len(digest) == 16
    assert int(digest, 16) >= 0  # hex: safe as a file name
    assert raw not in digest
    assert digest not in hashlib.sha256(raw.encode()).hexdigest()  # not a prefix of the URL hash
    assert key_id("another key") != digest


# --- the persisted form ------------------------------------------------------------------------


def test_upgrades_round_trip_within_the_window() -> None:
    times = [100.0, 150.5, 219.999999]
    text = format_upgrades(times)
    assert text == "100.000000\n150.500000\n219.999999\n"
    assert parse_upgrades(text, 120.0, 220.0) == [150.5, 219.999999]  # 100 left at 220
    assert parse_upgrades(text, 1000.0, 220.0) == times


def test_upgrades_parse_skips_what_is_not_a_time() -> None:
    text = "5\nnot-a-number\nnan\ninf\n-inf\n7.5\n1e400\n9\n12\n3"
    # 12 is in the future (a clock that went back): not counted either.
    assert parse_upgrades(text, 10.0, 10.0) == [3.0, 5.0, 7.5, 9.0]
    assert parse_upgrades("", 10.0, 10.0) == []


# --- max_rate_limited_wait ---------------------------------------------------------------------


def test_rate_limited_wait_without_a_limit_allows_any_wait() -> None:
    rate_limited_wait(1e9, T)


def test_rate_limited_wait_allows_up_to_the_limit() -> None:
    rate_limited_wait(30.0, Timings(max_rate_limited_wait=30.0))


def test_rate_limited_wait_past_the_limit_raises() -> None:
    timings = Timings(max_rate_limited_wait=30.0, upgrade_budget=(150, 120.0))
    with pytest.raises(RateLimitedError) as info:
        rate_limited_wait(95.5, timings)
    error = info.value
    assert error.retry_after == 95.5
    message = str(error)
    assert "150 upgrades per 120 s" in message
    assert "max_rate_limited_wait (30 s)" in message
    assert "95.5 s" in message


@pytest.mark.parametrize("value", [0, -1.0, float("nan")])
def test_max_rate_limited_wait_must_be_positive(value: float) -> None:
    with pytest.raises(ConfigurationError, match="max_rate_limited_wait"):
        Timings(max_rate_limited_wait=value)


def test_max_rate_limited_wait_defaults_to_none() -> None:
    assert T.max_rate_limited_wait is None
    assert Timings(max_rate_limited_wait=5).max_rate_limited_wait == 5.0
