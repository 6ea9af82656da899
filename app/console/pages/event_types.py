"""Event types and their schema versions, with the difference between two."""

from __future__ import annotations

import difflib

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.console.web import Pages, pretty_json, services, session_of

PAGE_SIZE = 100


def version_of(value: str | None, latest: int, default: int) -> int:
    """A version the query names, if the type has it; else ``default``."""
    if value is not None and value.isdigit() and 1 <= int(value) <= latest:
        return int(value)
    return default


def routes(pages: Pages) -> list[Route]:
    async def listing(request: Request) -> Response:
        session = await session_of(request, portal=False)
        after = request.query_params.get("after") or None
        types, last = await services(request).schemas.list_types(after=after, limit=PAGE_SIZE)
        return pages.render(request, "event_types.html", session, types=types, next_after=last)

    async def detail(request: Request) -> Response:
        session = await session_of(request, portal=False)
        svc = services(request)
        kind = await svc.schemas.get_type(request.path_params["name"])
        latest = kind.latest_version or 0
        schema_text, diff, old, new = None, [], 0, 0
        if latest:
            new = version_of(request.query_params.get("b"), latest, latest)
            old = version_of(request.query_params.get("a"), latest, max(new - 1, 1))
            _, new_schema = await svc.schemas.get_schema(kind.name, new)
            _, old_schema = await svc.schemas.get_schema(kind.name, old)
            schema_text = pretty_json(new_schema)
            diff = list(
                difflib.unified_diff(
                    pretty_json(old_schema).splitlines(),
                    schema_text.splitlines(),
                    fromfile=f"version {old}",
                    tofile=f"version {new}",
                    lineterm="",
                )
            )
        return pages.render(
            request,
            "event_type.html",
            session,
            kind=kind,
            versions=list(range(1, latest + 1)),
            old=old,
            new=new,
            schema_text=schema_text,
            diff=diff,
        )

    return [
        Route("/event-types", listing, methods=["GET"]),
        Route("/event-types/{name:path}", detail, methods=["GET"]),
    ]
