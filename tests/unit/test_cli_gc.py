"""The collector settings ``eventrelay serve`` and ``worker`` apply after startup."""

from __future__ import annotations

import subprocess
import sys

from app.cli.server import YOUNG_COLLECTION_THRESHOLD

SCRIPT = """
import gc
from app.cli import server
before = gc.get_threshold()
server.freeze_startup_objects()
after = gc.get_threshold()
print(before[1:] == after[1:], after[0], gc.get_freeze_count() > 0)
"""


def test_startup_freezes_and_raises_the_young_threshold_only() -> None:
    # A process of its own: freezing is for the life of the process.
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], capture_output=True, text=True, check=True, timeout=60
    ).stdout.split()
    assert out == ["True", str(YOUNG_COLLECTION_THRESHOLD), "True"]
    assert YOUNG_COLLECTION_THRESHOLD > 700
