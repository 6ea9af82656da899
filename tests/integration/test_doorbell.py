"""The SQLite doorbell on real sockets: who hears a ring, and who cannot ring or listen."""

from __future__ import annotations

import asyncio
from pathlib import Path

from app.store.doorbell import Doorbell, DoorbellListener, address


def test_a_file_has_one_address_however_it_is_named(tmp_path: Path) -> None:
    database = tmp_path / "relay.db"
    named = address(f"sqlite+aiosqlite:///{database}")
    assert named is not None
    assert address(f"sqlite+aiosqlite:///{tmp_path}/./sub/../relay.db") == named
    assert address(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}") != named


def test_a_database_in_memory_has_no_doorbell() -> None:
    assert address("sqlite+aiosqlite://") is None
    assert address("sqlite+aiosqlite:///:memory:") is None
    assert address("sqlite+aiosqlite:///file:x?mode=memory&cache=shared&uri=true") is None
    Doorbell("sqlite+aiosqlite:///:memory:").ring()  # rings nothing, raises nothing


async def test_the_listener_hears_each_ring_on_its_file_and_no_other(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    heard: asyncio.Queue[str] = asyncio.Queue()
    listener = DoorbellListener(url, heard.put_nowait)
    listener.start()
    assert listener.listening
    bell, elsewhere = Doorbell(url), Doorbell(f"sqlite+aiosqlite:///{tmp_path / 'other.db'}")
    try:
        elsewhere.ring("subscription:sub_elsewhere")
        bell.ring("subscription:sub_1")
        assert await asyncio.wait_for(heard.get(), 5) == "subscription:sub_1"
        bell.ring()
        assert await asyncio.wait_for(heard.get(), 5) == ""
        assert heard.empty()
    finally:
        await listener.stop()
        bell.close()
        elsewhere.close()
    Doorbell(url).ring()  # nobody listens now: nothing raised


async def test_a_second_listener_on_one_file_polls_instead(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'relay.db'}"
    first, second = DoorbellListener(url, lambda _: None), DoorbellListener(url, lambda _: None)
    first.start()
    try:
        second.start()
        assert first.listening
        assert not second.listening
        await second.stop()
    finally:
        await first.stop()
    second.start()  # the address is free again once the first has stopped
    assert second.listening
    await second.stop()
