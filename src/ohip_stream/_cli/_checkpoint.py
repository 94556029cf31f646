"""``ohip-stream checkpoint show|set|clear``."""

from __future__ import annotations

import dataclasses
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any

import typer

from ohip_stream._checkpoints import Checkpoint, SQLiteCheckpointStore
from ohip_stream._cli._common import (
    checkpoint_path,
    load_settings,
    offset_argument,
    write_line,
)
from ohip_stream._cli._options import (
    ChainCode,
    CheckpointDb,
    EnvFile,
    GatewayUrl,
    Verbose,
    checkpoint_app,
    note_verbose,
    start_logging,
)
from ohip_stream._exceptions import ConfigurationError

__all__ = ["checkpoint_row", "gateway_host"]

# The keys of `checkpoint show --json`, with or without a checkpoint (one shape for scripts).
ROW_KEYS = (
    "stream_id",
    "gateway_host",
    "chain_code",
    "offset",
    "unique_event_id",
    "completed_at",
    "updated_at",
    "checkpoint_db",
)


def gateway_host(gateway_url: str) -> str:
    """The host (and port, if not the scheme's default) of a gateway URL, as the stream id
    normalizes it."""
    from ohip_stream._net import parse_gateway

    return parse_gateway(gateway_url).netloc


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


def checkpoint_row(
    stream_id: str,
    cp: Checkpoint | None,
    db: Path,
    *,
    host: str | None = None,
    chain: str | None = None,
) -> dict[str, Any]:
    """One stream's checkpoint as a flat mapping with :data:`ROW_KEYS` (``None`` for what is
    not known). The gateway host and chain code come from the store when it keeps them."""
    return {
        "stream_id": stream_id,
        "gateway_host": getattr(cp, "gateway_host", None) or host,
        "chain_code": getattr(cp, "chain_code", None) or chain,
        "offset": cp.offset if cp is not None else None,
        "unique_event_id": cp.unique_event_id if cp is not None else None,
        "completed_at": _when(cp.completed_at) if cp is not None else None,
        "updated_at": _when(cp.updated_at) if cp is not None and cp.updated_at else None,
        "checkpoint_db": str(db),
    }


def _text(row: dict[str, Any]) -> str:
    where = ", ".join(
        part
        for part in (
            row["gateway_host"],
            f"chain {row['chain_code']}" if row["chain_code"] else None,
        )
        if part
    )
    name = f"stream {row['stream_id']}" + (f" ({where})" if where else "")
    if row["offset"] is None and row["updated_at"] is None:
        return f"{name}: no checkpoint in {row['checkpoint_db']}"
    return (
        f"{name}: offset {row['offset'] or '(none)'}, updated {row['updated_at'] or '-'}, "
        f"last completed {row['completed_at'] or '-'}"
    )


def _print_row(row: dict[str, Any], as_json: bool) -> None:
    write_line(json.dumps(row, separators=(",", ":")) if as_json else _text(row))


def _show_all(db: Path, as_json: bool) -> None:
    if not db.is_file():
        raise ConfigurationError(
            f"no checkpoint file at {db}: pass --checkpoint-db (or set OHIP_CHECKPOINT_DB)"
        )
    store = SQLiteCheckpointStore(db)
    try:
        rows = store.list_sync()
    finally:
        store.close()
    for stream_id, cp in sorted(rows.items()):
        _print_row(checkpoint_row(stream_id, cp, db), as_json)
    if not rows and not as_json:
        write_line(f"no checkpoints in {db}")


@checkpoint_app.command("show")
def checkpoint_show(
    all_streams: Annotated[
        bool, typer.Option("--all", help="Every stream in the file, not only this one.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="One JSON object a line, the same keys with or without one."),
    ] = False,
    env_file: EnvFile = None,
    gateway_url: GatewayUrl = None,
    chain_code: ChainCode = None,
    checkpoint_db: CheckpointDb = None,
    verbose: Verbose = 0,
) -> None:
    """Show the stream's checkpoint, with the gateway host and chain code it belongs to."""
    note_verbose(verbose)
    start_logging()
    if all_streams:
        _show_all(checkpoint_path(checkpoint_db, load_settings(env_file)), as_json)
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
    row = checkpoint_row(
        stream_id,
        found,
        db,
        host=gateway_host(settings.gateway_url),
        chain=settings.chain_code.strip().upper(),
    )
    _print_row(row, as_json)


def _guarded(settings: Any, stream_id: str) -> Any:
    """The stream's guard: a checkpoint must not change under a running consumer."""
    from ohip_stream._guard import StreamGuard

    guard = StreamGuard(stream_id, lock_dir=settings.lock_dir, description=f"stream {stream_id}")
    guard.acquire()
    return guard


@checkpoint_app.command("set")
def checkpoint_set(
    offset: Annotated[
        str,
        typer.Argument(
            help="The last processed offset (1 to 20 digits); the next run starts after it."
        ),
    ],
    env_file: EnvFile = None,
    gateway_url: GatewayUrl = None,
    chain_code: ChainCode = None,
    checkpoint_db: CheckpointDb = None,
    verbose: Verbose = 0,
) -> None:
    """Set the stream's last processed offset (the next `tail` resumes after it)."""
    note_verbose(verbose)
    start_logging()
    value = offset_argument("OFFSET", offset)
    settings, stream_id = _stream_of(env_file, gateway_url, chain_code)
    db = checkpoint_path(checkpoint_db, settings)
    guard = _guarded(settings, stream_id)
    store = SQLiteCheckpointStore(db)
    try:
        previous = store.load_sync(stream_id) or Checkpoint()
        # replace() keeps what else the store records (when the last connection completed...).
        store.save_sync(
            stream_id,
            dataclasses.replace(
                previous, offset=value, unique_event_id=None, updated_at=time.time()
            ),
        )
    finally:
        store.close()
        guard.release()
    write_line(f"stream {stream_id}: checkpoint set to offset {value} in {db}")


@checkpoint_app.command("clear")
def checkpoint_clear(
    env_file: EnvFile = None,
    gateway_url: GatewayUrl = None,
    chain_code: ChainCode = None,
    checkpoint_db: CheckpointDb = None,
    verbose: Verbose = 0,
) -> None:
    """Forget the stream's checkpoint (the next `tail` starts where the gateway says)."""
    note_verbose(verbose)
    start_logging()
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
