"""Which streams a worker claims and which it hands over: pure, fed with what the database said.

Balanced (the default): each worker's share is ``ceil(N / W)`` streams (N streams, W live
workers). A worker claims free streams (no owner, or an expired lease) up to its share. A worker
above its share hands the surplus over only while another live worker holds fewer than
``floor(N / W)`` (hysteresis: a spread that is within one of even never moves), and never a
stream it took less than ``min_stay`` seconds ago (no stream moves twice within that time). So a
fifth worker joining four moves at most ``ceil(N / 5)`` streams, and a leaving worker's streams
go to those below the new share as their leases are released or expire.

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
) -> Plan:
    """This worker's moves. ``mine``: the streams it runs; ``now``: the database's clock
    (compared with ``Lease.acquired_at``); ``excluded``: streams it must not claim now (a
    stream that failed here a moment ago)."""
    live = set(workers) | {me}
    total = len(streams)
    share = math.ceil(total / len(live)) if balanced else total
    if max_streams is not None:
        share = min(share, max_streams)
    owned = [s for s in streams if s in mine]
    free = [s for s in streams if s not in mine and s not in excluded and not _held(leases.get(s))]
    wanted = max(0, share - len(owned))
    claim = tuple(_spread(free, me)[:wanted])
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


def _held(lease: Lease | None) -> bool:
    return lease is not None and lease.held


def _spread(free: list[str], me: str) -> list[str]:
    """The free streams in an order of this worker's own (a digest of worker and stream), so
    that workers claiming at the same moment mostly try different streams."""
    return sorted(free, key=lambda s: hashlib.blake2s(f"{me}\0{s}".encode()).digest())
