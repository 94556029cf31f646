"""The command line in-process: ``main(argv)`` against an emulator in its own thread."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ohip_stream import cli
from ohip_stream._checkpoints import SQLiteCheckpointStore
from ohip_stream._guard import StreamGuard
from ohip_stream._protocol import hash_app_key
from ohip_stream._stream import stream_id_for

pytest.importorskip("typer")
pytest.importorskip("aiohttp")

from ohip_stream.testing import Emulator

# Short waits for tests (the emulator's gap is shorter than the client's).
FAST_TIMINGS = {
    "OHIP_TIMINGS__COMPLETE_GAP": "0.3",
    "OHIP_TIMINGS__DROP_WAIT": "0.2",
    "OHIP_TIMINGS__BACKOFF_MIN": "0.05",
    "OHIP_TIMINGS__BACKOFF_MAX": "0.5",
    "OHIP_TIMINGS__LOCKOUT": "0.5",
    "OHIP_TIMINGS__DRAIN_TIMEOUT": "3",
}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No OHIP_* variable, no .env, and a private lock directory for every test."""
    for name in list(os.environ):
        if name.startswith("OHIP_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OHIP_LOCK_DIR", str(tmp_path / "locks"))


@pytest.fixture
def emu() -> Iterator[Emulator]:
    emulator = Emulator(complete_gap=0.2)
    emulator.start()
    try:
        yield emulator
    finally:
        emulator.stop()


@pytest.fixture
def configured(emu: Emulator, monkeypatch: pytest.MonkeyPatch) -> Emulator:
    for name, value in {**emu.env(), **FAST_TIMINGS}.items():
        monkeypatch.setenv(name, value)
    return emu


def run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("ohip-stream: error:")]


def assert_one_error(err: str, *needles: str) -> str:
    assert "Traceback" not in err
    lines = error_lines(err)
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def offsets(out: str) -> list[int]:
    return [int(json.loads(line)["metadata"]["offset"]) for line in out.splitlines() if line]


# --- the basics -------------------------------------------------------------------------------


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    from ohip_stream import __version__

    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"ohip-stream {__version__}"


def test_help_lists_the_commands(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["--help"], capsys)
    assert code == 0
    for command in ("demo", "tail", "replay", "checkpoint", "emulator"):
        assert command in out


def test_usage_error_is_one_line_and_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["tail", "--no-such-flag"], capsys)
    assert code == 2
    assert_one_error(err, "--no-such-flag")
    assert err.count("\n") == 1


def test_without_the_cli_extra_one_line_and_exit_2(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "typer" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    with pytest.raises(SystemExit) as exited:
        cli.entry_point()
    assert exited.value.code == 2
    _, err = capsys.readouterr()
    assert err == (
        'ohip-stream: the command line needs the cli extra: pip install "ohip-stream[cli]"\n'
    )


@pytest.mark.parametrize("command", [["demo"], ["emulator", "--port", "0"]])
def test_without_the_emulator_extra_one_line_and_exit_2(
    command: list[str], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, *args: Any) -> Any:
        return None if name == "aiohttp" else real(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    code, _, err = run(command, capsys)
    assert code == 2
    assert err.count("\n") == 1
    assert 'pip install "ohip-stream[cli,emulator]"' in err


# --- expected errors: one line, exit 2 (configuration) or 1 (runtime) --------------------------


def test_missing_gateway_url(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["tail"], capsys)
    assert code == 2
    assert out == ""
    assert_one_error(err, "OHIP_GATEWAY_URL")
    assert err.count("\n") == 1
    assert not Path("ohip-checkpoints.db").exists()


def test_missing_gateway_url_only(
    configured: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("OHIP_GATEWAY_URL")
    code, _, err = run(["tail"], capsys)
    assert code == 2
    line = assert_one_error(err, "missing OHIP_GATEWAY_URL")
    assert "OHIP_APP_KEY" not in line


def test_bad_chain_code(configured: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    monkeypatch.setenv("OHIP_CHAIN_CODE", "A!")
    code, _, err = run(["tail"], capsys)
    assert code == 2
    assert_one_error(err, "--chain-code", "OHIP_CHAIN_CODE", "'A!'")


def test_bad_timing_value(
    configured: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.setenv("OHIP_TIMINGS__PING_INTERVAL", "99")
    code, _, err = run(["tail"], capsys)
    assert code == 2
    assert_one_error(err, "ping_interval")


def test_bad_offset_flag(configured: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["tail", "--from-offset", "abc"], capsys)
    assert code == 2
    assert_one_error(err, "--from-offset")


def test_missing_env_file(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["tail", "--env-file", "nowhere.env"], capsys)
    assert code == 2
    assert_one_error(err, "nowhere.env")


def test_wrong_secret_is_authentication_refused(
    configured: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OHIP_CLIENT_SECRET", "not-the-secret")
    code, out, err = run(["tail"], capsys)
    assert code == 1
    assert out == ""
    assert_one_error(err)
    assert "not-the-secret" not in err


def test_revoked_credentials_are_authentication_refused(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    asyncio.run(configured.revoke_credentials())
    code, _, err = run(["tail"], capsys)
    assert code == 1
    line = assert_one_error(err)
    assert "auth" in line.lower() or "401" in line or "refused" in line.lower()
    assert configured.client_secret not in err


def test_connection_rejected(configured: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(configured.reject_upgrades(400, 20))
    code, _, err = run(["tail"], capsys)
    assert code == 1
    assert_one_error(err, "400")


def test_consumer_already_running(
    configured: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stream_id = stream_id_for(configured.gateway_url, configured.chain_code, configured.app_key)
    with StreamGuard(stream_id, lock_dir=tmp_path / "locks"):
        code, _, err = run(["tail"], capsys)
        assert code == 1
        assert_one_error(err, "already has a consumer")
        code, _, err = run(["replay", "--from-offset", "1"], capsys)
        assert code == 1
        assert_one_error(err, "already has a consumer")
        code, _, err = run(["checkpoint", "set", "5"], capsys)
        assert code == 1
        assert_one_error(err, "already has a consumer")


# --- tail, replay, checkpoint -----------------------------------------------------------------


def test_tail_max_events_then_continue(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    configured.publish_sync(12)
    code, out, err = run(["tail", "--max-events", "5"], capsys)
    assert code == 0, err
    first = offsets(out)
    assert first == list(range(first[0], first[0] + 5))
    assert "ohip-stream:" in err  # the status line
    assert Path("ohip-checkpoints.db").is_file()

    code, out, _ = run(["tail", "--max-events", "5", "-q"], capsys)
    assert code == 0
    assert offsets(out) == list(range(first[-1] + 1, first[-1] + 6))

    code, out, _ = run(["checkpoint", "show", "--json"], capsys)
    assert code == 0
    assert json.loads(out)["offset"] == str(first[-1] + 5)


def test_tail_filters_count_as_processed(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    from ohip_stream.testing import make_event

    events = [
        make_event("PROFILE", "NEW PROFILE", hotel_id=None),
        make_event("RESERVATION", "CHECK IN", hotel_id="HOTEL2"),
        make_event("RESERVATION", "CHECK IN", hotel_id="HOTEL1"),
        make_event("RESERVATION", "NEW RESERVATION", hotel_id="HOTEL1"),
        make_event("RESERVATION", "CHECK IN", hotel_id="hotel1"),
    ]
    published = [int(o) for o in configured.publish_sync(events=events)]
    argv = ["tail", "-q", "--module", "reservation", "--event", "check in", "--hotel", "Hotel1"]
    code, out, _ = run([*argv, "--max-events", "2"], capsys)
    assert code == 0
    assert offsets(out) == [published[2], published[4]]
    code, out, _ = run(["checkpoint", "show", "--json"], capsys)
    assert json.loads(out)["offset"] == str(published[4])


def test_tail_from_offset_overrides_the_checkpoint_for_this_run(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    published = [int(o) for o in configured.publish_sync(10)]
    code, out, _ = run(["tail", "-q", "--max-events", "6"], capsys)
    assert code == 0
    code, out, _ = run(["tail", "-q", "--max-events", "2", "--from-offset", "2"], capsys)
    assert code == 0
    assert offsets(out) == [2, 3]
    assert published[0] == 1


def test_replay_prints_a_range_and_never_writes_the_checkpoint(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    configured.publish_sync(15)
    code, _, _ = run(["tail", "-q", "--max-events", "3"], capsys)
    assert code == 0
    store = SQLiteCheckpointStore("ohip-checkpoints.db")
    stream_id = stream_id_for(configured.gateway_url, configured.chain_code, configured.app_key)
    before = store.load_sync(stream_id)
    store.close()

    code, out, err = run(["replay", "--from-offset", "5", "--to-offset", "9"], capsys)
    assert code == 0, err
    assert offsets(out) == [5, 6, 7, 8, 9]
    code, out, _ = run(["replay", "--from-offset", "12", "--idle-timeout", "0.5"], capsys)
    assert code == 0
    assert offsets(out) == [12, 13, 14, 15]

    store = SQLiteCheckpointStore("ohip-checkpoints.db")
    assert store.load_sync(stream_id) == before
    store.close()


def test_replay_to_below_from_is_a_usage_error(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(["replay", "--from-offset", "9", "--to-offset", "3"], capsys)
    assert code == 2
    assert_one_error(err, "--to-offset")


def test_checkpoint_show_set_clear(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    stream_id = stream_id_for(configured.gateway_url, configured.chain_code, configured.app_key)
    host = configured.gateway_url.split("//", 1)[1]
    code, out, _ = run(["checkpoint", "show"], capsys)
    assert code == 0
    assert f"stream {stream_id} ({host}, chain OHIPCN): no checkpoint" in out

    code, out, _ = run(["checkpoint", "set", "41"], capsys)
    assert code == 0
    code, out, _ = run(["checkpoint", "show", "--json"], capsys)
    row = json.loads(out)
    assert row["stream_id"] == stream_id
    assert row["offset"] == "41"
    code, out, _ = run(["checkpoint", "show", "--all"], capsys)
    assert code == 0
    assert f"stream {stream_id}" in out
    assert "offset 41" in out

    configured.publish_sync(44)
    code, out, _ = run(["tail", "-q", "--max-events", "2"], capsys)
    assert offsets(out) == [42, 43]

    code, out, _ = run(["checkpoint", "clear"], capsys)
    assert code == 0
    assert "cleared" in out
    code, out, _ = run(["checkpoint", "show", "--json"], capsys)
    assert json.loads(out)["offset"] is None

    code, _, err = run(["checkpoint", "set", "x1"], capsys)
    assert code == 2
    assert_one_error(err, "OFFSET")


def test_checkpoint_db_flag_and_variable(
    configured: Emulator,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("OHIP_CHECKPOINT_DB", str(tmp_path / "env.db"))
    assert run(["checkpoint", "set", "7"], capsys)[0] == 0
    assert (tmp_path / "env.db").is_file()
    assert run(["checkpoint", "set", "8", "--checkpoint-db", "flag.db"], capsys)[0] == 0
    assert (tmp_path / "flag.db").is_file()
    assert not (tmp_path / "ohip-checkpoints.db").exists()


def test_env_file_configures_everything(
    emu: Emulator, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    emu.write_env_file(tmp_path / ".env")
    emu.publish_sync(3)
    code, out, err = run(["tail", "-q", "--max-events", "3"], capsys)
    assert code == 0, err
    assert offsets(out) == [1, 2, 3]


def test_double_verbose_shows_debug_logs_and_no_secret(
    configured: Emulator, capsys: pytest.CaptureFixture[str]
) -> None:
    configured.publish_sync(4)
    code, out, err = run(["-vv", "tail", "--max-events", "3"], capsys)
    assert code == 0
    assert "DEBUG" in err
    everything = out + err
    token = asyncio.run(configured.issue_token())
    for secret in (
        configured.client_secret,
        configured.app_key,
        hash_app_key(configured.app_key),
        configured.password,
        token,
    ):
        assert secret not in everything
    assert "eyJ" not in everything  # no JWT-shaped token

    asyncio.run(configured.revoke_credentials())
    code, out, err = run(["tail", "--verbose"], capsys)
    assert code == 1
    assert len(error_lines(err)) == 1
    for secret in (configured.client_secret, configured.app_key, configured.password):
        assert secret not in out + err


# --- the demo ---------------------------------------------------------------------------------


def test_demo_short_run(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(["demo", "--events", "30", "--seconds", "3"], capsys)
    assert code == 0, out + err
    assert "lost: 0" in out
    assert "received: 30" in out
    assert "compressed" in out
    assert "rotations: " in out
    assert "Traceback" not in out + err


def test_demo_json(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(["demo", "--json", "--events", "20", "--seconds", "2"], capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    summary = records[-1]["summary"]
    events = records[:-1]
    assert summary["lost"] == 0
    assert summary["received"] == summary["published"] == 20
    assert summary["delivered_twice"] == 0
    assert summary["reconnects"].get("1006", 0) >= 1
    assert [int(e["metadata"]["offset"]) for e in events] == list(range(1, 21))
    assert all("moduleName" in e and "eventName" in e for e in events)


def test_demo_bad_options(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(["demo", "--events", "0"], capsys)
    assert code == 2
    assert_one_error(err, "--events")


def test_a_closed_stdout_stops_cleanly_without_committing_the_unwritten_event(
    configured: Emulator, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import io
    import sys

    class Head(io.StringIO):
        """Like `| head -3`: the fourth line finds the pipe closed."""

        def write(self, text: str) -> int:
            if self.getvalue().count("\n") >= 3:
                raise BrokenPipeError(32, "Broken pipe")
            return super().write(text)

        def fileno(self) -> int:
            raise io.UnsupportedOperation("no file descriptor")

    configured.publish_sync(8)
    head = Head()
    captured = sys.stdout
    monkeypatch.setattr(sys, "stdout", head)
    assert cli.main(["tail", "-q"]) == 0
    assert offsets(head.getvalue()) == [1, 2, 3]
    monkeypatch.setattr(sys, "stdout", captured)
    code, out, _ = run(["tail", "-q", "--max-events", "2"], capsys)
    assert code == 0
    assert offsets(out) == [4, 5]


def test_tail_from_highest(configured: Emulator, capsys: pytest.CaptureFixture[str]) -> None:
    configured.publish_sync(5)
    code, out, _ = run(["tail", "-q", "--max-events", "1", "--from-highest"], capsys)
    assert code == 0
    assert offsets(out)[0] >= 5
    code, _, err = run(["tail", "--from-highest", "--from-offset", "2"], capsys)
    assert code == 2
    assert_one_error(err, "mutually exclusive")
