"""Settings for the commands that read them, refused with a clear message when wrong."""

from __future__ import annotations

import logging

from pydantic import ValidationError

from app.logging import configure as configure_logging
from app.settings import Settings

log = logging.getLogger("eventrelay")

EXIT_BAD_SETTINGS = 2


def load_settings() -> Settings:
    """The settings from the environment, logging configured by them. A bad value
    ends the process (status 2) with one line per setting that names it; the
    value itself is never repeated (it may be a key or a password)."""
    try:
        settings = Settings()
    except ValidationError as exc:
        configure_logging()
        for error in exc.errors(include_input=False):
            log.error("not started: %s", _explain(error["loc"], error["msg"]))
        raise SystemExit(EXIT_BAD_SETTINGS) from None
    configure_logging(settings.log_format, settings.log_level)
    return settings


def _explain(loc: tuple[int | str, ...], msg: str) -> str:
    name = f"EVENTRELAY_{str(loc[0]).upper()}" if loc else "a setting"
    msg = msg.removeprefix("Value error, ")
    return msg if msg.startswith(name) else f"{name}: {msg}"
