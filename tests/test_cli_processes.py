"""Two processes: ``ohip-stream tail`` against ``ohip-stream emulator``, configured only through
the environment and the .env file the emulator writes."""

from __future__ import annotations

import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from ohip_stream._checkpoints import SQLiteCheckpointStore
from ohip_stream._stream import stream_id_for

pytest.importorskip("typer")
pytest.importorskip("aiohttp")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

CLI = [sys.executable, "-m", "ohip_stream.cli"]


def base_env(tmp_path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OHIP_")}
    env.update(
        {
            "OHIP_LOCK_DIR": str(tmp_path / "locks"),
            # The emulator's gap is 0.2 s; the client waits a little longer.
            "OHIP_TIMINGS__COMPLETE_GAP": "0.3",
            "OHIP_TIMINGS__DROP_WAIT": "0.2",
            "OHIP_TIMINGS__BACKOFF_MIN": "0.05",
            "OHIP_TIMINGS__BACKOFF_MAX": "0.5",
            "OHIP_TIMINGS__LOCKOUT": "0.5",
            "PYTHONUNBUFFERED": "1",
        }
    )
    return env


class Lines:
    """The stdout of a running process, line by line, without blocking the test forever."""

    def __init__(self, stream: IO[str]) -> None:
        self._queue: queue.Queue[str | None] = queue.Queue()
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._pump, args=(stream,), daemon=True)
        self._thread.start()

    def _pump(self, stream: IO[str]) -> None:
        for line in stream:
            self._queue.put(line)
        self._queue.put(None)

    def wait_for(self, count: int, timeout: float = 15.0) -> list[str]:
        deadline = time.monotonic() + timeout
        while len(self.lines) < count:
            rest = deadline - time.monotonic()
            if rest <= 0:
                raise AssertionError(f"only {len(self.lines)} of {count} lines in {timeout} s")
            item = self._queue.get(timeout=rest)
            if item is None:
                raise AssertionError(f"the process ended after {len(self.lines)} lines")
            self.lines.append(item)
        return self.lines

    def rest(self, timeout: float = 10.0) -> list[str]:
        self._thread.join(timeout)
        while True:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return self.lines
            if item is not None:
                self.lines.append(item)


@pytest.fixture
def emulator_process(tmp_path: Path) -> Iterator[Path]:
    """``ohip-stream emulator`` publishing 40 events a second; yields its working directory."""
    env = base_env(tmp_path)
    command = [*CLI, "emulator", "--port", "0", "--rate", "40", "--complete-gap", "0.2"]
    with subprocess.Popen(
        [*command, "--env-file", str(tmp_path / ".env")],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        try:
            out = Lines(proc.stdout)  # type: ignore[arg-type]
            out.wait_for(3)
            assert "listening on http://127.0.0.1:" in "".join(out.lines)
            assert (tmp_path / ".env").is_file()
            yield tmp_path
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:  # pragma: no cover - a hung emulator
                proc.kill()
                proc.wait()
        out.rest()
        errors = proc.stderr.read() if proc.stderr else ""
    assert proc.returncode == 0, errors
    assert "Traceback" not in errors


def offsets_of(lines: list[str]) -> list[int]:
    return [int(json.loads(line)["metadata"]["offset"]) for line in lines if line.strip()]


def consecutive(numbers: list[int]) -> bool:
    return numbers == list(range(numbers[0], numbers[0] + len(numbers)))


def tail(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, "tail", *args],
        cwd=cwd,
        env=base_env(cwd),
        capture_output=True,
        text=True,
        timeout=30,
    )


def tail_process(cwd: Path, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*CLI, "tail", *args],
        cwd=cwd,
        env=base_env(cwd),
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )


def committed(cwd: Path, *, through_cli: bool = False) -> int:
    """The stream's committed offset (read from the file, or with ``checkpoint show``)."""
    if through_cli:
        done = subprocess.run(
            [*CLI, "checkpoint", "show", "--json"],
            cwd=cwd,
            env=base_env(cwd),
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert done.returncode == 0, done.stderr
        return int(json.loads(done.stdout)["offset"])
    values = dict(
        line.split("=", 1) for line in (cwd / ".env").read_text().splitlines() if "=" in line
    )
    stream_id = stream_id_for(
        values["OHIP_GATEWAY_URL"], values["OHIP_CHAIN_CODE"], values["OHIP_APP_KEY"]
    )
    store = SQLiteCheckpointStore(cwd / "ohip-checkpoints.db")
    try:
        checkpoint = store.load_sync(stream_id)
    finally:
        store.close()
    assert checkpoint is not None
    assert checkpoint.offset is not None
    return int(checkpoint.offset)


@pytest.mark.slow
def test_tail_against_the_emulator_resumes_without_gaps(emulator_process: Path) -> None:
    cwd = emulator_process
    # Secrets never reach the command line: everything comes from ./.env.
    env_file = (cwd / ".env").read_text()
    assert "OHIP_CLIENT_SECRET=" in env_file

    # 1. --max-events: consecutive JSON lines, then exit 0.
    first = tail(cwd, "--max-events", "30")
    assert first.returncode == 0, first.stderr
    run1 = offsets_of(first.stdout.splitlines())
    assert len(run1) == 30
    assert consecutive(run1)
    assert "last offset" in first.stderr  # the status goes to stderr
    assert committed(cwd, through_cli=True) == run1[-1]

    # 2. Started again: the next event, none repeated.
    second = tail(cwd, "--max-events", "20")
    assert second.returncode == 0, second.stderr
    run2 = offsets_of(second.stdout.splitlines())
    assert run2 == list(range(run1[-1] + 1, run1[-1] + 21))

    # 3. Running: a second consumer is refused; SIGTERM stops gracefully and commits.
    with tail_process(cwd, "-q") as proc:
        lines = Lines(proc.stdout)  # type: ignore[arg-type]
        lines.wait_for(20)
        other = tail(cwd, "--max-events", "1")
        assert other.returncode == 1
        assert other.stderr.count("ohip-stream: error:") == 1
        assert "already has a consumer" in other.stderr
        assert "Traceback" not in other.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(15) == 0
        run3 = offsets_of(lines.rest())
    assert run3[0] == run2[-1] + 1
    assert consecutive(run3)
    assert committed(cwd) == run3[-1]

    # 4. SIGKILL: no clean exit, no final commit.
    with tail_process(cwd, "-q") as proc:
        lines = Lines(proc.stdout)  # type: ignore[arg-type]
        lines.wait_for(25)
        time.sleep(1.2)  # past one commit interval, so the checkpoint has moved
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        run4 = offsets_of(lines.rest())
    assert run4[0] == run3[-1] + 1
    assert consecutive(run4)
    checkpoint = committed(cwd)
    assert run4[0] <= checkpoint <= run4[-1]

    # 5. Restarted: from its checkpoint, no gap; repeats only of what came after the commit.
    fifth = tail(cwd, "--max-events", "20")
    assert fifth.returncode == 0, fifth.stderr
    run5 = offsets_of(fifth.stdout.splitlines())
    assert run5[0] == checkpoint + 1
    assert run5[0] <= run4[-1] + 1
    assert consecutive(run5)
    seen = run1 + run2 + run3 + run4 + run5
    assert set(seen) == set(range(run1[0], max(seen) + 1))  # no gap over every run
    repeated = sorted(o for o in set(seen) if seen.count(o) > 1)
    assert all(checkpoint < o <= run4[-1] for o in repeated)

    # 6. Replay: a range to stdout; the checkpoint is not touched.
    before = committed(cwd)
    replay = subprocess.run(
        [*CLI, "replay", "--from-offset", str(run1[0]), "--to-offset", str(run1[0] + 9)],
        cwd=cwd,
        env=base_env(cwd),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert replay.returncode == 0, replay.stderr
    assert offsets_of(replay.stdout.splitlines()) == list(range(run1[0], run1[0] + 10))
    assert committed(cwd) == before


def test_demo_as_a_console_script_on_a_machine_with_nothing_configured(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OHIP_")}
    started = time.monotonic()
    done = subprocess.run(
        [*CLI, "demo", "--events", "20", "--seconds", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "lost: 0" in done.stdout
    assert "received: 20" in done.stdout
    assert "Traceback" not in done.stdout + done.stderr
    assert "warning" not in done.stderr.lower()
    assert time.monotonic() - started < 30
    assert list(tmp_path.iterdir()) == []  # the demo leaves nothing behind
