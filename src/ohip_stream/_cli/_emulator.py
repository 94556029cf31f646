"""``ohip-stream emulator`` (also ``python -m ohip_stream.testing``): a local OHIP gateway in the
foreground, and the ``OHIP_*`` variables of it in an env file.

The env file is the user's working directory's ``.env`` by default, so it is written only when
it is absent or was written by the emulator (its first line is :data:`MARKER`); a ``.env`` of
the user's own is never changed: the variables go to ``.env.emulator`` instead. Files written
here are mode 0600 (they hold a client secret).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, TextIO

import typer

from ohip_stream._cli._common import PROG, require_emulator_extra
from ohip_stream._cli._options import Verbose, app, note_verbose, start_logging
from ohip_stream._exceptions import ConfigurationError
from ohip_stream.testing._envfile import ENV_MARKER, env_file_is_ours, write_marked_env_file

__all__ = ["MARKER", "choose_env_file", "write_env_file"]

# The emulator's env-file rule lives with the test kit (``serve_foreground`` follows it too).
MARKER = ENV_MARKER
write_env_file = write_marked_env_file
DEFAULT_ENV_FILE = Path(".env")
FALLBACK_ENV_FILE = Path(".env.emulator")


def choose_env_file(given: Path | None) -> Path:
    """Where to write the variables: ``given`` (``--env-file``) or ``./.env``, if absent or
    written by the emulator; else, for the default only, ``./.env.emulator``.

    Raises :class:`ConfigurationError` when no candidate may be written.
    """
    if given is not None:
        if env_file_is_ours(given):
            return given
        raise ConfigurationError(
            f"--env-file {given} exists and was not written by the emulator, so it is left "
            "alone: pass another --env-file, or --no-env-file"
        )
    for candidate in (DEFAULT_ENV_FILE, FALLBACK_ENV_FILE):
        if env_file_is_ours(candidate):
            return candidate
    raise ConfigurationError(
        f"{DEFAULT_ENV_FILE} and {FALLBACK_ENV_FILE} exist and were not written by the "
        "emulator, so they are left alone: pass --env-file PATH, or --no-env-file"
    )


@dataclass
class EmulatorRun:
    """What ``ohip-stream emulator`` was asked to do."""

    host: str
    port: int
    rate: float
    env_file: Path | None
    backlog: int
    fast_replay: bool
    settings: dict[str, Any]


async def _publish_until(emulator: Any, rate: float, stop: asyncio.Event) -> None:
    if rate <= 0:
        await stop.wait()
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    published = 0
    while not stop.is_set():
        due = int((loop.time() - started) * rate) - published
        if due > 0:
            await emulator.publish(due)
            published += due
        next_at = started + (published + 1) / rate
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))


def _start_error(run: EmulatorRun, exc: OSError) -> ConfigurationError:
    if exc.errno == errno.EADDRINUSE:
        return ConfigurationError(
            f"cannot listen on {run.host}:{run.port}: the address is already in use (another "
            "emulator?); stop it, or pass another --port (0: any free port)"
        )
    return ConfigurationError(
        f"cannot listen on {run.host}:{run.port}: {exc.strerror or exc}; check --host and --port"
    )


def _announce(out: TextIO, emulator: Any, run: EmulatorRun, written: Path | None) -> None:
    out.write(f"OHIP emulator listening on {emulator.gateway_url}\n")
    out.write(f"chain code: {emulator.chain_code}\n")
    if written is not None:
        out.write(f"OHIP_* variables written to {written.resolve()} (mode 0600)\n")
        flag = "" if written == DEFAULT_ENV_FILE else f" --env-file {written}"
        out.write(f"in another terminal, in this directory: {PROG} tail{flag}\n")
        if written == FALLBACK_ENV_FILE:
            out.write(f"({DEFAULT_ENV_FILE} is not the emulator's: it was left unchanged)\n")
    if run.backlog > 0:
        out.write(f"backlog: {run.backlog} events\n")
    if run.rate > 0:
        out.write(f"publishing {run.rate:g} events per second; Ctrl-C to stop\n")
    else:
        out.write("Ctrl-C to stop\n")
    out.flush()


async def serve(run: EmulatorRun, out: TextIO) -> int:
    """Serve until SIGINT (exit 130) or SIGTERM (exit 0, a requested stop)."""
    from ohip_stream.testing import Emulator

    stop = asyncio.Event()
    received: list[int] = []
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []

    def got(sig: int) -> None:
        received.append(sig)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(sig, got, sig)
            handled.append(sig)
    emulator = Emulator(host=run.host, port=run.port, fast_replay=run.fast_replay, **run.settings)
    try:
        try:
            await emulator.__aenter__()
        except OSError as exc:
            raise _start_error(run, exc) from None
        try:
            if run.backlog > 0:
                if run.fast_replay:
                    await emulator.load_backlog(run.backlog)
                else:
                    await emulator.publish(run.backlog)
            written = None
            if run.env_file is not None:
                written = write_env_file(run.env_file, emulator.env())
            _announce(out, emulator, run, written)
            await _publish_until(emulator, run.rate, stop)
            out.write("stopping\n")
            out.flush()
        finally:
            await emulator.__aexit__(None, None, None)
    finally:
        for sig in handled:
            loop.remove_signal_handler(sig)
    return 130 if signal.SIGINT in received else 0


@app.command()
def emulator(
    port: Annotated[
        int,
        typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port)."),
    ] = 8765,
    host: Annotated[str, typer.Option("--host", help="Address to listen on.")] = "127.0.0.1",
    rate: Annotated[
        float, typer.Option("--rate", min=0.0, help="Events published per second (0: none).")
    ] = 2.0,
    env_file: Annotated[
        Path | None,
        typer.Option(
            "--env-file",
            help="Where to write the OHIP_* variables (default: ./.env, or ./.env.emulator "
            "when ./.env is not the emulator's). A file the emulator did not write is never "
            "changed.",
            dir_okay=False,
        ),
    ] = None,
    no_env_file: Annotated[bool, typer.Option("--no-env-file", help="Write no env file.")] = False,
    chain_code: Annotated[
        str, typer.Option("--chain-code", help="The chain code of the stream.")
    ] = "OHIPCN",
    backlog: Annotated[
        int, typer.Option("--backlog", min=0, help="Events published before the first client.")
    ] = 0,
    fast_replay: Annotated[
        bool, typer.Option("--fast-replay", help="Benchmark mode: replay as fast as possible.")
    ] = False,
    token_ttl: Annotated[float | None, typer.Option(help="Token lifetime (seconds).")] = None,
    complete_gap: Annotated[
        float | None, typer.Option(help="Seconds required between complete and subscribe.")
    ] = None,
    hold_after_drop: Annotated[
        float | None, typer.Option(help="Seconds a dropped stream stays held.")
    ] = None,
    init_timeout: Annotated[
        float | None, typer.Option(help="Seconds to wait for connection_init.")
    ] = None,
    idle_timeout: Annotated[
        float | None, typer.Option(help="Close a connection silent for this long (seconds).")
    ] = None,
    resume_ttl: Annotated[
        float | None, typer.Option(help="How long a position can be resumed (seconds).")
    ] = None,
    retention: Annotated[
        float | None, typer.Option(help="How long events are kept (seconds).")
    ] = None,
    server_ping_interval: Annotated[
        float | None, typer.Option(help="Seconds between the server's pings.")
    ] = None,
    complete_inflight: Annotated[
        int | None, typer.Option(help="Events still sent after complete.")
    ] = None,
    first_offset: Annotated[int | None, typer.Option(help="Offset of the first event.")] = None,
    seed: Annotated[int | None, typer.Option("--seed", help="Event generator seed.")] = None,
    ssl_certfile: Annotated[
        Path | None, typer.Option("--ssl-certfile", help="TLS certificate (PEM).")
    ] = None,
    ssl_keyfile: Annotated[
        Path | None, typer.Option("--ssl-keyfile", help="TLS private key (PEM).")
    ] = None,
    verbose: Verbose = 0,
) -> None:
    """Run a local OHIP gateway in the foreground and write its OHIP_* variables to an env
    file (mode 0600), so that another terminal can run `ohip-stream tail`."""
    note_verbose(verbose)
    require_emulator_extra()
    start_logging()
    if no_env_file and env_file is not None:
        raise ConfigurationError("--env-file and --no-env-file are mutually exclusive")
    settings: dict[str, Any] = {
        name: value
        for name, value in (
            ("chain_code", chain_code),
            ("token_ttl", token_ttl),
            ("complete_gap", complete_gap),
            ("hold_after_drop", hold_after_drop),
            ("init_timeout", init_timeout),
            ("idle_timeout", idle_timeout),
            ("resume_ttl", resume_ttl),
            ("retention", retention),
            ("server_ping_interval", server_ping_interval),
            ("complete_inflight", complete_inflight),
            ("first_offset", first_offset),
            ("seed", seed),
            ("ssl_certfile", ssl_certfile),
            ("ssl_keyfile", ssl_keyfile),
        )
        if value is not None
    }
    target = None if no_env_file else choose_env_file(env_file)
    run = EmulatorRun(host, port, rate, target, backlog, fast_replay, settings)
    raise typer.Exit(asyncio.run(serve(run, sys.stdout)))
