"""``/v1/subscriptions`` through the app, on both databases (API.md, Subscriptions)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from app.domain.ids import looks_like_id
from app.domain.signing import secret_key
from app.settings import DEFAULT_RETRY_SCHEDULE, Settings
from app.store import subscriptions as subscription_store
from app.store.database import Database
from tests.integration.support import assert_problem, locs, running

PUBLIC_URL = "http://8.8.8.8/hooks"
FIELDS = {
    "id",
    "url",
    "destination",
    "format",
    "description",
    "event_types",
    "headers",
    "ordering",
    "on_dead_letter",
    "retry_schedule",
    "timeout_ms",
    "max_in_flight",
    "rate_limit_per_second",
    "status",
    "disabled_reason",
    "created_at",
    "updated_at",
    "filter",
}


def _secret(size: int) -> str:
    return "whsec_" + base64.b64encode(bytes(range(size))).decode()


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body.setdefault("url", PUBLIC_URL)
    response = await client.post("/v1/subscriptions", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


async def test_create(client: httpx.AsyncClient) -> None:
    before = datetime.now(UTC) - timedelta(seconds=1)
    sub = await create(client)
    assert sub.keys() == FIELDS | {"secret"}
    assert looks_like_id(sub["id"], "sub")
    assert sub["url"] == PUBLIC_URL
    assert sub["event_types"] == ["*"]
    assert sub["ordering"] == "key"
    assert sub["on_dead_letter"] == "skip"
    assert sub["max_in_flight"] == 32
    assert sub["rate_limit_per_second"] is None
    assert sub["retry_schedule"] == list(DEFAULT_RETRY_SCHEDULE)
    assert sub["timeout_ms"] == 15000
    assert sub["headers"] == {}
    assert sub["description"] is None
    assert (sub["status"], sub["disabled_reason"]) == ("active", None)
    assert sub["secret"].startswith("whsec_")
    assert len(secret_key(sub["secret"])) == 32
    assert sub["created_at"].endswith("Z")
    assert datetime.fromisoformat(sub["created_at"]) >= before

    other = await create(client)
    assert other["secret"] != sub["secret"]

    # Every field given comes back as given.
    body = {
        "url": "https://8.8.4.4:8443/hooks?team=billing",
        "event_types": ["order.*", "invoice.paid"],
        "description": "billing — ünïcode",
        "secret": _secret(24),
        "headers": {"X-Team": "billing"},
        "ordering": "none",
        "on_dead_letter": "block",
        "retry_schedule": [0.2, 1, 30],
        "timeout_ms": 2000,
        "max_in_flight": 1000,
        "rate_limit_per_second": 2.5,
    }
    sub = await create(client, **body)
    assert {k: sub[k] for k in body} == body
    fetched = (await client.get(f"/v1/subscriptions/{sub['id']}")).json()
    assert {k: fetched[k] for k in body if k != "secret"} == {
        k: v for k, v in body.items() if k != "secret"
    }

    # A supplied secret is whsec_ and the base64 of 24 to 64 bytes.
    assert (await create(client, secret=_secret(64)))["secret"] == _secret(64)
    for bad in (_secret(23), _secret(65), "whsec_!!!!", "not-a-secret"):
        response = await client.post("/v1/subscriptions", json={"url": PUBLIC_URL, "secret": bad})
        assert locs(assert_problem(response, 422)) == ["/secret"], bad


async def test_get_list_and_delete(client: httpx.AsyncClient) -> None:
    made = [await create(client, description=f"n{i}") for i in range(5)]
    ids = sorted(s["id"] for s in made)

    one = await client.get(f"/v1/subscriptions/{made[2]['id']}")
    assert one.status_code == 200
    assert one.json().keys() == FIELDS, "the secret is only shown at creation and on /secret"
    assert one.json()["description"] == "n2"

    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = await client.get("/v1/subscriptions", params=params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body.keys() == {"items", "next_cursor"}
        assert all(item.keys() == FIELDS for item in body["items"])
        seen += [item["id"] for item in body["items"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == ids
    assert pages == 3

    full = (await client.get("/v1/subscriptions", params={"limit": 5})).json()
    assert ([s["id"] for s in full["items"]], full["next_cursor"]) == (ids, None)
    everything = (await client.get("/v1/subscriptions")).json()
    assert len(everything["items"]) == 5

    for bad in ({"limit": 0}, {"limit": 501}, {"cursor": "nonsense"}):
        assert_problem(await client.get("/v1/subscriptions", params=bad), 422)
    assert_problem(await client.get("/v1/subscriptions/sub_01JD0000000000000000000000"), 404)

    # DELETE: 204, then gone everywhere.
    url = f"/v1/subscriptions/{made[0]['id']}"
    deleted = await client.delete(url)
    assert deleted.status_code == 204
    assert deleted.content == b""
    assert_problem(await client.get(url), 404)
    assert_problem(await client.delete(url), 404)
    assert_problem(await client.get(url + "/secret"), 404)
    assert_problem(await client.post(url + "/rotate-secret"), 404)
    listed = (await client.get("/v1/subscriptions")).json()["items"]
    assert [s["id"] for s in listed] == [i for i in ids if i != made[0]["id"]]


async def test_patch(client: httpx.AsyncClient) -> None:
    sub = await create(client)
    url = f"/v1/subscriptions/{sub['id']}"

    async def patch(body: dict[str, Any]) -> dict[str, Any]:
        response = await client.patch(url, json=body)
        assert response.status_code == 200, response.text
        patched: dict[str, Any] = response.json()
        assert patched.keys() == FIELDS
        return patched

    assert (await patch({"status": "paused"}))["status"] == "paused"
    assert (await patch({"status": "active"}))["status"] == "active"
    disabled = await patch({"status": "disabled"})
    assert disabled["status"] == "disabled"
    assert disabled["disabled_reason"] is not None
    enabled = await patch({"status": "active"})
    assert (enabled["status"], enabled["disabled_reason"]) == ("active", None)

    changed = await patch({"event_types": ["order.*"], "headers": {"X-A": "1"}})
    assert (changed["event_types"], changed["headers"]) == (["order.*"], {"X-A": "1"})
    assert changed["url"] == PUBLIC_URL, "fields not named stay as they were"
    assert changed["updated_at"] >= sub["updated_at"]
    assert (await patch({"description": "d"}))["description"] == "d"
    assert (await patch({"description": None}))["description"] is None
    assert (await patch({"retry_schedule": [1, 2]}))["retry_schedule"] == [1, 2]
    assert (await patch({"retry_schedule": None}))["retry_schedule"] == list(DEFAULT_RETRY_SCHEDULE)
    assert (await patch({}))["event_types"] == ["order.*"]

    required = ["url", "event_types", "headers", "ordering", "on_dead_letter", "max_in_flight"]
    for field in [*required, "status"]:
        problem = assert_problem(await client.patch(url, json={field: None}), 422)
        assert locs(problem) == [f"/{field}"], field
    for bad in (
        {"status": "deleted"},
        {"event_types": ["bad type"]},
        {"max_in_flight": 0},
        {"headers": {"Webhook-Signature": "x"}},
        {"url": "ftp://8.8.8.8/"},
        {"secret": _secret(32)},
        {"surprise": 1},
    ):
        assert_problem(await client.patch(url, json=bad), 422)
    after = (await client.get(url)).json()
    assert (after["status"], after["event_types"]) == ("active", ["order.*"])

    missing = "/v1/subscriptions/sub_01JD0000000000000000000000"
    assert_problem(await client.patch(missing, json={"status": "paused"}), 404)


async def test_secret_and_rotation(client: httpx.AsyncClient, db: Database) -> None:
    sub = await create(client)
    url = f"/v1/subscriptions/{sub['id']}"
    shown = await client.get(url + "/secret")
    assert shown.status_code == 200
    assert shown.json() == {"secret": sub["secret"]}

    rotated = await client.post(url + "/rotate-secret")
    rotated_at = datetime.now(UTC)
    assert rotated.status_code == 200, rotated.text
    assert rotated.json().keys() == {"secret"}
    new = rotated.json()["secret"]
    assert new != sub["secret"]
    assert len(secret_key(new)) == 32
    assert (await client.get(url + "/secret")).json() == {"secret": new}

    stored = await subscription_store.get(db, "default", sub["id"])
    assert stored is not None
    assert stored.previous_secret is not None
    assert (stored.secret.open(), stored.previous_secret.open()) == (new, sub["secret"])
    assert stored.previous_secret_expires_at is not None
    grace = stored.previous_secret_expires_at - rotated_at
    assert timedelta(hours=24) - timedelta(minutes=1) <= grace <= timedelta(hours=24)

    again = (await client.post(url + "/rotate-secret")).json()["secret"]
    stored = await subscription_store.get(db, "default", sub["id"])
    assert stored is not None
    assert stored.previous_secret is not None
    assert (stored.secret.open(), stored.previous_secret.open()) == (again, new)


REFUSED_URLS = [
    "http://127.0.0.1/",
    "http://127.0.0.1:8080/hooks",
    "http://10.0.0.1/",
    "http://192.168.0.10/",
    "http://172.16.5.4/",
    "http://169.254.169.254/latest/meta-data",
    "http://100.64.0.1/",
    "http://0.0.0.0/",
    "http://localhost/",
    "http://LOCALHOST:8000/x",
    "http://api.localhost/",
    "http://[::1]/",
    "http://[::ffff:127.0.0.1]/",
    "http://[fe80::1]/",
    "http://[fd00::1]/",
    "http://127.1/",
    "http://2130706433/",
    "http://0x7f000001/",
]


async def test_private_targets_are_refused_unless_allowed(settings: Settings) -> None:
    async with running(settings, allow_private_targets=False) as client:
        for target in REFUSED_URLS:
            response = await client.post("/v1/subscriptions", json={"url": target})
            assert locs(assert_problem(response, 422)) == ["/url"], target
        for target in ("ftp://8.8.8.8/", "file:///etc/passwd", "8.8.8.8/hooks"):
            response = await client.post("/v1/subscriptions", json={"url": target})
            assert locs(assert_problem(response, 422)) == ["/url"], target

        sub = await create(client, url="https://8.8.8.8/hooks")
        response = await client.patch(
            f"/v1/subscriptions/{sub['id']}", json={"url": "http://10.1.2.3/"}
        )
        assert locs(assert_problem(response, 422)) == ["/url"]
        assert (await client.get("/v1/subscriptions")).json()["items"][0]["url"] == (
            "https://8.8.8.8/hooks"
        )

    async with running(settings, allow_private_targets=True) as client:
        assert (await create(client, url="http://127.0.0.1:9/hooks"))["status"] == "active"
