"""The baseline for ``bench/ingest.py``: FastAPI on the same uvicorn settings
as ``eventrelay serve``, doing nothing but read the body, parse it with orjson
and answer 202.

Whatever eventrelay does beyond this (auth, validation, idempotency, the
durable group commit) is what the benchmark's eventrelay/bare ratio prices.

    .venv/bin/python bench/bare_app.py --host 127.0.0.1 --port 8001
"""

from __future__ import annotations

import argparse

import orjson
import uvicorn
from fastapi import FastAPI, Request
from starlette.responses import Response

# About the size of eventrelay's 202 body, so both pay the same to write it.
_ACCEPTED = orjson.dumps(
    {
        "id": "evt_01JDBENCHBENCHBENCHBENCHBE",
        "type": "order.created",
        "key": "customer-42",
        "received_at": "2026-11-26T10:00:00.000000Z",
        "schema_version": None,
        "deliveries": 0,
    }
)


def create_app() -> FastAPI:
    app = FastAPI(title="bare", openapi_url=None, docs_url=None, redoc_url=None)

    @app.post("/v1/events", status_code=202)
    async def post_event(request: Request) -> Response:
        orjson.loads(await request.body())
        return Response(_ACCEPTED, status_code=202, media_type="application/json")

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    # The same knobs as app/cli.py's uvicorn.Config: uvloop, httptools, one
    # process, no access log, no server header.
    config = uvicorn.Config(
        create_app(),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_config=None,
        log_level="warning",
        access_log=False,
        server_header=False,
    )
    uvicorn.Server(config).run()


if __name__ == "__main__":
    main()
