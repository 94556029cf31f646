"""Gateway addresses and stream identity: pure, no event loop."""

from __future__ import annotations

import ssl
from pathlib import Path

import pytest

from ohip_stream import ConfigurationError
from ohip_stream._logging import redact
from ohip_stream._net import (
    is_loopback,
    legacy_stream_id,
    parse_gateway,
    refuse_plain_http,
    stream_id_for,
    subscription_url,
    tls_context,
)

KEY = "0f5e4a2c-1111-4222-8333-444455556666"


def test_host_aliases_give_one_stream_id() -> None:
    ids = {
        stream_id_for(url, "OHIPCN", KEY)
        for url in (
            "http://127.0.0.1:8080",
            "http://localhost:8080",
            "http://LOCALHOST.:8080/",
            "ws://127.0.0.1:8080",
        )
    }
    assert len(ids) == 1
    assert stream_id_for("https://gw.example.com", "ohipcn ", f" {KEY}") == stream_id_for(
        "https://GW.example.com:443/", "OHIPCN", KEY
    )
    # Another port, another chain, another key: another stream.
    assert stream_id_for("http://127.0.0.1:8081", "OHIPCN", KEY) not in ids
    assert stream_id_for("http://127.0.0.1:8080", "OTHER", KEY) not in ids


def test_the_id_an_earlier_release_gave_localhost_is_known() -> None:
    old = legacy_stream_id("http://localhost:8080", "OHIPCN", KEY)
    assert old is not None
    assert old != stream_id_for("http://localhost:8080", "OHIPCN", KEY)
    assert legacy_stream_id("https://gw.example.com", "OHIPCN", KEY) is None


def test_the_subscription_url_carries_only_the_key_hash() -> None:
    url = subscription_url("https://gw.example.com/prefix/", "ABC-123")
    assert url == (
        "wss://gw.example.com/prefix/subscriptions"
        "?key=4d156d7bc9c38c000aa1e5b06e46e1f40cafe651f3cabfae9bad48803baf17bf"
    )


@pytest.mark.parametrize(
    ("url", "fragment"),
    [
        (None, "gateway_url is required"),
        ("", "gateway_url is required"),
        ("ftp://gw", "scheme 'ftp'"),
        ("https://gw:99999", "not a valid URL"),
        ("https://gw/?a=1", "query or fragment"),
    ],
)
def test_bad_gateway_urls_name_the_option(url: object, fragment: str) -> None:
    with pytest.raises(ConfigurationError, match=fragment):
        parse_gateway(url)


def test_credentials_in_the_gateway_url_are_refused_and_never_shown() -> None:
    with pytest.raises(ConfigurationError) as info:
        parse_gateway("https://user:hunter2-secret@gw.example.com")
    assert "hunter2-secret" not in str(info.value)
    assert "hunter2-secret" not in redact("password is hunter2-secret")


def test_plain_http_only_to_this_machine_unless_allowed() -> None:
    refuse_plain_http(parse_gateway("http://127.0.0.1:1"), allow_insecure=False, what="tokens")
    refuse_plain_http(parse_gateway("http://[::1]:1"), allow_insecure=False, what="tokens")
    refuse_plain_http(parse_gateway("http://gw.internal"), allow_insecure=True, what="tokens")
    with pytest.raises(ConfigurationError, match="tokens would cross the network"):
        refuse_plain_http(parse_gateway("http://gw.internal"), allow_insecure=False, what="tokens")
    assert is_loopback("localhost")
    assert not is_loopback("10.0.0.1")


def test_tls_contexts_verify_and_name_the_option(tmp_path: Path) -> None:
    assert tls_context(None, name="ssl").verify_mode is ssl.CERT_REQUIRED
    given = ssl.create_default_context()
    assert tls_context(given, name="ssl") is given
    with pytest.raises(ConfigurationError, match=r"ssl: the CA file .* does not exist"):
        tls_context(tmp_path / "missing.pem", name="ssl")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(ConfigurationError, match="verify=: cannot load the CA file"):
        tls_context(garbage, name="verify=")
