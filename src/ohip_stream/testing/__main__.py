"""``python -m ohip_stream.testing``: run the emulator in the foreground until Ctrl-C."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Sequence
from typing import Any


def build_parser() -> argparse.ArgumentParser:
    """The command line of the foreground emulator."""
    parser = argparse.ArgumentParser(
        prog="python -m ohip_stream.testing",
        description="Run a local OHIP gateway (OAuth and the Streaming API) until Ctrl-C.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--rate", type=float, default=2.0, help="events published per second")
    parser.add_argument("--env-file", default=".env", help="where to write the OHIP_* variables")
    parser.add_argument("--no-env-file", action="store_true", help="do not write an env file")
    parser.add_argument("--chain-code", default="OHIPCN")
    parser.add_argument("--backlog", type=int, default=0, help="events to preload")
    parser.add_argument("--fast-replay", action="store_true", help="benchmark mode")
    parser.add_argument("--seed", type=int, default=0)
    for name in (
        "token-ttl",
        "complete-gap",
        "hold-after-drop",
        "init-timeout",
        "idle-timeout",
        "resume-ttl",
        "retention",
        "server-ping-interval",
    ):
        parser.add_argument(f"--{name}", type=float, default=None, metavar="SECONDS")
    parser.add_argument("--complete-inflight", type=int, default=None)
    parser.add_argument("--first-offset", type=int, default=None)
    parser.add_argument("--ssl-certfile", default=None)
    parser.add_argument("--ssl-keyfile", default=None)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` and serve until interrupted; returns the exit status."""
    from ohip_stream.testing._foreground import serve_foreground

    args = build_parser().parse_args(argv)
    extra: dict[str, Any] = {
        name: getattr(args, name)
        for name in (
            "token_ttl",
            "complete_gap",
            "hold_after_drop",
            "init_timeout",
            "idle_timeout",
            "resume_ttl",
            "retention",
            "server_ping_interval",
            "complete_inflight",
            "first_offset",
            "ssl_certfile",
            "ssl_keyfile",
        )
        if getattr(args, name) is not None
    }
    try:
        return asyncio.run(
            serve_foreground(
                host=args.host,
                port=args.port,
                rate=args.rate,
                env_file=None if args.no_env_file else args.env_file,
                chain_code=args.chain_code,
                backlog=args.backlog,
                fast_replay=args.fast_replay,
                seed=args.seed,
                **extra,
            )
        )
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main())
