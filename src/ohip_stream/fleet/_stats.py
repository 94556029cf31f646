"""The fleet's counters in one worker."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FleetStats"]


@dataclass
class FleetStats:
    """What one worker did: leases claimed and released, streams handed over to balance, streams
    stopped because their lease was lost or could not be renewed in time, checkpoint writes
    rejected for a stale epoch, streams that failed, rounds the database did not answer,
    upgrades taken from the fleet's budget (every connection: start, reconnect, rotation) and
    reads of that budget the database did not answer."""

    claims: int = 0
    releases: int = 0
    handovers: int = 0
    self_fenced: int = 0
    stale_rejections: int = 0
    failures: int = 0
    database_errors: int = 0
    upgrades: int = 0
    budget_errors: int = 0
