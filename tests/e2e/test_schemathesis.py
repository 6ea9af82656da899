"""Property-based API checks from the app's own OpenAPI document (schemathesis).

The real server runs on a fresh database for this module, without the delivery
worker (generated subscriptions must not send webhooks anywhere). Every
operation gets a bounded, derandomized set of examples; no answer may be a
5xx and every documented answer must match its schema.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error, response_schema_conformance

from app.main import create_app
from app.settings import Settings
from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import ServerProcess, start_module_server

MAX_EXAMPLES = 25

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def api_server(
    sqlite_template: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    database = tmp_path_factory.mktemp("schemathesis-db") / "eventrelay.db"
    shutil.copyfile(sqlite_template, database)
    yield from start_module_server(
        f"sqlite+aiosqlite:///{database}", tmp_path_factory, worker=False
    )


def app_document() -> dict[str, Any]:
    # The document is built in process, as the app builds it; test_openapi checks
    # that the server serves the same. (schemathesis' lazy from_fixture loader does
    # not work with pytest 9, so the schema cannot come from the running server.)
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    document: dict[str, Any] = app.openapi()
    return document


schema = schemathesis.openapi.from_dict(app_document())


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_api_never_fails_and_matches_its_schema(
    case: schemathesis.Case, api_server: ServerProcess
) -> None:
    case.call_and_validate(
        base_url=api_server.base_url,
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        checks=[not_a_server_error, response_schema_conformance],
        timeout=30,
    )
