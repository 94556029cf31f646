"""``benchmarks/sinks.py`` keeps working: a tiny run, its JSON checked (no timed assertion: the
figures depend on the machine)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from helpers.services import import_or_skip, nats_url_or_skip, postgres_dsn_or_skip

SCRIPT = Path(__file__).resolve().parent.parent / "benchmarks" / "sinks.py"

pytestmark = pytest.mark.skipif(not SCRIPT.is_file(), reason="benchmarks/ is not distributed")


def test_the_sinks_benchmark_runs_every_contender() -> None:
    import_or_skip("aiohttp")
    dsn, url = postgres_dsn_or_skip(), nats_url_or_skip()
    completed = subprocess.run(
        [sys.executable, str(SCRIPT), "-n", "200", "--rounds", "1", "--batch-size", "50", "--json"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={**os.environ, "OHIP_TEST_POSTGRES_DSN": dsn, "OHIP_TEST_NATS_URL": url},
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert (result["n"], result["batch_size"]) == (200, 50)
    for name in ("postgres", "nats", "webhook"):
        row = result[name]
        assert row["events"] == 200
        assert row["sink_eps"] > 0
        assert row["by_hand_eps"] > 0
        # One round: the paired ratio of that round, which is the median of one.
        assert len(row["ratios"]) == 1
        assert row["sink_vs_hand"] == pytest.approx(row["ratios"][0], 0.01)
        assert row["sink_vs_hand"] == pytest.approx(row["sink_eps"] / row["by_hand_eps"], 0.01)
