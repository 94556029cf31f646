"""What a new user meets first: the emulator's env file, errors in the command line's words,
offsets, checkpoints, the tail's table and start line, the status line."""

from __future__ import annotations

import importlib.util
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from ohip_stream import cli
from ohip_stream._checkpoints import Checkpoint, SQLiteCheckpointStore
from ohip_stream._exceptions import (
    AuthenticationError,
    CheckpointError,
    ConfigurationError,
    ConsumerAlreadyRunningError,
)
from ohip_stream._guard import StreamGuard
from ohip_stream._stream import StreamStats, stream_id_for

pytest.importorskip("typer")
pytest.importorskip("aiohttp")

from ohip_stream._cli import _checkpoint, _consume
from ohip_stream._cli._emulator import MARKER, choose_env_file, write_env_file
from ohip_stream._cli._errors import cli_message
from ohip_stream._cli._status import StatusLine, plural, waiting_text
from ohip_stream.testing import Emulator

FAST_TIMINGS = {
    "OHIP_TIMINGS__COMPLETE_GAP": "0.3",
    "OHIP_TIMINGS__DROP_WAIT": "0.2",
    "OHIP_TIMINGS__BACKOFF_MIN": "0.05",
    "OHIP_TIMINGS__BACKOFF_MAX": "0.5",
    "OHIP_TIMINGS__LOCKOUT": "0.5",
    "OHIP_TIMINGS__DRAIN_TIMEOUT": "3",
}
USER_ENV = "DATABASE_URL=postgres://me@db/app\nOHIP_CLIENT_SECRET=my-real-secret\n"


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("OHIP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OHIP_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture
def configured(monkeypatch: pytest.MonkeyPatch) -> Iterator[Emulator]:
    emulator = Emulator(complete_gap=0.2)
    emulator.start()
    try:
        for name, value in {**emulator.env(), **FAST_TIMINGS}.items():
            monkeypatch.setenv(name, value)
        yield emulator
    finally:
        emulator.stop()


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_error(err: str) -> str:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ohip-stream: error:")]
    assert len(lines) == 1, err
    return lines[0]


# --- the emulator's env file ------------------------------------------------------------------


def test_a_users_env_is_never_chosen_and_the_fallback_is(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(USER_ENV)
    assert choose_env_file(None) == Path(".env.emulator")


def test_an_absent_or_own_env_is_chosen(tmp_path: Path) -> None:
    assert choose_env_file(None) == Path(".env")
    write_env_file(Path(".env"), {"OHIP_APP_KEY": "k"})
    assert choose_env_file(None) == Path(".env")


def test_an_explicit_env_file_of_the_user_is_refused(tmp_path: Path) -> None:
    mine = tmp_path / "mine.env"
    mine.write_text(USER_ENV)
    with pytest.raises(ConfigurationError, match="--no-env-file"):
        choose_env_file(mine)


def test_both_candidates_taken_is_a_one_line_refusal(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(USER_ENV)
    (tmp_path / ".env.emulator").write_text("MINE=1\n")
    with pytest.raises(ConfigurationError, match="--env-file PATH"):
        choose_env_file(None)


def test_written_files_are_0600_and_marked(tmp_path: Path) -> None:
    target = tmp_path / "ohip.env"
    target.write_text(MARKER + "\nOLD=1\n")
    target.chmod(0o644)  # our own, left readable by someone: rewritten private
    write_env_file(target, {"OHIP_CLIENT_SECRET": "s"})
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert target.read_text().splitlines() == [MARKER, "OHIP_CLIENT_SECRET=s"]


def test_the_emulator_command_leaves_a_users_env_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ohip_stream._cli import _emulator

    (tmp_path / ".env").write_text(USER_ENV)
    (tmp_path / ".env").chmod(0o644)
    seen: dict[str, Any] = {}

    async def serve(run_: Any, out: Any) -> int:  # stands in for the foreground server
        seen["env_file"] = run_.env_file
        return 130

    monkeypatch.setattr(_emulator, "serve", serve)
    code, _, _ = run(["emulator", "--port", "0"], capsys)
    assert code == 130
    assert seen["env_file"] == Path(".env.emulator")
    assert (tmp_path / ".env").read_text() == USER_ENV
    assert stat.S_IMODE((tmp_path / ".env").stat().st_mode) == 0o644

    code, _, err = run(["emulator", "--port", "0", "--env-file", ".env"], capsys)
    assert code == 2
    assert "not written by the emulator" in one_error(err)


# --- errors in the command line's vocabulary --------------------------------------------------


@pytest.mark.parametrize(
    ("message", "present", "absent"),
    [
        (
            "HTTP 404; check gateway_url: the token endpoint is <gateway_url>/oauth/v1/tokens",
            "check --gateway-url (or OHIP_GATEWAY_URL)",
            "gateway_url",
        ),
        (
            "verify='/x.pem' is not a readable PEM CA file",
            "--ca-file (or OHIP_CA_FILE) '/x.pem'",
            "=",
        ),
        (
            "gateway_url uses plain http for gw: Use https, or pass allow_insecure=True for a test",
            "Use https",
            "allow_insecure",
        ),
    ],
)
def test_urls_and_files_are_named_as_options(message: str, present: str, absent: str) -> None:
    text = cli_message(ConfigurationError(message))
    assert present in text
    assert absent not in text


def test_an_address_in_use_is_not_a_path_problem() -> None:
    import errno

    from ohip_stream._cli._errors import os_error_message

    text = os_error_message(OSError(errno.EADDRINUSE, "Address already in use"))
    assert "check the paths given" not in text
    assert "check the paths given" in os_error_message(PermissionError(13, "denied", "/x"))


@pytest.mark.parametrize(
    ("error", "present", "absent"),
    [
        (
            ConfigurationError("cannot lock /x: denied; set lock_dir= (or OHIP_LOCK_DIR) to a dir"),
            "--lock-dir",
            "lock_dir=",
        ),
        (
            ConsumerAlreadyRunningError(
                "stream s already has a consumer: stop that process, or run this one with "
                "standby=True to take over when it stops"
            ),
            "stop that process",
            "standby=True",
        ),
        (
            AuthenticationError("the TLS certificate of h is not trusted: pass verify= with a CA"),
            "--ca-file",
            "verify=",
        ),
        (ConfigurationError("app_key is required: the application key"), "OHIP_APP_KEY", "app_key"),
        (
            ConfigurationError("NewEventInput.chainCode 'A!' does not match the pattern"),
            "--chain-code",
            "NewEventInput",
        ),
        (
            AuthenticationError(
                "HTTP 401: invalid_client; check the client id and secret (and the username and "
                "password for the password grant)"
            ),
            "OHIP_APP_KEY",
            "check the client id and secret",
        ),
    ],
)
def test_library_keywords_become_flags_and_variables(
    error: Exception, present: str, absent: str
) -> None:
    text = cli_message(error)
    assert present in text
    assert absent not in text


def test_a_wrong_app_key_points_at_the_app_key(
    configured: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OHIP_APP_KEY", "00000000-0000-4000-8000-000000000000")
    code, _, err = run(["tail", "-q"], capsys)
    assert code == 1
    line = one_error(err)
    assert "OHIP_APP_KEY" in line
    assert "client id and secret" not in line


def test_a_lock_dir_that_is_a_file_names_the_flag(
    configured: Emulator,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv("OHIP_LOCK_DIR", str(blocker / "locks"))
    code, _, err = run(["tail", "-q"], capsys)
    assert code in (1, 2)
    line = one_error(err)
    assert "--lock-dir" in line
    assert "lock_dir=" not in line


def test_a_port_out_of_range_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["emulator", "--port", "99999", "--no-env-file"], capsys)
    assert code == 2
    line = one_error(err)
    assert "--port" in line
    assert "unexpected" not in line


def test_a_port_in_use_says_so_and_how_to_fix_it(capsys: pytest.CaptureFixture[str]) -> None:
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, _, err = run(["emulator", "--port", str(port), "--no-env-file"], capsys)
    assert code == 2
    line = one_error(err)
    assert "in use" in line
    assert "--port" in line
    assert "check the paths given" not in line


def test_a_checkpoint_store_error_is_shown_as_the_store_says(
    configured: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("ohip-checkpoints.db").write_text("not a database")

    def broken(self: SQLiteCheckpointStore, stream_id: str) -> Checkpoint | None:
        raise CheckpointError(f"{self.path} is not a SQLite database: pass another file")

    monkeypatch.setattr(SQLiteCheckpointStore, "load_sync", broken)
    code, _, err = run(["checkpoint", "show"], capsys)
    assert code == 1
    line = one_error(err)
    assert "is not a SQLite database: pass another file" in line
    assert "check the path is writable" not in line


# --- offsets ----------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["99999999999999999999999", "١٢", "²", "-1", "1e3", ""])
def test_checkpoint_set_refuses_what_is_not_an_offset(
    configured: Emulator, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["checkpoint", "set", "--", bad], capsys)
    assert code == 2
    assert "1 to 20 ASCII digits" in one_error(err)
    assert not Path("ohip-checkpoints.db").exists()


@pytest.mark.parametrize("bad", ["99999999999999999999999", "١٢", "²"])
def test_replay_refuses_what_is_not_an_offset(
    configured: Emulator, bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["replay", "--from-offset", bad], capsys)
    assert code == 2
    assert "--from-offset" in one_error(err)


def test_a_bad_stored_offset_says_where_it_came_from(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    stream_id = stream_id_for(configured.gateway_url, configured.chain_code, configured.app_key)
    store = SQLiteCheckpointStore("ohip-checkpoints.db")
    store.save_sync(stream_id, Checkpoint(offset="9" * 23, updated_at=1.0))
    store.close()
    code, _, err = run(["tail", "-q"], capsys)
    assert code == 2
    line = one_error(err)
    assert "checkpoint set" in line
    assert "checkpoint clear" in line
    assert "ohip-checkpoints.db" in line


def test_the_largest_offset_is_accepted(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["checkpoint", "set", "18446744073709551615"], capsys)
    assert code == 0
    assert "18446744073709551615" in out


# --- checkpoint show --------------------------------------------------------------------------


def test_show_json_has_one_shape_with_or_without_a_checkpoint(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run(["checkpoint", "show", "--json"], capsys)
    assert code == 0
    without = json.loads(out)
    run(["checkpoint", "set", "7"], capsys)
    _, out, _ = run(["checkpoint", "show", "--json"], capsys)
    with_one = json.loads(out)
    assert set(without) == set(with_one) == set(_checkpoint.ROW_KEYS)
    assert without["offset"] is None
    assert with_one["offset"] == "7"
    assert with_one["chain_code"] == "OHIPCN"
    assert with_one["gateway_host"] == configured.gateway_url.split("//", 1)[1]
    _, out, _ = run(["checkpoint", "show", "--all", "--json"], capsys)
    assert set(json.loads(out.splitlines()[0])) == set(_checkpoint.ROW_KEYS)


def test_show_all_shows_host_and_chain_when_the_store_keeps_them(
    configured: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    Path("ohip-checkpoints.db").touch()
    kept = SimpleNamespace(
        offset="12",
        unique_event_id=None,
        completed_at=None,
        updated_at=1.0,
        gateway_host="gw.example.com",
        chain_code="CHAINB",
    )
    monkeypatch.setattr(SQLiteCheckpointStore, "list_sync", lambda self: {"abc123": kept})
    code, out, _ = run(["checkpoint", "show", "--all"], capsys)
    assert code == 0
    assert "stream abc123 (gw.example.com, chain CHAINB): offset 12" in out
    _, out, _ = run(["checkpoint", "show", "--all", "--json"], capsys)
    row = json.loads(out)
    assert (row["gateway_host"], row["chain_code"]) == ("gw.example.com", "CHAINB")


# --- python -m --------------------------------------------------------------------------------


def test_python_dash_m_ohip_stream_testing_is_the_emulator_command(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ohip_stream.testing.__main__ import main

    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for option in ("--port", "--rate", "--env-file", "--no-env-file", "--first-offset"):
        assert option in out

    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "aiohttp" else real(name, *a),
    )
    assert main(["--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "Traceback" not in err
    assert "ohip-stream[cli,emulator]" in err


# --- tail: the table, the start line, -v ------------------------------------------------------


def test_tail_on_a_terminal_prints_a_table(
    configured: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    configured.publish_sync(3)
    monkeypatch.setattr(_consume, "_is_terminal", lambda: True)
    code, out, _ = run(["tail", "-q", "--max-events", "2"], capsys)
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["time", "offset", "module"]
    assert not any(line.startswith("{") for line in lines)
    assert len(lines) >= 3
    code, out, _ = run(["tail", "-q", "--max-events", "1", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["metadata"]["offset"] == "3"


def test_tail_starts_with_one_line_saying_where_it_resumes(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    configured.publish_sync(4)
    host = configured.gateway_url.split("//", 1)[1]
    code, _, err = run(["tail", "--max-events", "2"], capsys)
    assert code == 0
    starts = [line for line in err.splitlines() if line.startswith("ohip-stream: tail ")]
    assert len(starts) == 1, err
    first = starts[0]
    assert host in first
    assert "chain OHIPCN" in first
    assert "server position" in first
    assert "ohip-checkpoints.db" in first
    code, _, err = run(["tail", "--max-events", "1"], capsys)
    assert "ohip-stream: tail " in err
    assert "resuming after offset 2," in err


def test_verbose_is_the_librarys_lifecycle_not_debug(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    configured.publish_sync(2)
    code, _, err = run(["-v", "tail", "--max-events", "1"], capsys)
    assert code == 0
    assert " INFO " in err
    assert "DEBUG" not in err
    assert all(" INFO " not in line or " ohip_stream" in line for line in err.splitlines()), err


# --- the status line --------------------------------------------------------------------------


class FakeStream:
    def __init__(self, state: str | None = None, waiting: Any = None) -> None:
        self.stats = StreamStats()
        if state is not None:
            self.state = SimpleNamespace(value=state)
        self.waiting = waiting


def test_the_status_line_shows_what_it_waits_for_with_a_countdown() -> None:
    waiting = SimpleNamespace(reason="lockout", until=1_000_130.4, detail="4409 stream in use")
    stream = FakeStream("waiting", waiting)
    line = StatusLine(stream, clock=lambda: 1_000_000.0, monotonic=lambda: 5.0).line()
    assert "waiting" in line
    assert "lockout" in line
    assert "130 s left" in line
    assert "4409 stream in use" in line


@pytest.mark.parametrize("reason", ["gap", "lockout", "budget", "backoff", "rate_limited"])
def test_every_wait_has_words(reason: str) -> None:
    text = waiting_text(SimpleNamespace(reason=reason, until=15.0, detail=None), 10.0)
    assert "5 s left" in text
    assert reason.replace("_", " ") not in ("", text)


def test_never_reconnecting_before_the_first_connection() -> None:
    stream = FakeStream()
    status = StatusLine(stream)
    assert status.state() == "connecting"
    stream.stats.connected_since = 1.0
    assert status.state() == "live"
    stream.stats.connected_since = None
    assert status.state() == "reconnecting"
    assert StatusLine(FakeStream("connecting")).state() == "connecting"


def test_one_event_is_singular_and_the_final_rate_is_the_average() -> None:
    assert plural(1, "event") == "1 event"
    assert plural(0, "event") == "0 events"
    now = [0.0]
    stream = FakeStream("live")
    status = StatusLine(stream, monotonic=lambda: now[0])
    stream.stats.events = 1
    now[0] = 1.0
    assert "1 event (" in status.line()
    stream.stats.events = 10
    now[0] = 10.0  # 9 events in the last 9 s, 10 over the run of 10 s
    now[0] = 10.0
    status.line()
    stream.stats.events = 30
    now[0] = 11.0  # the last interval: 20/s; the run: 30 over 11 s
    final = status.line(final=True)
    assert "(2.7/s on average)" in final


def test_a_guard_held_checkpoint_set_is_one_line(
    configured: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream_id = stream_id_for(configured.gateway_url, configured.chain_code, configured.app_key)
    with StreamGuard(stream_id, lock_dir=tmp_path / "locks"):
        code, _, err = run(["checkpoint", "set", "5"], capsys)
    assert code == 1
    assert "standby=True" not in one_error(err)


def test_a_long_wait_is_reported_every_ten_seconds_then_every_second() -> None:
    import io

    now = [1000.0]
    waiting = SimpleNamespace(reason="lockout", until=1120.0, detail=None)
    out = io.StringIO()
    status = StatusLine(FakeStream("waiting", waiting), out, clock=lambda: now[0])
    for second in range(121):
        now[0] = 1000.0 + second
        status.report()
    lines = out.getvalue().splitlines()
    assert 20 <= len(lines) <= 25  # 11 steps of 10 s, then 10 of a second
    assert "1 s left" in lines[-1] or "0 s left" in lines[-1]
