"""First start without a token prints one admin token, once; logs are JSON lines."""

from __future__ import annotations

from pathlib import Path

from tests.e2e.conftest import ServerFactory, json_lines

PREFIX = "admin token: "


def token_lines(records: list[dict[str, object]]) -> list[dict[str, object]]:
    return [r for r in records if str(r.get("message", "")).startswith(PREFIX)]


def test_first_start_prints_a_working_admin_token_once(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    # A file that does not exist yet: `serve` must migrate it itself.
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'first-start.db'}"
    server = server_factory(database_url, admin_token=None)

    out, err = json_lines(server.stdout()), json_lines(server.stderr())
    printed = token_lines(out + err)
    assert len(printed) == 1, printed
    token = str(printed[0]["message"])[len(PREFIX) :]
    assert token
    assert printed[0].get("admin_token") == token
    both = server.stdout() + server.stderr()
    assert sum(token in line for line in both.splitlines()) == 1, "the token leaked elsewhere"
    assert any(r.get("logger", "").startswith("alembic") for r in out), "no migration log"
    assert any(r.get("logger", "").startswith("uvicorn") for r in out), "no uvicorn log"

    with server.client(token=token) as admin:
        assert admin.get("/v1/stats").status_code == 200
        issued = admin.post("/v1/tokens", json={"scope": "ingest"})
        assert issued.status_code == 201, issued.text
        accepted = admin.post(
            "/v1/events", json={"type": "first.start"}, headers={"Idempotency-Key": "one"}
        )
        assert accepted.status_code == 202, accepted.text
    with server.client(token="er_" + "x" * 43) as stranger:
        assert stranger.get("/v1/stats").status_code == 401
    server.terminate()

    # The second start on the same database prints nothing, and the token still works.
    server.extra_env["EVENTRELAY_ACCESS_LOG"] = "true"
    server.start()
    with server.client(token=token) as admin:
        assert admin.get("/v1/stats").json()["events"] == 1
        assert admin.get("/v1/events/evt_01JD0000000000000000000000").status_code == 404
    server.terminate()
    second = json_lines(server.stdout()) + json_lines(server.stderr())
    assert token_lines(second) == []
    assert "admin token" not in server.stdout() + server.stderr()
    assert token not in server.stdout() + server.stderr()
    assert any(str(r.get("message")).startswith("Finished server process") for r in second)


def test_configured_token_means_no_generated_token(
    server_factory: ServerFactory, tmp_path: Path
) -> None:
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'configured.db'}"
    server = server_factory(database_url)
    server.terminate()
    records = json_lines(server.stdout()) + json_lines(server.stderr())
    assert token_lines(records) == []
