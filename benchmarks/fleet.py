"""The fleet at scale: per-stream memory and idle CPU of one worker with 100, 300 and 1,000
streams, and the latency from publish to handler at 2,000 events/s over 200 streams.

The emulator runs in another process with its upgrade budget raised (connecting is not what is
timed). Each size, and the latency run, runs in a fresh worker process of its own (this script
with ``--child``), so that what an earlier run left in memory does not count in a later one;
the worker keeps its leases in a SQLite file. ``--json`` prints one JSON object whose keys
include ``kb_per_stream`` (1 KB = 1,000 bytes; the largest run) and ``p99_ms``. Goals:
<= 100 KB per idle stream, idle CPU <= 1 % of a core per 100 streams, p99 <= 50 ms.

    python benchmarks/fleet.py                       # 100, 300, 1000 streams; 2000 ev/s
    python benchmarks/fleet.py --streams 20,50 --rate 200 --latency-streams 20 --seconds 3
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

from ohip_stream import Timings
from ohip_stream.fleet import Fleet, StreamSpec

# The emulator's process: prints its coordinates, then publishes on command (stdin lines:
# "publish RATE SECONDS PREFIX COUNT"), each event's primaryKey the wall time of its publish.
EMULATOR = r"""
import asyncio, json, sys, time
from ohip_stream.testing import Emulator, make_event

async def main():
    async with Emulator(upgrade_budget=(1_000_000, 1.0), complete_gap=0.5,
                        server_ping_interval=30.0) as emu:
        print(json.dumps({"gateway_url": emu.gateway_url, "app_key": emu.app_key,
                          "client_id": emu.client_id, "client_secret": emu.client_secret,
                          "enterprise_id": emu.enterprise_id}), flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line or line.startswith("quit"):
                return
            _, rate, seconds, prefix, count = line.split()
            rate, seconds, count = float(rate), float(seconds), int(count)
            chains = [f"{prefix}{i:04}" for i in range(count)]
            began, sent = time.monotonic(), 0
            while time.monotonic() - began < seconds:
                due = int((time.monotonic() - began) * rate)
                while sent < due:
                    chain = chains[sent % count]
                    await emu.publish(events=[make_event(primary_key=repr(time.time()))],
                                      chain_code=chain)
                    sent += 1
                await asyncio.sleep(0.002)
            print(json.dumps({"sent": sent}), flush=True)

asyncio.run(main())
"""

# The core also budgets upgrades per process and key: raised like the emulator's.
TIMINGS = Timings(complete_gap=0.5, drain_timeout=2.0, upgrade_budget=(1_000_000, 1.0))


class EmulatorProcess:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", EMULATOR],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.info: dict[str, str] = json.loads(self.proc.stdout.readline())

    def command(self, line: str) -> dict[str, Any]:
        assert self.proc.stdin is not None
        assert self.proc.stdout is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()
        return dict(json.loads(self.proc.stdout.readline()))

    def close(self) -> None:
        if self.proc.stdin is not None:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def ask_publish(command: str) -> dict[str, Any]:
    """From a child: ask the parent (which drives the emulator) to publish; its answer."""
    print(f"PUBLISH {command}", flush=True)
    return dict(json.loads(sys.stdin.readline()))


def specs(info: dict[str, str], prefix: str, count: int) -> list[StreamSpec]:
    return [
        StreamSpec(
            name=f"{prefix}{i:04}",
            environment="bench",
            gateway_url=info["gateway_url"],
            chain_code=f"{prefix}{i:04}",
            client_id=info["client_id"],
            app_key_env="BENCH_APP_KEY",
            client_secret_env="BENCH_CLIENT_SECRET",
            enterprise_id=info["enterprise_id"],
        )
        for i in range(count)
    ]


def fleet_for(info: dict[str, str], tmp: Path, prefix: str, count: int, handler: Any) -> Fleet:
    return Fleet(
        f"sqlite:///{tmp / f'{prefix}.db'}",
        handler=handler,
        streams=specs(info, prefix, count),
        assignment="greedy",
        lease_time=60.0,
        settle=0.0,
        upgrade_budget=(1_000_000, 1.0),
        budget_pad=0.0,
        timings=TIMINGS,
        lock_dir=tmp / f"locks-{prefix}",
        env={"BENCH_APP_KEY": info["app_key"], "BENCH_CLIENT_SECRET": info["client_secret"]},
    )


async def wait_live(fleet: Fleet, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        live = sum(
            1
            for o in fleet.owned.values()
            if o.stream is not None and o.stream.stats.connected_since is not None
        )
        if live >= count:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"only some of {count} streams went live within {timeout:g} s")


async def idle_run(info: dict[str, str], tmp: Path, count: int, idle: float) -> dict[str, float]:
    process = psutil.Process()
    gc.collect()
    before = process.memory_info().rss
    fleet = fleet_for(info, tmp, f"M{count}x", count, lambda stream, event: None)
    async with fleet:
        task = asyncio.create_task(fleet.run())
        await wait_live(fleet, count, timeout=60 + count / 10)
        await asyncio.sleep(1.0)
        gc.collect()
        after = process.memory_info().rss
        cpu0, wall0 = sum(process.cpu_times()[:2]), time.monotonic()
        await asyncio.sleep(idle)
        cpu = (sum(process.cpu_times()[:2]) - cpu0) / (time.monotonic() - wall0)
        fleet.request_stop()
        await task
    return {
        "streams": count,
        "kb_per_stream": round((after - before) / count / 1000, 1),
        "idle_cpu_pct_per_100": round(cpu * 100 / (count / 100), 3),
    }


async def latency_run(
    info: dict[str, str], tmp: Path, count: int, rate: float, seconds: float
) -> dict[str, float]:
    latencies: list[float] = []

    def handle(stream: StreamSpec, event: Any) -> None:
        latencies.append(time.time() - float(event.primary_key))

    fleet = fleet_for(info, tmp, "L", count, handle)
    async with fleet:
        task = asyncio.create_task(fleet.run())
        await wait_live(fleet, count, timeout=60 + count / 10)
        sent = await asyncio.to_thread(ask_publish, f"publish {rate} {seconds} L {count}")
        await asyncio.sleep(1.0)
        fleet.request_stop()
        await task
    latencies.sort()
    quantiles = statistics.quantiles(latencies, n=100) if len(latencies) > 1 else [0.0] * 99
    return {
        "events_sent": sent["sent"],
        "events_handled": len(latencies),
        "p50_ms": round(quantiles[49] * 1000, 2),
        "p99_ms": round(quantiles[98] * 1000, 2),
    }


def child(args: argparse.Namespace) -> dict[str, Any]:
    """One measurement in this (fresh) process: ``idle N`` or ``latency N``."""
    kind, count = args.child[0], int(args.child[1])
    info = json.loads(args.emulator)
    with tempfile.TemporaryDirectory() as tmp:
        if kind == "idle":
            return asyncio.run(idle_run(info, Path(tmp), count, args.idle))
        return asyncio.run(latency_run(info, Path(tmp), count, args.rate, args.seconds))


def in_fresh_process(emu: EmulatorProcess, args: argparse.Namespace, *child: str) -> Any:
    """Run ``--child`` in a new interpreter; its stdout's last line is the result. A latency
    child asks for the events through this process (the emulator's stdin is ours)."""
    command = [
        sys.executable,
        __file__,
        "--child",
        *child,
        "--emulator",
        json.dumps(emu.info),
        "--idle",
        str(args.idle),
        "--rate",
        str(args.rate),
        "--seconds",
        str(args.seconds),
    ]
    proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert proc.stdin is not None
    assert proc.stdout is not None
    lines: list[str] = []
    for line in proc.stdout:
        if line.startswith("PUBLISH "):  # the child is live: publish, then answer it
            sent = emu.command(line.removeprefix("PUBLISH ").strip())
            proc.stdin.write(json.dumps(sent) + "\n")
            proc.stdin.flush()
        else:
            lines.append(line)
    if proc.wait() != 0:
        raise RuntimeError(f"the benchmark's child {' '.join(child)} failed")
    return json.loads(lines[-1])


def main(args: argparse.Namespace) -> dict[str, Any]:
    emu = EmulatorProcess()
    try:
        runs = [
            in_fresh_process(emu, args, "idle", str(count))
            for count in sorted(int(c) for c in args.streams.split(","))
        ]
        latency = in_fresh_process(emu, args, "latency", str(args.latency_streams))
    finally:
        emu.close()
    return {
        "runs": runs,
        "kb_per_stream": runs[-1]["kb_per_stream"],
        "idle_cpu_pct_per_100": max(r["idle_cpu_pct_per_100"] for r in runs),
        **latency,
        "cpu_count": os.cpu_count(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--streams", default="100,300,1000")
    parser.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measure")
    parser.add_argument("--rate", type=float, default=2000.0, help="events per second")
    parser.add_argument("--latency-streams", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--child", nargs=2, metavar=("KIND", "STREAMS"), help=argparse.SUPPRESS)
    parser.add_argument("--emulator", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)), flush=True)
        sys.exit(0)
    result = main(args)
    if args.json:
        print(json.dumps(result))
    else:
        for run in result["runs"]:
            print(
                f"{run['streams']:>5} streams: {run['kb_per_stream']:>7} KB/stream, idle CPU "
                f"{run['idle_cpu_pct_per_100']}% of a core per 100 streams"
            )
        print(
            f"latency over {result['events_handled']} events: p50 {result['p50_ms']} ms, "
            f"p99 {result['p99_ms']} ms"
        )
