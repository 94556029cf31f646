"""``ohip-stream bridge postgres|nats|webhook``: run the stream into one sink until stopped.

The sink is configured by flags or ``OHIP_SINK_*`` variables (the webhook's signing secret by
the variable only: a flag would show it in the process list). SIGTERM and Ctrl-C stop it
gracefully: the batch in flight is delivered, then the stream completes, drains and commits.
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


def _dead_letter_writer(path: Path) -> Any:
    def write(event: Any, reason: str) -> None:
        line = {"reason": reason, "event": event.model_dump(by_alias=True, mode="json")}
        with path.open("a", encoding="utf-8") as file:
            file.write(json.dumps(line, separators=(",", ":")) + "\n")

    return write


def _make_sink(options: BridgeOptions, settings: Any, stack: contextlib.ExitStack) -> Any:
    from ohip_stream._checkpoints import SQLiteCheckpointStore
    from ohip_stream.sinks import NatsSink, PostgresSink, WebhookSink

    if options.sink is SinkKind.postgres:
        if not options.postgres_dsn:
            raise ConfigurationError(
                "bridge postgres needs the database: set OHIP_SINK_POSTGRES_DSN "
                "(postgresql://user@host:5432/db) or pass --postgres-dsn"
            )
        return PostgresSink(
            options.postgres_dsn, table=options.table, checkpoint_table=options.checkpoint_table
        )
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


async def _bridge(options: BridgeOptions) -> int:
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
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No status lines.")] = False,
    metrics_port: MetricsPort = None,
    verbose: Verbose = 0,
) -> None:
    """Run the stream into a sink with one effect per event: PostgreSQL (events and checkpoint
    in one transaction), NATS JetStream (message id = uniqueEventId, commit after the acks) or
    a webhook (signed with OHIP_SINK_WEBHOOK_SECRET, idempotency key, retries).

    NATS and webhook keep the checkpoint in the SQLite file (--checkpoint-db); PostgreSQL in
    its checkpoints table. Ctrl-C (exit 130) or SIGTERM (exit 0) stops gracefully.
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
        )
    )
    raise typer.Exit(code)
