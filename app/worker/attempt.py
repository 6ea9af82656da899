"""The attempt step: build → sign → send → decide → the completion to write.

One attempt of one claimed delivery: the body built once per event, signed
with the subscription's current keys (and the previous secret while it still
signs), with a ``traceparent`` of its own in the event's trace (the attempt's
span with a tracer), sent through the worker's :class:`~app.worker.protocol.Sender`, the
outcome decided by :func:`app.domain.retry.decide`, counted in the metrics,
logged, and returned as the :class:`~app.store.work.Completion` the
next cycle writes. No database here.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime

import orjson

from app import __version__
from app.domain import formats, tracecontext, webhook
from app.domain.destinations import Destination, hide_secrets, placeholders, render
from app.domain.events import rfc3339
from app.domain.retry import GiveUp, Retry, Succeeded, decide
from app.domain.signing import Key, prepared, secret_key
from app.errors import SecretUnavailable
from app.metrics import Metrics
from app.store.events import StoredEvent
from app.store.subscriptions import Subscription
from app.store.work import Claimed, Completion
from app.tracing import AttemptSpan, Tracer
from app.worker.lines import Line
from app.worker.protocol import Connection, Message, Route, Sender, SendResult, failed

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
        self._succeeded_by: dict[str, int] = {}  # the same, by destination type

    async def run(
        self, line: Line, delivery: Claimed, event: StoredEvent, payload: bytes
    ) -> Completion:
        """Send ``delivery`` once and say what happened."""
        sub = line.subscription
        started = datetime.now(UTC)
        try:
            target = line.target
            if target is None:  # the line's subscription was (re)loaded
                target = line.target = Target(sub, self._sender, self._metrics, self._timeout_ms)
            keys = signing_keys(line, started)
        except SecretUnavailable as exc:
            # Never sent unsigned or signed with a wrong key: a failed attempt
            # that says why, retried on the schedule like any other.
            log.error("cannot sign: %s", exc.detail, extra=_ids(delivery))
            return self._conclude(sub, delivery, event, failed(0, exc.detail), started, None)
        except Exception as exc:
            # The attempt could not be prepared (its destination, say): a
            # failed attempt too, retried and then dead-lettered, not one
            # without an outcome whose delivery would come back after its
            # lease and fail the same way for ever.
            log.exception("cannot prepare the attempt", extra=_ids(delivery))
            reason = f"the attempt could not be prepared: {type(exc).__name__}: {exc}"
            result = failed(0, hide_secrets(reason[:1000], sub.target))
            return self._conclude(sub, delivery, event, result, started, None)
        if self._tracer is None:
            span, trace = None, _attempt_trace(event)
        else:
            span = self._span(self._tracer, delivery, event, target.kind)
            trace = tracecontext.headers(span.context)
        headers = webhook.headers(
            event_id=event.id,
            timestamp=int(started.timestamp()),
            payload=payload,
            keys=keys,
            user_agent=USER_AGENT,
            custom=sub.headers,
            content_type=target.content_type,
            trace=trace,
        )
        if target.binary:
            headers.update(_binary_headers(event))
        routes = target.routes
        message = Message(
            payload,
            headers,
            target.timeout_s,
            event.id,
            event.type,
            event.key,
            None if routes is None else routes.of(event),
        )
        try:
            result = await target.connection.send(message)
        except Exception as exc:
            # A sender's (or its client library's) own failure: a failed
            # attempt that says what happened, retried on the schedule, not an
            # attempt without an outcome whose delivery waits for its lease.
            log.exception("the %s sender failed", target.kind, extra=_ids(delivery))
            took = int((datetime.now(UTC) - started).total_seconds() * 1000)
            reason = f"the {target.kind} sender failed: {type(exc).__name__}: {exc}"
            result = failed(took, hide_secrets(reason[:1000], sub.target))
        target.duration.observe(result.duration_ms / 1000)
        completion = self._conclude(sub, delivery, event, result, started, headers)
        if span is not None:
            outcome = _OUTCOMES[completion.status]
            span.end(result.outcome.status_code, result.outcome.error, outcome)
        return completion

    @staticmethod
    def _span(
        tracer: Tracer, delivery: Claimed, event: StoredEvent, destination_type: str
    ) -> AttemptSpan:
        return tracer.attempt(
            _event_trace(event),
            destination_type=destination_type,
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
            for kind, count in self._succeeded_by.items():
                self._metrics.destination_outcome[kind, "success"].inc(count)
            self._succeeded_by.clear()

    def _conclude(
        self,
        sub: Subscription,
        delivery: Claimed,
        event: StoredEvent,
        result: SendResult,
        started: datetime,
        headers: dict[str, str] | None,
    ) -> Completion:
        now = datetime.now(UTC)
        schedule = sub.retry_schedule if sub.retry_schedule is not None else self._retry_schedule
        decision = decide(delivery.round_attempts + 1, result.outcome, schedule, now)
        kind = sub.destination_type
        if isinstance(decision, Succeeded):
            status, next_at, summary = "succeeded", None, None
            self.succeeded += 1
            self._succeeded_by[kind] = self._succeeded_by.get(kind, 0) + 1
            self._metrics.latency.observe((now - event.received_at).total_seconds())
            if log.isEnabledFor(logging.DEBUG):
                log.debug("delivered", extra=_context(delivery, result))
        elif isinstance(decision, Retry):
            status, next_at, summary = "pending", decision.at, _summary(result, decision)
            self._metrics.attempt_outcome["retry"].inc()
            self._metrics.destination_outcome[kind, "retry"].inc()
            context = _context(delivery, result) | {"error": result.outcome.error}
            log.info("attempt failed; will retry", extra=context)
        else:
            status, next_at, summary = "dead", None, _summary(result, decision)
            self._metrics.attempt_outcome["dead_letter"].inc()
            self._metrics.destination_outcome[kind, "dead_letter"].inc()
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
            summary=summary,
            # What was sent, for the attempt log (the console shows it); nothing
            # was sent when the attempt could not be signed.
            request_headers=orjson.dumps(headers).decode() if headers is not None else None,
        )


class Target:
    """What every attempt of one subscription (as last loaded) sends to and with:
    worked out once per load rather than per attempt (kept on its line)."""

    __slots__ = (
        "binary",
        "connection",
        "content_type",
        "duration",
        "kind",
        "routes",
        "subscription",
        "timeout_s",
    )

    def __init__(
        self, sub: Subscription, sender: Sender, metrics: Metrics, timeout_ms: int
    ) -> None:
        self.subscription = sub
        self.kind = sub.destination_type
        shape = formats.shape(sub.format, self.kind)
        self.binary = shape == "binary"
        self.content_type = formats.content_type(shape)
        self.timeout_s = (sub.timeout_ms or timeout_ms) / 1000
        self.connection: Connection = sender.connection(sub.target)
        self.duration = metrics.destination_duration[self.kind]
        destination = sub.destination
        self.routes = None if destination is None else Routes(destination, sub.tenant_id)


class Routes:
    """A broker destination's routes by event: its name template rendered once per
    event type (and key, when the template uses it), not per attempt."""

    __slots__ = ("_by_event", "_destination", "_fixed", "_tenant_id", "_uses_key")
    LIMIT = 4096  # rendered names kept; all are dropped when it is reached

    def __init__(self, destination: Destination, tenant_id: str) -> None:
        self._destination = destination
        self._tenant_id = tenant_id
        used = placeholders(_template(destination))
        self._uses_key = "key" in used
        self._by_event: dict[tuple[str, str | None], Route | None] = {}
        self._fixed = used <= {"tenant_id"}

    def of(self, event: StoredEvent) -> Route | None:
        if self._fixed:
            at: tuple[str, str | None] = ("", None)
        else:
            at = (event.type, event.key if self._uses_key else None)
        found = self._by_event.get(at, _UNKNOWN)
        if found is _UNKNOWN:
            if len(self._by_event) >= self.LIMIT:
                self._by_event.clear()
            found = self._by_event[at] = route(self._destination, event, self._tenant_id)
        return found  # type: ignore[return-value]


_UNKNOWN = object()


def _template(destination: Destination) -> str:
    if destination.type == "rabbitmq":
        return destination.routing_key
    if destination.type == "nats":
        return destination.subject
    if destination.type == "redis":
        return destination.stream
    return ""


def route(destination: Destination, event: StoredEvent, tenant_id: str) -> Route | None:
    """Where on a broker ``event`` of ``tenant_id`` goes (None for a webhook)."""

    def name(template: str) -> str:
        return render(template, event_type=event.type, key=event.key, tenant_id=tenant_id)

    if destination.type == "rabbitmq":
        return Route(name(destination.routing_key), exchange=destination.exchange)
    if destination.type == "nats":
        return Route(name(destination.subject))
    if destination.type == "redis":
        return Route(name(destination.stream), maxlen=destination.maxlen)
    return None


def payload(event: StoredEvent, shape: formats.Shape = "eventrelay") -> bytes:
    """The body every subscriber of ``event`` in format ``shape`` receives."""
    return formats.body(
        shape,
        event.id,
        event.type,
        rfc3339(event.received_at) or "",
        event.key,
        event.schema_version,
        event.data_json,
    )


def _binary_headers(event: StoredEvent) -> dict[str, str]:
    return formats.binary_headers(
        event.id, event.type, rfc3339(event.received_at) or "", event.key, event.schema_version
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


def signing_keys(line: Line, now: datetime) -> list[Key]:
    """The keys that sign for ``line`` now: its secret, and the previous one
    until it expires (derived again when that happens or the subscription changes:
    the stored secrets are opened then, not per attempt). Raises SecretUnavailable
    when a secret that signs now cannot be opened."""
    if not line.keys or (line.keys_until is not None and now >= line.keys_until):
        sub = line.subscription
        keys: list[Key] = [prepared(secret_key(sub.secret.open()))]
        expires = sub.previous_secret_expires_at
        if sub.previous_secret is not None and expires is not None and expires > now:
            keys.append(prepared(secret_key(sub.previous_secret.open())))
            line.keys, line.keys_until = keys, expires
        else:
            line.keys, line.keys_until = keys, None
    return line.keys


def _ids(delivery: Claimed) -> dict[str, object]:
    return {
        "delivery_id": delivery.id,
        "event_id": delivery.event_id,
        "subscription_id": delivery.subscription_id,
        "attempt": delivery.attempts + 1,
    }


def _context(delivery: Claimed, result: SendResult) -> dict[str, object]:
    return _ids(delivery) | {"status_code": result.outcome.status_code}


def _summary(result: SendResult, decision: Retry | GiveUp) -> str:
    """What went wrong, for the delivery's ``last_error``."""
    outcome = result.outcome
    problem = outcome.error or f"HTTP {outcome.status_code}"
    if isinstance(decision, GiveUp):
        return f"{decision.reason}; last: {problem}"
    return problem
