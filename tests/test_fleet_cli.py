"""``ohip-stream fleet sync|status|release`` in-process, and ``fleet run`` as a real process that
stops cleanly on SIGTERM (every stream completes, drains, commits and releases its lease)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ohip_stream.fleet import open_lease_store
from ohip_stream.testing import Emulator

pytest.importorskip("typer")

from ohip_stream._cli._app import run

SECRET = "s3cr3t-never-printed"


def streams_file(
    tmp_path: Path, gateway: str, chains: list[str], *, enterprise: str = "ENT1"
) -> Path:
    lines = [
        "[environments.emu]",
        f'gateway_url = "{gateway}"',
        'client_id = "client"',
        f'enterprise_id = "{enterprise}"',
        'app_key_env = "FLEET_APP_KEY"',
        'client_secret_env = "FLEET_CLIENT_SECRET"',
    ]
    for chain in chains:
        lines += ["", "[[streams]]", 'environment = "emu"', f'chain_code = "{chain}"']
    path = tmp_path / "streams.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = run(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_sync_status_and_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = f"sqlite:///{tmp_path / 'fleet.db'}"
    path = streams_file(tmp_path, "https://api.example.com", ["C1", "C2"])
    code, out, err = cli(capsys, "fleet", "sync", str(path), "--database", db)
    assert (code, err) == (0, "")
    assert "2 added, 0 updated, 0 removed, 0 unchanged" in out
    code, out, _ = cli(capsys, "fleet", "sync", str(path), "--database", db)
    assert "0 added, 0 updated, 0 removed, 2 unchanged" in out

    async def claim() -> None:
        store = open_lease_store(db)
        await store.claim("emu:C1", "worker-a", 30)
        await store.aclose()

    asyncio.run(claim())
    code, out, _ = cli(capsys, "fleet", "status", "--database", db)
    assert code == 0
    header, first, second = out.splitlines()
    assert header.split() == [
        "STREAM",
        "CHAIN",
        "STATE",
        "OWNER",
        "EPOCH",
        "LEASE",
        "OFFSET",
        "AGE",
    ]
    assert first.split()[:5] == ["emu:C1", "C1", "owned", "worker-a", "1"]
    assert second.split()[:5] == ["emu:C2", "C2", "free", "-", "0"]
    code, out, _ = cli(capsys, "fleet", "status", "--database", db, "--json")
    rows = [json.loads(line) for line in out.splitlines()]
    assert set(rows[0]) == {
        "stream",
        "environment",
        "chain",
        "state",
        "owner",
        "epoch",
        "lease_left",
        "last_offset",
        "last_event_age",
    }
    assert 0 < rows[0]["lease_left"] <= 30
    code, out, _ = cli(capsys, "fleet", "release", "emu:C1", "--database", db)
    assert (code, out.strip()) == (
        0,
        "released emu:C1: epoch 2; its owner stops it at its next renewal",
    )
    code, _, err = cli(capsys, "fleet", "release", "emu:nope", "--database", db)
    assert code == 2
    assert "no stream named 'emu:nope'" in err


def test_sync_refuses_a_secret_in_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = streams_file(tmp_path, "https://api.example.com", ["C1"])
    path.write_text(
        path.read_text().replace(
            'client_id = "client"', f'client_id = "client"\nclient_secret = "{SECRET}"'
        )
    )
    code, out, err = cli(
        capsys, "fleet", "sync", str(path), "--database", f"sqlite:///{tmp_path / 'f.db'}"
    )
    assert code == 2
    assert "must not be in the file" in err
    assert SECRET not in out + err


def test_a_bad_database_url_names_the_schemes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = cli(capsys, "fleet", "status", "--database", "mysql://db/x")
    assert code == 2
    assert "sqlite:///" in err
    assert "postgresql://" in err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_fleet_run_prints_json_lines_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    pytest.importorskip("aiohttp")
    with Emulator(complete_gap=0.5) as emu:
        emu.publish_sync(2, chain_code="CA")
        emu.publish_sync(3, chain_code="CB")
        path = streams_file(tmp_path, emu.gateway_url, ["CA", "CB"], enterprise=emu.enterprise_id)
        path.write_text(path.read_text().replace('"client"', f'"{emu.client_id}"'))
        db = f"sqlite:///{tmp_path / 'fleet.db'}"
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            metrics_port = probe.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("OHIP_")}
        env.update(
            FLEET_APP_KEY=emu.app_key,
            FLEET_CLIENT_SECRET=emu.client_secret,
            PYTHONUNBUFFERED="1",
        )
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "ohip_stream",
                "fleet",
                "run",
                "--database",
                db,
                "--streams",
                str(path),
                "--lock-dir",
                str(tmp_path / "locks"),
                "--lease-time",
                "6",
                "--worker-id",
                "cli-worker",
                "--metrics-port",
                str(metrics_port),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        lines: list[dict[str, object]] = []
        try:
            assert proc.stdout is not None
            deadline = time.monotonic() + 30
            while len(lines) < 5 and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if line:
                    lines.append(json.loads(line))
            # The worker reports every stream it owns (the same signals as tail).
            metrics = httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text
            consumed = [
                line
                for line in metrics.splitlines()
                if line.startswith("messaging_client_consumed_messages_total{")
            ]
            assert {'messaging_destination_name="CA"' in line for line in consumed} == {
                True,
                False,
            }
            proc.send_signal(signal.SIGTERM)
            out, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        assert proc.returncode == 0, err
        by_stream: dict[str, list[str]] = {}
        for item in lines:
            event = item["event"]
            assert isinstance(event, dict)
            by_stream.setdefault(str(item["stream"]), []).append(event["metadata"]["offset"])
        assert by_stream == {"emu:CA": ["1", "2"], "emu:CB": ["1", "2", "3"]}
        assert emu.client_secret not in out + err
        assert emu.app_key not in out + err
        # Every subscription was completed by the client before its socket closed.
        assert all("complete" in {t for _, t in r.client_messages} for r in emu.connections)

    async def leases() -> list[object]:
        store = open_lease_store(db)
        try:
            return [lease.owner for lease in await store.leases()]
        finally:
            await store.aclose()

    assert asyncio.run(leases()) == [None, None]
