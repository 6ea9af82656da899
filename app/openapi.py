"""Print the OpenAPI document the app serves (``make openapi`` writes it to openapi/)."""

from __future__ import annotations

import orjson

from app.main import create_app
from app.settings import Settings


def document() -> bytes:
    app = create_app(Settings(database_url="sqlite+aiosqlite:///:memory:"))
    return orjson.dumps(app.openapi(), option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


if __name__ == "__main__":
    import sys

    sys.stdout.buffer.write(document())
