"""Operator events: what eventrelay reports about deliveries and subscriptions,
as events of its own.

They are ordinary events (the events table, fan-out to every subscription
whose patterns name them, per-key order, the ordinary worker), built here and
written by the store in the transaction that makes the change they report, so
that one is never lost and never invented. The rules:

* types starting with ``eventrelay.`` are reserved: a client may not send them
  (:func:`app.domain.events.client_type`) nor register them as event types, and ``*``
  does not match them (:mod:`app.domain.filters`);
* an operator event's key is the subscription it reports on, so the events
  about one subscription arrive in the order they happened;
* it is never delivered to the subscription it reports on (that one is the
  failing one, and a failing operator-event subscription does not report on
  itself);
* no operator event is made about the delivery of an operator event
  (:func:`reports_dead_letter`).

An operator event belongs to its subscription's tenant (and so reaches only
that tenant's subscriptions); :func:`operator_event` is the one place that
builds them.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import orjson

from app.domain.events import RESERVED_PREFIX, NewEvent, is_reserved
from app.domain.ids import new_id

__all__ = ["RESERVED_PREFIX", "is_reserved"]

DEAD_LETTERED = "eventrelay.delivery.dead_lettered"
DISABLED = "eventrelay.subscription.disabled"
CIRCUIT_OPENED = "eventrelay.subscription.circuit_opened"
CIRCUIT_CLOSED = "eventrelay.subscription.circuit_closed"
TYPES = (DEAD_LETTERED, DISABLED, CIRCUIT_OPENED, CIRCUIT_CLOSED)
DISABLE_REASONS = ("gone", "failing", "manual")


def reports_dead_letter(event_type: str) -> bool:
    """Whether a delivery of an event of ``event_type`` that dead-letters is
    reported: not when it carries an operator event (no loops)."""
    return not is_reserved(event_type)


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A delivery that has just entered the DLQ, as its row now says."""

    delivery_id: str
    subscription_id: str
    event_id: str
    event_type: str
    attempts: int
    last_status_code: int | None
    last_error: str | None
    tenant_id: str


def operator_event(
    event_type: str, tenant_id: str, subscription_id: str, data: dict[str, object], at: datetime
) -> NewEvent:
    """An operator event about ``subscription_id`` (of ``tenant_id``, the event's
    tenant too), received (and occurred) ``at``. Its key is the subscription:
    per-key order keeps one subscription's story in order."""
    return NewEvent(
        id=new_id("evt"),
        type=event_type,
        key=subscription_id,
        data_json=orjson.dumps(data).decode(),
        schema_version=None,
        occurred_at=at,
        received_at=at,
        idempotency_key=None,
        fingerprint=None,
        tenant_id=tenant_id,
    )


def dead_lettered(dead: DeadLetter, at: datetime) -> NewEvent:
    return operator_event(
        DEAD_LETTERED,
        dead.tenant_id,
        dead.subscription_id,
        {
            "delivery_id": dead.delivery_id,
            "subscription_id": dead.subscription_id,
            "event_id": dead.event_id,
            "event_type": dead.event_type,
            "attempts": dead.attempts,
            "last_status_code": dead.last_status_code,
            "last_error": dead.last_error,
        },
        at,
    )


def disabled(tenant_id: str, subscription_id: str, reason: str, at: datetime) -> NewEvent:
    if reason not in DISABLE_REASONS:
        raise ValueError(f"unknown disable reason {reason!r}")
    data: dict[str, object] = {"subscription_id": subscription_id, "reason": reason}
    return operator_event(DISABLED, tenant_id, subscription_id, data, at)


def circuit_changed(
    tenant_id: str, subscription_id: str, *, opened: bool, consecutive_failures: int, at: datetime
) -> NewEvent:
    return operator_event(
        CIRCUIT_OPENED if opened else CIRCUIT_CLOSED,
        tenant_id,
        subscription_id,
        {"subscription_id": subscription_id, "consecutive_failures": consecutive_failures},
        at,
    )


def reports_on(event: NewEvent) -> str | None:
    """The subscription an operator event reports on (None for a client event)."""
    return event.key if is_reserved(event.type) else None
