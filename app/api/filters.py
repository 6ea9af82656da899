"""``/v1/filters/test``: whether a content filter matches an event, without storing either."""

from __future__ import annotations

from fastapi import APIRouter

from app.api import schemas
from app.api.deps import AdminDep
from app.domain.content_filters import parse_filter

router = APIRouter(prefix="/v1", tags=["filters"], dependencies=[AdminDep])
_PROBLEMS: dict[int | str, dict[str, object]] = {
    s: {"model": schemas.Problem} for s in (401, 403, 422)
}


@router.post("/filters/test", response_model=schemas.FilterMatch, responses=_PROBLEMS)
async def test_filter(body: schemas.FilterTest) -> schemas.FilterMatch:
    """Match ``event`` (``{"type", "key"?, "data"}``) against ``filter``; 422 names
    each problem of a malformed filter by its JSON pointer."""
    content_filter = parse_filter(body.filter, "/filter")
    event = body.event
    return schemas.FilterMatch(matches=content_filter.matches(event.type, event.key, event.data))
