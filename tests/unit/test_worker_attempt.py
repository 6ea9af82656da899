"""The attempt step with a fake sender: what each kind of outcome becomes. No I/O."""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from standardwebhooks.webhooks import Webhook

from app.domain.circuit import CircuitPolicy
from app.domain.retry import Outcome
from app.domain.sealing import Keyring, key_id
from app.metrics import Metrics
from app.store.sealed import SUBSCRIPTIONS, Sealed
from app.store.work import Completion
from app.worker.attempt import USER_AGENT, AttemptStep
from app.worker.lines import LinePolicy
from app.worker.protocol import SendResult, accepted, answered, delivered, failed, gone, retry_after
from tests.unit.worker_fakes import SECRET, FakeSender, ready, subscription

SCHEDULE = (10.0, 20.0)
OLD_SECRET = "whsec_" + "QUFBQUFBQUFBQUFBQUFBQUFBQUFBQUFB"


async def attempt(
    result: SendResult, *, attempts: int = 0, **fields: Any
) -> tuple[Completion, FakeSender, Metrics]:
    sender = FakeSender(answer=lambda _: result)
    metrics = Metrics()
    step = AttemptStep(sender, metrics, owner="w-1", retry_schedule=SCHEDULE, timeout_ms=1500)
    lines = LinePolicy(4, 1, CircuitPolicy())
    lines.load("sub_1", subscription("sub_1", **fields), time.monotonic())
    item = ready("sub_1", attempts=attempts)
    done = await step.run(lines.lines["sub_1"], item.delivery, item.event, item.payload)
    step.count_successes()
    return done, sender, metrics


def count(metrics: Metrics, outcome: str) -> float | None:
    return metrics.registry.get_sample_value(
        "eventrelay_delivery_attempts_total", {"outcome": outcome}
    )


async def test_a_success_is_signed_sent_to_the_subscription_and_succeeds() -> None:
    done, sender, metrics = await attempt(delivered(7), headers={"X-Team": "billing"})

    (sent,) = sender.sent
    assert sent.destination == "http://receiver.test/sub_1"
    assert sent.message.timeout_s == 1.5
    headers = dict(sent.message.headers)
    assert headers["user-agent"] == USER_AGENT
    assert headers["X-Team"] == "billing"
    Webhook(SECRET).verify(sent.message.payload, headers)
    assert (done.status, done.next_attempt_at, done.summary) == ("succeeded", None, None)
    assert (done.owner, done.duration_ms, done.status_code) == ("w-1", 7, 200)
    assert count(metrics, "success") == 1


async def test_a_failure_retries_on_the_schedule() -> None:
    before = datetime.now(UTC)
    done, _, metrics = await attempt(failed(3, "connection refused"), attempts=1)

    assert done.status == "pending"
    assert done.error == done.summary == "connection refused"
    assert done.next_attempt_at is not None
    delay = (done.next_attempt_at - before).total_seconds()
    assert SCHEDULE[1] * 0.8 - 1 <= delay <= SCHEDULE[1] * 1.2 + 1
    assert count(metrics, "retry") == 1


async def test_the_subscriptions_own_schedule_and_timeout_win() -> None:
    before = datetime.now(UTC)
    done, sender, _ = await attempt(failed(3, "boom"), retry_schedule=[100.0], timeout_ms=250)
    assert sender.sent[0].message.timeout_s == 0.25
    assert done.next_attempt_at is not None
    assert done.next_attempt_at - before >= timedelta(seconds=80)


async def test_the_last_attempt_dead_letters() -> None:
    done, _, metrics = await attempt(failed(3, "boom"), attempts=len(SCHEDULE))
    assert done.status == "dead"
    assert done.summary == f"gave up after {len(SCHEDULE) + 1} attempts; last: boom"
    assert count(metrics, "dead_letter") == 1


async def test_gone_dead_letters_at_once() -> None:
    done, _, _ = await attempt(gone(3))
    assert (done.status, done.status_code) == ("dead", 410)
    assert done.summary is not None
    assert done.summary.startswith("the endpoint answered 410 Gone")


@pytest.mark.parametrize("status_code", [429, 503])
async def test_retry_after_is_honoured(status_code: int) -> None:
    before = datetime.now(UTC)
    done, _, _ = await attempt(retry_after(3, 600, status_code=status_code))
    assert done.status == "pending"
    assert done.next_attempt_at is not None
    assert done.next_attempt_at - before >= timedelta(seconds=599)


async def test_the_previous_secret_signs_alongside_until_it_expires() -> None:
    expires = datetime.now(UTC) + timedelta(hours=1)
    _, sender, _ = await attempt(
        delivered(1), previous_secret=Sealed.plain(OLD_SECRET), previous_secret_expires_at=expires
    )
    headers = dict(sender.sent[0].message.headers)
    assert len(headers["webhook-signature"].split(" ")) == 2
    Webhook(OLD_SECRET).verify(sender.sent[0].message.payload, headers)

    expired = datetime.now(UTC) - timedelta(seconds=1)
    _, sender, _ = await attempt(
        delivered(1), previous_secret=Sealed.plain(OLD_SECRET), previous_secret_expires_at=expired
    )
    assert len(sender.sent[0].message.headers["webhook-signature"].split(" ")) == 1


async def test_a_secret_that_cannot_be_opened_fails_the_attempt_and_sends_nothing() -> None:
    gone_key = os.urandom(32)
    aad = SUBSCRIPTIONS.aad("secret", "sub_1")
    stored = Keyring([gone_key]).seal(SECRET, aad)
    unopenable = Sealed(stored, aad, "subscriptions.secret of sub_1", Keyring([os.urandom(32)]))

    done, sender, metrics = await attempt(failed(3, "unused"), secret=unopenable)

    assert sender.sent == []
    assert done.status == "pending"
    assert done.error is not None
    assert key_id(gone_key) in done.error
    assert "EVENTRELAY_ENCRYPTION_KEYS" in done.error
    assert SECRET not in done.error
    assert count(metrics, "retry") == 1


async def test_a_sealed_secret_signs_like_a_plain_one() -> None:
    ring = Keyring([os.urandom(32)])
    aad = SUBSCRIPTIONS.aad("secret", "sub_1")
    sealed = Sealed(ring.seal(SECRET, aad), aad, "subscriptions.secret of sub_1", ring)
    _, sender, _ = await attempt(delivered(1), secret=sealed)
    Webhook(SECRET).verify(sender.sent[0].message.payload, dict(sender.sent[0].message.headers))


async def test_shared_outcomes_are_the_same_as_built_ones() -> None:
    assert delivered(1).outcome == Outcome(status_code=200)
    assert delivered(1, 204).outcome == Outcome(status_code=204)
    assert delivered(1, 204).outcome is delivered(2, 204).outcome
    assert answered(503, "7") == Outcome(status_code=503, retry_after="7")
    assert accepted(1, "ok").outcome == Outcome(accepted=True)


class _BrokenSender(FakeSender):
    def connection(self, destination: str) -> Any:
        raise ValueError(f"no route to {destination}")


async def _prepare_fails(attempts: int) -> tuple[Completion, Metrics]:
    sender, metrics = _BrokenSender(), Metrics()
    step = AttemptStep(sender, metrics, owner="w-1", retry_schedule=SCHEDULE, timeout_ms=1500)
    lines = LinePolicy(4, 1, CircuitPolicy())
    lines.load("sub_1", subscription("sub_1"), time.monotonic())
    item = ready("sub_1", attempts=attempts)
    done = await step.run(lines.lines["sub_1"], item.delivery, item.event, item.payload)
    assert sender.sent == []
    return done, metrics


async def test_an_attempt_that_cannot_be_prepared_fails_and_is_retried_then_dead_lettered() -> None:
    """Not an attempt without an outcome, whose delivery would come back after
    its lease and fail the same way for ever."""
    done, metrics = await _prepare_fails(attempts=0)
    assert done.status == "pending"
    assert done.next_attempt_at is not None
    assert done.error == (
        "the attempt could not be prepared: ValueError: no route to http://receiver.test/sub_1"
    )
    assert done.request_headers is None, "nothing was sent"
    assert count(metrics, "retry") == 1

    last, metrics = await _prepare_fails(attempts=len(SCHEDULE))
    assert last.status == "dead"
    assert count(metrics, "dead_letter") == 1
