"""``eventrelay dlq``: the dead-letter queue from a terminal, over the REST API."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import httpx

PAGE = 500
REDRIVE_STEP = 500


def _connection_options(parser: argparse.ArgumentParser, *, defaults: bool) -> None:
    # Accepted before the action (`dlq --url U list`) and after it (`dlq list --url U`);
    # the copies after it must not overwrite a value given before.
    parser.add_argument(
        "--url",
        default=(
            os.environ.get("EVENTRELAY_URL", "http://127.0.0.1:8000")
            if defaults
            else argparse.SUPPRESS
        ),
        help="eventrelay's base URL (env EVENTRELAY_URL)",
    )
    parser.add_argument(
        "--token",
        default=(
            os.environ.get("EVENTRELAY_TOKEN") or os.environ.get("EVENTRELAY_ADMIN_TOKEN")
            if defaults
            else argparse.SUPPRESS
        ),
        help="an admin token (env EVENTRELAY_TOKEN)",
    )


def add_commands(commands: Any) -> None:
    dlq = commands.add_parser("dlq", help="browse and act on the dead-letter queue")
    _connection_options(dlq, defaults=True)
    common = argparse.ArgumentParser(add_help=False)
    _connection_options(common, defaults=False)
    actions = dlq.add_subparsers(dest="action", required=True)

    listing = actions.add_parser("list", help="list dead letters", parents=[common])
    _filters(listing)
    listing.add_argument("--limit", type=int, default=50, help="at most this many (0: all)")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(run=_list)

    show = actions.add_parser(
        "show", help="one dead letter with its event and attempts", parents=[common]
    )
    show.add_argument("id")
    show.set_defaults(run=_show)

    redrive = actions.add_parser(
        "redrive", help="send dead letters again with a fresh schedule", parents=[common]
    )
    redrive.add_argument("id", nargs="?", help="one dead letter; without it, every match")
    _filters(redrive)
    redrive.set_defaults(run=_redrive)

    discard = actions.add_parser(
        "discard", help="drop a dead letter (unblocks its key)", parents=[common]
    )
    discard.add_argument("id")
    discard.set_defaults(run=_discard)


def _filters(command: argparse.ArgumentParser) -> None:
    command.add_argument("--subscription-id")
    command.add_argument("--event-type")


def _client(args: argparse.Namespace) -> httpx.Client:
    if not args.token:
        raise SystemExit("eventrelay dlq: an admin token is needed (--token or EVENTRELAY_TOKEN)")
    return httpx.Client(
        base_url=args.url.rstrip("/"),
        headers={"Authorization": f"Bearer {args.token}"},
        timeout=60,
    )


def _call(client: httpx.Client, method: str, path: str, **kwargs: Any) -> httpx.Response:
    try:
        response = client.request(method, path, **kwargs)
    except httpx.HTTPError as exc:
        raise SystemExit(f"eventrelay dlq: cannot reach {client.base_url}: {exc}") from None
    if response.status_code >= 400:
        try:
            detail = response.json().get("detail", response.text)
        except ValueError:
            detail = response.text
        raise SystemExit(f"eventrelay dlq: {response.status_code}: {detail}")
    return response


def _list(args: argparse.Namespace) -> int:
    params = {
        k: v
        for k, v in {"subscription_id": args.subscription_id, "event_type": args.event_type}.items()
        if v
    }
    shown = 0
    cursor: str | None = None
    with _client(args) as client:
        if not args.json:
            print(f"{'ID':<31} {'EVENT TYPE':<24} {'ATTEMPTS':>8} {'CODE':>4}  DEAD-LETTERED AT")
        while True:
            want = PAGE if args.limit == 0 else min(PAGE, args.limit - shown)
            page = _call(
                client, "GET", "/v1/dlq", params=params | {"limit": want} | _cursor(cursor)
            ).json()
            for item in page["items"]:
                _print_item(item, as_json=args.json)
            shown += len(page["items"])
            cursor = page["next_cursor"]
            if cursor is None or (args.limit and shown >= args.limit):
                break
    return 0


def _cursor(cursor: str | None) -> dict[str, str]:
    return {"cursor": cursor} if cursor else {}


def _print_item(item: dict[str, Any], *, as_json: bool) -> None:
    if as_json:
        print(json.dumps(item))
        return
    code = item["last_status_code"] if item["last_status_code"] is not None else "-"
    print(
        f"{item['id']:<31} {item['event_type'][:24]:<24} {item['attempts']:>8} {code!s:>4}  "
        f"{item['dead_lettered_at']}"
    )


def _show(args: argparse.Namespace) -> int:
    with _client(args) as client:
        print(json.dumps(_call(client, "GET", f"/v1/dlq/{args.id}").json(), indent=2))
    return 0


def _discard(args: argparse.Namespace) -> int:
    with _client(args) as client:
        _call(client, "DELETE", f"/v1/dlq/{args.id}")
    print(f"discarded {args.id}")
    return 0


def _redrive(args: argparse.Namespace) -> int:
    with _client(args) as client:
        if args.id:
            _call(client, "POST", f"/v1/dlq/{args.id}/redrive")
            print(f"redriven {args.id}")
            return 0
        body = {
            k: v
            for k, v in {
                "subscription_id": args.subscription_id,
                "event_type": args.event_type,
            }.items()
            if v
        }
        total = None if body else _call(client, "GET", "/v1/stats").json()["deliveries"]["dead"]
        progress = Progress(total)
        done = 0
        while True:
            step = _call(client, "POST", "/v1/dlq/redrive", json=body | {"limit": REDRIVE_STEP})
            count = int(step.json()["redriven"])
            done += count
            progress.show(done)
            if count < REDRIVE_STEP:
                break
        progress.finish(done)
    return 0


class Progress:
    """A one-line progress bar on stderr."""

    WIDTH = 30

    def __init__(self, total: int | None) -> None:
        self._total = total
        self._started = time.monotonic()

    def show(self, done: int) -> None:
        rate = done / max(time.monotonic() - self._started, 1e-6)
        if self._total:
            filled = int(self.WIDTH * min(done / self._total, 1.0))
            bar = "#" * filled + "." * (self.WIDTH - filled)
            line = f"\rredrive [{bar}] {done}/{self._total} ({rate:.0f}/s)"
        else:
            line = f"\rredriven {done} ({rate:.0f}/s)"
        sys.stderr.write(line)
        sys.stderr.flush()

    def finish(self, done: int) -> None:
        self.show(done)
        sys.stderr.write("\n")
        print(f"redriven {done}")
