"""The worker's sender for every destination type (a :class:`~app.worker.protocol.Sender`).

A connection URL's scheme says which sender serves it: ``http``/``https``
webhooks (:mod:`app.worker.sender`), ``amqp``/``amqps`` RabbitMQ, ``nats``/
``tls`` NATS JetStream, ``redis``/``rediss`` Redis Streams
(:mod:`app.worker.brokers`). A broker sender, and its client library, is
loaded on the first delivery of its type; when the library is missing every
attempt fails with that reason (the subscription was made by a process that
had it).
"""

from __future__ import annotations

import functools
import importlib
import time
from collections.abc import Callable

from app.domain.destinations import CLIENT_LIBRARIES, TYPE_OF_SCHEME
from app.worker.config import WorkerConfig
from app.worker.protocol import Connection, Message, Sender, SenderFactory, SendResult, failed
from app.worker.sender import HttpSender

# type -> (module, factory) of its sender
_BROKER_SENDERS = {
    "rabbitmq": ("app.worker.brokers.rabbitmq", "rabbitmq_sender"),
    "nats": ("app.worker.brokers.nats_jetstream", "nats_sender"),
    "redis": ("app.worker.brokers.redis_streams", "redis_sender"),
}


class DestinationSender:
    """Webhooks over one HTTP sender; each broker type over a sender of its own."""

    def __init__(self, http: Sender, *, allow_private: bool) -> None:
        self._http = http
        self._allow_private = allow_private
        self._brokers: dict[str, Sender | Unservable] = {}

    def connection(self, destination: str) -> Connection:
        kind = TYPE_OF_SCHEME.get(destination.partition(":")[0].lower(), "webhook")
        if kind == "webhook":
            return self._http.connection(destination)
        sender = self._brokers.get(kind)
        if sender is None:
            sender = self._brokers[kind] = self._load(kind)
        return sender.connection(destination)

    async def close(self) -> None:
        await self._http.close()
        for sender in self._brokers.values():
            await sender.close()

    def _load(self, kind: str) -> Sender | Unservable:
        module_name, factory = _BROKER_SENDERS[kind]
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            package = CLIENT_LIBRARIES[kind][1]
            return Unservable(
                f"this worker cannot deliver to {kind}: the Python package {package} is not "
                "installed (pip install 'eventrelay[brokers]')"
            )
        make: Callable[..., Sender] = getattr(module, factory)
        return make(allow_private=self._allow_private)


class Unservable:
    """A destination type this process cannot reach: every attempt fails with why."""

    def __init__(self, reason: str) -> None:
        self._reason = reason

    def connection(self, destination: str) -> Unservable:
        return self

    async def send(self, message: Message) -> SendResult:
        started = time.perf_counter()
        return failed(int((time.perf_counter() - started) * 1000), self._reason)

    async def close(self) -> None:
        return None


def destination_senders(config: WorkerConfig) -> SenderFactory:
    """The worker's default sender: webhooks sized to its slots, and the brokers."""
    return functools.partial(_build, config)


def _build(config: WorkerConfig) -> DestinationSender:
    http = HttpSender(
        allow_private=config.allow_private_targets, max_connections=config.concurrency
    )
    return DestinationSender(http, allow_private=config.allow_private_targets)
