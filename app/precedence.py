"""Requests before deliveries: ``eventrelay serve``'s API and its embedded
worker share one interpreter, and a waiting client goes first.

The worker runs on a thread of its own (:mod:`app.worker.thread`), but the
two threads take turns holding the interpreter's lock: while the worker is
busy, each step of a request (its handler, the hand-over to the database and
back, the answer) waits up to the switch interval for the worker's thread to
give the lock up, several times a request. A client is waiting for its
answer; a delivery is already committed and waits in any case for its turn
at a slot. So while the API has a request in flight, the worker's thread
*steps aside* at its next safe point (before a cycle, before a slot's next
attempt): it blocks, with the interpreter's lock given up, until every
request in flight has been answered, for at most ``STEP_ASIDE_SECONDS`` at
a time, or until it is woken for new work (an ingest's commit: that work is
what a client is waiting to see delivered, so its claim goes at once). It never
steps aside for more than half of its time: after a wait it runs at least
as long before it waits again, so a steady stream of requests slows the
deliveries down by half at most and never stops them (BENCHMARKS.md,
"Fairness between tenants").

The worker only steps aside holding nothing another transaction could wait
for (no write transaction open or waiting for SQLite's writer): see
``DeliveryWorker._step_aside``. A process without an embedded worker has
nothing to step aside and builds none of this.
"""

from __future__ import annotations

import threading
import time

# The longest one wait for the requests in flight: an answer takes a few
# milliseconds; a request that waits longer (a large batch, a slow read) does
# not hold the deliveries with it.
STEP_ASIDE_SECONDS = 0.02


class RequestsFirst:
    """The API's requests in flight (counted on the API's event loop) and the
    embedded worker's waits for them (on the worker's thread)."""

    def __init__(self, longest: float = STEP_ASIDE_SECONDS) -> None:
        self._longest = longest
        self._in_flight = 0
        # Set while no request is in flight, and from a wake-up to the next request.
        self._answered = threading.Event()
        self._answered.set()
        self._runs_until = 0.0  # the worker's thread: no wait before this (monotonic)

    @property
    def in_flight(self) -> int:
        return self._in_flight

    def started(self) -> None:
        """A request came in (the API's loop)."""
        self._in_flight += 1
        self._answered.clear()

    def finished(self) -> None:
        """A request was answered, or given up (the API's loop)."""
        self._in_flight -= 1
        if self._in_flight == 0:
            self._answered.set()

    def woken(self) -> None:
        """The worker was woken for new work (a commit, a redrive; any
        thread): a wait under way ends now, and none begins until the next
        request comes in, so that what a client just sent goes out at once."""
        self._answered.set()

    def step_aside(self) -> float:
        """The worker's thread: wait while requests are in flight (at most
        ``longest``, and not again until it has run as long as it waited).
        Returns the seconds it waited."""
        if not self._in_flight or self._answered.is_set():
            return 0.0
        began = time.monotonic()
        if began < self._runs_until:
            return 0.0
        self._answered.wait(self._longest)
        ended = time.monotonic()
        self._runs_until = ended + (ended - began)
        return ended - began
