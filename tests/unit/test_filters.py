"""Event-type filters: ``*``, a trailing ``.*``, or an exact name."""

from __future__ import annotations

import pytest

from app.domain.filters import any_matches, type_matches

CASES = [
    ("*", "order.created", True),
    ("*", "x", True),
    ("*", "a/b:c-d_e", True),
    ("order.*", "order.created", True),
    ("order.*", "order.created.v2", True),
    ("order.*", "order", False),
    ("order.*", "orders.x", False),
    ("order.*", "orders", False),
    ("order.*", "ORDER.created", False),
    ("order.*", "xorder.created", False),
    ("order.*", "sub.order.created", False),
    ("order.created.*", "order.created.v2", True),
    ("order.created.*", "order.created", False),
    ("order.created", "order.created", True),
    ("order.created", "order.created.v2", False),
    ("order.created", "order", False),
    ("order.created", "Order.Created", False),
    ("order", "order.created", False),
    # Reserved types (operator events) match only patterns that name them.
    ("*", "eventrelay.delivery.dead_lettered", False),
    ("eventrelay.*", "eventrelay.delivery.dead_lettered", True),
    ("eventrelay.delivery.*", "eventrelay.delivery.dead_lettered", True),
    ("eventrelay.subscription.*", "eventrelay.delivery.dead_lettered", False),
    ("eventrelay.delivery.dead_lettered", "eventrelay.delivery.dead_lettered", True),
    ("*", "eventrelayx.y", True),
    ("*", "Eventrelay.x", True),
]


@pytest.mark.parametrize(("pattern", "event_type", "expected"), CASES)
def test_type_matches(pattern: str, event_type: str, expected: bool) -> None:
    assert type_matches(pattern, event_type) is expected


@pytest.mark.parametrize(
    ("patterns", "event_type", "expected"),
    [
        (["order.*", "invoice.paid"], "invoice.paid", True),
        (["order.*", "invoice.paid"], "order.created", True),
        (["order.*", "invoice.paid"], "invoice.voided", False),
        (["order.*"], "order", False),
        (["*"], "eventrelay.subscription.disabled", False),
        (["*", "eventrelay.*"], "eventrelay.subscription.disabled", True),
        ([], "order.created", False),
    ],
)
def test_any_matches(patterns: list[str], event_type: str, expected: bool) -> None:
    assert any_matches(patterns, event_type) is expected
