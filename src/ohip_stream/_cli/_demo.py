"""``ohip-stream demo``: a local gateway, a realistic stream with a rotation and a drop, a live
view of the events, and a summary checked against the gateway's log.

Everything runs in this process: the emulator in its own thread, the consumer on the main
loop. Timings are compressed (a token rotation every few seconds instead of 50 minutes) and the
screen says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.text import Text

from ohip_stream._auth import OAuthClientCredentials
from ohip_stream._checkpoints import MemoryCheckpointStore
from ohip_stream._cli._common import (
    format_reconnects,
    one_line,
    require_emulator_extra,
    setup_logging,
    write_line,
)
from ohip_stream._cli._render import HEADER, event_line
from ohip_stream._cli._status import StatusLine
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._models import Event
from ohip_stream._stream import EventStream
from ohip_stream._timings import Timings

__all__ = ["DemoOptions", "run_demo"]

HARD_CAP = 60.0  # seconds: the demo never runs longer than this (default run)
EMULATOR_COMPLETE_GAP = 0.5
AUTH_MARGIN = 1.0


@dataclass
class DemoOptions:
    events: int = 200
    seconds: float = 20.0
    json: bool = False
    verbose: int = 0
    seed: int = 0


@dataclass
class DemoPlan:
    """The compressed timings of one run, derived from its length."""

    seconds: float
    rotate_after: float
    token_ttl: float
    drop_at: float
    cap: float
    timings: Timings

    @classmethod
    def for_run(cls, seconds: float) -> DemoPlan:
        # One rotation: the first token rotates a little after half-way; the second one would
        # rotate after the stream has ended.
        rotate_after = max(1.0, 0.6 * seconds)
        timings = Timings(
            ping_interval=1.0,
            rotate_after=rotate_after,
            complete_gap=EMULATOR_COMPLETE_GAP + 0.1,
            lockout=1.0,
            drop_wait=0.5,
            backoff_min=0.1,
            backoff_max=1.0,
            liveness_timeout=5.0,
            drain_timeout=3.0,
            init_timeout=3.0,
        )
        return cls(
            seconds=seconds,
            rotate_after=rotate_after,
            token_ttl=rotate_after + 3.0,
            drop_at=0.3 * seconds,
            cap=max(HARD_CAP, seconds * 1.5 + 15.0),
            timings=timings,
        )

    def compressed_note(self) -> str:
        t = self.timings
        return (
            f"Timings are compressed for the demo: token lifetime {self.token_ttl:g} s (Oracle: "
            f"60 min), rotation every {self.rotate_after:g} s (50 min), gap after complete "
            f"{t.complete_gap:g} s (10 s), wait after a drop {t.drop_wait:g} s (4 s), ping every "
            f"{t.ping_interval:g} s (10 s)."
        )


@dataclass
class _Run:
    """What the demo saw."""

    published: list[str] = field(default_factory=list)
    received: dict[str, int] = field(default_factory=dict)
    uids: dict[str, str] = field(default_factory=dict)
    publishing_done: bool = False
    dropped: bool = False
    timed_out: bool = False
    interrupted: bool = False
    signal: int | None = None


class _View:
    """Where the demo writes: a Rich live view, or JSON lines."""

    def __init__(self, json_mode: bool) -> None:
        self.json = json_mode
        self.console = Console(highlight=False, soft_wrap=False)
        self.errors = Console(stderr=True, highlight=False)
        self.live: Live | None = None

    def note(self, message: str, style: str = "yellow") -> None:
        if self.json:
            return
        self.console.print(Text(message, style=style))

    def log_record(self, record: logging.LogRecord) -> None:
        if record.name == "ohip_stream.timings":
            return  # the compressed timings are the point of the demo, and said on screen
        text = Text(f"{record.levelname.lower()}: {one_line(record.getMessage())}", style="dim")
        if self.json:
            self.errors.print(text)
        else:
            self.console.print(text)


def _footer(run: _Run, status: StatusLine, plan: DemoPlan, started: float, total: int) -> Panel:
    stats = status.stream.stats
    name = status.state()
    state = Text(name, style="green" if name == "live" else "yellow")
    body = Text.assemble(
        state,
        f"  received {len(run.received)}/{len(run.published)} published (of {total})",
        f"  reconnects {format_reconnects(stats.reconnects)}",
        f"  rotations {stats.rotations}",
        f"  duplicates dropped {stats.duplicates}",
        f"  {time.monotonic() - started:4.1f} s / ~{plan.seconds:g} s",
    )
    return Panel(body, title="ohip-stream demo", border_style="dim")


class _Demo:
    """One run of the demo: the emulator's publisher, the watcher of the stream's counters, and
    the consumer, over one emulator and one stream."""

    def __init__(self, options: DemoOptions, view: _View, emu: Any, stream: EventStream) -> None:
        self.options = options
        self.view = view
        self.emu = emu
        self.stream = stream
        self.plan = DemoPlan.for_run(options.seconds)
        self.run = _Run()
        self.status = StatusLine(stream)
        self.started = time.monotonic()

    def footer(self) -> Panel:
        return _footer(self.run, self.status, self.plan, self.started, self.options.events)

    def banner(self) -> None:
        if self.view.json:
            return
        emu, options = self.emu, self.options
        self.view.console.print(
            Panel(
                Text.assemble(
                    (f"A local OHIP gateway (the emulator) at {emu.gateway_url}, chain ", ""),
                    (emu.chain_code, "bold"),
                    f": {options.events} events over about {options.seconds:g} s, with one "
                    "token rotation and one dropped connection on the way.\n",
                    (self.plan.compressed_note(), "yellow"),
                ),
                title="ohip-stream demo",
                border_style="cyan",
            )
        )
        self.view.console.print(HEADER, no_wrap=True, overflow="ellipsis")

    async def publish(self) -> None:
        loop = asyncio.get_running_loop()
        run, options = self.run, self.options
        interval = options.seconds / options.events
        begin = loop.time()
        sent = 0
        while sent < options.events or not run.dropped:
            elapsed = loop.time() - begin
            due = min(options.events, int(elapsed / interval) + 1)
            if due > sent:
                run.published.extend(await self.emu.publish(count=due - sent))
                sent = due
            if (
                not run.dropped
                and elapsed >= self.plan.drop_at
                and self.stream.stats.connected_since is not None
            ):
                self.view.note(
                    "-- the gateway drops the connection (the client sees 1006, waits, and "
                    "resumes from its last offset)"
                )
                await self.emu.drop()
                run.dropped = True
            await asyncio.sleep(min(0.1, interval))
        run.publishing_done = True

    def interrupt(self, sig: int) -> None:
        self.run.interrupted = True
        self.run.signal = self.run.signal or sig
        self.stream.request_stop()

    def _narrate(self, rotations: int, reconnects: dict[str, int]) -> None:
        stats = self.stream.stats
        if stats.rotations != rotations:
            self.view.note(
                "-- token rotation: complete, drain, new token, resubscribe from the last offset",
                style="cyan",
            )
        for cause, count in stats.reconnects.items():
            if cause != "rotation" and count != reconnects.get(cause, 0):
                self.view.note(f"-- reconnecting after {cause}", style="yellow")

    def _done(self) -> bool:
        run = self.run
        if run.publishing_done and set(run.published) <= run.received.keys():
            return True
        if time.monotonic() - self.started > self.plan.cap:
            run.timed_out = True
            self.view.note(f"-- stopping: the demo's {self.plan.cap:g} s limit", style="red")
            return True
        return False

    async def watch(self) -> None:
        rotations = 0
        reconnects: dict[str, int] = {}
        while True:
            await asyncio.sleep(0.1)
            stats = self.stream.stats
            self._narrate(rotations, reconnects)
            rotations, reconnects = stats.rotations, dict(stats.reconnects)
            if self.view.live is not None:
                self.view.live.update(self.footer())
            if self._done():
                self.stream.request_stop()
                return

    def show(self, event: Event) -> None:
        offset = event.metadata.offset
        self.run.received[offset] = self.run.received.get(offset, 0) + 1
        self.run.uids[offset] = event.metadata.unique_event_id
        if self.view.json:
            write_line(
                json.dumps(event.model_dump(by_alias=True, mode="json"), separators=(",", ":"))
            )
        else:
            self.view.console.print(
                event_line(event, self.view.console.width), no_wrap=True, overflow="ellipsis"
            )

    async def consume(self, auth: OAuthClientCredentials) -> None:
        view = self.view
        live = (
            None
            if view.json
            else Live(self.footer(), console=view.console, refresh_per_second=8, transient=True)
        )
        tasks: list[asyncio.Task[None]] = []
        try:
            async with auth, self.stream:
                if live is not None:
                    live.start()
                    view.live = live
                tasks = [asyncio.create_task(self.publish()), asyncio.create_task(self.watch())]
                async for event in self.stream:
                    self.show(event)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            if live is not None:
                view.live = None
                live.stop()


async def _demo(options: DemoOptions, view: _View) -> int:
    from ohip_stream.testing import Emulator

    plan = DemoPlan.for_run(options.seconds)
    loop = asyncio.get_running_loop()
    async with Emulator(
        token_ttl=plan.token_ttl,
        complete_gap=EMULATOR_COMPLETE_GAP,
        init_timeout=5.0,
        idle_timeout=30.0,
        server_ping_interval=2.0,
        seed=options.seed,
    ) as emu:
        auth = OAuthClientCredentials(
            gateway_url=emu.gateway_url,
            client_id=emu.client_id,
            client_secret=emu.client_secret,
            app_key=emu.app_key,
            enterprise_id=emu.enterprise_id,
            margin=AUTH_MARGIN,
        )
        stream = EventStream(
            gateway_url=emu.gateway_url,
            app_key=emu.app_key,
            chain_code=emu.chain_code,
            auth=auth,
            checkpoints=MemoryCheckpointStore(),
            timings=plan.timings,
        )
        demo = _Demo(options, view, emu, stream)
        demo.banner()
        handled: list[signal.Signals] = []
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.add_signal_handler(sig, demo.interrupt, sig)
                handled.append(sig)
        try:
            await demo.consume(auth)
        finally:
            for sig in handled:
                loop.remove_signal_handler(sig)
        summary = _summary(demo.run, stream, emu.events(), emu, time.monotonic() - demo.started)
    _show_summary(view, summary)
    if demo.run.interrupted:
        # SIGINT (Ctrl-C): interrupted; SIGTERM: a requested stop (the exit code table).
        return 130 if demo.run.signal == signal.SIGINT else 0
    return 1 if summary["lost"] else 0


def _summary(
    run: _Run, stream: EventStream, log: list[dict[str, Any]], emu: Any, elapsed: float
) -> dict[str, Any]:
    log_uids = {str(e["metadata"]["offset"]): str(e["metadata"]["uniqueEventId"]) for e in log}
    published = set(log_uids) | set(run.published)
    received = set(run.received)
    lost = sorted(published - received, key=lambda o: (len(o), o))
    mismatched = sorted(
        (o for o in received & set(log_uids) if run.uids.get(o) != log_uids[o]),
        key=lambda o: (len(o), o),
    )
    stats = stream.stats
    return {
        "published": len(published),
        "received": len(received),
        "duplicates_dropped": stats.duplicates,
        "delivered_twice": sum(count - 1 for count in run.received.values()),
        "unknown": len(received - published),
        "mismatched": len(mismatched),
        "reconnects": dict(stats.reconnects),
        "rotations": stats.rotations,
        "connections": len(getattr(emu, "connections", ()) or ()),
        "lost": len(lost),
        "lost_offsets": lost[:50],
        "seconds": round(elapsed, 1),
        "timed_out": run.timed_out,
        "interrupted": run.interrupted,
    }


def _show_summary(view: _View, summary: dict[str, Any]) -> None:
    if view.json:
        write_line(json.dumps({"summary": summary}, separators=(",", ":")))
        return
    ok = summary["lost"] == 0
    rows: list[tuple[str, str, str]] = [
        ("published", str(summary["published"]), "events in the emulator's log"),
        ("received", str(summary["received"]), "distinct offsets handed to the consumer"),
        (
            "duplicates dropped",
            str(summary["duplicates_dropped"]),
            "replayed on resume and dropped by the stream",
        ),
        ("delivered twice", str(summary["delivered_twice"]), ""),
        ("reconnects", format_reconnects(summary["reconnects"]), ""),
        ("rotations", str(summary["rotations"]), "planned, before the token expired"),
        ("connections", str(summary["connections"]), "upgrades the emulator recorded"),
        ("lost", str(summary["lost"]), "published but never received"),
        ("run time", f"{summary['seconds']:g} s", ""),
    ]
    lines: list[Text] = [Text("Summary, checked against the emulator's log", style="bold")]
    for name, value, note in rows:
        style = ("green" if ok else "bold red") if name == "lost" else ""
        line = Text(f"  {name}: ")
        line.append(value, style=style or "bold")
        if note:
            line.append(f"  ({note})", style="dim")
        lines.append(line)
    if summary["lost"]:
        shown = ", ".join(summary["lost_offsets"])
        lines.append(Text(f"  lost offsets: {shown}", style="red"))
    if summary["timed_out"]:
        lines.append(Text("  stopped by the time limit", style="red"))
    view.console.print(Group(*lines))


def run_demo(options: DemoOptions) -> int:
    """``ohip-stream demo``."""
    require_emulator_extra()
    if options.events < 1:
        raise ConfigurationError(f"--events must be at least 1, got {options.events}")
    if not 0 < options.seconds <= 600:
        raise ConfigurationError(
            f"--seconds must be above 0 and at most 600, got {options.seconds}"
        )
    view = _View(options.json)
    if options.verbose:
        setup_logging(options.verbose, stream=sys.stderr)
    else:
        setup_logging(0, sink=view.log_record)
    return asyncio.run(_demo(options, view))
