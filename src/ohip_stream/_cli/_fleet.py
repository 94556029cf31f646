"""``ohip-stream fleet sync|run|status|release``: the fleet from the command line."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import os
import sys
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from ohip_stream._cli._common import PROG, event_json, write_line
from ohip_stream._cli._options import MetricsPort, Verbose, app, note_verbose, start_logging
from ohip_stream._exceptions import ConfigurationError

__all__ = ["fleet_app", "print_event"]

_T = TypeVar("_T")

fleet_app = typer.Typer(
    help=(
        "Run many streams on many workers, one consumer each: leases and checkpoints in a "
        "database (sqlite:///file.db for one host, postgresql://... for many)."
    ),
    no_args_is_help=True,
)
app.add_typer(fleet_app, name="fleet")

DEFAULT_DATABASE = "sqlite:///ohip-fleet.db"

Database = Annotated[
    str,
    typer.Option(
        "--database",
        envvar="OHIP_FLEET_DATABASE",
        help="The fleet's database: sqlite:///path.db or postgresql://user@host:5432/db "
        "(default: OHIP_FLEET_DATABASE, else sqlite:///ohip-fleet.db).",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="One JSON object per line.")]


def _run(make: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    return asyncio.run(make())


def _store(database: str) -> Any:
    from ohip_stream.fleet import open_lease_store

    return open_lease_store(database)


@fleet_app.command("sync")
def fleet_sync(
    streams_file: Annotated[
        Path, typer.Argument(help="The streams file (TOML).", dir_okay=False, exists=False)
    ],
    database: Database = DEFAULT_DATABASE,
    prune: Annotated[
        bool, typer.Option("--prune", help="Delete the streams the file no longer names.")
    ] = False,
    verbose: Verbose = 0,
) -> None:
    """Write the file's streams into the database (secrets stay in the environment)."""
    note_verbose(verbose)
    start_logging()
    from ohip_stream.fleet import load_streams_file

    specs = load_streams_file(streams_file)

    async def sync() -> Any:
        store = _store(database)
        try:
            await store.setup()
            return await store.sync_streams(specs, prune=prune)
        finally:
            await store.aclose()

    result = _run(sync)
    write_line(
        f"{len(specs)} streams in {streams_file}: {len(result.added)} added, "
        f"{len(result.updated)} updated, {len(result.removed)} removed, "
        f"{len(result.unchanged)} unchanged"
    )


def _age(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    return f"{seconds:.0f}s" if seconds < 3600 else f"{seconds / 3600:.1f}h"


@fleet_app.command("status")
def fleet_status_command(
    database: Database = DEFAULT_DATABASE, as_json: AsJson = False, verbose: Verbose = 0
) -> None:
    """Every stream: chain, owner, epoch, lease left, last offset, age of the last event, state."""
    note_verbose(verbose)
    start_logging()
    from ohip_stream.fleet import fleet_status

    async def status() -> Any:
        store = _store(database)
        try:
            await store.setup()
            return await fleet_status(store)
        finally:
            await store.aclose()

    rows = _run(status)
    if as_json:
        for row in rows:
            write_line(json.dumps(row.as_dict(), separators=(",", ":")))
        return
    if not rows:
        write_line("no streams in the fleet database: run 'ohip-stream fleet sync FILE'")
        return
    header = ("STREAM", "CHAIN", "STATE", "OWNER", "EPOCH", "LEASE", "OFFSET", "AGE")
    table = [header] + [
        (
            r.stream,
            r.chain,
            r.state,
            r.owner or "-",
            str(r.epoch),
            "-" if r.lease_left is None else f"{r.lease_left:.1f}s",
            r.last_offset or "-",
            _age(r.last_event_age),
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        write_line("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)))


@fleet_app.command("release")
def fleet_release(
    stream: Annotated[str, typer.Argument(help="The stream's name (see 'fleet status').")],
    database: Database = DEFAULT_DATABASE,
    verbose: Verbose = 0,
) -> None:
    """Take a stream's lease away from its owner (the owner stops it; any worker may take it)."""
    note_verbose(verbose)
    start_logging()

    async def release() -> Any:
        store = _store(database)
        try:
            await store.setup()
            return await store.force_release(stream)
        finally:
            await store.aclose()

    lease = _run(release)
    if lease is None:
        raise ConfigurationError(f"no stream named {stream!r} in the fleet: see 'fleet status'")
    write_line(f"released {stream}: epoch {lease.epoch}; its owner stops it at its next renewal")


def _load_handler(spec: str) -> Callable[..., Any]:
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigurationError(
            f"--handler must be module:function (such as myapp.events:handle), got {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(f"--handler: cannot import module {module_name!r}: {exc}") from exc
    handler: Any = getattr(module, attr, None)
    if not callable(handler):
        raise ConfigurationError(f"--handler: {module_name} has no function {attr!r}")
    return handler  # type: ignore[no-any-return]


def print_event(stream: Any, event: Any) -> None:
    """The JSON-lines printer: ``{"stream": name, "event": <the event's wire form>}``."""
    write_line(f'{{"stream":{json.dumps(stream.name)},"event":{event_json(event)}}}')


def _env(env_file: Path | None) -> dict[str, str]:
    env = dict(os.environ)
    if env_file is not None:
        from dotenv import dotenv_values

        if not env_file.is_file():
            raise ConfigurationError(f"--env-file: no file at {env_file}")
        env.update({k: v for k, v in dotenv_values(env_file).items() if v is not None})
    return env


@fleet_app.command("run")
def fleet_run(
    database: Database = DEFAULT_DATABASE,
    streams_file: Annotated[
        Path | None,
        typer.Option("--streams", help="Sync this streams file first.", dir_okay=False),
    ] = None,
    handler: Annotated[
        str | None,
        typer.Option(
            "--handler",
            help="module:function called as handler(stream, event) (sync or async); default: "
            "print each event as a JSON line.",
        ),
    ] = None,
    worker_id: Annotated[str | None, typer.Option("--worker-id")] = None,
    lease_time: Annotated[float, typer.Option("--lease-time", help="Seconds.")] = 30.0,
    assignment: Annotated[
        str, typer.Option("--assignment", help="balanced or greedy.")
    ] = "balanced",
    max_streams: Annotated[int | None, typer.Option("--max-streams")] = None,
    lock_dir: Annotated[Path | None, typer.Option("--lock-dir", file_okay=False)] = None,
    env_file: Annotated[
        Path | None,
        typer.Option("--env-file", help="A .env file with the secrets' variables.", dir_okay=False),
    ] = None,
    metrics_port: MetricsPort = None,
    verbose: Verbose = 0,
) -> None:
    """Run this worker until SIGTERM or Ctrl-C: every stream completes, drains, commits and
    releases its lease before it exits."""
    note_verbose(verbose)
    start_logging()
    from ohip_stream._cli._metrics import check_listen, serve_telemetry
    from ohip_stream.fleet import Fleet

    call = _load_handler(handler) if handler is not None else print_event
    if assignment not in ("balanced", "greedy"):
        raise ConfigurationError(f"--assignment must be balanced or greedy, got {assignment!r}")
    env = _env(env_file)

    listen = check_listen(metrics_port)

    async def run() -> None:
        telemetry = None
        if listen is not None:
            from ohip_stream._telemetry import Telemetry

            telemetry = Telemetry()
        fleet = Fleet(
            database,
            handler=call,
            streams=streams_file,
            worker_id=worker_id,
            lease_time=lease_time,
            assignment="greedy" if assignment == "greedy" else "balanced",
            max_streams=max_streams,
            lock_dir=lock_dir,
            env=env,
            telemetry=telemetry,
        )
        async with contextlib.AsyncExitStack() as stack:
            if telemetry is not None and listen is not None:
                port = await stack.enter_async_context(serve_telemetry(telemetry, listen))
                sys.stderr.write(f"{PROG}: metrics on http://{listen[0]}:{port}/metrics\n")
            await stack.enter_async_context(fleet)
            fleet.install_signal_handlers()
            await fleet.run()

    _run(run)
