from __future__ import annotations

import logging

import pytest

from ohip_stream._logging import REDACTED, get_logger, redact, register_secret
from ohip_stream._protocol import hash_app_key


@pytest.mark.parametrize(
    ("text", "secret"),
    [
        ("Authorization: Bearer abc.def.ghi", "abc.def.ghi"),
        ("Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
        ("GET /subscriptions?key=" + "a" * 64 + " HTTP/1.1", "a" * 64),
        ('{"x-app-key": "raw-key-123"}', "raw-key-123"),
        ("client_secret=shh&grant_type=x", "shh"),
        ("token eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln here", "eyJhbGciOi.eyJzdWIiOiJ4In0.c2ln"),
    ],
)
def test_secret_shapes_are_redacted(text: str, secret: str) -> None:
    cleaned = redact(text)
    assert secret not in cleaned
    assert REDACTED in cleaned


def test_registered_secrets_and_their_hash_are_redacted_in_records(
    caplog: pytest.LogCaptureFixture,
) -> None:
    key = "41ecd082-8997-4c69-af34-2f72b83645ff"
    register_secret(key, hash_app_key(key), None, "")
    logger = get_logger("ohip_stream.test_logging")
    with caplog.at_level(logging.DEBUG, logger="ohip_stream"):
        logger.info("connecting with %s and %s", key, hash_app_key(key))
    assert key not in caplog.text
    assert hash_app_key(key) not in caplog.text
    assert caplog.text.count(REDACTED) == 2


def test_variable_names_are_not_mistaken_for_values() -> None:
    text = "missing OHIP_CLIENT_SECRET: set it in the environment"
    assert redact(text) == text
