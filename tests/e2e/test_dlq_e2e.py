"""The dead-letter queue end to end: the real server and worker, real receivers.

A receiver that always fails fills the DLQ after exactly ``len(retry_schedule) + 1``
attempts; once it is fixed, a bulk redrive delivers every dead letter once more
and exactly once; discarding a blocked key's dead head lets the key move on;
replay re-delivers in per-key order; and the operator's CLI lists, redrives and
discards. One server per backend serves the module; each test has its own
event type and subscription.
"""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from aiohttp import web

from tests.conftest import ADMIN_TOKEN
from tests.e2e.conftest import ServerProcess, eventrelay_executable, start_module_server
from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import Receipt, Receiver, ReceiverPool, reply, wait_until

SCHEDULE = [0.05, 0.05, 0.05]
ATTEMPTS = len(SCHEDULE) + 1
EVENTS = 5
SETTLE = 30.0
LONG_BODY = "x" * 10_000


@pytest.fixture(scope="module")
def shared_server(
    module_database_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # Every test makes a receiver fail many times in a row: keep the circuit
    # breaker (20 failures, then a 30 s pause) out of these tests' way.
    yield from start_module_server(
        module_database_url,
        tmp_path_factory,
        env={"EVENTRELAY_CIRCUIT_FAILURE_THRESHOLD": "10000"},
    )


class Switch:
    """A receiver behaviour the test flips: failing (500, a long body) until fixed."""

    def __init__(self) -> None:
        self.fixed = False

    async def __call__(self, _: Receipt) -> web.StreamResponse:
        return reply(200, body="ok") if self.fixed else reply(500, body=LONG_BODY)


async def dlq_items(relay: Relay, **params: Any) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = params | {"limit": 500} | ({"cursor": cursor} if cursor else {})
        response = await relay.http.get("/v1/dlq", params=query)
        assert response.status_code == 200, response.text
        body = response.json()
        items += body["items"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items


async def fill_dlq(
    relay: Relay, receiver: Receiver, count: int = EVENTS, **fields: Any
) -> tuple[dict[str, Any], list[str], list[dict[str, Any]]]:
    """Subscribe a failing receiver, publish ``count`` events, wait for all to die."""
    event_type = unique_type("dlq")
    sub = await relay.subscribe(
        receiver.url(), event_types=[event_type], retry_schedule=SCHEDULE, **fields
    )
    ids = [(await relay.publish(event_type, {"n": n}, key=f"key-{n}"))["id"] for n in range(count)]

    async def all_dead() -> list[dict[str, Any]] | None:
        items = await dlq_items(relay, subscription_id=sub["id"])
        return items if len(items) == count else None

    items = await wait_until(
        all_dead, SETTLE, message=lambda: f"{count} dead letters; receipts {len(receiver.receipts)}"
    )
    return sub, ids, items


async def test_a_failing_receiver_fills_the_dlq_and_a_bulk_redrive_delivers_each_once(
    relay: Relay, receivers: ReceiverPool
) -> None:
    switch = Switch()
    receiver = await receivers.start(switch)
    sub, ids, items = await fill_dlq(relay, receiver, ordering="none")

    assert sorted(i["event_id"] for i in items) == sorted(ids)
    per_event = Counter(r.webhook_id for r in receiver.receipts)
    assert per_event == dict.fromkeys(ids, ATTEMPTS), "exactly len(retry_schedule) + 1 attempts"
    for item in items:
        assert item["attempts"] == ATTEMPTS
        assert item["last_status_code"] == 500
        assert item["subscription_id"] == sub["id"]
        detail = (await relay.http.get(f"/v1/dlq/{item['id']}")).json()
        signatures = {r.headers["webhook-signature"] for r in receiver.for_event(item["event_id"])}
        assert detail["event"]["id"] == item["event_id"]
        assert [a["attempt"] for a in detail["attempts"]] == list(range(1, ATTEMPTS + 1))
        for attempt in detail["attempts"]:
            assert attempt["status_code"] == 500
            assert attempt["response_body"], attempt
            assert len(attempt["response_body"].encode()) <= 4096
            assert LONG_BODY.startswith(attempt["response_body"])
            # The headers the attempt sent, as the receiver got them.
            sent = attempt["request_headers"]
            assert sent["webhook-id"] == item["event_id"]
            assert sent["webhook-signature"] in signatures
        assert (await relay.delivery(item["event_id"]))["status"] == "dead"
        assert len(await relay.attempts(item["event_id"])) == ATTEMPTS

    # The operator fixes the receiver and redrives everything of the subscription.
    switch.fixed = True
    response = await relay.http.post("/v1/dlq/redrive", json={"subscription_id": sub["id"]})
    assert response.status_code == 200, response.text
    assert response.json() == {"redriven": EVENTS}

    async def all_succeeded() -> bool:
        statuses = [(await relay.delivery(i))["status"] for i in ids]
        return statuses == ["succeeded"] * EVENTS

    await wait_until(all_succeeded, SETTLE, message="every redriven delivery succeeds")
    assert Counter(r.webhook_id for r in receiver.receipts) == dict.fromkeys(ids, ATTEMPTS + 1)
    assert Counter(r.webhook_id for r in receiver.receipts if r.succeeded) == dict.fromkeys(ids, 1)
    assert await dlq_items(relay, subscription_id=sub["id"]) == []
    for event_id in ids:
        assert len(await relay.attempts(event_id)) == ATTEMPTS + 1
    stats = await relay.stats()
    assert stats["deliveries"]["succeeded"] >= EVENTS
    # Running it again finds nothing.
    again = await relay.http.post("/v1/dlq/redrive", json={"subscription_id": sub["id"]})
    assert again.json() == {"redriven": 0}


async def test_discarding_the_dead_head_unblocks_its_key(
    relay: Relay, receivers: ReceiverPool
) -> None:
    async def fail_first(receipt: Receipt) -> web.StreamResponse:
        return reply(500) if receipt.data["n"] == 0 else reply(200)

    receiver = await receivers.start(fail_first)
    event_type = unique_type("block")
    sub = await relay.subscribe(
        receiver.url(),
        event_types=[event_type],
        retry_schedule=SCHEDULE,
        ordering="key",
        on_dead_letter="block",
    )
    head = (await relay.publish(event_type, {"n": 0}, key="k"))["id"]
    nxt = (await relay.publish(event_type, {"n": 1}, key="k"))["id"]
    other = (await relay.publish(event_type, {"n": 2}, key="other"))["id"]

    items = await wait_until(
        lambda: dlq_items(relay, subscription_id=sub["id"]), SETTLE, message="the head dies"
    )
    assert [i["event_id"] for i in items] == [head]
    assert items[0]["key"] == "k"
    await wait_until(lambda: other in receiver.succeeded_ids(), SETTLE, message="other key")
    assert (await relay.delivery(nxt))["status"] == "pending"
    assert nxt not in receiver.ids(), "the key waits on its dead letter"

    response = await relay.http.delete(f"/v1/dlq/{items[0]['id']}")
    assert response.status_code == 204
    await wait_until(lambda: nxt in receiver.succeeded_ids(), SETTLE, message="key moves on")
    assert (await relay.delivery(head))["status"] == "discarded"
    assert (await relay.http.get(f"/v1/dlq/{items[0]['id']}")).status_code == 404
    assert Counter(r.webhook_id for r in receiver.receipts)[head] == ATTEMPTS


async def test_replay_redelivers_in_per_key_order(relay: Relay, receivers: ReceiverPool) -> None:
    receiver = await receivers.start()
    event_type = unique_type("replay")
    since = datetime.now(UTC) - timedelta(seconds=5)
    published = []
    for seq in range(4):
        for key in ("a", "b", "c"):
            body = {"key": key, "seq": seq}
            published.append((await relay.publish(event_type, body, key=key))["id"])
    # Subscribed after the events were stored: only a replay reaches it.
    sub = await relay.subscribe(receiver.url(), event_types=[event_type], ordering="key")
    response = await relay.http.post(
        f"/v1/subscriptions/{sub['id']}/replay",
        json={"since": since.isoformat().replace("+00:00", "Z")},
    )
    assert response.status_code == 202, response.text
    assert response.json() == {"replayed": len(published)}

    await wait_until(lambda: receiver.succeeded_ids() >= set(published), SETTLE, message="replayed")
    assert Counter(r.webhook_id for r in receiver.receipts) == dict.fromkeys(published, 1)
    order: dict[str, list[int]] = {}
    for receipt in sorted(receiver.receipts, key=lambda r: r.at):
        order.setdefault(receipt.data["key"], []).append(receipt.data["seq"])
    assert order == {"a": [0, 1, 2, 3], "b": [0, 1, 2, 3], "c": [0, 1, 2, 3]}
    # In order: each event's request started after the previous one of its key finished.
    for key in order:
        mine = sorted((r for r in receiver.receipts if r.data["key"] == key), key=lambda r: r.at)
        for earlier, later in zip(mine, mine[1:], strict=False):
            assert earlier.finished_at is not None
            assert earlier.finished_at <= later.at


async def run_cli(*args: str) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        eventrelay_executable(),
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_lists_redrives_and_discards(
    relay: Relay, receivers: ReceiverPool, shared_server: ServerProcess
) -> None:
    switch = Switch()
    receiver = await receivers.start(switch)
    sub, ids, items = await fill_dlq(relay, receiver, count=3, ordering="none")
    conn = ["--url", shared_server.base_url, "--token", ADMIN_TOKEN]

    code, out, err = await run_cli("dlq", *conn, "list", "--subscription-id", sub["id"])
    assert code == 0, err
    for item in items:
        assert item["id"] in out
    assert out.count("dlv_") == 3

    code, out, err = await run_cli(
        "dlq", *conn, "list", "--subscription-id", sub["id"], "--json", "--limit", "0"
    )
    assert code == 0, err
    listed = [json.loads(line) for line in out.splitlines() if line.strip()]
    assert sorted(i["id"] for i in listed) == sorted(i["id"] for i in items)

    code, out, err = await run_cli("dlq", *conn, "show", items[0]["id"])
    assert code == 0, err
    assert items[0]["event_id"] in out

    discarded = items[0]
    code, out, err = await run_cli("dlq", *conn, "discard", discarded["id"])
    assert code == 0, err
    assert discarded["id"] in out
    assert (await relay.delivery(discarded["event_id"]))["status"] == "discarded"

    switch.fixed = True
    code, out, err = await run_cli("dlq", *conn, "redrive", "--subscription-id", sub["id"])
    assert code == 0, err
    assert "redriven 2" in out
    assert "redrive" in err, "progress is shown on stderr"
    rest = [i["event_id"] for i in items[1:]]
    await wait_until(
        lambda: receiver.succeeded_ids() >= set(rest), SETTLE, message="redriven by the CLI"
    )
    assert await dlq_items(relay, subscription_id=sub["id"]) == []
    assert discarded["event_id"] not in receiver.succeeded_ids()

    # Unknown ids fail with a message and a non-zero exit.
    code, _, err = await run_cli("dlq", *conn, "discard", "dlv_unknown")
    assert code != 0
    assert "404" in err


async def test_the_cli_takes_url_and_token_after_the_action(
    relay: Relay, shared_server: ServerProcess
) -> None:
    """The form in the issue: ``eventrelay dlq list --url … --token …``."""
    code, out, err = await run_cli(
        "dlq", "list", "--url", shared_server.base_url, "--token", ADMIN_TOKEN, "--limit", "1"
    )
    assert code == 0, err
    assert "ID" in out
