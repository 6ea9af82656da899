"""Helpers for integration tests that need an app other than the ``client`` fixture's."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN_TOKEN

BASE_URL = "http://eventrelay.test"


def client_for(app: FastAPI, token: str | None = ADMIN_TOKEN) -> httpx.AsyncClient:
    """An in-process client for a running ``app``; ``token=None`` sends no Authorization."""
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url=BASE_URL, headers=headers
    )


@asynccontextmanager
async def running(settings: Settings, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """Start an app built from ``settings`` (with ``overrides``); yield an admin client."""
    application = create_app(settings.model_copy(update=overrides))
    async with application.router.lifespan_context(application), client_for(application) as c:
        yield c


async def event_count(client: httpx.AsyncClient) -> int:
    response = await client.get("/v1/stats")
    assert response.status_code == 200, response.text
    count: int = response.json()["events"]
    return count


def assert_problem(response: httpx.Response, status: int) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status``; return its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["status"] == status
    assert {"type", "title", "status", "detail"} <= body.keys()
    assert "Traceback" not in response.text
    return body


def locs(problem: dict[str, Any]) -> list[str]:
    return [e["loc"] for e in problem.get("errors", [])]
