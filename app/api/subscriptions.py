"""``/v1/subscriptions``: where events go, and how."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.responses import Response

from app.api import schemas
from app.api.deps import AdminCaller, ServicesDep
from app.domain.events import rfc3339
from app.domain.ids import looks_like_id
from app.domain.subscriptions import SubscriptionCreate, SubscriptionPatch
from app.errors import FieldError, ValidationFailed
from app.services.subscriptions import Subscription
from app.settings import Settings

router = APIRouter(prefix="/v1", tags=["subscriptions"])
_PROBLEMS: dict[int | str, dict[str, object]] = {
    s: {"model": schemas.Problem} for s in (401, 403, 404, 422)
}
# The answers that hold a secret: 503 when it is stored encrypted with a key
# this process is not configured with (EVENTRELAY_ENCRYPTION_KEYS).
_SECRET_PROBLEMS = _PROBLEMS | {503: {"model": schemas.Problem}}


def _out(sub: Subscription, settings: Settings) -> dict[str, object]:
    destination = sub.destination
    return {
        "id": sub.id,
        "url": sub.url if destination is None else None,
        "destination": {"type": "webhook", "url": sub.url}
        if destination is None
        else destination.shown(),
        "format": sub.format,
        "description": sub.description,
        "event_types": sub.event_types,
        "headers": sub.headers,
        "ordering": sub.ordering,
        "on_dead_letter": sub.on_dead_letter,
        "retry_schedule": (
            sub.retry_schedule if sub.retry_schedule is not None else list(settings.retry_schedule)
        ),
        "timeout_ms": sub.timeout_ms or settings.delivery_timeout_ms,
        "max_in_flight": sub.max_in_flight,
        "rate_limit_per_second": sub.rate_limit_per_second,
        "status": sub.status,
        "disabled_reason": sub.disabled_reason,
        "created_at": rfc3339(sub.created_at),
        "updated_at": rfc3339(sub.updated_at),
        "filter": sub.filter,
    }


@router.post(
    "/subscriptions",
    status_code=201,
    response_model=schemas.SubscriptionCreated,
    responses=_SECRET_PROBLEMS,
)
async def create_subscription(
    body: SubscriptionCreate, svc: ServicesDep, caller: AdminCaller
) -> dict[str, object]:
    sub = await svc.subscriptions.create(caller.tenant_id, body)
    return _out(sub, svc.settings) | {"secret": sub.secret.open()}


@router.get("/subscriptions", response_model=schemas.SubscriptionPage, responses=_PROBLEMS)
async def list_subscriptions(
    svc: ServicesDep,
    caller: AdminCaller,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
) -> dict[str, object]:
    if cursor is not None and not looks_like_id(cursor, "sub"):
        raise ValidationFailed(
            "the cursor is not one this API returned",
            [FieldError("query:cursor", "invalid cursor")],
        )
    page, last = await svc.subscriptions.list_page(caller.tenant_id, after_id=cursor, limit=limit)
    return {"items": [_out(s, svc.settings) for s in page], "next_cursor": last}


@router.get(
    "/subscriptions/{subscription_id}",
    response_model=schemas.SubscriptionOut,
    responses=_PROBLEMS,
)
async def get_subscription(
    subscription_id: str, svc: ServicesDep, caller: AdminCaller
) -> dict[str, object]:
    return _out(await svc.subscriptions.get(caller.tenant_id, subscription_id), svc.settings)


@router.patch(
    "/subscriptions/{subscription_id}",
    response_model=schemas.SubscriptionOut,
    responses=_PROBLEMS,
)
async def patch_subscription(
    subscription_id: str, body: SubscriptionPatch, svc: ServicesDep, caller: AdminCaller
) -> dict[str, object]:
    sub = await svc.subscriptions.patch(caller.tenant_id, subscription_id, body)
    return _out(sub, svc.settings)


@router.delete("/subscriptions/{subscription_id}", status_code=204, responses=_PROBLEMS)
async def delete_subscription(
    subscription_id: str, svc: ServicesDep, caller: AdminCaller
) -> Response:
    await svc.subscriptions.delete(caller.tenant_id, subscription_id)
    return Response(status_code=204)


@router.get(
    "/subscriptions/{subscription_id}/secret",
    response_model=schemas.SecretOut,
    responses=_SECRET_PROBLEMS,
)
async def get_secret(
    subscription_id: str, svc: ServicesDep, caller: AdminCaller
) -> schemas.SecretOut:
    sub = await svc.subscriptions.get(caller.tenant_id, subscription_id)
    return schemas.SecretOut(secret=sub.secret.open())


@router.post(
    "/subscriptions/{subscription_id}/rotate-secret",
    response_model=schemas.SecretOut,
    responses=_SECRET_PROBLEMS,
)
async def rotate_secret(
    subscription_id: str, svc: ServicesDep, caller: AdminCaller
) -> schemas.SecretOut:
    secret = await svc.subscriptions.rotate_secret(caller.tenant_id, subscription_id)
    return schemas.SecretOut(secret=secret)


@router.post(
    "/subscriptions/{subscription_id}/replay",
    status_code=202,
    response_model=schemas.ReplayCount,
    responses=_PROBLEMS,
)
async def replay(
    subscription_id: str, body: schemas.ReplayWindow, svc: ServicesDep, caller: AdminCaller
) -> schemas.ReplayCount:
    count = await svc.subscriptions.replay(
        caller.tenant_id, subscription_id, body.since, body.until
    )
    return schemas.ReplayCount(replayed=count)
