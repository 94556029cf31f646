"""Which streams a worker claims and which it hands over: pure, fed with what the database said.

Balanced (the default): each worker's share is ``ceil(N / W)`` streams (N streams, W live
workers). A worker claims free streams (no owner, or an expired lease) up to its share. A worker
above its share hands the surplus over only while another live worker holds fewer than
``floor(N / W)`` (hysteresis: a spread that is within one of even never moves), and never a
stream it took less than ``min_stay`` seconds ago (no stream moves twice within that time). So a
fifth worker joining four moves at most ``ceil(N / 5)`` streams, and a leaving worker's streams
go to those below the new share as their leases are released or expire.

A stream whose lease expired at least ``grace`` seconds ago and that nobody claimed meanwhile
is claimed by any worker, above its share: the workers below their share had a round to take it
and did not (one of them frozen, say, and still counted as live until its heartbeat expires), and
a stream without a consumer costs more than a worker above its share for ``min_stay``.

Greedy: a worker claims every free stream (up to ``max_streams``) and hands nothing over.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from ohip_stream.fleet._model import Lease

__all__ = ["Plan", "plan"]


@dataclass(frozen=True)
class Plan:
    """What to do this round: streams to claim, streams to hand over."""

    claim: tuple[str, ...] = ()
    release: tuple[str, ...] = ()


def plan(
    *,
    me: str,
    streams: Sequence[str],
    leases: Mapping[str, Lease],
    workers: Collection[str],
    mine: Collection[str],
    balanced: bool = True,
    max_streams: int | None = None,
    min_stay: float = 300.0,
    now: float,
    excluded: Collection[str] = (),
    grace: float | None = None,
) -> Plan:
    """This worker's moves. ``mine``: the streams it runs; ``now``: the database's clock
    (compared with ``Lease.acquired_at``); ``excluded``: streams it must not claim now (a
    stream that failed here a moment ago); ``grace``: how long an expired lease waits for a
    worker below its share before any worker claims it (``None``: it waits for the shares)."""
    live = set(workers) | {me}
    total = len(streams)
    share = math.ceil(total / len(live)) if balanced else total
    if max_streams is not None:
        share = min(share, max_streams)
    owned = [s for s in streams if s in mine]
    free = [s for s in streams if s not in mine and s not in excluded and not _held(leases.get(s))]
    wanted = max(0, share - len(owned))
    ordered = _spread(free, me)
    claim = tuple(ordered[:wanted])
    if grace is not None:
        room = len(ordered) if max_streams is None else max_streams - len(owned) - len(claim)
        overdue = [s for s in ordered[wanted:] if _expired_for(leases.get(s)) >= grace]
        claim += tuple(overdue[: max(0, room)])
    if not balanced or len(owned) <= share:
        return Plan(claim=claim)
    floor = total // len(live)
    counts = Counter(
        lease.owner for lease in leases.values() if _held(lease) and lease.owner in live
    )
    if not any(counts.get(worker, 0) < floor for worker in live if worker != me):
        return Plan(claim=claim)
    movable = [
        s
        for s in owned
        if (acquired := leases[s].acquired_at if s in leases else None) is None
        or now - acquired >= min_stay
    ]
    # The streams held longest go first.
    movable.sort(key=lambda s: (leases[s].acquired_at or 0.0) if s in leases else 0.0)
    return Plan(claim=claim, release=tuple(movable[: len(owned) - share]))


def _expired_for(lease: Lease | None) -> float:
    """How long ago an owned lease expired (0 for a held, released or missing one)."""
    if lease is None or lease.owner is None or lease.remaining is None:
        return 0.0
    return max(0.0, -lease.remaining)


def _held(lease: Lease | None) -> bool:
    return lease is not None and lease.held


def _spread(free: list[str], me: str) -> list[str]:
    """The free streams in an order of this worker's own (a digest of worker and stream), so
    that workers claiming at the same moment mostly try different streams."""
    return sorted(free, key=lambda s: hashlib.blake2s(f"{me}\0{s}".encode()).digest())
