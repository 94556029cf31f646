"""Exit codes of real processes: Ctrl-C (SIGINT) exits 130, SIGTERM 0 (a requested stop), for
``tail``, ``replay`` and ``emulator``; ``python -m ohip_stream`` is the command line."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("typer")
pytest.importorskip("aiohttp")

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")

MODULE = [sys.executable, "-m", "ohip_stream"]
USER_ENV = "DATABASE_URL=postgres://me@db/app\nOHIP_CLIENT_SECRET=my-real-secret\n"


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("OHIP_")}
    env.update({"OHIP_LOCK_DIR": str(tmp_path / "locks"), "PYTHONUNBUFFERED": "1", **extra})
    return env


def unreachable(tmp_path: Path) -> dict[str, str]:
    """A configuration whose gateway refuses every connection (nothing listens on port 1)."""
    return env_for(
        tmp_path,
        OHIP_GATEWAY_URL="http://127.0.0.1:1",
        OHIP_APP_KEY="41ecd082-8997-4c69-af34-2f72b83645ff",
        OHIP_CHAIN_CODE="OHIPCN",
        OHIP_CLIENT_ID="client",
        OHIP_CLIENT_SECRET="s3cr3t-value",
        OHIP_ENTERPRISE_ID="ENT1",
        OHIP_TIMINGS__BACKOFF_MIN="0.05",
        OHIP_TIMINGS__BACKOFF_MAX="0.2",
    )


def wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float = 20.0) -> str:
    """Read ``proc``'s stderr until a line holds ``needle``; what was read."""
    assert proc.stderr is not None
    seen = ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line:
            break
        seen += line
        if needle in line:
            return seen
    raise AssertionError(f"no line with {needle!r} in: {seen}")


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 0)])
@pytest.mark.parametrize("command", [["tail"], ["replay", "--from-offset", "1"]])
def test_a_signal_before_any_connection_exits_with_the_documented_code(
    tmp_path: Path, command: list[str], sig: signal.Signals, code: int
) -> None:
    args = [*MODULE, *command]
    if command == ["tail"]:
        needle = "ohip-stream: tail "
    else:
        args.insert(len(MODULE), "-v")  # replay has no start line: wait for the library's
        needle = " INFO "
    with subprocess.Popen(
        args,
        cwd=tmp_path,
        env=unreachable(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        wait_for_line(proc, needle)
        time.sleep(0.3)  # into the connect attempts
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=20)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert ("interrupted" in err) == (code == 130)


def test_the_emulator_keeps_a_users_env_and_exits_130_on_ctrl_c(tmp_path: Path) -> None:
    user_env = tmp_path / ".env"
    user_env.write_text(USER_ENV)
    user_env.chmod(0o644)
    with subprocess.Popen(
        [*MODULE, "emulator", "--port", "0", "--rate", "0"],
        cwd=tmp_path,
        env=env_for(tmp_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    ) as proc:
        assert proc.stdout is not None
        out = ""
        deadline = time.monotonic() + 20
        while "Ctrl-C" not in out and time.monotonic() < deadline:
            out += proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        rest, err = proc.communicate(timeout=20)
    assert proc.returncode == 130, out + rest + err
    assert user_env.read_text() == USER_ENV
    assert stat.S_IMODE(user_env.stat().st_mode) == 0o644
    written = tmp_path / ".env.emulator"
    assert stat.S_IMODE(written.stat().st_mode) == 0o600
    assert "OHIP_CLIENT_SECRET=" in written.read_text()
    assert "--env-file .env.emulator" in out
    assert "Traceback" not in err


def test_python_dash_m_ohip_stream_is_the_command_line(tmp_path: Path) -> None:
    from ohip_stream import __version__

    done = subprocess.run(
        [*MODULE, "--version"], capture_output=True, text=True, timeout=30, cwd=tmp_path
    )
    assert done.returncode == 0
    assert done.stdout.strip() == f"ohip-stream {__version__}"
    done = subprocess.run(
        [*MODULE, "checkpoint", "set", "²"],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=tmp_path,
        env=env_for(tmp_path),
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1
