"""Leaks: many connect/rotate cycles leave file descriptors, tasks and memory where they were
(issue 8).

The emulator runs in another process (tests/helpers/leak_emulator.py), so only the client is
measured. Timings and the upgrade budget are compressed on both sides: each cycle fetches a
token, connects, subscribes, completes, drains, commits and reconnects. After a warm-up the
open file descriptors and asyncio tasks are counted and tracemalloc starts; at the end the
counts must be the same (a small tolerance) and the memory still held must not grow with the
number of cycles.
"""

from __future__ import annotations

import asyncio
import gc
import json
import os
import secrets
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import psutil
import pytest

from ohip_stream import (
    EventStream,
    OAuthClientCredentials,
    SQLiteCheckpointStore,
    Timings,
    _logging,
)
from ohip_stream._logging import REDACTED, redact_registered, register_secret

# A thousand connect-rotate cycles: run with the chaos soak (`pytest -m slow`), not by default.
pytestmark = pytest.mark.slow

HELPER = Path(__file__).parent / "helpers" / "leak_emulator.py"
WARMUP = 100
CYCLES = int(os.environ.get("OHIP_LEAK_CYCLES", "1000"))
EVENTS = 50

TIMINGS = Timings(
    ping_interval=0.05,
    rotate_after=0.001,
    complete_gap=0.001,
    lockout=0.05,
    drop_wait=0.01,
    backoff_min=0.005,
    backoff_max=0.05,
    liveness_timeout=5.0,
    drain_timeout=2.0,
    init_timeout=2.0,
    upgrade_budget=(1_000_000, 1.0),
)


async def _until(stream: EventStream, rotations: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while stream.stats.rotations < rotations:
        assert time.monotonic() < deadline, f"only {stream.stats.rotations} cycles"
        await asyncio.sleep(0.01)


def _start_emulator() -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(HELPER), str(EVENTS)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


@pytest.mark.timeout(300)
async def test_connect_rotate_cycles_do_not_leak(tmp_path: Path) -> None:
    server = _start_emulator()
    try:
        assert server.stdout is not None
        env = json.loads(await asyncio.to_thread(server.stdout.readline))
        process = psutil.Process()
        auth = OAuthClientCredentials(
            gateway_url=env["OHIP_GATEWAY_URL"],
            client_id=env["OHIP_CLIENT_ID"],
            client_secret=env["OHIP_CLIENT_SECRET"],
            app_key=env["OHIP_APP_KEY"],
            enterprise_id=env["OHIP_ENTERPRISE_ID"],
        )
        store = SQLiteCheckpointStore(tmp_path / "cp.db")
        received: list[str] = []
        async with (
            auth,
            EventStream(
                gateway_url=env["OHIP_GATEWAY_URL"],
                app_key=env["OHIP_APP_KEY"],
                chain_code=env["OHIP_CHAIN_CODE"],
                auth=auth,
                checkpoints=store,
                timings=TIMINGS,
                lock_dir=tmp_path / "locks",
            ) as stream,
        ):

            async def consume() -> None:
                async for event in stream:
                    received.append(event.metadata.offset)

            consumer = asyncio.create_task(consume())
            await _until(stream, WARMUP, 120)
            gc.collect()
            fds, tasks = process.num_fds(), len(asyncio.all_tasks())
            rss = process.memory_info().rss
            started = time.monotonic()
            tracemalloc.start(1)
            # Caches fill during the first cycles (graphql-core's validation, the redaction
            # registry's last tokens...): growth is measured from a third of the way on.
            await _until(stream, WARMUP + CYCLES // 3, 240)
            gc.collect()
            held_first, _ = tracemalloc.get_traced_memory()
            first = tracemalloc.take_snapshot()
            await _until(stream, WARMUP + CYCLES, 240)
            gc.collect()
            held_last, _ = tracemalloc.get_traced_memory()
            last = tracemalloc.take_snapshot()
            tracemalloc.stop()
            elapsed = time.monotonic() - started
            fds_end, tasks_end = process.num_fds(), len(asyncio.all_tasks())
            rss_end = process.memory_info().rss
            consumer.cancel()
            with pytest.raises(asyncio.CancelledError):
                await consumer
        store.close()
    finally:
        if server.stdin is not None:
            server.stdin.close()
        server.wait(30)
        if server.stdout is not None:
            server.stdout.close()
    cycles = stream.stats.rotations - WARMUP
    measured = stream.stats.rotations - (WARMUP + CYCLES // 3)
    diffs = last.compare_to(first, "lineno")
    # What piles up per cycle is many objects kept alive; a single allocation that grew once
    # (a dict or the interned-strings table resized) is no leak.
    growth = sum(d.size_diff for d in diffs if d.count_diff >= 3 and d.size_diff > 0)
    top = "\n".join(str(d) for d in diffs[:5])
    print(
        f"\n{cycles} connect/rotate cycles in {elapsed:.1f} s ({elapsed / cycles * 1000:.1f} ms "
        f"each, tracemalloc on): fds {fds} -> {fds_end}, tasks {tasks} -> {tasks_end}, traced "
        f"memory {held_first / 1024:.0f} -> {held_last / 1024:.0f} KiB over the last {measured} "
        f"cycles, of which kept objects {growth / measured:.0f} B per cycle), RSS {rss >> 20} -> "
        f"{rss_end >> 20} MiB"
        f"\nlargest changes:\n{top}"
    )
    assert received == [str(n) for n in range(1, EVENTS + 1)]  # nothing lost, nothing twice
    assert stream.stats.reconnects == {"rotation": stream.stats.rotations}
    assert fds_end <= fds + 3
    assert tasks_end <= tasks + 1
    # A leak of 100 bytes per cycle would show here (1,000 cycles is a month of rotations).
    assert growth < 100 * measured, top


def test_the_redaction_registry_keeps_recent_tokens_only() -> None:
    # Each rotation registers its new token; the registry (and the cost of registering) must
    # not grow with them, while the recent tokens stay redacted.
    tokens = [f"eyJ{n:04d}" + secrets.token_urlsafe(300) for n in range(1000)]
    started = time.monotonic()
    for token in tokens:
        register_secret(token, transient=True)
    assert time.monotonic() - started < 2.0
    assert len(_logging._transient) == _logging.TRANSIENT_SECRETS
    assert tokens[-1] not in redact_registered(f"token {tokens[-1]} used")
    # Registered again without the flag (the stream after its provider), it stays transient.
    register_secret(tokens[-1])
    assert tokens[-1] not in _logging._secrets
    # Long-lived secrets stay whatever follows them.
    register_secret("long-lived-client-secret")
    for token in tokens[:50]:
        register_secret(token, transient=True)
    assert redact_registered("x long-lived-client-secret y") == f"x {REDACTED} y"
