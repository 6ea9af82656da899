"""The real server's logs: JSON lines by default, IDs on the lines they concern.

A module server per backend (with the access log on) serves the request-ID and
delivery tests, and then has its log so far checked line by line. The
whole-run check (SQLite) starts and stops its own server, so that the startup
(migrations) and shutdown lines are in the log it reads; so does the check of
the text format.
"""

from __future__ import annotations

import json
import re
import shutil
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import ServerFactory, ServerProcess, json_lines, start_module_server
from tests.e2e.procs import Relay, log_lines, unique_type
from tests.e2e.receivers import ReceiverPool, scripted, wait_until

SETTLE_SECONDS = 15.0
LOG_SECONDS = 5.0  # the server flushes each line (PYTHONUNBUFFERED); allow for a busy machine
LEVELS = {"debug", "info", "warning", "error", "critical"}
IDS = ("delivery_id", "event_id", "subscription_id")


@pytest.fixture(scope="module")
def shared_server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    env = {"EVENTRELAY_ACCESS_LOG": "true"}
    yield from start_module_server(module_database_url, tmp_path_factory, env=env)


async def logged(
    server: ServerProcess, wanted: Callable[[list[dict[str, Any]]], bool], message: str
) -> list[dict[str, Any]]:
    """Wait until ``wanted(lines)`` holds for the server's JSON lines; return those lines."""

    def check() -> list[dict[str, Any]] | None:
        lines = log_lines(server.stdout())
        return lines if wanted(lines) else None

    found: list[dict[str, Any]] = await wait_until(
        check, LOG_SECONDS, interval=0.05, message=message
    )
    return found


def assert_log_record(line: dict[str, Any]) -> None:
    assert isinstance(line.get("message"), str), line
    assert str(line.get("level", "")).lower() in LEVELS, line
    stamp = line.get("time")
    assert isinstance(stamp, str), line
    assert datetime.fromisoformat(stamp.replace("Z", "+00:00")).tzinfo is not None, line


def is_json_object(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


# -- request IDs ---------------------------------------------------------------------


async def test_a_request_id_is_echoed_and_on_the_requests_log_line(
    shared_server: ServerProcess, relay: Relay
) -> None:
    given = f"abc-{uuid.uuid4().hex[:8]}"
    response = await relay.http.get("/healthz", headers={"X-Request-ID": given})
    assert response.status_code == 200
    assert response.headers["x-request-id"] == given

    plain = await relay.http.get("/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", plain.headers["x-request-id"]), plain.headers
    assert plain.headers["x-request-id"] != given

    lines = await logged(
        shared_server,
        lambda lines: any(line.get("request_id") == given for line in lines),
        f"a log line (uvicorn's access line) with request_id {given}",
    )
    (access,) = [line for line in lines if line.get("request_id") == given]
    assert "/healthz" in access["message"], access


async def test_the_literal_request_id_abc_comes_back(relay: Relay) -> None:
    response = await relay.http.get("/healthz", headers={"X-Request-ID": "abc"})
    assert response.headers["x-request-id"] == "abc"


# -- a failed delivery ---------------------------------------------------------------


async def test_the_log_lines_of_a_failed_delivery_carry_its_ids(
    shared_server: ServerProcess, relay: Relay, receivers: ReceiverPool
) -> None:
    receiver = await receivers.start(scripted(then=500))
    event_type = unique_type("logs")
    sub = await relay.subscribe(receiver.url(), event_types=[event_type], retry_schedule=[0.05])
    accepted = await relay.publish(event_type, {"n": 1})
    delivery = await wait_until(
        lambda: relay.delivery_in(accepted["id"], "dead"),
        SETTLE_SECONDS,
        interval=0.05,
        message="the delivery to be dead-lettered",
    )
    ids = {"delivery_id": delivery["id"], "event_id": accepted["id"], "subscription_id": sub["id"]}

    def about_it(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [line for line in lines if line.get("delivery_id") == ids["delivery_id"]]

    lines = about_it(
        await logged(
            shared_server,
            lambda lines: len(about_it(lines)) >= 2,
            f"a retry and a dead-letter line for {ids['delivery_id']}",
        )
    )
    for line in lines:
        assert {key: line.get(key) for key in IDS} == ids, line
    levels = [line["level"].upper() for line in lines]
    assert levels == ["INFO", "WARNING"], lines  # the retry, then the dead letter
    assert [line.get("attempt") for line in lines] == [1, 2], lines
    assert all(line.get("status_code") == 500 for line in lines), lines


# -- whole runs ---------------------------------------------------------------------


def sqlite_url(template: Path, directory: Path) -> str:
    database = directory / "logs.db"
    shutil.copyfile(template, database)
    return f"sqlite+aiosqlite:///{database}"


def test_every_line_so_far_is_a_json_object(shared_server: ServerProcess) -> None:
    # Run after the tests above, it reads their requests and deliveries too.
    for line in json_lines(shared_server.stdout()):
        assert_log_record(line)
    for line in json_lines(shared_server.stderr()):
        assert_log_record(line)


def test_every_line_of_a_whole_run_is_a_json_object(
    server_factory: ServerFactory, sqlite_template: Path, tmp_path: Path
) -> None:
    server = server_factory(
        sqlite_url(sqlite_template, tmp_path), env={"EVENTRELAY_ACCESS_LOG": "true"}
    )
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
        assert client.get("/v1/nothing-here").status_code == 404
        bad = client.post("/v1/events", json={"type": "bad type"}, headers={"Idempotency-Key": "k"})
        assert bad.status_code == 422
    server.terminate()  # the exit status after SIGTERM is test_sigterm's subject

    lines = json_lines(server.stdout())
    assert lines, "the server logged nothing"
    for line in lines:
        assert_log_record(line)
    for line in json_lines(server.stderr()):
        assert_log_record(line)
    loggers = {line.get("logger") for line in lines}
    assert {"uvicorn.error", "uvicorn.access"} <= loggers, loggers
    messages = " ".join(line["message"] for line in lines)
    assert "Application startup complete" in messages
    assert "Finished server process" in messages


def test_the_text_format_is_for_people(
    server_factory: ServerFactory, sqlite_template: Path, tmp_path: Path
) -> None:
    server = server_factory(
        sqlite_url(sqlite_template, tmp_path), env={"EVENTRELAY_LOG_FORMAT": "text"}
    )
    with server.client() as client:
        assert client.get("/healthz").status_code == 200
    server.terminate()

    lines = [line for line in server.stdout().splitlines() if line.strip()]
    assert lines, "the server logged nothing"
    assert not [line for line in lines if is_json_object(line)]
    assert any(" INFO " in line and "Application startup complete" in line for line in lines)
