"""CPU cost of fan-out with content filters, in the process, no database:
``app.store.fanout.fan_out`` over a flush of bench/ingest.lua-like events
and 10 subscriptions matching every event, with and without the three-condition
filters of ``bench/ingest.py --filters``.

    .venv/bin/python bench/fanout_filters.py [--events 64] [--rounds 7]

Reports the best of ``--rounds`` (the figure least disturbed by neighbours)
in microseconds per event for each case, interleaved round by round.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ingest import bench_filter  # noqa: E402  (bench/ingest.py, beside this script)

from app.domain.events import NewEvent  # noqa: E402
from app.domain.ids import new_id  # noqa: E402
from app.store import fanout  # noqa: E402


def events(count: int) -> list[NewEvent]:
    now = datetime.now(UTC)
    return [
        NewEvent(
            id=new_id("evt"),
            type="order.created",
            key=f"customer-{n}",
            data_json=orjson.dumps(
                {
                    "order_id": f"ord_{n}",
                    "total": 10.5 + n,
                    "currency": "EUR",
                    "items": [{"sku": f"SKU-{n}", "qty": 2}, {"sku": "SKU-1", "qty": 1}],
                    "customer": {"id": n, "tier": "gold"},
                }
            ).decode(),
            schema_version=None,
            occurred_at=None,
            received_at=now,
            idempotency_key=None,
            fingerprint=None,
        )
        for n in range(count)
    ]


def subscriptions(filtered: bool) -> list[fanout.Subscriber]:
    rows = [
        (
            new_id("sub"),
            '["*"]',
            "key",
            "default",
            orjson.dumps(bench_filter(n)).decode() if filtered else None,
        )
        for n in range(10)
    ]
    return [fanout.subscriber(row) for row in rows]


def per_event_us(batch: list[NewEvent], subs: list[fanout.Subscriber], repeat: int) -> float:
    start = time.perf_counter()
    for _ in range(repeat):
        rows = fanout.fan_out(batch, subs)
    elapsed = time.perf_counter() - start
    assert len(rows) == 10 * len(batch)
    return elapsed / repeat / len(batch) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--repeat", type=int, default=300)
    args = parser.parse_args()
    batch = events(args.events)
    cases = {"unfiltered": subscriptions(False), "filtered": subscriptions(True)}
    best = dict.fromkeys(cases, float("inf"))
    for _ in range(args.rounds):
        for name, subs in cases.items():
            best[name] = min(best[name], per_event_us(batch, subs, args.repeat))
    for name, value in best.items():
        print(f"{name:10} {value:6.2f} µs per event (10 subscriptions)")
    print(f"filters add {best['filtered'] - best['unfiltered']:.2f} µs per event")


if __name__ == "__main__":
    main()
