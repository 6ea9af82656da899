"""Requests before deliveries (:class:`app.precedence.RequestsFirst`): the
worker's thread waits while a request is in flight, until it is answered or
for ``longest``, and never for more than half of its time."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from app.precedence import RequestsFirst

DEADLINE_SECONDS = 10.0


@contextmanager
def _stepping_aside(first: RequestsFirst, until_it_waits: float = 0.0) -> Iterator[threading.Event]:
    """``first.step_aside()`` on a thread of its own (the worker's), again and
    again while it does not wait, up to the monotonic ``until_it_waits``; the
    event is set once it has returned."""
    returned = threading.Event()

    def worker() -> None:
        while first.step_aside() == 0.0 and time.monotonic() < until_it_waits:
            pass
        returned.set()

    thread = threading.Thread(target=worker)
    thread.start()
    try:
        yield returned
    finally:
        thread.join(DEADLINE_SECONDS)


def test_with_no_request_in_flight_the_worker_goes_on() -> None:
    first = RequestsFirst(longest=DEADLINE_SECONDS)
    assert first.step_aside() == 0.0
    first.started()
    first.finished()
    assert first.in_flight == 0
    assert first.step_aside() == 0.0


def test_the_worker_waits_until_every_request_in_flight_is_answered() -> None:
    first = RequestsFirst(longest=DEADLINE_SECONDS)
    first.started()
    first.started()
    with _stepping_aside(first) as returned:
        assert not returned.wait(0.2), "went on with two requests in flight"
        first.finished()
        assert not returned.wait(0.2), "went on with a request in flight"
        first.finished()
        assert returned.wait(DEADLINE_SECONDS), "still waiting with every request answered"
    assert first.in_flight == 0


def test_a_request_holds_the_worker_for_longest_at_most() -> None:
    first = RequestsFirst(longest=0.3)
    first.started()  # never answered
    began = time.monotonic()
    waited = first.step_aside()
    assert 0.3 <= waited < DEADLINE_SECONDS
    assert time.monotonic() - began >= 0.3


def test_after_a_wait_the_worker_runs_as_long_before_it_waits_again() -> None:
    first = RequestsFirst(longest=0.3)
    first.started()  # never answered
    waited = first.step_aside()
    ran_from = time.monotonic()
    # Right after a wait of 0.3 s, and for (nearly) 0.3 s after it: no wait.
    assert first.step_aside() == 0.0
    while time.monotonic() - ran_from < waited * 0.9:
        assert first.step_aside() == 0.0
    # Then it waits again.
    deadline = ran_from + DEADLINE_SECONDS
    while (again := first.step_aside()) == 0.0 and time.monotonic() < deadline:
        pass
    assert again >= 0.3


def test_a_request_answered_while_the_worker_waits_ends_the_wait_at_once() -> None:
    first = RequestsFirst(longest=DEADLINE_SECONDS)
    first.started()
    with _stepping_aside(first) as returned:
        assert not returned.wait(0.2), "went on with a request in flight"
        answered = time.monotonic()
        first.finished()
        assert returned.wait(DEADLINE_SECONDS)
        assert time.monotonic() - answered < DEADLINE_SECONDS / 2


def test_a_wake_up_ends_the_wait_and_none_begins_until_the_next_request() -> None:
    first = RequestsFirst(longest=DEADLINE_SECONDS)
    first.started()
    with _stepping_aside(first) as returned:
        assert not returned.wait(0.2), "went on with a request in flight"
        first.woken()  # new work, from another thread
        assert returned.wait(DEADLINE_SECONDS), "still waiting after the wake-up"
    assert first.step_aside() == 0.0, "waited again for the same request"
    first.started()  # the next request: once the worker has run as long as it waited, it waits
    deadline = time.monotonic() + DEADLINE_SECONDS
    with _stepping_aside(first, until_it_waits=deadline) as returned:
        assert not returned.wait(0.5), "went on with a new request in flight"
        first.finished()
        first.finished()
        assert returned.wait(DEADLINE_SECONDS)
