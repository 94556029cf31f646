"""What ``fleet status`` shows: per stream, its lease and how far it got (no secret)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ohip_stream._checkpoints import Checkpoint
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._net import parse_gateway
from ohip_stream.fleet._store import LeaseStore

__all__ = ["StreamStatus", "fleet_status"]


@dataclass(frozen=True)
class StreamStatus:
    """One stream as the database has it. ``state``: ``owned`` (a live lease), ``expired`` (an
    owner whose lease ran out: failover is due) or ``free``. ``lease_left`` is seconds on the
    database's clock; ``last_event_age`` the seconds since the stream's checkpoint was last
    written (events are committed in batches, so it lags the last event by at most the commit
    interval)."""

    stream: str
    environment: str
    chain: str
    state: str
    owner: str | None
    epoch: int
    lease_left: float | None
    last_offset: str | None
    last_event_age: float | None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _host(gateway_url: str) -> str | None:
    try:
        return parse_gateway(gateway_url).netloc
    except ConfigurationError:
        return None


async def fleet_status(store: LeaseStore) -> list[StreamStatus]:
    """Every stream of the fleet, by name."""
    specs = await store.streams()
    leases = {lease.stream: lease for lease in await store.leases()}
    # Checkpoints are kept by stream id (a digest that needs the application key, which the
    # database never holds): they are matched by gateway host and chain code instead.
    by_place: dict[tuple[str | None, str | None], Checkpoint] = {}
    for cp in (await store.checkpoints()).values():
        key = (cp.gateway_host, cp.chain_code)
        if key not in by_place or cp.updated_at > by_place[key].updated_at:
            by_place[key] = cp
    now = await store.now()
    rows = []
    for spec in specs:
        lease = leases.get(spec.name)
        found = by_place.get((_host(spec.gateway_url), spec.chain_code))
        if lease is not None and lease.held:
            state = "owned"
        elif lease is not None and lease.owner is not None:
            state = "expired"
        else:
            state = "free"
        rows.append(
            StreamStatus(
                stream=spec.name,
                environment=spec.environment,
                chain=spec.chain_code,
                state=state,
                owner=lease.owner if lease is not None else None,
                epoch=lease.epoch if lease is not None else 0,
                lease_left=(
                    round(max(0.0, lease.remaining), 3)
                    if lease is not None and lease.remaining is not None
                    else None
                ),
                last_offset=found.offset if found is not None else None,
                last_event_age=(
                    round(max(0.0, now - found.updated_at), 3)
                    if found is not None and found.updated_at
                    else None
                ),
            )
        )
    return rows
