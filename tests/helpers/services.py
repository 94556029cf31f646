"""Real services the tests use (PostgreSQL), and what happens on a machine without them.

Without the service a test skips, with a reason that says how to run it. With
``OHIP_REQUIRE_SERVICES=1`` (CI) it fails instead: there, a skipped service test would hide a
broken setup.
"""

from __future__ import annotations

import functools
import importlib
import os
from typing import Any, NoReturn

import pytest

#: The development and CI database: trust authentication, database ``test``.
DEFAULT_POSTGRES_DSN = "postgresql://postgres@127.0.0.1:5432/test"

_HOW_TO_RUN = (
    "start PostgreSQL on 127.0.0.1:5432 with a database `test` the user `postgres` can reach "
    "without a password, or point OHIP_TEST_POSTGRES_DSN at one "
    "(postgresql://user@host:port/db), to run these tests"
)


def services_required() -> bool:
    """Whether a missing service fails the test instead of skipping it."""
    return os.environ.get("OHIP_REQUIRE_SERVICES") == "1"


def _unavailable(reason: str) -> NoReturn:
    if services_required():
        pytest.fail(f"{reason} (OHIP_REQUIRE_SERVICES=1: this service is required)", pytrace=False)
    pytest.skip(reason)


def import_or_skip(name: str) -> Any:
    """The module ``name`` (a service's client library); skip without it, or fail if required."""
    try:
        return importlib.import_module(name)
    except ImportError:
        _unavailable(f'{name} is not installed: pip install -e ".[fleet]" to run these tests')


def _server_of(dsn: str) -> str:
    """host:port/db of a DSN, without its password."""
    from psycopg.conninfo import conninfo_to_dict

    try:
        info = conninfo_to_dict(dsn)
    except Exception:
        return "(an unparsable OHIP_TEST_POSTGRES_DSN)"
    return f"{info.get('host', 'localhost')}:{info.get('port', '5432')}/{info.get('dbname', '')}"


@functools.cache
def _postgres_problem(dsn: str) -> str | None:
    """Why the tests cannot use PostgreSQL at ``dsn``; ``None`` when they can."""
    try:
        import psycopg
        import psycopg_pool  # noqa: F401
    except ImportError:
        return 'psycopg and psycopg-pool are not installed (pip install -e ".[fleet]")'
    try:
        with psycopg.connect(dsn, connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return f"PostgreSQL at {_server_of(dsn)} is not reachable ({first_line})"
    return None


def postgres_dsn() -> str:
    """The DSN of the test database: ``OHIP_TEST_POSTGRES_DSN``, else the local default."""
    return os.environ.get("OHIP_TEST_POSTGRES_DSN") or DEFAULT_POSTGRES_DSN


def postgres_dsn_or_skip() -> str:
    """The test database's DSN once it answers; else skip (or fail, when services are required)."""
    dsn = postgres_dsn()
    problem = _postgres_problem(dsn)
    if problem is not None:
        _unavailable(f"{problem}: {_HOW_TO_RUN}")
    return dsn


#: The development and CI NATS server (JetStream enabled).
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"

_NATS_HOW_TO_RUN = (
    "start nats-server with JetStream (`nats-server -js`) on 127.0.0.1:4222, or point "
    "OHIP_TEST_NATS_URL at one (nats://host:port), to run these tests"
)


def nats_url() -> str:
    """The test broker's URL: ``OHIP_TEST_NATS_URL``, else the local default."""
    return os.environ.get("OHIP_TEST_NATS_URL") or DEFAULT_NATS_URL


@functools.cache
def _nats_problem(url: str) -> str | None:
    """Why the tests cannot use NATS JetStream at ``url``; ``None`` when they can."""
    try:
        import nats  # noqa: F401
    except ImportError:
        return 'nats-py is not installed (pip install -e ".[sinks]")'
    import asyncio

    async def probe() -> None:
        import nats

        nc = await nats.connect(url, connect_timeout=3, max_reconnect_attempts=0)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    # In a thread of its own: the caller may be a test already running an event loop.
    import concurrent.futures

    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, probe()).result()
    except Exception as exc:
        return f"NATS JetStream at {url} is not reachable ({type(exc).__name__}: {exc})"
    return None


def nats_url_or_skip() -> str:
    """The test broker's URL once JetStream answers; else skip (or fail, when required)."""
    url = nats_url()
    problem = _nats_problem(url)
    if problem is not None:
        _unavailable(f"{problem}: {_NATS_HOW_TO_RUN}")
    return url
