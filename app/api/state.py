"""What the composition root (app.main) builds and the routers use, as one typed object."""

from __future__ import annotations

from fastapi import Request

from app.services.container import Services

__all__ = ["Services", "services"]


async def services(request: Request) -> Services:
    # async: FastAPI would run a plain ``def`` dependency in its thread pool.
    found: Services = request.app.state.services
    return found
