"""The committed ``openapi/openapi.json`` is the document the app serves."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx

from app.main import create_app
from app.settings import Settings

COMMITTED = Path(__file__).resolve().parents[2] / "openapi" / "openapi.json"
STALE = "openapi/openapi.json is out of date with the app; run `make openapi` and commit it"


def committed() -> Any:
    return json.loads(COMMITTED.read_text())


def built() -> Any:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    return app.openapi()


def test_committed_document_equals_the_apps() -> None:
    assert committed() == built(), STALE


async def test_committed_document_is_what_the_app_serves() -> None:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://eventrelay.test") as client:
        served = await client.get("/openapi.json")
    assert served.status_code == 200
    assert served.json() == committed(), STALE
