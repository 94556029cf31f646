"""Virtual days: a consumer stops committing, the gateway goes away, and the checkpoint-age
alerts (thresholds and ``for`` read from the shipped rules file) turn true in time: the 20-hour
one before the 24-hour resume window, the 5-day one at least 48 hours before the first event
behind the checkpoint passes the emulator's 7-day retention (on the same fake clock)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from pathlib import Path

import pytest

from helpers.streams import emulator_auth
from ohip_stream import EventStream, MemoryCheckpointStore, Timings
from ohip_stream._telemetry import Telemetry
from ohip_stream._telemetry_table import CHECKPOINT_RESUME_WINDOW
from ohip_stream.testing import Emulator, FakeClock, use_clock

pytest.importorskip("aiohttp")
yaml = pytest.importorskip("yaml")

RULES = Path(__file__).resolve().parents[1] / "deploy" / "prometheus" / "ohip-stream-rules.yml"
HOUR = 3600.0
DAY = 24 * HOUR


def _duration(text: str) -> float:
    number, unit = re.fullmatch(r"(\d+)([smhd])", text).groups()  # type: ignore[union-attr]
    return int(number) * {"s": 1, "m": 60, "h": HOUR, "d": DAY}[unit]


def age_alert(name: str) -> tuple[float, float]:
    """(threshold in seconds, ``for`` in seconds) of an ``ohip_checkpoint_age_seconds > N``
    alert of the rules file."""
    rules = yaml.safe_load(RULES.read_text())
    (rule,) = [r for g in rules["groups"] for r in g["rules"] if r.get("alert") == name]
    match = re.fullmatch(r"ohip_checkpoint_age_seconds > (\d+)", rule["expr"].strip())
    assert match is not None, rule["expr"]
    return float(match.group(1)), _duration(rule.get("for", "0s"))


def checkpoint_age(telemetry: Telemetry) -> float | None:
    (reading,) = [r for r in telemetry.readings() if r.name == "ohip.checkpoint.age"]
    return reading.points[0].value if reading.points else None


async def until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll ``check`` on the real loop (the stream's socket I/O is real) until it holds."""
    for _ in range(int(timeout / 0.01)):
        if check():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def test_checkpoint_age_alerts_fire_before_the_resume_window_and_retention(
    tmp_path: Path,
) -> None:
    clock = FakeClock()
    emu = Emulator(complete_gap=0.2, clock=clock.time)  # retention: 7 days on the fake clock
    retention = 7 * DAY
    async with emu:
        await emu.publish(3)
        stream = use_clock(
            EventStream(
                gateway_url=emu.gateway_url,
                app_key=emu.app_key,
                chain_code=emu.chain_code,
                auth=emulator_auth(emu),
                checkpoints=MemoryCheckpointStore(),
                timings=Timings(backoff_max=HOUR),
                lock_dir=tmp_path,
            ),
            clock,
        )
        telemetry = Telemetry(application="timewarp")
        telemetry.watch(stream)
        async with stream:
            for _ in range(3):
                await asyncio.wait_for(anext(stream), 10)
            await stream.commit()
            committed_at = clock.time()
            assert stream.snapshot().checkpoint_offset == "3"
            assert checkpoint_age(telemetry) == 0  # subscribed and caught up

            # From here the consumer commits nothing: the next event waits in its buffer ...
            await emu.publish(1)
            first_waiting_at = clock.time()
            await until(lambda: stream.snapshot().buffered == 1)
            # ... and the gateway goes away (the stream backs off and retries, for days).
            await asyncio.to_thread(emu.stop)
            lost_at = first_waiting_at + retention

            fired: dict[str, float] = {}
            alerts = {
                name: age_alert(name)
                for name in ("OhipCheckpointNearResumeWindow", "OhipCheckpointNearRetention")
            }
            true_since: dict[str, float] = {}
            step = 10 * 60.0  # a scrape every 10 virtual minutes
            while clock.time() < lost_at + HOUR and len(fired) < len(alerts):
                await clock.advance(step)
                age = checkpoint_age(telemetry)
                assert age is not None
                for name, (threshold, hold) in alerts.items():
                    if age > threshold:
                        since = true_since.setdefault(name, clock.time())
                        if clock.time() - since >= hold:
                            fired.setdefault(name, clock.time())
                    else:
                        true_since.pop(name, None)
            assert stream.snapshot().state.value != "live"

    assert set(fired) == set(alerts), fired
    # The 20-hour alert fires before the server forgets the position (24 h after the commit).
    assert fired["OhipCheckpointNearResumeWindow"] < committed_at + CHECKPOINT_RESUME_WINDOW
    # The 5-day alert: at least 48 hours before the first waiting event is lost for good.
    assert lost_at - fired["OhipCheckpointNearRetention"] >= 48 * HOUR
    # And not long before it matters (no alert in the first four days).
    assert fired["OhipCheckpointNearRetention"] - committed_at > 4 * DAY
