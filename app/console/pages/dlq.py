"""The dead-letter queue: filter, inspect, redrive one / the selected / all that
match (in chunks, so the page can show progress), discard."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.console.pages.events import parse_cursor
from app.console.web import Form, Pages, mutation, redirect, services, session_of
from app.errors import NotFound
from app.services.container import Services

PAGE_SIZE = 50
MAX_CHUNK = 500
NOTICES = {
    "redriven": "Redriven: the delivery is pending again.",
    "discarded": "Discarded: the dead letter left the queue for good.",
}


def filters_of(values: Form | dict[str, str]) -> dict[str, str | None]:
    get = values.get
    return {
        "subscription_id": (get("subscription_id") or "").strip()[:64] or None,
        "event_type": (get("event_type") or "").strip()[:200] or None,
    }


async def redrive_selected(svc: Services, tenant_id: str, ids: list[str]) -> int:
    done = 0
    for delivery_id in ids[:MAX_CHUNK]:
        try:
            await svc.dlq.redrive(tenant_id, delivery_id)
        except NotFound:
            continue  # redriven or discarded meanwhile
        done += 1
    return done


def routes(pages: Pages) -> list[Route]:
    async def listing(request: Request) -> Response:
        session = await session_of(request)
        svc = services(request)
        filters = filters_of(dict(request.query_params))
        page, last = await svc.dlq.list_page(
            session.tenant,
            **filters,
            after_seq=parse_cursor(request.query_params.get("after")),
            limit=PAGE_SIZE,
        )
        total = await svc.dlq.count(session.tenant, **filters)
        return pages.render(
            request,
            "dlq.html",
            session,
            filters=filters,
            dead=page,
            total=total,
            next_after=last,
            notice=NOTICES.get(request.query_params.get("done", "")),
            redriven=request.query_params.get("redriven"),
        )

    async def detail(request: Request) -> Response:
        session = await session_of(request)
        found = await services(request).dlq.show(session.tenant, request.path_params["delivery_id"])
        return pages.render(request, "dead_letter.html", session, detail=found)

    async def redrive_one(request: Request) -> Response:
        session, _ = await mutation(request)
        await services(request).dlq.redrive(session.tenant, request.path_params["delivery_id"])
        return redirect("/dlq", done="redriven")

    async def discard_one(request: Request) -> Response:
        session, _ = await mutation(request)
        await services(request).dlq.discard(session.tenant, request.path_params["delivery_id"])
        return redirect("/dlq", done="discarded")

    async def redrive_many(request: Request) -> Response:
        """``ids``: the selected ones; else every match, ``limit`` at most (the
        page's script sends chunks and shows progress; without it, all at once).
        The script learns how many remain, counted up to the cap (``more``: at
        least that many)."""
        session, form = await mutation(request)
        svc = services(request)
        filters = filters_of(form)
        if form.all("ids"):
            done = await redrive_selected(svc, session.tenant, form.all("ids"))
        else:
            limit = form.get("limit")
            chunk = min(int(limit), MAX_CHUNK) if limit.isdigit() and int(limit) > 0 else None
            done = await svc.dlq.redrive_matching(session.tenant, **filters, limit=chunk)
        if "application/json" in request.headers.get("accept", ""):
            remaining = await svc.dlq.count(session.tenant, **filters)
            return JSONResponse(
                {"redriven": done, "remaining": remaining.value, "more": remaining.more}
            )
        return redirect(
            "/dlq",
            redriven=done,
            subscription_id=filters["subscription_id"],
            event_type=filters["event_type"],
        )

    return [
        Route("/dlq", listing, methods=["GET"]),
        Route("/dlq/redrive", redrive_many, methods=["POST"]),
        Route("/dlq/{delivery_id}", detail, methods=["GET"]),
        Route("/dlq/{delivery_id}/redrive", redrive_one, methods=["POST"]),
        Route("/dlq/{delivery_id}/discard", discard_one, methods=["POST"]),
    ]
