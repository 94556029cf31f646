"""``ohip-stream tail`` and ``ohip-stream replay``: events to stdout (a table on a terminal,
JSON lines otherwise), status to stderr."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ohip_stream._checkpoints import Checkpoint, MemoryCheckpointStore, SQLiteCheckpointStore
from ohip_stream._cli._common import (
    PROG,
    EventFilter,
    checkpoint_path,
    event_json,
    is_offset,
    load_settings,
    offset_argument,
    write_line,
)
from ohip_stream._cli._metrics import serve_metrics
from ohip_stream._cli._status import StatusLine
from ohip_stream._exceptions import ConfigurationError, OhipError
from ohip_stream._models import Event
from ohip_stream._stream import EventStream

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
    json: bool = False
    #: ``--metrics-port``: where to serve metrics and health checks (None: not served).
    metrics: tuple[str, int] | None = None


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
    return None if value is None else offset_argument(name, value)


class ReaderGoneError(Exception):
    """stdout was closed by its reader (``| head``): stop, without committing the event that
    could not be written (leaving the block with an exception keeps it for next time)."""


def _write_event(event: Event) -> None:
    try:
        write_line(event_json(event))
    except BrokenPipeError:
        raise ReaderGoneError() from None


class _Signals:
    """SIGINT and SIGTERM stop the stream gracefully (complete, drain, commit); the exit code
    says which came: 130 for SIGINT (Ctrl-C), 0 for SIGTERM (a requested stop). A second
    Ctrl-C interrupts at once."""

    def __init__(self, stop: Callable[[], None]) -> None:
        self._stop = stop
        self.received: int | None = None
        self._handled: list[int] = []
        self._loop: asyncio.AbstractEventLoop | None = None

    def __enter__(self) -> _Signals:
        self._loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                self._loop.add_signal_handler(sig, self._got, sig)
                self._handled.append(sig)
        return self

    def _got(self, sig: int) -> None:
        if self.received is None:
            self.received = sig
        if sig == signal.SIGINT and self._loop is not None:
            self._loop.remove_signal_handler(sig)  # the next Ctrl-C: KeyboardInterrupt
            self._handled.remove(sig)
        self._stop()

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None:
            for sig in self._handled:
                self._loop.remove_signal_handler(sig)
        self._handled = []

    def exit_code(self) -> int:
        return 130 if self.received == signal.SIGINT else 0


class _ExplicitStart:
    """The SQLite store for a run with ``--from-offset`` or ``--from-highest``.

    The explicit start overrides the checkpoint for this run: the stored offset is not loaded
    (else the stream would drop the replayed events up to it as already processed), only when
    the stream's last connection was completed (the gap the gateway requires between a
    complete and the next subscribe). Writes go through; until
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


def _stored_checkpoint(db: Path, stream_id: str) -> Checkpoint | None:
    """The checkpoint ``tail`` resumes from, checked: a stored offset that is not one is a
    configuration error that says where it came from and how to fix it."""
    if not db.is_file():
        return None
    store = SQLiteCheckpointStore(db)
    try:
        found = store.load_sync(stream_id)
    finally:
        store.close()
    if found is not None and found.offset is not None and not is_offset(found.offset):
        raise ConfigurationError(
            f"the checkpoint of stream {stream_id} in {db} holds the offset {found.offset!r}, "
            "which is not 1 to 20 ASCII digits: set a good one with `ohip-stream checkpoint set "
            "OFFSET`, or forget it with `ohip-stream checkpoint clear`"
        )
    return found


def _start_line(settings: Any, options: TailOptions, db: Path, stored: Checkpoint | None) -> str:
    """The line ``tail`` starts with: gateway host, chain, where it resumes, the file."""
    from ohip_stream._cli._checkpoint import gateway_host

    if options.from_offset is not None:
        where = f"starting at offset {options.from_offset} (--from-offset)"
    elif options.from_highest:
        where = "starting at the newest event (--from-highest)"
    elif stored is not None and stored.offset is not None:
        where = f"resuming after offset {stored.offset}"
    else:
        where = "starting at the server position (no checkpoint yet)"
    return (
        f"{PROG}: tail {gateway_host(settings.gateway_url)}, chain "
        f"{settings.chain_code.strip().upper()}, {where}, checkpoint file {db}"
    )


async def _tail(options: TailOptions) -> int:
    settings = options.connection.settings()
    from_offset = _offset_flag("--from-offset", options.from_offset)
    if from_offset is not None and options.from_highest:
        raise ConfigurationError("--from-offset and --from-highest are mutually exclusive")
    if options.max_events is not None and options.max_events < 1:
        raise ConfigurationError(f"--max-events must be at least 1, got {options.max_events}")
    # The settings check what is missing before any file is created.
    settings.require("gateway_url", "app_key", "chain_code", "client_id", "client_secret")
    db = checkpoint_path(options.checkpoint_db, settings)
    explicit = from_offset is not None or options.from_highest
    from ohip_stream._stream import stream_id_for

    stream_id = stream_id_for(
        settings.gateway_url, settings.chain_code, settings.app_key.get_secret_value()
    )
    stored = None if explicit else _stored_checkpoint(db, stream_id)
    store = SQLiteCheckpointStore(db)
    try:
        stream = settings.event_stream(
            checkpoints=_ExplicitStart(store) if explicit else store,
            offset=from_offset,
            start_at_highest=options.from_highest,
            delta=options.delta,
            # A long-running tail outlives an event that breaks the schema: a WARNING names it,
            # the dead-letter count (its metric) goes up, and the stream goes on.
            on_invalid="skip",
        )
        if options.status:
            options.from_offset = from_offset
            sys.stderr.write(_start_line(settings, options, db, stored) + "\n")
            sys.stderr.flush()
        return await _consume_tail(stream, options)
    finally:
        store.close()


class _Printer:
    """Events to stdout: the demo's table on a terminal, JSON lines when piped or asked."""

    def __init__(self, as_json: bool) -> None:
        self._console: Any = None
        if not as_json and _is_terminal():
            from rich.console import Console

            from ohip_stream._cli._render import HEADER

            self._console = Console(highlight=False, soft_wrap=False)
            self._console.print(HEADER, no_wrap=True, overflow="ellipsis")

    def __call__(self, event: Event) -> None:
        if self._console is None:
            _write_event(event)
            return
        from ohip_stream._cli._render import event_line

        try:
            self._console.print(
                event_line(event, self._console.width), no_wrap=True, overflow="ellipsis"
            )
        except BrokenPipeError:
            raise ReaderGoneError() from None


def _is_terminal() -> bool:
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):
        return False


async def _consume_tail(stream: EventStream, options: TailOptions) -> int:
    accept = EventFilter(options.modules, options.events, options.hotels)
    show = _Printer(options.json)
    printed = 0
    status = StatusLine(stream)
    reporter: asyncio.Task[None] | None = None
    signals = _Signals(stream.request_stop)
    try:
        async with stream, serve_metrics([stream], options.metrics) as port:
            if port is not None and options.status:
                host = options.metrics[0] if options.metrics else ""
                sys.stderr.write(f"{PROG}: metrics on http://{host}:{port}/metrics\n")
                sys.stderr.flush()
            with signals:
                if options.status:
                    reporter = asyncio.create_task(status.run())
                async for event in stream:
                    # Filtered-out events count as processed all the same (the next one marks
                    # it).
                    if not accept(event):
                        continue
                    show(event)
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
    if signals.received is not None:
        sys.stderr.write(f"{PROG}: interrupted\n" if signals.exit_code() else "")
    return signals.exit_code()


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
    # connection was completed (if a checkpoint file exists), to respect the gap the gateway
    # requires between a complete and the next subscribe.
    memory = MemoryCheckpointStore()
    stream = settings.event_stream(checkpoints=memory, offset=start)
    db = checkpoint_path(options.checkpoint_db, settings)
    if db.is_file():
        durable = SQLiteCheckpointStore(db)
        try:
            previous = durable.load_sync(stream.stream_id)
        except OhipError:  # a broken file: the replay does not need it
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

    signals = _Signals(stream.request_stop)
    async with stream:
        watcher = asyncio.create_task(watch_idle())
        try:
            with signals:
                async for event in stream:
                    last_event = loop.time()
                    number = int(event.metadata.offset) if is_offset(event.metadata.offset) else -1
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
    if signals.exit_code():
        sys.stderr.write(f"{PROG}: interrupted\n")
    return signals.exit_code()


def run_replay(options: ReplayOptions) -> int:
    """``ohip-stream replay``."""
    return asyncio.run(_replay(options))
