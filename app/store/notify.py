"""PostgreSQL LISTEN/NOTIFY: wake workers within milliseconds of a commit.

Ingest (and anything else that makes deliveries due) issues ``NOTIFY`` inside
its transaction, so the signal is sent at commit. A lost listener connection
is re-established in the background; until then workers fall back to polling.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Any

import asyncpg
from sqlalchemy.engine import make_url

log = logging.getLogger(__name__)

CHANNEL = "eventrelay_deliveries"
CHANGED = "subscription:"  # payload prefix: this subscription changed
RECONNECT_SECONDS = 2.0


def asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


class Listener:
    def __init__(self, url: str, on_notify: Callable[[str], None]) -> None:
        self._dsn = asyncpg_dsn(url)
        self._on_notify = on_notify
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="pg-listener")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def _callback(self, _conn: Any, _pid: int, _channel: str, payload: str) -> None:
        self._on_notify(payload)

    async def _run(self) -> None:
        while True:
            conn: Any = None
            try:
                conn = await asyncpg.connect(self._dsn, timeout=5)
                await conn.add_listener(CHANNEL, self._callback)
                self._on_notify("")  # anything committed while we were away
                while not conn.is_closed():
                    await asyncio.sleep(RECONNECT_SECONDS)
            except (OSError, asyncpg.PostgresError, TimeoutError) as exc:
                log.warning("LISTEN connection lost (%s); polling until it is back", exc)
            finally:
                if conn is not None and not conn.is_closed():
                    with contextlib.suppress(Exception):
                        await conn.close()
            await asyncio.sleep(RECONNECT_SECONDS)
