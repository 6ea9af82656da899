"""A local OTLP/HTTP trace receiver for the tracing benchmark: decodes every
export (as a collector would) and counts the spans.

    .venv/bin/python bench/otlp_sink.py --port PORT

``POST /v1/traces`` takes exports; ``GET /count`` answers the number of spans
received so far (and tells a caller that the sink is up).
"""

from __future__ import annotations

import argparse
import gzip

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

ANSWER = ExportTraceServiceResponse().SerializeToString()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    spans = 0

    async def traces(request: web.Request) -> web.Response:
        nonlocal spans
        body = await request.read()
        if request.headers.get("Content-Encoding") == "gzip":
            body = gzip.decompress(body)
        export = ExportTraceServiceRequest()
        export.ParseFromString(body)
        spans += sum(len(s.spans) for r in export.resource_spans for s in r.scope_spans)
        return web.Response(body=ANSWER, content_type="application/x-protobuf")

    async def count(_: web.Request) -> web.Response:
        return web.Response(text=str(spans))

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/traces", traces)
    app.router.add_get("/count", count)
    web.run_app(app, host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
