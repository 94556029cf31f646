"""Forward each event to an HTTP webhook with the webhook sink: signed, retried, one effect.

    python examples/webhook_forwarder.py                                # emulator + local receiver
    python examples/webhook_forwarder.py --real --url https://example.com/hooks/opera

Each event is POSTed as JSON (its wire form) with an ``Idempotency-Key`` and a ``webhook-id``
holding its ``uniqueEventId``, so the receiver can drop the copies a resume or a crash may send;
with WEBHOOK_SECRET (``whsec_...``) each request is signed as Standard Webhooks specifies.
Network errors, timeouts, 408, 429 and 5xx answers are retried with jittered exponential
backoff. After ``--attempts`` failures, or on any other 4xx, the program stops WITHOUT
committing the event: it is sent again on the next start. Nothing is lost while the receiver is
down; the checkpoint (SQLite, OHIP_CHECKPOINT_DB) moves only after the 2xx answers.

Without OHIP_GATEWAY_URL (or with --emulator) it starts a local emulator and a local receiver
that answers 503 to the first delivery of every third event, to show the retries.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from ohip_stream import (
    CheckpointStore,
    Event,
    EventStream,
    MemoryCheckpointStore,
    OhipError,
    SQLiteCheckpointStore,
)
from ohip_stream.sinks import DeliveryError, WebhookSink, deliver


async def run(args: argparse.Namespace) -> int:
    async with contextlib.AsyncExitStack() as stack:
        receiver = None
        store: CheckpointStore
        if args.emulator:
            from ohip_stream.testing import Emulator

            emulator = await stack.enter_async_context(Emulator())
            os.environ.update(emulator.env())
            await emulator.publish(args.max_events)
            receiver = LocalReceiver()
            stack.callback(receiver.stop)
            args.url = receiver.url
            store = MemoryCheckpointStore()
            print(
                f"no OHIP_GATEWAY_URL: emulator at {emulator.gateway_url}, receiver at {args.url}",
                file=sys.stderr,
            )
        else:
            sqlite = SQLiteCheckpointStore(os.environ.get("OHIP_CHECKPOINT_DB", "offsets.db"))
            stack.callback(sqlite.close)
            store = sqlite
        if not args.url:
            print("error: give the webhook URL with --url or WEBHOOK_URL", file=sys.stderr)
            return 2

        forwarded = 0
        holder: dict[str, EventStream] = {}

        def delivered(event: Event, attempts: int) -> None:
            nonlocal forwarded
            forwarded += 1
            print(
                f"forwarded offset {event.offset} {event.event_name} (attempts: {attempts})",
                flush=True,
            )
            if args.max_events and forwarded >= args.max_events:
                holder["stream"].request_stop()

        sink = WebhookSink(
            args.url,
            checkpoints=store,
            secret=os.environ.get("WEBHOOK_SECRET") or None,
            on_delivered=delivered,
            max_attempts=args.attempts,
            first_wait=args.first_wait,
        )
        await stack.enter_async_context(sink)
        stream = await stack.enter_async_context(EventStream.from_env(checkpoints=sink.checkpoints))
        holder["stream"] = stream
        stream.install_signal_handlers()
        await deliver(stream, sink)

    if receiver is not None:
        print(f"receiver got {len(receiver.received)} distinct events", flush=True)
    return 0


class LocalReceiver:
    """A webhook receiver for the emulator mode: 503 to the first try of every third event."""

    def __init__(self) -> None:
        self.received: dict[str, dict[str, Any]] = {}
        self._tries: dict[str, int] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                key = self.headers["Idempotency-Key"]
                tries = receiver._tries[key] = receiver._tries.get(key, 0) + 1
                flaky = int(body["metadata"]["offset"]) % 3 == 0 and tries == 1
                if not flaky:
                    receiver.received.setdefault(key, body)  # a repeated key changes nothing
                self.send_response(503 if flaky else 204)
                self.end_headers()

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_port}/hooks/opera"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--emulator", action="store_true", help="emulator and local receiver")
    mode.add_argument("--real", action="store_true", help="use the OHIP_* variables")
    parser.add_argument("--url", default=os.environ.get("WEBHOOK_URL"), help="the webhook URL")
    parser.add_argument("--attempts", type=int, default=8, help="deliveries tried per event")
    parser.add_argument("--first-wait", type=float, default=1.0, help="first retry wait (s)")
    parser.add_argument("--max-events", type=int, default=None, help="stop after N events")
    parser.add_argument("-v", "--verbose", action="store_true", help="INFO logs on stderr")
    args = parser.parse_args()
    args.emulator = args.emulator or (not args.real and "OHIP_GATEWAY_URL" not in os.environ)
    if args.emulator:
        args.max_events = args.max_events or 10
        args.first_wait = 0.05  # the local receiver recovers at once
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING)
    try:
        return asyncio.run(run(args))
    except DeliveryError as error:
        print(
            f"stopping, not delivered (it is sent again on the next start): {error}",
            file=sys.stderr,
        )
        return 1
    except OhipError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
