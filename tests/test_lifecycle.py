"""The lifecycle's transitions, fed with literal states: no event loop."""

from __future__ import annotations

import pytest

from ohip_stream._lifecycle import Lifecycle, StreamState, Wait

S = StreamState


def test_a_rotation_goes_through_completing_draining_and_waiting() -> None:
    life = Lifecycle()
    for state in (S.LIVE, S.COMPLETING, S.DRAINING, S.WAITING, S.CONNECTING, S.LIVE):
        assert life.to(state) is True
        assert life.state is state


def test_a_wait_says_what_for_and_until_when() -> None:
    life = Lifecycle()
    wait = Wait("lockout", 1234.5, "4409")
    assert life.to(S.WAITING, wait)
    assert life.wait == wait
    assert life.to(S.CONNECTING)
    assert life.wait is None


@pytest.mark.parametrize("start", [S.CONNECTING, S.LIVE, S.COMPLETING, S.DRAINING, S.WAITING])
def test_a_stop_is_reachable_from_anywhere_and_never_left_for_a_connection(start: S) -> None:
    life = Lifecycle()
    life.state = start
    assert life.to(S.STOPPING)
    assert life.stopping
    for later in (S.CONNECTING, S.LIVE, S.WAITING, S.DRAINING, S.COMPLETING):
        assert life.to(later) is False
        assert life.state is S.STOPPING
    assert life.to(S.CLOSED)
    assert life.to(S.STOPPING) is False


@pytest.mark.parametrize(
    ("start", "target"),
    [
        (S.CONNECTING, S.DRAINING),
        (S.WAITING, S.LIVE),
        (S.DRAINING, S.LIVE),
        (S.CLOSED, S.LIVE),
        (S.WAITING, S.DRAINING),
    ],
)
def test_transitions_outside_the_table_are_refused(start: S, target: S) -> None:
    life = Lifecycle()
    life.state = start
    assert life.to(target) is False
    assert life.state is start
