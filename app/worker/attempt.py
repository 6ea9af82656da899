"""The attempt step: build → sign → send → decide → the completion to write.

One attempt of one claimed delivery: the body built once per event, signed
with the subscription's current keys (and the previous secret while it still
signs), with a ``traceparent`` of its own in the event's trace (the attempt's
span with a tracer), sent through the worker's :class:`~app.worker.protocol.Sender`, the
outcome decided by :func:`app.domain.retry.decide`, counted in the metrics,
logged, and returned as the :class:`~app.store.deliveries.Completion` the
next cycle writes. No database here.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from app import __version__
from app.domain import tracecontext, webhook
from app.domain.events import rfc3339
from app.domain.retry import GiveUp, Retry, Succeeded, decide
from app.domain.signing import secret_key
from app.metrics import Metrics
from app.store.events import StoredEvent
from app.store.subscriptions import Subscription
from app.store.work import Claimed, Completion
from app.tracing import AttemptSpan, Tracer
from app.worker.lines import Line
from app.worker.protocol import Message, Sender, SendResult

log = logging.getLogger(__name__)

USER_AGENT = f"eventrelay/{__version__}"
# An attempt's outcome by the delivery's new status, as the attempts metric names it.
_OUTCOMES = {"succeeded": "success", "pending": "retry", "dead": "dead_letter"}


class AttemptStep:
    def __init__(
        self,
        sender: Sender,
        metrics: Metrics,
        *,
        owner: str,
        retry_schedule: tuple[float, ...],
        timeout_ms: int,
        tracer: Tracer | None = None,
    ) -> None:
        self._sender = sender
        self._tracer = tracer
        self._metrics = metrics
        self._owner = owner
        self._retry_schedule = retry_schedule
        self._timeout_ms = timeout_ms
        self.succeeded = 0  # successes not yet counted in the metrics (once per cycle)

    async def run(
        self, line: Line, delivery: Claimed, event: StoredEvent, payload: bytes
    ) -> Completion:
        """Send ``delivery`` once and say what happened."""
        sub = line.subscription
        started = datetime.now(UTC)
        span = self._span(delivery, event)
        trace = tracecontext.headers(span.context) if span is not None else _attempt_trace(event)
        headers = webhook.headers(
            event_id=event.id,
            timestamp=int(started.timestamp()),
            payload=payload,
            keys=signing_keys(line, started),
            user_agent=USER_AGENT,
            custom=sub.headers,
            trace=trace,
        )
        timeout_ms = sub.timeout_ms or self._timeout_ms
        message = Message(payload, headers, timeout_ms / 1000)
        result = await self._sender.connection(sub.url).send(message)
        self._metrics.attempt_duration.observe(result.duration_ms / 1000)
        completion = self._conclude(sub, delivery, event, result, started, headers)
        if span is not None:
            outcome = _OUTCOMES[completion.status]
            span.end(result.outcome.status_code, result.outcome.error, outcome)
        return completion

    def _span(self, delivery: Claimed, event: StoredEvent) -> AttemptSpan | None:
        if self._tracer is None:
            return None
        return self._tracer.attempt(
            _event_trace(event),
            destination_type="webhook",
            subscription_id=delivery.subscription_id,
            delivery_id=delivery.id,
            event_id=event.id,
            event_type=event.type,
            attempt=delivery.attempts + 1,
        )

    def count_successes(self) -> None:
        if self.succeeded:
            self._metrics.attempt_outcome["success"].inc(self.succeeded)
            self.succeeded = 0

    def _conclude(
        self,
        sub: Subscription,
        delivery: Claimed,
        event: StoredEvent,
        result: SendResult,
        started: datetime,
        headers: dict[str, str],
    ) -> Completion:
        now = datetime.now(UTC)
        schedule = sub.retry_schedule if sub.retry_schedule is not None else self._retry_schedule
        decision = decide(delivery.round_attempts + 1, result.outcome, schedule, now)
        if isinstance(decision, Succeeded):
            status, next_at = "succeeded", None
            self.succeeded += 1
            self._metrics.latency.observe((now - event.received_at).total_seconds())
            if log.isEnabledFor(logging.DEBUG):
                log.debug("delivered", extra=_context(delivery, result))
        elif isinstance(decision, Retry):
            status, next_at = "pending", decision.at
            self._metrics.attempt_outcome["retry"].inc()
            context = _context(delivery, result) | {"error": result.outcome.error}
            log.info("attempt failed; will retry", extra=context)
        else:
            status, next_at = "dead", None
            self._metrics.attempt_outcome["dead_letter"].inc()
            log.warning("dead-lettered: %s", decision.reason, extra=_context(delivery, result))
        return Completion(
            delivery=delivery,
            owner=self._owner,
            status=status,
            started_at=started,
            duration_ms=result.duration_ms,
            status_code=result.outcome.status_code,
            error=result.outcome.error,
            response_body=result.response_body,
            next_attempt_at=next_at,
            finished_at=now,
            summary=_summary(result, decision),
            request_headers=orjson.dumps(headers).decode(),
        )


def payload(event: StoredEvent) -> bytes:
    """The body every subscriber of ``event`` receives."""
    return webhook.body(
        event.id,
        event.type,
        rfc3339(event.received_at) or "",
        event.key,
        event.schema_version,
        event.data_json,
    )


def _event_trace(event: StoredEvent) -> tracecontext.TraceContext:
    """The trace context the event was stored with; a new trace for an event
    stored before events had one."""
    stored = tracecontext.parse(event.traceparent, event.tracestate)
    return stored if stored is not None else tracecontext.new_trace()


def _attempt_trace(event: StoredEvent) -> dict[str, str]:
    """Without a tracer: the trace headers of a span ID of the attempt's own in
    the event's trace (the stored context was validated at ingest)."""
    span_id = tracecontext.new_span_id()
    if event.traceparent is None:
        return tracecontext.headers(tracecontext.new_trace().child(span_id))
    return tracecontext.child_headers(event.traceparent, event.tracestate, span_id)


def signing_keys(line: Line, now: datetime) -> list[bytes]:
    """The keys that sign for ``line`` now: its secret, and the previous one
    until it expires (derived again when that happens or the subscription changes)."""
    if not line.keys or (line.keys_until is not None and now >= line.keys_until):
        sub = line.subscription
        line.keys, line.keys_until = [secret_key(sub.secret)], None
        expires = sub.previous_secret_expires_at
        if sub.previous_secret and expires is not None and expires > now:
            line.keys.append(secret_key(sub.previous_secret))
            line.keys_until = expires
    return line.keys


def _context(delivery: Claimed, result: SendResult) -> dict[str, object]:
    return {
        "delivery_id": delivery.id,
        "event_id": delivery.event_id,
        "subscription_id": delivery.subscription_id,
        "attempt": delivery.attempts + 1,
        "status_code": result.outcome.status_code,
    }


def _summary(result: SendResult, decision: Succeeded | Retry | GiveUp) -> str | None:
    """What went wrong, for the delivery's ``last_error`` (None on success)."""
    if isinstance(decision, Succeeded):
        return None
    outcome = result.outcome
    problem = outcome.error or f"HTTP {outcome.status_code}"
    if isinstance(decision, GiveUp):
        return f"{decision.reason}; last: {problem}"
    return problem
