"""Fleet databases for the tests: a SQLite file, or a PostgreSQL schema of the test's own.

Each PostgreSQL store gets a fresh schema (``search_path`` in its DSN), dropped after the test,
so that fleet tests never see each other's tables, nor the tables of other tests in ``test``.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from helpers.services import postgres_dsn_or_skip


def with_params(dsn: str, **params: str) -> str:
    """``dsn`` with connection parameters replaced or added."""
    from psycopg.conninfo import conninfo_to_dict, make_conninfo

    info: dict[str, Any] = conninfo_to_dict(dsn)
    info.update(params)
    return str(make_conninfo(**info))


async def admin(dsn: str, statement: str) -> None:
    import psycopg

    async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
        await conn.execute(statement.encode())


@contextlib.asynccontextmanager
async def postgres_schema() -> AsyncIterator[str]:
    """A DSN whose tables land in a schema of their own (dropped at the end)."""
    dsn = postgres_dsn_or_skip()
    schema = f"fleet_test_{uuid.uuid4().hex[:10]}"
    await admin(dsn, f'CREATE SCHEMA "{schema}"')
    try:
        yield with_params(dsn, options=f"-c search_path={schema}")
    finally:
        await admin(dsn, f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


@contextlib.asynccontextmanager
async def database_url(backend: str, tmp_path: Path) -> AsyncIterator[str]:
    """A fresh fleet database URL of the backend (``sqlite`` or ``postgres``)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp_path / 'fleet.db'}"
        return
    async with postgres_schema() as dsn:
        yield dsn
