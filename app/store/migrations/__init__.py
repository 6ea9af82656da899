"""Alembic, driven from code: ``eventrelay migrate``, ``serve`` on start, ``/readyz``.

The scripts (``env.py``, ``versions/``) ship inside this package, so an
installed wheel migrates as the checkout does; there is no ``alembic.ini``.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cache

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection

from app.store.database import Database

# Alembic's package-resource form ("package:folder"): Alembic finds this
# package's folder with importlib.resources, wherever the package is installed.
SCRIPT_LOCATION = "app.store:migrations"


def alembic_config(url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(SCRIPT_LOCATION))
    config.attributes["database_url"] = url
    return config


def upgrade_head(url: str) -> None:
    """Apply every migration (blocking; call from a thread inside an event loop)."""
    with _migration_log(logging.INFO):
        command.upgrade(alembic_config(url), "head")


@contextmanager
def _migration_log(level: int) -> Iterator[None]:
    # Alembic says "Context impl …" each time it looks at a database; worth
    # reading while migrating, noise on every /readyz probe.
    logger = logging.getLogger("alembic.runtime.migration")
    previous = logger.level
    logger.setLevel(level)
    try:
        yield
    finally:
        logger.setLevel(previous)


@cache
def head_revision() -> str | None:
    return ScriptDirectory.from_config(alembic_config("")).get_current_head()


def _current(conn: Connection) -> str | None:
    with _migration_log(logging.WARNING):
        return MigrationContext.configure(conn).get_current_revision()


async def current_revision(db: Database) -> str | None:
    async with db.read() as conn:
        return await conn.run_sync(_current)
