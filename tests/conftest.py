"""Shared fixtures: a fresh, migrated database per test on SQLite and PostgreSQL.

Each session migrates one template per backend; each test gets its own copy
(a file copy on SQLite, ``CREATE DATABASE … TEMPLATE`` on PostgreSQL) and it is
removed afterwards. With ``CI=true`` an unreachable PostgreSQL fails the run.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import NoReturn

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from app.store.migrations import upgrade_head

PG_HOST = os.environ.get("EVENTRELAY_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("EVENTRELAY_TEST_PG_PORT", "5432"))
PG_USER = os.environ.get("EVENTRELAY_TEST_PG_USER", "postgres")
ADMIN_TOKEN = "er_test_admin_token_0123456789"
BACKENDS = ("sqlite", "postgres")


def pg_url(database: str, driver: str = "postgresql+asyncpg") -> str:
    return f"{driver}://{PG_USER}@{PG_HOST}:{PG_PORT}/{database}"


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(
        host=PG_HOST, port=PG_PORT, user=PG_USER, database="postgres", timeout=5
    )
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def pg_admin(sql: str) -> None:
    asyncio.run(_pg_admin(sql))


def _postgres_reachable() -> str | None:
    try:
        pg_admin("SELECT 1")
    except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
        return f"{type(exc).__name__}: {exc}"
    return None


def unavailable(message: str) -> NoReturn:
    """A service or program a test needs is missing: skip locally, fail under CI=true."""
    if os.environ.get("CI") == "true":
        pytest.fail(message + "; CI requires it", pytrace=False)
    pytest.skip(message)


@pytest.fixture(scope="session")
def postgres_template() -> Iterator[str]:
    problem = _postgres_reachable()
    if problem is not None:
        unavailable(f"PostgreSQL at {PG_HOST}:{PG_PORT} is unreachable ({problem})")
    name = f"er_tmpl_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}"')
    try:
        upgrade_head(pg_url(name))
        yield name
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade_head(f"sqlite+aiosqlite:///{path}")
    return path


def _fresh_sqlite(template: Path, directory: Path) -> str:
    target = directory / "eventrelay.db"
    shutil.copyfile(template, target)
    return f"sqlite+aiosqlite:///{target}"


@pytest.fixture
def sqlite_file_url(sqlite_template: Path, tmp_path: Path) -> str:
    """A migrated SQLite file of the test's own, for processes to share."""
    return _fresh_sqlite(sqlite_template, tmp_path)


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated database of its own for this test, dropped afterwards."""
    if backend == "sqlite":
        yield _fresh_sqlite(request.getfixturevalue("sqlite_template"), tmp_path)
        return
    template = request.getfixturevalue("postgres_template")
    name = f"er_test_{uuid.uuid4().hex[:12]}"
    pg_admin(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    try:
        yield pg_url(name)
    finally:
        pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def settings(database_url: str) -> Settings:
    return Settings(
        database_url=database_url,
        admin_token=ADMIN_TOKEN,
        allow_private_targets=True,
        log_format="text",
    )


@pytest.fixture
async def app(settings: Settings) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client authenticated as admin."""
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://eventrelay.test",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
    ) as c:
        yield c
