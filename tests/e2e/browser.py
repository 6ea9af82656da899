"""What the console's browser tests share: Debian's Chromium driven by
Playwright, and webhook receivers on a thread of their own (Playwright's sync
API wants the test's thread without an event loop).

Without Chromium the browser tests skip; with ``CI=true`` they fail instead.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.conftest import unavailable
from tests.e2e.receivers import Receipt, Receiver

CHROMIUM = Path(os.environ.get("EVENTRELAY_TEST_CHROMIUM", "/usr/bin/chromium"))
SCREENSHOTS = Path(__file__).resolve().parents[2] / "docs" / "screenshots"
POLL_TIMEOUT = 20.0


def require_chromium() -> Path:
    if not CHROMIUM.exists():
        unavailable(f"Chromium is not installed at {CHROMIUM} (apt-get install chromium)")
    return CHROMIUM


def launch_browser() -> Iterator[Any]:
    """Body of a module fixture: one Chromium for every test of the module."""
    from playwright.sync_api import sync_playwright

    executable = require_chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(executable), headless=True)
        try:
            yield browser
        finally:
            browser.close()


class Switchable:
    """A receiver behaviour the test changes while the server delivers: it
    answers ``status`` with ``body``."""

    def __init__(self, status: int = 200, body: str = "ok") -> None:
        self.status = status
        self.body = body

    async def __call__(self, _: Receipt) -> web.StreamResponse:
        return web.Response(status=self.status, text=self.body)


class ThreadedReceivers:
    """Receivers (tests/e2e/receivers.py) running in an event loop on a thread."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._receivers: list[Receiver] = []

    def _run(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout=10)

    def start(self, behaviour: Callable[[Receipt], Any]) -> Receiver:
        receiver = self._run(Receiver(behaviour).start())
        self._receivers.append(receiver)
        return receiver

    def serve_page(self, html: str) -> str:
        """A page on its own origin (another port): the would-be attacker's site."""

        async def page(_: Receipt) -> web.StreamResponse:
            return web.Response(text=html, content_type="text/html")

        return self.start(page).url("/attacker.html")

    def close(self) -> None:
        for receiver in self._receivers:
            self._run(receiver.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=5)


def poll(check: Callable[[], Any], what: str, timeout: float = POLL_TIMEOUT) -> Any:
    """Call ``check`` until it returns something truthy, within a deadline."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)
