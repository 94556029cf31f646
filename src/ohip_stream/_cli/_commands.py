"""``ohip-stream demo``, ``tail`` and ``replay``: the options; the work is in ``_consume`` and
``_demo`` (imported when the command runs)."""

from __future__ import annotations

from typing import Annotated

import typer

from ohip_stream._cli._common import CliState, require_emulator_extra
from ohip_stream._cli._options import (
    CaFile,
    ChainCode,
    CheckpointDb,
    ClientId,
    EnterpriseId,
    EnvFile,
    EventNames,
    GatewayUrl,
    Hotels,
    LockDir,
    MetricsPort,
    Modules,
    Proxy,
    Username,
    Verbose,
    app,
    note_verbose,
    start_logging,
)

__all__ = ["demo", "replay", "tail"]


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
    verbose: Verbose = 0,
) -> None:
    """Run a local gateway and consume a realistic stream, with one token rotation and one
    dropped connection; ends with a summary checked against the gateway's log (about 30 s)."""
    note_verbose(verbose)
    require_emulator_extra()
    from ohip_stream._cli._demo import DemoOptions, run_demo

    code = run_demo(
        DemoOptions(
            events=events, seconds=seconds, json=json_lines, verbose=CliState.verbose, seed=seed
        )
    )
    raise typer.Exit(code)


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
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="JSON lines even on a terminal (the default when stdout is piped)."
        ),
    ] = False,
    quiet: Annotated[
        bool, typer.Option("--quiet", "-q", help="No status lines on stderr.")
    ] = False,
    metrics_port: MetricsPort = None,
    log_format: Annotated[
        str,
        typer.Option(
            "--log-format", metavar="text|json", help="Log records as text or JSON lines."
        ),
    ] = "text",
    verbose: Verbose = 0,
) -> None:
    """Consume the stream: a table on a terminal, JSON lines (the wire form) when piped or
    with --json; status on stderr.

    Resumes from its SQLite checkpoint. Ctrl-C (exit 130) or SIGTERM (exit 0) stops gracefully:
    complete, drain, commit. Secrets (OHIP_APP_KEY, OHIP_CLIENT_SECRET, OHIP_PASSWORD) come
    from the environment or the env file only.
    """
    note_verbose(verbose)
    from ohip_stream._cli._consume import ConnectionFlags, TailOptions, run_tail
    from ohip_stream._cli._metrics import check_listen, json_logs

    start_logging()
    json_logs(log_format)
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
            json=as_json,
            metrics=check_listen(metrics_port),
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
    verbose: Verbose = 0,
) -> None:
    """Print a range of events as JSON lines, then stop. Never writes the checkpoint (it is a
    consumer of the stream all the same: stop `tail` first). Ctrl-C: exit 130."""
    note_verbose(verbose)
    from ohip_stream._cli._consume import ConnectionFlags, ReplayOptions, run_replay

    start_logging()
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
