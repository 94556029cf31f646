"""Assignment, pure: fair shares, hysteresis, the least moves when a worker joins or leaves."""

from __future__ import annotations

import math

import pytest

from ohip_stream import ConfigurationError
from ohip_stream.fleet import Lease, StreamSpec, parse_streams, plan

NOW = 10_000.0


def held(stream: str, owner: str, acquired: float = 0.0) -> Lease:
    return Lease(stream, owner, 1, 30.0, acquired)


def simulate(streams: list[str], owners: dict[str, str], workers: list[str]) -> dict[str, str]:
    """Rounds of every worker planning and acting until nothing changes; the moves counted."""
    owners = dict(owners)
    for _ in range(10):
        changed = False
        for me in workers:
            leases = {s: held(s, o) for s, o in owners.items()}
            mine = {s for s, o in owners.items() if o == me}
            moves = plan(me=me, streams=streams, leases=leases, workers=workers, mine=mine, now=NOW)
            for s in moves.release:
                del owners[s]
                changed = True
            for s in moves.claim:
                if s not in owners:
                    owners[s] = me
                    changed = True
        if not changed:
            break
    return owners


def counts(owners: dict[str, str], workers: list[str]) -> list[int]:
    return sorted(sum(1 for o in owners.values() if o == w) for w in workers)


def test_a_lone_worker_claims_every_free_stream() -> None:
    streams = [f"s{i}" for i in range(5)]
    moves = plan(me="a", streams=streams, leases={}, workers=["a"], mine=set(), now=NOW)
    assert sorted(moves.claim) == streams
    assert moves.release == ()


def test_a_worker_claims_up_to_its_fair_share() -> None:
    streams = [f"s{i}" for i in range(10)]
    moves = plan(me="a", streams=streams, leases={}, workers=["a", "b", "c"], mine=set(), now=NOW)
    assert len(moves.claim) == 4  # ceil(10 / 3)


def test_held_streams_are_not_claimed_but_expired_ones_are() -> None:
    streams = ["s1", "s2", "s3"]
    leases = {
        "s1": held("s1", "b"),
        "s2": Lease("s2", "b", 3, -1.0, 0.0),  # expired: free to take
        "s3": Lease("s3", None, 2, None),
    }
    moves = plan(me="a", streams=streams, leases=leases, workers=["a"], mine=set(), now=NOW)
    assert sorted(moves.claim) == ["s2", "s3"]


def test_a_stream_expired_longer_than_the_grace_is_claimed_above_the_share() -> None:
    """Worker c is live (its heartbeat has not expired) but takes nothing, frozen: the shares
    count it, so a and b are at their share and s4, s5 would wait for c's heartbeat to expire.
    Once their leases expired ``grace`` ago, a takes them anyway."""
    streams = [f"s{i}" for i in range(6)]
    leases = {s: held(s, "a" if s in ("s0", "s1") else "b") for s in ("s0", "s1", "s2", "s3")}
    leases["s4"] = Lease("s4", "dead", 1, -0.5, 0.0)  # expired 0.5 s ago
    leases["s5"] = Lease("s5", "dead", 1, -2.0, 0.0)  # expired 2 s ago
    common = {
        "me": "a",
        "streams": streams,
        "leases": leases,
        "workers": ["a", "b", "c"],
        "mine": {"s0", "s1"},
        "now": NOW,
    }
    assert plan(**common).claim == ()  # share ceil(6 / 3) = 2: a has its share
    assert plan(**common, grace=1.0).claim == ("s5",)
    assert sorted(plan(**common, grace=0.4).claim) == ["s4", "s5"]
    assert plan(**common, grace=0.4, max_streams=3).claim in (("s4",), ("s5",))
    # A released stream (no owner) and a held one never count as overdue.
    leases["s4"] = Lease("s4", None, 2, None)
    leases["s5"] = held("s5", "c")
    assert plan(**common, grace=0.1).claim == ()


def test_excluded_and_max_streams_limit_the_claims() -> None:
    streams = [f"s{i}" for i in range(6)]
    moves = plan(
        me="a",
        streams=streams,
        leases={},
        workers=["a"],
        mine=set(),
        now=NOW,
        excluded={"s0"},
        max_streams=2,
    )
    assert len(moves.claim) == 2
    assert "s0" not in moves.claim


def test_a_fifth_worker_joining_four_moves_at_most_ceil_n_over_5() -> None:
    streams = [f"s{i:02}" for i in range(40)]
    four = ["a", "b", "c", "d"]
    owners = {s: four[i % 4] for i, s in enumerate(streams)}
    after = simulate(streams, owners, [*four, "e"])
    moved = sum(1 for s in streams if after.get(s) != owners[s])
    assert moved <= math.ceil(40 / 5)
    assert counts(after, [*four, "e"]) == [8, 8, 8, 8, 8]


def test_a_leaving_worker_s_streams_go_to_the_others() -> None:
    streams = [f"s{i:02}" for i in range(40)]
    five = ["a", "b", "c", "d", "e"]
    owners = {s: five[i % 5] for i, s in enumerate(streams)}
    remaining = {s: o for s, o in owners.items() if o != "e"}
    after = simulate(streams, remaining, five[:4])
    assert counts(after, five[:4]) == [10, 10, 10, 10]
    assert all(after[s] == o for s, o in remaining.items())  # nothing else moved


def test_a_spread_within_one_of_even_never_moves() -> None:
    streams = [f"s{i}" for i in range(10)]
    owners = {s: "abc"[0 if i < 4 else 1 if i < 7 else 2] for i, s in enumerate(streams)}
    leases = {s: held(s, o) for s, o in owners.items()}
    for me in "abc":
        mine = {s for s, o in owners.items() if o == me}
        moves = plan(me=me, streams=streams, leases=leases, workers=list("abc"), mine=mine, now=NOW)
        assert moves.claim == ()
        assert moves.release == ()


def test_a_stream_taken_recently_is_not_moved_again() -> None:
    streams = [f"s{i}" for i in range(4)]
    leases = {s: held(s, "a", acquired=NOW - (10 if s == "s0" else 1000)) for s in streams}
    moves = plan(
        me="a",
        streams=streams,
        leases=leases,
        workers=["a", "b"],
        mine=set(streams),
        now=NOW,
        min_stay=300,
    )
    assert len(moves.release) == 2
    assert "s0" not in moves.release


def test_greedy_takes_everything_free_and_hands_nothing_over() -> None:
    streams = [f"s{i}" for i in range(6)]
    leases = {"s0": held("s0", "b")}
    moves = plan(
        me="a",
        streams=streams,
        leases=leases,
        workers=["a", "b", "c"],
        mine=set(),
        balanced=False,
        now=NOW,
    )
    assert sorted(moves.claim) == streams[1:]
    full = plan(
        me="a",
        streams=streams,
        leases={s: held(s, "a") for s in streams},
        workers=["a", "b"],
        mine=set(streams),
        balanced=False,
        now=NOW,
    )
    assert full.release == ()


def test_two_workers_try_free_streams_in_different_orders() -> None:
    streams = [f"s{i}" for i in range(20)]
    one = plan(me="a", streams=streams, leases={}, workers=["a", "b"], mine=set(), now=NOW)
    two = plan(me="b", streams=streams, leases={}, workers=["a", "b"], mine=set(), now=NOW)
    assert one.claim != two.claim


# --- the streams file -------------------------------------------------------------------------

ENV = {
    "gateway_url": "https://api.example.com",
    "client_id": "client",
    "enterprise_id": "ENT1",
    "app_key_env": "OHIP_APP_KEY",
    "client_secret_env": "OHIP_CLIENT_SECRET",
}


def test_the_streams_file_names_streams_and_keeps_options() -> None:
    specs = parse_streams(
        {
            "environments": {"prod": ENV},
            "streams": [
                {"environment": "prod", "chain_code": "C1"},
                {
                    "environment": "prod",
                    "chain_code": "C2",
                    "name": "two",
                    "hotel_codes": "H1,H2",
                    "delta": True,
                    "start": "193",
                },
            ],
        }
    )
    assert [s.name for s in specs] == ["prod:C1", "two"]
    assert specs[1].hotel_codes == ("H1", "H2")
    assert specs[1].delta is True
    assert specs[1].start == "193"
    assert StreamSpec.from_json(specs[1].to_json()) == specs[1]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"client_secret": "s3cret-value"}, "client_secret must not be in the file"),
        ({"app_key": "k"}, "app_key must not be in the file"),
        ({"client_secret_env": "not a name!"}, "NAME of an environment variable"),
        ({"enterprise_id": None}, "give enterprise_id"),
        ({"colour": "red"}, "unknown keys"),
    ],
)
def test_the_streams_file_refuses_secrets_and_mistakes(
    change: dict[str, object], message: str
) -> None:
    env = {k: v for k, v in {**ENV, **change}.items() if v is not None}
    with pytest.raises(ConfigurationError, match=message) as caught:
        parse_streams(
            {
                "environments": {"prod": env},
                "streams": [{"environment": "prod", "chain_code": "C1"}],
            }
        )
    assert "s3cret-value" not in str(caught.value)


def test_the_streams_file_names_an_unknown_environment_and_duplicate_names() -> None:
    with pytest.raises(ConfigurationError, match=r"environment 'nope' is not defined"):
        parse_streams(
            {"environments": {"prod": ENV}, "streams": [{"environment": "nope", "chain_code": "C"}]}
        )
    with pytest.raises(ConfigurationError, match="two streams are named"):
        parse_streams(
            {
                "environments": {"prod": ENV},
                "streams": [{"environment": "prod", "chain_code": "C"}] * 2,
            }
        )
    with pytest.raises(ConfigurationError, match="start must be"):
        parse_streams(
            {
                "environments": {"prod": ENV},
                "streams": [{"environment": "prod", "chain_code": "C", "start": "soon"}],
            }
        )
