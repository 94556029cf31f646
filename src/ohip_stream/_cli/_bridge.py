"""``ohip-stream bridge postgres|nats|webhook``: run the stream into one sink until stopped.

The sink is configured by flags or ``OHIP_SINK_*`` variables (the webhook's signing secret by
the variable only: a flag would show it in the process list). SIGTERM and Ctrl-C stop it
gracefully: the batch in flight is delivered, then the stream completes, drains and commits.

With ``--fleet DATABASE`` the bridge is a fleet worker instead: it runs its share of the fleet's
streams into the sink (``Fleet(..., sink=...)``), each commit of a stream delivering its events
fenced by the lease's epoch; the PostgreSQL sink then writes to the fleet's database.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ohip_stream._cli._common import PROG, checkpoint_path
from ohip_stream._cli._options import (
    CaFile,
    ChainCode,
    CheckpointDb,
    ClientId,
    EnterpriseId,
    EnvFile,
    GatewayUrl,
    LockDir,
    MetricsPort,
    Proxy,
    Username,
    Verbose,
    app,
    note_verbose,
    start_logging,
)
from ohip_stream._exceptions import ConfigurationError

__all__ = ["BridgeOptions", "SinkKind", "bridge", "run_bridge"]


class SinkKind(str, Enum):
    postgres = "postgres"
    nats = "nats"
    webhook = "webhook"


@dataclass
class BridgeOptions:
    sink: SinkKind
    connection: Any = None
    checkpoint_db: Path | None = None
    postgres_dsn: str | None = None
    table: str = "ohip_events"
    checkpoint_table: str = "ohip_stream_checkpoints"
    nats_url: str = "nats://127.0.0.1:4222"
    subject: str = "ohip.{chain}.{module}.{event}"
    jetstream: str | None = None
    create_stream: bool = False
    webhook_url: str | None = None
    dead_letter_file: Path | None = None
    batch_size: int = 100
    status: bool = True
    #: ``--metrics-port``: where to serve metrics and health checks (None: not served).
    metrics: tuple[str, int] | None = None
    #: ``--fleet``: the fleet's database (None: one stream, from the connection flags).
    fleet: str | None = None
    streams_file: Path | None = None
    worker_id: str | None = None
    lease_time: float = 30.0
    env_file: Path | None = None
    lock_dir: Path | None = None


def _dead_letter_writer(path: Path) -> Any:
    def write(event: Any, reason: str) -> None:
        line = {"reason": reason, "event": event.model_dump(by_alias=True, mode="json")}
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(line, separators=(",", ":")) + "\n")

    return write


def _make_sink(options: BridgeOptions, settings: Any, stack: contextlib.ExitStack) -> Any:
    """The sink; with ``--fleet`` (``settings`` None) its checkpoints are the fleet's."""
    from ohip_stream._checkpoints import SQLiteCheckpointStore
    from ohip_stream.sinks import NatsSink, PostgresSink, WebhookSink

    if options.sink is SinkKind.postgres:
        dsn = options.postgres_dsn or options.fleet
        if not dsn:
            raise ConfigurationError(
                "bridge postgres needs the database: set OHIP_SINK_POSTGRES_DSN "
                "(postgresql://user@host:5432/db) or pass --postgres-dsn"
            )
        return PostgresSink(dsn, table=options.table, checkpoint_table=options.checkpoint_table)
    store = None
    if settings is not None:
        store = SQLiteCheckpointStore(checkpoint_path(options.checkpoint_db, settings))
        stack.callback(store.close)
    if options.sink is SinkKind.nats:
        return NatsSink(
            options.nats_url,
            subject=options.subject,
            checkpoints=store,
            stream=options.jetstream,
            create_stream=options.create_stream,
        )
    if not options.webhook_url:
        raise ConfigurationError(
            "bridge webhook needs the endpoint: set OHIP_SINK_WEBHOOK_URL or pass --webhook-url"
        )
    dead = options.dead_letter_file
    return WebhookSink(
        options.webhook_url,
        checkpoints=store,
        secret=os.environ.get("OHIP_SINK_WEBHOOK_SECRET") or None,
        on_dead_letter=_dead_letter_writer(dead) if dead is not None else None,
    )


async def _bridge_fleet(options: BridgeOptions) -> int:
    """``--fleet``: this process is a fleet worker whose streams go into the sink."""
    from ohip_stream._cli._fleet import _env
    from ohip_stream._cli._metrics import serve_telemetry
    from ohip_stream.fleet import Fleet

    assert options.fleet is not None
    env = _env(options.env_file)
    telemetry = None
    if options.metrics is not None:
        from ohip_stream._telemetry import Telemetry

        telemetry = Telemetry()
    with contextlib.ExitStack() as stack:
        sink = _make_sink(options, None, stack)
        fleet = Fleet(
            options.fleet,
            sink=sink,
            streams=options.streams_file,
            worker_id=options.worker_id,
            lease_time=options.lease_time,
            commit_every=options.batch_size,
            lock_dir=options.lock_dir,
            env=env,
            telemetry=telemetry,
        )
        async with sink, contextlib.AsyncExitStack() as running:
            if telemetry is not None and options.metrics is not None:
                port = await running.enter_async_context(
                    serve_telemetry(telemetry, options.metrics)
                )
                if options.status:
                    sys.stderr.write(
                        f"{PROG}: metrics on http://{options.metrics[0]}:{port}/metrics\n"
                    )
            await running.enter_async_context(fleet)
            fleet.install_signal_handlers()
            if options.status:
                sys.stderr.write(f"{PROG}: bridge fleet {fleet.store.where} -> {sink!r}\n")
                sys.stderr.flush()
            await fleet.run()
        if options.status:
            stats = fleet.stats
            sys.stderr.write(
                f"{PROG}: fleet worker {fleet.worker_id} left ({stats.claims} claims, "
                f"{stats.releases} releases, {stats.self_fenced} fenced)\n"
            )
    return 0


async def _bridge(options: BridgeOptions) -> int:
    if options.fleet is not None:
        return await _bridge_fleet(options)
    from ohip_stream._cli._consume import _Signals
    from ohip_stream._cli._metrics import serve_metrics
    from ohip_stream.sinks import deliver

    if options.batch_size < 1:
        raise ConfigurationError(f"--batch-size must be at least 1, got {options.batch_size}")
    settings = options.connection.settings()
    settings.require("gateway_url", "app_key", "chain_code", "client_id", "client_secret")
    with contextlib.ExitStack() as stack:
        sink = _make_sink(options, settings, stack)
        async with sink:
            stream = settings.event_stream(checkpoints=sink.checkpoints)
            if options.status:
                sys.stderr.write(f"{PROG}: bridge {stream.stream_id} -> {sink!r}\n")
                sys.stderr.flush()
            signals = _Signals(stream.request_stop)
            async with stream, serve_metrics([stream], options.metrics) as port:
                if port is not None and options.status:
                    host = options.metrics[0] if options.metrics else ""
                    sys.stderr.write(f"{PROG}: metrics on http://{host}:{port}/metrics\n")
                with signals:
                    stats = await deliver(stream, sink, batch_size=options.batch_size)
        if options.status:
            sys.stderr.write(
                f"{PROG}: delivered {stats.events} events in {stats.batches} batches "
                f"(last offset {stats.last_offset or '-'})\n"
            )
    return signals.exit_code()


def run_bridge(options: BridgeOptions) -> int:
    """``ohip-stream bridge``."""
    return asyncio.run(_bridge(options))


def _opt(flag: str, env: str, text: str) -> Any:
    return typer.Option(flag, envvar=env, help=f"{text}.")


@app.command()
def bridge(
    sink: Annotated[SinkKind, typer.Argument(help="Where the events go.")],
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
    postgres_dsn: Annotated[
        str | None, _opt("--postgres-dsn", "OHIP_SINK_POSTGRES_DSN", "postgres: the database")
    ] = None,
    table: Annotated[str, _opt("--table", "OHIP_SINK_TABLE", "postgres: the events table")] = (
        "ohip_events"
    ),
    checkpoint_table: Annotated[
        str,
        _opt("--checkpoint-table", "OHIP_SINK_CHECKPOINT_TABLE", "postgres: the checkpoints table"),
    ] = "ohip_stream_checkpoints",
    nats_url: Annotated[str, _opt("--nats-url", "OHIP_SINK_NATS_URL", "nats: the server")] = (
        "nats://127.0.0.1:4222"
    ),
    subject: Annotated[
        str,
        _opt(
            "--subject",
            "OHIP_SINK_SUBJECT",
            "nats: subject template ({chain} {hotel} {module} {event} {stream_id})",
        ),
    ] = "ohip.{chain}.{module}.{event}",
    jetstream: Annotated[
        str | None, _opt("--jetstream", "OHIP_SINK_JETSTREAM", "nats: the JetStream stream")
    ] = None,
    create_stream: Annotated[
        bool, typer.Option("--create-stream", help="nats: create --jetstream if missing.")
    ] = False,
    webhook_url: Annotated[
        str | None, _opt("--webhook-url", "OHIP_SINK_WEBHOOK_URL", "webhook: the endpoint")
    ] = None,
    dead_letter_file: Annotated[
        Path | None,
        typer.Option(
            "--dead-letter-file",
            help="webhook: append undeliverable events here (JSON lines) and go on; without "
            "it the bridge stops at one (exit 1), not committing it.",
            dir_okay=False,
        ),
    ] = None,
    batch_size: Annotated[
        int, _opt("--batch-size", "OHIP_SINK_BATCH_SIZE", "most events per delivery")
    ] = 100,
    fleet: Annotated[
        str | None,
        _opt(
            "--fleet",
            "OHIP_SINK_FLEET",
            "run as a worker of the fleet in this database (postgresql://... or sqlite:///...) "
            "instead of one stream; postgres writes to this database unless --postgres-dsn",
        ),
    ] = None,
    streams_file: Annotated[
        Path | None,
        typer.Option("--streams", help="--fleet: sync this streams file first.", dir_okay=False),
    ] = None,
    worker_id: Annotated[str | None, typer.Option("--worker-id", help="--fleet: its name.")] = None,
    lease_time: Annotated[
        float, typer.Option("--lease-time", help="--fleet: lease seconds.")
    ] = 30.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No status lines.")] = False,
    metrics_port: MetricsPort = None,
    verbose: Verbose = 0,
) -> None:
    """Run the stream into a sink with one effect per event: PostgreSQL (events and checkpoint
    in one transaction), NATS JetStream (message id = uniqueEventId, commit after the acks) or
    a webhook (signed with OHIP_SINK_WEBHOOK_SECRET, idempotency key, retries).

    NATS and webhook keep the checkpoint in the SQLite file (--checkpoint-db); PostgreSQL in
    its checkpoints table. Ctrl-C (exit 130) or SIGTERM (exit 0) stops gracefully.

    With --fleet DATABASE this process is a fleet worker: its streams (from the database, or
    --streams) go into the sink, the checkpoints stay in the fleet's database, and each
    delivery is fenced by the lease's epoch. The connection flags are then not used: the
    streams file names the secrets' variables (--env-file adds a .env file).
    """
    note_verbose(verbose)
    from ohip_stream._cli._consume import ConnectionFlags
    from ohip_stream._cli._metrics import check_listen

    start_logging()
    code = run_bridge(
        BridgeOptions(
            sink=sink,
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
            postgres_dsn=postgres_dsn,
            table=table,
            checkpoint_table=checkpoint_table,
            nats_url=nats_url,
            subject=subject,
            jetstream=jetstream,
            create_stream=create_stream,
            webhook_url=webhook_url,
            dead_letter_file=dead_letter_file,
            batch_size=batch_size,
            status=not quiet,
            metrics=check_listen(metrics_port),
            fleet=fleet,
            streams_file=streams_file,
            worker_id=worker_id,
            lease_time=lease_time,
            env_file=env_file,
            lock_dir=lock_dir,
        )
    )
    raise typer.Exit(code)
