"""Resident memory of a consumer slower than the server: does backpressure hold?

The emulator (fast replay, its own process) serves a backlog of N events (default 1,000,000).
The consumer, in another process, runs ``EventStream`` with a SQLite checkpoint store and sleeps
1 ms every 100 events, so it is slower than the server: without backpressure the backlog would
pile up in the consumer. Reported: the consumer's RSS at 10 %, 50 % and 100 % of the events and
its peak RSS (the kernel's high-water mark and this script's samples every 50 ms), and that no
event was lost or handed out twice. The run stops after 10 minutes at most.

    python benchmarks/memory.py [--events N] [--json]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import _harness
import psutil
from _harness import EmulatorProcess

MB = 1024 * 1024
WALL_LIMIT = 600.0  # seconds


async def consume(config: dict[str, Any]) -> dict[str, Any]:
    """The consumer process: EventStream, slow on purpose, RSS at 10/50/100 %."""
    from ohip_stream import EventStream, SQLiteCheckpointStore, StaticToken

    n: int = config["n"]
    first: int = config["first_offset"]
    marks = {max(1, n // 10): "rss_10_mb", max(1, n // 2): "rss_50_mb", n: "rss_100_mb"}
    me = psutil.Process()
    out: dict[str, Any] = {}
    count = 0
    out_of_order = 0
    expected = first
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="ohip-bench-mem-") as tmp:
        store = SQLiteCheckpointStore(Path(tmp) / "offsets.db")
        try:
            async with EventStream(
                gateway_url=config["gateway_url"],
                app_key=config["app_key"],
                chain_code=config["chain_code"],
                auth=StaticToken(config["token"], enterprise_id=config["enterprise_id"]),
                checkpoints=store,
                offset=str(first),
                lock_dir=tmp,
            ) as stream:
                async for event in stream:
                    count += 1
                    if int(event.metadata.offset) != expected:
                        out_of_order += 1
                    expected = int(event.metadata.offset) + 1
                    if count % 100 == 0:
                        await asyncio.sleep(0.001)  # slower than the server
                    mark = marks.get(count)
                    if mark is not None:
                        out[mark] = round(me.memory_info().rss / MB, 1)
                    if count >= n:
                        break
                stats = stream.stats
        finally:
            store.close()
    elapsed = time.perf_counter() - started
    out.update(
        events=count,
        lost=n - count + out_of_order,
        duplicates_dropped=stats.duplicates,
        seconds=round(elapsed, 1),
        events_per_second=round(count / elapsed),
        # ru_maxrss is in kilobytes on Linux
        peak_rss_kernel_mb=round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    )
    return out


def consumer_main() -> None:
    config = json.loads(sys.stdin.readline())
    result = asyncio.run(consume(config))
    print(json.dumps(result), flush=True)


def run(n: int) -> dict[str, Any]:
    started = time.monotonic()
    with EmulatorProcess(n) as emu:
        loaded = time.monotonic() - started
        token = asyncio.run(_harness.issue_token(emu))
        config = {
            "n": n,
            "first_offset": emu.first_offset,
            "gateway_url": emu.gateway_url,
            "app_key": emu.app_key,
            "chain_code": emu.chain_code,
            "enterprise_id": emu.env["OHIP_ENTERPRISE_ID"],
            "token": token,  # through stdin, never on the command line
        }
        consumer = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--consumer"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert consumer.stdin is not None
        assert consumer.stdout is not None
        consumer.stdin.write(json.dumps(config) + "\n")
        consumer.stdin.close()
        watched = psutil.Process(consumer.pid)
        peak = 0
        deadline = time.monotonic() + WALL_LIMIT - loaded
        timed_out = False
        while consumer.poll() is None:
            try:
                peak = max(peak, watched.memory_info().rss)
            except psutil.Error:
                break
            if time.monotonic() > deadline:
                consumer.kill()
                timed_out = True
                break
            time.sleep(0.05)
        output = consumer.stdout.read()
        consumer.wait()
        if timed_out:
            raise RuntimeError(f"the consumer did not finish within {WALL_LIMIT:g} s")
        if consumer.returncode != 0 or not output.strip():
            raise RuntimeError(f"the consumer failed with exit status {consumer.returncode}")
        result: dict[str, Any] = json.loads(output.strip().splitlines()[-1])
    result["peak_rss_sampled_mb"] = round(peak / MB, 1)
    result["peak_rss_mb"] = max(result["peak_rss_kernel_mb"], result["peak_rss_sampled_mb"])
    result["growth_10_to_100_mb"] = round(result["rss_100_mb"] - result["rss_10_mb"], 1)
    result["backlog_load_seconds"] = round(loaded, 1)
    return {"n": n, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true", help="a JSON object on the last line")
    parser.add_argument("--consumer", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.consumer:
        consumer_main()
        return
    if args.events < 10:
        parser.error("--events must be at least 10")
    info = _harness.machine()
    print(f"machine: {info['cpus']} CPU(s), {info['cpu']}, Python {info['python']}", flush=True)
    print(
        f"replaying {args.events:,} events into a consumer that sleeps 1 ms every 100", flush=True
    )
    result = run(args.events)
    print(
        f"events {result['events']:,} in {result['seconds']} s "
        f"({result['events_per_second']:,}/s), lost {result['lost']}\n"
        f"RSS at 10% {result['rss_10_mb']} MB, 50% {result['rss_50_mb']} MB, "
        f"100% {result['rss_100_mb']} MB (growth {result['growth_10_to_100_mb']} MB); "
        f"peak {result['peak_rss_mb']} MB",
        flush=True,
    )
    if args.json:
        _harness.print_json(result)


if __name__ == "__main__":
    main()
