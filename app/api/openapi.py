"""OpenAPI for bodies the routers parse themselves (strict JSON, not FastAPI's)."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel

REF = "#/components/schemas/{model}"


def json_body(model: type[BaseModel], *media_types: str) -> dict[str, Any]:
    """``openapi_extra`` declaring ``model`` as the request body."""
    schema = model.model_json_schema(ref_template=REF)
    schema.pop("$defs", None)
    content = {m: {"schema": schema} for m in (media_types or ("application/json",))}
    return {"requestBody": {"required": True, "content": content}, "x-body-model": model.__name__}


def install(app: FastAPI, models: list[type[BaseModel]]) -> None:
    """Add the nested definitions of hand-parsed body models to the components."""

    def build() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        for model in models:
            for name, definition in (
                model.model_json_schema(ref_template=REF).get("$defs", {}).items()
            ):
                components.setdefault(name, definition)
        for path in schema.get("paths", {}).values():
            for operation in path.values():
                operation.pop("x-body-model", None)
        app.openapi_schema = schema
        return schema

    app.openapi = build  # type: ignore[method-assign]
