"""The Typer applications and the options the commands share."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ohip_stream._cli._common import PROG, CliState, setup_logging, write_line
from ohip_stream._version import __version__

__all__ = [
    "CaFile",
    "ChainCode",
    "CheckpointDb",
    "ClientId",
    "EnterpriseId",
    "EnvFile",
    "EventNames",
    "GatewayUrl",
    "Hotels",
    "LockDir",
    "Modules",
    "Proxy",
    "Username",
    "Verbose",
    "app",
    "checkpoint_app",
    "note_verbose",
    "start_logging",
]

app = typer.Typer(
    name=PROG,
    help=(
        "Consume OPERA Cloud business events from the OHIP Streaming API.\n\n"
        "Start with `ohip-stream demo` (nothing to configure). Configure a real gateway with "
        "OHIP_* variables or a .env file: OHIP_GATEWAY_URL, OHIP_APP_KEY, OHIP_CHAIN_CODE, "
        "OHIP_CLIENT_ID, OHIP_CLIENT_SECRET and OHIP_ENTERPRISE_ID (or OHIP_USERNAME and "
        "OHIP_PASSWORD).\n\n"
        "Exit codes: 0 done, 1 a runtime error, 2 a configuration or usage error, 130 "
        "interrupted (Ctrl-C)."
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

Verbose = Annotated[
    int,
    typer.Option(
        "--verbose",
        "-v",
        count=True,
        help="-v: the library's lifecycle (INFO) and tracebacks; -vv: DEBUG from every "
        "library. Secrets are redacted.",
    ),
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
MetricsPort = Annotated[
    str | None,
    typer.Option(
        "--metrics-port",
        metavar="[HOST:]PORT",
        help="Serve /metrics (Prometheus), /livez and /readyz on this port (host "
        "127.0.0.1 unless given, e.g. 0.0.0.0:9464).",
    ),
]
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


def note_verbose(count: int) -> None:
    """``-v`` given before or after the command name: the larger count wins."""
    CliState.verbose = max(CliState.verbose, int(count))


def start_logging() -> None:
    setup_logging(CliState.verbose)


def _version(value: bool) -> None:
    if value:
        write_line(f"{PROG} {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    verbose: Verbose = 0,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    note_verbose(verbose)
