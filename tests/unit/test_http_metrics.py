"""HttpMetrics (fed by RequestTelemetry) records what prometheus-fastapi-instrumentator's
defaults record.

The same FastAPI app is instrumented twice, once by the instrumentator and
once by eventrelay's middleware, the same requests go to both, and the
scrapes must agree on every family, type, help text, label set and count
(durations aside, which only have to be plausible).
"""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest
from fastapi import FastAPI, HTTPException, Request
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_fastapi_instrumentator import Instrumentator
from starlette.responses import Response

from app.api.http_metrics import HttpMetrics
from app.api.middleware import RequestTelemetry

Sample = tuple[str, tuple[tuple[str, str], ...]]


def _app() -> FastAPI:
    app = FastAPI()

    @app.post("/v1/items", status_code=202)
    async def create(request: Request) -> Response:
        await request.body()
        return Response(b'{"ok":true}', status_code=202, media_type="application/json")

    @app.get("/v1/items/{item_id}")
    async def show(item_id: str) -> dict[str, str]:
        if item_id == "missing":
            raise HTTPException(404, "no such item")
        return {"id": item_id}

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("boom")

    return app


def _instrumentator(app: FastAPI, registry: CollectorRegistry) -> None:
    Instrumentator(registry=registry, excluded_handlers=["/metrics"]).instrument(app).expose(app)


def _ours(app: FastAPI, registry: CollectorRegistry) -> None:
    metrics = HttpMetrics(registry=registry, excluded=["/metrics"])
    app.add_middleware(RequestTelemetry, metrics=metrics)
    Instrumentator(registry=registry).expose(app)


async def _exercise(instrument: Callable[[FastAPI, CollectorRegistry], None]) -> str:
    registry = CollectorRegistry(auto_describe=True)
    app = _app()
    instrument(app, registry)
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        for size in (10, 200, 3000):
            assert (await client.post("/v1/items", content=b"x" * size)).status_code == 202
        assert (await client.get("/v1/items/a1")).status_code == 200
        assert (await client.get("/v1/items/b2")).status_code == 200
        assert (await client.get("/v1/items/missing")).status_code == 404
        assert (await client.get("/nowhere")).status_code == 404
        assert (await client.get("/boom")).status_code == 500
        assert (await client.get("/metrics")).status_code == 200
    return generate_latest(registry).decode()


def _families(text: str) -> dict[str, tuple[str, str, dict[Sample, float]]]:
    found = {}
    for family in text_string_to_metric_families(text):
        # prometheus_client's *_created series are not exported by eventrelay.
        if not family.name.startswith("http_") or family.name.endswith("_created"):
            continue
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples}
        found[family.name] = (family.type, family.documentation, samples)
    return found


def _without_durations(samples: dict[Sample, float]) -> dict[Sample, float]:
    return {k: v for k, v in samples.items() if not k[0].endswith(("_sum", "_created"))}


async def test_the_same_families_labels_and_counts_as_the_instrumentator() -> None:
    theirs = _families(await _exercise(_instrumentator))
    ours = _families(await _exercise(_ours))

    assert sorted(ours) == sorted(theirs)
    for name, (kind, help_text, samples) in theirs.items():
        our_kind, our_help, our_samples = ours[name]
        assert (our_kind, our_help) == (kind, help_text), name
        if "duration" in name:
            # Bucket counts depend on timing; the label sets and totals must not.
            assert our_samples.keys() == samples.keys(), name
            counts = {k: v for k, v in samples.items() if k[0].endswith("_count")}
            assert {k: our_samples[k] for k in counts} == counts, name
        else:
            assert _without_durations(our_samples) == _without_durations(samples), name


async def test_handlers_statuses_and_sizes_are_labelled_as_promised() -> None:
    text = await _exercise(_ours)
    series = _families(text)
    total = series["http_requests"][2]

    def requests(handler: str, method: str, status: str) -> float:
        labels = (("handler", handler), ("method", method), ("status", status))
        return total.get(("http_requests_total", labels), 0.0)

    assert requests("/v1/items", "POST", "2xx") == 3
    assert requests("/v1/items/{item_id}", "GET", "2xx") == 2
    assert requests("/v1/items/{item_id}", "GET", "4xx") == 1
    assert requests("none", "GET", "4xx") == 1  # no route matched
    assert requests("/boom", "GET", "5xx") == 1
    assert not any(dict(labels).get("handler") == "/metrics" for _, labels in total)

    in_size = series["http_request_size_bytes"][2]
    assert in_size[("http_request_size_bytes_sum", (("handler", "/v1/items"),))] == 3210
    out_size = series["http_response_size_bytes"][2]
    assert out_size[("http_response_size_bytes_sum", (("handler", "/v1/items"),))] == 3 * len(
        b'{"ok":true}'
    )
    highr = series["http_request_duration_highr_seconds"][2]
    assert highr[("http_request_duration_highr_seconds_count", ())] == 8


@pytest.mark.parametrize("header", [b"", b"12x", b"-1"])
async def test_a_bad_content_length_counts_as_zero(header: bytes) -> None:
    registry = CollectorRegistry()
    seen: list[int] = []

    async def app(scope: dict[str, object], receive: object, send: Callable[..., object]) -> None:
        await send({"type": "http.response.start", "status": 204, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    middleware = RequestTelemetry(app, metrics=HttpMetrics(registry=registry))  # type: ignore[arg-type]

    async def send(message: object) -> None:
        seen.append(1)

    scope = {"type": "http", "method": "POST", "headers": [(b"content-length", header)]}
    await middleware(scope, None, send)  # type: ignore[arg-type]
    assert len(seen) == 2
    assert registry.get_sample_value("http_request_size_bytes_sum", {"handler": "none"}) == 0
