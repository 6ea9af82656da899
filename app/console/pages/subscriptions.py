"""Subscriptions: health, create, edit, pause, resume, delete, rotate the secret,
send a test event, replay a time range."""

from __future__ import annotations

import re
from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from app.console.pages.events import parse_time
from app.console.web import Form, Pages, mutation, redirect, services, session_of
from app.domain.subscriptions import SubscriptionCreate, SubscriptionPatch
from app.errors import FieldError, ValidationFailed
from app.services.console import Session
from app.services.subscriptions import Subscription

PAGE_SIZE = 100
NUMBERS = ("max_in_flight", "timeout_ms", "rate_limit_per_second")
NOTICES = {
    "paused": "The subscription is paused: deliveries wait until it resumes.",
    "resumed": "The subscription is active again; its circuit is closed.",
    "saved": "Saved.",
}


def form_fields(form: Form) -> dict[str, Any]:
    """A subscription form as the API's JSON body would carry it."""
    fields: dict[str, Any] = {
        "url": form.get("url").strip(),
        "description": form.optional("description"),
        "event_types": [p for p in re.split(r"[\s,]+", form.get("event_types")) if p] or ["*"],
        "headers": header_lines(form.get("headers")),
        "ordering": form.get("ordering", "key"),
        "on_dead_letter": form.get("on_dead_letter", "skip"),
    }
    for name in NUMBERS:
        value = form.optional(name)
        fields[name] = value  # pydantic parses numbers from text and says what is wrong
    return fields


def header_lines(text: str) -> dict[str, str]:
    headers: dict[str, str] = {}
    for line in text.splitlines():
        if line.strip():
            name, _, value = line.partition(":")
            headers[name.strip()] = value.strip()
    return headers


def field_errors(exc: ValidationError) -> ValidationFailed:
    return ValidationFailed(
        "the subscription is invalid",
        [FieldError("/" + "/".join(str(p) for p in e["loc"]), e["msg"]) for e in exc.errors()],
    )


class _Handlers:
    def __init__(self, pages: Pages) -> None:
        self.pages = pages

    def form_page(
        self,
        request: Request,
        session: Session,
        sub: Subscription | None,
        values: dict[str, Any],
        problem: ValidationFailed | None = None,
    ) -> Response:
        return self.pages.render(
            request,
            "subscription_form.html",
            session,
            status=422 if problem else 200,
            sub=sub,
            values=values,
            problem=problem,
        )

    async def listing(self, request: Request) -> Response:
        session = await session_of(request)
        svc = services(request)
        after = request.query_params.get("after") or None
        page, last = await svc.subscriptions.list_page(
            session.tenant, after_id=after, limit=PAGE_SIZE
        )
        states = await svc.overview.subscription_states(page)
        return self.pages.render(
            request, "subscriptions.html", session, subs=page, states=states, next_after=last
        )

    async def new(self, request: Request) -> Response:
        session = await session_of(request)
        return self.form_page(request, session, None, {})

    async def create(self, request: Request) -> Response:
        session, form = await mutation(request)
        fields = form_fields(form)
        try:
            body = SubscriptionCreate.model_validate(
                {k: v for k, v in fields.items() if v is not None}
            )
            sub = await services(request).subscriptions.create(session.tenant, body)
        except ValidationError as exc:
            return self.form_page(request, session, None, fields, field_errors(exc))
        except ValidationFailed as exc:
            return self.form_page(request, session, None, fields, exc)
        return self.pages.render(
            request, "secret.html", session, sub=sub, secret=sub.secret.open(), created=True
        )

    async def detail(self, request: Request) -> Response:
        session = await session_of(request)
        svc = services(request)
        sub = await svc.subscriptions.get(session.tenant, request.path_params["sid"])
        state = (await svc.overview.subscription_states([sub])).get(sub.id)
        notice = NOTICES.get(request.query_params.get("done", ""))
        return self.pages.render(
            request,
            "subscription.html",
            session,
            sub=sub,
            state=state,
            notice=notice,
            replayed=request.query_params.get("replayed"),
        )

    async def edit(self, request: Request) -> Response:
        session = await session_of(request)
        sub = await services(request).subscriptions.get(session.tenant, request.path_params["sid"])
        values = {
            "url": sub.url,
            "description": sub.description,
            "event_types": sub.event_types,
            "headers": sub.headers,
            "ordering": sub.ordering,
            "on_dead_letter": sub.on_dead_letter,
            "max_in_flight": sub.max_in_flight,
            "timeout_ms": sub.timeout_ms,
            "rate_limit_per_second": sub.rate_limit_per_second,
        }
        return self.form_page(request, session, sub, values)

    async def save(self, request: Request) -> Response:
        session, form = await mutation(request)
        svc = services(request)
        sub = await svc.subscriptions.get(session.tenant, request.path_params["sid"])
        fields = form_fields(form)
        try:
            body = SubscriptionPatch.model_validate(fields)
            await svc.subscriptions.patch(session.tenant, sub.id, body)
        except ValidationError as exc:
            return self.form_page(request, session, sub, fields, field_errors(exc))
        except ValidationFailed as exc:
            return self.form_page(request, session, sub, fields, exc)
        return redirect(f"/subscriptions/{sub.id}", done="saved")

    def status_change(self, status: str, done: str) -> Any:
        async def change(request: Request) -> Response:
            session, _ = await mutation(request)
            sid = request.path_params["sid"]
            await services(request).subscriptions.patch(
                session.tenant, sid, SubscriptionPatch.model_validate({"status": status})
            )
            return redirect(f"/subscriptions/{sid}", done=done)

        return change

    async def confirm_delete(self, request: Request) -> Response:
        session = await session_of(request)
        sub = await services(request).subscriptions.get(session.tenant, request.path_params["sid"])
        return self.pages.render(request, "subscription_delete.html", session, sub=sub)

    async def delete(self, request: Request) -> Response:
        session, _ = await mutation(request)
        await services(request).subscriptions.delete(session.tenant, request.path_params["sid"])
        return redirect("/subscriptions")

    async def rotate(self, request: Request) -> Response:
        session, _ = await mutation(request)
        svc = services(request)
        sid = request.path_params["sid"]
        secret = await svc.subscriptions.rotate_secret(session.tenant, sid)
        sub = await svc.subscriptions.get(session.tenant, sid)
        return self.pages.render(
            request, "secret.html", session, sub=sub, secret=secret, created=False
        )

    async def test_event(self, request: Request) -> Response:
        session, _ = await mutation(request)
        event_id = await services(request).subscriptions.send_test_event(
            session.tenant, request.path_params["sid"]
        )
        return redirect(f"/events/{event_id}")

    async def replay(self, request: Request) -> Response:
        session, form = await mutation(request)
        svc = services(request)
        sub = await svc.subscriptions.get(session.tenant, request.path_params["sid"])
        try:
            since = parse_time(form.get("since"), "since")
            if since is None:
                raise ValidationFailed(
                    "the replay needs a start", [FieldError("since", "required")]
                )
            until = parse_time(form.get("until"), "until")
            count = await svc.subscriptions.replay(session.tenant, sub.id, since, until)
        except ValidationFailed as exc:
            state = (await svc.overview.subscription_states([sub])).get(sub.id)
            return self.pages.render(
                request,
                "subscription.html",
                session,
                status=422,
                sub=sub,
                state=state,
                notice=None,
                replayed=None,
                problem=exc,
            )
        return redirect(f"/subscriptions/{sub.id}", replayed=count)


def routes(pages: Pages) -> list[Route]:
    h = _Handlers(pages)
    return [
        Route("/subscriptions", h.listing, methods=["GET"]),
        Route("/subscriptions", h.create, methods=["POST"]),
        Route("/subscriptions/new", h.new, methods=["GET"]),
        Route("/subscriptions/{sid}", h.detail, methods=["GET"]),
        Route("/subscriptions/{sid}/edit", h.edit, methods=["GET"]),
        Route("/subscriptions/{sid}/edit", h.save, methods=["POST"]),
        Route("/subscriptions/{sid}/pause", h.status_change("paused", "paused"), methods=["POST"]),
        Route(
            "/subscriptions/{sid}/resume", h.status_change("active", "resumed"), methods=["POST"]
        ),
        Route("/subscriptions/{sid}/delete", h.confirm_delete, methods=["GET"]),
        Route("/subscriptions/{sid}/delete", h.delete, methods=["POST"]),
        Route("/subscriptions/{sid}/rotate-secret", h.rotate, methods=["POST"]),
        Route("/subscriptions/{sid}/test", h.test_event, methods=["POST"]),
        Route("/subscriptions/{sid}/replay", h.replay, methods=["POST"]),
    ]
