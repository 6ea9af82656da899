"""Events: search by type, key, time range and delivery status; one event with
its payload, deliveries and every attempt."""

from __future__ import annotations

from datetime import UTC, datetime

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.console.web import Pages, services, session_of
from app.domain.delivery_status import DELIVERY_STATUSES
from app.errors import FieldError, ValidationFailed

PAGE_SIZE = 50
# A search that checks events one by one (delivery status, time) looks at this
# many at most per page, then offers to search on.
EXAMINE = 10_000


def parse_time(value: str, field: str) -> datetime | None:
    """RFC 3339, or a browser's ``datetime-local`` value read as UTC."""
    text = value.strip()
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise ValidationFailed(
            "the search is invalid",
            [FieldError(field, "a time like 2026-01-31T12:00:00Z (UTC)")],
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment


def parse_cursor(value: str | None) -> int | None:
    if value is None or value == "":
        return None
    if not value.isdigit() or len(value) > 19:
        raise ValidationFailed("the search is invalid", [FieldError("after", "not a cursor")])
    return int(value)


def routes(pages: Pages) -> list[Route]:
    async def search(request: Request) -> Response:
        session = await session_of(request)
        q = request.query_params
        filters = {name: q.get(name, "")[:200] for name in ("type", "key", "since", "until")}
        status = q.get("status", "")
        try:
            since = parse_time(filters["since"], "since")
            until = parse_time(filters["until"], "until")
            if status and status not in DELIVERY_STATUSES:
                raise ValidationFailed(
                    "the search is invalid", [FieldError("status", "not a delivery status")]
                )
            page, last = await services(request).events.list_page(
                session.tenant,
                event_type=filters["type"] or None,
                key=filters["key"] or None,
                order="desc",
                after_seq=parse_cursor(q.get("after")),
                limit=PAGE_SIZE,
                since=since,
                until=until,
                delivery_status=status or None,
                examine=EXAMINE,
            )
        except ValidationFailed as exc:
            return pages.render(
                request,
                "events.html",
                session,
                status=422,
                filters=filters,
                status_filter=status,
                statuses=DELIVERY_STATUSES,
                events=[],
                next_after=None,
                page_size=PAGE_SIZE,
                examine=EXAMINE,
                problem=exc,
            )
        return pages.render(
            request,
            "events.html",
            session,
            filters=filters,
            status_filter=status,
            statuses=DELIVERY_STATUSES,
            events=page,
            next_after=last,
            page_size=PAGE_SIZE,
            examine=EXAMINE,
            problem=None,
        )

    async def event(request: Request) -> Response:
        session = await session_of(request)
        svc = services(request)
        event_id = request.path_params["event_id"]
        detail = await svc.events.get(session.tenant, event_id)
        attempts = await svc.events.attempts(session.tenant, event_id)
        by_delivery: dict[str, list[object]] = {}
        for attempt in attempts:
            by_delivery.setdefault(attempt.delivery_id, []).append(attempt)
        return pages.render(request, "event.html", session, detail=detail, attempts=by_delivery)

    return [
        Route("/events", search, methods=["GET"]),
        Route("/events/{event_id}", event, methods=["GET"]),
    ]
