"""Fixtures every test gets."""

from __future__ import annotations

from collections.abc import Iterator

import hypothesis  # noqa: F401  (see below)
import pytest

from ohip_stream import _logging

# hypothesis is imported here, at start-up, although only some test files use it: its pytest
# plugin otherwise imports it in the terminal summary, and a run that collected none of those
# files (one chaos file, say) then compiles it at the end, where CPython 3.11.7's compiler was
# seen to fail ("AST constructor recursion depth mismatch") after a ten-minute chaos run.


@pytest.fixture(autouse=True)
def _restore_the_redaction_registry() -> Iterator[None]:
    """Each test leaves the redaction registry as it found it.

    Tests register random application keys, secrets and tokens (property tests register any
    text of three characters or more); left there, a value such as ``"ent"`` would be redacted
    from the log lines and messages of every later test.
    """
    with _logging.registry_kept():
        yield
