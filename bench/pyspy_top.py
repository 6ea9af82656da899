"""Summarise a py-spy ``--format raw`` profile: the hottest functions by self
and by inclusive samples, overall and inside ``app/``.

    .venv/bin/python bench/pyspy_top.py bench/results/profile-sqlite.txt [--top 20]

A raw profile is one line per distinct stack, ``frame;frame;...;leaf count``,
root first, as written by ``py-spy record --format raw``.
"""

from __future__ import annotations

import argparse
from collections import Counter
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True, slots=True)
class Summary:
    total: int
    self_samples: Counter[str]
    inclusive: Counter[str]
    app_inclusive: Counter[str]
    by_area: Counter[str]


# Where time goes, by the first frame (leaf upwards) that belongs to one of these.
_AREAS = (
    ("app/store/", "eventrelay store (SQL building, rows)"),
    ("app/services/", "eventrelay services (ingest, group commit, auth)"),
    ("app/domain/", "eventrelay domain (ids, parsing, fingerprints)"),
    ("app/api/", "eventrelay API layer"),
    ("sqlalchemy/", "SQLAlchemy"),
    ("aiosqlite/", "aiosqlite"),
    ("asyncpg/", "asyncpg"),
    ("pydantic", "pydantic"),
    ("prometheus_fastapi_instrumentator/", "prometheus instrumentator"),
    ("prometheus_client/", "prometheus client"),
    ("fastapi/", "FastAPI"),
    ("starlette/", "Starlette"),
    ("uvicorn/", "uvicorn"),
    ("asyncio/", "asyncio"),
)


def _frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f and not f.startswith(("thread (", "process "))]


def _area(frames: list[str]) -> str:
    for frame in reversed(frames):
        for marker, name in _AREAS:
            if marker in frame:
                return name
    return "other (C extensions, stdlib, idle wakeups)"


def summarise(path: Path) -> Summary:
    self_samples: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    app_inclusive: Counter[str] = Counter()
    by_area: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = _frames(stack)
        if not frames:
            continue
        total += count
        self_samples[frames[-1]] += count
        by_area[_area(frames)] += count
        for frame in set(frames):
            inclusive[frame] += count
            if "(app/" in frame or "/app/" in frame:
                app_inclusive[frame] += count
    return Summary(total, self_samples, inclusive, app_inclusive, by_area)


def _table(title: str, counts: Counter[str], total: int, top: int) -> list[str]:
    lines = [f"#### {title}", "", "| % samples | function |", "| ---: | --- |"]
    for frame, count in counts.most_common(top):
        lines.append(f"| {100 * count / max(total, 1):.1f} | `{frame}` |")
    return [*lines, ""]


def render(summary: Summary, top: int = 15) -> str:
    lines = [f"{summary.total} samples", ""]
    lines += _table(
        "By area (leaf-most frame that belongs to it)", summary.by_area, summary.total, top
    )
    lines += _table("Self time (leaf frames)", summary.self_samples, summary.total, top)
    lines += _table("Inclusive, everything", summary.inclusive, summary.total, 2 * top)
    lines += _table("Inclusive, eventrelay code only", summary.app_inclusive, summary.total, top)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("profile", type=Path)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    print(render(summarise(args.profile), args.top))


if __name__ == "__main__":
    main()
