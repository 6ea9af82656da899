"""Managing subscriptions: defaults, secrets, the SSRF check, status changes.

Each change is one transaction the service opens (``db.write()``) and hands to
the store functions it is made of.
"""

from __future__ import annotations

import asyncio
import importlib.util
import ipaddress
import json
import socket
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import orjson

from app.domain import operator_events
from app.domain.content_filters import ContentFilter, parse_filter, stored_filter
from app.domain.destinations import CLIENT_LIBRARIES, Destination
from app.domain.filter_schemas import impossible_paths
from app.domain.filters import is_exact
from app.domain.ids import new_id
from app.domain.jsonbody import unstorable_strings
from app.domain.signing import generate_secret
from app.domain.ssrf import forbidden_reason
from app.domain.subscriptions import (
    SubscriptionCreate,
    SubscriptionPatch,
    destination_of,
    frees_blocked_lines,
)
from app.errors import FieldError, NotFound, ValidationFailed
from app.services.schemas import SchemaService
from app.store import events as events_store
from app.store import operator_events as operator_store
from app.store import replay as replay_store
from app.store import subscriptions as store
from app.store import tenants as tenants_store
from app.store.database import Database
from app.store.subscriptions import Subscription

__all__ = ["Subscription", "SubscriptionService"]

PREVIOUS_SECRET_GRACE = timedelta(hours=24)
NOT_NULLABLE = (
    "url",
    "destination",
    "format",
    "event_types",
    "headers",
    "ordering",
    "on_dead_letter",
    "max_in_flight",
    "status",
)
CIRCUIT_CLOSED = {"consecutive_failures": 0, "failing_since": None, "circuit_open_until": None}
LOOPBACK_NAMES = ("localhost", "localhost.localdomain")
TEST_EVENT_TYPE = "eventrelay.test"


class SubscriptionService:
    def __init__(
        self,
        db: Database,
        *,
        allow_private_targets: bool,
        wake_workers: Callable[[], None] = lambda: None,
        changed: Callable[[str], None] = lambda _: None,
        schemas: SchemaService | None = None,
    ) -> None:
        self._db = db
        self._schemas = schemas
        self._allow_private = allow_private_targets
        self._wake = wake_workers
        self._changed = changed

    async def create(self, tenant_id: str, body: SubscriptionCreate) -> Subscription:
        destination = destination_of(body.url, body.destination)
        assert destination is not None  # the model requires one
        await self._check_destination(destination, short_form=body.url is not None)
        await self._check_filter(body.filter, body.event_types)
        now = datetime.now(UTC)
        values = body.model_dump(exclude={"url"})
        values.update(
            destination=destination,
            id=new_id("sub"),
            tenant_id=tenant_id,
            secret=body.secret or generate_secret(),
            status="active",
            created_at=now,
            updated_at=now,
        )
        async with self._db.write() as conn:
            await tenants_store.check_room(conn, tenant_id)
            return await store.create(conn, values, keyring=self._db.keyring)

    async def get(self, tenant_id: str, subscription_id: str) -> Subscription:
        found = await store.get(self._db, tenant_id, subscription_id)
        if found is None:
            raise NotFound(f"no subscription {subscription_id}")
        return found

    async def list_page(
        self, tenant_id: str, *, after_id: str | None, limit: int
    ) -> tuple[list[Subscription], str | None]:
        """Subscriptions by ID, and the ID to continue after (None on the last page)."""
        return await store.list_page(self._db, tenant_id, after_id=after_id, limit=limit)

    async def patch(
        self, tenant_id: str, subscription_id: str, body: SubscriptionPatch
    ) -> Subscription:
        changes: dict[str, Any] = body.model_dump(exclude_unset=True)
        for required in NOT_NULLABLE:
            if required in changes and changes[required] is None:
                raise ValidationFailed(
                    "the request body is invalid", [FieldError(f"/{required}", "may not be null")]
                )
        url = changes.pop("url", None)
        destination = destination_of(url, changes.pop("destination", None))
        if destination is not None:
            await self._check_destination(destination, short_form=url is not None)
            changes["destination"] = destination
        if "filter" in changes or "event_types" in changes:
            await self._check_patched_filter(tenant_id, subscription_id, changes)
        if "status" in changes:
            changes["disabled_reason"] = None if changes["status"] != "disabled" else "manual"
            if changes["status"] == "active":
                # A fresh start: the circuit closes with the operator's decision.
                changes |= {
                    "consecutive_failures": 0,
                    "failing_since": None,
                    "circuit_open_until": None,
                }
        now = changes["updated_at"] = datetime.now(UTC)
        disabling = [subscription_id] if changes.get("status") == "disabled" else []
        async with self._db.write() as conn:
            listeners = await operator_store.listeners(conn) if disabling else []
            before = await operator_store.statuses(conn, disabling) if listeners else {}
            updated = await store.patch(
                conn, tenant_id, subscription_id, changes, keyring=self._db.keyring
            )
            if updated is None:
                raise NotFound(f"no subscription {subscription_id}")
            if frees_blocked_lines(changes):
                await store.promote_all_lines(conn, subscription_id)
            await store.announce_change(conn, subscription_id)
            # Disabled now and not before: reported in the same transaction.
            reported = [
                operator_events.disabled(tenant_id, sid, "manual", now)
                for sid in disabling
                if operator_store.disabled_now(sid, before)
            ]
            delivered = await operator_store.store_events(conn, reported, listeners)
        self._changed(subscription_id)
        if delivered:
            self._wake()
        return updated

    async def delete(self, tenant_id: str, subscription_id: str) -> None:
        async with self._db.write() as conn:
            if not await store.remove(conn, tenant_id, subscription_id):
                raise NotFound(f"no subscription {subscription_id}")
        self._changed(subscription_id)

    async def rotate_secret(self, tenant_id: str, subscription_id: str) -> str:
        now = datetime.now(UTC)
        secret = generate_secret()
        async with self._db.write() as conn:
            rotated = await store.rotate_secret(
                conn,
                tenant_id,
                subscription_id,
                secret=secret,
                previous_expires_at=now + PREVIOUS_SECRET_GRACE,
                now=now,
                keyring=self._db.keyring,
            )
            if not rotated:
                raise NotFound(f"no subscription {subscription_id}")
            await store.announce_change(conn, subscription_id)
        self._changed(subscription_id)
        return secret

    async def replay(
        self, tenant_id: str, subscription_id: str, since: datetime, until: datetime | None
    ) -> int:
        """New deliveries of every stored matching event of the subscription's
        tenant in ``[since, until)``."""
        sub = await self.get(tenant_id, subscription_id)
        if until is not None and until <= since:
            raise ValidationFailed(
                "the replay window is empty", [FieldError("/until", "must be after since")]
            )
        now = datetime.now(UTC)
        # Without ``until`` the window ends now: later events reach the
        # subscription by fan-out. A chunk of events per transaction.
        replay = replay_store.Replay(
            sub.tenant_id,
            sub.id,
            sub.event_types,
            sub.ordering == "key",
            since,
            until or now,
            content_filter=_compiled(sub.filter),
        )
        async with self._db.read() as conn:
            bounds = await replay_store.window_bounds(conn, replay)
        created = 0
        after, last = (bounds[0] - 1, bounds[1]) if bounds else (None, 0)
        while after is not None:
            async with self._db.write() as conn:
                after, made = await replay_store.replay_chunk(
                    conn, replay, after=after, last=last, now=now
                )
            created += made
        if created:
            self._wake()
        return created

    async def _check_filter(self, spec: dict[str, Any] | None, event_types: list[str]) -> None:
        """422 for a malformed filter, or for one naming a field under ``data`` that
        no latest schema of the subscription's event types allows (when each is an
        exact name with a schema)."""
        if spec is None:
            return
        unstorable = list(unstorable_strings(spec, "/filter"))
        if unstorable:
            raise ValidationFailed("the request body is invalid", unstorable)
        content_filter = parse_filter(spec, "/filter")
        if self._schemas is None or not all(is_exact(p) for p in event_types):
            return
        schemas = await self._schemas.latest_schemas(event_types)
        if schemas is None:
            return
        impossible = impossible_paths(content_filter, schemas)
        if impossible:
            names = ", ".join(dict.fromkeys(event_types))
            raise ValidationFailed(
                "the filter names a field the event types' schemas do not allow",
                [
                    FieldError(
                        "/filter" + p.pointer,
                        f"no latest schema of {names} allows data/{'/'.join(p.tokens[1:])}",
                    )
                    for p in impossible
                ],
            )

    async def _check_patched_filter(
        self, tenant_id: str, subscription_id: str, changes: dict[str, Any]
    ) -> None:
        """The filter a change leaves, checked against the event types it leaves."""
        if "filter" in changes and "event_types" in changes:
            await self._check_filter(changes["filter"], changes["event_types"])
            return
        current = await self.get(tenant_id, subscription_id)
        await self._check_filter(
            changes.get("filter", current.filter), changes.get("event_types", current.event_types)
        )

    async def send_test_event(self, tenant_id: str, subscription_id: str) -> str:
        """Store an ``eventrelay.test`` event of the tenant, delivered to this
        subscription only (its filters are not consulted); returns its ID."""
        sub = await self.get(tenant_id, subscription_id)
        now = datetime.now(UTC)
        event_id = new_id("evt")
        data = {"subscription_id": sub.id, "message": "a test event sent from the console"}
        event: dict[str, object] = {
            "tenant_id": tenant_id,
            "id": event_id,
            "type": TEST_EVENT_TYPE,
            "key": None,
            "data": json.dumps(data, separators=(",", ":")),
            "schema_version": None,
            "occurred_at": now,
            "received_at": now,
        }
        async with self._db.write() as conn:
            await events_store.add_event_for(conn, event, sub.id, now)
        self._wake()
        return event_id

    async def _check_destination(self, destination: Destination, *, short_form: bool) -> None:
        """This process can deliver there (its client library is installed), and,
        unless private targets are allowed, the host is not a refused address.
        Nothing connects: the worker does, at the first attempt."""
        library = CLIENT_LIBRARIES.get(destination.type)
        if library is not None and not _installed(library[0]):
            raise ValidationFailed(
                f"this installation cannot deliver to {destination.type}: the Python package "
                f"{library[1]} is not installed (pip install 'eventrelay[brokers]')",
                [FieldError("/destination/type", f"{destination.type} is not available here")],
            )
        if self._allow_private:
            return
        host = urlsplit(destination.url).hostname or ""
        reason = await _refusal(host)
        if reason is not None:
            webhook = destination.type == "webhook"
            raise ValidationFailed(
                f"the {'webhook URL' if webhook else 'broker host'} points at an address "
                "eventrelay may not reach",
                [FieldError("/url" if short_form else "/destination/url", reason)],
            )


def _compiled(spec: dict[str, Any] | None) -> ContentFilter | None:
    return None if spec is None else stored_filter(orjson.dumps(spec).decode())


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # ValueError: a module whose import was blocked
        return False


async def _refusal(host: str) -> str | None:
    try:
        ipaddress.ip_address(host)
        return forbidden_reason(host)
    except ValueError:
        pass
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
        return f"{host} is a loopback name"
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError):
        # Not resolvable now: accepted; the address is checked at connect time.
        return None
    for info in infos:
        reason = forbidden_reason(str(info[4][0]))
        if reason is not None:
            return f"{host} resolves to a refused address: {reason}"
    return None
