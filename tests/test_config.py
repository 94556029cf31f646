"""The stream's configuration, checked in the constructor: pure, no event loop."""

from __future__ import annotations

from typing import Any

import pytest

from ohip_stream import ConfigurationError, EventStream, StaticToken, Timings
from ohip_stream._logging import redact

KEY = "41ecd082-8997-4c69-af34-2f72b83645ff"


def make(**overrides: Any) -> EventStream:
    values: dict[str, Any] = {
        "gateway_url": "https://gw.example.com",
        "app_key": KEY,
        "chain_code": "OHIPCN",
        "auth": StaticToken("token-value"),
    }
    values.update(overrides)
    return EventStream(**values)


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"gateway_url": None}, "gateway_url is required"),
        ({"app_key": None}, "app_key is required"),
        ({"chain_code": 7}, "chain_code is required"),
        ({"auth": object()}, "auth must be a token provider"),
        ({"timings": {"lockout": 1}}, "timings must be a Timings"),
        ({"queue_size": True}, "queue_size must be a whole number"),
        ({"max_buffer_bytes": 10}, "max_buffer_bytes must be a whole number of at least"),
        ({"commit_interval": 0}, "commit_interval must be a positive number"),
        ({"on_offset_reset": "drop"}, "on_offset_reset must be 'deliver' or 'raise'"),
        ({"first_contact_tries": 0}, "first_contact_tries"),
        ({"offset": 193}, "offset must be a string of digits"),
        ({"offset": "12345678901234567890123"}, "offset"),
        ({"proxy": "socks5://proxy:1080"}, "proxy"),
        ({"dedup_window": 10, "queue_size": 100}, "dedup_window"),
    ],
)
def test_a_bad_option_is_refused_by_name(overrides: dict[str, Any], fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        make(**overrides)


def test_a_proxy_password_never_appears_in_the_error() -> None:
    with pytest.raises(ConfigurationError) as info:
        make(proxy="socks5://user:pr0xy-Pa55@proxy:1080")
    assert "pr0xy-Pa55" not in str(info.value)
    assert "pr0xy-Pa55" not in redact("pr0xy-Pa55 in a log line")


def test_good_options_are_kept_and_derived() -> None:
    stream = make(
        timings=Timings(ping_interval=5),
        proxy="http://user:pw-secret-1@proxy.example:3128",
        hotel_codes=["H1", "H2"],
        gateway_url="https://GW.example.com:443/",
    )
    config = stream._config
    assert config.url.startswith("wss://GW.example.com:443/subscriptions?key=")
    assert config.gateway.netloc == "gw.example.com"
    assert config.filtered is True
    assert config.dedup_window == 10_000
    assert stream.timings.ping_interval == 5
    assert "pw-secret-1" not in repr(stream)
