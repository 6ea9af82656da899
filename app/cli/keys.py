"""``eventrelay rotate-encryption-key``: stored secrets sealed again with the first key."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from app.cli.config import load_settings
from app.errors import StoreUnavailable
from app.main import rotate_encryption_key
from app.store.sealed import RESEAL_BATCH

EXIT_UNREADABLE = 1
EXIT_REFUSED = 2


def add_commands(commands: Any) -> None:
    rotate = commands.add_parser(
        "rotate-encryption-key",
        help="encrypt every stored secret with the first EVENTRELAY_ENCRYPTION_KEYS key",
        description=(
            "Re-encrypts every stored secret that is not encrypted with the first key of "
            "EVENTRELAY_ENCRYPTION_KEYS (older keys, plaintext), a transaction per batch. "
            "Safe to run while eventrelay serves, and to run again: a second run changes "
            "nothing. Prints how many rows it changed."
        ),
    )
    rotate.add_argument(
        "--batch", type=int, default=RESEAL_BATCH, help="rows per transaction (default 200)"
    )
    rotate.set_defaults(run=_rotate)


def _rotate(args: argparse.Namespace) -> int:
    if args.batch < 1:
        print("--batch must be at least 1", file=sys.stderr)
        return EXIT_REFUSED
    settings = load_settings()
    try:
        reports = asyncio.run(rotate_encryption_key(settings, batch=args.batch))
    except ValueError as exc:
        print(f"rotate-encryption-key: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    except StoreUnavailable as exc:
        print(
            f"rotate-encryption-key: {exc.detail} (the batches written stay; run it again)",
            file=sys.stderr,
        )
        return EXIT_UNREADABLE
    key = settings.keyring().current
    changed = sum(r.changed for r in reports.values())
    for table, report in reports.items():
        print(f"{table}: {report.changed} rows re-encrypted with key {key}")
        for problem in report.unreadable:
            print(f"{table}: not re-encrypted: {problem}", file=sys.stderr)
    print(f"{changed} rows changed")
    return EXIT_UNREADABLE if any(r.unreadable for r in reports.values()) else 0
