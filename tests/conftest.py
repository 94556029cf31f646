"""Fixtures every test gets."""

from __future__ import annotations

import os
from collections.abc import Iterator

import hypothesis  # noqa: F401  (see below)
import pytest

from ohip_stream import _logging

# hypothesis is imported here, at start-up, although only some test files use it: its pytest
# plugin otherwise imports it in the terminal summary, and a run that collected none of those
# files (one chaos file, say) then compiles it at the end, where CPython 3.11.7's compiler was
# seen to fail ("AST constructor recursion depth mismatch") after a ten-minute chaos run.


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """``-n auto``: two workers per CPU, at most 8. Most tests wait on sockets, timers and
    child processes rather than compute (one worker per CPU kept the CPUs half idle)."""
    return min(8, 2 * (os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _restore_the_redaction_registry() -> Iterator[None]:
    """Each test leaves the redaction registry as it found it.

    Tests register random application keys, secrets and tokens (property tests register any
    text of three characters or more); left there, a value such as ``"ent"`` would be redacted
    from the log lines and messages of every later test.
    """
    with _logging.registry_kept():
        yield
