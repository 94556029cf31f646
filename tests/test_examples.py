"""Smoke tests of ``examples/``: each runs as a user would run it, against its embedded emulator.

Every example, run with no configuration, starts a local emulator and stops after a bounded
number of events; these tests run them in a subprocess (no OHIP_* variables, a temporary working
directory) and check what they print. ``examples/test_my_integration.py`` runs under pytest.
"""

from __future__ import annotations

import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
DOCS = EXAMPLES.parent / "docs"
TIMEOUT = 90

pytest.importorskip("aiohttp", reason="the examples run against the emulator (emulator extra)")
if not EXAMPLES.is_dir():  # e.g. the tests of an sdist, which ships no examples
    pytest.skip("examples/ is not here", allow_module_level=True)


def run_example(name: str, *args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OHIP_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.pop("WEBHOOK_URL", None)
    result = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, (
        f"{name} exited with {result.returncode}\n--- stdout\n{result.stdout}\n"
        f"--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr, result.stderr
    return result


def offsets(lines: list[str], pattern: str) -> list[int]:
    found = [re.search(pattern, line) for line in lines]
    return [int(match.group(1)) for match in found if match]


def test_first_stream_prints_five_events(tmp_path: Path) -> None:
    result = run_example("first_stream.py", cwd=tmp_path)

    lines = result.stdout.splitlines()
    assert [line.split()[0] for line in lines] == ["1", "2", "3", "4", "5"]
    assert all(len(line.split()) >= 4 for line in lines)


def test_the_tutorial_shows_the_tested_script() -> None:
    assert '--8<-- "examples/first_stream.py"' in (DOCS / "tutorial.md").read_text("utf-8")


def test_tail_stdout_prints_a_line_per_event(tmp_path: Path) -> None:
    result = run_example("tail_stdout.py", "--max-events", "7", cwd=tmp_path)

    lines = result.stdout.splitlines()
    assert offsets(lines, r"^\s*(\d+)\s") == [1, 2, 3, 4, 5, 6, 7]
    assert "done: 7 events, 0 duplicates dropped, 0 invalid, last offset 7" in result.stderr


def test_sqlite_idempotent_writes_each_event_once(tmp_path: Path) -> None:
    database = tmp_path / "events.db"
    result = run_example(
        "sqlite_idempotent.py", "--db", str(database), "--max-events", "6", cwd=tmp_path
    )

    assert "live: 6 new rows, 0 already stored" in result.stdout
    assert "replay: 0 new rows, 6 already stored" in result.stdout
    assert "table business_events holds 6 rows" in result.stdout
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT count(*), count(DISTINCT unique_event_id) FROM business_events"
        ).fetchone()
    assert rows == (6, 6)
    assert (tmp_path / "events.db.offsets").exists()


def test_webhook_forwarder_retries_until_delivered(tmp_path: Path) -> None:
    result = run_example("webhook_forwarder.py", "--max-events", "6", cwd=tmp_path)

    lines = result.stdout.splitlines()
    attempts = {
        int(match.group(1)): int(match.group(2))
        for match in (re.search(r"forwarded offset (\d+) .*\(attempts: (\d+)\)", x) for x in lines)
        if match
    }
    # The local receiver answers 503 to the first delivery of every third offset.
    assert attempts == {1: 1, 2: 1, 3: 2, 4: 1, 5: 1, 6: 2}
    assert "receiver got 6 distinct events" in result.stdout


def test_several_chains_consumes_each_chain(tmp_path: Path) -> None:
    result = run_example("several_chains.py", "--chains", "3", "--max-events", "4", cwd=tmp_path)

    lines = result.stdout.splitlines()
    for chain in ("CHAIN1", "CHAIN2", "CHAIN3"):
        chain_lines = [line for line in lines if line.startswith(f"[{chain}]")]
        assert offsets(chain_lines, r"\]\s+(\d+)\s") == [1, 2, 3, 4]
        assert f"{chain}: 4 events" in lines


def test_my_integration_tests_pass(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items() if not key.startswith("OHIP_")}
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            str(EXAMPLES / "test_my_integration.py"),
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert re.search(r"\b3 passed\b", result.stdout), result.stdout
