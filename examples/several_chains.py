"""Consume several chains at once with one application key: one EventStream per chain.

    python examples/several_chains.py                          # a local emulator, 3 chains
    python examples/several_chains.py --config chains.json     # your environments

A stream is (gateway, chain code, application key) and has one consumer; one key may consume
several chains at once, one connection each. Each chain is its own environment in the
developer portal, with its own OAuth client, so the configuration names them per chain:

    {
      "app_key": "6a1f...",
      "chains": [
        {"chain_code": "CHAIN1", "gateway_url": "https://...", "client_id": "...",
         "client_secret": "...", "enterprise_id": "ENT1"},
        {"chain_code": "CHAIN2", "gateway_url": "https://...", "client_id": "...",
         "client_secret": "...", "enterprise_id": "ENT2"}
      ]
    }

Keep that file readable by its owner only. ``app_key`` may come from OHIP_APP_KEY instead.
Without --config it starts a local emulator with three chains. Ctrl-C stops every stream
cleanly; a fatal error in one chain stops the others too.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any

from ohip_stream import (
    CheckpointStore,
    EventStream,
    MemoryCheckpointStore,
    OAuthClientCredentials,
    OhipError,
    SQLiteCheckpointStore,
)


async def consume_chain(
    chain: dict[str, str],
    app_key: str,
    checkpoints: CheckpointStore,
    streams: list[EventStream],
    max_events: int | None,
) -> int:
    """Consume one chain until stopped (or ``max_events``); returns how many events it saw."""
    auth = OAuthClientCredentials(
        gateway_url=chain["gateway_url"],
        app_key=app_key,
        client_id=chain["client_id"],
        client_secret=chain["client_secret"],
        enterprise_id=chain["enterprise_id"],
    )
    stream = EventStream(
        gateway_url=chain["gateway_url"],
        app_key=app_key,
        chain_code=chain["chain_code"],
        auth=auth,
        checkpoints=checkpoints,  # one store for all: checkpoints are kept per stream
    )
    async with auth, stream:
        streams.append(stream)
        async for event in stream:
            print(
                f"[{chain['chain_code']}] {event.offset:>4} {event.module_name:<13} "
                f"{event.event_name:<24} hotel={event.hotel_id or '-'}",
                flush=True,
            )
            if max_events and stream.stats.events >= max_events:
                break
    return stream.stats.events


async def run_all(chains: list[dict[str, str]], app_key: str, args: argparse.Namespace) -> int:
    async with contextlib.AsyncExitStack() as stack:
        if args.emulator:
            checkpoints: CheckpointStore = MemoryCheckpointStore()
        else:
            checkpoints = await stack.enter_async_context(SQLiteCheckpointStore(args.checkpoint_db))
        streams: list[EventStream] = []

        # One signal handler for every stream (each stream's install_signal_handlers() would
        # replace the previous one's): ask them all to stop; each completes, drains, commits.
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError):
                loop.add_signal_handler(sig, lambda: [s.request_stop() for s in streams])

        tasks = {
            chain["chain_code"]: asyncio.create_task(
                consume_chain(chain, app_key, checkpoints, streams, args.max_events)
            )
            for chain in chains
        }
        try:
            # Python 3.11+: asyncio.TaskGroup does the same in two lines.
            done, pending = await asyncio.wait(tasks.values(), return_when=asyncio.FIRST_EXCEPTION)
            if pending:  # one chain failed: stop the others cleanly
                for stream in streams:
                    stream.request_stop()
            await asyncio.gather(*pending, return_exceptions=True)
            for task in done:
                task.result()  # raise the first failure, if any
        finally:
            for task in tasks.values():
                task.cancel()
        for code, task in tasks.items():
            print(f"{code}: {task.result()} events", flush=True)
    return 0


def emulator_chains(emulator: Any, count: int) -> list[dict[str, str]]:
    return [
        {
            "chain_code": f"CHAIN{number}",
            "gateway_url": emulator.gateway_url,
            "client_id": emulator.client_id,
            "client_secret": emulator.client_secret,
            "enterprise_id": emulator.enterprise_id,
        }
        for number in range(1, count + 1)
    ]


async def run(args: argparse.Namespace) -> int:
    if not args.emulator:
        app_key = args.config.get("app_key") or os.environ.get("OHIP_APP_KEY", "")
        return await run_all(args.config["chains"], app_key, args)

    from ohip_stream.testing import Emulator

    async with Emulator() as emulator:
        chains = emulator_chains(emulator, args.chains)
        for chain in chains:
            await emulator.publish(args.max_events, chain_code=chain["chain_code"])
        print(
            f"no --config: {len(chains)} chains on an emulator at {emulator.gateway_url}",
            file=sys.stderr,
        )
        return await run_all(chains, emulator.app_key, args)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None, help="JSON file of chains (see above)")
    parser.add_argument("--checkpoint-db", default="offsets.db", help="SQLite checkpoint file")
    parser.add_argument("--chains", type=int, default=3, help="chains on the emulator")
    parser.add_argument("--max-events", type=int, default=None, help="stop each chain after N")
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logs on stderr")
    args = parser.parse_args()
    args.emulator = args.config is None
    if not args.emulator:
        args.config = json.loads(Path(args.config).read_text(encoding="utf-8"))
    if args.emulator and args.max_events is None:
        args.max_events = 5
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return asyncio.run(run(args))
    except OhipError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
