"""The wheel works once installed as a package, away from the checkout.

``pip wheel`` builds eventrelay as ``pip install eventrelay`` or ``pipx`` would
get it; the wheel goes into a fresh venv (no system site-packages, no editable
link back here) and that venv's ``eventrelay migrate`` and ``eventrelay serve``
run from a directory outside the checkout: the migrations must travel inside
the package. One event goes in, is read back and reaches a receiver.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from app.store.migrations import head_revision
from tests.e2e.conftest import REPO, ServerProcess
from tests.e2e.procs import Relay, unique_type
from tests.e2e.receivers import ReceiverPool, wait_until

BUILD_TIMEOUT = 120.0
DELIVERY_TIMEOUT = 15.0


def _run(*command: str | Path, cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(
        [str(part) for part in command],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=BUILD_TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, f"{command} exited {done.returncode}\n{done.stdout}{done.stderr}"
    return done.stdout


def _outside_env(**extra: str) -> dict[str, str]:
    """This process's environment without anything that points back at the checkout."""
    hidden = {"PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME"}
    env = {
        k: v for k, v in os.environ.items() if k not in hidden and not k.startswith("EVENTRELAY_")
    }
    return {**env, **extra}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv holding only the built wheel and its dependencies; its bin folder."""
    root = tmp_path_factory.mktemp("wheel")
    dist, venv = root / "dist", root / "venv"
    pip = (sys.executable, "-m", "pip")
    _run(*pip, "wheel", "--no-deps", "--quiet", "--wheel-dir", dist, REPO, cwd=root)
    wheels = list(dist.glob("eventrelay-*.whl"))
    assert len(wheels) == 1, wheels
    _run(sys.executable, "-m", "venv", "--without-pip", venv, cwd=root)
    _run(*pip, "--python", venv / "bin" / "python", "install", "--quiet", wheels[0], cwd=root)
    return venv / "bin"


def test_the_installed_package_is_the_wheel_not_the_checkout(
    installed: Path, tmp_path: Path
) -> None:
    where = _run(
        installed / "python",
        "-c",
        "import app; print(app.__file__)",
        cwd=tmp_path,
        env=_outside_env(),
    )
    assert Path(where.strip()).is_relative_to(installed.parent), where
    assert not Path(where.strip()).is_relative_to(REPO), where


async def test_the_wheel_migrates_serves_and_delivers(installed: Path, tmp_path: Path) -> None:
    database = tmp_path / "eventrelay.db"
    database_url = f"sqlite+aiosqlite:///{database}"
    _run(
        installed / "eventrelay",
        "migrate",
        cwd=tmp_path,
        env=_outside_env(EVENTRELAY_DATABASE_URL=database_url),
    )
    with sqlite3.connect(database) as conn:
        versions = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    assert versions == [(head_revision(),)]

    server = ServerProcess(database_url, tmp_path, executable=str(installed / "eventrelay"))
    server.extra_env = {"PYTHONPATH": ""}  # an empty PYTHONPATH adds nothing to sys.path
    server.start()
    try:
        async with ReceiverPool() as receivers, Relay(server) as relay:
            receiver = await receivers.start()
            event_type = unique_type("wheel")
            await relay.subscribe(receiver.url(), event_types=[event_type])
            accepted = await relay.publish(event_type, {"installed": True})
            event = await relay.event(accepted["id"])
            assert (event["type"], event["data"]) == (event_type, {"installed": True})
            await wait_until(
                lambda: relay.delivery_in(accepted["id"], "succeeded"),
                DELIVERY_TIMEOUT,
                message="the delivery to succeed",
            )
            [receipt] = receiver.for_event(accepted["id"])
            assert receipt.data == {"installed": True}
        assert server.terminate() == 0
    finally:
        server.stop()
