"""Fixtures every test gets."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ohip_stream import _logging


@pytest.fixture(autouse=True)
def _restore_the_redaction_registry() -> Iterator[None]:
    """Each test leaves the redaction registry as it found it.

    Tests register random application keys, secrets and tokens (property tests register any
    text of three characters or more); left there, a value such as ``"ent"`` would be redacted
    from the log lines and messages of every later test.
    """
    saved = (set(_logging._secrets), dict(_logging._transient), _logging._ordered_secrets)
    yield
    _logging._secrets.clear()
    _logging._secrets.update(saved[0])
    _logging._transient.clear()
    _logging._transient.update(saved[1])
    _logging._ordered_secrets = saved[2]
