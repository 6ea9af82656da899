"""Senders for message brokers (RabbitMQ, NATS JetStream, Redis Streams).

Each module imports its client library; :mod:`app.worker.destinations` imports
a module only when a subscription of its type is first delivered, so a process
without the ``brokers`` extra still serves webhooks.
"""
