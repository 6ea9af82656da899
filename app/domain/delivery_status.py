"""A delivery's status: the values, and which of them are not finished.

``pending`` waits for its next attempt (or for the delivery ahead of it on its
line); ``in_flight`` is leased to a worker; ``succeeded`` reached the
subscriber; ``dead`` is in the dead-letter queue (a redrive makes it pending
again); ``discarded`` left the dead-letter queue for good
(``DELETE /v1/dlq/{id}``).
"""

from __future__ import annotations

from typing import Literal, get_args

DeliveryStatus = Literal["pending", "in_flight", "succeeded", "dead", "discarded"]
DELIVERY_STATUSES: tuple[DeliveryStatus, ...] = get_args(DeliveryStatus)
# Not finished: what the gauges count, and what keeps an ordering line busy.
OPEN_STATUSES: tuple[DeliveryStatus, ...] = ("pending", "in_flight", "dead")
