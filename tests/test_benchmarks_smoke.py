"""The benchmarks keep working: each runs with a tiny N and its JSON is checked.

No timed assertions: the figures depend on the machine. Only the shape of the output and the
exactness (nothing lost, nothing handed out twice) are checked.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"

pytest.importorskip("aiohttp")
pytest.importorskip("psutil")

# Real benchmark runs (seconds each): with the slow tests, not in the default run.
pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not BENCHMARKS.is_dir(), reason="benchmarks/ is not part of this distribution"
    ),
]


def _run(script: str, *args: str, timeout: float = 90) -> dict[str, Any]:
    completed = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args, "--json"],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    last = completed.stdout.strip().splitlines()[-1]
    result: dict[str, Any] = json.loads(last)
    return result


def test_throughput_smoke() -> None:
    # with the window option: the only difference from a run with the default is this one value
    result = _run("throughput.py", "--events", "2000", "--rounds", "1", "--dedup-window", "2000")
    assert set(result) == {
        "n",
        "rounds",
        "dedup_window",
        "ceiling_eps",
        "floor_eps",
        "validate_eps",
        "gql_eps",
        "sdk_eps",
        "sdk_vs_gql",
        "sdk_vs_validate",
        "sdk_vs_floor",
        "sdk_vs_gql_paired",
        "sdk_vs_validate_paired",
        "paired_range",
        "samples",
        "cpu_us",
    }
    assert result["n"] == 2000
    assert result["rounds"] == 1
    assert result["dedup_window"] == 2000
    # every contender received all 2,000 events (the script raises otherwise) at some rate
    for key in (
        "ceiling_eps",
        "floor_eps",
        "validate_eps",
        "gql_eps",
        "sdk_eps",
    ):
        assert result[key] > 0
    assert result["sdk_vs_gql"] == pytest.approx(result["sdk_eps"] / result["gql_eps"], rel=0.01)
    # one round: the paired ratio is that round's ratio, which is the ratio of the medians
    assert result["sdk_vs_validate_paired"] == pytest.approx(result["sdk_vs_validate"], rel=0.01)
    assert result["sdk_vs_gql_paired"] == pytest.approx(result["sdk_vs_gql"], rel=0.01)
    # one round: its ratio is both the lowest and the highest
    for ratio in ("sdk_vs_gql", "sdk_vs_validate"):
        low, high = result["paired_range"][ratio]
        assert low == high == pytest.approx(result[f"{ratio}_paired"], abs=0.002)
    contenders = {"ceiling", "floor", "validate", "gql", "sdk"}
    assert set(result["samples"]) == set(result["cpu_us"]) == contenders
    for name in contenders:
        assert len(result["samples"][name]) == 1
        assert result["cpu_us"][name] > 0


def test_memory_smoke() -> None:
    result = _run("memory.py", "--events", "20000")
    assert result["n"] == 20000
    assert result["events"] == 20000
    assert result["lost"] == 0
    for key in ("rss_10_mb", "rss_50_mb", "rss_100_mb", "peak_rss_mb"):
        assert result[key] > 0
    assert result["peak_rss_mb"] >= result["rss_10_mb"]


def test_rotation_smoke() -> None:
    result = _run("rotation.py", "--rotations", "2")
    assert result["rotations"] >= 2
    assert result["lost"] == 0
    assert result["duplicated"] == 0
    assert result["pauses"] == result["rotations"]
    assert result["beyond_gap_max_s"] is not None
