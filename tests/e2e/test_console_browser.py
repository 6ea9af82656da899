"""The console in a real browser (Debian's Chromium through Playwright) against
a real ``eventrelay serve`` and real webhook receivers, on both databases.

One server per module and backend, one browser per module; each test makes
its own subscriptions and looks only at them.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import pytest
from sqlalchemy import select

from app.domain import portal
from app.services.console import PORTAL_KEY
from app.store.database import open_database
from app.store.schema import console_keys
from tests.conftest import ADMIN_TOKEN
from tests.e2e.browser import (
    POLL_TIMEOUT,
    SCREENSHOTS,
    Switchable,
    ThreadedReceivers,
    launch_browser,
    poll,
)
from tests.e2e.conftest import ServerProcess, start_module_server

WIDE = {"width": 1280, "height": 800}
SHORT_LIFETIME = 6  # seconds: a portal link's, long enough to open under load
NARROW = {"width": 390, "height": 844}
XSS = '<script>window.__pwned = 1</script><img src="x" onerror="window.__pwned = 1; alert(1)">'
NAVIGATION = [
    "Overview",
    "Events",
    "Subscriptions",
    "Dead-letter queue",
    "Event types",
    "Tenants",
    "Tokens",
]


@pytest.fixture(scope="module")
def console_server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    yield from start_module_server(module_database_url, tmp_path_factory)


@pytest.fixture(scope="module")
def browser(console_server: ServerProcess) -> Iterator[Any]:
    # After the server: Playwright's sync API runs an event loop on this thread,
    # and the database fixtures' asyncio.run() must not meet it.
    yield from launch_browser()


@pytest.fixture(scope="module")
def receivers() -> Iterator[ThreadedReceivers]:
    pool = ThreadedReceivers()
    yield pool
    pool.close()


@pytest.fixture
def api(console_server: ServerProcess) -> Iterator[httpx.Client]:
    with console_server.client() as client:
        yield client


@pytest.fixture
def context(browser: Any) -> Iterator[Any]:
    """A fresh browser profile (cookies) per test, watching for script that
    should never run: dialogs and the ``window.__pwned`` flag."""
    ctx = browser.new_context(viewport=WIDE)
    ctx.dialogs = []  # type: ignore[attr-defined]
    ctx.on(
        "page",
        lambda page: page.on("dialog", lambda d: (ctx.dialogs.append(d.message), d.dismiss())),
    )
    yield ctx
    ctx.close()


def sign_in(context: Any, server: ServerProcess, token: str = ADMIN_TOKEN) -> Any:
    page = context.new_page()
    page.goto(f"{server.base_url}/console/")
    assert page.url.startswith(f"{server.base_url}/console/sign-in")
    page.fill("#token", token)
    page.press("#token", "Enter")
    page.wait_for_url(f"{server.base_url}/console/")
    return page


def subscribe(api: httpx.Client, url: str, **fields: Any) -> dict[str, Any]:
    response = api.post("/v1/subscriptions", json={"url": url, **fields})
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def publish(api: httpx.Client, event_type: str, key: str | None, data: Any) -> str:
    body: dict[str, Any] = {"type": event_type, "data": data}
    if key is not None:
        body["key"] = key
    response = api.post("/v1/events", json=body, headers={"Idempotency-Key": uuid.uuid4().hex})
    assert response.status_code == 202, response.text
    event_id: str = response.json()["id"]
    return event_id


def dead_letters(api: httpx.Client, subscription_id: str) -> list[dict[str, Any]]:
    response = api.get("/v1/dlq", params={"subscription_id": subscription_id, "limit": 500})
    assert response.status_code == 200, response.text
    items: list[dict[str, Any]] = response.json()["items"]
    return items


def no_horizontal_scroll(page: Any) -> bool:
    return bool(page.evaluate("document.documentElement.scrollWidth <= window.innerWidth"))


# What sticks out past the viewport's right edge (for the failure message).
_WIDER = """() => [...document.querySelectorAll('body *')]
    .filter(e => e.getBoundingClientRect().right > window.innerWidth)
    .slice(0, 5)
    .map(e => `${e.tagName}.${e.className}: ${Math.round(e.getBoundingClientRect().right)}px`
              + ` ${JSON.stringify((e.textContent || '').slice(0, 80))}`)"""


def wider_than_the_page(page: Any) -> list[str]:
    return list(page.evaluate(_WIDER))


def screenshot(page: Any, name: str, server: ServerProcess) -> None:
    """The README's pictures, taken on the SQLite run only (one set)."""
    if server.database_url.startswith("sqlite"):
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


# -- signing in ------------------------------------------------------------------


def test_sign_in_takes_an_admin_token_only_and_keeps_it_out_of_the_cookie(
    context: Any, console_server: ServerProcess, api: httpx.Client
) -> None:
    ingest = api.post("/v1/tokens", json={"scope": "ingest", "description": "for the test"})
    assert ingest.status_code == 201, ingest.text
    page = context.new_page()
    base = console_server.base_url

    page.goto(f"{base}/console/dlq")
    assert page.url == f"{base}/console/sign-in?next=/console/dlq"

    page.fill("#token", ingest.json()["token"])
    page.click("text=Sign in >> nth=-1")
    assert "an ingest token cannot sign in to the console" in page.inner_text("[role=alert]")
    page.fill("#token", "er_not_a_token")
    page.click("button[type=submit]")
    assert "not valid" in page.inner_text("[role=alert]")
    assert context.cookies() == []

    page.fill("#token", ADMIN_TOKEN)
    page.click("button[type=submit]")
    page.wait_for_url(f"{base}/console/dlq")
    (cookie,) = context.cookies()
    assert cookie["httpOnly"] is True
    assert cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console"
    assert ADMIN_TOKEN not in cookie["value"]
    assert page.evaluate("document.cookie") == ""  # HttpOnly: script cannot read it

    page.click("text=Sign out")
    page.wait_for_url(f"{base}/console/sign-in")
    # The session is gone on the server too: replaying the old cookie gets nowhere.
    stale = httpx.get(
        f"{base}/console/", cookies={cookie["name"]: cookie["value"]}, follow_redirects=False
    )
    assert stale.status_code == 303
    assert stale.headers["location"].startswith("/console/sign-in")


# -- the operator's flow ------------------------------------------------------------


def test_operator_finds_a_failing_subscription_fixes_the_receiver_and_empties_the_dlq(
    context: Any,
    console_server: ServerProcess,
    api: httpx.Client,
    receivers: ThreadedReceivers,
) -> None:
    behaviour = Switchable(503, '{"error": "database migration in progress"}')
    receiver = receivers.start(behaviour)
    sub = subscribe(
        api,
        receiver.url("/orders"),
        description="orders service",
        event_types=["order.created"],
        retry_schedule=[0.1],
        headers={"X-Team": "fulfilment"},
    )
    sid = sub["id"]
    events = [
        publish(api, "order.created", f"customer-{n}", {"order": n, "total": 10 * n})
        for n in range(1, 4)
    ]
    poll(lambda: len(dead_letters(api, sid)) == 3, "three dead letters")

    page = sign_in(context, console_server)
    base = console_server.base_url

    # The overview names the failing subscription and links to it.
    failing = page.locator("#failing")
    assert sid in failing.inner_text()
    assert page.locator("#dlq-size").inner_text() != "0"
    screenshot(page, "overview", console_server)
    page.click(f"#failing >> text={sid}")
    page.wait_for_url(f"{base}/console/subscriptions/{sid}")
    assert "closed" in page.inner_text("main") or "open" in page.inner_text("main")

    # Its dead letters.
    page.click(f"a[href='/console/dlq?subscription_id={sid}']")
    page.wait_for_url(re.compile(r".*/console/dlq\?subscription_id="))
    assert page.locator("#dead-letters tbody tr").count() == 3
    assert "3 dead letters match" in page.inner_text("#dlq-total")
    screenshot(page, "dlq", console_server)

    # One dead letter: what was sent and what came back, attempt by attempt.
    page.locator("#dead-letters tbody tr a[href^='/console/dlq/']").first.click()
    page.wait_for_url(re.compile(r".*/console/dlq/dlv_"))
    attempts = page.locator(".attempt")
    assert attempts.count() == 2
    text = attempts.first.inner_text()
    assert "HTTP 503" in text
    assert "database migration in progress" in text
    assert "webhook-signature" in text
    assert "v1," in text
    assert "X-Team" in text
    assert "fulfilment" in text

    # The event itself, with its delivery's attempts.
    page.click("a[href^='/console/events/evt_']")
    page.wait_for_url(re.compile(r".*/console/events/evt_"))
    assert page.locator(".delivery .attempt").count() == 2
    assert '"order"' in page.inner_text("#payload")
    screenshot(page, "event", console_server)

    # Fix the receiver, redrive everything that matches, watch the queue empty.
    behaviour.status, behaviour.body = 200, "ok"
    dlq_page = f"{base}/console/dlq?subscription_id={sid}"
    page.goto(dlq_page)
    # The page's script redrives in chunks and shows its progress, then reloads.
    with page.expect_request(
        lambda r: (
            r.url.endswith("/console/dlq/redrive") and r.headers.get("accept") == "application/json"
        )
    ):
        page.click("#redrive-all button")
    page.wait_for_url(re.compile(r".*redriven=3"))
    assert "Redriven: 3." in page.inner_text("main")
    poll(
        lambda: (page.goto(dlq_page), page.locator("#dlq-empty").count() == 1)[1],
        "the DLQ page to show an empty queue",
    )
    assert dead_letters(api, sid) == []
    poll(
        lambda: {r.webhook_id for r in receiver.receipts if r.succeeded} >= set(events),
        "every event delivered after the redrive",
    )
    assert context.dialogs == []


# -- escaping -------------------------------------------------------------------------


def test_stored_markup_is_shown_as_text_and_never_runs(
    context: Any,
    console_server: ServerProcess,
    api: httpx.Client,
    receivers: ThreadedReceivers,
) -> None:
    receiver = receivers.start(Switchable(500, XSS))
    sub = subscribe(
        api,
        receiver.url("/xss"),
        description=XSS,
        event_types=["xss.test"],
        retry_schedule=[],
        headers={"X-Note": XSS},
    )
    event_id = publish(api, "xss.test", XSS, {"html": XSS, XSS: "key as markup"})
    (dead,) = poll(lambda: dead_letters(api, sub["id"]), "the dead letter")

    page = sign_in(context, console_server)
    base = console_server.base_url
    for path in (
        f"/console/events/{event_id}",
        f"/console/dlq/{dead['id']}",
        f"/console/dlq?subscription_id={sub['id']}",
        f"/console/subscriptions/{sub['id']}",
        "/console/subscriptions",
        f"/console/events?key={quote(XSS)}",
    ):
        page.goto(base + path)
        assert page.evaluate("window.__pwned") is None, path
        assert page.locator("main img").count() == 0, path
        assert page.locator("main script").count() == 0, path
        assert "<script>window.__pwned = 1</script>" in page.inner_text("main"), path
    assert context.dialogs == []


# -- CSRF --------------------------------------------------------------------------------


def test_a_post_from_another_site_is_refused_even_with_the_session_cookie(
    context: Any,
    console_server: ServerProcess,
    api: httpx.Client,
    receivers: ThreadedReceivers,
) -> None:
    sub = subscribe(api, receivers.start(Switchable()).url("/csrf"), event_types=["csrf.test"])
    page = sign_in(context, console_server)
    base = console_server.base_url
    page.goto(f"{base}/console/subscriptions/{sub['id']}")
    # Even a leaked CSRF token does not help another origin: the browser says
    # where the request comes from (Sec-Fetch-Site, Origin).
    token = page.locator("input[name=csrf]").first.get_attribute("value")
    attacker = receivers.serve_page(
        f"""<!doctype html><form id="f" method="post"
        action="{base}/console/subscriptions/{sub["id"]}/pause">
        <input name="csrf" value="{token}"></form>
        <script>document.getElementById("f").submit()</script>"""
    )
    with page.expect_navigation(url=re.compile(r".*/pause$")) as navigation:
        page.goto(attacker)
    response = navigation.value
    assert response is not None
    assert response.status == 403
    assert "another site" in page.inner_text("main") or "Origin" in page.inner_text("main")
    assert api.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "active"

    # Our own page's form does the same change.
    page.goto(f"{base}/console/subscriptions/{sub['id']}")
    page.click("text=Pause")
    page.wait_for_url(re.compile(r".*done=paused"))
    assert api.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "paused"


def test_mutations_need_the_session_csrf_token(
    console_server: ServerProcess, api: httpx.Client, receivers: ThreadedReceivers
) -> None:
    sub = subscribe(api, receivers.start(Switchable()).url("/token"), event_types=["t.test"])
    base = console_server.base_url
    with httpx.Client(base_url=base) as browserless:
        signed = browserless.post("/console/sign-in", data={"token": ADMIN_TOKEN})
        assert signed.status_code == 303
        for form in ({}, {"csrf": "forged"}):
            refused = browserless.post(f"/console/subscriptions/{sub['id']}/pause", data=form)
            assert refused.status_code == 403, refused.text
            assert "CSRF" in refused.text
        cross = browserless.post(
            f"/console/subscriptions/{sub['id']}/pause",
            data={"csrf": "x"},
            headers={"Origin": "https://evil.example"},
        )
        assert cross.status_code == 403
    assert api.get(f"/v1/subscriptions/{sub['id']}").json()["status"] == "active"


# -- keyboard and widths ---------------------------------------------------------------------


def test_the_console_works_by_keyboard(context: Any, console_server: ServerProcess) -> None:
    page = context.new_page()
    base = console_server.base_url
    page.goto(f"{base}/console/sign-in")
    # The token field has focus first (autofocus, which lands once the page has loaded).
    page.wait_for_function("document.activeElement && document.activeElement.id === 'token'")
    page.keyboard.type(ADMIN_TOKEN)
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/console/")

    page.keyboard.press("Tab")
    assert page.evaluate("document.activeElement.textContent") == "Skip to content"
    page.keyboard.press("Tab")  # the brand link
    reached = []
    for _ in NAVIGATION:
        page.keyboard.press("Tab")
        reached.append(page.evaluate("document.activeElement.textContent"))
    assert reached == NAVIGATION
    # Back to "Dead-letter queue" and follow it with Enter.
    for _ in range(3):
        page.keyboard.press("Shift+Tab")
    assert page.evaluate("document.activeElement.textContent") == "Dead-letter queue"
    page.keyboard.press("Enter")
    page.wait_for_url(f"{base}/console/dlq")
    # Every focusable control shows where the focus is.
    page.keyboard.press("Tab")
    outline = page.evaluate("getComputedStyle(document.activeElement).outlineStyle")
    assert outline != "none"


@pytest.mark.parametrize("viewport", [WIDE, NARROW], ids=["1280px", "390px"])
def test_pages_fit_the_width_without_horizontal_scrolling(
    browser: Any,
    console_server: ServerProcess,
    api: httpx.Client,
    receivers: ThreadedReceivers,
    viewport: dict[str, int],
) -> None:
    receiver = receivers.start(Switchable(500, "x" * 3000))
    sub = subscribe(
        api,
        receiver.url("/a-rather-long-path/" + "segment/" * 20),
        event_types=["width.test"],
        retry_schedule=[],
    )
    event_id = publish(api, "width.test", "k" * 200, {"long": "word" * 400})
    (dead,) = poll(lambda: dead_letters(api, sub["id"]), "the dead letter")
    context = browser.new_context(viewport=viewport)
    try:
        page = sign_in(context, console_server)
        for path in (
            "/console/",
            "/console/events",
            f"/console/events/{event_id}",
            "/console/subscriptions",
            f"/console/subscriptions/{sub['id']}",
            "/console/subscriptions/new",
            "/console/dlq",
            f"/console/dlq/{dead['id']}",
            "/console/event-types",
            "/console/tokens",
            "/console/tenants",
        ):
            page.goto(console_server.base_url + path)
            assert no_horizontal_scroll(page), (path, viewport, wider_than_the_page(page))
    finally:
        context.close()


# -- managing subscriptions, event types, tokens ---------------------------------------------


def test_a_subscription_is_managed_from_its_pages(
    context: Any,
    console_server: ServerProcess,
    api: httpx.Client,
    receivers: ThreadedReceivers,
) -> None:
    receiver = receivers.start(Switchable())
    page = sign_in(context, console_server)
    base = console_server.base_url

    # Create: a bad URL is explained on the form, then a good one is taken.
    page.click("nav >> text=Subscriptions")
    page.click("text=New subscription")
    page.fill("#s-url", "ftp://example.com/hook")
    page.click("button[type=submit] >> text=Create")
    assert "http or https" in page.inner_text("[role=alert]")
    page.fill("#s-url", receiver.url("/managed"))
    page.fill("#s-description", "managed in the console")
    page.fill("#s-types", "console.managed other.type")
    page.fill("#s-headers", "X-Env: staging")
    page.click("button[type=submit] >> text=Create")
    assert page.inner_text("h1") == "Subscription created"
    secret = page.inner_text("#secret").strip()
    sid = page.locator("main a.id").inner_text()
    made = api.get(f"/v1/subscriptions/{sid}").json()
    assert made["event_types"] == ["console.managed", "other.type"]
    assert made["headers"] == {"X-Env": "staging"}
    assert api.get(f"/v1/subscriptions/{sid}/secret").json()["secret"] == secret

    # Edit.
    page.goto(f"{base}/console/subscriptions/{sid}/edit")
    page.fill("#s-description", "edited")
    page.fill("#s-mif", "4")
    page.click("button[type=submit] >> text=Save")
    page.wait_for_url(re.compile(r".*done=saved"))
    edited = api.get(f"/v1/subscriptions/{sid}").json()
    assert (edited["description"], edited["max_in_flight"]) == ("edited", 4)

    # Rotate the secret: the new one is shown once and is the stored one.
    page.click("text=Rotate secret")
    rotated = page.inner_text("#secret").strip()
    assert rotated != secret
    assert api.get(f"/v1/subscriptions/{sid}/secret").json()["secret"] == rotated

    # A test event reaches this subscription (and only it), signed as any other.
    page.goto(f"{base}/console/subscriptions/{sid}")
    page.click("text=Send a test event")
    page.wait_for_url(re.compile(r".*/console/events/evt_"))
    event_id = page.url.rsplit("/", 1)[1]
    poll(lambda: receiver.for_event(event_id), "the test event at the receiver")
    (receipt,) = receiver.for_event(event_id)
    assert receipt.json["type"] == "eventrelay.test"
    assert receipt.headers["x-env"] == "staging"
    poll(
        lambda: (page.reload(), "succeeded" in page.inner_text(".delivery"))[1],
        "the event page to show the delivery succeeded",
    )

    # Replay the last hour: the test event is not of the subscribed types, the
    # replay makes no delivery of it; an event of a subscribed type is replayed.
    publish(api, "console.managed", None, {"n": 1})
    poll(lambda: len(receiver.receipts) >= 2, "the published event")
    page.goto(f"{base}/console/subscriptions/{sid}")
    page.fill("#r-since", "2000-01-01T00:00:00Z")
    page.click("button >> text=Replay")
    page.wait_for_url(re.compile(r".*replayed=1"))
    assert "Replay made 1 new deliveries." in page.inner_text("main")
    page.fill("#r-since", "not a time")
    page.click("button >> text=Replay")
    assert "2026-01-31T12:00:00Z" in page.inner_text("[role=alert]")

    # Pause, resume, delete (after a confirmation page).
    page.goto(f"{base}/console/subscriptions/{sid}")
    page.click("button >> text=Pause")
    assert api.get(f"/v1/subscriptions/{sid}").json()["status"] == "paused"
    page.click("button >> text=Resume")
    page.wait_for_url(re.compile(r".*done=resumed"))
    assert api.get(f"/v1/subscriptions/{sid}").json()["status"] == "active"
    page.click("text=Delete…")
    page.click("button >> text=Delete the subscription")
    page.wait_for_url(f"{base}/console/subscriptions")
    assert api.get(f"/v1/subscriptions/{sid}").status_code == 404
    page.goto(f"{base}/console/subscriptions/{sid}")
    assert page.inner_text("h1").startswith("404")


def test_event_types_show_the_difference_between_two_versions(
    context: Any, console_server: ServerProcess, api: httpx.Client
) -> None:
    name = f"console.diff.{uuid.uuid4().hex[:8]}"
    created = api.post("/v1/event-types", json={"name": name, "compatibility": "NONE"})
    assert created.status_code == 201, created.text
    v1 = {"type": "object", "properties": {"total": {"type": "number"}}}
    v2 = {
        "type": "object",
        "properties": {"total": {"type": "number"}, "currency": {"type": "string"}},
    }
    for schema in (v1, v2):
        added = api.post(f"/v1/event-types/{name}/schemas", json={"schema": schema})
        assert added.status_code == 201, added.text
    page = sign_in(context, console_server)
    page.click("nav >> text=Event types")
    page.click(f"text={name}")
    diff = page.inner_text("#diff")
    assert "version 1" in diff
    assert "version 2" in diff
    added_lines = page.locator("#diff .add").all_inner_texts()
    assert any('"currency"' in line for line in added_lines)
    assert not page.locator("#diff .del").all_inner_texts()
    page.select_option("#v-a", "2")
    page.select_option("#v-b", "1")
    page.click("button >> text=Show")
    page.wait_for_url(re.compile(r".*\?a=2&b=1$"))
    removed = page.locator("#diff .del").all_inner_texts()
    assert any('"currency"' in line for line in removed), (page.url, page.inner_text("#diff"))


def test_tokens_are_issued_once_and_revoked(context: Any, console_server: ServerProcess) -> None:
    page = sign_in(context, console_server)
    page.click("nav >> text=Tokens")
    page.select_option("#t-scope", "ingest")
    page.fill("#t-desc", "issued in the console")
    page.click("button >> text=Issue")
    token = page.inner_text("#new-token").strip()
    token_id = page.locator(".notice .id").inner_text()
    with httpx.Client(base_url=console_server.base_url) as producer:
        headers = {"Authorization": f"Bearer {token}", "Idempotency-Key": uuid.uuid4().hex}
        sent = producer.post("/v1/events", json={"type": "t", "data": {}}, headers=headers)
        assert sent.status_code == 202, sent.text
        page.goto(f"{console_server.base_url}/console/tokens")
        assert token not in page.content()  # listed by ID only
        row = page.locator("#tokens tr", has_text=token_id)
        row.locator("button >> text=Revoke").click()
        page.wait_for_url(re.compile(r".*revoked=1"))
        assert token_id not in page.inner_text("main")

        def refused() -> bool:
            headers["Idempotency-Key"] = uuid.uuid4().hex
            answer = producer.post("/v1/events", json={"type": "t", "data": {}}, headers=headers)
            return answer.status_code == 401

        poll(refused, "the revoked token to be refused")


# -- tenants: the switcher, confined tokens, the portal -------------------------------------


def tenant_with_data(api: httpx.Client, receivers: ThreadedReceivers, name: str) -> dict[str, str]:
    """A tenant with a failing subscription, an event and its dead letter."""
    tenant = f"{name}-{uuid.uuid4().hex[:6]}"
    created = api.post("/v1/tenants", json={"id": tenant, "name": name.title()})
    assert created.status_code == 201, created.text
    headers = {"Eventrelay-Tenant": tenant}
    sub = api.post(
        "/v1/subscriptions",
        json={
            "url": receivers.start(Switchable(500, "no")).url(f"/{tenant}"),
            "event_types": ["tenant.test"],
            "retry_schedule": [],
            "description": f"{name}'s subscription",
        },
        headers=headers,
    )
    assert sub.status_code == 201, sub.text
    sent = api.post(
        "/v1/events",
        json={"type": "tenant.test", "data": {"of": tenant}},
        headers={**headers, "Idempotency-Key": uuid.uuid4().hex},
    )
    assert sent.status_code == 202, sent.text

    def dead() -> list[dict[str, Any]]:
        page = api.get("/v1/dlq", params={"subscription_id": sub.json()["id"]}, headers=headers)
        items: list[dict[str, Any]] = page.json()["items"]
        return items

    (letter,) = poll(dead, f"{tenant}'s dead letter")
    return {
        "tenant": tenant,
        "subscription": sub.json()["id"],
        "event": sent.json()["id"],
        "dead_letter": letter["id"],
    }


def test_a_global_admin_works_in_one_tenant_at_a_time(
    context: Any,
    console_server: ServerProcess,
    api: httpx.Client,
    receivers: ThreadedReceivers,
) -> None:
    acme = tenant_with_data(api, receivers, "acme")
    page = sign_in(context, console_server)
    base = console_server.base_url
    assert page.inner_text("#tenant") == "default"
    page.click("nav >> text=Tenants")
    ids = page.locator("#tenants tbody td.id").all_inner_texts()
    assert ids[0] == "default"
    assert acme["tenant"] in ids
    assert acme["subscription"] not in page.content()

    page.click(f"button >> text=Work in {acme['tenant']}")
    page.wait_for_url(f"{base}/console/")
    assert page.inner_text("#tenant") == acme["tenant"]
    assert acme["subscription"] in page.inner_text("#failing")
    page.goto(f"{base}/console/subscriptions")
    assert page.locator("#subscriptions tbody tr").count() == 1
    page.goto(f"{base}/console/dlq/{acme['dead_letter']}")
    assert page.inner_text("h1") == acme["dead_letter"]


def test_a_tenant_token_signs_in_confined_to_its_tenant(
    context: Any,
    console_server: ServerProcess,
    api: httpx.Client,
    receivers: ThreadedReceivers,
) -> None:
    mine, other = (tenant_with_data(api, receivers, n) for n in ("initech", "globex"))
    issued = api.post("/v1/tokens", json={"scope": "admin", "tenant_id": mine["tenant"]})
    assert issued.status_code == 201, issued.text
    page = sign_in(context, console_server, issued.json()["token"])
    base = console_server.base_url
    assert page.inner_text("#tenant") == mine["tenant"]
    nav = page.locator("nav a").all_inner_texts()
    assert "Tenants" not in nav
    assert "Tokens" in nav
    assert page.locator("text=switch").count() == 0
    for path in (
        "/console/tenants",
        f"/console/subscriptions/{other['subscription']}",
        f"/console/events/{other['event']}",
        f"/console/dlq/{other['dead_letter']}",
    ):
        response = page.goto(base + path)
        assert response is not None
        assert response.status == 404, path
    page.goto(f"{base}/console/subscriptions/{mine['subscription']}")
    assert page.inner_text("h1") == mine["subscription"]


def test_a_portal_link_shows_one_tenant_and_nothing_of_another(
    browser: Any,
    console_server: ServerProcess,
    api: httpx.Client,
    receivers: ThreadedReceivers,
) -> None:
    mine, other = (tenant_with_data(api, receivers, n) for n in ("umbrella", "hooli"))
    made = api.post(f"/v1/tenants/{mine['tenant']}/portal-links", json={"expires_in": 600})
    assert made.status_code == 201, made.text
    link = made.json()["url"]
    assert link.startswith(f"{console_server.base_url}/console/portal?")
    base = console_server.base_url

    # Followed from another site, as a customer's dashboard would link to it.
    context = browser.new_context(viewport=WIDE)
    try:
        page = context.new_page()
        page.goto(receivers.serve_page(f'<!doctype html><a id="go" href="{link}">portal</a>'))
        page.click("#go")
        page.wait_for_url(f"{base}/console/")
        assert page.inner_text("#tenant") == mine["tenant"]
        assert page.locator("nav a").all_inner_texts() == [
            "Overview",
            "Events",
            "Subscriptions",
            "Dead-letter queue",
        ]
        page.goto(f"{base}/console/subscriptions")
        listed = page.inner_text("#subscriptions")
        assert mine["subscription"] in listed
        assert other["subscription"] not in listed
        page.goto(f"{base}/console/dlq")
        assert mine["dead_letter"] in page.inner_text("#dead-letters")
        for path in (
            f"/console/subscriptions/{other['subscription']}",
            f"/console/events/{other['event']}",
            f"/console/dlq/{other['dead_letter']}",
            "/console/tenants",
            "/console/tokens",
            "/console/event-types",
        ):
            response = page.goto(base + path)
            assert response is not None
            assert response.status == 404, path
            assert "Not Found" in page.inner_text("h1")
        csp = page.goto(f"{base}/console/").headers["content-security-policy"]  # type: ignore[union-attr]
        assert "frame-ancestors 'none'" in csp
    finally:
        context.close()

    # A changed link is refused and signs nobody in.
    forged = link.replace(f"tenant={mine['tenant']}", f"tenant={other['tenant']}")
    stretched = re.sub(r"expires=(\d+)", lambda m: f"expires={int(m.group(1)) + 86400}", link)
    for bad in (forged, stretched):
        context = browser.new_context(viewport=WIDE)
        try:
            page = context.new_page()
            response = page.goto(bad)
            assert response is not None
            assert response.status == 403, bad
            assert "not one this installation made" in page.inner_text("main")
            assert context.cookies() == []
        finally:
            context.close()


def portal_key(server: ServerProcess) -> bytes:
    """The installation's portal signing key, as the server stored it (it makes
    it with its first link). Read on a thread of its own: Playwright's event
    loop runs on the test's."""

    async def read() -> str:
        db = open_database(server.database_url)
        try:
            async with db.read() as conn:
                query = select(console_keys.c.secret).where(console_keys.c.name == PORTAL_KEY)
                return str((await conn.execute(query)).scalar_one())
        finally:
            await db.dispose()

    with ThreadPoolExecutor(1) as thread:
        return thread.submit(asyncio.run, read()).result(timeout=30).encode()


def test_a_portal_link_past_its_lifetime_is_refused_and_its_session_ends_with_it(
    browser: Any, console_server: ServerProcess, api: httpx.Client
) -> None:
    tenant = f"fleeting-{uuid.uuid4().hex[:6]}"
    assert api.post("/v1/tenants", json={"id": tenant, "name": "Fleeting"}).status_code == 201
    assert api.post(f"/v1/tenants/{tenant}/portal-links").status_code == 201
    # The API's shortest lifetime is a minute: a link made with the same key
    # and code for a few seconds is the same link, sooner past its end.
    expires_at = datetime.now(UTC).replace(microsecond=0) + timedelta(seconds=SHORT_LIFETIME)
    params = portal.link_params(portal_key(console_server), tenant, expires_at)
    base = console_server.base_url
    link = f"{base}/console/portal?{urlencode(params)}"

    context = browser.new_context(viewport=WIDE)
    try:
        page = context.new_page()
        page.goto(link)
        page.wait_for_url(f"{base}/console/")
        assert page.inner_text("#tenant") == tenant
        (cookie,) = context.cookies()

        # Past its end, the session is over on the server, whatever the browser keeps,
        poll(
            lambda: (
                httpx.get(
                    f"{base}/console/",
                    cookies={cookie["name"]: cookie["value"]},
                    follow_redirects=False,
                ).status_code
                == 303
            ),
            "the portal session to end with its link",
            timeout=SHORT_LIFETIME + POLL_TIMEOUT,
        )
        assert datetime.now(UTC) >= expires_at
        page.goto(f"{base}/console/")
        assert page.url.startswith(f"{base}/console/sign-in")

        # and the link is refused with a page that says why, signing nobody in.
        response = page.goto(link)
        assert response is not None
        assert response.status == 403
        assert "the portal link has expired" in page.inner_text("main")
        assert context.cookies() == []
    finally:
        context.close()


def test_portal_links_are_for_global_admins_and_bounded(
    console_server: ServerProcess, api: httpx.Client
) -> None:
    tenant = f"bounded-{uuid.uuid4().hex[:6]}"
    assert api.post("/v1/tenants", json={"id": tenant, "name": "B"}).status_code == 201
    default = api.post(f"/v1/tenants/{tenant}/portal-links")
    assert default.status_code == 201, default.text
    expires_at = datetime.fromisoformat(default.json()["expires_at"].replace("Z", "+00:00"))
    assert 3500 < (expires_at - datetime.now(UTC)).total_seconds() <= 3600
    for expires_in in (59, 86401, "soon"):
        answer = api.post(f"/v1/tenants/{tenant}/portal-links", json={"expires_in": expires_in})
        assert answer.status_code == 422, answer.text
    assert api.post("/v1/tenants/nobody-here/portal-links").status_code == 404
    confined = api.post("/v1/tokens", json={"scope": "admin", "tenant_id": tenant}).json()
    with console_server.client(token=confined["token"]) as tenant_admin:
        refused = tenant_admin.post(f"/v1/tenants/{tenant}/portal-links")
        assert refused.status_code == 403, refused.text
