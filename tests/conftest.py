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
    with _logging.registry_kept():
        yield
