"""What every console page uses: the services, the signed-in session, forms
with their CSRF check, and rendering templates as escaped HTML."""

from __future__ import annotations

import hmac
import json
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from app.console.security import COOKIE, COOKIE_PATH, cross_site_reason, portal_csp
from app.errors import BadRequest, EventRelayError, Forbidden, NotFound
from app.services.console import Session
from app.services.container import Services

MAX_FORM_BYTES = 1_048_576
# (label, path, who sees it: everyone, "admin" — not a portal —, "global").
NAVIGATION = (
    ("Overview", "/", ""),
    ("Events", "/events", ""),
    ("Subscriptions", "/subscriptions", ""),
    ("Dead-letter queue", "/dlq", ""),
    ("Event types", "/event-types", "admin"),
    ("Tenants", "/tenants", "global"),
    ("Tokens", "/tokens", "admin"),
)


class SignInRequired(Exception):
    """No live session: the page sends the browser to sign in."""


class CrossSiteRefused(Forbidden):
    slug = "cross-site"


def templates() -> Environment:
    """Every template autoescapes: data, keys, headers and bodies are text."""
    env = Environment(
        loader=FileSystemLoader(Path(__file__).parent / "templates"),
        autoescape=select_autoescape(default=True, default_for_string=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["when"] = when
    env.filters["pretty"] = pretty_json
    env.filters["percent"] = lambda share: "—" if share is None else f"{share * 100:.1f} %"
    return env


def when(moment: datetime | None) -> str:
    return "—" if moment is None else moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def pretty_json(value: Any) -> str:
    """Stored JSON text (or a value) indented for reading; shown as text."""
    if isinstance(value, str):
        text: str = value
        try:
            value = json.loads(text)
        except ValueError:
            return text
    return json.dumps(value, indent=2, ensure_ascii=False, sort_keys=False)


def services(request: Request) -> Services:
    found: Services = request.app.state.services_of()
    return found


async def session_of(
    request: Request, *, portal: bool = True, global_only: bool = False
) -> Session:
    """The signed-in session acting on a live tenant, or :class:`SignInRequired`.
    A page a portal may not see (``portal=False``), or one for global admins
    only, is "not found" to the others, as the API answers another tenant's IDs."""
    svc = services(request)
    found = await svc.console.resolve(request.cookies.get(COOKIE))
    if found is None:
        raise SignInRequired
    if await svc.tenants.active(found.tenant) is None:
        if not found.is_global:
            raise SignInRequired  # the tenant was deleted: so is its way in
        found = replace(found, tenant_id=None)  # back to ``default``
    if (found.portal and not portal) or (global_only and not found.is_global):
        raise NotFound("there is no such page")
    return found


class Form:
    """A URL-encoded form body, its values as text."""

    def __init__(self, fields: dict[str, list[str]]) -> None:
        self._fields = fields

    def get(self, name: str, default: str = "") -> str:
        values = self._fields.get(name)
        return values[0] if values else default

    def optional(self, name: str) -> str | None:
        value = self.get(name).strip()
        return value or None

    def all(self, name: str) -> list[str]:
        return list(self._fields.get(name, []))


async def read_form(request: Request) -> Form:
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if media not in ("application/x-www-form-urlencoded", ""):
        raise BadRequest("the console takes forms (application/x-www-form-urlencoded)")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise BadRequest("the form is too large")
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise BadRequest("the form is not UTF-8") from exc
    if "%00" in text or "\x00" in text:
        raise BadRequest("the form contains a NUL character")
    return Form(parse_qs(text, keep_blank_values=True, max_num_fields=2000))


async def mutation(
    request: Request, *, portal: bool = True, global_only: bool = False
) -> tuple[Session, Form]:
    """A state-changing request: signed in, from our own pages (Fetch Metadata
    and Origin), carrying the session's CSRF token."""
    refuse_cross_site(request)
    session = await session_of(request, portal=portal, global_only=global_only)
    form = await read_form(request)
    sent = form.get("csrf") or request.headers.get("x-csrf-token", "")
    if not hmac.compare_digest(sent.encode(), session.csrf_token.encode()):
        raise CrossSiteRefused("the form's CSRF token is missing or stale: reload the page")
    return session, form


def refuse_cross_site(request: Request) -> None:
    reason = cross_site_reason(request.headers)
    if reason is not None:
        raise CrossSiteRefused(reason)


class Pages:
    """Renders a page with what the layout needs (navigation, CSRF token)."""

    def __init__(self) -> None:
        self.env = templates()

    def render(
        self,
        request: Request,
        name: str,
        session: Session | None,
        status: int = 200,
        **context: Any,
    ) -> HTMLResponse:
        html = self.env.get_template(name).render(
            base=COOKIE_PATH,
            navigation=[
                (label, path)
                for label, path, audience in NAVIGATION
                if session is None
                or not audience
                or (audience == "admin" and not session.portal)
                or (audience == "global" and session.is_global)
            ],
            current=request.url.path,
            session=session,
            csrf=session.csrf_token if session else "",
            **context,
        )
        response = HTMLResponse(html, status_code=status)
        if session is not None and session.portal:
            ancestors = services(request).settings.portal_frame_ancestors
            response.headers["content-security-policy"] = portal_csp(ancestors)
        return response

    def error(
        self, request: Request, error: EventRelayError, session: Session | None
    ) -> HTMLResponse:
        return self.render(request, "error.html", session, status=error.status, error=error)


def redirect(path: str, **query: str | int | None) -> Response:
    """After a change, back to a page (303: the browser GETs it)."""
    params = {k: str(v) for k, v in query.items() if v is not None and v != ""}
    target = COOKIE_PATH + path + (f"?{urlencode(params)}" if params else "")
    return RedirectResponse(target, status_code=303)
