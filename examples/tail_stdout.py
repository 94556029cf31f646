"""Print every event of a stream, one line each.

    python examples/tail_stdout.py                   # a local emulator, 10 events
    python examples/tail_stdout.py --max-events 50   # stop after 50 events
    python examples/tail_stdout.py --real            # your environment (OHIP_* variables)

Without OHIP_GATEWAY_URL in the environment (or with --emulator) it starts a local emulator
that publishes a few events a second. Against a real environment it resumes from the SQLite
checkpoint at OHIP_CHECKPOINT_DB when that is set. Ctrl-C stops it cleanly.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import sys

from ohip_stream import Event, EventStream, MemoryCheckpointStore, OhipError


def describe(event: Event) -> str:
    """One line: offset, module, event, hotel, record id and up to three changed elements."""
    changed = ", ".join(
        f"{element.element_name}={element.new_text!r}" for element in event.changed_elements()[:3]
    )
    return (
        f"{event.offset:>6}  {event.module_name:<13} {event.event_name:<24} "
        f"hotel={event.hotel_id or '-':<7} key={event.primary_key}  {changed}"
    )


async def publish_steadily(emulator, per_second: float) -> None:  # emulator mode only
    while True:
        await emulator.publish(1)
        await asyncio.sleep(1 / per_second)


async def run(args: argparse.Namespace) -> int:
    async with contextlib.AsyncExitStack() as stack:
        overrides = {}
        if args.emulator:
            from ohip_stream.testing import Emulator

            emulator = await stack.enter_async_context(Emulator())
            os.environ.update(emulator.env())  # the OHIP_* variables of the local gateway
            await emulator.publish(3)  # a small backlog, then a steady trickle
            publisher = asyncio.create_task(publish_steadily(emulator, per_second=20))
            stack.callback(publisher.cancel)
            overrides["checkpoints"] = MemoryCheckpointStore()  # nothing to resume next time
            print(
                f"no OHIP_GATEWAY_URL: streaming from an emulator at {emulator.gateway_url}",
                file=sys.stderr,
            )

        stream = await stack.enter_async_context(EventStream.from_env(**overrides))
        stream.install_signal_handlers()  # Ctrl-C / SIGTERM: complete, drain, commit
        async for event in stream:
            print(describe(event), flush=True)
            if args.max_events and stream.stats.events >= args.max_events:
                break

    stats = stream.stats
    print(
        f"done: {stats.events} events, {stats.duplicates} duplicates dropped, "
        f"{stats.invalid} invalid, last offset {stats.last_offset}",
        file=sys.stderr,
    )
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--emulator", action="store_true", help="stream from a local emulator")
    mode.add_argument("--real", action="store_true", help="use the OHIP_* variables")
    parser.add_argument("--max-events", type=int, default=None, help="stop after N events")
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logs on stderr")
    args = parser.parse_args()
    args.emulator = args.emulator or (not args.real and "OHIP_GATEWAY_URL" not in os.environ)
    if args.emulator and args.max_events is None:
        args.max_events = 10  # a bounded run: the emulator would publish forever
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return asyncio.run(run(args))
    except OhipError as error:  # configuration, credentials, approval...: say what, no traceback
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
