"""The emulator in the foreground, for a program or a test that runs one until told to stop.

The env file rule is the command line's (``ohip-stream emulator``): a file is written only when
it is absent or its first line is :data:`ENV_MARKER`, so a user's own ``.env`` is never changed;
files written here are mode 0600 (they hold a client secret) and replaced atomically. The rule
lives here, free of the command line's dependencies, so that the ``emulator`` extra alone is
enough to use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from pathlib import Path
from typing import Any, TextIO

from ohip_stream.testing._emulator import Emulator
from ohip_stream.testing._envfile import (
    ENV_MARKER,
    check_env_file,
    env_file_is_ours,
    write_marked_env_file,
)

__all__ = [
    "ENV_MARKER",
    "check_env_file",
    "env_file_is_ours",
    "serve_foreground",
    "write_marked_env_file",
]


async def serve_foreground(
    *,
    host: str = "127.0.0.1",
    port: int = 8765,
    rate: float = 2.0,
    env_file: str | Path | None = ".env",
    chain_code: str = "OHIPCN",
    backlog: int = 0,
    fast_replay: bool = False,
    out: TextIO = sys.stdout,
    stop: asyncio.Event | None = None,
    **emulator_kwargs: Any,
) -> int:
    """Run an emulator until ``stop`` is set (or Ctrl-C / SIGTERM when ``stop`` is ``None``).

    It publishes ``rate`` generated events per second (0: none), preloads ``backlog`` events,
    writes the ``OHIP_*`` variables to ``env_file`` (``None``: no file) and prints to ``out`` the
    gateway URL, the chain code and the env file's path, never a secret. ``emulator_kwargs`` go
    to :class:`Emulator` (``token_ttl=``, ``complete_gap=``...). Returns the exit status, 0.

    ``env_file`` is written only when it is absent or was written by the emulator (its first
    line is the emulator's marker); any other existing file raises
    :class:`~ohip_stream.ConfigurationError` before the emulator starts, and is left unchanged.
    """
    env_path = None if env_file is None else Path(env_file)
    if env_path is not None:
        check_env_file(env_path)  # before the emulator starts, so nothing runs for nothing
    own_stop = stop is None
    stop_event = stop if stop is not None else asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    if own_stop:
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                loop.add_signal_handler(sig, stop_event.set)
            except (NotImplementedError, RuntimeError):  # pragma: no cover - Windows, threads
                continue
            handled.append(sig)
    try:
        async with Emulator(
            host=host,
            port=port,
            chain_code=chain_code,
            fast_replay=fast_replay,
            **emulator_kwargs,
        ) as emulator:
            if backlog > 0:
                if fast_replay:
                    await emulator.load_backlog(backlog)
                else:
                    await emulator.publish(backlog)
            written = (
                write_marked_env_file(env_path, emulator.env()) if env_path is not None else None
            )
            out.write(f"OHIP emulator listening on {emulator.gateway_url}\n")
            out.write(f"chain code: {emulator.chain_code}\n")
            if written is not None:
                out.write(f"OHIP_* variables written to {written.resolve()}\n")
            if backlog > 0:
                out.write(f"backlog: {backlog} events\n")
            if rate > 0:
                out.write(f"publishing {rate:g} events per second; Ctrl-C to stop\n")
            else:
                out.write("Ctrl-C to stop\n")
            out.flush()
            await _publish_until(emulator, rate, stop_event)
            out.write("stopping\n")
            out.flush()
    finally:
        for sig in handled:
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.remove_signal_handler(sig)
    return 0


async def _publish_until(emulator: Emulator, rate: float, stop: asyncio.Event) -> None:
    if rate <= 0:
        await stop.wait()
        return
    loop = asyncio.get_running_loop()
    started = loop.time()
    published = 0
    while not stop.is_set():
        due = int((loop.time() - started) * rate) - published
        if due > 0:
            await emulator.publish(due)
            published += due
        next_at = started + (published + 1) / rate
        with contextlib.suppress(TimeoutError, asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), max(0.0, next_at - loop.time()))
