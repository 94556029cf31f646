"""``ohip-stream tail`` and ``ohip-stream replay``: events to stdout as JSON lines."""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from ohip_stream._checkpoints import Checkpoint, MemoryCheckpointStore, SQLiteCheckpointStore
from ohip_stream._cli_common import (
    PROG,
    EventFilter,
    checkpoint_path,
    event_json,
    format_reconnects,
    load_settings,
    write_line,
)
from ohip_stream._exceptions import ConfigurationError
from ohip_stream._models import Event
from ohip_stream._stream import EventStream, StreamStats

__all__ = ["ConnectionFlags", "ReplayOptions", "TailOptions", "run_replay", "run_tail"]


@dataclass
class ConnectionFlags:
    """Flags that override ``OHIP_*`` variables (secrets come from the environment only)."""

    env_file: Path | None = None
    gateway_url: str | None = None
    chain_code: str | None = None
    client_id: str | None = None
    enterprise_id: str | None = None
    username: str | None = None
    ca_file: Path | None = None
    proxy: str | None = None
    lock_dir: Path | None = None

    def settings(self) -> Any:
        """The settings these flags, the environment and the env file describe."""
        return load_settings(
            self.env_file,
            gateway_url=self.gateway_url,
            chain_code=self.chain_code,
            client_id=self.client_id,
            enterprise_id=self.enterprise_id,
            username=self.username,
            ca_file=self.ca_file,
            proxy=self.proxy,
            lock_dir=self.lock_dir,
        )


@dataclass
class TailOptions:
    connection: ConnectionFlags = field(default_factory=ConnectionFlags)
    checkpoint_db: Path | None = None
    modules: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    hotels: list[str] = field(default_factory=list)
    from_offset: str | None = None
    from_highest: bool = False
    delta: bool = False
    max_events: int | None = None
    status: bool = True


@dataclass
class ReplayOptions:
    connection: ConnectionFlags = field(default_factory=ConnectionFlags)
    from_offset: str = "0"
    to_offset: str | None = None
    idle_timeout: float = 5.0
    checkpoint_db: Path | None = None
    modules: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    hotels: list[str] = field(default_factory=list)


def _offset_flag(name: str, value: str | None) -> str | None:
    if value is None:
        return None
    text = value.strip()
    if not text.isdigit():
        raise ConfigurationError(f"{name} must be a non-negative whole number, got {value!r}")
    return str(int(text))


class ReaderGoneError(Exception):
    """stdout was closed by its reader (``| head``): stop, without committing the event that
    could not be written (leaving the block with an exception keeps it for next time)."""


def _write_event(event: Event) -> None:
    try:
        write_line(event_json(event))
    except BrokenPipeError:
        raise ReaderGoneError() from None


class _Status:
    """Progress on stderr, at most once a second: events, rate, last offset, reconnects."""

    def __init__(self, stats: StreamStats, out: TextIO | None = None) -> None:
        self._stats = stats
        self._out = out
        self._last_events = 0
        self._last_time = time.monotonic()
        self._last_key: tuple[object, ...] = ()

    def line(self, *, final: bool = False) -> str:
        stats = self._stats
        now = time.monotonic()
        elapsed = max(now - self._last_time, 1e-9)
        rate = (stats.events - self._last_events) / elapsed
        self._last_events = stats.events
        self._last_time = now
        state = "connected" if stats.connected_since is not None else "connecting"
        if final:
            state = "stopped"
        return (
            f"{PROG}: {state}, {stats.events} events ({rate:.1f}/s), last offset "
            f"{stats.last_offset or '-'}, reconnects {format_reconnects(stats.reconnects)}"
            + (f", duplicates dropped {stats.duplicates}" if stats.duplicates else "")
            + (f", lost upstream {stats.gaps}" if stats.gaps else "")
        )

    def report(self, *, final: bool = False) -> None:
        stats = self._stats
        key = (
            stats.events,
            tuple(sorted(stats.reconnects.items())),
            stats.connected_since is not None,
            stats.duplicates,
            stats.gaps,
        )
        if key == self._last_key and not final:
            return  # quiet while nothing changes
        self._last_key = key
        out = self._out if self._out is not None else sys.stderr
        out.write(self.line(final=final) + "\n")
        out.flush()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.report()


class _ExplicitStart:
    """The SQLite store for a run with ``--from-offset`` or ``--from-highest``.

    The explicit start overrides the checkpoint for this run: the stored offset is not loaded
    (else the stream would drop the replayed events up to it as already processed), only when
    the stream's last connection was completed (the gap, protocol §4). Writes go through; until
    the run has processed an event, the stored offset is kept.
    """

    def __init__(self, store: SQLiteCheckpointStore) -> None:
        self._store = store
        self._stored: Checkpoint | None = None

    async def load(self, stream_id: str) -> Checkpoint | None:
        self._stored = await self._store.load(stream_id)
        if self._stored is None:
            return None
        return Checkpoint(completed_at=self._stored.completed_at)

    async def save(self, stream_id: str, checkpoint: Checkpoint) -> None:
        stored = self._stored
        if checkpoint.offset is None and stored is not None and stored.offset is not None:
            checkpoint = Checkpoint(
                stored.offset,
                stored.unique_event_id,
                checkpoint.completed_at,
                checkpoint.updated_at,
            )
        await self._store.save(stream_id, checkpoint)


async def _tail(options: TailOptions) -> int:
    settings = options.connection.settings()
    from_offset = _offset_flag("--from-offset", options.from_offset)
    if from_offset is not None and options.from_highest:
        raise ConfigurationError("--from-offset and --from-highest are mutually exclusive")
    if options.max_events is not None and options.max_events < 1:
        raise ConfigurationError(f"--max-events must be at least 1, got {options.max_events}")
    # The settings check what is missing before any file is created.
    settings.require("gateway_url", "app_key", "chain_code", "client_id", "client_secret")
    store = SQLiteCheckpointStore(checkpoint_path(options.checkpoint_db, settings))
    try:
        explicit = from_offset is not None or options.from_highest
        stream = settings.event_stream(
            checkpoints=_ExplicitStart(store) if explicit else store,
            offset=from_offset,
            start_at_highest=options.from_highest,
            delta=options.delta,
        )
        return await _consume_tail(stream, options)
    finally:
        store.close()


async def _consume_tail(stream: EventStream, options: TailOptions) -> int:
    accept = EventFilter(options.modules, options.events, options.hotels)
    printed = 0
    status = _Status(stream.stats)
    reporter: asyncio.Task[None] | None = None
    try:
        async with stream:
            stream.install_signal_handlers()
            if options.status:
                reporter = asyncio.create_task(status.run())
            async for event in stream:
                # Filtered-out events count as processed all the same (the next one marks it).
                if not accept(event):
                    continue
                _write_event(event)
                printed += 1
                if options.max_events is not None and printed >= options.max_events:
                    break  # leaving the block commits this event, completes and drains
    finally:
        if reporter is not None:
            reporter.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await reporter
    if options.status:
        status.report(final=True)
    return 0


def run_tail(options: TailOptions) -> int:
    """``ohip-stream tail``."""
    return asyncio.run(_tail(options))


async def _replay(options: ReplayOptions) -> int:
    settings = options.connection.settings()
    start = _offset_flag("--from-offset", options.from_offset)
    end = _offset_flag("--to-offset", options.to_offset)
    assert start is not None
    if end is not None and int(end) < int(start):
        raise ConfigurationError(f"--to-offset ({end}) must not be below --from-offset ({start})")
    if not options.idle_timeout > 0:
        raise ConfigurationError(
            f"--idle-timeout must be a positive number of seconds, got {options.idle_timeout}"
        )
    settings.require("gateway_url", "app_key", "chain_code", "client_id", "client_secret")
    # Never written: the replay keeps its position in memory. It reads when the stream's last
    # connection was completed (if a checkpoint file exists), to respect the gap (protocol §4).
    memory = MemoryCheckpointStore()
    stream = settings.event_stream(checkpoints=memory, offset=start)
    db = checkpoint_path(options.checkpoint_db, settings)
    if db.is_file():
        durable = SQLiteCheckpointStore(db)
        try:
            previous = durable.load_sync(stream.stream_id)
        except ConfigurationError:
            previous = None
        finally:
            durable.close()
        if previous is not None and previous.completed_at is not None:
            await memory.save(stream.stream_id, Checkpoint(completed_at=previous.completed_at))
    return await _consume_replay(stream, options, int(end) if end is not None else None)


async def _consume_replay(stream: EventStream, options: ReplayOptions, end: int | None) -> int:
    accept = EventFilter(options.modules, options.events, options.hotels)
    loop = asyncio.get_running_loop()
    last_event = loop.time()

    async def watch_idle() -> None:
        # Idle counts only while subscribed: waits for a token, a lockout or the gap do not.
        nonlocal last_event
        while True:
            if stream.stats.connected_since is None:
                last_event = max(last_event, loop.time())
            rest = last_event + options.idle_timeout - loop.time()
            if rest <= 0:
                stream.request_stop()
                return
            await asyncio.sleep(min(rest, 0.25))

    async with stream:
        stream.install_signal_handlers()
        watcher = asyncio.create_task(watch_idle())
        try:
            async for event in stream:
                last_event = loop.time()
                number = int(event.metadata.offset) if event.metadata.offset.isdigit() else -1
                if end is not None and number > end:
                    break
                if accept(event):
                    _write_event(event)
                if end is not None and number >= end:
                    break
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
    return 0


def run_replay(options: ReplayOptions) -> int:
    """``ohip-stream replay``."""
    return asyncio.run(_replay(options))
