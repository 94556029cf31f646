"""What the stream tests against the emulator share: compressed timings, the emulator's OAuth
client, and taking a number of events from a stream."""

from __future__ import annotations

import asyncio
from typing import Any

from ohip_stream import EventStream, OAuthClientCredentials, Timings
from ohip_stream.testing import Emulator

#: OHIP's timings shrunk to fractions of a second (the emulator runs with the same gap).
FAST_TIMINGS = Timings(
    ping_interval=0.1,
    complete_gap=0.2,
    lockout=0.3,
    drop_wait=0.05,
    backoff_min=0.02,
    backoff_max=0.2,
    liveness_timeout=2.0,
    drain_timeout=1.0,
    init_timeout=2.0,
)


def emulator_auth(emu: Emulator, **kwargs: Any) -> OAuthClientCredentials:
    """The client-credentials provider for the emulator's OAuth endpoint."""
    return OAuthClientCredentials(
        gateway_url=emu.gateway_url,
        client_id=emu.client_id,
        client_secret=emu.client_secret,
        app_key=emu.app_key,
        enterprise_id=emu.enterprise_id,
        **kwargs,
    )


async def take_offsets(stream: EventStream, count: int, timeout: float = 20.0) -> list[str]:
    """The offsets of the next ``count`` events (leaving the loop counts the last processed)."""
    got: list[str] = []

    async def run() -> None:
        async for event in stream:
            got.append(event.metadata.offset)
            if len(got) >= count:
                break

    await asyncio.wait_for(run(), timeout)
    return got
