"""EventStream configuration is checked in the constructor, before any network I/O."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from ohip_stream import (
    AccessToken,
    ConfigurationError,
    ConsumerAlreadyRunningError,
    EventStream,
    StaticToken,
    Timings,
)
from ohip_stream._session import rotation_deadline
from ohip_stream._stream import stream_id_for

KEY = "41ecd082-8997-4c69-af34-2f72b83645ff"


def make(tmp_path: Path, **overrides: Any) -> EventStream:
    values: dict[str, Any] = {
        "gateway_url": "https://gw.example.com",
        "app_key": KEY,
        "chain_code": "OHIPCN",
        "auth": StaticToken("token-value"),
        "lock_dir": tmp_path,
    }
    values.update(overrides)
    return EventStream(**values)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"chain_code": "A!"}, "chainCode 'A!'"),
        ({"offset": "12a"}, "offset '12a'"),
        ({"offset": "1", "start_at_highest": True}, "mutually exclusive"),
        ({"hotel_codes": ["H;1"]}, "hotelCode"),
        ({"gateway_url": "ftp://x"}, "gateway_url"),
        ({"gateway_url": "http://gw.example.com"}, "allow_insecure"),
        ({"queue_size": 0}, "queue_size"),
        ({"commit_every": 0}, "commit_every"),
        ({"max_message_size": 10}, "max_message_size"),
        ({"on_invalid": "drop"}, "on_invalid"),
        ({"guard_scope": "host"}, "guard_scope"),
        ({"dedup_window": 5}, "dedup_window"),
        ({"app_key": ""}, "app_key"),
        ({"ssl": "/nonexistent/ca.pem"}, "CA file"),
    ],
)
async def test_bad_configuration_is_refused_before_io(
    tmp_path: Path, overrides: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        make(tmp_path, **overrides)
    # Nothing was taken: the same stream can be opened with a good configuration.
    async with make(tmp_path):
        pass


async def test_plain_http_is_allowed_on_loopback_or_when_asked(tmp_path: Path) -> None:
    async with make(tmp_path, gateway_url="http://127.0.0.1:9"):
        pass
    async with make(tmp_path, gateway_url="http://gw.internal", allow_insecure=True):
        pass


async def test_second_consumer_of_a_stream_is_refused(tmp_path: Path) -> None:
    async with make(tmp_path) as first:
        with pytest.raises(ConsumerAlreadyRunningError):
            async with make(tmp_path):
                pass
        # Another chain on the same key is another stream.
        async with make(tmp_path, chain_code="OTHER"):
            pass
        assert first.stream_id == stream_id_for("https://GW.example.com:443/", "ohipcn", KEY)
    async with make(tmp_path):  # released on exit
        pass


async def test_guard_scope_app_key_locks_every_chain_of_the_key(tmp_path: Path) -> None:
    async with make(tmp_path, guard_scope="app_key"):
        with pytest.raises(ConsumerAlreadyRunningError, match="application key"):
            async with make(tmp_path, chain_code="OTHER", guard_scope="app_key"):
                pass


async def test_stream_id_is_safe_to_print(tmp_path: Path) -> None:
    stream = make(tmp_path)
    assert len(stream.stream_id) == 16
    assert KEY not in repr(stream)
    assert stream.stream_id in repr(stream)


def test_rotation_deadline_is_the_earlier_of_rotate_after_and_expiry_minus_margin() -> None:
    def deadline(token: AccessToken, margin: float = 0.0, renewable: bool = True) -> float | None:
        return rotation_deadline(token, rotate_after=3000.0, margin=margin, renewable=renewable)

    # rotate_after (3000 s) comes first for a 1-hour token.
    assert deadline(AccessToken("t", 1000.0, 4600.0)) == 4000.0
    # A 10-minute token: expiry first (minus the margin, at most half the lifetime).
    assert deadline(AccessToken("t", 1000.0, 1600.0)) == 1600.0
    assert deadline(AccessToken("t", 1000.0, 1600.0), margin=60.0) == 1540.0
    assert deadline(AccessToken("t", 1000.0, 1600.0), margin=1e6) == 1300.0
    # No expiry: never forced.
    assert deadline(AccessToken("t", 1000.0, None)) is None
    # A token the provider cannot renew is used until the gateway refuses it.
    assert deadline(AccessToken("t", 1000.0, 4600.0), renewable=False) is None


async def test_streams_of_one_key_share_the_upgrade_budget(tmp_path: Path) -> None:
    timings = Timings(upgrade_budget=(2, 60.0))
    other_key = "99999999-8888-4777-8666-555555555555"
    async with (
        make(tmp_path, chain_code="CHAIN1", timings=timings) as first,
        make(tmp_path, chain_code="CHAIN2", timings=timings) as second,
        make(tmp_path, app_key=other_key, timings=timings) as third,
    ):
        budgets = [
            stream._connector.budget for stream in (first, second, third) if stream._connector
        ]
        assert len(budgets) == 3
        assert budgets[0] is budgets[1]
        assert budgets[2] is not budgets[0]
        now = time.monotonic()
        budgets[0].record(now)
        budgets[0].record(now)
        # Oracle counts upgrades per key: the other chain of the key must wait too.
        assert budgets[1].wait_time(now) > 0
        assert budgets[2].wait_time(now) == 0
