"""What tracing costs: ingest and delivery before tracing existed, with tracing
unset, and with spans exported to a local OTLP receiver, interleaved.

    .venv/bin/python bench/tracing.py --baseline-tree DIR [--rounds 3]
        [--requests 20000] [--deliveries 20000] [--skip-delivery]
        [--results PATH]

``DIR`` holds the code to compare with (for example
``git archive <commit> | tar -x -C DIR`` of the commit before tracing). Three
targets, each in fresh processes, in turn round after round:

``before``  ``DIR``'s code (``PYTHONPATH=DIR``), no ``OTEL_*`` variables;
``unset``   this tree, no ``OTEL_*`` variables;
``traced``  this tree with ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at
            ``bench/otlp_sink.py`` on loopback (OTLP/HTTP, decodes every export).

Ingest: ``bench/ingest_inprocess.py --mode full`` (the real service and group
commit on SQLite, the ASGI app called in-process, 64 requests at a time): CPU
µs per request, the minimum over rounds (the figure least disturbed by
neighbours on a shared machine). Delivery: ``bench/delivery.py --scenario none
--backend sqlite`` (a standalone worker drains ``--deliveries`` to a local
receiver): deliveries/s over a bare aiohttp loop measured in the same run, and
the worker's CPU µs per delivery; medians over rounds.

``--results PATH`` keeps the rounds in a JSON file and reports over all the
rounds it holds, so that a long run can be made as several short invocations
(each continues the rotation of the order where the file left it).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

BENCH = Path(__file__).resolve().parent
TREE = BENCH.parent
TARGETS = ("before", "unset", "traced")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextlib.contextmanager
def otlp_sink() -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "otlp_sink.py"), "--port", str(port)])
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(f"{url}/count", timeout=1)
                break
            except httpx.TransportError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def spans_received(sink: str) -> int:
    return int(httpx.get(f"{sink}/count", timeout=5).text)


def environment(target: str, baseline: Path, sink: str) -> tuple[Path, dict[str, str]]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("EVENTRELAY_", "OTEL_")) and k != "PYTHONPATH"
    }
    if target == "before":
        env["PYTHONPATH"] = str(baseline)
        return baseline, env
    if target == "traced":
        env["OTEL_EXPORTER_OTLP_ENDPOINT"] = sink
        env["OTEL_SERVICE_NAME"] = "eventrelay-bench"
    return TREE, env


def ingest_round(target: str, args: argparse.Namespace, sink: str) -> dict[str, Any]:
    tree, env = environment(target, args.baseline_tree, sink)
    env["EVENTRELAY_LOG_LEVEL"] = "WARNING"
    command = [sys.executable, str(tree / "bench" / "ingest_inprocess.py"), "--child", "eventrelay"]
    command += ["--mode", "full", "--requests", str(args.requests), "--concurrency", "64"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"ingest {target} failed:\n{done.stdout[-2000:]}\n{done.stderr[-3000:]}")
    result: dict[str, Any] = json.loads(lines[-1])
    return result


def delivery_round(target: str, args: argparse.Namespace, sink: str) -> dict[str, Any]:
    tree, env = environment(target, args.baseline_tree, sink)
    with tempfile.TemporaryDirectory(prefix="eventrelay-tbench-") as tmp:
        out = Path(tmp) / "delivery.json"
        command = [sys.executable, str(tree / "bench" / "delivery.py"), "--backend", "sqlite"]
        command += ["--scenario", "none", "--rounds", "1", "--no-httpx"]
        command += ["--deliveries", str(args.deliveries), "--json", str(out)]
        done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if not out.exists():
            raise RuntimeError(
                f"delivery {target} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
            )
        document = json.loads(out.read_text())
    drains = [d for d in document["drains"] if not d["profiled"]]
    (drain,) = drains
    rate = drain["deliveries"] / drain["seconds"]
    return {
        "rate": rate,
        "ratio": rate / drain["baseline_rps"],
        "worker_cpu_us": 1e6 * drain["worker_cpu_s"] / drain["deliveries"],
        # the event loop's thread alone (the rest is SQLite's writer and aiohttp's resolver)
        "worker_loop_cpu_us": 1e6 * drain["worker_loop_cpu_s"] / drain["deliveries"],
        "received": drain["received"],
    }


def table(results: dict[str, list[dict[str, Any]]], key: str, pick: Any, unit: str) -> str:
    base = pick([r[key] for r in results["before"]])
    rows = [f"| target | {unit} | vs before | each round |", "| --- | ---: | ---: | --- |"]
    for target in TARGETS:
        values = [r[key] for r in results[target]]
        mine = pick(values)
        each = ", ".join(f"{v:,.2f}" for v in values)
        rows.append(f"| {target} | {mine:,.2f} | {mine / base:.3f} | {each} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline-tree", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--deliveries", type=int, default=20000)
    parser.add_argument("--skip-delivery", action="store_true")
    parser.add_argument("--results", type=Path, help="JSON file of rounds to add to and report")
    args = parser.parse_args()
    ingest: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    delivery: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    if args.results is not None and args.results.exists():
        kept = json.loads(args.results.read_text())
        ingest, delivery = kept["ingest"], kept["delivery"]
    first = len(ingest["before"]) + 1
    with otlp_sink() as sink:
        for number in range(first, first + args.rounds):
            # Rotate the order: what ran just before a target moves its figures.
            order = TARGETS[number % 3 :] + TARGETS[: number % 3]
            for target in order:
                before = spans_received(sink)
                found = ingest_round(target, args, sink)
                found["spans"] = spans_received(sink) - before
                ingest[target].append(found)
                print(f"round {number} ingest {target:7} {found}", file=sys.stderr, flush=True)
                if args.skip_delivery:
                    continue
                before = spans_received(sink)
                found = delivery_round(target, args, sink)
                found["spans"] = spans_received(sink) - before
                delivery[target].append(found)
                print(f"round {number} delivery {target:7} {found}", file=sys.stderr, flush=True)
            if args.results is not None:
                args.results.write_text(json.dumps({"ingest": ingest, "delivery": delivery}))
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}\n")
    print(f"Ingest (SQLite, in-process, {args.requests} requests a round), CPU µs/request, min:\n")
    print(table(ingest, "cpu_us", min, "CPU µs/req"))
    print("\nIngest throughput (req/s), median:\n")
    print(table(ingest, "rps", statistics.median, "req/s"))
    if delivery["before"]:
        print(
            f"\nDelivery (SQLite, {args.deliveries} deliveries a round), drain/baseline, median:\n"
        )
        print(table(delivery, "ratio", statistics.median, "drain/bare"))
        print("\nDelivery worker CPU µs per delivery, median:\n")
        print(table(delivery, "worker_cpu_us", statistics.median, "worker CPU µs"))
        if all("worker_loop_cpu_us" in r for rounds in delivery.values() for r in rounds):
            print("\nOf which the event loop's thread, median:\n")
            print(table(delivery, "worker_loop_cpu_us", statistics.median, "loop CPU µs"))
    print(
        f"\nspans exported, traced rounds: ingest {[r['spans'] for r in ingest['traced']]}", end=""
    )
    if delivery["before"]:
        print(f", delivery {[r['spans'] for r in delivery['traced']]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
