"""The Typer application behind ``ohip-stream`` (imported only when the ``cli`` extra is there)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import json
import signal
import sys
import time
import traceback
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from ohip_stream._cli_common import (
    PROG,
    CliState,
    MissingExtraError,
    checkpoint_path,
    error_line,
    load_settings,
    require_emulator_extra,
    reset_logging,
    setup_logging,
    write_line,
)
from ohip_stream._cli_consume import ReaderGoneError
from ohip_stream._exceptions import ConfigurationError, OhipError
from ohip_stream._logging import redact
from ohip_stream._version import __version__

__all__ = ["app", "run"]

app = typer.Typer(
    name=PROG,
    help=(
        "Consume OPERA Cloud business events from the OHIP Streaming API.\n\n"
        "Start with `ohip-stream demo` (nothing to configure). Configure a real gateway with "
        "OHIP_* variables or a .env file: OHIP_GATEWAY_URL, OHIP_APP_KEY, OHIP_CHAIN_CODE, "
        "OHIP_CLIENT_ID, OHIP_CLIENT_SECRET and OHIP_ENTERPRISE_ID (or OHIP_USERNAME and "
        "OHIP_PASSWORD)."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
checkpoint_app = typer.Typer(
    help="Show, set or clear the checkpoint (last processed offset) of a stream.",
    no_args_is_help=True,
)
app.add_typer(checkpoint_app, name="checkpoint")

# --- shared options ---------------------------------------------------------------------------

Verbose = Annotated[
    bool,
    typer.Option("--verbose", "-v", help="Debug logs to stderr (secrets redacted), tracebacks."),
]
EnvFile = Annotated[
    Path | None,
    typer.Option(
        "--env-file",
        help="A .env file of OHIP_* variables (default: ./.env if present).",
        dir_okay=False,
    ),
]
GatewayUrl = Annotated[
    str | None, typer.Option("--gateway-url", help="Overrides OHIP_GATEWAY_URL.")
]
ChainCode = Annotated[str | None, typer.Option("--chain-code", help="Overrides OHIP_CHAIN_CODE.")]
ClientId = Annotated[str | None, typer.Option("--client-id", help="Overrides OHIP_CLIENT_ID.")]
EnterpriseId = Annotated[
    str | None, typer.Option("--enterprise-id", help="Overrides OHIP_ENTERPRISE_ID.")
]
Username = Annotated[str | None, typer.Option("--username", help="Overrides OHIP_USERNAME.")]
CaFile = Annotated[
    Path | None, typer.Option("--ca-file", help="Overrides OHIP_CA_FILE.", dir_okay=False)
]
Proxy = Annotated[str | None, typer.Option("--proxy", help="Overrides OHIP_PROXY.")]
LockDir = Annotated[
    Path | None, typer.Option("--lock-dir", help="Overrides OHIP_LOCK_DIR.", file_okay=False)
]
CheckpointDb = Annotated[
    Path | None,
    typer.Option(
        "--checkpoint-db",
        help="SQLite checkpoint file (default: OHIP_CHECKPOINT_DB, else ./ohip-checkpoints.db).",
        dir_okay=False,
    ),
]
Modules = Annotated[
    list[str] | None,
    typer.Option("--module", help="Only events of this module (repeatable, case-insensitive)."),
]
EventNames = Annotated[
    list[str] | None,
    typer.Option("--event", help="Only events of this name (repeatable, case-insensitive)."),
]
Hotels = Annotated[
    list[str] | None,
    typer.Option("--hotel", help="Only events of this hotel (repeatable, case-insensitive)."),
]


def _verbose(flag: bool) -> None:
    CliState.verbose = CliState.verbose or flag


def _version(value: bool) -> None:
    if value:
        write_line(f"{PROG} {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: Verbose = False,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    _verbose(verbose)


# --- demo -------------------------------------------------------------------------------------


@app.command()
def demo(
    events: Annotated[int, typer.Option("--events", help="How many events to publish.")] = 200,
    seconds: Annotated[
        float, typer.Option("--seconds", help="Over how many seconds to publish them.")
    ] = 20.0,
    json_lines: Annotated[
        bool, typer.Option("--json", help="JSON lines (events, then a summary) instead.")
    ] = False,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the event generator.")] = 0,
    verbose: Verbose = False,
) -> None:
    """Run a local gateway and consume a realistic stream, with one token rotation and one
    dropped connection; ends with a summary checked against the gateway's log (about 30 s)."""
    _verbose(verbose)
    require_emulator_extra()
    from ohip_stream._cli_demo import DemoOptions, run_demo

    code = run_demo(
        DemoOptions(
            events=events, seconds=seconds, json=json_lines, verbose=CliState.verbose, seed=seed
        )
    )
    raise typer.Exit(code)


# --- tail and replay --------------------------------------------------------------------------


@app.command()
def tail(
    env_file: EnvFile = None,
    gateway_url: GatewayUrl = None,
    chain_code: ChainCode = None,
    client_id: ClientId = None,
    enterprise_id: EnterpriseId = None,
    username: Username = None,
    ca_file: CaFile = None,
    proxy: Proxy = None,
    lock_dir: LockDir = None,
    checkpoint_db: CheckpointDb = None,
    module: Modules = None,
    event: EventNames = None,
    hotel: Hotels = None,
    from_offset: Annotated[
        str | None,
        typer.Option("--from-offset", help="Start at this offset (this run only)."),
    ] = None,
    from_highest: Annotated[
        bool,
        typer.Option("--from-highest", help="Start at the newest event (this run only)."),
    ] = False,
    delta: Annotated[bool, typer.Option("--delta", help="Only changed elements.")] = False,
    max_events: Annotated[
        int | None,
        typer.Option("--max-events", help="Stop after printing N events (commits first)."),
    ] = None,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No status lines on stderr.")
    ] = False,
    verbose: Verbose = False,
) -> None:
    """Consume the stream: events to stdout as JSON lines, status to stderr.

    Resumes from its SQLite checkpoint. Ctrl-C or SIGTERM stops gracefully (complete, drain,
    commit). Secrets (OHIP_APP_KEY, OHIP_CLIENT_SECRET, OHIP_PASSWORD) come from the
    environment or the env file only.
    """
    _verbose(verbose)
    from ohip_stream._cli_consume import ConnectionFlags, TailOptions, run_tail

    _start_logging()
    code = run_tail(
        TailOptions(
            connection=ConnectionFlags(
                env_file,
                gateway_url,
                chain_code,
                client_id,
                enterprise_id,
                username,
                ca_file,
                proxy,
                lock_dir,
            ),
            checkpoint_db=checkpoint_db,
            modules=module or [],
            events=event or [],
            hotels=hotel or [],
            from_offset=from_offset,
            from_highest=from_highest,
            delta=delta,
            max_events=max_events,
            status=not quiet,
        )
    )
    raise typer.Exit(code)


@app.command()
def replay(
    from_offset: Annotated[
        str, typer.Option("--from-offset", help="First offset to print.", show_default=False)
    ],
    to_offset: Annotated[
        str | None,
        typer.Option("--to-offset", help="Last offset to print (stops at the first >= it)."),
    ] = None,
    idle_timeout: Annotated[
        float,
        typer.Option("--idle-timeout", help="Stop after this many seconds without an event."),
    ] = 5.0,
    env_file: EnvFile = None,
    gateway_url: GatewayUrl = None,
    chain_code: ChainCode = None,
    client_id: ClientId = None,
    enterprise_id: EnterpriseId = None,
    username: Username = None,
    ca_file: CaFile = None,
    proxy: Proxy = None,
    lock_dir: LockDir = None,
    checkpoint_db: CheckpointDb = None,
    module: Modules = None,
    event: EventNames = None,
    hotel: Hotels = None,
    verbose: Verbose = False,
) -> None:
    """Print a range of events as JSON lines, then stop. Never writes the checkpoint (it is a
    consumer of the stream all the same: stop `tail` first)."""
    _verbose(verbose)
    from ohip_stream._cli_consume import ConnectionFlags, ReplayOptions, run_replay

    _start_logging()
    code = run_replay(
        ReplayOptions(
            connection=ConnectionFlags(
                env_file,
                gateway_url,
                chain_code,
                client_id,
                enterprise_id,
                username,
                ca_file,
                proxy,
                lock_dir,
            ),
            from_offset=from_offset,
            to_offset=to_offset,
            idle_timeout=idle_timeout,
            checkpoint_db=checkpoint_db,
            modules=module or [],
            events=event or [],
            hotels=hotel or [],
        )
    )
    raise typer.Exit(code)


# --- checkpoint -------------------------------------------------------------------------------


def _stream_of(
    env_file: Path | None, gateway_url: str | None, chain_code: str | None
) -> tuple[Any, str]:
    from ohip_stream._stream import stream_id_for

    settings = load_settings(env_file, gateway_url=gateway_url, chain_code=chain_code)
    settings.require("gateway_url", "app_key", "chain_code")
    return settings, stream_id_for(
        settings.gateway_url, settings.chain_code, settings.app_key.get_secret_value()
    )


def _when(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).isoformat(timespec="seconds")


def _checkpoint_row(stream_id: str, cp: Any) -> dict[str, Any]:
    return {
        "stream_id": stream_id,
        "offset": cp.offset,
        "unique_event_id": cp.unique_event_id,
        "completed_at": _when(cp.completed_at),
        "updated_at": _when(cp.updated_at),
    }


def _print_row(row: dict[str, Any], as_json: bool) -> None:
    if as_json:
        write_line(json.dumps(row, separators=(",", ":")))
        return
    write_line(
        f"stream {row['stream_id']}: offset {row['offset'] or '(none)'}, "
        f"updated {row['updated_at'] or '-'}, last completed {row['completed_at'] or '-'}"
    )


@checkpoint_app.command("show")
def checkpoint_show(
    all_streams: Annotated[
        bool, typer.Option("--all", help="Every stream in the file, not only this one.")
    ] = False,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines.")] = False,
    env_file: EnvFile = None,
    gateway_url: GatewayUrl = None,
    chain_code: ChainCode = None,
    checkpoint_db: CheckpointDb = None,
    verbose: Verbose = False,
) -> None:
    """Show the stream's checkpoint (by stream id: gateway, chain code, application key)."""
    from ohip_stream._checkpoints import Checkpoint, SQLiteCheckpointStore

    _verbose(verbose)
    _start_logging()
    if all_streams:
        settings = load_settings(env_file)
        db = checkpoint_path(checkpoint_db, settings)
        if not db.is_file():
            raise ConfigurationError(f"no checkpoint file at {db}: pass --checkpoint-db")
        store = SQLiteCheckpointStore(db)
        try:
            rows = store.list_sync()
        finally:
            store.close()
        for stream_id, cp in rows.items():
            _print_row(_checkpoint_row(stream_id, cp), as_json)
        if not rows and not as_json:
            write_line(f"no checkpoints in {db}")
        return
    settings, stream_id = _stream_of(env_file, gateway_url, chain_code)
    db = checkpoint_path(checkpoint_db, settings)
    found: Checkpoint | None = None
    if db.is_file():
        store = SQLiteCheckpointStore(db)
        try:
            found = store.load_sync(stream_id)
        finally:
            store.close()
    if found is None:
        if as_json:
            write_line(json.dumps({"stream_id": stream_id, "offset": None}))
        else:
            write_line(f"stream {stream_id}: no checkpoint in {db}")
        return
    _print_row(_checkpoint_row(stream_id, found), as_json)


def _guarded(settings: Any, stream_id: str) -> Any:
    """The stream's guard: a checkpoint must not change under a running consumer."""
    from ohip_stream._guard import StreamGuard

    guard = StreamGuard(stream_id, lock_dir=settings.lock_dir, description=f"stream {stream_id}")
    guard.acquire()
    return guard


@checkpoint_app.command("set")
def checkpoint_set(
    offset: Annotated[
        str, typer.Argument(help="The last processed offset; the next run starts after it.")
    ],
    env_file: EnvFile = None,
    gateway_url: GatewayUrl = None,
    chain_code: ChainCode = None,
    checkpoint_db: CheckpointDb = None,
    verbose: Verbose = False,
) -> None:
    """Set the stream's last processed offset (the next `tail` resumes after it)."""
    from ohip_stream._checkpoints import Checkpoint, SQLiteCheckpointStore

    _verbose(verbose)
    _start_logging()
    if not offset.strip().isdigit():
        raise ConfigurationError(f"OFFSET must be a non-negative whole number, got {offset!r}")
    settings, stream_id = _stream_of(env_file, gateway_url, chain_code)
    db = checkpoint_path(checkpoint_db, settings)
    guard = _guarded(settings, stream_id)
    store = SQLiteCheckpointStore(db)
    try:
        previous = store.load_sync(stream_id) or Checkpoint()
        store.save_sync(
            stream_id,
            Checkpoint(
                offset=str(int(offset)),
                unique_event_id=None,
                completed_at=previous.completed_at,
                updated_at=time.time(),
            ),
        )
    finally:
        store.close()
        guard.release()
    write_line(f"stream {stream_id}: checkpoint set to offset {int(offset)} in {db}")


@checkpoint_app.command("clear")
def checkpoint_clear(
    env_file: EnvFile = None,
    gateway_url: GatewayUrl = None,
    chain_code: ChainCode = None,
    checkpoint_db: CheckpointDb = None,
    verbose: Verbose = False,
) -> None:
    """Forget the stream's checkpoint (the next `tail` starts where the gateway says)."""
    from ohip_stream._checkpoints import SQLiteCheckpointStore

    _verbose(verbose)
    _start_logging()
    settings, stream_id = _stream_of(env_file, gateway_url, chain_code)
    db = checkpoint_path(checkpoint_db, settings)
    if not db.is_file():
        write_line(f"stream {stream_id}: no checkpoint file at {db}")
        return
    guard = _guarded(settings, stream_id)
    store = SQLiteCheckpointStore(db)
    try:
        removed = store.delete_sync(stream_id)
    finally:
        store.close()
        guard.release()
    write_line(
        f"stream {stream_id}: checkpoint cleared"
        if removed
        else f"stream {stream_id}: no checkpoint to clear"
    )


# --- emulator ---------------------------------------------------------------------------------


@app.command()
def emulator(
    port: Annotated[int, typer.Option("--port", help="Port to listen on (0: any free port).")] = (
        8765
    ),
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    rate: Annotated[
        float, typer.Option("--rate", help="Events published per second (0: none).")
    ] = 2.0,
    env_file: Annotated[
        Path,
        typer.Option("--env-file", help="Where to write the OHIP_* variables of this gateway."),
    ] = Path(".env"),
    chain_code: Annotated[
        str, typer.Option("--chain-code", help="The chain code of the stream.")
    ] = "OHIPCN",
    backlog: Annotated[
        int, typer.Option("--backlog", help="Events published before the first client.")
    ] = 0,
    fast_replay: Annotated[
        bool, typer.Option("--fast-replay", help="Benchmark mode: replay as fast as possible.")
    ] = False,
    token_ttl: Annotated[
        float | None, typer.Option("--token-ttl", help="Token lifetime in seconds.")
    ] = None,
    complete_gap: Annotated[
        float | None,
        typer.Option("--complete-gap", help="Seconds required between complete and subscribe."),
    ] = None,
    init_timeout: Annotated[
        float | None, typer.Option("--init-timeout", help="Seconds to wait for init.")
    ] = None,
    idle_timeout: Annotated[
        float | None,
        typer.Option("--idle-timeout", help="Close a connection silent for this long."),
    ] = None,
    server_ping_interval: Annotated[
        float | None, typer.Option("--server-ping-interval", help="Seconds between pings.")
    ] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Event generator seed.")] = None,
    ssl_certfile: Annotated[
        Path | None, typer.Option("--ssl-certfile", help="TLS certificate (PEM).")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option("--ssl-keyfile", help="TLS private key (PEM).")
    ] = None,
    verbose: Verbose = False,
) -> None:
    """Run a local OHIP gateway in the foreground and write its OHIP_* variables to a .env
    file, so that another terminal can run `ohip-stream tail`."""
    _verbose(verbose)
    require_emulator_extra()
    _start_logging()
    extra: dict[str, Any] = {
        name: value
        for name, value in (
            ("token_ttl", token_ttl),
            ("complete_gap", complete_gap),
            ("init_timeout", init_timeout),
            ("idle_timeout", idle_timeout),
            ("server_ping_interval", server_ping_interval),
            ("seed", seed),
            ("ssl_certfile", str(ssl_certfile) if ssl_certfile else None),
            ("ssl_keyfile", str(ssl_keyfile) if ssl_keyfile else None),
        )
        if value is not None
    }
    code = asyncio.run(
        _serve(
            host=host,
            port=port,
            rate=rate,
            env_file=env_file,
            chain_code=chain_code,
            backlog=backlog,
            fast_replay=fast_replay,
            **extra,
        )
    )
    raise typer.Exit(code)


async def _serve(**kwargs: Any) -> int:
    from ohip_stream.testing import serve_foreground

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)
    try:
        return int(await serve_foreground(stop=stop, out=sys.stdout, **kwargs))
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)


# --- running ----------------------------------------------------------------------------------


def _start_logging() -> None:
    setup_logging(CliState.verbose)


def _click_exceptions() -> Any:
    # Recent Typer releases vendor Click as typer._click; older ones use Click itself.
    for name in ("typer._click.exceptions", "click.exceptions"):
        with contextlib.suppress(ImportError):
            return importlib.import_module(name)
    raise ImportError("neither typer._click nor click is importable")  # pragma: no cover


_cx = _click_exceptions()
_NO_ARGS: Any = getattr(_cx, "NoArgsIsHelpError", None)
_ABORTS: tuple[type[BaseException], ...] = tuple({typer.Abort, getattr(_cx, "Abort", typer.Abort)})


def run(argv: list[str]) -> int:
    """Run the command line in-process; return the exit code."""
    CliState.verbose = False
    command = typer.main.get_command(app)
    try:
        result = command.main(args=argv, prog_name=PROG, standalone_mode=False)
    except _cx.UsageError as exc:
        if _NO_ARGS is not None and isinstance(exc, _NO_ARGS) and exc.ctx is not None:
            # `ohip-stream` or `ohip-stream checkpoint` alone: the help.
            write_line(exc.ctx.get_help())
            return 2
        hint = f" (see '{exc.ctx.command_path} --help')" if exc.ctx is not None else ""
        return _fail(f"{exc.format_message()}{hint}", 2)
    except _cx.ClickException as exc:
        return _fail(exc.format_message(), exc.exit_code)
    except _ABORTS:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except KeyboardInterrupt:
        sys.stderr.write(f"{PROG}: interrupted\n")
        return 130
    except MissingExtraError as exc:
        sys.stderr.write(f"{exc}\n")
        return 2
    except ConfigurationError as exc:
        return _fail(exc, 2)
    except OhipError as exc:
        return _fail(exc, 1)
    except (BrokenPipeError, ReaderGoneError):
        _silence_stdout()
        return 0
    except OSError as exc:  # a path given on the command line that the system refuses
        where = f" ({exc.filename})" if exc.filename and len(str(exc.filename)) < 120 else ""
        return _fail(f"{exc.strerror or exc}{where}: check the paths given", 2)
    except Exception as exc:  # a bug: say what it is in one line; --verbose shows where
        return _fail(f"unexpected {type(exc).__name__}: {exc}", 1)
    finally:
        reset_logging()
    if isinstance(result, int):
        return result
    return 0


def _fail(message: object, code: int) -> int:
    if CliState.verbose:
        sys.stderr.write(redact(traceback.format_exc()))
    sys.stderr.write(error_line(message) + "\n")
    sys.stderr.flush()
    return code


def _silence_stdout() -> None:
    # The reader went away (`| head`): further writes, at exit included, would fail again.
    import os

    with contextlib.suppress(OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
