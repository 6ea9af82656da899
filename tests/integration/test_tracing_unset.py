"""Tracing unset costs nothing: the OpenTelemetry SDK is never imported.
A misconfiguration stops ``serve`` with a clear message."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import eventrelay_executable

# Builds the app, ingests an event with a traceparent; then lists the modules of
# the OpenTelemetry SDK and exporter, and eventrelay's own, ever imported.
# (FastAPI itself imports the OpenTelemetry API, not the SDK.)
SCRIPT = """
import asyncio, sys, httpx
from app.main import create_app
from app.settings import Settings

async def main():
    app = create_app(Settings(database_url=sys.argv[1], admin_token=sys.argv[2]))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        headers = {"Authorization": "Bearer " + sys.argv[2], "Idempotency-Key": "k",
                   "traceparent": "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            response = await client.post("/v1/events", json={"type": "t"}, headers=headers)
            assert response.status_code == 202, response.text
    sdk = ("opentelemetry.sdk", "opentelemetry.exporter", "app.otel")
    print(sorted(m for m in sys.modules if m.startswith(sdk)))

asyncio.run(main())
"""


def _environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("OTEL_", "EVENTRELAY_"))}


def test_without_otel_variables_the_sdk_is_never_imported(database_url: str) -> None:
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, database_url, ADMIN_TOKEN],
        env=_environment(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_serve_refuses_an_exporter_it_cannot_run(database_url: str, tmp_path: Path) -> None:
    env = _environment() | {
        "EVENTRELAY_DATABASE_URL": database_url,
        "EVENTRELAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317",
        "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc",
    }
    done = subprocess.run(
        [eventrelay_executable(), "serve", "--port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert "OTEL_EXPORTER_OTLP_PROTOCOL='grpc' is not supported" in done.stdout + done.stderr
