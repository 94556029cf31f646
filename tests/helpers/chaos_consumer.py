"""The consumer process of the chaos soak (tests/test_chaos.py).

Consumes the emulator's stream with SQLite checkpoints and an ``on_invalid`` dead-letter
callback, and reports on stdout, one flushed line each:

* ``E <offset> <uniqueEventId>``: an event reached the user's code;
* ``D <offset or -> <n>``: an invalid event reached the dead-letter callback (its raw frame is
  line ``n`` of the dead-letter file, written and flushed before this line);
* ``S <json>``: the stream's stats (when they change, every 500 events and at the end);
* ``X <error type> <message>``: the stream failed (the process then exits with 3).

It runs until SIGTERM (a graceful stop: complete, drain, commit) or SIGKILL. Arguments: one JSON
object on argv[1].
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import sys
from typing import Any, TextIO

from ohip_stream import EventStream, OAuthClientCredentials, SQLiteCheckpointStore, Timings


def _line(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


async def main(config: dict[str, Any], dead_file: TextIO, written: int) -> int:
    logging.basicConfig(
        level=config.get("log_level", "INFO"),
        stream=sys.stderr,
        format="%(created).3f %(name)s %(levelname)s %(message)s",
    )
    auth = OAuthClientCredentials(
        gateway_url=config["gateway_url"],
        client_id=config["client_id"],
        client_secret=config["client_secret"],
        app_key=config["app_key"],
        enterprise_id=config["enterprise_id"],
    )
    store = SQLiteCheckpointStore(config["db"])

    def dead_letter(raw: str, error: Exception) -> None:
        nonlocal written
        offset = getattr(error, "offset", None)
        record = {"offset": offset, "raw": raw, "error": type(error).__name__}
        dead_file.write(json.dumps(record) + "\n")
        dead_file.flush()
        written += 1
        _line(f"D {offset if offset is not None else '-'} {written}")

    stream = EventStream(
        gateway_url=config["gateway_url"],
        app_key=config["app_key"],
        chain_code=config["chain_code"],
        auth=auth,
        checkpoints=store,
        timings=Timings(**config["timings"]),
        max_message_size=config["max_message_size"],
        queue_size=config["queue_size"],
        commit_every=config["commit_every"],
        commit_interval=config["commit_interval"],
        on_invalid=dead_letter,
        lock_dir=config["lock_dir"],
    )
    status = 0
    try:
        async with auth, stream:
            stream.install_signal_handlers()
            try:
                reported = -1
                async for event in stream:
                    _line(f"E {event.metadata.offset} {event.metadata.unique_event_id}")
                    stats = stream.stats
                    changes = sum(stats.reconnects.values()) + stats.invalid
                    if changes != reported or stats.events % 500 == 0:
                        reported = changes
                        _line("S " + json.dumps(dataclasses.asdict(stats)))
            except Exception as exc:  # reported, then the process fails
                _line(f"X {type(exc).__name__} {exc}")
                status = 3
        _line("S " + json.dumps(dataclasses.asdict(stream.stats)))
    finally:
        store.close()
    return status


def run(config: dict[str, Any]) -> int:
    path = config["dead_letters"]
    with open(path, encoding="utf-8") as existing:
        written = sum(1 for _ in existing)
    with open(path, "a", encoding="utf-8") as dead_file:
        return asyncio.run(main(config, dead_file, written))


if __name__ == "__main__":
    sys.exit(run(json.loads(sys.argv[1])))
