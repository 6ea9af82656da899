"""The ``eventrelay`` command: ``serve``, ``worker``, ``migrate``, ``dlq`` and
``rotate-encryption-key``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from app import __version__
from app.cli import dlq, keys, server


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(
        prog="eventrelay", description="HTTP event ingestion and webhook delivery."
    )
    root.add_argument("--version", action="version", version=f"eventrelay {__version__}")
    commands = root.add_subparsers(dest="command", required=True)
    server.add_commands(commands)
    dlq.add_commands(commands)
    keys.add_commands(commands)
    return root


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    code: int = args.run(args)
    return code


if __name__ == "__main__":
    sys.exit(main())
