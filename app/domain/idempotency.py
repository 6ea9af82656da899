"""Idempotency-Key parsing, request fingerprints (IETF draft -06), and the plan
of a group-commit flush: each keyed event is new, a replay, or a reused key.

The plan is pure: the store reads the keys a flush names (:func:`keys`), asks
:func:`decide`, writes what the decision says, and answers with :func:`answers`.
A reused key is a :class:`KeyReused` naming the request's items; the service
says which part of the request that is (the header, a batch item, a
CloudEvent's ``id``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from app.domain.events import NewEvent
from app.errors import BadRequest

MAX_KEY_LENGTH = 255


def parse_key(raw: str) -> str:
    """The key a header value names; the quoted sf-string and bare forms agree.

    ``"abc"`` and ``abc`` are the same key. Raises :class:`BadRequest` when the
    value is empty, longer than 255 characters, or a malformed sf-string.
    """
    value = raw.strip(" \t")
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        value = _unquote_sf_string(value[1:-1])
    elif value.startswith('"'):
        raise BadRequest("Idempotency-Key: unterminated quoted string")
    if not value:
        raise BadRequest("Idempotency-Key must not be empty")
    if len(value) > MAX_KEY_LENGTH:
        raise BadRequest(f"Idempotency-Key is longer than {MAX_KEY_LENGTH} characters")
    if not value.isprintable() or not value.isascii():
        raise BadRequest("Idempotency-Key must be printable ASCII")
    return value


def _unquote_sf_string(inner: str) -> str:
    # RFC 8941 sf-string: only \" and \\ are escapes; a bare quote ends the string.
    out: list[str] = []
    chars = iter(inner)
    for char in chars:
        if char == "\\":
            nxt = next(chars, "")
            if nxt not in ('"', "\\"):
                raise BadRequest("Idempotency-Key: invalid escape in quoted string")
            out.append(nxt)
        elif char == '"':
            raise BadRequest("Idempotency-Key: unescaped quote in quoted string")
        else:
            out.append(char)
    return "".join(out)


def fingerprint(document: Any) -> str:
    """A stable digest of a request's meaning: key order and whitespace do not count."""
    canonical = orjson.dumps(document, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(canonical).hexdigest()


@dataclass(frozen=True, slots=True)
class Accepted:
    """One event of a request: its ID, the stored 202 body, and whether it was a replay."""

    event_id: str
    body: str
    replayed: bool


@dataclass(frozen=True, slots=True)
class KeyReused:
    """A request some of whose keys were already used with a different body (422);
    ``items`` are their indexes in the request."""

    items: tuple[int, ...]


UnitResult = list[Accepted] | KeyReused


@dataclass(frozen=True, slots=True)
class StoredKey:
    """What an idempotency key remembers."""

    fingerprint: str
    event_id: str
    body: str
    created_at: datetime


@dataclass(slots=True)
class Plan:
    """One request's plan: the events to store, and per item what answers it."""

    new: list[NewEvent] = field(default_factory=list)
    # Per item: an Accepted (replay of a stored key), a NewEvent, or the
    # NewEvent of an earlier item in this transaction that it replays.
    items: list[Accepted | NewEvent | tuple[NewEvent]] = field(default_factory=list)


# A stored key: (tenant ID, Idempotency-Key). Keys are per tenant.
ScopedKey = tuple[str, str]


@dataclass(frozen=True, slots=True)
class Decision:
    plans: list[Plan | KeyReused]
    new_events: list[NewEvent]
    reclaim: list[ScopedKey]  # stored keys older than the TTL, taken over by new events


def keys(units: Sequence[Sequence[NewEvent]]) -> list[ScopedKey]:
    """The keys a flush names, sorted (the order the store reads and writes them in)."""
    return sorted({k for unit in units for e in unit if (k := e.scoped_key) is not None})


def decide(
    units: Sequence[Sequence[NewEvent]], stored: dict[ScopedKey, StoredKey], cutoff: datetime
) -> Decision:
    """Every unit's plan, given what the keys it names already stored; a key stored
    before ``cutoff`` has expired and is taken over."""
    live = {k: row for k, row in stored.items() if row.created_at >= cutoff}
    reclaim = [k for k, row in stored.items() if row.created_at < cutoff]
    claimed: dict[ScopedKey, NewEvent] = {}
    plans: list[Plan | KeyReused] = []
    for unit in units:
        plan = _plan_unit(unit, live, claimed)
        plans.append(plan)
        if isinstance(plan, Plan):
            claimed.update({k: e for e in plan.new if (k := e.scoped_key) is not None})
    new_events = [e for p in plans if isinstance(p, Plan) for e in p.new]
    return Decision(plans, new_events, reclaim)


def answers(decision: Decision, bodies: dict[str, str]) -> list[UnitResult]:
    """Each unit's answer once its new events are written with ``bodies`` (by event ID)."""
    return [_answer(p, bodies) if isinstance(p, Plan) else p for p in decision.plans]


def _plan_unit(
    unit: Sequence[NewEvent],
    live: dict[ScopedKey, StoredKey],
    claimed: dict[ScopedKey, NewEvent],
) -> Plan | KeyReused:
    plan = Plan()
    local: dict[ScopedKey, NewEvent] = {}
    reused: list[int] = []
    for index, event in enumerate(unit):
        key = event.scoped_key
        if key is None:
            plan.new.append(event)
            plan.items.append(event)
            continue
        prior = live.get(key)
        earlier = claimed.get(key) or local.get(key)
        if prior is not None:
            if prior.fingerprint != event.fingerprint:
                reused.append(index)
            else:
                plan.items.append(Accepted(prior.event_id, prior.body, replayed=True))
        elif earlier is not None:
            if earlier.fingerprint != event.fingerprint:
                reused.append(index)
            else:
                plan.items.append((earlier,))
        else:
            local[key] = event
            plan.new.append(event)
            plan.items.append(event)
    return KeyReused(tuple(reused)) if reused else plan


def _answer(plan: Plan, bodies: dict[str, str]) -> list[Accepted]:
    result: list[Accepted] = []
    for item in plan.items:
        if isinstance(item, Accepted):
            result.append(item)
        elif isinstance(item, tuple):
            (earlier,) = item
            result.append(Accepted(earlier.id, bodies[earlier.id], True))
        else:
            result.append(Accepted(item.id, bodies[item.id], False))
    return result
