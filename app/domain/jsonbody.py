"""Strict JSON for request bodies.

Both databases must store the same thing, so the rules are tighter than
Python's ``json``: ``NaN``/``Infinity`` and numbers beyond a double are not
JSON (400); ``\\u0000`` and lone surrogates are JSON but cannot be stored
(422, with the JSON pointer of each).
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

import orjson

from app.errors import BadRequest, FieldError, ValidationFailed

# Only an escape can put NUL or a surrogate into a JSON string, so bodies
# without one of these never need the slow walk.
_INT_MIN = -(2**63)
_UINT_MAX = 2**64 - 1
_SUSPECT = re.compile(rb"\\u(?:0000|[dD][89a-fA-F][0-9a-fA-F]{2})")


# Answers wrap a stored value in up to three more levels (a list page); orjson
# writes at most 254, so a body must leave room for that.
_ANSWER_WRAPPING = 3
# A body with no more opening brackets than this cannot be nested deeper, so
# the check (serialising the whole document again) is skipped. Each level
# takes two bytes, so a body of up to twice as many bytes needs no counting.
_SHALLOW = 250


def parse(body: bytes) -> Any:
    """Parse a request body, raising 400 for non-JSON and 422 for unstorable strings."""
    if _SUSPECT.search(body):
        document = _parse_permissive(body)
        problems = list(unstorable_strings(document, ""))
        if problems:
            raise ValidationFailed("the body contains strings that cannot be stored", problems)
    else:
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"the body is not valid JSON: {exc}") from None
    if len(body) > 2 * _SHALLOW and body.count(b"[") + body.count(b"{") > _SHALLOW:
        _check_depth(document)
    return document


def _check_depth(document: Any) -> None:
    wrapped = document
    for _ in range(_ANSWER_WRAPPING):
        wrapped = [wrapped]
    try:
        orjson.dumps(wrapped)
    except orjson.JSONEncodeError:
        raise BadRequest("the body is nested too deeply (at most 250 levels)") from None


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"the body is not valid JSON: {name} is not a JSON number")


def _finite_float(text: str) -> float:
    value = float(text)
    if math.isinf(value):
        raise BadRequest(f"the body is not valid JSON: {text[:40]} is beyond a double")
    return value


def _int_like_orjson(text: str) -> int | float:
    # orjson keeps integers that fit 64 bits and reads larger ones as doubles;
    # both paths must give a number the same meaning.
    value = int(text)
    if _INT_MIN <= value <= _UINT_MAX:
        return value
    return _finite_float(text)


def _parse_permissive(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
        return json.loads(
            text,
            parse_constant=_reject_constant,
            parse_float=_finite_float,
            parse_int=_int_like_orjson,
        )
    except UnicodeDecodeError:
        raise BadRequest("the body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest(f"the body is not valid JSON: {exc}") from None


def unstorable_strings(value: Any, pointer: str) -> Any:
    """Yield a :class:`FieldError` for every string (or key) holding NUL or a lone surrogate."""
    if isinstance(value, str):
        reason = _string_problem(value)
        if reason:
            yield FieldError(pointer or "/", reason)
    elif isinstance(value, dict):
        for key, item in value.items():
            child = f"{pointer}/{_escape_pointer(key)}"
            reason = _string_problem(key)
            if reason:
                yield FieldError(child, f"object key: {reason}")
            yield from unstorable_strings(item, child)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from unstorable_strings(item, f"{pointer}/{index}")


def _string_problem(text: str) -> str | None:
    if "\x00" in text:
        return "strings must not contain \\u0000"
    if any("\ud800" <= char <= "\udfff" for char in text):
        return "strings must not contain lone surrogates"
    return None


def _escape_pointer(token: str) -> str:
    return token.replace("~", "~0").replace("/", "~1")


def dumps(value: Any) -> str:
    return orjson.dumps(value).decode()
